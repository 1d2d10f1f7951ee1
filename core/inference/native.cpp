// Decoding's matmuls on x86 CPUs with AVX512-VNNI and AVX512-VBMI, built and loaded by
// core/inference/native.py: a few activation rows times int4 weights (4-bit codes in torch's CPU layout,
// the one `_weight_int4pack_mm_for_cpu` reads, and quantize.code_scales' 8-bit scale and offset codes), and
// times int8 weights with a scale a row (`int8_rows`).
//
// Each row goes in as bytes, a scale a group of 32 inputs (llama.cpp's Q8_0 activations), and meets the
// 4-bit codes in VNNI byte dot products: 64 multiply-adds an instruction where torch's kernel widens
// every weight to float32 for one. The weights are read from memory once a call whatever the row count
// (a block of 64 outputs serves every row before the next), so a step for several replies costs about
// what a step for one does. A weight is q * scale + offset, each a code times its super-block's unit; a
// group's product is
//   scale * d * sum(q * a) + offset * d * sum(a)
// with the row's codes a and their scale d: exactly the dequantized weights times the 8-bit row.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "native.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t GROUP = 32;  // inputs a scale and offset cover (core.inference.quantize.INT4_GROUP)
constexpr int64_t SUPER = 16;  // groups whose codes share a unit pair (core.inference.quantize.INT4_SUPER)
constexpr int64_t BLOCK = 64;  // outputs a block of torch's layout holds: K x 32 bytes, j and j + 32 a byte
constexpr int64_t ROWS = 4;    // rows a pass over a block's weights keeps in registers

#if defined(__x86_64__)
// A row as 8-bit codes with a scale a group of 32, and the codes' sum times that scale a group: 16 values
// an instruction (std::nearbyint was a library call a value, on the main thread while the others waited:
// ~0.7 ms of a Qwen decoding step a row). The same numbers: the default rounding, to nearest even.
__attribute__((target("avx512f,avx512bw"))) void quantize_row(const float* x, int64_t K, int8_t* codes,
                                                            float* scale, float* sums) {
  for (int64_t g = 0; g < K / GROUP; ++g) {
    const __m512 a = _mm512_loadu_ps(x + g * GROUP), b = _mm512_loadu_ps(x + g * GROUP + 16);
    const float d = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b))) / 127.f;
    const __m512 inverse = _mm512_set1_ps(d > 0.f ? 1.f / d : 0.f);
    constexpr int nearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    const __m512i qa = _mm512_cvt_roundps_epi32(_mm512_mul_ps(a, inverse), nearest);
    const __m512i qb = _mm512_cvt_roundps_epi32(_mm512_mul_ps(b, inverse), nearest);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + g * GROUP), _mm512_cvtepi32_epi8(qa));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + g * GROUP + 16), _mm512_cvtepi32_epi8(qb));
    scale[g] = d;
    sums[g] = d * float(_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)));
  }
}
#endif

// An int4 matrix: codes (N x K / 2 bytes, torch's layout), scale and offset codes (groups x 2 x N bytes:
// unsigned, signed) and their units (super-blocks x 2 x N float32).
struct Int4Weights {
  const uint8_t* packed;
  const uint8_t* codes;
  const float* units;
};

struct Rows {
  const int8_t* codes;  // M x K
  const float* scale;   // M x K / GROUP
  const float* sums;    // M x K / GROUP
  float* out;           // M x N
};

