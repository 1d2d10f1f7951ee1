import streamlit as st

from ui import resources
from ui.i18n import t
from ui.widgets import escape_markdown

st.title(t("chat.title"))
current = resources.config_store().get_current_config()
if current is None:
    st.info(t("chat.no_model"), icon=":material/info:")
else:
    st.markdown(
        t(
            "chat.current",
            name=escape_markdown(current.name),
            provider=current.provider,
            model=escape_markdown(current.model),
        )
    )
    st.info(t("chat.coming"), icon=":material/info:")
st.page_link("pages/models.py", label=t("chat.go_models"), icon=":material/download:")
