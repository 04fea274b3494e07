// Coupled selective scan kernels, forward and reverse-pass backward (docs/MATH.md, section 2).
//
//   dt      = softplus(delta + bias)                      (each optional)
//   Abar    = exp(dt A),  bbar = dt B u                   per (m, b, d, n, t)
//   h[t][m] = Abar[t][m] * sum_k W[m, k] h[t-1][k] + bbar[t][m]
//   y[t][m] = sum_n C[m, n, t] h[t][m, n] + D[m] u[t][m];   y *= silu(z)
//
// Shapes: M modalities, Bt batch, D channels, N state (Np padded to the vector width), L length,
// T chunk length. Included by scan_isa_*.cpp with SCAN_NS (namespace), SCAN_VBYTES (vector bytes)
// and SCAN_ISA_NAME defined, inside a target pragma. Design (docs/cpu_kernel.md), in short:
//
// - Vectors run over the state index n (GCC vector extensions, VBYTES wide); time is sequential.
// - Work unit: one (b, d) with all M modalities (coupling mixes modalities at equal (b, d, n)).
//   A task owns batch rows x a channel range; inside it the loop order is b -> chunk -> d, so the
//   chunk of B, C (and of dB, dC in the backward) stays in cache while all channels pass over it.
// - Couplings: rank one ("mean", "sum") carries only S[t] = sum_m h[t][m] (the single recurrence
//   of docs/MATH.md section 2.1: every h[t][m] = Abar (w/M) S[t-1] + bbar is pointwise); "none"
//   is the same code with one modality at a time; a general W carries the M states and does the
//   M x M mix.
// - The forward writes the state at each chunk start ("saved", 1/T of the states) when a backward
//   will follow. The backward walks chunks in reverse: recompute the chunk's states from the saved
//   one into a small buffer (T x M x Np, with Abar), then run the reverse recurrence over it.
// - The kernels use A2 = A log2(e) (formed by the host for the general kernel, by pack_a for the
//   others), so Abar = 2^(dt A2): our own vectorised exp2 (rounding to an integer, a degree-5
//   (AVX-512) or degree-6 polynomial, then the power of two; at most 2.4 ulp in float).
// - Sums over n (y = C.h and two sums of the backward) are kept as vectors per step and reduced
//   for a whole chunk at once (a transpose-and-add), not one horizontal sum per step.
// - Pointwise work (softplus, dt u, the gate) runs per (m, b, d) chunk row, except in the
//   forward of a sequence of one chunk (L <= T, rank one and "none"): there it runs over flat
//   arrays of many channels at once (flat_prep).

#ifndef SCAN_NS
#error "define SCAN_NS, SCAN_VBYTES and SCAN_ISA_NAME before including scan_kernel_impl.h"
#endif