#if defined(__x86_64__)
// Group g's products of rows [first, first + M) with the 64 outputs of a block (w: the block's codes), in
// four lanes of 16 outputs each: sum(q * a), whole numbers.
template <int M>
__attribute__((target("avx512f,avx512bw,avx512vnni,avx512vbmi"))) inline void group_dots(
    const uint8_t* w, const int8_t* codes, int64_t K, int64_t g, __m512i (&dots)[M][4]) {
  // Four inputs of one output in each 32-bit lane, from four inputs' 32 bytes: byte 32 * b + i of the
  // pair of loads is input k + b of outputs i (low nibble) and i + 32 (high nibble).
  alignas(64) static const uint8_t order[2][64] = {
#define LANE(i, base) uint8_t(base + i), uint8_t(32 + base + i), uint8_t(64 + base + i), uint8_t(96 + base + i)
#define SIXTEEN(base)                                                                                   \
  LANE(0, base), LANE(1, base), LANE(2, base), LANE(3, base), LANE(4, base), LANE(5, base), LANE(6, base), \
      LANE(7, base), LANE(8, base), LANE(9, base), LANE(10, base), LANE(11, base), LANE(12, base),      \
      LANE(13, base), LANE(14, base), LANE(15, base)
      {SIXTEEN(0)}, {SIXTEEN(16)}};
#undef SIXTEEN
#undef LANE
  const __m512i first_half = _mm512_load_si512(order[0]);
  const __m512i second_half = _mm512_load_si512(order[1]);
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  for (int m = 0; m < M; ++m)
    for (int c = 0; c < 4; ++c) dots[m][c] = _mm512_setzero_si512();
  for (int64_t k = g * GROUP; k < (g + 1) * GROUP; k += 4) {
    const __m512i low = _mm512_loadu_si512(w + k * 32);
    const __m512i high = _mm512_loadu_si512(w + k * 32 + 64);
    const __m512i t0 = _mm512_permutex2var_epi8(low, first_half, high);
    const __m512i t1 = _mm512_permutex2var_epi8(low, second_half, high);
    const __m512i q[4] = {
        _mm512_and_si512(t0, nibble),                         // outputs 0-15
        _mm512_and_si512(t1, nibble),                         // 16-31
        _mm512_and_si512(_mm512_srli_epi16(t0, 4), nibble),  // 32-47
        _mm512_and_si512(_mm512_srli_epi16(t1, 4), nibble),  // 48-63
    };
    for (int m = 0; m < M; ++m) {
      int32_t four;
      std::memcpy(&four, codes + m * K + k, 4);
      const __m512i a = _mm512_set1_epi32(four);
      for (int c = 0; c < 4; ++c) dots[m][c] = _mm512_dpbusd_epi32(dots[m][c], q[c], a);
    }
  }
}

// Rows [first, first + M) times the 64 outputs of `block`; every row's sums in the same order whatever
// M, so that a row gets the same product alone as beside others, to the bit.
template <int M>
__attribute__((target("avx512f,avx512bw,avx512vnni,avx512vbmi"))) void block_product(
    const Int4Weights& weights, const Rows& rows, int64_t first, int64_t K, int64_t N, int64_t block) {
  const int64_t groups = K / GROUP;
  const uint8_t* w = weights.packed + block * K * (BLOCK / 2);
  const int8_t* codes = rows.codes + first * K;
  const float* scale = rows.scale + first * groups;
  const float* sums = rows.sums + first * groups;
  __m512 acc[M][4];
  for (int m = 0; m < M; ++m)
    for (int c = 0; c < 4; ++c) acc[m][c] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i dots[M][4];
    group_dots<M>(w, codes, K, g, dots);
    const float* unit = weights.units + (g / SUPER) * 2 * N + block * BLOCK;
    for (int c = 0; c < 4; ++c) {  // 16 outputs' scale and offset: codes times their units
      const uint8_t* code = weights.codes + g * 2 * N + block * BLOCK + c * 16;
      const __m128i scale_codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(code));
      const __m128i offset_codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(code + N));
      const __m512 s =
          _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(scale_codes)), _mm512_loadu_ps(unit + c * 16));
      const __m512 offset =
          _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(offset_codes)), _mm512_loadu_ps(unit + N + c * 16));
      for (int m = 0; m < M; ++m) {
        const __m512 d = _mm512_mul_ps(s, _mm512_set1_ps(scale[m * groups + g]));
        acc[m][c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dots[m][c]), d, acc[m][c]);
        acc[m][c] = _mm512_fmadd_ps(offset, _mm512_set1_ps(sums[m * groups + g]), acc[m][c]);
      }
    }
  }
  for (int m = 0; m < M; ++m)
    for (int c = 0; c < 4; ++c) _mm512_storeu_ps(rows.out + (first + m) * N + block * BLOCK + c * 16, acc[m][c]);
}

