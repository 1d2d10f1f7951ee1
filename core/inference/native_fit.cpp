// Quantizing's fit on x86 CPUs with AVX-512, built and loaded with native.cpp by core/inference/native.py:
// each group of 32 weights gets the scale and offset core.inference.quantize.fit_groups fits (llama.cpp's
// make_qkx2_quants: the min/max range stretched by each of a few steps, each rounding's scale and offset
// fitted by weighted least squares, the least error kept, min/max where it does better).
//
// torch runs fit_groups as ~90 passes over a chunk's float32 temporaries; here 16 groups go through all of
// it at once in registers, a group a lane, each lane summing its weights in their order. The sums are the
// same numbers up to their order of addition, so a rare group whose two best roundings are within that
// difference may keep the other one (an equally good fit).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "native.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t GROUP = 32;  // weights a scale and offset cover (core.inference.quantize.INT4_GROUP)
constexpr int64_t LANES = 16;  // groups fitted together, a group a lane

#if defined(__x86_64__)
// Round to nearest, ties to even (torch's round_), then clamp to 0..levels: a rounding's codes.
__attribute__((target("avx512f"))) inline __m512 codes_of(__m512 shifted, __m512 factor, __m512 levels) {
  const __m512 rounded = _mm512_roundscale_ps(_mm512_mul_ps(shifted, factor),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_min_ps(_mm512_max_ps(rounded, _mm512_setzero_ps()), levels);
}

// Σ weight × (offset - x + code × scale)² over a lane's group: fit_groups' `error`.
__attribute__((target("avx512f"))) __m512 error_of(const float (*x)[LANES], const float (*w)[LANES],
                                                   const float (*shifted)[LANES], __m512 factor, __m512 scale,
                                                   __m512 offset, __m512 levels) {
  __m512 total = _mm512_setzero_ps();
  for (int64_t i = 0; i < GROUP; ++i) {
    const __m512 code = codes_of(_mm512_load_ps(shifted[i]), factor, levels);
    const __m512 miss = _mm512_add_ps(_mm512_sub_ps(offset, _mm512_load_ps(x[i])), _mm512_mul_ps(code, scale));
    total = _mm512_add_ps(total, _mm512_mul_ps(_mm512_load_ps(w[i]), _mm512_mul_ps(miss, miss)));
  }
  return total;
}

// LANES groups (LANES x GROUP floats, a group after the other) into their scales and offsets.
__attribute__((target("avx512f"))) void fit_lanes(const float* groups, float levels_value, const float* stretches,
                                                  int64_t count, float* scale_out, float* offset_out) {
  alignas(64) float x[GROUP][LANES], w[GROUP][LANES], wx[GROUP][LANES], shifted[GROUP][LANES];
  for (int64_t g = 0; g < LANES; ++g) {
    for (int64_t i = 0; i < GROUP; ++i) x[i][g] = groups[g * GROUP + i];
  }
  const __m512 levels = _mm512_set1_ps(levels_value), zero = _mm512_setzero_ps(), two = _mm512_set1_ps(2.f);
  __m512 low = _mm512_set1_ps(INFINITY), high = _mm512_set1_ps(-INFINITY), squares = zero;
  for (int64_t i = 0; i < GROUP; ++i) {
    const __m512 v = _mm512_load_ps(x[i]);
    low = _mm512_min_ps(low, v);
    high = _mm512_max_ps(high, v);
    squares = _mm512_add_ps(squares, _mm512_mul_ps(v, v));
  }
  const __m512 span = _mm512_max_ps(_mm512_sub_ps(high, low), _mm512_set1_ps(1e-8f));
  const __m512 rms = _mm512_sqrt_ps(_mm512_div_ps(squares, _mm512_set1_ps(float(GROUP))));  // importance()
  __m512 sum_w = zero, sum_x = zero, sum_x2 = zero;
  for (int64_t i = 0; i < GROUP; ++i) {
    const __m512 v = _mm512_load_ps(x[i]);
    const __m512 weight = _mm512_add_ps(rms, _mm512_abs_ps(v)), weighted_x = _mm512_mul_ps(weight, v);
    _mm512_store_ps(w[i], weight);
    _mm512_store_ps(wx[i], weighted_x);
    _mm512_store_ps(shifted[i], _mm512_sub_ps(v, low));
    sum_w = _mm512_add_ps(sum_w, weight);
    sum_x = _mm512_add_ps(sum_x, weighted_x);
    sum_x2 = _mm512_add_ps(sum_x2, _mm512_mul_ps(weighted_x, v));
  }
  const __m512 min_max_scale = _mm512_div_ps(span, levels);
  __m512 chosen = zero, scale = min_max_scale, offset = low, best = _mm512_set1_ps(INFINITY);
  for (int64_t s = 0; s < count; ++s) {
    const __m512 stretch = _mm512_set1_ps(stretches[s]);
    const __m512 factor = _mm512_div_ps(_mm512_add_ps(levels, stretch), span);
    __m512 sum_l = zero, sum_l2 = zero, sum_xl = zero;
    for (int64_t i = 0; i < GROUP; ++i) {
      const __m512 code = codes_of(_mm512_load_ps(shifted[i]), factor, levels);
      const __m512 weighted = _mm512_mul_ps(_mm512_load_ps(w[i]), code);
      sum_l = _mm512_add_ps(sum_l, weighted);
      sum_l2 = _mm512_add_ps(sum_l2, _mm512_mul_ps(weighted, code));
      sum_xl = _mm512_add_ps(sum_xl, _mm512_mul_ps(_mm512_load_ps(wx[i]), code));
    }
    const __m512 det = _mm512_sub_ps(_mm512_mul_ps(sum_w, sum_l2), _mm512_mul_ps(sum_l, sum_l));
    const __mmask16 positive = _mm512_cmp_ps_mask(det, zero, _CMP_GT_OQ);
    const __m512 safe = _mm512_mask_blend_ps(positive, _mm512_set1_ps(1.f), det);
    const __m512 trial_scale =
        _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sum_w, sum_xl), _mm512_mul_ps(sum_x, sum_l)), safe);
    const __m512 trial_offset =
        _mm512_div_ps(_mm512_sub_ps(_mm512_mul_ps(sum_l2, sum_x), _mm512_mul_ps(sum_l, sum_xl)), safe);
    // Σ w (code × scale + offset - x)², expanded over the sums, in fit_groups' order of operations
    const __m512 inner = _mm512_sub_ps(
        _mm512_add_ps(_mm512_mul_ps(trial_scale, sum_l2), _mm512_mul_ps(_mm512_mul_ps(two, trial_offset), sum_l)),
        _mm512_mul_ps(two, sum_xl));
    const __m512 trial_error = _mm512_add_ps(
        _mm512_add_ps(_mm512_mul_ps(trial_scale, inner),
                      _mm512_mul_ps(trial_offset, _mm512_sub_ps(_mm512_mul_ps(trial_offset, sum_w),
                                                                _mm512_mul_ps(two, sum_x)))),
        sum_x2);
    const __mmask16 better = positive & _mm512_cmp_ps_mask(trial_scale, zero, _CMP_GT_OQ) &
                             _mm512_cmp_ps_mask(trial_error, best, _CMP_LT_OQ);
    chosen = _mm512_mask_blend_ps(better, chosen, stretch);
    scale = _mm512_mask_blend_ps(better, scale, trial_scale);
    offset = _mm512_mask_blend_ps(better, offset, trial_offset);
    best = _mm512_mask_blend_ps(better, best, trial_error);
  }
  const __m512 fitted_error =
      error_of(x, w, shifted, _mm512_div_ps(_mm512_add_ps(levels, chosen), span), scale, offset, levels);
  const __m512 min_max_error =
      error_of(x, w, shifted, _mm512_div_ps(levels, span), min_max_scale, low, levels);
  const __mmask16 fitted = _mm512_cmp_ps_mask(fitted_error, min_max_error, _CMP_LT_OQ);
  _mm512_storeu_ps(scale_out, _mm512_mask_blend_ps(fitted, min_max_scale, scale));
  _mm512_storeu_ps(offset_out, _mm512_mask_blend_ps(fitted, low, offset));
}
#endif

