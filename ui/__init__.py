"""The only Streamlit glue: cached resources, session keys, shared widgets, translations."""