void products(const Int4Weights& w, const Rows& rows, int64_t M, int64_t K, int64_t N) {
  at::parallel_for(0, N / BLOCK, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      for (int64_t first = 0; first < M; first += ROWS) {  // the block's weights stay in cache meanwhile
        switch (std::min(ROWS, M - first)) {
          case 1: block_product<1>(w, rows, first, K, N, block); break;
          case 2: block_product<2>(w, rows, first, K, N, block); break;
          case 3: block_product<3>(w, rows, first, K, N, block); break;
          default: block_product<4>(w, rows, first, K, N, block); break;
        }
      }
    }
  });
}

// int8 weights (N x K, a scale a row) meet each row as two byte planes, exact to 15 bits of the row's
// largest value: codes high and the remainder low (counted 1/SPLIT), as unsigned bytes (128 added, taken
// back with the weights' row sums), so that VNNI multiplies them by the weights as they are. A tame row
// (see split_row) needs only the high plane: where all of a call's rows are, the low one's products are
// skipped (at three rows the kernel was bound by its VNNI instructions: Qwen's head 4.7-5.0 -> 3.0-4.6
// ms here, depending on the minute's memory speed).
constexpr float SPLIT = 254.f;

// Four vectors' lane sums, in the four lanes of one: a, b, c and d.
__attribute__((target("avx512f"))) inline __m128i lane_sums(__m512i a, __m512i b, __m512i c, __m512i d) {
  const __m512i ab = _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
  const __m512i cd = _mm512_add_epi32(_mm512_unpacklo_epi32(c, d), _mm512_unpackhi_epi32(c, d));
  const __m512i abcd = _mm512_add_epi32(_mm512_unpacklo_epi64(ab, cd), _mm512_unpackhi_epi64(ab, cd));
  const __m256i half = _mm256_add_epi32(_mm512_castsi512_si256(abcd), _mm512_extracti64x4_epi64(abcd, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(half), _mm256_extracti128_si256(half, 1));
}

// Outputs [o, o + O) for M rows: each row's byte planes are loaded once for the O outputs' weights, and
// the lane sums of four outputs are taken together (a sum of one vector's lanes costs about what four
// do). Qwen's int8 head (151936 x 896) for three rows: 6.4-7.0 -> 4.9 ms; for one, as fast as before.
template <int M, int O, int PLANES>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) inline void int8_outputs(
    const int8_t* weights, const int32_t* weight_sums, const float* weight_scale, const uint8_t* high,
    const uint8_t* low, const float* row_scale, int64_t K, int64_t o, float* out, int64_t N) {
  static_assert(O == 1 || O == 2 || O == 4, "one, two or four outputs at a time");
  __m512i sum_high[M][O], sum_low[M][O];
  for (int m = 0; m < M; ++m)
    for (int j = 0; j < O; ++j) sum_high[m][j] = sum_low[m][j] = _mm512_setzero_si512();
  for (int64_t k = 0; k < K; k += 64) {
    __m512i v[O];
    for (int j = 0; j < O; ++j) v[j] = _mm512_loadu_si512(weights + (o + j) * K + k);
    // The next O outputs' weights, as fast as these are read: the CPU's own prefetching does not follow
    // O streams (Qwen's head at one row took 1.5 x as long without this, at three rows 2 x).
    const int8_t* next = weights + (o + O) * K + k * O;
    for (int j = 0; j < O; ++j) _mm_prefetch(reinterpret_cast<const char*>(next + j * 64), _MM_HINT_T0);
    for (int m = 0; m < M; ++m) {
      const __m512i h = _mm512_loadu_si512(high + m * K + k);
      const __m512i l = PLANES == 2 ? _mm512_loadu_si512(low + m * K + k) : h;
      for (int j = 0; j < O; ++j) {
        sum_high[m][j] = _mm512_dpbusd_epi32(sum_high[m][j], h, v[j]);
        if constexpr (PLANES == 2) sum_low[m][j] = _mm512_dpbusd_epi32(sum_low[m][j], l, v[j]);
      }
    }
  }
  for (int m = 0; m < M; ++m) {  // (whole + part / SPLIT) x the row's scale x the output's scale
    alignas(16) int32_t whole[4], part[4] = {0, 0, 0, 0};  // one plane: the low one's products are zero
    if constexpr (O == 1) {
      whole[0] = _mm512_reduce_add_epi32(sum_high[m][0]);
      if constexpr (PLANES == 2) part[0] = _mm512_reduce_add_epi32(sum_low[m][0]);
    } else {
      const int c = O - 2, d = O - 1;  // two outputs: their sums twice
      _mm_store_si128(reinterpret_cast<__m128i*>(whole),
                      lane_sums(sum_high[m][0], sum_high[m][1], sum_high[m][c], sum_high[m][d]));
      if constexpr (PLANES == 2)
        _mm_store_si128(reinterpret_cast<__m128i*>(part),
                        lane_sums(sum_low[m][0], sum_low[m][1], sum_low[m][c], sum_low[m][d]));
    }
    for (int j = 0; j < O; ++j) {
      const int32_t offset = 128 * weight_sums[o + j];
      const int32_t low = PLANES == 2 ? part[j] - offset : 0;
      const float parts = float(whole[j] - offset) + float(low) * (1.f / SPLIT);
      out[m * N + o + j] = parts * row_scale[m] * weight_scale[o + j];
    }
  }
}

