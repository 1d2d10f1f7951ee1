"""The seed's provider-config store (core/compat.py)."""

from core.compat import LLMConfigDB

__all__ = ["LLMConfigDB"]
