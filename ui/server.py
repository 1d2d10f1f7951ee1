"""Start the dashboard (what `python -m core app` runs): Streamlit's server for app.py, behind the
project's guards.

Every request first meets `TrustedHostsMiddleware` (a `Host` that is not this machine's, or a page of
another site, gets nothing: DNS rebinding and cross-site websockets) and `LanGateMiddleware` (a LAN
browser reaches only the sign-in page until it signs in); every response says that no other site may
frame it (`NoForeignFramesMiddleware`: clickjacking). All run in Streamlit's own ASGI app (`st.App`),
before any Streamlit route.

pages/ holds st.navigation pages. Streamlit still treats a `pages/` folder beside the entry script as
legacy multipage mode until some run of app.py calls st.navigation, so the first request of a new
server for /models would run pages/models.py alone: no router, no language, no sidebar. Marking
the app as navigation-routed before the server starts makes every first request go through app.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware
from streamlit.runtime.pages_manager import PagesManager

from core.access.framing import NoForeignFramesMiddleware
from core.access.hosts import TrustedHostsMiddleware
from core.logs import setup_logging
from core.settings import PROJECT_ROOT
from ui.i18n import dotted
from ui.lan_gate import LanGateMiddleware
from ui.reruns import keep_page_links

APP_SCRIPT = PROJECT_ROOT / "app.py"
STREAMLIT_CONFIG = Path(__file__).parent / "streamlit.toml"


def streamlit_options() -> dict[str, object]:
    """ui/streamlit.toml as Streamlit's dotted option names ({"server": {"port": 1}} → "server.port")."""
    with STREAMLIT_CONFIG.open("rb") as handle:
        return dotted(tomllib.load(handle))


@contextlib.asynccontextmanager
async def serving_api(_app: st.App) -> AsyncIterator[None]:
    """The dashboard's own API starts with its server where the Settings page turned it on, not at the
    first browser visit: programs reach it before anyone opens a page."""
    from ui import resources

    # The process-wide resources are made outside a script run here, which Streamlit would note with a
    # warning at each call ("missing ScriptRunContext"): the pages find them made.
    unrun = logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context")
    level = unrun.level
    unrun.setLevel(logging.ERROR)
    try:
        if resources.preferences().get("api_serving") != "off":
            await asyncio.to_thread(resources.dashboard_api)
    finally:
        unrun.setLevel(level)
    yield


def build_app() -> st.App:
    guards = [NoForeignFramesMiddleware, TrustedHostsMiddleware, LanGateMiddleware]  # the first is outermost
    return st.App(APP_SCRIPT, lifespan=serving_api, middleware=[Middleware(guard) for guard in guards])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ui.server", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--address", default="localhost", help="0.0.0.0 to open it to the LAN")
    args = parser.parse_args(argv)
    setup_logging()
    PagesManager.uses_pages_directory = False
    keep_page_links()
    # Client addresses decide who is admin: trust X-Forwarded-For from this machine only (uvicorn's default).
    os.environ.pop("FORWARDED_ALLOW_IPS", None)
    # App.run() takes sys.argv[0] as the script the app lives beside (its folder goes on sys.path, as
    # `streamlit run app.py` does); that is app.py, not this launcher inside ui/.
    sys.argv = [str(APP_SCRIPT)]
    build_app().run(config={**streamlit_options(), "server.port": args.port, "server.address": args.address})


if __name__ == "__main__":
    main()
