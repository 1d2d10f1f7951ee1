"""Where a prompt's int4 matrices are unpacked: measured once on this machine, kept beside the models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from core.inference import calibration, native, quantize
from core.inference.engine import LocalEngine


def test_a_measurement_is_rows_where_the_paths_cross_or_none_when_timings_cannot_tell() -> None:
    rows = calibration.measure_int4_prompt_rows()  # timed here, on this CPU, maybe busy
    assert rows is None or (rows % 16 == 0 and 16 <= rows <= 256)


def test_the_crossing_is_kept_when_two_measurements_agree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured = iter([64, 48])
    monkeypatch.setattr(calibration, "measure_int4_prompt_rows", lambda: next(measured))
    assert calibration.int4_prompt_rows(tmp_path) == 64  # of two neighbours, the nearer the kernel
    [(key, kept)] = json.loads((tmp_path / calibration.FILE).read_text()).items()
    assert kept == 64 and torch.__version__ in key

    def measured_again() -> int:
        raise AssertionError("measured again: a later load must read what was kept")

    monkeypatch.setattr(calibration, "measure_int4_prompt_rows", measured_again)
    assert calibration.int4_prompt_rows(tmp_path) == 64


@pytest.mark.parametrize("measurements", [[None, 64], [64, None], [48, 128]])
def test_on_a_busy_machine_the_default_is_used_and_nothing_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, measurements: list[int | None]
) -> None:
    measured = iter(measurements)
    monkeypatch.setattr(calibration, "measure_int4_prompt_rows", lambda: next(measured))
    assert calibration.int4_prompt_rows(tmp_path) == quantize.INT4_PROMPT_ROWS
    assert not (tmp_path / calibration.FILE).exists()  # the next load measures again


@pytest.mark.parametrize(
    "content",
    ["not json", "[1, 2]", '{"KEY": 3}', '{"KEY": 100000}', '{"KEY": "64"}', "{" + " " * 70_000 + "}"],
)
def test_a_damaged_or_foreign_file_is_measured_again_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    key = f"{calibration.cpu_name()} · torch {torch.__version__}"
    (tmp_path / calibration.FILE).write_text(content.replace("KEY", key))
    monkeypatch.setattr(calibration, "measure_int4_prompt_rows", lambda: 80)
    assert calibration.int4_prompt_rows(tmp_path) == 80
    assert json.loads((tmp_path / calibration.FILE).read_text())[key] == 80


def test_another_machines_figure_stays_beside_this_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / calibration.FILE).write_text(json.dumps({"Some other CPU · torch 2.9": 112}))
    monkeypatch.setattr(calibration, "measure_int4_prompt_rows", lambda: 64)
    assert calibration.int4_prompt_rows(tmp_path) == 64
    assert json.loads((tmp_path / calibration.FILE).read_text())["Some other CPU · torch 2.9"] == 112


@pytest.mark.parametrize("kernel", ["torch's", "native"])
def test_a_loaded_int4_model_unpacks_its_prompts_from_the_kept_crossing(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch, kernel: str
) -> None:
    from tests.fixtures.tiny_models import install_ready

    install_ready(tmp_path, "tiny", tiny_models["qwen2"])
    if kernel == "native":  # the engine's own kernel outruns unpacking: nothing measured, never unpacked
        if not native.prepare():
            pytest.skip(f"the engine's own int4 kernel does not run here ({native.LIBRARY.problem})")
        monkeypatch.setattr(calibration, "measure_int4_prompt_rows", lambda: pytest.fail("measured"))
    else:
        monkeypatch.setattr(native, "ready", lambda: False)
        monkeypatch.setattr(calibration, "measure_int4_prompt_rows", lambda: 48)  # as if measured here
    engine = LocalEngine(tmp_path, device="cpu", idle_unload_s=0)
    info = engine.load("tiny")
    layers = [m for m in engine.parts_of("tiny").model.modules() if isinstance(m, quantize.Int4Linear)]
    if info.weights != "int4" or info.dtype != "bfloat16":
        pytest.skip(f"this CPU runs {info.weights} in {info.dtype}: prompts never unpack int4 weights")
    expected = quantize.UNPACK_NEVER if kernel == "native" else 48
    assert layers and {layer.prompt_rows for layer in layers} == {expected}
    engine.unload()
