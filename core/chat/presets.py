"""Presets: a name, a system prompt and the sampling settings it fixes, applied to a conversation.

Two are built in (their texts are translated by the pages: `builtin:assistant`, `builtin:translator`);
each owner saves their own (`user:<id>`). A model's own sampling (its publisher's generation_config)
is what every setting a preset leaves open falls back to; each model may have a default preset that new
conversations start from (the `model_presets` setting).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import select

from core.chat.limits import checked_length
from core.errors import ConfigError, NotFoundError
from core.inference.params import GenerationParams
from core.storage.db import Database
from core.storage.schema import PresetRow

SAMPLING = tuple(f.name for f in fields(GenerationParams) if f.name != "max_new_tokens")
# Built-in presets and the settings they fix; the pages give their names and prompts in each language.
BUILTIN: dict[str, dict[str, Any]] = {"assistant": {}, "translator": {"temperature": 0.3, "top_p": 0.9}}


@dataclass(frozen=True)
class Preset:
    key: str  # "builtin:<name>" or "user:<id>"
    name: str
    system_prompt: str
    params: Mapping[str, Any]  # only what the preset fixes; GenerationParams field names

    @property
    def builtin(self) -> bool:
        return self.key.startswith("builtin:")

    def applied_to(self, model_defaults: GenerationParams) -> GenerationParams:
        """The model's own settings with what this preset fixes on top."""
        return GenerationParams.from_mapping({**model_defaults.to_dict(), **self.params})


def _checked(params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(SAMPLING)
    if unknown:
        raise ConfigError(f"A preset fixes sampling settings only, not {', '.join(sorted(unknown))}.")
    GenerationParams.from_mapping(params)  # ranges: the same checks as everywhere
    return dict(params)


class PresetStore:
    """One owner's saved presets."""

    def __init__(self, db: Database, owner: str = "local") -> None:
        self.db = db
        self.owner = owner

    def list(self) -> list[Preset]:
        with self.db.begin() as session:
            rows = session.scalars(
                select(PresetRow).where(PresetRow.owner == self.owner).order_by(PresetRow.name)
            )
            return [self._preset(row) for row in rows]

    def save(self, name: str, system_prompt: str, params: Mapping[str, Any]) -> Preset:
        """A new preset, or the owner's preset of that name replaced."""
        name = name.strip()[:100]
        if not name:
            raise ConfigError("A preset needs a name.", reason="preset_name_required")
        checked = _checked(params)
        checked_length(system_prompt)
        with self.db.begin() as session:
            row = session.scalars(
                select(PresetRow).where(PresetRow.owner == self.owner, PresetRow.name == name)
            ).first()
            if row is None:
                row = PresetRow(owner=self.owner, name=name)
                session.add(row)
            row.system_prompt, row.params = system_prompt, checked
            session.flush()
            return self._preset(row)

    def get(self, key: str) -> Preset:
        with self.db.begin() as session:
            row = self._row(session, key)
            return self._preset(row)

    def named(self, name: str) -> Preset:
        """The owner's preset called `name` (case aside), for a command line that names it."""
        saved = self.list()
        for preset in saved:
            if preset.name.casefold() == name.strip().casefold():
                return preset
        names = ", ".join(repr(preset.name) for preset in saved) or "none yet (save one on the Chat page)"
        raise NotFoundError(f"No preset is called {name.strip()!r}; the saved ones: {names}.", key=name)

    def delete(self, key: str) -> None:
        with self.db.begin() as session:
            session.delete(self._row(session, key))

    def _row(self, session: Any, key: str) -> PresetRow:
        row = session.get(PresetRow, int(key.removeprefix("user:"))) if key.startswith("user:") else None
        if row is None or row.owner != self.owner:
            raise NotFoundError(f"No preset {key!r}.", key=key, reason="preset_gone")
        return row

    @staticmethod
    def _preset(row: PresetRow) -> Preset:
        return Preset(f"user:{row.id}", row.name, row.system_prompt, dict(row.params))