namespace SCAN_NS {

using coupled_scan::KernelTable;
using coupled_scan::ScanArgs;
using coupled_scan::TaskRange;

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

// ---------------------------------------------------------------------------------------------
// Typed view of the arguments and index helpers.
template <typename T> struct Ctx {
  const ScanArgs& a;
  int64_t M, Bt, D, N, Np, L, T_, S;  // S: size of the carried state per (b, d)
  const T *u, *delta, *A2, *Bm, *Cm, *Dskip, *z, *bias, *init, *W, *dout, *dlast;
  T *y, *last, *saved, *du, *ddelta, *dz, *dinit, *dA, *dD, *dbias, *dW, *dB, *dC;
  explicit Ctx(const ScanArgs& args) : a(args) {
    M = a.M; Bt = a.Bt; D = a.D; N = a.N; Np = a.Np; L = a.L; T_ = a.T;
    S = a.mode == coupled_scan::kRank1 ? Np : M * Np;
    u = (const T*)a.u; delta = (const T*)a.delta; A2 = (const T*)a.A;
    Bm = (const T*)a.Bm; Cm = (const T*)a.Cm; Dskip = (const T*)a.Dskip; z = (const T*)a.z;
    bias = (const T*)a.bias; init = (const T*)a.init; W = (const T*)a.W;
    dout = (const T*)a.dout; dlast = (const T*)a.dlast;
    y = (T*)a.y; last = (T*)a.last; saved = (T*)a.saved; du = (T*)a.du;
    ddelta = (T*)a.ddelta; dz = (T*)a.dz; dinit = (T*)a.dinit; dA = (T*)a.dA;
    dD = (T*)a.dD; dbias = (T*)a.dbias; dW = (T*)a.dW; dB = (T*)a.dB; dC = (T*)a.dC;
  }
  int64_t row(int64_t m, int64_t b, int64_t d) const { return ((m * Bt + b) * D + d) * L; }
  int64_t st_off(int64_t m, int64_t b, int64_t d) const { return ((m * Bt + b) * D + d) * N; }
  // Rows of the host-prepared layouts (general W only; the other kernels get the caller's
  // layouts and read them in pack_a / pack_bc).
  const T* Arow(int64_t m, int64_t d) const { return A2 + (m * D + d) * Np; }
  const T* Brow(int64_t m, int64_t b, int64_t t) const { return Bm + ((m * Bt + b) * L + t) * Np; }
  const T* Crow(int64_t m, int64_t b, int64_t t) const { return Cm + ((m * Bt + b) * L + t) * Np; }
  T* saved_at(int64_t b, int64_t d, int64_t c) const {
    return saved + ((b * D + d) * a.nchunks + c) * S;
  }
  // dB / dC row (m, b, t): the shared output or the task's private (M, L, Np) slice.
  int64_t dbc_off(const TaskRange& r, int64_t m, int64_t b, int64_t t) const {
    return a.bc_private ? ((r.task * M + m) * L + t) * Np : ((m * Bt + b) * L + t) * Np;
  }
  T* dArow(const TaskRange& r, int64_t m, int64_t d) const {
    return dA + ((r.task * M + m) * D + d) * Np;
  }
  int64_t md(const TaskRange& r, int64_t m, int64_t d) const { return (r.task * M + m) * D + d; }
};

// Rows of one (m, b, d) over one chunk. Inputs point into the tensors for a full chunk, or at
// copies padded to T with zeros for the last, partial one (zeros are harmless everywhere).
template <typename T> struct Rows {
  const T *u, *z, *dout;
  T *dt, *dtu, *spg, *dy;        // dt, dt u, softplus' factor, dout silu(z)
  T *ys, *s1, *s2;               // per-step sums over n
  T *acc_y, *acc_1, *acc_2;      // their per-step vectors (T x W), reduced per chunk
  T *pad_u, *pad_z, *pad_o, *pad_dl;
};
// Per-modality row storage, in units of T: 11 rows and 3 T x kMaxLanes accumulators.
constexpr int64_t kRowsPerM = 11 + 3 * kMaxLanes;

template <typename T> static inline Rows<T> rows_at(T* base, int64_t mi, int64_t Tn) {
  T* p = base + mi * kRowsPerM * Tn;
  Rows<T> r;
  r.pad_u = p; r.pad_z = p + Tn; r.pad_o = p + 2 * Tn; r.pad_dl = p + 3 * Tn;
  r.dt = p + 4 * Tn; r.dtu = p + 5 * Tn; r.spg = p + 6 * Tn; r.dy = p + 7 * Tn;
  r.ys = p + 8 * Tn; r.s1 = p + 9 * Tn; r.s2 = p + 10 * Tn;
  r.acc_y = p + 11 * Tn; r.acc_1 = r.acc_y + kMaxLanes * Tn; r.acc_2 = r.acc_1 + kMaxLanes * Tn;
  r.u = r.z = r.dout = nullptr;
  return r;
}

// Rows a chunk of Tc steps occupies in the pointwise passes: Tc rounded up to 16 (a multiple of
// every vector width), not the full T, so that a short last chunk (a short
// sequence, a streaming step with L = 1) costs its length rather than a whole chunk.
static inline int64_t rows_used(int64_t Tc) { return (Tc + 15) / 16 * 16; }

template <typename T>
static inline const T* src_or_pad(const T* src, T* pad, int64_t Tc, int64_t Tn) {
  if (Tc == Tn) return src;
  for (int64_t j = 0; j < Tc; ++j) pad[j] = src[j];
  for (int64_t j = Tc, Tv = rows_used(Tc); j < Tv; ++j) pad[j] = T(0);
  return pad;
}

// Point u, z (dout) of a chunk's rows at the tensors (full chunk) or at the padded copies that
// prep_rows made (last chunk).
template <typename T>
static inline void bind_rows(const Ctx<T>& c, Rows<T>& r, int64_t m, int64_t b, int64_t d,
                             int64_t t0, int64_t Tc, bool backward) {
  const bool full = Tc == c.T_;
  const int64_t off = c.row(m, b, d) + t0;
  r.u = full ? c.u + off : r.pad_u;
  r.z = c.z ? (full ? c.z + off : r.pad_z) : nullptr;
  if (backward) r.dout = full ? c.dout + off : r.pad_o;
}

// Row segments of one (m, b, d) chunk are T elements at a stride of L between channels: too far
// apart for the hardware prefetcher once L is large. Prefetch those of the next channel while
// the current one runs (one unit is thousands of cycles, more than a memory latency).
// Always inlined: GCC models __builtin_prefetch as touching no memory, so a separate function
// holding only prefetches is judged free of side effects and its calls are deleted (GCC 12 at
// -O3 removed every prefetch of this file that way).
template <typename T>
__attribute__((always_inline)) static inline void prefetch_rows(
    const Ctx<T>& c, int64_t m, int64_t b, int64_t d, int64_t t0, int64_t Tc, bool backward) {
  const int64_t off = c.row(m, b, d) + t0;
  const int64_t line = 64 / static_cast<int64_t>(sizeof(T));
  for (int64_t j = 0; j < Tc; j += line) {
    __builtin_prefetch(c.u + off + j, 0, 3);
    __builtin_prefetch(c.delta + off + j, 0, 3);
    if (c.z) __builtin_prefetch(c.z + off + j, 0, 3);
    if (backward) {
      __builtin_prefetch(c.dout + off + j, 0, 3);
      __builtin_prefetch(c.du + off + j, 1, 3);
      __builtin_prefetch(c.ddelta + off + j, 1, 3);
      if (c.z) __builtin_prefetch(c.dz + off + j, 1, 3);
    } else {
      __builtin_prefetch(c.y + off + j, 1, 3);
    }
  }
}

// Time blocks: the loop order inside a task is block -> channel -> chunk, so that each channel
// reads its rows of u, delta, z (T x chunks_per_block contiguous elements) sequentially, while
// the block's slice of B, C (and dB, dC) -- MG x block x Np each -- stays in L2 (~512 KiB)
// across all channels of the task.
template <typename T> static inline int64_t chunks_per_block(const Ctx<T>& c, int64_t MG) {
  const int64_t per_chunk = MG * c.T_ * c.Np * 4 * static_cast<int64_t>(sizeof(T));
  const int64_t cb = (int64_t(512) << 10) / per_chunk;
  return cb < 1 ? 1 : cb;
}

// Prefetch the rows of the unit that comes after (d, ch) in block [cb0, cb1) (chunks ascending
// in the forward, descending in the backward).
template <typename T>
__attribute__((always_inline)) static inline void prefetch_next(
    const Ctx<T>& c, const TaskRange& r, int64_t m, int64_t b, int64_t d, int64_t ch, int64_t cb0,
    int64_t cb1, bool backward) {
  int64_t dn = d, cn = backward ? ch - 1 : ch + 1;
  if (cn < cb0 || cn >= cb1) {
    dn = d + 1;
    cn = backward ? cb1 - 1 : cb0;
  }
  if (dn >= r.d1) return;
  const int64_t t0 = cn * c.T_, Tc = (c.L - t0 < c.T_) ? c.L - t0 : c.T_;
  prefetch_rows(c, m, b, dn, t0, Tc, backward);
}

// Load u, z (dout) and compute dt, dt u (softplus' factor, dy = dout silu(z)) for a chunk.
template <typename T>
static void prep_rows(const Ctx<T>& c, Rows<T>& r, int64_t m, int64_t b, int64_t d, int64_t t0,
                      int64_t Tc, bool backward) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t Tn = c.T_;
  const int64_t off = c.row(m, b, d) + t0;
  r.u = src_or_pad(c.u + off, r.pad_u, Tc, Tn);
  const T* dl = src_or_pad(c.delta + off, r.dt, Tc, Tn);  // computed in place when padded
  r.z = c.z ? src_or_pad(c.z + off, r.pad_z, Tc, Tn) : nullptr;
  if (backward) r.dout = src_or_pad(c.dout + off, r.pad_o, Tc, Tn);
  const T bias = c.bias ? c.bias[m * c.D + d] : T(0);
  for (int64_t j = 0, Tv = rows_used(Tc); j < Tv; j += W) {
    const V x = ld<V>(dl + j) + bias;
    V g = bc<V>(T(1));
    const V dt = c.a.softplus ? vsoftplus(x, backward ? &g : nullptr) : x;
    st(r.dt + j, dt);
    st(r.dtu + j, dt * ld<V>(r.u + j));
    if (backward) {
      st(r.spg + j, g);
      V dy = ld<V>(r.dout + j);
      if (c.z) {
        const V zv = ld<V>(r.z + j);
        dy = dy * (zv * vsigmoid(zv));
      }
      st(r.dy + j, dy);
    }
  }
}

// y = (sum_n C h + D u) silu(z) for one (m, b, d) chunk, from the per-step vectors in acc_y.
template <typename T>
static void finish_rows_fwd(const Ctx<T>& c, Rows<T>& r, int64_t m, int64_t b, int64_t d,
                            int64_t t0, int64_t Tc) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t Tn = c.T_, Tv = rows_used(Tc);
  reduce_rows_n(r.acc_y, Tc, r.ys);  // rows Tc..Tv of ys are left unset: never written out
  const T Dm = c.Dskip ? c.Dskip[m * c.D + d] : T(0);
  T* out = c.y + c.row(m, b, d) + t0;
  T* dst = Tc == Tn ? out : r.ys;
  for (int64_t j = 0; j < Tv; j += W) {
    V yv = ld<V>(r.ys + j) + Dm * ld<V>(r.u + j);
    if (c.z) yv = yv * vsilu(ld<V>(r.z + j));
    st(dst + j, yv);
  }
  if (Tc != Tn)
    for (int64_t j = 0; j < Tc; ++j) out[j] = r.ys[j];
}

// Short sequences (L <= T: one chunk per row). The rows of consecutive channels of one (m, b) are
// contiguous in u, delta, z, y, so the pointwise work of a block of channels runs over one flat
// array of (d1 - d0) L elements: a 50-step row costs 50 elements of softplus and sigmoid rather
// than a padded 64, and no row is copied, padded or handled by a call of its own. The main loop
// reads dt, dt u from these arrays; each row's y is written as soon as its sums over n are
// reduced (flat_finish_row).
template <typename T> struct Flat {
  T *dt, *dtu, *sz;  // dt, dt u, silu(z): (d1 - d0) L elements each (+ slack)
};
// Channels per flat block, and the elements of one flat array: kFlatElems plus a vector of slack
// (the last vector may pass the block's end).
constexpr int64_t kFlatElems = 4096;
constexpr int64_t kFlatArray = kFlatElems + kMaxLanes;
constexpr int kFlatArrays = 3;  // per modality
static inline int64_t flat_channels(int64_t L) { return L >= kFlatElems ? 1 : kFlatElems / L; }
// Whether the forward takes the flat passes: rank-one and diagonal kernels, one chunk per row.
static inline bool uses_flat(const ScanArgs& a) {
  return a.mode != coupled_scan::kGeneral && a.nchunks == 1;
}

