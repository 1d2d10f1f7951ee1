// A whole decoding layer in one call (core.inference.decoder, where the engine's own kernels run): a
// decode step spent ~4 ms of its ~20-25 ms outside the matrices on a 2-core CPU, in the ~35 small torch
// operations a layer (norms, rotary embedding, the cache's writes, attention, the activation) that
// Python dispatched one by one. Here they run between the matmuls in float32, a sequence's attention
// over its own cache, and x is rounded to the model's dtype once, at the layer's end.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "native.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq")))

namespace {

// A projection's weights as the matmul kernels take them, and its bias as float32 (or undefined).
struct Projection {
  std::vector<at::Tensor> parts;
  at::Tensor bias;
  int64_t outputs;

  Projection(at::TensorList given, const char* name) {
    TORCH_CHECK(!given.empty(), "decode_layer: ", name, " has no weights");
    const bool int4 = given[0].scalar_type() == at::kByte;
    const size_t count = 3;
    TORCH_CHECK(given.size() == count || given.size() == count + 1,
                "decode_layer: ", name, " is [packed, codes, units] or [weight, scale, weight_sums], and a bias");
    parts.assign(given.begin(), given.begin() + count);
    TORCH_CHECK(parts[1].dim() == 3 || !int4, "decode_layer: ", name, "'s int4 codes are groups x 2 x outputs");
    outputs = int4 ? parts[1].size(2) : parts[0].size(0);
    if (given.size() > count) {
      bias = given[count].to(at::kFloat).contiguous();  // as given where it is float32 already
      TORCH_CHECK(bias.numel() == outputs, "decode_layer: ", name, "'s bias does not match its outputs");
    }
  }

  // rows (M x K) times the weights, plus the bias: into out (M x outputs).
  void apply(const float* rows, int64_t M, int64_t K, float* out) const {
    if (parts[0].scalar_type() == at::kByte) {
      localllm::int4_product(rows, M, K, parts[0], parts[1], parts[2], out);
    } else {
      localllm::int8_product(rows, M, K, parts[0], parts[1], parts[2], 0.f, out);  // every row in 15 bits
    }
    if (bias.defined()) {
      const float* b = bias.data_ptr<float>();
      for (int64_t m = 0; m < M; ++m)
        for (int64_t o = 0; o < outputs; ++o) out[m * outputs + o] += b[o];
    }
  }
};

// A norm's (or cos's, sin's) `count` values: float32 as given, else a float32 copy kept in `copy`.
const float* floats(const at::Tensor& t, int64_t count, const char* name, at::Tensor& copy) {
  TORCH_CHECK(t.numel() == count && at::isFloatingType(t.scalar_type()), "decode_layer: ", name, " has ",
              t.numel(), " values, not ", count);
  copy = t.scalar_type() == at::kFloat && t.is_contiguous() ? t : t.to(at::kFloat).contiguous();
  return copy.data_ptr<float>();
}

// x (rows of `size`) times 1 / sqrt(mean square + eps) times weight (one row of it, or a row a vector).
void rms_norm(const float* x, int64_t rows, int64_t size, const float* weight, int64_t weight_rows, float eps,
              float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* v = x + r * size;
    float squares = 0.f;
#pragma omp simd reduction(+ : squares)
    for (int64_t i = 0; i < size; ++i) squares += v[i] * v[i];
    const float factor = 1.f / std::sqrt(squares / float(size) + eps);
    const float* w = weight + (r % weight_rows) * size;
#pragma omp simd
    for (int64_t i = 0; i < size; ++i) out[r * size + i] = v[i] * factor * w[i];
  }
}

// Rotary embedding in transformers' half-split layout: x * cos + rotate_half(x) * sin.
void rotate(const float* x, const float* cos, const float* sin, int64_t dim, float* out) {
  const int64_t half = dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    out[i] = x[i] * cos[i] - x[i + half] * sin[i];
    out[i + half] = x[i + half] * cos[i + half] + x[i] * sin[i + half];
  }
}

#if defined(__x86_64__)
AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

AVX512 inline __m512 load16(const c10::BFloat16* p) {  // bf16 is float32's upper half
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}

