import altair as alt
import psutil
import streamlit as st

from core.access.policy import is_loopback, lan_addresses
from core.api import server_status, server_urls
from core.errors import ConfigError
from core.inference.sizing import memory_verdict, replies_that_fit
from core.logs import log_file, tail
from core.preferences import API_SERVING, DEVICES, MAX_LOADED, MAX_PARALLEL, QUANTIZATIONS
from core.settings import load_settings
from core.storage import files
from core.storage.db import display_url, sqlite_file
from core.units import format_bytes
from ui import access, resources
from ui.access import admin_only_note
from ui.failures import guarded
from ui.i18n import error_text, t
from ui.markup import escape_markdown
from ui.widgets import download_settings

HARDWARE_CARD_PX = 190

st.title(t("hardware.title"))

st.subheader(t("hardware.section"))
info = resources.hardware()
# Cards of a fixed width in wrapping rows, two by two: four across on a wide page, two rows of two
# where columns would cut "25.3 GB" to "2…" (a laptop's window with the sidebar open), never 3 + 1;
# one a row, the page's whole width, on a phone (where two do not fit beside each other).
machine = st.container(horizontal=True, key="hardware-cards")
st.html(
    "<style>@media (max-width: 430px) {.st-key-hardware-cards > div, .st-key-hardware-cards"
    " .stHorizontalBlock > div {width: 100% !important; flex: 1 1 100% !important}}</style>"
)
pairs = [machine.container(horizontal=True, width="content") for _ in range(2)]
cpu, ram, gpu, disk = (
    pair.container(border=True, width=HARDWARE_CARD_PX, height="stretch") for pair in pairs for _ in range(2)
)
with cpu:
    st.metric(t("hardware.cpu"), t("hardware.threads", count=info.logical_cores))
    st.caption(f"{info.cpu_name} · {t('hardware.cores', count=info.physical_cores)}")
with ram:
    st.metric(t("hardware.ram"), format_bytes(info.ram_total_bytes))
    st.caption(
        t(
            "hardware.ram_detail",
            available=format_bytes(info.ram_available_bytes),
            total=format_bytes(info.ram_total_bytes),
        )
    )
with gpu:
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
with disk:
    st.metric(t("hardware.disk"), format_bytes(info.disk_free_bytes))
    st.caption(info.disk_path)

versions = [f"{name} {version}" for name, version in info.versions]
if "CUDA" not in dict(info.versions):
    versions.append(t("hardware.no_cuda_build"))
st.caption(" · ".join(versions))


@st.fragment(run_every=2)
@guarded
def live_usage() -> None:
    """CPU and RAM use now, refreshed every 2 seconds (watch it while a reply is generated)."""
    memory = psutil.virtual_memory()
    cpu, ram, activity = st.columns(3)
    cpu.metric(t("hardware.cpu_use"), f"{psutil.cpu_percent(interval=None):.0f} %")
    ram.metric(t("hardware.ram_use"), format_bytes(memory.total - memory.available))
    engine = resources.engine()
    running = engine.running
    if running:
        state = t("hardware.generating_many", count=running) if running > 1 else t("hardware.generating")
    else:  # a load (the Chat page's, a reply's) is work too
        state = t("hardware.loading") if engine.loading else t("hardware.idle")
    activity.metric(t("hardware.engine"), state)


live_usage()


def dashboard_api_settings() -> None:
    """The admin's switch for the API the dashboard serves with its own model: off, this machine's
    programs, or the LAN (with the kept bearer key, shown here), and its port; applied at once, kept."""
    api, preferences = resources.dashboard_api(), resources.preferences()
    if api.problem is not None:
        st.error(error_text(api.problem))
    with st.form("api-serving", border=False):
        serving_column, port_column = st.columns([3, 1])
        saved = preferences.get("api_serving")
        serving = serving_column.selectbox(
            t("server.serving"), API_SERVING, index=API_SERVING.index(saved),
            format_func=lambda value: t(f"server.serving_{value}"), help=t("server.serving_help"),
            key="api-serving-choice",
        )  # fmt: skip
        port = port_column.number_input(t("server.port"), 1, 65535, preferences.get("api_port"), 1,
                                        key="api-serving-port")  # fmt: skip
        if st.form_submit_button(t("server.apply"), key="api-serving-apply"):
            try:
                api.serve_as(serving, int(port))
            except ConfigError:
                pass  # said above, from `api.problem`, after the rerun
            else:
                preferences.set("api_serving", serving)
                preferences.set("api_port", int(port))
            st.rerun()
    if api.listening is not None and api.listening.api_key is not None:
        st.markdown(t("server.key"))
        st.code(api.listening.api_key, language=None)


