"""The seed's local engine (core/compat.py)."""

from core.compat import LocalLLMEngine, local_llm_engine

__all__ = ["LocalLLMEngine", "local_llm_engine"]