// Outputs [begin, end) for M rows, four at a time (two where four rows' sums would not fit in registers);
// PLANES 1 where every row's low plane is zero (all 128): the same sums without its products.
template <int M, int PLANES>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void int8_block(
    const int8_t* weights, const int32_t* weight_sums, const float* weight_scale, const uint8_t* high,
    const uint8_t* low, const float* row_scale, int64_t K, int64_t begin, int64_t end, float* out, int64_t N) {
  constexpr int O = M < 4 ? 4 : 2;
  int64_t o = begin;
  for (; o + O <= end; o += O)
    int8_outputs<M, O, PLANES>(weights, weight_sums, weight_scale, high, low, row_scale, K, o, out, N);
  for (; o < end; ++o)
    int8_outputs<M, 1, PLANES>(weights, weight_sums, weight_scale, high, low, row_scale, K, o, out, N);
}

template <int PLANES>
void int8_rows_of(const int8_t* w, const int32_t* sums, const float* ws, const uint8_t* high, const uint8_t* low,
                  const float* row_scale, int64_t M, int64_t K, int64_t N, float* out) {
  at::parallel_for(0, N, 64, [&](int64_t begin, int64_t end) {
    for (int64_t first = 0; first < M; first += ROWS) {
      const uint8_t* h = high + first * K;
      const uint8_t* l = low + first * K;
      const float* rs = row_scale + first;
      float* o = out + first * N;
      switch (std::min(ROWS, M - first)) {
        case 1: int8_block<1, PLANES>(w, sums, ws, h, l, rs, K, begin, end, o, N); break;
        case 2: int8_block<2, PLANES>(w, sums, ws, h, l, rs, K, begin, end, o, N); break;
        case 3: int8_block<3, PLANES>(w, sums, ws, h, l, rs, K, begin, end, o, N); break;
        default: int8_block<4, PLANES>(w, sums, ws, h, l, rs, K, begin, end, o, N); break;
      }
    }
  });
}

