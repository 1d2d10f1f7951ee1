"""The engine's own kernels (core/inference/native.cpp): int4 exact on 8-bit rows, int8 exact to 15 bits,
one row alone or in a batch alike, built and loaded once, and torch's kernels wherever they cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.inference import native, quantize
from core.inference.quantize import (
    INT4_GROUP,
    PROMPT_PEAK,
    UNPACK_BLOCK,
    Int4Linear,
    Int8Linear,
    packed_matmul,
    unpack_int4,
)


@pytest.fixture(scope="module")
def built() -> None:
    if not native.prepare():  # built here if `make` did not (~10 s)
        pytest.skip(f"the engine's own int4 kernel does not run here ({native.LIBRARY.problem})")


def _layer(inputs: int, outputs: int, seed: int = 0) -> Int4Linear:
    torch.manual_seed(seed)
    return Int4Linear.from_linear(torch.nn.Linear(inputs, outputs, bias=False), torch.bfloat16)


def _weights(layer: Int4Linear) -> torch.Tensor:
    """The layer's weights as the kernels read them, in float32: in × out."""
    return unpack_int4(*layer.native_weights(), 0, layer.out_features)


def _eight_bit(rows: torch.Tensor) -> torch.Tensor:
    """rows rounded as the kernel takes them: 8 bits a value, a scale a group of 32 (its largest / 127)."""
    groups = rows.float().reshape(rows.shape[0], -1, INT4_GROUP)
    scale = groups.abs().amax(-1, keepdim=True) / 127
    codes = torch.where(scale > 0, groups / scale, 0).round()
    return (codes * scale).reshape(rows.shape)


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("count", [1, 3, 4, 9])
def test_rows_already_in_eight_bits_get_the_exact_product(dtype: torch.dtype, count: int) -> None:
    layer = _layer(8 * INT4_GROUP, 3 * UNPACK_BLOCK)
    rows = torch.randint(-127, 128, (count, layer.in_features)).float()
    rows.view(count, -1, INT4_GROUP)[:, :, 0] = 127  # each group's scale is 1: its codes are the values
    rows[-1, :INT4_GROUP] = 0  # a group of zeros too
    product = native.int4_rows(rows.to(dtype), *layer.native_weights())
    assert product.dtype == dtype and product.shape == (count, layer.out_features)
    expected = rows @ _weights(layer)
    torch.testing.assert_close(product.float(), expected, rtol=2**-8, atol=1e-3 * expected.abs().max().item())


@pytest.mark.usefixtures("built")
def test_any_rows_get_the_weights_times_their_eight_bit_rounding() -> None:
    layer = _layer(2048, 11 * UNPACK_BLOCK, seed=1)
    rows = torch.randn(5, layer.in_features, dtype=torch.bfloat16)
    rows[2, 7] = 40.0  # an outlier coarsens its own group only
    product = native.int4_rows(rows, *layer.native_weights()).float()
    weights = _weights(layer)
    rounded = _eight_bit(rows) @ weights
    assert ((product - rounded).norm() / rounded.norm()).item() < 2**-8  # the bf16 output's rounding
    exact = rows.float() @ weights
    error = ((product - exact).norm() / exact.norm()).item()
    assert 0 < error < 0.01  # 8-bit rows: ~0.5 % here; torch's kernel (bf16) ~0.2 %


@pytest.mark.usefixtures("built")
def test_a_row_gets_the_same_product_alone_as_beside_others() -> None:
    # Replies decoding together get what they would get alone, to the bit (core.inference.batching).
    layer = _layer(2048, 4 * UNPACK_BLOCK, seed=2)
    rows = torch.randn(7, layer.in_features, dtype=torch.bfloat16)
    together = native.int4_rows(rows, *layer.native_weights())
    for index in range(len(rows)):
        alone = native.int4_rows(rows[index : index + 1].contiguous(), *layer.native_weights())
        assert torch.equal(alone[0], together[index])


@pytest.mark.usefixtures("built")
def test_an_int4_layer_decodes_through_it_and_odd_shapes_through_torchs_kernel() -> None:
    layer = _layer(4 * INT4_GROUP, 2 * UNPACK_BLOCK)
    rows = torch.randn(2, layer.in_features, dtype=torch.bfloat16)
    assert layer.native_runs()
    assert torch.equal(layer(rows), native.int4_rows(rows, *layer.native_weights()))
    odd = _layer(4 * INT4_GROUP, UNPACK_BLOCK + 32)  # not whole blocks of 64 outputs
    assert not odd.native_runs()
    torch.testing.assert_close(
        odd(rows), torch._weight_int4pack_mm_for_cpu(rows, odd.packed, INT4_GROUP, odd.torch_scales())
    )


