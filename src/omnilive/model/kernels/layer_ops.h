// The float32 glue of a decoder layer around the quantised matmuls, one call each instead of
// the half dozen small torch ops (and their dispatch cost) it takes in Python: at one token per
// step that cost is a fifth of a 0.5B model's decode step. Included by quant_matmul.cpp,
// compiled for AVX2 (every CPU that runs the kernel has it).

#pragma GCC push_options
#pragma GCC target("avx2,fma")

// x [rows, H] → weight * (x / sqrt(mean(x^2) + eps)), as model/layers.py's RMSNorm
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && weight.scalar_type() == torch::kFloat32, "rms_norm: float32 only");
  const auto xc = x.contiguous();
  const int64_t width = xc.size(-1), rows = xc.numel() / width;
  TORCH_CHECK(weight.numel() == width, "rms_norm: weight of ", weight.numel(), " for rows of ", width);
  auto y = torch::empty_like(xc);
  const float *xp = xc.data_ptr<float>(), *wp = weight.contiguous().data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* v = xp + r * width;
      float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
      for (int64_t k = 0; k < width; ++k) squares += v[k] * v[k];
      const float inverse = 1.0f / std::sqrt(squares / static_cast<float>(width) + static_cast<float>(eps));
      float* out = yp + r * width;
#pragma omp simd
      for (int64_t k = 0; k < width; ++k) out[k] = wp[k] * (v[k] * inverse);
    }
  });
  return y;
}

// In place on q [N, heads, D] and k [N, kv_heads, D] (heads and head_dim contiguous within a
// token, any stride between tokens: e.g. views of one fused q/k/v output):
// x * cos + rotate_half(x) * sin with cos/sin [N, D], rotate_half(x) = (-x[D/2:], x[:D/2]),
// as model/layers.py's apply_rotary
void rotary_(torch::Tensor q, torch::Tensor k, const torch::Tensor& cos, const torch::Tensor& sin) {
  TORCH_CHECK(q.scalar_type() == torch::kFloat32 && k.scalar_type() == torch::kFloat32 &&
                  cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32,
              "rotary_: float32 only");
  const int64_t tokens = q.size(0), dim = q.size(2), half = dim / 2;
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && k.size(0) == tokens && k.size(2) == dim, "rotary_: q, k must be [N, heads, D]");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) == dim && k.stride(2) == 1 && k.stride(1) == dim,
              "rotary_: the heads of a token must be contiguous");
  const auto cc = cos.contiguous(), sc = sin.contiguous();
  TORCH_CHECK(cc.size(0) == tokens && cc.size(-1) == dim && sc.sizes() == cc.sizes(), "rotary_: cos/sin must be [N, D]");
  const int64_t q_heads = q.size(1), k_heads = k.size(1), q_stride = q.stride(0), k_stride = k.stride(0);
  float *qp = q.data_ptr<float>(), *kp = k.data_ptr<float>();
  const float *cp = cc.data_ptr<float>(), *sp = sc.data_ptr<float>();
  at::parallel_for(0, tokens, 8, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float *c = cp + t * dim, *s = sp + t * dim;
      for (int64_t h = 0; h < q_heads + k_heads; ++h) {
        float* v = h < q_heads ? qp + t * q_stride + h * dim : kp + t * k_stride + (h - q_heads) * dim;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];
          v[i + half] = b * c[i + half] + a * s[i + half];
        }
      }
    }
  });
}

#pragma GCC pop_options
