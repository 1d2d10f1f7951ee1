import streamlit as st

from core.engine import DEVICE_CHOICES
from core.storage import repo
from core.storage.db import display_url
from core.units import format_bytes
from ui import resources
from ui.i18n import t
from ui.widgets import escape_markdown

st.title(t("hardware.title"))

st.subheader(t("hardware.section"))
info = resources.hardware()
cpu, ram, gpu, disk = st.columns(4)
with cpu.container(border=True):
    st.metric(t("hardware.cpu"), t("hardware.threads", count=info.logical_cores))
    st.caption(f"{info.cpu_name} · {t('hardware.cores', count=info.physical_cores)}")
with ram.container(border=True):
    st.metric(t("hardware.ram"), format_bytes(info.ram_total_bytes))
    st.caption(
        t(
            "hardware.ram_detail",
            available=format_bytes(info.ram_available_bytes),
            total=format_bytes(info.ram_total_bytes),
        )
    )
with gpu.container(border=True):
    if info.gpus:
        for device in info.gpus:
            st.metric(t("hardware.gpu"), device.name)
            st.caption(
                t(
                    "hardware.gpu_detail",
                    free=format_bytes(device.memory_free_bytes),
                    total=format_bytes(device.memory_total_bytes),
                )
            )
    else:
        st.metric(t("hardware.gpu"), t("hardware.gpu_mps") if info.mps_available else t("hardware.gpu_none"))
        if not info.mps_available:
            st.caption(t("hardware.runs_on_cpu"))
with disk.container(border=True):
    st.metric(t("hardware.disk"), format_bytes(info.disk_free_bytes))
    st.caption(info.disk_path)

st.subheader(t("settings.section"))
st.markdown(f"**{t('settings.engine')}**")
engine = resources.engine()
device_column, idle_column = st.columns(2)
device = device_column.selectbox(
    t("settings.device"), DEVICE_CHOICES, index=DEVICE_CHOICES.index(engine.device_preference),
    help=t("settings.device_help"), key="settings.device",
)  # fmt: skip
idle_minutes = idle_column.number_input(
    t("settings.idle_unload"), min_value=0, max_value=24 * 60, value=round(engine.idle_unload_s / 60),
    step=5, key="settings.idle",
)  # fmt: skip
if device != engine.device_preference or idle_minutes * 60 != engine.idle_unload_s:
    engine.device_preference, engine.idle_unload_s = device, idle_minutes * 60.0
    with resources.database().begin() as session:
        repo.set_setting(session, resources.DEVICE_SETTING, device)
        repo.set_setting(session, resources.IDLE_UNLOAD_SETTING, engine.idle_unload_s)
    st.toast(t("settings.saved"))
settings = resources.settings()
st.text_input(t("settings.models_dir"), value=str(settings.models_dir), disabled=True)
st.text_input(t("settings.database"), value=display_url(settings.db_url), disabled=True)
st.markdown(f"**{t('settings.endpoints')}**")
st.markdown("\n".join(f"{i}. `{url}`" for i, url in enumerate(resources.library().endpoints(), start=1)))

st.markdown(f"**{t('settings.configs')}**")
configs = resources.config_store().list_configs()
if not configs:
    st.caption(t("settings.no_configs"))
for config in configs:
    current = f" — _{t('settings.current')}_" if config.is_current else ""
    key = f" · `{config.masked_api_key}`" if config.api_key else ""
    name, model = escape_markdown(config.name), escape_markdown(config.model)
    st.markdown(f"- **{name}** ({config.provider}, {model}){key}{current}")