template <typename T> static inline Flat<T> flat_at(T* base, int64_t mi) {
  T* p = base + mi * kFlatArrays * kFlatArray;
  return Flat<T>{p, p + kFlatArray, p + 2 * kFlatArray};
}

// A full vector at p, or the k < W elements left there (the rest zero).
template <typename V, typename T> static inline V ld_or_n(const T* p, int64_t k) {
  return k >= VT<T>::W ? ld<V>(p) : ld_n<V>(p, k);
}

// dt = softplus(delta + bias), dt u and silu(z) of channels [d0, d1) of (m, b).
template <typename T>
static void flat_prep(const Ctx<T>& c, int64_t m, int64_t b, int64_t d0, int64_t d1,
                      const Flat<T>& f) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t L = c.L, n = (d1 - d0) * L, off = c.row(m, b, d0);
  const T* x = c.delta + off;
  const T* bias = c.bias ? c.bias + m * c.D + d0 : nullptr;  // per channel
  if (bias && L < W) {  // several rows per vector: add the bias row by row, into f.dt
    for (int64_t d = 0; d < d1 - d0; ++d)
      for (int64_t j = 0; j < L; ++j) f.dt[d * L + j] = x[d * L + j] + bias[d];
    x = f.dt;  // then softplus in place
    bias = nullptr;
  }
  V lane;
  for (int j = 0; j < W; ++j) lane[j] = T(j);
  // With L >= W a vector spans at most two rows: dr (the row of element i) and the next one.
  int64_t dr = 0, row_end = L;
  for (int64_t i = 0; i < n; i += W) {
    const int64_t k = n - i;
    V dt = ld_or_n<V>(x + i, k);
    if (bias) {
      if (i >= row_end) {
        ++dr;
        row_end += L;
      }
      const T b0 = bias[dr], b1 = d0 + dr + 1 < d1 ? bias[dr + 1] : b0;
      dt += lane < T(row_end - i) ? bc<V>(b0) : bc<V>(b1);
    }
    if (c.a.softplus) dt = vsoftplus(dt, (V*)nullptr);
    st(f.dt + i, dt);
    st(f.dtu + i, dt * ld_or_n<V>(c.u + off + i, k));
    if (c.z) {
      const V zv = ld_or_n<V>(c.z + off + i, k);
      st(f.sz + i, vsilu(zv));
    }
  }
}

// y = (ys + D u) silu(z) for the row of channel d of (m, b), from its sums over n (ys, just
// reduced and still in L1: a separate pass over the whole flat block afterwards cost about 5% of
// an N = 16, L = 50 call) and its silu(z) in the flat array (sz).
template <typename T>
static inline void flat_finish_row(const Ctx<T>& c, int64_t m, int64_t b, int64_t d,
                                   const T* ys, const T* sz) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t L = c.L, off = c.row(m, b, d);
  const T Dm = c.Dskip ? c.Dskip[m * c.D + d] : T(0);
  const T* u = c.u + off;
  T* y = c.y + off;
  // ys has room for T >= rows_used(L) elements (those past L unset, their lanes never stored)
  // and sz a vector of slack: full loads stay inside both.
  for (int64_t j = 0; j < L; j += W) {
    const int64_t k = L - j;
    V yv = ld<V>(ys + j) + Dm * ld_or_n<V>(u + j, k);
    if (c.z) yv = yv * ld<V>(sz + j);
    if (k >= W) st(y + j, yv);
    else st_n(y + j, yv, k);
  }
}

// Backward of the pointwise parts for one (m, b, d) chunk, given from the reverse pass (as
// per-step vectors) s1[t] = sum_n dh B, s2[t] = sum_n dh g Abar A2 (g: the coupled previous state)
// and ys[t] = sum_n C h. Writes du, ddelta, dz; adds the chunk's parts of dD and dbias.
template <typename T>
static void finish_rows_bwd(const Ctx<T>& c, Rows<T>& r, int64_t m, int64_t b, int64_t d,
                            int64_t t0, int64_t Tc, T* dD_acc, T* dbias_acc) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t Tn = c.T_, Tv = rows_used(Tc);
  reduce_rows_n(r.acc_1, Tc, r.s1);
  reduce_rows_n(r.acc_2, Tc, r.s2);
  if (c.z) reduce_rows_n(r.acc_y, Tc, r.ys);
  for (int64_t j = Tc; j < Tv; ++j) r.s1[j] = r.s2[j] = r.ys[j] = T(0);  // unused tail rows
  const T Dm = c.Dskip ? c.Dskip[m * c.D + d] : T(0);
  const T ln2 = T(0.6931471805599453094);  // s2 was summed against A2 = A log2(e)
  const bool full = Tc == Tn;
  const int64_t off = c.row(m, b, d) + t0;
  T* du = full ? c.du + off : r.pad_u;
  T* dd = full ? c.ddelta + off : r.dt;
  T* dz = full && c.z ? c.dz + off : r.pad_dl;
  V accD = bc<V>(T(0)), accb = bc<V>(T(0));
  for (int64_t j = 0; j < Tv; j += W) {
    const V dy = ld<V>(r.dy + j), uv = ld<V>(r.u + j), s1 = ld<V>(r.s1 + j);
    const V s2 = ld<V>(r.s2 + j) * ln2;
    if (c.z) {
      const V zv = ld<V>(r.z + j);
      const V sg = vsigmoid(zv);
      const V ypre = ld<V>(r.ys + j) + Dm * uv;
      // d silu(z) / dz = sigmoid(z) (1 + z (1 - sigmoid(z)))
      st(dz + j, ld<V>(r.dout + j) * ypre * (sg * (T(1) + zv * (T(1) - sg))));
    }
    accD += dy * uv;
    const V dtv = ld<V>(r.dt + j);
    V ddt = s2 + uv * s1;
    if (c.a.softplus) ddt = ddt * ld<V>(r.spg + j);
    accb += ddt;
    st(du + j, dy * Dm + dtv * s1);
    st(dd + j, ddt);
  }
  if (!full) {
    for (int64_t j = 0; j < Tc; ++j) {
      c.du[off + j] = du[j];
      c.ddelta[off + j] = dd[j];
    }
    if (c.z)
      for (int64_t j = 0; j < Tc; ++j) c.dz[off + j] = dz[j];
  }
  *dD_acc += hsum(accD);
  *dbias_acc += hsum(accb);
}

// ---------------------------------------------------------------------------------------------
// Scratch per task (elements): carry (channels x S), rows, then the mode-specific buffers.
static int64_t round_up(int64_t x, int64_t k) { return (x + k - 1) / k * k; }

// Elements of one packed B/C block of the rank-one kernels (see pack_bc): a time block holds at
// most 512 KiB of B, C, dB, dC (chunks_per_block), so 256 KiB of packed B and C, or one chunk.
static int64_t packed_block_elems(const ScanArgs& a) {
  const int64_t one_chunk = a.T * a.Np * 2 * a.M;
  return one_chunk > 65536 ? one_chunk : 65536;
}