st.subheader(t("hardware.models_section"))
library = resources.library()
precision = resources.engine_precision()
engine = resources.engine()
# The loaded models' weights kept unpacked for prompts: memory beyond their estimates, said beside them.
kept_copy = engine.prompt_copies
rows = []
people = []
for spec in library.models():
    estimate = library.memory_estimate(spec.key, precision)
    if estimate:
        verdict = memory_verdict(estimate.total_bytes, info)
        at_once = replies_that_fit(estimate, verdict.available_bytes, engine.parallel)
        rows.append(
            {
                "model": spec.key,
                "GB": round(estimate.total_bytes / 1e9, 2),
                "verdict": t(f"verdict.{verdict.verdict}"),
                "people": at_once,
            }
        )
        if verdict.verdict != "too_large":
            context = f"{library.context_tokens(spec.key):,}"
            line = t("hardware.people_at_once", model=spec.key, count=at_once, context=context)
            if spec.key in kept_copy:
                line += t("hardware.prompt_copy", size=format_bytes(kept_copy[spec.key]))
            people.append(line)
if rows:
    limits = [{"GB": round(info.ram_available_bytes / 1e9, 2), "what": t("hardware.ram_available")}]
    limits += [{"GB": round(gpu.memory_free_bytes / 1e9, 2), "what": gpu.name} for gpu in info.gpus]
    bars = alt.Chart(alt.Data(values=rows)).mark_bar().encode(
        x=alt.X("GB:Q", title=t("hardware.memory_needed")), y=alt.Y("model:N", title=None),
        color=alt.Color("verdict:N", title=None),
        tooltip=["model:N", "GB:Q", "verdict:N", alt.Tooltip("people:Q", title=t("hardware.people"))],
    )  # fmt: skip
    rules = (
        alt.Chart(alt.Data(values=limits))
        .mark_rule(strokeDash=[4, 4], color="#dc2626")
        .encode(x="GB:Q", tooltip=["what:N", "GB:Q"])
    )
    st.altair_chart(bars + rules, width="stretch")
    st.caption(t("hardware.chart_note"))
    if people:
        st.markdown(t("hardware.people_title") + "\n\n" + "\n".join(f"- {line}" for line in people))
        st.caption(t("hardware.people_note", parallel=engine.parallel))

st.subheader(t("lan.title"))
bound = st.get_option("server.address") or "localhost"
port = st.get_option("server.port")
if is_loopback(bound):
    st.info(t("lan.dashboard_off", address=bound), icon=":material/lock:")
else:
    st.success(t("lan.dashboard_on"), icon=":material/lan:")
addresses = lan_addresses()
urls = ", ".join(f"`http://{a}:{port}`" for a in addresses)
shared = "lan.urls_once_shared" if is_loopback(bound) else "lan.urls"
st.markdown(t(shared, urls=urls) if addresses else t("lan.no_urls"))
st.caption(t("lan.models"))

st.subheader(t("server.title"))
status = server_status(resources.database())
if status:
    token = t("server.token") if status["token_required"] else ""
    urls = ", ".join(f"`{u}`" for u in server_urls(status["host"], status["port"]))
    st.success(t("server.running", urls=urls, token=token))
else:
    st.info(t("server.stopped_admin" if access.is_admin() else "server.stopped"))
if access.is_admin():
    dashboard_api_settings()

if not access.is_admin():
    st.subheader(t("settings.section"))
    admin_only_note()
    st.stop()

st.subheader(t("settings.section"))
st.markdown(f"**{t('settings.engine')}**")
device_column, quantization_column, idle_column, parallel_column, loaded_column = st.columns(5)
device = device_column.selectbox(
    t("settings.device"), DEVICES, index=DEVICES.index(engine.device_preference),
    help=t("settings.device_help"), key="settings.device",
)  # fmt: skip
quantization = quantization_column.selectbox(
    t("settings.quantization"), QUANTIZATIONS, index=QUANTIZATIONS.index(engine.quantization),
    format_func=lambda choice: t(f"settings.quantization.{choice}"), help=t("settings.quantization_help"),
    key="settings.quantization",
)  # fmt: skip
idle_minutes = idle_column.number_input(
    t("settings.idle_unload"), min_value=0, max_value=24 * 60, value=round(engine.idle_unload_s / 60),
    step=5, help=t("settings.idle_unload_help"), key="settings.idle",
)  # fmt: skip
parallel = parallel_column.number_input(
    t("settings.parallel"), min_value=1, max_value=MAX_PARALLEL, value=engine.parallel, step=1,
    help=t("settings.parallel_help"), key="settings.parallel",
)  # fmt: skip
loaded_models = loaded_column.number_input(
    t("settings.loaded_models"), min_value=1, max_value=MAX_LOADED, value=engine.max_loaded, step=1,
    help=t("settings.loaded_models_help"), key="settings.loaded_models",
)  # fmt: skip
chosen = {"device": device, "quantization": quantization, "idle_unload_s": idle_minutes * 60.0,
          "parallel_replies": int(parallel), "loaded_models": int(loaded_models)}  # fmt: skip
