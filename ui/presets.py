"""Presets on the Chat page: pick one for the conversation, save the current settings as one, make one
a model's default. The built-in presets' names and prompts are in the session's language."""

from __future__ import annotations

import streamlit as st

from core.chat.presets import BUILTIN, SAMPLING, Preset, PresetStore
from core.chat.service import ChatService
from core.storage.records import Conversation
from ui import resources
from ui.i18n import current_language, t
from ui.widgets import attempt

MODEL_DEFAULTS = "model"  # no preset: the model's own settings and no system prompt


def presets(store: PresetStore) -> dict[str, Preset]:
    """Every preset this person may use, by key: the model's own settings, the built-ins, their own."""
    found = {MODEL_DEFAULTS: Preset(MODEL_DEFAULTS, t("preset.model.name"), "", {})}
    for name, params in BUILTIN.items():
        found[f"builtin:{name}"] = Preset(
            f"builtin:{name}", t(f"preset.{name}.name"), t(f"preset.{name}.prompt"), params
        )
    return found | {preset.key: preset for preset in store.list()}


def new_chat_preset(store: PresetStore, model: str) -> Preset | None:
    """Choose the preset the next conversation starts from (first: the model's default); None: the model's
    own settings."""
    available = presets(store)
    default = resources.preferences().get("model_presets").get(model)
    keys = list(available)
    key = st.selectbox(
        t("preset.new_chat"), keys, index=keys.index(default) if default in available else 0,
        format_func=lambda key: available[key].name, help=t("preset.help"), width=360,
        key=f"preset-new-{model}",
    )  # fmt: skip
    return None if key == MODEL_DEFAULTS else available[key]


def preset_picker(chat: ChatService, store: PresetStore, conversation: Conversation, model: str) -> None:
    """Choose the conversation's preset; save the current settings as one; make one the model's default."""
    available = presets(store)
    # The names themselves are the options (AppTest formats options outside a run, in another language).
    labels: dict[str, str] = {}
    for key, preset in available.items():
        label = preset.name if preset.name not in labels else f"{preset.name} ({len(labels)})"
        labels[label] = key
    current = conversation.preset if conversation.preset in available else None
    if chat.follows_model(conversation.id):  # a chat started from the model's own settings, or imported
        current = MODEL_DEFAULTS
    names = list(labels)
    chosen = st.selectbox(
        t("preset.label"), names, index=list(labels.values()).index(current) if current else None,
        placeholder=t("preset.custom"), help=t("preset.help"),
        # Its options are in the session's language; and what is stored decides what it shows (a Save of
        # the conversation's own settings makes it "your own settings", even where the model's were shown).
        key=f"preset-{conversation.id}-{current_language()}-{current}",
    )  # fmt: skip
    choice = labels.get(chosen) if chosen else None
    if (
        choice
        and choice != current
        and attempt(lambda: chat.apply_preset(conversation.id, available[choice]))
    ):
        st.rerun()
    left, right = st.columns(2)
    with left.popover(t("preset.save"), icon=":material/bookmark_add:"):
        name = st.text_input(t("preset.name"), max_chars=100, key=f"preset-name-{conversation.id}")
        if st.button(t("preset.save_button"), key=f"preset-save-{conversation.id}"):
            params = chat.params(conversation.id).to_dict()
            sampling = {setting: params[setting] for setting in SAMPLING}
            if attempt(lambda: store.save(name, conversation.system_prompt, sampling)):
                st.rerun()
    if choice:
        is_default = resources.preferences().get("model_presets").get(model) == choice
        if right.button(t("preset.make_default", model=model), key=f"preset-default-{conversation.id}",
                        disabled=is_default):  # fmt: skip
            _make_default(model, None if choice == MODEL_DEFAULTS else choice)
        if (
            choice.startswith("user:")
            and right.button(t("preset.delete"), key=f"preset-delete-{conversation.id}")
            and attempt(lambda: store.delete(choice))
        ):
            st.rerun()


def _make_default(model: str, key: str | None) -> None:
    defaults = dict(resources.preferences().get("model_presets"))
    if key is None:
        defaults.pop(model, None)
    else:
        defaults[model] = key
    if attempt(lambda: resources.preferences().set("model_presets", defaults)):
        st.toast(t("preset.default_saved", model=model))