static int64_t scratch_layout(const ScanArgs& a, bool backward, int64_t* rows_off,
                              int64_t* buf_off) {
  const int64_t S = a.mode == coupled_scan::kRank1 ? a.Np : a.M * a.Np;
  int64_t off = round_up(a.D * S, 16);
  *rows_off = off;
  off += round_up(a.M * kRowsPerM * a.T, 16);
  *buf_off = off;
  // forward: G, h staging and packed A (M Np each), packed B/C block, flat arrays of a short
  // sequence (rank-one and diagonal kernels: kFlatArrays per modality);
  // backward: states (T + 1) x S, Abar T x M x Np, dlast staging, packed A and dA (M Np each),
  // dW accumulators (M M lanes), packed B/C and dB/dC blocks.
  const int64_t buf = backward ? (a.T + 1) * S + a.T * a.M * a.Np + 4 * a.M * a.Np +
                                     a.M * a.M * kMaxLanes + 2 * packed_block_elems(a)
                               : 3 * a.M * a.Np + packed_block_elems(a) +
                                     (uses_flat(a) ? kFlatArrays * a.M * kFlatArray : 0);
  return off + round_up(buf, 16);
}

static int64_t scratch_elems(const ScanArgs& a, bool backward) {
  int64_t r, b;
  return scratch_layout(a, backward, &r, &b);
}

// ---------------------------------------------------------------------------------------------
// Packed operands of the rank-one kernels. Inside the unrolled modality loop, separate pointers to
// A, B, C of each modality would need more registers than x86-64 has (GCC then moves them through
// vector registers, on the FMA ports). So a time block of B and C is copied once per batch row
// into [step][n-vector][B | C][modality][lane], and A once per channel into
// [n-vector][modality][lane]: one pointer each, with constant offsets per modality. The copies
// are amortised over all channels (B, C) or all steps (A).
template <typename T, int MG>
static void pack_bc(const Ctx<T>& c, int64_t b, int64_t m0, int64_t tb0, int64_t tb1, T* dst) {
  const int W = VT<T>::W;
  const int64_t N = c.N, L = c.L, nv = c.Np / W, SW = nv * 2 * MG * W;
  // B, C arrive as the caller's (M, Bt, N, L): element n of step t is at n L + t.
  // Steps outer, n inner: the N cache lines a step reads serve the next steps too.
  for (int64_t t = tb0; t < tb1; ++t)
    for (int mi = 0; mi < MG; ++mi) {
      const int64_t row = ((m0 + mi) * c.Bt + b) * N * L + t;
      const T *Bs = c.Bm + row, *Cs = c.Cm + row;
      T* q = dst + (t - tb0) * SW + mi * W;
      for (int64_t v = 0; v < nv; ++v)
        for (int k = 0; k < W; ++k) {
          const int64_t n = v * W + k;
          q[v * 2 * MG * W + k] = n < N ? Bs[n * L] : T(0);
          q[(v * 2 + 1) * MG * W + k] = n < N ? Cs[n * L] : T(0);
        }
    }
}

// The reverse of pack_bc for the gradients: dB, dC of the block += the packed accumulators.
template <typename T, int MG>
static void unpack_add_bc(const Ctx<T>& c, const TaskRange& r, int64_t b, int64_t m0,
                          int64_t tb0, int64_t tb1, const T* src) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t nv = c.Np / W, SW = nv * 2 * MG * W;
  for (int64_t t = tb0; t < tb1; ++t)
    for (int mi = 0; mi < MG; ++mi) {
      T* dBs = c.dB + c.dbc_off(r, m0 + mi, b, t);
      T* dCs = c.dC + c.dbc_off(r, m0 + mi, b, t);
      const T* q = src + (t - tb0) * SW + mi * W;
      for (int64_t v = 0; v < nv; ++v) {
        add_to(dBs + v * W, ld<V>(q + v * 2 * MG * W));
        add_to(dCs + v * W, ld<V>(q + (v * 2 + 1) * MG * W));
      }
    }
}

// A arrives as the caller's (M, D, N); packed as A log2(e), zero-padded to Np (the
// same product the host forms for the general kernel).
template <typename T, int MG>
static inline void pack_a(const Ctx<T>& c, int64_t m0, int64_t d, T* dst) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const T log2e = T(kLog2e);
  for (int mi = 0; mi < MG; ++mi) {
    const T* Am = c.A2 + ((m0 + mi) * c.D + d) * c.N;
    for (int64_t v = 0; v < c.Np / W; ++v) {
      T* q = dst + (v * MG + mi) * W;
      if ((v + 1) * W <= c.N) {
        st(q, ld<V>(Am + v * W) * log2e);
      } else {  // the partial last vector: zero-pad
        for (int k = 0; k < W; ++k) q[k] = v * W + k < c.N ? Am[v * W + k] * log2e : T(0);
      }
    }
  }
}

// Element (modality mi, state n) of a packed per-modality state [n-vector][modality][lane].
template <typename T, int MG> static inline int64_t pk(int64_t mi, int64_t n) {
  const int W = VT<T>::W;
  return ((n / W) * MG + mi) * W + n % W;
}

// The steps of one chunk when the state is a single vector (N <= W, e.g. N = 16 in float with
// AVX-512). With one vector per step there is no independent work across n to hide latency, so
// the state stays in registers for the whole chunk instead of a store and reload on the
// step-to-step chain. Rank one: h[m] = Abar_m (w S) + bbar_m (w = wM for MG > 1, else 1),
// S' = sum_m h[m]; the factor w goes into the exponent, Abar_m w = 2^(dt A2 + log2 w) (lw), so
// the multiply by w is an FMA that is already there and leaves the step-to-step chain (which is
// then h = a S + bbar and the sum over m). (Moving the sums off the chain,
// S' = (w sum_m Abar_m) S + sum_m bbar_m, was tried: no faster, since the loop is then bound by
// vector-op throughput.) "none" keeps one state per modality, MG independent chains. jl: the step
// of this chunk that is the sequence's last (its G = w S goes to Glast for the last state),
// negative or >= Tc if none.
template <typename T, int MG, bool COUPLED>
static inline void fwd_steps_one_vector(Rows<T>* rw, const T* Ap, const T* q0, int64_t SW,
                                        T* Sd, T* Glast, T wM, T lw, int64_t Tc, int64_t jl) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  constexpr int NS = COUPLED ? 1 : MG;
  const V lwv = bc<V>((COUPLED && MG > 1) ? lw : T(0));
  V S[NS], Am[MG];
  for (int i = 0; i < NS; ++i) S[i] = ld<V>(Sd + i * W);
  for (int mi = 0; mi < MG; ++mi) Am[mi] = ld<V>(Ap + mi * W);
  for (int64_t j = 0; j < Tc; ++j) {
    const T* q = q0 + j * SW;  // B of modality mi at q + mi W, C at q + (MG + mi) W
    if (COUPLED) {
      if (MG > 1 && j == jl) st(Glast, wM * S[0]);
      V Sn = bc<V>(T(0));
      for (int mi = 0; mi < MG; ++mi) {
        const V a = vexp2(bcl<V>(rw[mi].dt + j) * Am[mi] + lwv);  // Abar w
        const V h = a * S[0] + bcl<V>(rw[mi].dtu + j) * ld<V>(q + mi * W);
        st(rw[mi].acc_y + j * W, ld<V>(q + (MG + mi) * W) * h);
        Sn = mi == 0 ? h : Sn + h;
      }
      S[0] = Sn;
    } else {
      for (int mi = 0; mi < MG; ++mi) {
        const V a = vexp2(bcl<V>(rw[mi].dt + j) * Am[mi]);
        S[mi] = a * S[mi] + bcl<V>(rw[mi].dtu + j) * ld<V>(q + mi * W);
        st(rw[mi].acc_y + j * W, ld<V>(q + (MG + mi) * W) * S[mi]);
      }
    }
  }
  for (int i = 0; i < NS; ++i) st(Sd + i * W, S[i]);
}

