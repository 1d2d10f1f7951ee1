"""`localllm app`: start the dashboard."""

from __future__ import annotations

import os
import subprocess
import sys

import click

from core.access.policy import cannot_listen, lan_addresses, load_access_policy, port_in_use
from core.settings import PROJECT_ROOT


@click.command(short_help="start the dashboard (--lan: open it to other machines)")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=8501, show_default=True, help="port to listen on"
)
@click.option(
    "--lan", is_flag=True, help="open it to other machines (needs LOCALLLM_PASSWORD for the sign-in)"
)
def app(port: int, lan: bool) -> int:
    """Start the dashboard on http://localhost:PORT (with --lan: on every interface, behind a sign-in)."""
    address = "localhost"
    if lan:
        if not load_access_policy().lan_allowed:
            click.echo(
                "error: --lan needs a password for the sign-in page. Set LOCALLLM_PASSWORD, or put\n"
                '  password = "..."\n'
                "in .streamlit/secrets.toml, then start again.",
                err=True,
            )
            return 2
        address = "0.0.0.0"
        urls = ", ".join(f"http://{ip}:{port}" for ip in lan_addresses()) or "(no LAN address now)"
        click.echo(f"LAN sharing on: other machines open {urls} and sign in with the password.")
    if problem := cannot_listen(address, port):  # Streamlit would say only "Port N is not available"
        click.echo(
            f"error: port {port} is in use: the dashboard may be running already (open "
            f"http://localhost:{port}), or start it on another port with --port."
            if port_in_use(problem)
            else f"error: cannot listen on {address}:{port}: {problem.strerror or problem}.",
            err=True,
        )
        return 1
    command = [sys.executable, "-m", "ui.server", "--port", str(port), "--address", address]
    os.chdir(PROJECT_ROOT)
    sys.stdout.flush()
    if os.name == "posix":  # become the server: a signal to this process reaches Streamlit itself
        os.execv(sys.executable, command)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return 130
