// Vector types and vector math of the coupled scan kernels: loads and stores, horizontal
// sums, exp2, silu, softplus (GCC vector extensions, SCAN_VBYTES wide).
//
// Part of scan_kernel_impl.h, which includes it inside namespace SCAN_NS after the parts
// listed before it there; not a standalone header.

template <typename T> struct VT;
template <> struct VT<float> {
  typedef float V __attribute__((vector_size(SCAN_VBYTES)));
  typedef uint32_t U __attribute__((vector_size(SCAN_VBYTES)));
  static constexpr int W = SCAN_VBYTES / 4;
};
template <> struct VT<double> {
  typedef double V __attribute__((vector_size(SCAN_VBYTES)));
  typedef uint64_t U __attribute__((vector_size(SCAN_VBYTES)));
  static constexpr int W = SCAN_VBYTES / 8;
};
typedef VT<float>::V VF;
typedef VT<double>::V VD;

constexpr int kMaxLanes = 16;  // widest vector: 16 floats

// Own helpers rather than std::min / std::max: a std template instantiated under this file's
// target pragma could be merged by the linker with the host's copy (see scan_common.h).
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t imax(int64_t a, int64_t b) { return a > b ? a : b; }

template <typename V, typename S> static inline V bc(S s) {
  V v = {};
  return v + (__typeof__(v[0]))s;
}
template <typename V, typename S> static inline V ld(const S* p) {
  V v;
  __builtin_memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename S> static inline void st(S* p, V v) {
  __builtin_memcpy(p, &v, sizeof(V));
}
template <typename V, typename S> static inline void add_to(S* p, V v) { st(p, ld<V>(p) + v); }
// The first k < W elements: loaded with the rest zero, or stored without touching the rest (a
// masked load/store with AVX-512, which also never faults past k).
template <typename V, typename S> static inline V ld_n(const S* p, int64_t k) {
#if SCAN_VBYTES == 64
  if (sizeof(S) == 4) return (V)_mm512_maskz_loadu_ps((__mmask16)((1u << k) - 1), p);
  return (V)_mm512_maskz_loadu_pd((__mmask8)((1u << k) - 1), p);
#else
  V v = {};
  __builtin_memcpy(&v, p, k * sizeof(S));
  return v;
#endif
}
template <typename V, typename S> static inline void st_n(S* p, V v, int64_t k) {
#if SCAN_VBYTES == 64
  if (sizeof(S) == 4) _mm512_mask_storeu_ps(p, (__mmask16)((1u << k) - 1), (__m512)v);
  else _mm512_mask_storeu_pd(p, (__mmask8)((1u << k) - 1), (__m512d)v);
#else
  __builtin_memcpy(p, &v, k * sizeof(S));
#endif
}
// Broadcast of *p straight from memory (a load-port broadcast, no shuffle).
template <typename V, typename S> static inline V bcl(const S* p) {
#if SCAN_VBYTES == 64
  if (sizeof(S) == 4) return (V)_mm512_set1_ps(*(const float*)p);
  return (V)_mm512_set1_pd(*(const double*)p);
#else
  return bc<V>(*p);
#endif
}

// ---------------------------------------------------------------------------------------------
// Sums over the lanes.
static inline float hsum(VF v) {
#if SCAN_VBYTES == 64
  return _mm512_reduce_add_ps((__m512)v);
#elif SCAN_VBYTES == 32
  __m256 x = (__m256)v;
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
#else
  float s = 0.f;
  for (int i = 0; i < VT<float>::W; ++i) s += v[i];
  return s;
#endif
}
static inline double hsum(VD v) {
#if SCAN_VBYTES == 64
  return _mm512_reduce_add_pd((__m512d)v);
#elif SCAN_VBYTES == 32
  __m256d x = (__m256d)v;
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
  s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
  return _mm_cvtsd_f64(s);
#else
  double s = 0.0;
  for (int i = 0; i < VT<double>::W; ++i) s += v[i];
  return s;
#endif
}

// out[r] = sum of the lanes of row r, for rows r < R (R a multiple of 16). acc: R x W.
template <typename T> static inline void reduce_rows(const T* acc, int64_t R, T* out) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  for (int64_t r = 0; r < R; ++r) out[r] = hsum(ld<V>(acc + r * W));
}
#if SCAN_VBYTES == 64
// 16 rows of 16 floats -> 16 sums, a transpose folded into the additions. Four levels each halve
// the partial sums per row. For a pair of vectors (p, q) at level s (8, 4, 2, 1), lane i keeps
// p's partial where bit s of i is clear and q's where it is set, and adds the partial of its
// partner lane i ^ s from the same vector: x = blend(p, q), y = the partners (one two-source
// permute), x + y. That is 15 permutes, 15 blends and 15 adds per 16 rows, and only the permutes
// need the shuffle port (two shuffles per pair, the earlier version, put 31 of 46 operations
// there). The total on the two vector ports is about the same, so a whole call was not
// measurably faster (docs/cpu_kernel.md). After the four levels lane i holds the row loaded at
// position bitreverse(i), so the rows are loaded in bit-reversed order and lane i ends with row i.
template <> inline void reduce_rows<float>(const float* acc, int64_t R, float* out) {
  // partner indices (p's lanes 0-15, q's 16-31) of the levels that shufps/shuf_f32x4 cannot do
  const __m512i by4 = _mm512_setr_epi32(4, 5, 6, 7, 16, 17, 18, 19, 12, 13, 14, 15, 24, 25, 26, 27);
  const __m512i by1 = _mm512_setr_epi32(1, 16, 3, 18, 5, 20, 7, 22, 9, 24, 11, 26, 13, 28, 15, 30);
  static const int rev[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
  for (int64_t r0 = 0; r0 < R; r0 += 16) {
    const float* a = acc + r0 * 16;
    __m512 w[8], x[4], y[2];
    for (int k = 0; k < 8; ++k) {  // s = 8: 256-bit halves
      const __m512 p = _mm512_loadu_ps(a + rev[2 * k] * 16), q = _mm512_loadu_ps(a + rev[2 * k + 1] * 16);
      w[k] = _mm512_add_ps(_mm512_mask_blend_ps(0xFF00, p, q), _mm512_shuffle_f32x4(p, q, 0x4E));
    }
    for (int k = 0; k < 4; ++k) {  // s = 4: 128-bit quarters
      const __m512 p = w[2 * k], q = w[2 * k + 1];
      x[k] = _mm512_add_ps(_mm512_mask_blend_ps(0xF0F0, p, q), _mm512_permutex2var_ps(p, by4, q));
    }
    for (int k = 0; k < 2; ++k) {  // s = 2: pairs within quarters
      const __m512 p = x[2 * k], q = x[2 * k + 1];
      y[k] = _mm512_add_ps(_mm512_mask_blend_ps(0xCCCC, p, q), _mm512_shuffle_ps(p, q, 0x4E));
    }
    const __m512 s = _mm512_add_ps(_mm512_mask_blend_ps(0xAAAA, y[0], y[1]),
                                   _mm512_permutex2var_ps(y[0], by1, y[1]));  // s = 1
    _mm512_storeu_ps(out + r0, s);
  }
}
#endif

// out[r] for the first n rows, n any count: whole groups of 16 as above; a remainder of up to 5
// rows by single horizontal sums (about 9 operations each, against 46 for a group), so that a
// short chunk (L = 50: 3 groups and 2 rows) does not pay for a whole padded group.
template <typename T> static inline void reduce_rows_n(const T* acc, int64_t n, T* out) {
  typedef typename VT<T>::V V;
  const int64_t full = n / 16 * 16, rest = n - full;
  if (full) reduce_rows(acc, full, out);
  if (rest == 0) return;
  if (rest > 5) {
    reduce_rows(acc + full * VT<T>::W, 16, out + full);
    return;
  }
  for (int64_t r = full; r < n; ++r) out[r] = hsum(ld<V>(acc + r * VT<T>::W));
}

// ---------------------------------------------------------------------------------------------
// 2^x. Round x to n, r = x - n, 2^r by a polynomial, times 2^n. Inputs below about -126 (float)
// / -1021 (double) give 0 rather than a denormal (true values < 2e-38 / 5e-308; denormals are
// slow and carry no information here); above the overflow threshold +inf; NaN stays NaN.
static inline VF poly_exp2(VF r) {
  // Near-minimax fit of 2^r on [-1/2, 1/2], max relative error 9.5e-8 in float arithmetic.
  VF p = bc<VF>(1.526723790448159e-4f);
  p = p * r + 1.3392884284257889e-3f;
  p = p * r + 9.618725627660751e-3f;
  p = p * r + 5.550350248813629e-2f;
  p = p * r + 2.4022646248340607e-1f;
  p = p * r + 6.931471824645996e-1f;
  return p * r + 1.0f;
}
#if SCAN_VBYTES == 64
static inline VF poly_exp2_01(VF r) {
  // Degree 5 with p(0) = 1, fitted for the smallest maximum absolute error on [0, 1) (1.2e-7;
  // p is in [1, 2), where that is also the error in ulp). Measured through vexp2, float with FMA:
  // at most 2.4 ulp, 1.7e-7 relative (docs/cpu_kernel.md). A degree-6 fit gave 1.4 ulp for one
  // more FMA on the scan's critical throughput path (about 1 in 12 of its vector operations).
  VF p = bc<VF>(1.8852974753826857e-3f);
  p = p * r + 8.973378688097e-3f;
  p = p * r + 5.583592876791954e-2f;
  p = p * r + 2.4015280604362488e-1f;
  p = p * r + 6.931524872779846e-1f;
  return p * r + 1.0f;
}
#endif
static inline VD poly_exp2(VD r) {
  // Taylor series of e^(r ln2) to degree 13: remainder < 5e-18 for |r| <= 1/2.
  const double c[14] = {1.0, 6.931471805599453094e-01, 2.402265069591007123e-01,
                        5.550410866482157995e-02, 9.618129107628477161e-03,
                        1.333355814642844343e-03, 1.540353039338160995e-04,
                        1.525273380405984029e-05, 1.321548679014430756e-06,
                        1.017808600923969862e-07, 7.054911620801123473e-09,
                        4.445538271870811681e-10, 2.567843599348820424e-11,
                        1.369148885390497793e-12};
  VD p = bc<VD>(c[13]);
  for (int k = 12; k >= 0; --k) p = p * r + c[k];
  return p;
}

static inline VF vexp2(VF x) {
#if SCAN_VBYTES == 64
  // r = x - floor(x) in [0, 1) exactly (vreduceps), 2^r by a polynomial, then scalef multiplies
  // by 2^floor(x) itself: 9 operations with the argument's multiply. No clamp is needed: x >= 128
  // (and +inf, whose reduction is 0) overflows to +inf in scalef; x < -126 gives a denormal,
  // which the kernels' flush-to-zero mode (FlushToZero) turns into 0 without an assist; -inf
  // (reduction 0) gives 0; NaN stays NaN.
  const __m512 xv = (__m512)x;
  const VF r = (VF)_mm512_reduce_ps(xv, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  return (VF)_mm512_scalef_ps((__m512)poly_exp2_01(r), xv);
#else
  typedef VT<float>::U U;
  const VF lo = bc<VF>(-126.4f), hi = bc<VF>(129.4f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const VF t = x + magic;
  const VF p = poly_exp2(x - (t - magic));
  // 2 p 2^(n-1): the exponent field n + 126 stays in [0, 255] for n in [-126, 129]; 0 gives 0.
  const U e = ((U)t + (uint32_t)(126u - 0x4B400000u)) << 23;
  return (p + p) * (VF)e;
#endif
}

static inline VD vexp2(VD x) {
#if SCAN_VBYTES == 64
  const __m512d xv = (__m512d)x;
  const __mmask8 keep = _mm512_cmp_pd_mask(xv, _mm512_set1_pd(-1021.0), _CMP_NLT_UQ);
  const __m512d n = _mm512_roundscale_pd(xv, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const VD p = poly_exp2((VD)_mm512_sub_pd(xv, n));
  return (VD)_mm512_maskz_scalef_pd(keep, (__m512d)p, n);
#else
  typedef VT<double>::U U;
  const VD lo = bc<VD>(-1022.4), hi = bc<VD>(1025.4);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const double magic = 6755399441055744.0;  // 1.5 * 2^52
  const VD t = x + magic;
  const VD p = poly_exp2(x - (t - magic));
  const U e = ((U)t + (uint64_t)(1022ull - 0x4338000000000000ull)) << 52;
  return (p + p) * (VD)e;
#endif
}

constexpr double kLog2e = 1.4426950408889634074;  // exp(x) = 2^(x log2(e))

template <typename V> static inline V vexp(V x) {
  return vexp2(x * (__typeof__(x[0]))kLog2e);
}

// 1 / x for x whose reciprocal is a normal number: AVX-512 refines rcp14 (relative error below
// 2^-14 whatever the exponent) once (error ~1e-8).
static inline VF vrcp12(VF x) {
#if SCAN_VBYTES == 64
  const VF r = (VF)_mm512_rcp14_ps((__m512)x);
  return r * (2.0f - x * r);
#else
  return 1.0f / x;
#endif
}
static inline VD vrcp12(VD x) { return 1.0 / x; }

static inline VF vabs(VF x) { return (VF)((VT<float>::U)x & 0x7FFFFFFFu); }
static inline VD vabs(VD x) { return (VD)((VT<double>::U)x & 0x7FFFFFFFFFFFFFFFull); }

// sigmoid(x) from e = exp(-|x|) in (0, 1] (no overflow for any x).
template <typename V> static inline V vsigmoid(V x) {
  typedef __typeof__(x[0]) E;
  const V e = vexp(-vabs(x));
  const V inv = vrcp12(e + E(1));
  return x >= E(0) ? inv : e * inv;
}

// silu(x) = x / (1 + exp(-x)), for the forward's gate: fewer operations than x vsigmoid(x)
// (no |x|, no select). exp(-x) is capped at exp(87) in float (exp(700) in double)
// so that 1 + exp(-x) stays finite and its reciprocal normal: below x = -87 the result is
// x 1.6e-38 rather than x exp(x), both below 2e-36 in magnitude (double: below -700, 1e-304);
// -inf gives -inf (torch: NaN).
static inline VF vsilu(VF x) {
  const VF nx = -x;
  return x * vrcp12(vexp(nx < 87.0f ? nx : bc<VF>(87.0f)) + 1.0f);
}
static inline VD vsilu(VD x) {
  const VD nx = -x;
  return x / (vexp(nx < 700.0 ? nx : bc<VD>(700.0)) + 1.0);
}

// log(u) for u in [1, 2^1024) (double): u = 2^k m, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh(s)
// with s = (m - 1) / (m + 1), |s| <= 0.172, by its odd series.
static inline VD vlog_ge1(VD u) {
  typedef VT<double>::U U;
  const U bits = (U)u;
  VD k = (VD)((bits >> 52) | 0x4330000000000000ull) - (4503599627370496.0 + 1023.0);
  VD m = (VD)((bits & 0x000FFFFFFFFFFFFFull) | 0x3FF0000000000000ull);
  const auto big = m > 1.41421356237309505;
  m = big ? m * 0.5 : m;
  k = big ? k + 1.0 : k;
  const VD s = (m - 1.0) / (m + 1.0);
  const VD s2 = s * s;
  VD p = bc<VD>(1.0 / 23);
  for (int i = 21; i >= 3; i -= 2) p = p * s2 + 1.0 / i;
  p = p * s2 + 1.0;
  return k * 6.93147180369123816490e-01 + (k * 1.90821492927058770002e-10 + 2.0 * s * p);
}

// log1p(y) for y in [0, 1].
static inline VF vlog1p01(VF y) {
  // y P(y), P a near-minimax fit of log1p(y) / y on [0, 1]: relative error 1.3e-7 in float.
  VF p = bc<VF>(-3.569713793694973e-3f);
  p = p * y + 2.1320099011063576e-2f;
  p = p * y - 5.9727028012275696e-2f;
  p = p * y + 1.0886026173830032e-1f;
  p = p * y - 1.5474490821361542e-1f;
  p = p * y + 1.973581314086914e-1f;
  p = p * y - 2.4966230988502502e-1f;
  p = p * y + 3.3331218361854553e-1f;
  p = p * y - 4.999995529651642e-1f;
  p = p * y + 1.0f;
  return y * p;
}
static inline VD vlog1p01(VD y) {
  // Goldberg: log1p(y) = log(1 + y) y / ((1 + y) - 1), exact-ish for tiny y.
  const VD u = y + 1.0, um1 = u - 1.0;
  return um1 == 0.0 ? y : vlog_ge1(u) * (y / um1);
}

// torch's softplus (beta 1, threshold 20): x > 20 ? x : log1p(exp(x)), computed as
// max(x, 0) + log1p(exp(-|x|)) (no overflow). grad_factor receives torch's backward factor:
// 1 above the threshold, else sigmoid(x). In float the threshold needs no select: above 20,
// log1p(exp(-x)) < 2.1e-9 is less than half an ulp of x (9.5e-7), so the sum rounds to x.
template <typename V> static inline V vsoftplus(V x, V* grad_factor) {
  typedef __typeof__(x[0]) E;
  const V y = vexp(-vabs(x));
  const V zero = bc<V>(E(0));
  const V sp = (x > E(0) ? x : zero) + vlog1p01(y);
  const auto over = x > E(20);
  if (grad_factor) {
    const V inv = vrcp12(y + E(1));
    *grad_factor = over ? bc<V>(E(1)) : (x >= E(0) ? inv : y * inv);
  }
  if (sizeof(E) == 4) return sp;
  return over ? x : sp;
}