// Forward of the rank-one and diagonal couplings, MG modalities [m0, m0 + MG) in one loop.
//   COUPLED (rank one): carries S = sum_m h[m]; h[t][m] = Abar[t][m] G + bbar[t][m] with
//     G = (w / MG) S[t-1] (the single recurrence of docs/MATH.md section 2).
//   !COUPLED ("none"): carries each h[m] (packed [n-vector][modality][lane]); G = h[t-1][m].
// The modality loop is innermost, so the states and the y accumulators stay in registers.
template <typename T, int MG, bool COUPLED>
static void fwd_rank1(const Ctx<T>& c, const TaskRange& r, int64_t b, int64_t m0, T wM,
                      T* carry, int64_t cstride, int64_t soff, T* rows, T* buf) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t Np = c.Np, N = c.N, Tn = c.T_, L = c.L, nv = Np / W, SW = nv * 2 * MG * W;
  const int64_t SS = COUPLED ? Np : MG * Np;  // carried state per unit
  const T lw = T(__builtin_log2(double(wM)));  // for fwd_steps_one_vector (wM > 0 in rank one)
  for (int64_t d = r.d0; d < r.d1; ++d) {
    T* Sd = carry + (d - r.d0) * cstride;
    for (int64_t n = 0; n < SS; ++n) Sd[n] = T(0);
    if (c.init)
      for (int mi = 0; mi < MG; ++mi) {
        const T* h0 = c.init + c.st_off(m0 + mi, b, d);
        for (int64_t n = 0; n < N; ++n) Sd[COUPLED ? n : pk<T, MG>(mi, n)] += h0[n];
      }
  }
  T* Glast = buf;              // G of step L-1, for the last state
  T* hl = Glast + c.M * Np;    // last-state staging
  T* Ap = hl + c.M * Np;       // packed A of the channel
  T* pbc = Ap + c.M * Np;      // packed B, C of the time block
  Rows<T> rw[MG];
  Flat<T> fl[MG];
  for (int mi = 0; mi < MG; ++mi) {
    rw[mi] = rows_at(rows, mi, Tn);
    fl[mi] = flat_at(pbc + packed_block_elems(c.a), mi);
  }
  // One chunk per row (L <= T): the pointwise passes run over blocks of fc channels (flat_prep).
  const bool flat = uses_flat(c.a);
  const int64_t fc = flat_channels(L);
  int64_t fd0 = r.d0, fd1 = r.d0;  // the current flat block
  const int64_t CB = chunks_per_block(c, MG);
  for (int64_t cb0 = 0; cb0 < c.a.nchunks; cb0 += CB) {
    const int64_t cb1 = imin(cb0 + CB, c.a.nchunks), tb0 = cb0 * Tn, tb1 = imin(cb1 * Tn, L);
    pack_bc<T, MG>(c, b, m0, tb0, tb1, pbc);
    for (int64_t d = r.d0; d < r.d1; ++d) {
      T* Sd = carry + (d - r.d0) * cstride;
      pack_a<T, MG>(c, m0, d, Ap);
      if (flat && d == fd1) {
        fd0 = d;
        fd1 = imin(d + fc, r.d1);
        for (int mi = 0; mi < MG; ++mi) flat_prep(c, m0 + mi, b, fd0, fd1, fl[mi]);
      }
      for (int64_t ch = cb0; ch < cb1; ++ch) {
        const int64_t t0 = ch * Tn, Tc = (L - t0 < Tn) ? L - t0 : Tn;
        if (c.saved) {
          T* sv = c.saved_at(b, d, ch) + soff;
          for (int64_t n = 0; n < SS; ++n) sv[n] = Sd[n];
        }
        for (int mi = 0; mi < MG; ++mi) {
          if (flat) {
            rw[mi].dt = fl[mi].dt + (d - fd0) * L;
            rw[mi].dtu = fl[mi].dtu + (d - fd0) * L;
            continue;
          }
          prefetch_next(c, r, m0 + mi, b, d, ch, cb0, cb1, false);
          prep_rows(c, rw[mi], m0 + mi, b, d, t0, Tc, false);
        }
        if (nv == 1) {
          fwd_steps_one_vector<T, MG, COUPLED>(rw, Ap, pbc + (t0 - tb0) * SW, SW, Sd, Glast,
                                               wM, lw, Tc, L - 1 - t0);
        } else
        for (int64_t j = 0; j < Tc; ++j) {
          const int64_t t = t0 + j;
          if (COUPLED && MG > 1 && t == L - 1)
            for (int64_t v = 0; v < Np; v += W) st(Glast + v, wM * ld<V>(Sd + v));
          V dtm[MG], dtum[MG], acc[MG];
          for (int mi = 0; mi < MG; ++mi) {
            dtm[mi] = bcl<V>(rw[mi].dt + j);
            dtum[mi] = bcl<V>(rw[mi].dtu + j);
            acc[mi] = bc<V>(T(0));
          }
          const T* q = pbc + (t - tb0) * SW;
          for (int64_t v = 0; v < nv; ++v) {
            const T *qv = q + v * 2 * MG * W, *av = Ap + v * MG * W;
            T* sv = Sd + (COUPLED ? v : v * MG) * W;
            V G = ld<V>(sv);
            if (COUPLED && MG > 1) G = wM * G;
            V Sn = bc<V>(T(0));
            for (int mi = 0; mi < MG; ++mi) {
              const V a = vexp2(dtm[mi] * ld<V>(av + mi * W));
              const V Gm = COUPLED ? G : ld<V>(sv + mi * W);
              const V h = a * Gm + dtum[mi] * ld<V>(qv + mi * W);
              acc[mi] += ld<V>(qv + (MG + mi) * W) * h;
              if (COUPLED) Sn = mi == 0 ? h : Sn + h;
              else st(sv + mi * W, h);
            }
            if (COUPLED) st(sv, Sn);
          }
          for (int mi = 0; mi < MG; ++mi) st(rw[mi].acc_y + j * W, acc[mi]);
        }
        for (int mi = 0; mi < MG; ++mi) {
          if (flat) {
            reduce_rows_n(rw[mi].acc_y, Tc, rw[mi].ys);
            flat_finish_row(c, m0 + mi, b, d, rw[mi].ys, fl[mi].sz + (d - fd0) * L);
          } else {
            finish_rows_fwd(c, rw[mi], m0 + mi, b, d, t0, Tc);
          }
        }
        if (t0 + Tc == L && c.last) {
          // Last state per modality (when asked for): the carry itself (diagonal, or one
          // modality), else h[L-1][m] = Abar G + bbar from G of the last step (one step of exps).
          for (int mi = 0; mi < MG; ++mi) {
            T* out = c.last + c.st_off(m0 + mi, b, d);
            if (!COUPLED || MG == 1) {
              for (int64_t n = 0; n < N; ++n) out[n] = Sd[pk<T, MG>(mi, n)];
              continue;
            }
            const V dtm = bcl<V>(rw[mi].dt + Tc - 1), dtum = bcl<V>(rw[mi].dtu + Tc - 1);
            const T* q = pbc + (L - 1 - tb0) * SW;
            for (int64_t v = 0; v < nv; ++v) {
              const V a = vexp2(dtm * ld<V>(Ap + (v * MG + mi) * W));
              st(hl + v * W, a * ld<V>(Glast + v * W) + dtum * ld<V>(q + (v * 2 * MG + mi) * W));
            }
            for (int64_t n = 0; n < N; ++n) out[n] = hl[n];
          }
        }
      }
    }
  }
}

