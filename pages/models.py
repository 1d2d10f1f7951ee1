import streamlit as st

from core.catalog import BUILTIN_MODELS
from core.units import format_bytes, format_count
from ui import state
from ui.i18n import t

language = state.language() or "en"
st.title(t("models.title"))
st.caption(t("models.intro"))

for spec in BUILTIN_MODELS:
    with st.container(border=True):
        st.subheader(spec.key)
        st.caption(spec.repo_id)
        size, params, context = st.columns(3)
        size.metric(t("models.size"), format_bytes(spec.download_bytes))
        params.metric(t("models.params"), format_count(spec.parameters))
        context.metric(t("models.context"), t("models.tokens", count=format_count(spec.context_length)))
        languages = " / ".join(t(f"language.{code}") for code in spec.languages)
        st.markdown(f"**{t('models.languages')}:** {languages} · **{t('models.license')}:** {spec.license}")
        st.markdown(f"**{t('models.strengths')}:** {spec.strengths.get(language)}")
        st.markdown(f"**{t('models.use')}:** {spec.recommended_use.get(language)}")