// e^x, 16 at a time: 2^n e^r with |r| <= ln 2 / 2, e^r to 7 terms (relative error ~1e-7).
AVX512 inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.f)), _mm512_set1_ps(-87.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 720.f);
  for (const float c : {1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

// silu(gate) * up for each row of gate_up (rows x 2 intermediate: the gates, then the ups).
AVX512 void swiglu(const float* gate_up, int64_t rows, int64_t intermediate, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up + r * 2 * intermediate;
    const float* up = gate + intermediate;
    float* o = out + r * intermediate;
    int64_t i = 0;
    for (; i + 16 <= intermediate; i += 16) {
      const __m512 g = _mm512_loadu_ps(gate + i);
      const __m512 sigmoid = _mm512_div_ps(_mm512_set1_ps(1.f), _mm512_add_ps(_mm512_set1_ps(1.f), exp16(-g)));
      _mm512_storeu_ps(o + i, _mm512_mul_ps(_mm512_mul_ps(g, sigmoid), _mm512_loadu_ps(up + i)));
    }
    for (; i < intermediate; ++i) o[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
  }
}

// One KV head's queries (group x dim, rotated and scaled) over `count` cached keys and values (count x
// dim): into out (group x dim). scores: a buffer of group x count.
template <typename cache_t>
AVX512 void attend(const float* queries, int64_t group, const cache_t* keys, const cache_t* values, int64_t count,
                   int64_t dim, float* scores, float* out) {
  const int64_t chunks = dim / 16;
  for (int64_t t = 0; t < count; ++t) {
    __m512 k[8];
    for (int64_t c = 0; c < chunks; ++c) k[c] = load16(keys + t * dim + c * 16);
    for (int64_t h = 0; h < group; ++h) {
      __m512 dot = _mm512_mul_ps(_mm512_loadu_ps(queries + h * dim), k[0]);
      for (int64_t c = 1; c < chunks; ++c) dot = _mm512_fmadd_ps(_mm512_loadu_ps(queries + h * dim + c * 16), k[c], dot);
      scores[h * count + t] = _mm512_reduce_add_ps(dot);
    }
  }
  std::vector<float> total(group);
  for (int64_t h = 0; h < group; ++h) {  // softmax, its division left to the end
    float* s = scores + h * count;
    const float largest = *std::max_element(s, s + count);
    __m512 sum = _mm512_setzero_ps();
    int64_t t = 0;
    for (; t + 16 <= count; t += 16) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + t), _mm512_set1_ps(largest)));
      _mm512_storeu_ps(s + t, e);
      sum = _mm512_add_ps(sum, e);
    }
    if (t < count) {
      const __mmask16 rest = __mmask16((1u << (count - t)) - 1);
      const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(rest, s + t), _mm512_set1_ps(largest)));
      _mm512_mask_storeu_ps(s + t, rest, e);
      sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(rest, e));
    }
    total[h] = _mm512_reduce_add_ps(sum);
  }
  std::fill(out, out + group * dim, 0.f);
  for (int64_t t = 0; t < count; ++t) {
    for (int64_t c = 0; c < chunks; ++c) {
      const __m512 v = load16(values + t * dim + c * 16);
      for (int64_t h = 0; h < group; ++h) {
        float* o = out + h * dim + c * 16;
        _mm512_storeu_ps(o, _mm512_fmadd_ps(_mm512_set1_ps(scores[h * count + t]), v, _mm512_loadu_ps(o)));
      }
    }
  }
  for (int64_t h = 0; h < group; ++h)
    for (int64_t i = 0; i < dim; ++i) out[h * dim + i] /= total[h];
}
#endif

struct Shape {
  int64_t heads, kv_heads, dim;
};