// Forward, general W: carry the M states, h[t][m] = Abar[t][m] sum_k W[m, k] h[t-1][k] + bbar.
template <typename T>
static void fwd_general(const Ctx<T>& c, const TaskRange& r, int64_t b, T* carry, T* rows,
                        T* buf) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t M = c.M, Np = c.Np, N = c.N, Tn = c.T_, L = c.L, S = c.S;
  for (int64_t d = r.d0; d < r.d1; ++d) {
    T* hs = carry + (d - r.d0) * S;
    for (int64_t i = 0; i < S; ++i) hs[i] = T(0);
    if (c.init)
      for (int64_t m = 0; m < M; ++m) {
        const T* h0 = c.init + c.st_off(m, b, d);
        for (int64_t n = 0; n < N; ++n) hs[m * Np + n] = h0[n];
      }
  }
  T* hn = buf;
  const int64_t CB = chunks_per_block(c, M);
  for (int64_t cb0 = 0; cb0 < c.a.nchunks; cb0 += CB)
  for (int64_t d = r.d0; d < r.d1; ++d)
  for (int64_t ch = cb0, cb1 = imin(cb0 + CB, c.a.nchunks); ch < cb1; ++ch) {
    const int64_t t0 = ch * Tn, Tc = (L - t0 < Tn) ? L - t0 : Tn;
    {
      T* hs = carry + (d - r.d0) * S;
      if (c.saved) {
        T* sv = c.saved_at(b, d, ch);
        for (int64_t i = 0; i < S; ++i) sv[i] = hs[i];
      }
      for (int64_t m = 0; m < M; ++m) {
        Rows<T> rw = rows_at(rows, m, Tn);
        prefetch_next(c, r, m, b, d, ch, cb0, cb1, false);
        prep_rows(c, rw, m, b, d, t0, Tc, false);
      }
      for (int64_t j = 0; j < Tc; ++j) {
        const int64_t t = t0 + j;
        for (int64_t m = 0; m < M; ++m) {
          Rows<T> rw = rows_at(rows, m, Tn);
          const T dtm = rw.dt[j], dtum = rw.dtu[j];
          const T *Am = c.Arow(m, d), *Bj = c.Brow(m, b, t), *Cj = c.Crow(m, b, t);
          const T* Wm = c.W + m * M;
          V acc = bc<V>(T(0));
          for (int64_t v = 0; v < Np; v += W) {
            V g = bc<V>(T(0));
            for (int64_t k = 0; k < M; ++k) g += Wm[k] * ld<V>(hs + k * Np + v);
            const V h = vexp2(dtm * ld<V>(Am + v)) * g + dtum * ld<V>(Bj + v);
            st(hn + m * Np + v, h);
            acc += ld<V>(Cj + v) * h;
          }
          st(rw.acc_y + j * W, acc);
        }
        for (int64_t i = 0; i < S; ++i) hs[i] = hn[i];
      }
      for (int64_t m = 0; m < M; ++m) {
        Rows<T> rw = rows_at(rows, m, Tn);
        bind_rows(c, rw, m, b, d, t0, Tc, false);
        finish_rows_fwd(c, rw, m, b, d, t0, Tc);
      }
      if (t0 + Tc == L && c.last)
        for (int64_t m = 0; m < M; ++m) {
          T* out = c.last + c.st_off(m, b, d);
          for (int64_t n = 0; n < N; ++n) out[n] = hs[m * Np + n];
        }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, rank one. Reverse recurrence, with dS[t] the gradient w.r.t. S[t] = sum_m h[t][m]
// from later steps:
//   dh[t][m] = dS[t] + dy[t][m] C[t][m] (+ dlast[m] at t = L-1)
//   dS[t-1]  = (w / MG) sum_m dh[t][m] Abar[t][m]
//   dAbar    = dh G (G = (w / MG) S[t-1]);  dbbar = dh
// then the chain rule through Abar = 2^(dt A2), bbar = dt B u.
template <typename T, int MG, bool COUPLED, bool WITH_DLAST>
static inline void bwd_rank1_step(const Ctx<T>& c, T wM, int64_t j, Rows<T>* rw, const T* q,
                                  T* dq, const T* Ap, T* dAp, const T* Sp, const T* Ab, T* dS,
                                  const T* dl) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t nv = c.Np / W;
  V dym[MG], dtm[MG], dtum[MG], s1[MG], s2[MG], ya[MG];
  for (int mi = 0; mi < MG; ++mi) {
    dym[mi] = bcl<V>(rw[mi].dy + j);
    dtm[mi] = bcl<V>(rw[mi].dt + j);
    dtum[mi] = bcl<V>(rw[mi].dtu + j);
    s1[mi] = s2[mi] = ya[mi] = bc<V>(T(0));
  }
  for (int64_t v = 0; v < nv; ++v) {
    const T *qv = q + v * 2 * MG * W, *av = Ap + v * MG * W, *abv = Ab + v * MG * W;
    T *dqv = dq + v * 2 * MG * W, *dav = dAp + v * MG * W;
    const T* spv = Sp + (COUPLED ? v : v * MG) * W;
    T* dsv = dS + (COUPLED ? v : v * MG) * W;
    V G = ld<V>(spv);
    if (COUPLED && MG > 1) G = wM * G;
    const V dSv = ld<V>(dsv);
    V dGa = bc<V>(T(0));
    for (int mi = 0; mi < MG; ++mi) {
      const V a = ld<V>(abv + mi * W);
      const V Bv = ld<V>(qv + mi * W), Cv = ld<V>(qv + (MG + mi) * W);
      const V Gm = COUPLED ? G : ld<V>(spv + mi * W);
      V dh = (COUPLED ? dSv : ld<V>(dsv + mi * W)) + dym[mi] * Cv;
      if (WITH_DLAST) dh += ld<V>(dl + mi * c.Np + v * W);
      const V h = a * Gm + dtum[mi] * Bv;
      add_to(dqv + (MG + mi) * W, dym[mi] * h);  // dC
      ya[mi] += Cv * h;
      add_to(dqv + mi * W, dh * dtum[mi]);  // dB
      s1[mi] += dh * Bv;
      const V dha = dh * a;
      const V da = dha * Gm;  // d loss / d(dt A) = dAbar Abar
      add_to(dav + mi * W, da * dtm[mi]);
      s2[mi] += da * ld<V>(av + mi * W);
      if (COUPLED) dGa += dha;
      else st(dsv + mi * W, dha);  // the gradient reaching h[t-1][m]
    }
    if (COUPLED) st(dsv, MG > 1 ? wM * dGa : dGa);
  }
  for (int mi = 0; mi < MG; ++mi) {
    st(rw[mi].acc_1 + j * W, s1[mi]);
    st(rw[mi].acc_2 + j * W, s2[mi]);
    st(rw[mi].acc_y + j * W, ya[mi]);
  }
}

template <typename T, int MG, bool COUPLED>
static void bwd_rank1(const Ctx<T>& c, const TaskRange& r, int64_t b, int64_t m0, T wM,
                      T* carry, int64_t cstride, int64_t soff, T* rows, T* buf) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t Np = c.Np, N = c.N, Tn = c.T_, L = c.L, nv = Np / W, SW = nv * 2 * MG * W;
  const int64_t SS = COUPLED ? Np : MG * Np;  // carried state per unit (as in the forward)
  T* Sbuf = buf;                        // (T + 1) x SS: states at t0 - 1 .. t0 + Tc - 1
  T* Abuf = Sbuf + (Tn + 1) * c.S;      // T x [n-vector][modality][lane]: Abar
  T* dl = Abuf + Tn * c.M * Np;         // MG x Np: dlast, padded
  T* Ap = dl + c.M * Np;                // packed A and dA of the channel
  T* dAp = Ap + c.M * Np;
  T* pbc = dAp + 2 * c.M * Np + c.M * c.M * kMaxLanes;  // packed B, C and dB, dC of the block
  T* pdbc = pbc + packed_block_elems(c.a);
  Rows<T> rw[MG];
  for (int mi = 0; mi < MG; ++mi) rw[mi] = rows_at(rows, mi, Tn);
  for (int64_t d = r.d0; d < r.d1; ++d) {
    T* dS = carry + (d - r.d0) * cstride;
    for (int64_t n = 0; n < SS; ++n) dS[n] = T(0);
  }
  const int64_t CB = chunks_per_block(c, MG);
  for (int64_t cb1 = c.a.nchunks; cb1 > 0; cb1 -= CB) {
    const int64_t cb0 = imax(cb1 - CB, int64_t(0)), tb0 = cb0 * Tn, tb1 = imin(cb1 * Tn, L);
    pack_bc<T, MG>(c, b, m0, tb0, tb1, pbc);
    for (int64_t i = 0; i < (tb1 - tb0) * SW; ++i) pdbc[i] = T(0);
    for (int64_t d = r.d0; d < r.d1; ++d) {
      T* dS = carry + (d - r.d0) * cstride;
      pack_a<T, MG>(c, m0, d, Ap);
      for (int64_t i = 0; i < MG * Np; ++i) dAp[i] = T(0);
      for (int64_t ch = cb1 - 1; ch >= cb0; --ch) {
        const int64_t t0 = ch * Tn, Tc = (L - t0 < Tn) ? L - t0 : Tn;
        for (int mi = 0; mi < MG; ++mi) {
          prefetch_next(c, r, m0 + mi, b, d, ch, cb0, cb1, true);
          prep_rows(c, rw[mi], m0 + mi, b, d, t0, Tc, true);
        }
        // Recompute S over the chunk (and keep Abar) from the state saved at its start.
        const T* sv = c.saved_at(b, d, ch) + soff;
        for (int64_t n = 0; n < SS; ++n) Sbuf[n] = sv[n];
        for (int64_t j = 0; j < Tc; ++j) {
          const T* Sp = Sbuf + j * SS;
          T* Sn = Sbuf + (j + 1) * SS;
          T* Ab = Abuf + j * MG * Np;
          const T* q = pbc + (t0 + j - tb0) * SW;
          V dtm[MG], dtum[MG];
          for (int mi = 0; mi < MG; ++mi) {
            dtm[mi] = bcl<V>(rw[mi].dt + j);
            dtum[mi] = bcl<V>(rw[mi].dtu + j);
          }
          for (int64_t v = 0; v < nv; ++v) {
            const int64_t o = (COUPLED ? v : v * MG) * W;
            V G = ld<V>(Sp + o);
            if (COUPLED && MG > 1) G = wM * G;
            V s = bc<V>(T(0));
            for (int mi = 0; mi < MG; ++mi) {
              const V a = vexp2(dtm[mi] * ld<V>(Ap + (v * MG + mi) * W));
              st(Ab + (v * MG + mi) * W, a);
              const V Gm = COUPLED ? G : ld<V>(Sp + o + mi * W);
              const V h = a * Gm + dtum[mi] * ld<V>(q + (v * 2 * MG + mi) * W);
              if (COUPLED) s = mi == 0 ? h : s + h;
              else st(Sn + o + mi * W, h);
            }
            if (COUPLED) st(Sn + o, s);
          }
        }
        // Reverse over the chunk.
        for (int64_t j = Tc - 1; j >= 0; --j) {
          const int64_t t = t0 + j;
          const T* q = pbc + (t - tb0) * SW;
          T* dq = pdbc + (t - tb0) * SW;
          const T *Sp = Sbuf + j * SS, *Ab = Abuf + j * MG * Np;
          if (t == L - 1 && c.dlast) {
            for (int mi = 0; mi < MG; ++mi) {
              const T* src = c.dlast + c.st_off(m0 + mi, b, d);
              for (int64_t n = 0; n < Np; ++n) dl[mi * Np + n] = n < N ? src[n] : T(0);
            }
            bwd_rank1_step<T, MG, COUPLED, true>(c, wM, j, rw, q, dq, Ap, dAp, Sp, Ab, dS, dl);
          } else {
            bwd_rank1_step<T, MG, COUPLED, false>(c, wM, j, rw, q, dq, Ap, dAp, Sp, Ab, dS, dl);
          }
        }
        for (int mi = 0; mi < MG; ++mi) {
          const int64_t m = m0 + mi;
          finish_rows_bwd(c, rw[mi], m, b, d, t0, Tc, c.dD + c.md(r, m, d),
                          c.dbias + c.md(r, m, d));
        }
      }
      for (int mi = 0; mi < MG; ++mi) {
        T* dAm = c.dArow(r, m0 + mi, d);
        for (int64_t v = 0; v < nv; ++v) add_to(dAm + v * W, ld<V>(dAp + (v * MG + mi) * W));
      }
    }
    unpack_add_bc<T, MG>(c, r, b, m0, tb0, tb1, pdbc);
  }
  // Rank one: S[-1] = sum_m h0[m], so every h0[m] receives dS[-1]; diagonal: its own.
  if (c.dinit)
    for (int64_t d = r.d0; d < r.d1; ++d) {
      const T* dS = carry + (d - r.d0) * cstride;
      for (int mi = 0; mi < MG; ++mi) {
        T* out = c.dinit + c.st_off(m0 + mi, b, d);
        for (int64_t n = 0; n < N; ++n) out[n] = dS[COUPLED ? n : pk<T, MG>(mi, n)];
      }
    }
}