// A row's two byte planes (see SPLIT), and the scale of its high one; 16 values an instruction. Asked
// (tame_peak > 0), a row whose largest value is within tame_peak x its RMS keeps only its high
// plane (the low one all 128, which the products count as zero): the row in 8 bits, off by at most 1/254
// of its largest (~tame_peak / 440 of its RMS), as prompts' rows meet the kept int8 copy; a row with an
// outlier channel keeps both (15 bits). *tame says which it was.
__attribute__((target("avx512f,avx512bw"))) float split_row(const float* x, int64_t K, uint8_t* high,
                                                          uint8_t* low, float tame_peak, bool* tame) {
  __m512 largest = _mm512_setzero_ps(), squares = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const __m512 values = _mm512_loadu_ps(x + k);
    largest = _mm512_max_ps(_mm512_abs_ps(values), largest);
    squares = _mm512_fmadd_ps(values, values, squares);
  }
  const float peak = _mm512_reduce_max_ps(largest), d = peak / 127.f;
  *tame = tame_peak > 0.f && peak * peak <= tame_peak * tame_peak * (_mm512_reduce_add_ps(squares) / float(K));
  const __m512 inverse = _mm512_set1_ps(d > 0.f ? 1.f / d : 0.f), split = _mm512_set1_ps(SPLIT);
  const __m512i offset = _mm512_set1_epi32(128);
  constexpr int nearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  for (int64_t k = 0; k < K; k += 16) {
    const __m512 scaled = _mm512_mul_ps(_mm512_loadu_ps(x + k), inverse);
    const __m512 whole = _mm512_roundscale_ps(scaled, nearest);
    const __m512i part =
        *tame ? _mm512_setzero_si512()
              : _mm512_cvt_roundps_epi32(_mm512_mul_ps(_mm512_sub_ps(scaled, whole), split), nearest);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(high + k),
                     _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(whole), offset)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(low + k), _mm512_cvtepi32_epi8(_mm512_add_epi32(part, offset)));
  }
  return d;
}
#endif

// rows (any floating dtype, 2-D, contiguous) as float32.
at::Tensor float_rows(const at::Tensor& rows, const char* name) {
  TORCH_CHECK(rows.dim() == 2 && rows.is_contiguous() && rows.device().is_cpu(), name, ": 2-D CPU rows");
  TORCH_CHECK(at::isFloatingType(rows.scalar_type()), name, ": floating-point rows");
  return rows.to(at::kFloat).contiguous();
}

at::Tensor int4_rows(const at::Tensor& rows, const at::Tensor& packed, const at::Tensor& codes,
                     const at::Tensor& units) {
  const auto x = float_rows(rows, "int4_rows");
  auto out = at::empty({x.size(0), codes.dim() == 3 ? codes.size(2) : 0}, x.options());
  localllm::int4_product(x.data_ptr<float>(), x.size(0), x.size(1), packed, codes, units, out.data_ptr<float>());
  return out.to(rows.scalar_type());
}

at::Tensor int8_rows(const at::Tensor& rows, const at::Tensor& weight, const at::Tensor& scale,
                     const at::Tensor& weight_sums, double tame_peak) {
  const auto x = float_rows(rows, "int8_rows");
  auto out = at::empty({x.size(0), weight.dim() == 2 ? weight.size(0) : 0}, x.options());
  localllm::int8_product(x.data_ptr<float>(), x.size(0), x.size(1), weight, scale, weight_sums, float(tame_peak),
                         out.data_ptr<float>());
  return out.to(rows.scalar_type());
}

}  // namespace