// Each segment's queries, keys and values (its rows of qkv) rotated, its new keys and values written into
// its sequence's cache from starts[s] on, and each query's attention over the cache up to its own token:
// into out (rows x heads * dim).
template <typename cache_t>
void attention(const float* qkv, const float* cos, const float* sin, at::TensorList keys,
               at::TensorList values, int64_t layer, at::IntArrayRef starts, at::IntArrayRef counts, const Shape& s,
               float* out) {
  const int64_t segments = starts.size(), group = s.heads / s.kv_heads, width = (s.heads + 2 * s.kv_heads) * s.dim;
  const float scale = 1.f / std::sqrt(float(s.dim));
  std::vector<int64_t> first_row(segments + 1, 0);
  int64_t longest = 0;
  for (int64_t i = 0; i < segments; ++i) {
    first_row[i + 1] = first_row[i] + counts[i];
    longest = std::max(longest, starts[i] + counts[i]);
  }
  // A task is one segment's KV head, and every thread takes some even where the caches are short: the
  // threads are awake from the projection before, and a decoding step for one reply (Qwen, 114-400
  // tokens cached) took 1.5 % less than with short attention on one thread, for three 1-5 % less.
  at::parallel_for(0, segments * s.kv_heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> queries(group * s.dim), key(s.dim), scores(group * longest);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t i = task / s.kv_heads, g = task % s.kv_heads;
      const int64_t slot = ((layer * s.kv_heads + g) * keys[i].size(2)) * s.dim;  // its cache's capacity
      cache_t* cached_keys = keys[i].data_ptr<cache_t>() + slot;
      cache_t* cached_values = values[i].data_ptr<cache_t>() + slot;
      for (int64_t r = first_row[i]; r < first_row[i + 1]; ++r) {
        const int64_t position = starts[i] + r - first_row[i];
        const float* row = qkv + r * width;
        rotate(row + (s.heads + g) * s.dim, cos + r * s.dim, sin + r * s.dim, s.dim, key.data());
        const float* value = row + (s.heads + s.kv_heads + g) * s.dim;
        for (int64_t d = 0; d < s.dim; ++d) {
          cached_keys[position * s.dim + d] = cache_t(key[d]);
          cached_values[position * s.dim + d] = cache_t(value[d]);
        }
      }
      for (int64_t r = first_row[i]; r < first_row[i + 1]; ++r) {
        const int64_t position = starts[i] + r - first_row[i];
        const float* row = qkv + r * width;
        for (int64_t h = 0; h < group; ++h) {
          float* query = queries.data() + h * s.dim;
          rotate(row + (g * group + h) * s.dim, cos + r * s.dim, sin + r * s.dim, s.dim, query);
          for (int64_t d = 0; d < s.dim; ++d) query[d] *= scale;
        }
#if defined(__x86_64__)
        attend(queries.data(), group, cached_keys, cached_values, position + 1, s.dim, scores.data(),
               out + r * s.heads * s.dim + g * group * s.dim);
#endif
      }
    }
  });
}

}  // namespace

