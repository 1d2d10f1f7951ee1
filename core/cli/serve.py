"""`localllm serve`: the local models over an OpenAI-compatible HTTP API."""

from __future__ import annotations

import os

import click

from core.access.policy import cannot_listen, port_in_use
from core.cli.common import library, load_with_notice, warn
from core.hardware import keep_out_of_collections
from core.settings import load_settings


@click.command(short_help="serve the models over an OpenAI-compatible HTTP API")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; 0.0.0.0 for the LAN (then a bearer token is required)")  # fmt: skip
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8000, show_default=True, help="port to listen on"
)
@click.option("--model", metavar="KEY", help="load this model at start (else at the first request)")
@click.option("--max-request-mb", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="largest request body accepted, in MiB")  # fmt: skip
@click.option("--new-key", is_flag=True, help="make a new API key (the kept one stops working)")
def serve(host: str, port: int, model: str | None, max_request_mb: int, new_key: bool) -> int:
    """Serve the downloaded models over an OpenAI-compatible API (/v1/models, /v1/chat/completions,
    /v1/completions, /v1/responses; vLLM's /tokenize, for lm-evaluation-harness too), Ollama's
    (/api/chat, /api/generate, /api/tags, ...) and Anthropic's (/v1/messages), with the models folder,
    device and weights of the saved settings (docs/api.md). Off loopback a bearer token
    is required: LOCALLLM_API_KEY, or the one made at the first such start and kept in the data folder
    (printed at every start; --new-key replaces it)."""
    if problem := cannot_listen(host, port):
        click.echo(
            f"error: port {port} is in use (another localllm serve, or another program): choose another "
            "with --port."
            if port_in_use(problem)
            else f"error: cannot listen on {host}:{port}: {problem.strerror or problem}. --host takes an "
            "address of this machine: 127.0.0.1, or 0.0.0.0 for the LAN.",
            err=True,
        )
        return 1
    import uvicorn

    from core.api import create_app, server_urls
    from core.api.keys import KEY_FILE, api_key_for
    from core.api.status import record_server
    from core.inference.engine import LocalEngine

    models_library = library()
    data_dir = load_settings().data_dir
    api_key = api_key_for(host, data_dir, renew=new_key)
    if api_key is not None and not os.environ.get("LOCALLLM_API_KEY"):
        click.echo(
            f"API key (send it as 'Authorization: Bearer <key>'; kept in {data_dir / KEY_FILE}): {api_key}"
        )
    engine = LocalEngine.from_preferences(models_library.preferences)
    keep_out_of_collections()  # the imports' objects; a model loaded later stays collectable
    if model:
        load_with_notice(engine, models_library.get(model).key)
    elif not models_library.ready_keys():
        warn(
            "No model is downloaded yet: `localllm download qwen2.5-0.5b` (or the dashboard's Models page); "
            "an Ollama client's pull downloads one too."
        )

    record_server(models_library.db, host, port, bool(api_key), os.getpid())
    for url in server_urls(host, port):
        root = url.removesuffix("/v1")
        click.echo(f"OpenAI-compatible API at {url}; Ollama's and Anthropic's at {root}")
    app = create_app(engine, models_library.ready_keys, api_key, max_body_bytes=max_request_mb * 1024**2,
                     library=models_library)  # fmt: skip
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