namespace localllm {

bool supported() {
#if defined(__x86_64__)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
#else
  return false;
#endif
}

void int4_product(const float* x, int64_t M, int64_t K, const at::Tensor& packed, const at::Tensor& codes,
                  const at::Tensor& units, float* out) {
  TORCH_CHECK(supported(), "int4_rows: this CPU lacks AVX512-VNNI or AVX512-VBMI");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.is_contiguous() && packed.device().is_cpu(),
              "int4_rows: torch's int4 layout");
  TORCH_CHECK(codes.scalar_type() == at::kByte && codes.is_contiguous() && codes.dim() == 3 && codes.size(1) == 2 &&
                  codes.device().is_cpu(),
              "int4_rows: scale and offset codes, groups x 2 x outputs bytes");
  const int64_t N = codes.size(2), groups = K / GROUP;
  TORCH_CHECK(units.scalar_type() == at::kFloat && units.is_contiguous() && units.device().is_cpu() &&
                  units.dim() == 3 && units.size(0) == (groups + SUPER - 1) / SUPER && units.size(1) == 2 &&
                  units.size(2) == N,
              "int4_rows: float32 units, super-blocks x 2 x outputs");
  TORCH_CHECK(K % GROUP == 0 && N % BLOCK == 0 && codes.size(0) == groups && packed.numel() == N * K / 2,
              "int4_rows: shapes do not match");
#if defined(__x86_64__)
  std::vector<int8_t> row_codes(M * K);
  std::vector<float> scale(M * groups), sums(M * groups);
  for (int64_t m = 0; m < M; ++m)
    quantize_row(x + m * K, K, row_codes.data() + m * K, scale.data() + m * groups, sums.data() + m * groups);
  const Rows parts{row_codes.data(), scale.data(), sums.data(), out};
  const Int4Weights weights{packed.data_ptr<uint8_t>(), codes.data_ptr<uint8_t>(), units.data_ptr<float>()};
  products(weights, parts, M, K, N);
#endif
}

void int8_product(const float* x, int64_t M, int64_t K, const at::Tensor& weight, const at::Tensor& scale,
                  const at::Tensor& weight_sums, float tame_peak, float* out) {
  TORCH_CHECK(supported(), "int8_rows: this CPU lacks AVX512-VNNI or AVX512-VBMI");
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.is_contiguous() && weight.dim() == 2 &&
                  weight.device().is_cpu(),
              "int8_rows: contiguous int8 weights");
  TORCH_CHECK(weight_sums.scalar_type() == at::kInt && weight_sums.is_contiguous(), "int8_rows: int32 sums");
  const int64_t N = weight.size(0);
  TORCH_CHECK(weight.size(1) == K && K % 64 == 0 && scale.numel() == N && weight_sums.numel() == N,
              "int8_rows: shapes do not match");
#if defined(__x86_64__)
  std::vector<uint8_t> high(M * K), low(M * K);
  std::vector<float> row_scale(M);
  bool all_tame = true;
  for (int64_t m = 0; m < M; ++m) {
    bool tame = false;
    row_scale[m] = split_row(x + m * K, K, high.data() + m * K, low.data() + m * K, tame_peak, &tame);
    all_tame = all_tame && tame;
  }
  const auto weight_scale = scale.to(at::kFloat).contiguous();
  const int8_t* w = weight.data_ptr<int8_t>();
  const int32_t* sums = weight_sums.data_ptr<int32_t>();
  const float* ws = weight_scale.data_ptr<float>();
  // One row is bound by memory either way, and its tighter one-plane loop outran the prefetching (slower,
  // measured alone): it keeps both planes, the low one all 128, which gives the same sums to the bit.
  if (all_tame && M > 1) {
    int8_rows_of<1>(w, sums, ws, high.data(), low.data(), row_scale.data(), M, K, N, out);
  } else {
    int8_rows_of<2>(w, sums, ws, high.data(), low.data(), row_scale.data(), M, K, N, out);
  }
#endif
}

}  // namespace localllm

