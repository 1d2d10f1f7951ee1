"""`python -m core ...`: the dashboard's command line."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from core.catalog import BUILTIN_MODELS
from core.configs import ConfigStore
from core.errors import LocalLLMError
from core.settings import PROJECT_ROOT, load_settings
from core.storage.db import Database


def _store() -> ConfigStore:
    return ConfigStore(Database(load_settings().db_url))


def cmd_app(args: argparse.Namespace) -> int:
    """Start the dashboard (Streamlit) bound to localhost."""
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(PROJECT_ROOT / "app.py"),
        "--server.port",
        str(args.port),
        "--server.address",
        "localhost",
    ]
    try:
        return subprocess.call(command, cwd=PROJECT_ROOT)
    except KeyboardInterrupt:
        return 130


def cmd_models(_args: argparse.Namespace) -> int:
    for spec in BUILTIN_MODELS:
        size_gb = spec.download_bytes / 1000**3
        print(f"{spec.key:<16} {spec.repo_id:<40} ~{size_gb:.1f} GB  {'/'.join(spec.languages)}")
    return 0


def cmd_config_list(_args: argparse.Namespace) -> int:
    configs = _store().list_configs()
    if not configs:
        print("No provider configs yet. Add one with: python -m core config add PROVIDER MODEL")
    for config in configs:
        mark = "*" if config.is_current else " "
        key = f" key={config.masked_api_key}" if config.api_key else ""
        url = f" {config.base_url}" if config.base_url else ""
        print(f"{mark} {config.id:>3}  {config.name}  [{config.provider}] {config.model}{url}{key}")
    return 0


def cmd_config_add(args: argparse.Namespace) -> int:
    store = _store()
    config_id = store.save_config(args.provider, args.model, args.base_url, args.api_key, name=args.name)
    if args.use:
        store.set_current_config(config_id)
    print(config_id)
    return 0


def cmd_config_use(args: argparse.Namespace) -> int:
    _store().set_current_config(args.id)
    return 0


def cmd_config_remove(args: argparse.Namespace) -> int:
    _store().delete_config(args.id)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core", description="LocalLLM Dashboard: download, check and chat with small LLMs."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    app = commands.add_parser("app", help="start the dashboard on http://localhost:PORT")
    app.add_argument("--port", type=int, default=8501)
    app.set_defaults(func=cmd_app)

    models = commands.add_parser("models", help="list the model catalog")
    models.set_defaults(func=cmd_models)

    config = commands.add_parser("config", help="provider configs: list, add, use, remove")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_commands.add_parser("list", help="list configs (* marks the current one)").set_defaults(
        func=cmd_config_list
    )
    add = config_commands.add_parser("add", help="save a config and print its id")
    add.add_argument("provider", choices=["local_model", "openai_compatible"])
    add.add_argument("model")
    add.add_argument("--base-url")
    add.add_argument("--api-key")
    add.add_argument("--name")
    add.add_argument("--use", action="store_true", help="make it the current config")
    add.set_defaults(func=cmd_config_add)
    use = config_commands.add_parser("use", help="make config ID the current one")
    use.add_argument("id", type=int)
    use.set_defaults(func=cmd_config_use)
    remove = config_commands.add_parser("remove", help="delete config ID")
    remove.add_argument("id", type=int)
    remove.set_defaults(func=cmd_config_remove)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LocalLLMError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