std::tuple<at::Tensor, at::Tensor> fit_groups(const at::Tensor& groups, double levels, const at::Tensor& stretches) {
  TORCH_CHECK(localllm::supported(), "fit_groups: this CPU lacks AVX512-VNNI or AVX512-VBMI");
  TORCH_CHECK(groups.dim() == 2 && groups.size(1) == GROUP && groups.scalar_type() == at::kFloat &&
                  groups.is_contiguous() && groups.device().is_cpu(),
              "fit_groups: contiguous float32 groups, n x ", GROUP);
  TORCH_CHECK(stretches.dim() == 1 && stretches.scalar_type() == at::kFloat && stretches.is_contiguous(),
              "fit_groups: float32 stretches");
  const int64_t n = groups.size(0), count = stretches.size(0);
  at::Tensor scale = at::empty({n}, groups.options()), offset = at::empty({n}, groups.options());
#if defined(__x86_64__)
  const float* x = groups.data_ptr<float>();
  const float* steps = stretches.data_ptr<float>();
  float* scales = scale.data_ptr<float>();
  float* offsets = offset.data_ptr<float>();
  at::parallel_for(0, (n + LANES - 1) / LANES, 64, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t first = block * LANES, whole = std::min(LANES, n - first);
      if (whole == LANES) {
        fit_lanes(x + first * GROUP, float(levels), steps, count, scales + first, offsets + first);
        continue;
      }
      alignas(64) float padded[LANES * GROUP] = {}, padded_scale[LANES], padded_offset[LANES];
      std::memcpy(padded, x + first * GROUP, sizeof(float) * whole * GROUP);
      fit_lanes(padded, float(levels), steps, count, padded_scale, padded_offset);
      std::memcpy(scales + first, padded_scale, sizeof(float) * whole);
      std::memcpy(offsets + first, padded_offset, sizeof(float) * whole);
    }
  });
#endif
  return {scale, offset};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(localllm, m) {
  m.def("fit_groups(Tensor groups, float levels, Tensor stretches) -> (Tensor, Tensor)", fit_groups);
}