namespace {

using Scored = std::pair<float, int64_t>;  // a score and its id

// Better: the higher score, or the lower id of equal ones (argmax's order, the first of equal maxima).
bool better(const Scored& a, const Scored& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// The `count` best of a row's n scores into values and ids, best first. A heap keeps the best so far with
// the worst of them on top, and the row is read 16 scores an instruction against that worst: only the
// few that beat it are looked at (a few hundred of Qwen's 151,936 logits, a random order's ~count x
// ln(n / count)). Later equal scores never replace, so equal ones keep the lower ids; a NaN never
// enters (counted as -inf among the first `count`).
#if defined(__x86_64__)
__attribute__((target("avx512f")))
#endif
void best_of_row(const float* x, int64_t n, int64_t count, float* values, int64_t* ids) {
  std::vector<Scored> heap;
  heap.reserve(count);
  for (int64_t i = 0; i < count; ++i) heap.emplace_back(std::isnan(x[i]) ? -INFINITY : x[i], i);
  std::make_heap(heap.begin(), heap.end(), better);
  auto offer = [&](int64_t i) {
    if (x[i] > heap.front().first) {
      std::pop_heap(heap.begin(), heap.end(), better);
      heap.back() = {x[i], i};
      std::push_heap(heap.begin(), heap.end(), better);
    }
  };
  int64_t i = count;
#if defined(__x86_64__)
  for (; i + 16 <= n; i += 16) {
    const __m512 worst = _mm512_set1_ps(heap.front().first);
    for (__mmask16 above = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), worst, _CMP_GT_OQ); above;
         above &= above - 1) {
      offer(i + __builtin_ctz(above));  // compared again: the worst may have risen within these 16
    }
  }
#endif
  for (; i < n; ++i) offer(i);
  std::sort_heap(heap.begin(), heap.end(), better);  // best first
  for (int64_t k = 0; k < count; ++k) {
    values[k] = heap[k].first;
    ids[k] = heap[k].second;
  }
}

std::tuple<at::Tensor, at::Tensor> best_scores(const at::Tensor& scores, int64_t count) {
  TORCH_CHECK(localllm::supported(), "best_scores: this CPU lacks AVX512-VNNI or AVX512-VBMI");
  TORCH_CHECK(scores.dim() == 2 && scores.scalar_type() == at::kFloat && scores.is_contiguous() &&
                  scores.device().is_cpu(),
              "best_scores: contiguous float32 scores, rows x vocabulary");
  const int64_t rows = scores.size(0), n = scores.size(1);
  TORCH_CHECK(count > 0 && count <= n, "best_scores: from 1 to ", n, " of them, not ", count);
  at::Tensor values = at::empty({rows, count}, scores.options());
  at::Tensor ids = at::empty({rows, count}, scores.options().dtype(at::kLong));
  const float* x = scores.data_ptr<float>();
  for (int64_t r = 0; r < rows; ++r) {
    best_of_row(x + r * n, n, count, values.data_ptr<float>() + r * count,
                ids.data_ptr<int64_t>() + r * count);
  }
  return {values, ids};
}

}  // namespace

TORCH_LIBRARY(localllm, m) {
  m.def("supported() -> bool", localllm::supported);
  m.def("int4_rows(Tensor rows, Tensor packed, Tensor codes, Tensor units) -> Tensor", int4_rows);
  m.def("best_scores(Tensor scores, int count) -> (Tensor, Tensor)", best_scores);
  m.def("int8_rows(Tensor rows, Tensor weight, Tensor scale, Tensor weight_sums, float tame_peak=0.) -> "
        "Tensor",
        int8_rows);
  m.def(
      "decode_layer(Tensor x, Tensor input_norm, Tensor[] qkv, Tensor[] output, Tensor post_norm, "
      "Tensor[] gate_up, Tensor[] down, Tensor? qk_norm, Tensor cos, Tensor sin, Tensor(a!)[] keys, "
      "Tensor(b!)[] values, int layer, int[] starts, int[] counts, int heads, float eps) -> Tensor",
      localllm::decode_layer);
}
