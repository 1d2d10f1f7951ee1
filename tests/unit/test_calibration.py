"""Where a prompt's int4 matrices are unpacked: measured once on this machine, kept beside the models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.inference import calibration, quantize
from core.inference.engine import LocalEngine


def test_the_crossing_is_measured_once_and_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = calibration.int4_prompt_rows(tmp_path)  # measured here, on this CPU
    assert rows % 16 == 0 and quantize.CALIBRATION_ROWS <= rows <= 256
    [(key, kept)] = json.loads((tmp_path / calibration.FILE).read_text()).items()
    assert kept == rows and torch.__version__ in key

    def measured_again() -> int:
        raise AssertionError("measured again: a later start must read what was kept")

    monkeypatch.setattr(quantize, "measure_int4_prompt_rows", measured_again)
    assert calibration.int4_prompt_rows(tmp_path) == rows


@pytest.mark.parametrize(
    "content",
    ["not json", "[1, 2]", '{"KEY": 3}', '{"KEY": 100000}', '{"KEY": "64"}', "{" + " " * 70_000 + "}"],
)
def test_a_damaged_or_foreign_file_is_measured_again_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    key = f"{calibration.cpu_name()} · torch {torch.__version__}"
    (tmp_path / calibration.FILE).write_text(content.replace("KEY", key))
    monkeypatch.setattr(quantize, "measure_int4_prompt_rows", lambda: 80)
    assert calibration.int4_prompt_rows(tmp_path) == 80
    assert json.loads((tmp_path / calibration.FILE).read_text())[key] == 80


def test_another_machines_figure_stays_beside_this_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / calibration.FILE).write_text(json.dumps({"Some other CPU · torch 2.9": 112}))
    monkeypatch.setattr(quantize, "measure_int4_prompt_rows", lambda: 64)
    assert calibration.int4_prompt_rows(tmp_path) == 64
    assert json.loads((tmp_path / calibration.FILE).read_text())["Some other CPU · torch 2.9"] == 112


def test_a_loaded_int4_model_unpacks_its_prompts_from_the_kept_crossing(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fixtures.tiny_models import install_ready

    install_ready(tmp_path, "tiny", tiny_models["qwen2"])
    monkeypatch.setattr(quantize, "measure_int4_prompt_rows", lambda: 48)  # as if measured here
    engine = LocalEngine(tmp_path, device="cpu", idle_unload_s=0)
    info = engine.load("tiny")
    layers = [m for m in engine._parts.model.modules() if isinstance(m, quantize.Int4Linear)]
    if info.weights != "int4" or info.dtype != "bfloat16":
        pytest.skip(f"this CPU runs {info.weights} in {info.dtype}: prompts never unpack int4 weights")
    assert layers and {layer.prompt_rows for layer in layers} == {48}
    engine.unload()
