"""LocalLLM Dashboard core: the product without a UI (never imports streamlit)."""