@pytest.mark.usefixtures("built")
def test_int8_weights_meet_rows_in_15_bits_the_heads_tame_ones_in_8_and_need_no_packed_copy() -> None:
    torch.manual_seed(3)
    # float32: no output rounding to hide the rows' own. 202 outputs: each thread's share ends in outputs
    # the kernel takes one at a time, not four.
    layer = Int8Linear.from_linear(torch.nn.Linear(3 * 64, 202, bias=True), torch.float32)
    rows = torch.randn(6, layer.in_features)
    rows[4, 5] = 60.0  # a massive activation (~60 x the row's RMS): that row always goes in as two bytes
    assert layer.native_runs()
    exact = rows @ (layer.weight.float() * layer.scale[:, None]).t() + layer.bias

    def errors(product: torch.Tensor) -> list[float]:
        return ((product - exact).norm(dim=1) / exact.norm(dim=1)).tolist()

    product = layer(rows)
    assert max(errors(product)) < 2**-12  # every row to 15 bits of its largest
    layer.tame_rows_in_8_bits = True  # as quantize_model sets it for the output head
    head = layer(rows)
    tame = errors(head)
    assert tame.pop(4) < 2**-12 and min(tame) > 2**-10 and max(tame) < 2**-5  # 1/254 of the largest at most
    # What oneDNN's kernel gives for the same rows under the same rule (prompts' `packed_matmul`)
    packed = quantize.PackedInt8.of(layer.weight, layer.scale)
    torch.testing.assert_close(
        head - layer.bias, packed_matmul(rows, packed, PROMPT_PEAK), atol=1e-5, rtol=1e-5
    )
    tame_rows = [0, 1, 2, 3, 5]  # together: one byte plane; beside the outlier's row, or alone: two
    assert torch.equal(layer(rows[tame_rows]), head[tame_rows])
    for index in range(len(rows)):
        assert torch.equal(layer(rows[index : index + 1]), head[index : index + 1])
    layer.tame_rows_in_8_bits = False
    for index in range(len(rows)):
        assert torch.equal(layer(rows[index : index + 1]), product[index : index + 1])
    assert quantize.pack_in_background(layer) is None and layer.packed is None and not layer.packing