namespace localllm {

at::Tensor decode_layer(const at::Tensor& x, const at::Tensor& input_norm, at::TensorList qkv, at::TensorList output,
                        const at::Tensor& post_norm, at::TensorList gate_up, at::TensorList down,
                        const c10::optional<at::Tensor>& qk_norm, const at::Tensor& cos, const at::Tensor& sin,
                        at::TensorList keys, at::TensorList values, int64_t layer, at::IntArrayRef starts,
                        at::IntArrayRef counts, int64_t heads, double eps) {
  TORCH_CHECK(supported(), "decode_layer: this CPU lacks AVX512-VNNI or AVX512-VBMI");
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu() && at::isFloatingType(x.scalar_type()),
              "decode_layer: x is rows x hidden on the CPU");
  const int64_t M = x.size(0), hidden = x.size(1), segments = starts.size();
  TORCH_CHECK(segments > 0 && int64_t(counts.size()) == segments && int64_t(keys.size()) == segments &&
                  int64_t(values.size()) == segments,
              "decode_layer: a start, a count, keys and values for each segment");
  int64_t rows = 0;
  const auto dtype = keys[0].scalar_type();
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kFloat, "decode_layer: bf16 or float32 caches");
  for (int64_t m = 0; m < segments; ++m) {
    for (const auto* cache : {&keys[m], &values[m]})
      TORCH_CHECK(cache->dim() == 4 && cache->is_contiguous() && cache->scalar_type() == dtype &&
                      cache->device().is_cpu() && cache->size(0) == keys[0].size(0) &&
                      cache->size(1) == keys[0].size(1) && cache->size(2) == keys[m].size(2) &&
                      cache->size(3) == keys[0].size(3),
                  "decode_layer: contiguous caches of one dtype, layers x KV heads x capacity x dim");
    TORCH_CHECK(starts[m] >= 0 && counts[m] > 0 && starts[m] + counts[m] <= keys[m].size(2),
                "decode_layer: tokens ", starts[m], " to ", starts[m] + counts[m], " are outside the cache");
    rows += counts[m];
  }
  TORCH_CHECK(rows == M, "decode_layer: the segments' counts add up to ", rows, ", not x's ", M, " rows");
  const Shape shape{heads, keys[0].size(1), keys[0].size(3)};
  TORCH_CHECK(layer >= 0 && layer < keys[0].size(0), "decode_layer: no layer ", layer, " in the cache");
  TORCH_CHECK(heads > 0 && heads % shape.kv_heads == 0 && shape.dim % 16 == 0 && shape.dim <= 128,
              "decode_layer: heads a multiple of KV heads, head_dim a multiple of 16 up to 128");
  const Projection qkv_projection(qkv, "qkv"), output_projection(output, "output");
  const Projection gate_up_projection(gate_up, "gate_up"), down_projection(down, "down");
  const int64_t width = (heads + 2 * shape.kv_heads) * shape.dim, intermediate = gate_up_projection.outputs / 2;
  TORCH_CHECK(qkv_projection.outputs == width && output_projection.outputs == hidden &&
                  down_projection.outputs == hidden && gate_up_projection.outputs == 2 * intermediate,
              "decode_layer: the projections' shapes do not match the model's");
  at::Tensor kept[5];
  const float* input_weight = floats(input_norm, hidden, "input_norm", kept[0]);
  const float* post_weight = floats(post_norm, hidden, "post_norm", kept[1]);
  const float* cosines = floats(cos, M * shape.dim, "cos", kept[2]);
  const float* sines = floats(sin, M * shape.dim, "sin", kept[3]);
  const float epsilon = float(eps);

  const auto xf = x.to(at::kFloat).contiguous();
  std::vector<float> residual(xf.data_ptr<float>(), xf.data_ptr<float>() + M * hidden);
  std::vector<float> normed(M * std::max(hidden, 2 * intermediate)), wide(M * std::max(width, 2 * intermediate));
  std::vector<float> attended(M * heads * shape.dim), narrow(M * hidden);

  rms_norm(residual.data(), M, hidden, input_weight, 1, epsilon, normed.data());
  qkv_projection.apply(normed.data(), M, hidden, wide.data());
  if (qk_norm.has_value()) {  // Qwen3: each query and key head's own RMSNorm, before the rotary embedding
    const float* weights = floats(*qk_norm, (heads + shape.kv_heads) * shape.dim, "qk_norm", kept[4]);
    for (int64_t m = 0; m < M; ++m) {
      float* heads_of_row = wide.data() + m * width;
      rms_norm(heads_of_row, heads + shape.kv_heads, shape.dim, weights, heads + shape.kv_heads, epsilon,
               heads_of_row);
    }
  }
  if (dtype == at::kBFloat16) {
    attention<c10::BFloat16>(wide.data(), cosines, sines, keys, values, layer, starts, counts, shape, attended.data());
  } else {
    attention<float>(wide.data(), cosines, sines, keys, values, layer, starts, counts, shape, attended.data());
  }
  output_projection.apply(attended.data(), M, heads * shape.dim, narrow.data());
  for (int64_t i = 0; i < M * hidden; ++i) residual[i] += narrow[i];

  rms_norm(residual.data(), M, hidden, post_weight, 1, epsilon, normed.data());
  gate_up_projection.apply(normed.data(), M, hidden, wide.data());
#if defined(__x86_64__)
  swiglu(wide.data(), M, intermediate, normed.data());
#endif
  down_projection.apply(normed.data(), M, intermediate, narrow.data());
  for (int64_t i = 0; i < M * hidden; ++i) residual[i] += narrow[i];
  return at::from_blob(residual.data(), {M, hidden}, at::kFloat).to(x.scalar_type(), false, true);
}

}  // namespace localllm