if chosen != {"device": engine.device_preference, "quantization": engine.quantization,
              "idle_unload_s": engine.idle_unload_s, "parallel_replies": engine.parallel,
              "loaded_models": engine.max_loaded}:  # fmt: skip
    for name, value in chosen.items():
        resources.preferences().set(name, value)
    (engine.device_preference, engine.quantization, engine.idle_unload_s, engine.parallel,
     engine.max_loaded) = chosen.values()  # fmt: skip
    st.toast(t("settings.saved"))
prompt_copy = st.toggle(
    t("settings.prompt_copy"), value=engine.keep_prompt_weights, help=t("settings.prompt_copy_help"),
    key="settings.prompt_copy",
)  # fmt: skip
if prompt_copy != engine.keep_prompt_weights:
    resources.preferences().set("prompt_copy", prompt_copy)
    engine.keep_prompt_weights = prompt_copy
    st.toast(t("settings.saved"))
default_context = resources.preferences().get("context_tokens")
context = st.number_input(
    t("settings.context_tokens"), min_value=256, max_value=1024 * 1024, value=default_context, step=1024,
    help=t("settings.context_tokens_help"), key="settings.context",
)  # fmt: skip
if context != default_context:
    resources.preferences().set("context_tokens", int(context))
    st.toast(t("settings.saved"))
models_dir = resources.library().models_dir
with st.form("models-dir", border=False):
    new_dir = st.text_input(
        t("settings.models_dir"), value=str(models_dir), help=t("settings.models_dir_help"),
        key="models-dir-input",
    )  # fmt: skip
    changed = new_dir.strip() != str(models_dir)
    if st.form_submit_button(t("settings.change_dir"), key="models-dir-submit") and changed:
        try:
            chosen_dir = resources.change_models_dir(new_dir)
        except ConfigError as exc:
            st.error(error_text(exc))
        else:
            st.session_state["settings.models_dir_changed"] = str(chosen_dir)  # a relative one, resolved
            st.rerun()
    if changed_to := st.session_state.pop("settings.models_dir_changed", None):
        st.success(t("settings.dir_changed", path=changed_to))
db_url = load_settings().db_url
st.text_input(t("settings.database"), value=display_url(db_url), disabled=True)
if (db_file := sqlite_file(db_url)) is not None:
    newest = next(iter(files.backups(db_file)), None)
    st.caption(
        t(
            "settings.backups",
            folder=str(db_file.parent / files.BACKUPS_DIR),
            newest=newest.name if newest else "–",
        )
    )
st.markdown(f"**{t('settings.endpoints')}**")
st.markdown("\n".join(f"{i}. `{url}`" for i, url in enumerate(resources.library().endpoints(), start=1)))
download_settings()

st.markdown(f"**{t('lan.accounts.title')}**")
st.caption(t("lan.accounts.intro"))
gate = resources.sign_in_gate()
accounts = gate.accounts()
if accounts:
    st.dataframe(
        [
            {
                t("lan.accounts.name"): account.display_name,
                t("lan.accounts.state"): t(
                    "lan.accounts.claimed" if account.claimed else "lan.accounts.unclaimed"
                ),
                t("lan.accounts.last"): f"{account.last_sign_in_at:%Y-%m-%d %H:%M}"
                if account.last_sign_in_at
                else "–",
            }
            for account in accounts
        ],
        hide_index=True,
    )
    with st.form("lan.reset", border=False):
        chosen = st.selectbox(
            t("lan.accounts.pick"), [account.name for account in accounts], key="lan.reset-name"
        )
        if st.form_submit_button(t("lan.accounts.reset"), key="lan.reset-submit"):
            gate.reset(chosen)
            st.success(t("lan.accounts.reset_done", name=escape_markdown(chosen)))
else:
    st.caption(t("lan.accounts.none"))

with st.expander(t("logs.title"), icon=":material/receipt_long:"):
    st.caption(t("logs.intro", path=str(log_file())))
    lines = tail(200)
    st.code("\n".join(lines) if lines else t("logs.empty"), language=None, wrap_lines=True)
    if log_file().is_file():
        st.download_button(t("logs.download"), log_file().read_bytes(), file_name=log_file().name,
                           mime="text/plain", icon=":material/download:", key="logs.download")  # fmt: skip
