"""`python -m core ...`: the dashboard's command line."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from core.access import SignInGate, load_access_policy
from core.configs import ConfigStore
from core.engine import QUANTIZATIONS
from core.errors import ConfigError, LocalLLMError, MessageError, NotFoundError, is_bad_input
from core.library import ModelLibrary
from core.settings import PROJECT_ROOT, load_settings
from core.storage.db import Database
from core.units import format_bytes


def _store() -> ConfigStore:
    return ConfigStore(Database(load_settings().db_url))


def cmd_app(args: argparse.Namespace) -> int:
    """Start the dashboard (Streamlit): on localhost, or with --lan on every interface behind a sign-in."""
    from core.access import lan_addresses, load_access_policy

    address = "localhost"
    if args.lan:
        if not load_access_policy().lan_allowed:
            print(
                "error: --lan needs a password for the sign-in page. Set LOCALLLM_PASSWORD, or put\n"
                '  password = "..."\n'
                "in .streamlit/secrets.toml, then start again.",
                file=sys.stderr,
            )
            return 2
        address = "0.0.0.0"
        urls = ", ".join(f"http://{ip}:{args.port}" for ip in lan_addresses()) or "(no LAN address now)"
        print(f"LAN sharing on: other machines open {urls} and sign in with the password.", flush=True)
    command = [sys.executable, "-m", "ui.server", "--port", str(args.port), "--address", address]
    os.chdir(PROJECT_ROOT)
    if os.name == "posix":  # become the server: a signal to this process reaches Streamlit itself
        os.execv(sys.executable, command)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130


def _library(endpoints: list[str] | None = None) -> ModelLibrary:
    settings = load_settings()
    return ModelLibrary(Database(settings.db_url), settings, endpoints_override=endpoints)


def cmd_models(_args: argparse.Namespace) -> int:
    library = _library()
    for spec in library.models():
        status = library.status(spec.key)
        shown = (
            f"{status.kind} {status.fraction:.0%}"
            if status.kind in ("partial", "downloading")
            else status.kind
        )
        size = format_bytes(spec.download_bytes) if spec.download_bytes else "?"
        print(f"{spec.key:<24} {spec.repo_id:<44} {size:>9}  {shown}")
    return 0


def _resolve_or_add(library: ModelLibrary, key_or_repo_id: str) -> str:
    try:
        return library.get(key_or_repo_id).key
    except NotFoundError:
        if "/" not in key_or_repo_id:
            raise
        return library.add_custom(key_or_repo_id).key


def cmd_download(args: argparse.Namespace) -> int:
    """Download with a progress bar; exit 0 only when every file is verified."""
    from tqdm import tqdm

    library = _library(args.endpoint)
    key = _resolve_or_add(library, args.model)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not library.download(key):
            print(f"error: {key} is already being downloaded by another process.", file=sys.stderr)
            return 1
        with tqdm(unit="B", unit_scale=True, unit_divisor=1000, desc=key, dynamic_ncols=True) as bar:
            while library.manager.is_running(key):
                if stop.is_set():
                    library.manager.cancel(key)
                library.manager.wait(key, timeout=0.25)
                progress = library.progress(key)
                bar.total = progress.bytes_total or None
                bar.n = progress.bytes_done
                bar.set_postfix_str(progress.current_file or "", refresh=False)
                bar.refresh()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    final = library.progress(key)
    if final.state == "completed":
        print(f"{key}: every file verified in {library.directory(key)}")
        return 0
    if final.state == "cancelled":
        print(f"{key}: paused at {format_bytes(final.bytes_done)}; run the same command to resume.")
        return 130
    print(f"error: {final.error}", file=sys.stderr)
    return 2 if is_bad_input(final.error_code) else 1


def cmd_verify(args: argparse.Namespace) -> int:
    library = _library()
    key = library.get(args.model).key
    bad = [check for check in library.verify(key) if not check.ok]
    for check in bad:
        print(f"{check.path}: {check.problem}", file=sys.stderr)
    if bad:
        print(
            f"{key}: {len(bad)} file(s) failed; run `python -m core download {key}` to repair.",
            file=sys.stderr,
        )
        return 1
    print(f"{key}: every file verified")
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


def _gate() -> SignInGate:
    return SignInGate(load_access_policy(), Database(load_settings().db_url))


def cmd_users_list(_args: argparse.Namespace) -> int:
    """LAN user names: claimed (with a personal password) or not yet, and their last sign-in."""
    accounts = _gate().accounts()
    if not accounts:
        print("No LAN user has signed in yet.")
    for account in accounts:
        state = "password set" if account.claimed else "not claimed yet"
        last = f"{account.last_sign_in_at:%Y-%m-%d %H:%M}" if account.last_sign_in_at else "-"
        print(f"{account.display_name:<40} {state:<16} last sign-in {last}")
    return 0


def cmd_users_reset(args: argparse.Namespace) -> int:
    if not _gate().reset(args.name):
        raise NotFoundError(f"No LAN user named {args.name!r}.", name=args.name)
    print(f"{args.name}: signed out everywhere; the next sign-in with this name sets a new password.")
    return 0


def _sqlite_path() -> Path:
    from core.storage.db import display_url, sqlite_file

    url = load_settings().db_url
    path = sqlite_file(url)
    if path is None:
        raise ConfigError(
            f"{display_url(url)} is not a SQLite file: back it up with its database server's own tools."
        )
    return path


def cmd_db_backup(_args: argparse.Namespace) -> int:
    """A consistent copy of the database in data/backups/ (the last 7 are kept)."""
    from core.storage import files

    path = _sqlite_path()
    if not path.exists():
        raise NotFoundError(f"There is no database at {path} yet.")
    print(files.backup(path))
    return 0


def cmd_db_restore(args: argparse.Namespace) -> int:
    from core.storage import files

    before = files.restore(_sqlite_path(), Path(args.file))
    Database(load_settings().db_url)  # brings an older backup's schema up to date
    print(f"Restored {args.file}; what was there before is kept in {before}.")
    return 0


def cmd_db_check(_args: argparse.Namespace) -> int:
    from core.storage import files

    path = _sqlite_path()
    found = files.problems(path) if path.exists() else [f"there is no database at {path}"]
    for problem in found:
        print(f"{path}: {problem}", file=sys.stderr)
    if not found:
        newest = next(iter(files.backups(path)), None)
        print(f"{path}: ok" + (f" (newest backup: {newest})" if newest else " (no backup yet)"))
    return 1 if found else 0


def cmd_chat(args: argparse.Namespace) -> int:
    """Stream replies from a downloaded model; a REPL on stdin without --prompt (works with pipes)."""
    import json
    import time

    import psutil

    from core.chat import ChatService, Trimmed
    from core.engine import Finished, LocalEngine, TextDelta
    from core.generation import GenerationParams
    from core.hardware import peak_rss_bytes
    from core.providers import LocalProvider

    settings = load_settings()
    db = Database(settings.db_url)
    key = ModelLibrary(db, settings).get(args.model).key
    engine = LocalEngine(settings.models_dir, quantization=args.quantization, idle_unload_s=0)
    chat = ChatService(db, lambda: LocalProvider(engine, key), owner="cli")
    params = GenerationParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    started = time.perf_counter()
    loaded = engine.load(key, force=args.force)
    load_s = time.perf_counter() - started
    conversation = chat.new_conversation(f"CLI {key}", system_prompt=args.system or "")
    chat.set_options(conversation.id, args.system or "", params)
    prompts = [args.prompt] if args.prompt is not None else (line.rstrip("\n") for line in sys.stdin)
    exit_code = 0
    try:
        for prompt in prompts:
            if not prompt.strip():
                continue
            stats = None
            try:
                for event in chat.send(conversation.id, prompt, ignore_eos=args.ignore_eos):
                    if isinstance(event, TextDelta):
                        print(event.text, end="", flush=True)
                    elif isinstance(event, Trimmed):
                        note = f"[{event.dropped} older messages left out to fit the context]"
                        print(note, file=sys.stderr)
                    elif isinstance(event, Finished):
                        stats = event.stats
            except MessageError as exc:  # this message cannot be sent; the next line may be fine
                print(f"error: {exc.message}", file=sys.stderr)
                exit_code = 2
                continue
            print()
            if args.stats and stats:
                record = {
                    "prompt_tokens": stats.prompt_tokens,
                    "completion_tokens": stats.completion_tokens,
                    "ttft_s": stats.ttft_s,
                    "decode_tps": stats.tokens_per_s,
                    "load_s": load_s,
                    "peak_rss_mb": peak_rss_bytes() / 1024**2,
                    "rss_mb": psutil.Process().memory_info().rss / 1024**2,
                    "device": loaded.device,
                    "dtype": loaded.dtype,
                    "weights": loaded.weights,
                }
                print(json.dumps(record))
    except KeyboardInterrupt:
        return 130
    return exit_code


def cmd_hardware(args: argparse.Namespace) -> int:
    """This machine, and whether each catalog model fits and how fast it should decode."""
    import json
    from dataclasses import asdict

    from core.engine import LocalEngine, detect_device
    from core.hardware import (
        CPU_DECODE_EFFICIENCY,
        decode_tokens_per_s_bound,
        measure_bandwidth,
        memory_verdict,
        probe,
    )

    library = _library()
    info = probe(library.settings.models_dir)
    device = detect_device()
    precision = LocalEngine(library.settings.models_dir).precision()
    bandwidth = measure_bandwidth()
    models = {}
    for spec in library.models():
        estimate = library.memory_estimate(spec.key, precision)
        needed = estimate.total_bytes if estimate else None
        models[spec.key] = {
            "memory_needed_bytes": needed,
            "download_bytes": spec.download_bytes,
            "verdict": memory_verdict(needed, info).verdict if needed else "unknown",
            "est_tokens_per_s": round(
                decode_tokens_per_s_bound(estimate, bandwidth) * CPU_DECODE_EFFICIENCY, 1
            )
            if estimate
            else None,
        }
    report = {
        "cpu": info.cpu_name,
        "physical_cores": info.physical_cores,
        "logical_cores": info.logical_cores,
        "ram_total_bytes": info.ram_total_bytes,
        "ram_available_bytes": info.ram_available_bytes,
        "swap_total_bytes": info.swap_total_bytes,
        "gpus": [asdict(gpu) for gpu in info.gpus],
        "mps": info.mps_available,
        "disk_free_bytes": info.disk_free_bytes,
        "device": device,
        "memory_bandwidth_bytes_per_s": round(bandwidth),
        "models": models,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"CPU     {info.cpu_name}, {info.physical_cores} cores / {info.logical_cores} threads")
    print(
        f"RAM     {format_bytes(info.ram_available_bytes)} available of {format_bytes(info.ram_total_bytes)}"
    )
    for gpu in info.gpus:
        free, total = format_bytes(gpu.memory_free_bytes), format_bytes(gpu.memory_total_bytes)
        print(f"GPU     {gpu.name}: {free} free of {total}")
    if not info.gpus:
        print("GPU     none: models run on the CPU")
    print(f"Disk    {format_bytes(info.disk_free_bytes)} free on {info.disk_path}")
    print(f"Memory bandwidth {bandwidth / 1e9:.1f} GB/s (measured): decode reads every weight once per token")
    for key, model in models.items():
        needed = format_bytes(model["memory_needed_bytes"]) if model["memory_needed_bytes"] else "?"
        speed = f"~{model['est_tokens_per_s']} tokens/s at most" if model["est_tokens_per_s"] else ""
        print(f"{key:<24} needs {needed:>9}  {model['verdict']:<10} {speed}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the local models over an OpenAI-compatible API (a token is required off loopback)."""
    import secrets

    import uvicorn

    from core.access import is_loopback
    from core.api import create_app, server_urls
    from core.api.status import record_server
    from core.engine import LocalEngine

    if not 1 <= args.max_request_mb <= 1024:
        raise ConfigError("--max-request-mb must be between 1 and 1024.")
    settings = load_settings()
    db = Database(settings.db_url)
    library = ModelLibrary(db, settings)
    api_key = os.environ.get("LOCALLLM_API_KEY") or None
    if api_key is None and not is_loopback(args.host):
        api_key = secrets.token_urlsafe(24)
        print(f"API key (send it as 'Authorization: Bearer <key>'): {api_key}")
    engine = LocalEngine(settings.models_dir)
    if args.model:
        engine.load(library.get(args.model).key)

    def ready_models() -> list[str]:
        return [spec.key for spec in library.models() if library.status(spec.key).kind == "ready"]

    record_server(db, args.host, args.port, bool(api_key), os.getpid())
    for url in server_urls(args.host, args.port):
        print(f"OpenAI-compatible API at {url}", flush=True)
    app = create_app(engine, ready_models, api_key, max_body_bytes=args.max_request_mb * 1024**2)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core", description="LocalLLM Dashboard: download, check and chat with small LLMs."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    app = commands.add_parser("app", help="start the dashboard on http://localhost:PORT")
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--lan", action="store_true", help="open it to the LAN (needs LOCALLLM_PASSWORD)")
    app.set_defaults(func=cmd_app)

    models = commands.add_parser("models", help="the model catalog with status and size")
    models.set_defaults(func=cmd_models)

    download = commands.add_parser("download", help="download and verify a model (resumes a partial one)")
    download.add_argument("model", metavar="KEY_OR_REPO_ID")
    download.add_argument(
        "--endpoint", action="append", metavar="URL", help="endpoint to use, in order (repeatable)"
    )
    download.set_defaults(func=cmd_download)

    chat = commands.add_parser("chat", help="chat with a downloaded model (REPL on stdin without --prompt)")
    chat.add_argument("model", metavar="KEY")
    chat.add_argument("--prompt", help="one message; without it, each stdin line is a message")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.7)
    chat.add_argument("--ignore-eos", action="store_true", help="always generate --max-new-tokens tokens")
    chat.add_argument("--stats", action="store_true", help="print one JSON line of statistics per reply")
    chat.add_argument("--force", action="store_true", help="load even if memory looks insufficient")
    chat.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default="int4",
        help="weights on the CPU: int4 (default, fastest), int8, or none (16-bit, the reference)",
    )
    chat.set_defaults(func=cmd_chat)

    hardware = commands.add_parser("hardware", help="this machine and whether each model fits, how fast")
    hardware.add_argument("--json", action="store_true", help="one JSON object")
    hardware.set_defaults(func=cmd_hardware)

    serve = commands.add_parser("serve", help="serve local models over an OpenAI-compatible HTTP API")
    serve.add_argument("--host", default="127.0.0.1", help="0.0.0.0 for the LAN (then a token is required)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", metavar="KEY", help="load this model at start")
    serve.add_argument("--max-request-mb", type=int, default=8, metavar="MIB",
                       help="largest request body accepted, in MiB (default 8)")  # fmt: skip
    serve.set_defaults(func=cmd_serve)

    verify = commands.add_parser("verify", help="check every file of a downloaded model (size and hash)")
    verify.add_argument("model", metavar="KEY")
    verify.set_defaults(func=cmd_verify)

    db = commands.add_parser("db", help="the database: backup, restore FILE, check")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    backup = db_commands.add_parser("backup", help="copy the database to data/backups/ (the last 7 are kept)")
    backup.set_defaults(func=cmd_db_backup)
    restore = db_commands.add_parser("restore", help="replace the database's content with a backup FILE")
    restore.add_argument("file", metavar="FILE", help="a backup, e.g. data/backups/localllm-...db")
    restore.set_defaults(func=cmd_db_restore)
    check = db_commands.add_parser("check", help="SQLite's integrity check; exit 1 when it finds damage")
    check.set_defaults(func=cmd_db_check)

    users = commands.add_parser("users", help="LAN user names: list, reset a forgotten personal password")
    users_commands = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    listing = users_commands.add_parser("list", help="names and whether each is claimed")
    listing.set_defaults(func=cmd_users_list)
    reset = users_commands.add_parser("reset", help="forget NAME's password and sign it out everywhere")
    reset.add_argument("name", metavar="NAME")
    reset.set_defaults(func=cmd_users_reset)

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
        return 2 if exc.bad_input else 1
