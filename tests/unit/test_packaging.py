"""The project installs the way the field's apps do (`pip install .`, then `localllm`): the dependency
lists agree, and the Streamlit settings the launcher uses are the checkout's."""

from __future__ import annotations

import subprocess
import tomllib

from core.settings import PROJECT_ROOT, command_line


def requirement_lines(name: str) -> list[str]:
    lines = (PROJECT_ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


def test_requirements_files_list_what_pyproject_declares() -> None:
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    assert requirement_lines("requirements.txt") == project["dependencies"]
    assert requirement_lines("requirements-dev.txt") == project["optional-dependencies"]["dev"]
    assert project["scripts"]["localllm"] == "core.cli:run"


def test_the_streamlit_settings_of_the_checkout_and_of_the_package_are_one() -> None:
    packaged = (PROJECT_ROOT / "ui" / "streamlit.toml").read_text()
    assert (PROJECT_ROOT / ".streamlit" / "config.toml").read_text() == packaged
    options = tomllib.loads(packaged)
    assert (
        options["client"]["toolbarMode"] == "viewer"
    )  # the theme switch, no Deploy button or developer menu
    assert options["browser"]["gatherUsageStats"] is False  # no telemetry
    assert options["client"]["showErrorLinks"] is False  # no links that send an error to a search engine


def test_the_command_the_pages_show_runs_from_a_terminal() -> None:
    shown = command_line()
    result = subprocess.run(
        f"{shown} --help", shell=True, capture_output=True, text=True, cwd="/", timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "serve" in result.stdout
