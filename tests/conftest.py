"""Shared fixtures: isolated settings, a real SQLite database (or PostgreSQL, MariaDB:
LOCALLLM_TEST_DATABASE),
tiny models, a local Hub server."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Before anything imports huggingface_hub: a private cache, no telemetry, never the real Hub.
_HF_HOME = tempfile.mkdtemp(prefix="localllm-test-hf-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"  # a closed port: any call that forgets endpoint= fails fast
# Nor the developer's network settings: every server a test talks to is on loopback (a test that needs a
# proxy sets its own).
for _name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.upper(), None)

from core.storage.db import Database  # noqa: E402
from tests.fixtures.database_servers import SERVERS, DatabaseServer, MariadbServer, PostgresServer  # noqa: E402
from tests.fixtures.hub_server import HubServer  # noqa: E402
from tests.fixtures.tiny_models import build_tiny_model  # noqa: E402

BROWSER_TESTS = "tests/e2e/"
# "postgresql" or "mariadb": every test's database is a new one on a server of the test process's own
# (`make test-postgresql`, `make test-mariadb`); the tests of SQLite's own files (WAL, damaged files,
# backups) are skipped.
TEST_DATABASE = os.environ.get("LOCALLLM_TEST_DATABASE", "sqlite")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if TEST_DATABASE == "sqlite":
        return
    skip = pytest.mark.skip(reason=f"about SQLite's own files; the suite runs on {TEST_DATABASE}")
    for item in items:
        if item.get_closest_marker("sqlite_only"):
            item.add_marker(skip)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With two test processes (`make test`: pytest-xdist, `--dist loadgroup`), the browser tests run
    one after another in one of them: two apps and two browsers at once on 2 cores made each 2-6 ×
    slower, and now and then a page stayed blank past a test's 30 s. Grouped here by their folder:
    xdist's own grouping (an `xdist_group` mark) silently stopped working with pytest 9.2, whose node
    ids it can no longer rewrite (pytest-xdist#1386)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class BrowserTestsTogether(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "browser" if nodeid.startswith(BROWSER_TESTS) else super()._split_scope(nodeid)

    return BrowserTestsTogether(config, log)


def _server(kind: type[DatabaseServer]) -> Iterator[DatabaseServer]:
    kind.require()
    with kind() as server:
        yield server


@pytest.fixture(scope="session")
def postgresql() -> Iterator[DatabaseServer]:
    """A PostgreSQL server of this test process's own."""
    yield from _server(PostgresServer)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[DatabaseServer]:
    """A MariaDB server of this test process's own."""
    yield from _server(MariadbServer)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """Every test gets its own data dir, models dir and SQLite file (or database on a server)."""
    data = tmp_path / "data"
    monkeypatch.setenv("LOCALLLM_DATA_DIR", str(data))
    monkeypatch.setenv("LOCALLLM_MODELS_DIR", str(tmp_path / "models"))
    if TEST_DATABASE in SERVERS and not request.node.get_closest_marker("sqlite_only"):
        monkeypatch.setenv("LOCALLLM_DB_URL", request.getfixturevalue(TEST_DATABASE).new_database())
    else:
        monkeypatch.setenv("LOCALLLM_DB_URL", f"sqlite:///{data / 'test.db'}")
    monkeypatch.setenv("LOCALLLM_MIRRORS", "")
    monkeypatch.setenv("LOCALLLM_SECRETS_FILE", str(tmp_path / "secrets.toml"))  # absent unless written
    for name in ("LOCALLLM_PASSWORD", "LOCALLLM_ADMINS", "LOCALLLM_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def db_url(isolated_env: Path) -> str:
    return os.environ["LOCALLLM_DB_URL"]


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    db = Database(db_url)
    yield db
    db.dispose()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny random model per architecture, built once per test session (read-only: copy to change)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(root / arch, arch) for arch in ("qwen2", "llama", "qwen3")}


@pytest.fixture(scope="session")
def bigger_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with ~5 MB of weights, so a throttled transfer can be killed halfway."""
    return build_tiny_model(tmp_path_factory.mktemp("bigger") / "m", "qwen2", hidden_size=256)


@pytest.fixture
def tiny_model_copy(tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_models["qwen2"], tmp_path / "tiny-qwen2"))


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server:
        yield server