// Backward, general W: carry dh[m] (gradient w.r.t. h[t][m] from later steps):
//   dh[t][m]   += dy[t][m] C[t][m];   dg[m] = dh[t][m] Abar[t][m]
//   dh[t-1][k]  = sum_m W[m, k] dg[m];  dW[m, k] += sum dg[m] h[t-1][k]
template <typename T>
static void bwd_general(const Ctx<T>& c, const TaskRange& r, int64_t b, T* carry, T* rows,
                        T* buf) {
  typedef typename VT<T>::V V;
  const int W = VT<T>::W;
  const int64_t M = c.M, Np = c.Np, N = c.N, Tn = c.T_, L = c.L, S = c.S;
  T* hbuf = buf;                        // (T + 1) x M x Np: h[t0 - 1 .. t0 + Tc - 1]
  T* Abuf = hbuf + (Tn + 1) * S;        // T x M x Np
  T* dn = Abuf + Tn * S;                // M x Np
  T* dWacc = dn + 2 * S;                // M x M x W
  for (int64_t d = r.d0; d < r.d1; ++d) {
    T* dh = carry + (d - r.d0) * S;
    for (int64_t i = 0; i < S; ++i) dh[i] = T(0);
    if (c.dlast)
      for (int64_t m = 0; m < M; ++m) {
        const T* src = c.dlast + c.st_off(m, b, d);
        for (int64_t n = 0; n < N; ++n) dh[m * Np + n] = src[n];
      }
  }
  for (int64_t i = 0; i < M * M * W; ++i) dWacc[i] = T(0);
  const int64_t CB = chunks_per_block(c, M);
  for (int64_t cb1 = c.a.nchunks; cb1 > 0; cb1 -= CB)
  for (int64_t d = r.d0; d < r.d1; ++d)
  for (int64_t cb0 = imax(cb1 - CB, int64_t(0)), ch = cb1 - 1; ch >= cb0; --ch) {
    const int64_t t0 = ch * Tn, Tc = (L - t0 < Tn) ? L - t0 : Tn;
    {
      T* dhc = carry + (d - r.d0) * S;
      for (int64_t m = 0; m < M; ++m) {
        Rows<T> rw = rows_at(rows, m, Tn);
        prefetch_next(c, r, m, b, d, ch, cb0, cb1, true);
        prep_rows(c, rw, m, b, d, t0, Tc, true);
      }
      const T* sv = c.saved_at(b, d, ch);
      for (int64_t i = 0; i < S; ++i) hbuf[i] = sv[i];
      for (int64_t j = 0; j < Tc; ++j) {
        const int64_t t = t0 + j;
        const T* hp = hbuf + j * S;
        T* hn = hbuf + (j + 1) * S;
        for (int64_t m = 0; m < M; ++m) {
          Rows<T> rw = rows_at(rows, m, Tn);
          const T dtm = rw.dt[j], dtum = rw.dtu[j];
          const T *Am = c.Arow(m, d), *Bj = c.Brow(m, b, t), *Wm = c.W + m * M;
          T* Ab = Abuf + (j * M + m) * Np;
          for (int64_t v = 0; v < Np; v += W) {
            V g = bc<V>(T(0));
            for (int64_t k = 0; k < M; ++k) g += Wm[k] * ld<V>(hp + k * Np + v);
            const V a = vexp2(dtm * ld<V>(Am + v));
            st(Ab + v, a);
            st(hn + m * Np + v, a * g + dtum * ld<V>(Bj + v));
          }
        }
      }
      for (int64_t j = Tc - 1; j >= 0; --j) {
        const int64_t t = t0 + j;
        const T* hp = hbuf + j * S;
        const T* hc = hbuf + (j + 1) * S;
        for (int64_t i = 0; i < S; ++i) dn[i] = T(0);
        for (int64_t m = 0; m < M; ++m) {
          Rows<T> rw = rows_at(rows, m, Tn);
          const T dym = rw.dy[j], dtm = rw.dt[j], dtum = rw.dtu[j];
          const T *Am = c.Arow(m, d), *Bj = c.Brow(m, b, t), *Cj = c.Crow(m, b, t);
          const T* Wm = c.W + m * M;
          const T* Ab = Abuf + (j * M + m) * Np;
          T* dAm = c.dArow(r, m, d);
          T* dBj = c.dB + c.dbc_off(r, m, b, t);
          T* dCj = c.dC + c.dbc_off(r, m, b, t);
          V s1 = bc<V>(T(0)), s2 = bc<V>(T(0)), ya = bc<V>(T(0));
          for (int64_t v = 0; v < Np; v += W) {
            V g = bc<V>(T(0));
            for (int64_t k = 0; k < M; ++k) g += Wm[k] * ld<V>(hp + k * Np + v);
            const V a = ld<V>(Ab + v), h = ld<V>(hc + m * Np + v);
            const V Bv = ld<V>(Bj + v), Cv = ld<V>(Cj + v);
            const V dh = ld<V>(dhc + m * Np + v) + dym * Cv;
            add_to(dCj + v, dym * h);
            ya += Cv * h;
            add_to(dBj + v, dh * dtum);
            s1 += dh * Bv;
            const V dg = dh * a;
            const V da = dg * g;
            add_to(dAm + v, da * dtm);
            s2 += da * ld<V>(Am + v);
            for (int64_t k = 0; k < M; ++k) {
              add_to(dn + k * Np + v, Wm[k] * dg);
              add_to(dWacc + (m * M + k) * W, dg * ld<V>(hp + k * Np + v));
            }
          }
          st(rw.acc_1 + j * W, s1);
          st(rw.acc_2 + j * W, s2);
          st(rw.acc_y + j * W, ya);
        }
        for (int64_t i = 0; i < S; ++i) dhc[i] = dn[i];
      }
      for (int64_t m = 0; m < M; ++m) {
        Rows<T> rw = rows_at(rows, m, Tn);
        bind_rows(c, rw, m, b, d, t0, Tc, true);
        finish_rows_bwd(c, rw, m, b, d, t0, Tc, c.dD + c.md(r, m, d), c.dbias + c.md(r, m, d));
      }
    }
  }
  if (c.dinit)
    for (int64_t d = r.d0; d < r.d1; ++d) {
      const T* dh = carry + (d - r.d0) * S;
      for (int64_t m = 0; m < M; ++m) {
        T* out = c.dinit + c.st_off(m, b, d);
        for (int64_t n = 0; n < N; ++n) out[n] = dh[m * Np + n];
      }
    }
  for (int64_t i = 0; i < M * M; ++i) c.dW[r.task * M * M + i] += hsum(ld<V>(dWacc + i * W));
}

