// Quantizing's fit on x86 CPUs with AVX-512, built and loaded with native.cpp by core/inference/native.py:
// each group of 32 weights gets the scale and offset core.inference.quantize.fit_groups fits (llama.cpp's
// make_qkx2_quants: the min/max range stretched by each of a few steps, each rounding's scale and offset
// fitted by weighted least squares, the least error kept, min/max where it does better).
//
// torch runs fit_groups as ~90 passes over a chunk's float32 temporaries; here 16 groups go through all of
// it at once in registers, a group a lane, each lane summing its weights in their order. The sums are the
// same numbers up to their order of addition, so a rare group whose two best roundings are within that
// difference may keep the other one (an equally good fit).
//
// quantize_int4 does all of a first load's int4 quantizing of a matrix (quantize.quantize_groups): each
// output's super-block of 16 groups fitted, its pairs coded, its weights rounded to them, the offsets
// fitted again and coded, and the 4-bit codes written in torch's int4 layout; ~5 x torch's operations.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "native.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t GROUP = 32;  // weights a scale and offset cover (core.inference.quantize.INT4_GROUP)
constexpr int64_t LANES = 16;  // groups fitted together, a group a lane: a super-block (quantize.INT4_SUPER)
constexpr int64_t BLOCK = 64;  // outputs a block of torch's int4 layout holds (quantize.UNPACK_BLOCK)

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
// A super-block's 16 values (lanes past `count` zero) as codes of a unit: the unit its largest magnitude /
// limit (1 where that is 0), each code rounded to nearest even and clamped to ±limit (quantize.code_scales).
__attribute__((target("avx512f"))) inline __m512 coded(__m512 values, float limit, float& unit) {
  unit = _mm512_reduce_max_ps(_mm512_abs_ps(values)) / limit;
  if (!(unit > 0.f)) unit = 1.f;
  const __m512 rounded = _mm512_roundscale_ps(_mm512_div_ps(values, _mm512_set1_ps(unit)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return _mm512_min_ps(_mm512_max_ps(rounded, _mm512_set1_ps(-limit)), _mm512_set1_ps(limit));
}

// A super-block's scales and offsets as codes (into scale_codes, offset_codes, units), and the pairs they
// decode to (a code times its unit, as the engine's kernel computes them) back into scale and offset.
__attribute__((target("avx512f"))) void code_pairs(float* scale, float* offset, uint8_t* scale_codes,
                                                   int8_t* offset_codes, float* units) {
  const __m512 scales = coded(_mm512_load_ps(scale), 255.f, units[0]);
  const __m512 offsets = coded(_mm512_load_ps(offset), 127.f, units[1]);
  _mm512_store_ps(scale, _mm512_mul_ps(scales, _mm512_set1_ps(units[0])));
  _mm512_store_ps(offset, _mm512_mul_ps(offsets, _mm512_set1_ps(units[1])));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(scale_codes), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(scales)));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(offset_codes), _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(offsets)));
}

// Each weight of `count` groups rounded to its group's coded pair: 4-bit codes, a byte each, into levels.
__attribute__((target("avx512f"))) void round_to_pairs(const float* x, int64_t count, const float* scale,
                                                       const float* offset, uint8_t* levels) {
  const __m512 fifteen = _mm512_set1_ps(15.f), zero = _mm512_setzero_ps();
  for (int64_t g = 0; g < count; ++g) {
    const __m512 step = _mm512_set1_ps(scale[g] > 0.f ? scale[g] : 1.f), low = _mm512_set1_ps(offset[g]);
    for (int64_t half = 0; half < GROUP; half += LANES) {
      const __m512 v = _mm512_loadu_ps(x + g * GROUP + half);
      const __m512 rounded = _mm512_roundscale_ps(_mm512_div_ps(_mm512_sub_ps(v, low), step),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512i code = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(rounded, zero), fifteen));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(levels + g * GROUP + half), _mm512_cvtepi32_epi8(code));
    }
  }
}

// 16 codes of a byte each as floats.
__attribute__((target("avx512f"))) inline __m512 level_values(const uint8_t* levels) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(levels))));
}

