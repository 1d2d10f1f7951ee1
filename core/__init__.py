"""LocalLLM Dashboard core: the product without a UI (never imports streamlit)."""

import os

# Nothing leaves the machine but the model download: no Hugging Face telemetry, set before any
# module reads it at import time.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
