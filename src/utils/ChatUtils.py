"""The seed's chat handler (core/compat.py)."""

from core.compat import AIRequestHandlerWithHistory

__all__ = ["AIRequestHandlerWithHistory"]
