// The instruction-set-specific half of quant_matmul.cpp, included once per instruction set
// inside a `#pragma GCC target` region and its own namespace; OMNILIVE_VNNI picks the integer
// dot product (AVX-512 VNNI `dpbusd`, else AVX2 `maddubs` + `madd`).

inline float half_to_float(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// 8 int32 lanes, lane i = the sum of the products of bytes 4i..4i+3 (u unsigned, s signed)
inline __m256i dot_u8_i8(__m256i u, __m256i s) {
#if OMNILIVE_VNNI
  return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
  return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// 16 bytes → 32 values: byte j's low nibble is value j, its high nibble value j + 16
inline __m256i low_high_nibbles(const uint8_t* p) {
  __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m128i mask = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), _mm_and_si128(packed, mask));
}

// bit i of `bits` → byte i = 0xFF if set, else 0
inline __m256i bits_to_bytes(uint32_t bits) {
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                                          3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i select = _mm256_set1_epi64x(0x8040201008040201LL);
  __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), spread);
  return _mm256_cmpeq_epi8(_mm256_and_si256(bytes, select), select);
}

// One weight row against kRows activation rows (row0...): out[r * out_stride] = the dot product.
// Each block gives 32 int8 weights and a per-lane float scale (kQ4F, kQ5_0: unsigned weights and a min).
template <int64_t kFormat, int kRows>
void dot_row(const uint8_t* weights, const QuantRows& x, int64_t row0, float* out, int64_t out_stride) {
  // one accumulator per row (a block's unpacking outlasts the FMA's latency), so 8 rows fit
  // AVX2's 16 registers
  __m256 acc[kRows];
  float min_acc[kRows];
  for (int r = 0; r < kRows; ++r) {
    acc[r] = _mm256_setzero_ps();
    min_acc[r] = 0.0f;
  }
  constexpr int bytes = block_bytes(kFormat);
  constexpr bool kUnsigned = kFormat == kQ4F || kFormat == kQ5_0;  // weights as 0..31 less a min
  for (int64_t b = 0; b < x.blocks; ++b) {
    const uint8_t* block = weights + b * bytes;
    __m256i w;
    __m256 scale;
    float min = 0.0f;
    if constexpr (kFormat == kQ8_0) {
      w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 2));
      scale = _mm256_set1_ps(half_to_float(block));
    } else if constexpr (kFormat == kQ5_0) {
      // the unsigned q in 0..31 (the value is d * (q - 16)): its fifth bit comes from `high`, and
      // the 16 comes off at the end as a min, d * 16 * sum(x), as kQ4F's min does
      uint32_t high;
      std::memcpy(&high, block + 2, 4);
      const __m256i low = low_high_nibbles(block + 6);
#if OMNILIVE_VNNI
      w = _mm256_mask_mov_epi8(low, high, _mm256_or_si256(low, _mm256_set1_epi8(0x10)));
#else
      w = _mm256_or_si256(low, _mm256_and_si256(bits_to_bytes(high), _mm256_set1_epi8(0x10)));
#endif
      const float d = half_to_float(block);
      scale = _mm256_set1_ps(d);
      min = 16.0f * d;
    } else if constexpr (kFormat == kQ4F) {
      float s;
      std::memcpy(&s, block, 4);
      std::memcpy(&min, block + 4, 4);
      w = low_high_nibbles(block + 8);
      scale = _mm256_set1_ps(s);
    } else {
      float s0, s1;
      std::memcpy(&s0, block, 4);
      std::memcpy(&s1, block + 4, 4);
      w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(block + 8));
      scale = _mm256_setr_m128(_mm_set1_ps(s0), _mm_set1_ps(s1));
    }
    // unsigned x signed bytes: |w| times x with w's sign, where the weights are signed
    const __m256i w_abs = kUnsigned ? w : _mm256_sign_epi8(w, w);
    for (int r = 0; r < kRows; ++r) {
      const int64_t i = (row0 + r) * x.blocks + b;
      __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.q + i * kBlock));
      if constexpr (!kUnsigned) xq = _mm256_sign_epi8(xq, w);
      const __m256 products = _mm256_cvtepi32_ps(dot_u8_i8(w_abs, xq));
      acc[r] = _mm256_fmadd_ps(products, _mm256_mul_ps(scale, _mm256_set1_ps(x.d[i])), acc[r]);
      if constexpr (kUnsigned) min_acc[r] += min * x.sum[i];
    }
  }
  for (int r = 0; r < kRows; ++r) out[r * out_stride] = horizontal_sum(acc[r]) - min_acc[r];
}

using DotRow = void (*)(const uint8_t*, const QuantRows&, int64_t, float*, int64_t);

template <int64_t kFormat>
DotRow dot_for_rows(int rows) {
  switch (rows) {
    case 1: return dot_row<kFormat, 1>;
    case 2: return dot_row<kFormat, 2>;
    case 3: return dot_row<kFormat, 3>;
    case 4: return dot_row<kFormat, 4>;
    case 5: return dot_row<kFormat, 5>;
    case 6: return dot_row<kFormat, 6>;
    case 7: return dot_row<kFormat, 7>;
    default: return dot_row<kFormat, 8>;
  }
}

inline DotRow dot_kernel(int64_t format, int rows) {
  switch (format) {
    case kQ8_0: return dot_for_rows<kQ8_0>(rows);
    case kQ5_0: return dot_for_rows<kQ5_0>(rows);
    case kQ4F: return dot_for_rows<kQ4F>(rows);
    default: return dot_for_rows<kQ8S2>(rows);
  }
}

// Output rows [out_begin, out_end) of one weight for all activation rows; y[row * y_stride + o].
// Row chunks run inside the tile, so its weights stay in cache while every chunk reads them.
void tile(const uint8_t* weights, int64_t format, int64_t out_begin, int64_t out_end, const QuantRows& x,
          int64_t rows, float* y, int64_t y_stride) {
  const int64_t row_bytes = x.blocks * block_bytes(format);
  for (int64_t row = 0; row < rows; row += kMaxRows) {
    const int chunk = static_cast<int>(std::min<int64_t>(kMaxRows, rows - row));
    const DotRow dot = dot_kernel(format, chunk);
    for (int64_t o = out_begin; o < out_end; ++o) dot(weights + o * row_bytes, x, row, y + row * y_stride + o, y_stride);
  }
}

// Blocks [begin, end) of x (float, 32 values each) → int8 values, scale, scale * sum (llama.cpp's q8_0)
void quantize_blocks(const float* x, int64_t begin, int64_t end, int8_t* q, float* d, float* sum) {
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = begin; i < end; ++i) {
    const float* v = x + i * kBlock;
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < kBlock; k += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(v + k)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float amax = _mm_cvtss_f32(h);
    const __m256 inverse = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
    __m256i total = _mm256_setzero_si256();
    __m256i n[4];
    for (int k = 0; k < 4; ++k) {
      n[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(v + 8 * k), inverse),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      total = _mm256_add_epi32(total, n[k]);
    }
    // int32 → int8 in order (packs work per 128-bit lane, the permute restores the order)
    __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
    packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + i * kBlock), packed);
    const float scale = amax / 127.0f;
    d[i] = scale;
    sum[i] = scale * horizontal_sum(_mm256_cvtepi32_ps(total));
  }
}