def test_without_it_torchs_kernel_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _layer(4 * INT4_GROUP, 2 * UNPACK_BLOCK)
    monkeypatch.setattr(native, "LIBRARY", native._Library())
    monkeypatch.setenv("LOCALLLM_NATIVE", "0")
    assert not native.ready() and native.LIBRARY.problem == "LOCALLLM_NATIVE=0"
    rows = torch.randn(1, layer.in_features, dtype=torch.bfloat16)
    assert torch.equal(
        layer(rows), torch._weight_int4pack_mm_for_cpu(rows, layer.packed, INT4_GROUP, layer.torch_scales())
    )
    int8 = Int8Linear.from_linear(torch.nn.Linear(64, 32, bias=False), torch.bfloat16)
    rows = torch.randn(2, 64, dtype=torch.bfloat16)
    assert torch.equal(int8(rows), torch._weight_int8pack_mm(rows, int8.weight, int8.scale))


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize("path", ["kernel_product", "native_parts"])
def test_torchs_scales_are_kept_while_the_kernels_are_built_and_let_go_once_they_run(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    layer = _layer(4 * INT4_GROUP, 2 * UNPACK_BLOCK)
    rows = torch.randn(1, layer.in_features, dtype=torch.bfloat16)
    building = native._Library()
    building.started = True  # a build under way: nothing loaded yet
    monkeypatch.setattr(native, "LIBRARY", building)
    scales = layer.torch_scales()
    assert torch.equal(layer(rows), torch._weight_int4pack_mm_for_cpu(rows, layer.packed, INT4_GROUP, scales))
    kept = layer.torch_scales_bytes()
    assert kept == 4 * layer.in_features // INT4_GROUP * layer.out_features  # a bf16 pair a group
    assert quantize.stored_bytes(layer) == kept + sum(t.numel() * t.element_size() for t in layer.buffers())
    monkeypatch.undo()  # built and loaded (the fixture's library)
    if path == "kernel_product":
        assert torch.equal(layer(rows), native.int4_rows(rows, *layer.native_weights()))
    else:  # the decoder takes the layer's weights for its own decoding layer
        assert layer.native_parts() is not None
    assert layer.torch_scales_bytes() == 0
    assert layer.torch_scales() is not layer.torch_scales()  # made each time now, not kept


def test_a_machine_without_a_compiler_says_why_and_keeps_torchs_kernel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(native, "LIBRARY", native._Library())
    monkeypatch.setenv("LOCALLLM_NATIVE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    assert not native.ready()  # the build starts on a thread of its own: nothing waits for it
    assert not native.LIBRARY.prepare(timeout_s=60)
    assert native.LIBRARY.problem.startswith("not built: ") and "no-such-compiler" in native.LIBRARY.problem
    assert not any(tmp_path.rglob("*.so"))  # nothing half-built left where a later start would load it
    assert not _layer(4 * INT4_GROUP, 2 * UNPACK_BLOCK).native_runs()


def test_the_library_is_kept_per_source_and_torch_version(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LOCALLLM_NATIVE_DIR", str(tmp_path))
    path = native.library_path()
    assert path.parent == tmp_path / "localllm" and path.suffix == ".so"
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert native.library_path() != path  # another torch: built again
    assert quantize.native is native


@pytest.mark.usefixtures("built")
def test_speed_and_memory_estimates_count_on_the_kernels_that_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from core.inference.engine import LocalEngine
    from core.inference.sizing import (
        CPU_DECODE_EFFICIENCY,
        NATIVE_DECODE_EFFICIENCY,
        KvLayout,
        Vocabulary,
        estimate_memory,
    )

    engine = LocalEngine(tmp_path, device="cpu", idle_unload_s=0, quantization="int4")
    monkeypatch.setattr("core.inference.engine.choose_dtype", lambda device: torch.bfloat16)

    def plan() -> tuple[float, float]:
        """The plan's bytes a weight of the int4 layers, and how many times it holds the int8 head (its
        bytes: the vocabulary's weights)."""
        vocabulary, precision = Vocabulary(1_000_000, tied=True), engine.precision()
        plan = estimate_memory(2_000_000, KvLayout(2, 2, 64), precision, vocabulary)
        layers = precision.weight_bytes
        return layers, (plan.weights_bytes - 1_000_000 * layers) / vocabulary.weights

    monkeypatch.setattr(native, "LIBRARY", native._Library())  # nothing loaded yet in this process
    assert engine.decode_efficiency() == CPU_DECODE_EFFICIENCY  # the Models page's estimate: torch's
    # int8, and packed for oneDNN's kernel; the int4 scales' codes and torch's bf16 pairs made of them
    assert plan() == (0.5 + 2 / 32 + 8 / 512 + 4 / 32, 2)
    assert native.LIBRARY.prepare()
    assert engine.decode_efficiency() == NATIVE_DECODE_EFFICIENCY > CPU_DECODE_EFFICIENCY
    assert plan() == (0.578125, 1)  # the engine's own kernel reads both as they are stored: 4.625 bits
    # A CPU without bf16 (Ice Lake: VNNI and VBMI, no AVX512-BF16) runs float32, which the engine's int4
    # kernel does not take: torch's kernel multiplies the int4 layers there, with its bf16 pairs.
    monkeypatch.setattr("core.inference.engine.choose_dtype", lambda device: torch.float32)
    assert plan() == (0.703125, 1)
    assert engine.decode_efficiency() == CPU_DECODE_EFFICIENCY  # and decodes at torch's speed
    layer = Int4Linear.from_linear(torch.nn.Linear(4 * INT4_GROUP, 2 * UNPACK_BLOCK), torch.float32)
    assert not layer.native_runs()


@pytest.mark.usefixtures("built")
@pytest.mark.parametrize(("rows", "vocabulary", "count"), [(1, 151_936, 10), (3, 32_000, 88), (2, 50, 50)])
def test_the_best_scores_are_torchs_top_k(rows: int, vocabulary: int, count: int) -> None:
    scores = torch.randn(rows, vocabulary, generator=torch.Generator().manual_seed(count))
    values, ids = native.best_scores(scores, count)
    expected_values, expected_ids = torch.topk(scores, count)
    assert torch.equal(values, expected_values) and torch.equal(ids, expected_ids)


@pytest.mark.usefixtures("built")
def test_the_best_scores_keep_the_lower_ids_of_equal_ones_and_never_a_nan() -> None:
    scores = torch.zeros(1, 100)
    scores[0, [90, 70, 30]] = 2.0  # a tie among the best, found after a lower one and out of order
    scores[0, 2] = float("nan")  # among the first five, which fill the heap
    scores[0, 64] = float("nan")  # in the part read 16 at a time (90 is in the rest, read one by one)
    values, ids = native.best_scores(scores, 5)
    assert values.tolist() == [[2.0, 2.0, 2.0, 0.0, 0.0]]
    assert ids.tolist() == [[30, 70, 90, 0, 1]]  # equal ones by id, as argmax takes the first


@pytest.mark.usefixtures("built")
def test_the_best_scores_refuse_what_they_cannot_read() -> None:
    scores = torch.randn(2, 64)
    with pytest.raises(RuntimeError, match="from 1 to 64 of them, not 65"):
        native.best_scores(scores, 65)
    with pytest.raises(RuntimeError, match="contiguous float32 scores"):
        native.best_scores(scores.t(), 2)
    with pytest.raises(RuntimeError, match="contiguous float32 scores"):
        native.best_scores(scores.to(torch.bfloat16), 2)


def _fit_error(groups: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> float:
    """What `fit_groups` minimises, over all groups: Σ importance × (code × scale + offset - weight)²."""
    step = torch.where(scale > 0, scale, torch.ones_like(scale))[:, None]
    codes = ((groups - offset[:, None]) / step).round().clamp(0, 15)
    return float(
        (quantize.importance(groups) * (codes * scale[:, None] + offset[:, None] - groups).square()).sum()
    )


@pytest.mark.usefixtures("built")
def test_the_groups_fit_is_torchs_fit_up_to_the_order_of_its_sums() -> None:
    generator = torch.Generator().manual_seed(0)
    groups = torch.cat(
        (
            torch.randn(4000, INT4_GROUP, generator=generator) * 0.02,
            torch.randn(4000, INT4_GROUP, generator=generator).pow(3),  # heavy tails: stretched ranges win
            torch.randint(-3, 4, (1000, INT4_GROUP), generator=generator).float(),  # ties between roundings
            torch.zeros(1, INT4_GROUP),  # no range at all
        )
    )  # 9,001: not a multiple of the 16 groups fitted at once
    _, expected_scale, expected_offset = quantize.fit_groups(groups)
    stretches = torch.tensor(quantize.FIT_STRETCHES, dtype=torch.float32)
    scale, offset = native.fit_groups(groups, 15, stretches)
    close = torch.isclose(scale, expected_scale, rtol=1e-5, atol=0) & torch.isclose(
        offset, expected_offset, rtol=1e-5, atol=1e-9
    )
    assert float(close.float().mean()) > 0.99  # the rest chose another rounding of (nearly) equal error
    # as close to the weights: the choice between roundings compares float32 sums, in either order
    assert _fit_error(groups, scale, offset) == pytest.approx(
        _fit_error(groups, expected_scale, expected_offset), rel=1e-4
    )
    assert scale[-1] == expected_scale[-1] and offset[-1] == expected_offset[-1] == 0  # the zero group
    rows = groups[:9000].view(1000, 9, INT4_GROUP)  # as quantize_groups hands them over: rows × groups
    assert torch.equal(quantize.fitted_pairs(rows)[0], scale[:9000].view(1000, 9))


def _seen(quantized: tuple[torch.Tensor, torch.Tensor, torch.Tensor], rows: int) -> torch.Tensor:
    """The weights (out × in) as the int4 kernels read them back from quantize_groups' layout."""
    return unpack_int4(*quantized, 0, rows).t()


@pytest.mark.usefixtures("built")
def test_quantizing_in_the_engines_kernel_is_torchs_quantizing_up_to_the_order_of_its_sums(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(1)
    rows, columns = 3 * UNPACK_BLOCK, 40 * INT4_GROUP  # two super-blocks of groups and a part of one
    weight = torch.randn(rows, columns, generator=generator) * 0.02
    weight[64:128] = torch.randn(64, columns, generator=generator).pow(3)  # heavy tails
    weight[128:160] = torch.randint(-3, 4, (32, columns), generator=generator).float()  # ties
    weight[5] = 0  # an output of zeros: no range, no importance
    weight[7, 3 * INT4_GROUP : 4 * INT4_GROUP] = 0  # a group of zeros among others
    stretches = torch.tensor(quantize.FIT_STRETCHES, dtype=torch.float32)
    engine = native.quantize_int4(weight, stretches)
    for chunk in (UNPACK_BLOCK * columns, 2**20):  # three chunks of 64 outputs, or one: each output alone
        assert all(map(torch.equal, quantize.quantize_groups(weight, chunk), engine))  # a first load's
    with monkeypatch.context() as patch:
        patch.setattr(native.LIBRARY, "loaded", False)
        expected = quantize.quantize_groups(weight)
    assert [part.shape for part in engine] == [part.shape for part in expected]
    assert [part.dtype for part in engine] == [part.dtype for part in expected]
    for part, reference in zip(engine[:2], expected[:2], strict=True):  # 4-bit codes, scale and offset codes
        assert float((part == reference).float().mean()) > 0.99
    close_units = torch.isclose(engine[2], expected[2], rtol=1e-5, atol=0)
    assert float(close_units.float().mean()) > 0.99
    seen, reference = _seen(engine, rows), _seen(expected, rows)
    error, reference_error = ((part - weight).square().sum() for part in (seen, reference))
    # as close to the weights (a unit a few ulps apart can move a code: 1.7e-4 of the error here)
    assert float(error) == pytest.approx(float(reference_error), rel=1e-3)
    assert not seen[5].any() and not seen[7, 3 * INT4_GROUP : 4 * INT4_GROUP].any()  # zeros stay zeros
    with pytest.raises(RuntimeError, match="outputs a multiple of 64"):
        native.quantize_int4(weight[:100].contiguous(), stretches)
