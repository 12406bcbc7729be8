// y = x @ W.T for weights held as llama.cpp-style blocks of 32 inputs (model/quant_formats.py
// writes them). Activations are quantised per row and per 32 inputs to int8 (one float scale
// each), so every block's dot product runs on integers: AVX2 `maddubs` or AVX-512 VNNI
// `dpbusd`. Several activation rows share each unpacked weight block (batched decode, prefill).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int kBlock = 32;
constexpr int kMaxRows = 8;       // activation rows computed together per weight block
constexpr int kTileOutputs = 16;  // weight rows per task

// format ids and block sizes in bytes: the same table as quant_formats.py
enum Format : int64_t { kQ8_0 = 0, kQ5_0 = 1, kQ4F = 2, kQ8S2 = 3 };
constexpr int block_bytes(int64_t format) {
  return format == kQ8_0 ? 34    // fp16 d, 32 x int8
         : format == kQ5_0 ? 22  // fp16 d, uint32 high bits, 16 bytes of low nibbles: d * (q - 16)
         : format == kQ4F ? 24   // f32 scale, f32 min, 16 bytes of nibbles: scale * q - min
         : format == kQ8S2 ? 40  // f32 scale of values 0-15, f32 scale of 16-31, 32 x int8
                           : 0;
}

// Activation rows quantised per 32 values: q[row * in + k], d[row * blocks + b], sum = d * sum(q)
struct QuantRows {
  const int8_t* q;
  const float* d;
  const float* sum;
  int64_t blocks;
};

}  // namespace

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2 {
#define OMNILIVE_VNNI 0
#include "quant_dot.h"
#undef OMNILIVE_VNNI
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
namespace avx512_vnni {
#define OMNILIVE_VNNI 1
#include "quant_dot.h"
#undef OMNILIVE_VNNI
}  // namespace avx512_vnni
#pragma GCC pop_options

namespace {

bool cpu_runs(const std::string& isa) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (isa == "avx2") return avx2;
  if (isa == "avx512_vnni")
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
  return false;
}

}  // namespace

// x [M, K] float32; weights [N_i, K / 32 * block bytes] uint8, each with its format and bias
// (float32 [N_i] or None). Returns [M, sum N_i], the weights' outputs side by side: one call
// serves fused projections (q/k/v, gate/up) with one quantisation of x and one thread fork.
torch::Tensor quant_linear(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                           const std::vector<int64_t>& formats, const std::vector<c10::optional<torch::Tensor>>& biases,
                           const std::string& isa) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "x must be float32 [rows, in_features]");
  TORCH_CHECK(weights.size() == formats.size() && weights.size() == biases.size(), "one format and bias per weight");
  TORCH_CHECK(cpu_runs(isa), "this CPU does not run ", isa, " (avx2 or avx512_vnni)");
  const bool vnni = isa == "avx512_vnni";
  const auto xc = x.contiguous();
  const int64_t rows = xc.size(0), in_features = xc.size(1);
  TORCH_CHECK(in_features % kBlock == 0, "in_features must be a multiple of 32, not ", in_features);
  const int64_t blocks = in_features / kBlock;

  std::vector<int64_t> offsets{0};
  for (size_t i = 0; i < weights.size(); ++i) {
    const auto& w = weights[i];
    const int bytes = block_bytes(formats[i]);
    TORCH_CHECK(bytes > 0, "unknown block format ", formats[i]);
    TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.dim() == 2 && w.is_contiguous() && w.size(1) == blocks * bytes,
                "weight ", i, " must be contiguous uint8 [out, ", blocks * bytes, "]");
    offsets.push_back(offsets.back() + w.size(0));
  }
  const int64_t width = offsets.back();
  auto y = torch::empty({rows, width}, xc.options());
  auto q = torch::empty({rows * in_features}, xc.options().dtype(torch::kInt8));
  auto d = torch::empty({rows * blocks}, xc.options());
  auto sum = torch::empty({rows * blocks}, xc.options());
  const float* xp = xc.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  float *dp = d.data_ptr<float>(), *sp = sum.data_ptr<float>();
  at::parallel_for(0, rows * blocks, 512, [&](int64_t begin, int64_t end) {
    if (vnni)
      avx512_vnni::quantize_blocks(xp, begin, end, qp, dp, sp);
    else
      avx2::quantize_blocks(xp, begin, end, qp, dp, sp);
  });
  const QuantRows quantized{qp, dp, sp, blocks};

  std::vector<std::pair<int, int64_t>> tasks;  // (weight, first output row of its tile)
  for (size_t i = 0; i < weights.size(); ++i)
    for (int64_t o = 0; o < weights[i].size(0); o += kTileOutputs) tasks.emplace_back(static_cast<int>(i), o);
  float* out = y.data_ptr<float>();
  at::parallel_for(0, static_cast<int64_t>(tasks.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const auto [i, o] = tasks[t];
      const int64_t o_end = std::min<int64_t>(o + kTileOutputs, weights[i].size(0));
      const auto* w = weights[i].data_ptr<uint8_t>();
      if (vnni)
        avx512_vnni::tile(w, formats[i], o, o_end, quantized, rows, out + offsets[i], width);
      else
        avx2::tile(w, formats[i], o, o_end, quantized, rows, out + offsets[i], width);
    }
  });
  for (size_t i = 0; i < biases.size(); ++i)
    if (biases[i].has_value()) y.narrow(1, offsets[i], weights[i].size(0)).add_(*biases[i]);
  return y;
}

#include "layer_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("quant_linear", &quant_linear, "x @ W.T for block-quantised weights");
  m.def("rms_norm", &rms_norm, "RMSNorm of float32 rows");
  m.def("rotary_", &rotary_, "rotary embedding of q and k, in place");
  m.def("cpu_runs", &cpu_runs, "whether this CPU runs an instruction set: avx2, avx512_vnni");
}