// One output's super-block (`count` <= 16 groups of its weights x) as quantize.quantize_groups codes it:
// the fitted pairs coded, the weights rounded to them, each offset fitted again to its coded scale and
// those codes (weighted by importance()), the pairs coded again and the weights rounded to them. Into
// levels (count x 32 bytes), scale_codes and offset_codes (16 each) and units (2).
__attribute__((target("avx512f,avx512bw"))) void code_super_block(const float* x, int64_t count, const float* stretches,
                                                                  int64_t stretch_count, uint8_t* levels,
                                                                  uint8_t* scale_codes, int8_t* offset_codes,
                                                                  float* units) {
  alignas(64) float padded[LANES * GROUP], scale[LANES], offset[LANES];
  const float* groups = x;
  if (count < LANES) {
    std::memset(padded, 0, sizeof(padded));
    std::memcpy(padded, x, sizeof(float) * count * GROUP);
    groups = padded;
  }
  fit_lanes(groups, 15.f, stretches, stretch_count, scale, offset);
  for (int64_t g = count; g < LANES; ++g) scale[g] = offset[g] = 0.f;  // code_scales pads with zeros
  code_pairs(scale, offset, scale_codes, offset_codes, units);
  round_to_pairs(groups, count, scale, offset, levels);
  for (int64_t g = 0; g < count; ++g) {
    const float* v = groups + g * GROUP;
    const __m512 a = _mm512_loadu_ps(v), b = _mm512_loadu_ps(v + LANES);
    const float rms = std::sqrt(_mm512_reduce_add_ps(_mm512_add_ps(_mm512_mul_ps(a, a), _mm512_mul_ps(b, b))) /
                                float(GROUP));
    const __m512 step = _mm512_set1_ps(scale[g]);
    const __m512 wa = _mm512_add_ps(_mm512_set1_ps(rms), _mm512_abs_ps(a));
    const __m512 wb = _mm512_add_ps(_mm512_set1_ps(rms), _mm512_abs_ps(b));
    const __m512 missing = _mm512_add_ps(_mm512_mul_ps(wa, _mm512_sub_ps(a, _mm512_mul_ps(level_values(levels + g * GROUP), step))),
                                         _mm512_mul_ps(wb, _mm512_sub_ps(b, _mm512_mul_ps(level_values(levels + g * GROUP + LANES), step))));
    offset[g] = _mm512_reduce_add_ps(missing) /
                std::max(_mm512_reduce_add_ps(_mm512_add_ps(wa, wb)), FLT_MIN);  // 0 for a zero group
  }
  code_pairs(scale, offset, scale_codes, offset_codes, units);
  round_to_pairs(groups, count, scale, offset, levels);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_int4(const at::Tensor& weight, const at::Tensor& stretches) {
  TORCH_CHECK(localllm::supported(), "quantize_int4: this CPU lacks AVX512-VNNI or AVX512-VBMI");
  TORCH_CHECK(weight.dim() == 2 && weight.size(0) % BLOCK == 0 && weight.size(1) % GROUP == 0 &&
                  weight.scalar_type() == at::kFloat && weight.is_contiguous() && weight.device().is_cpu(),
              "quantize_int4: contiguous float32 weights, outputs a multiple of ", BLOCK, ", inputs of ", GROUP);
  TORCH_CHECK(stretches.dim() == 1 && stretches.scalar_type() == at::kFloat && stretches.is_contiguous(),
              "quantize_int4: float32 stretches");
  const int64_t N = weight.size(0), K = weight.size(1), groups = K / GROUP, supers = (groups + LANES - 1) / LANES;
  const auto bytes = weight.options().dtype(at::kByte);
  at::Tensor packed = at::empty({N, K / 2}, bytes), codes = at::empty({groups, 2, N}, bytes);
  at::Tensor units = at::empty({supers, 2, N}, weight.options());
#if defined(__x86_64__)
  const float* x = weight.data_ptr<float>();
  const float* steps = stretches.data_ptr<float>();
  uint8_t* out = packed.data_ptr<uint8_t>();
  uint8_t* code = codes.data_ptr<uint8_t>();
  float* unit = units.data_ptr<float>();
  const int64_t count = stretches.size(0);
  // A work item: a block of BLOCK outputs (torch's layout packs outputs j and j + 32 of a block into a
  // byte, input after input) over one super-block of inputs.
  at::parallel_for(0, N / BLOCK * supers, 1, [&](int64_t begin, int64_t end) {
    alignas(64) uint8_t levels[BLOCK][LANES * GROUP];
    alignas(64) uint8_t scale_codes[BLOCK][LANES], offset_codes[BLOCK][LANES];
    alignas(64) float pair[BLOCK][2];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t block = item / supers, super = item % supers;
      const int64_t first = super * LANES, whole = std::min(LANES, groups - first), width = whole * GROUP;
      for (int64_t j = 0; j < BLOCK; ++j) {
        const int64_t row = block * BLOCK + j;
        code_super_block(x + row * K + first * GROUP, whole, steps, count, levels[j], scale_codes[j],
                         reinterpret_cast<int8_t*>(offset_codes[j]), pair[j]);
        for (int64_t g = 0; g < whole; ++g) {
          code[((first + g) * 2) * N + row] = scale_codes[j][g];
          code[((first + g) * 2 + 1) * N + row] = offset_codes[j][g];
        }
        unit[(super * 2) * N + row] = pair[j][0];
        unit[(super * 2 + 1) * N + row] = pair[j][1];
      }
      uint8_t* target = out + block * BLOCK * K / 2 + first * GROUP * (BLOCK / 2);
      for (int64_t k = 0; k < width; ++k) {
        for (int64_t j = 0; j < BLOCK / 2; ++j) {
          target[k * (BLOCK / 2) + j] = uint8_t(levels[j][k] | (levels[j + BLOCK / 2][k] << 4));
        }
      }
    }
  });
#endif
  return {packed, codes, units};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(localllm, m) {
  m.def("fit_groups(Tensor groups, float levels, Tensor stretches) -> (Tensor, Tensor)", fit_groups);
  m.def("quantize_int4(Tensor weight, Tensor stretches) -> (Tensor, Tensor, Tensor)", quantize_int4);
}
