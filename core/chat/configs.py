"""The provider-config API the seed's users know: save, set current, get current, list, update, delete."""

from __future__ import annotations

from typing import Any

from core.inference.params import GenerationParams
from core.storage import repo
from core.storage.db import Database
from core.storage.records import ProviderConfig


class ConfigStore:
    """Provider configs in the database; each call is one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def save_config(
        self,
        provider: str,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        name: str | None = None,
        params: GenerationParams | None = None,
    ) -> int:
        with self._db.begin() as session:
            return repo.save_config(
                session,
                provider=provider,
                model=model,
                base_url=base_url,
                api_key=api_key,
                name=name,
                params=params,
            )

    def set_current_config(self, config_id: int) -> None:
        with self._db.begin() as session:
            repo.set_current_config(session, config_id)

    def get_current_config(self) -> ProviderConfig | None:
        with self._db.begin() as session:
            return repo.get_current_config(session)

    def get_config(self, config_id: int) -> ProviderConfig:
        with self._db.begin() as session:
            return repo.get_config(session, config_id)

    def list_configs(self) -> list[ProviderConfig]:
        with self._db.begin() as session:
            return repo.list_configs(session)

    def update_config(self, config_id: int, **changes: Any) -> ProviderConfig:
        with self._db.begin() as session:
            return repo.update_config(session, config_id, **changes)

    def delete_config(self, config_id: int) -> None:
        with self._db.begin() as session:
            repo.delete_config(session, config_id)

    def use_local_model(self, key: str) -> ProviderConfig:
        """Make the local model `key` current, reusing its config or creating one."""
        with self._db.begin() as session:
            existing = [
                c for c in repo.list_configs(session) if c.provider == "local_model" and c.model == key
            ]
            config_id = (
                existing[0].id
                if existing
                else repo.save_config(session, provider="local_model", model=key, name=key)
            )
            repo.set_current_config(session, config_id)
            return repo.get_config(session, config_id)