// One task: every batch row of the task, in the mode's kernel (forward or backward).
template <typename T, int MG, bool COUPLED, bool BWD>
static inline void rank1(const Ctx<T>& c, const TaskRange& r, int64_t b, int64_t m0, T wM,
                         T* carry, int64_t cstride, int64_t soff, T* rows, T* buf) {
  if (BWD) bwd_rank1<T, MG, COUPLED>(c, r, b, m0, wM, carry, cstride, soff, rows, buf);
  else fwd_rank1<T, MG, COUPLED>(c, r, b, m0, wM, carry, cstride, soff, rows, buf);
}

// Flush-to-zero (x86 MXCSR.FTZ) while a task runs: a result below the smallest normal number
// (2^-126 in float) becomes 0 instead of a denormal. Denormal results cost a microcode assist,
// about 55 ns for one vscalefps on this project's Xeon against 1 ns (measured), and a decaying
// state or a very negative dt A produces them; they carry no information at that scale. Inputs
// are not touched (no DAZ). The caller's mode is restored when the task ends.
struct FlushToZero {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned saved;
  FlushToZero() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8000u); }
  ~FlushToZero() { _mm_setcsr(saved); }
#endif
};

template <typename T, bool BWD>
static void run_task(const ScanArgs& a, const TaskRange& r, void* scr) {
  FlushToZero ftz;  // restores the caller's mode on return
  Ctx<T> c(a);
  int64_t rows_off, buf_off;
  scratch_layout(a, BWD, &rows_off, &buf_off);
  T* base = (T*)scr;
  T *carry = base, *rows = base + rows_off, *buf = base + buf_off;
  const T wM = T(a.w / double(c.M));
  for (int64_t b = r.b0; b < r.b1; ++b) {
    if (a.mode == coupled_scan::kDiag) {
      // Packed per-modality states (c.S = M Np); M > 4: one modality at a time.
      switch (c.M) {
        case 1: rank1<T, 1, false, BWD>(c, r, b, 0, T(1), carry, c.S, 0, rows, buf); break;
        case 2: rank1<T, 2, false, BWD>(c, r, b, 0, T(1), carry, c.S, 0, rows, buf); break;
        case 3: rank1<T, 3, false, BWD>(c, r, b, 0, T(1), carry, c.S, 0, rows, buf); break;
        case 4: rank1<T, 4, false, BWD>(c, r, b, 0, T(1), carry, c.S, 0, rows, buf); break;
        default:
          for (int64_t m = 0; m < c.M; ++m)
            rank1<T, 1, false, BWD>(c, r, b, m, T(1), carry + m * c.Np, c.S, m * c.Np, rows,
                                    buf);
      }
    } else if (a.mode == coupled_scan::kRank1) {
      switch (c.M) {  // the host sends rank one with M > 4 as a general W
        case 1: rank1<T, 1, true, BWD>(c, r, b, 0, wM, carry, c.S, 0, rows, buf); break;
        case 2: rank1<T, 2, true, BWD>(c, r, b, 0, wM, carry, c.S, 0, rows, buf); break;
        case 3: rank1<T, 3, true, BWD>(c, r, b, 0, wM, carry, c.S, 0, rows, buf); break;
        default: rank1<T, 4, true, BWD>(c, r, b, 0, wM, carry, c.S, 0, rows, buf); break;
      }
    } else if (BWD) {
      bwd_general<T>(c, r, b, carry, rows, buf);
    } else {
      fwd_general<T>(c, r, b, carry, rows, buf);
    }
  }
}

const KernelTable table = {
    SCAN_ISA_NAME, SCAN_VBYTES, &scratch_elems,
    &run_task<float, false>, &run_task<double, false>, &run_task<float, true>,
    &run_task<double, true>,
};

}  // namespace SCAN_NS
