"""The seed product's module paths, kept for its Python example (see core/compat.py)."""
