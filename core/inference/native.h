// What core/inference/native.cpp (decoding's matmuls) and native_layer.cpp (a whole decoding layer) share.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>

namespace localllm {

// Whether this CPU runs the kernels (AVX512 with VNNI and VBMI).
bool supported();

// rows (M x K float32) times int4 weights (codes in torch's CPU layout; scale and offset codes, groups x 2
// x N bytes, and their units, super-blocks x 2 x N float32: quantize.code_scales), the rows in 8 bits a
// group of 32: into out (M x N float32).
void int4_product(const float* rows, int64_t M, int64_t K, const at::Tensor& packed, const at::Tensor& codes,
                  const at::Tensor& units, float* out);

// rows (M x K float32) times int8 weights (N x K) with a scale a row and their int32 row sums, each row
// exact to 15 bits of its largest, or (tame_peak > 0) in 8 bits where its largest is within tame_peak x
// its RMS: into out (M x N float32).
void int8_product(const float* rows, int64_t M, int64_t K, const at::Tensor& weight, const at::Tensor& scale,
                  const at::Tensor& weight_sums, float tame_peak, float* out);

// One decoder layer of a Llama-family model for a few tokens of some sequences (native_layer.cpp): x (rows
// x hidden; segment s's counts[s] rows, one after the other) through RMSNorm, the fused q/k/v projection,
// rotary embedding, the new keys and values written into each sequence's cache (keys[s], values[s]:
// layers x KV heads x capacity x head_dim) from starts[s] on, attention over the cache up to each token,
// the output projection, RMSNorm and the SwiGLU MLP.
// A projection is [packed, codes, units] (int4) or [weight, scale, weight_sums] (int8), and its bias if
// it has one. The new x, in x's dtype.
at::Tensor decode_layer(const at::Tensor& x, const at::Tensor& input_norm, at::TensorList qkv, at::TensorList output,
                        const at::Tensor& post_norm, at::TensorList gate_up, at::TensorList down,
                        const c10::optional<at::Tensor>& qk_norm, const at::Tensor& cos, const at::Tensor& sin,
                        at::TensorList keys, at::TensorList values, int64_t layer, at::IntArrayRef starts,
                        at::IntArrayRef counts, int64_t heads, double eps);

}  // namespace localllm
