// CPU kernels: blocked over samples x neurons, parallel with at::parallel_for, the Taylor epilogue
// vectorized with at::vec. On AVX2 / AVX-512 and d up to fused_max_dim() both products of a
// register tile come from a fused dual-product kernel and never leave the registers (the "Fused"
// section below); otherwise ATen's BLAS computes them on cache-sized tiles.
//
// The net ops never hold an n x m tensor: each worker keeps a few tiles of NB x MB numbers. The
// dimension with enough blocks is split among workers, who own their rows of the result; the other
// is looped over inside, with per-worker partial sums only when the owned dimension is too short to
// keep every thread busy.
//
// This file is compiled once per CPU_CAPABILITY; everything in it lives in that inline namespace.
#include "cpu/taylor_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <limits>
#include <type_traits>

#include "taylornet/philox.h"
#include "taylornet/specialised.h"

namespace tn::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using at::Tensor;

// kUnroll SIMD vectors processed in lock-step: the epilogue's short dependency chains (Horner in v,
// the basis powers) then overlap, and the table lookups are shared by all of them.
constexpr int kUnroll = 4;

// Rows of a register tile per pass of a specialised epilogue. For a whole tile at once (kRows
// vectors in lock-step) its basis (up to 2 (K + 2) vectors per row) and the math's temporaries
// outgrew the vector registers: GCC kept most of them on the stack, and the transcendental
// functions, out of line, took the tile through memory as well. Two rows at a time stay in
// registers, the functions inline; the passes are independent and overlap in the out-of-order
// window.
constexpr int kEpilogueRows = 2;

template <typename T, int U = kUnroll>
struct Pack {
  using Vec = at::vec::Vectorized<T>;
  using value_type = T;
  // In a union so that default construction leaves the lanes uninitialized: Vectorized's own
  // default constructor zeroes them, which for the epilogue's basis arrays costs more than the math.
  union {
    Vec v[U];
  };

  static constexpr int kVectors = U;
  static constexpr int size() { return U * Vec::size(); }
  Pack() {}
  template <typename A, std::enable_if_t<std::is_arithmetic_v<A>, int> = 0>
  Pack(A x) {  // broadcast
    for (auto& e : v) e = Vec(static_cast<T>(x));
  }
  // The same vector in every slot (the fused kernels: one slot per sample row, lanes = neurons).
  static Pack rows(const Vec& x) {
    Pack r;
    for (auto& e : r.v) e = x;
    return r;
  }
  template <typename F>
  static Pack map(F&& f, const Pack& a) {
    Pack r;
    for (int j = 0; j < U; ++j) r.v[j] = f(a.v[j]);
    return r;
  }
  template <typename F>
  static Pack map(F&& f, const Pack& a, const Pack& b) {
    Pack r;
    for (int j = 0; j < U; ++j) r.v[j] = f(a.v[j], b.v[j]);
    return r;
  }
  friend Pack operator+(const Pack& a, const Pack& b) { return map(std::plus<>(), a, b); }
  friend Pack operator-(const Pack& a, const Pack& b) { return map(std::minus<>(), a, b); }
  friend Pack operator*(const Pack& a, const Pack& b) { return map(std::multiplies<>(), a, b); }
  friend Pack operator/(const Pack& a, const Pack& b) { return map(std::divides<>(), a, b); }
};

template <typename T, int U = kUnroll>
struct VecMath {
  using P = Pack<T, U>;
  using Vec = at::vec::Vectorized<T>;
  // Out of line for a whole register tile (U > kEpilogueRows): inlined into the tile's loop, U
  // chains of this much math spill. Inline for the few rows of a pass of the tile epilogue
  // (kEpilogueRows), whose chains fit the registers, so the tile does not go through memory for the
  // call. The fast float forms run kInterleave vectors in lock-step, one step of the formula for
  // each before the next: written vector by vector, each ~20-deep dependency chain ran mostly alone
  // (the compiler keeps the source order and the out-of-order window holds about one chain).
  __attribute__((always_inline)) static void tanh_sech2(const P& z, P& t, P& s) {
    if constexpr (U > kEpilogueRows) tanh_sech2_outlined(z, t, s);
    else tanh_sech2_inline(z, t, s);
  }
  __attribute__((always_inline)) static void sigmoid_pair(const P& z, P& p, P& q) {
    if constexpr (U > kEpilogueRows) sigmoid_pair_outlined(z, p, q);
    else sigmoid_pair_inline(z, p, q);
  }
  __attribute__((noinline)) static void tanh_sech2_outlined(const P& z, P& t, P& s) { tanh_sech2_inline(z, t, s); }
  __attribute__((noinline)) static void sigmoid_pair_outlined(const P& z, P& p, P& q) { sigmoid_pair_inline(z, p, q); }
  __attribute__((always_inline)) static void tanh_sech2_inline(const P& z, P& t, P& s) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (kFastFloat) {
      for (int j = 0; j < U; j += kInterleave) tanh_sech2_fast<kInterleave>(z.v + j, t.v + j, s.v + j);
      return;
    }
#endif
    for (int j = 0; j < U; ++j) tanh_sech2_vec(z.v[j], t.v[j], s.v[j]);
  }
  __attribute__((always_inline)) static void sigmoid_pair_inline(const P& z, P& p, P& q) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (kFastFloat) {
      for (int j = 0; j < U; j += kInterleave) sigmoid_pair_fast<kInterleave>(z.v + j, p.v + j, q.v + j);
      return;
    }
#endif
    for (int j = 0; j < U; ++j) sigmoid_pair_vec(z.v[j], p.v[j], q.v[j]);
  }

  // e^x. For float lanes on AVX2 / AVX-512: inline, Cephes' expf polynomial after a two-part
  // ln 2 reduction (about 1 ulp), 0 below -87.34 and +inf above 88.72; Sleef's call costs more
  // than the rest of the epilogue. Elsewhere Sleef.
  __attribute__((always_inline)) static Vec exp_vec(const Vec& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (sizeof(T) == 4) {
      const Vec minus_zero(-0.0f);  // x + -0 is x: the additions fold away
      Vec e;
      exp_sum<1>(&x, &minus_zero, &e);
      return e;
    }
#endif
    return x.exp();
  }

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  // e^(xh + xl) for float lanes, xh any float and |xl| <= 2, W vectors in lock-step, as exp_vec:
  // k ln2_hi is a multiple of 2^-9 with at most 16 significant bits, so xh - k ln2_hi (below 3 in
  // size) is exact where |xh| >= 2 and otherwise rounds at its own scale: the argument is rounded
  // only as a reduced argument is, never at the scale of a large xh.
  template <int W>
  __attribute__((always_inline)) static void exp_sum(const Vec* xh, const Vec* xl, Vec* e) {
    const Vec lo(-87.33654f), hi(88.72283f);
    Vec x[W], k[W], r[W], p[W];
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) x[q] = xh[q] + xl[q];
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q)
      k[q] = (at::vec::minimum(at::vec::maximum(x[q], lo), hi) * Vec(1.44269504088896341f)).round();
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) r[q] = at::vec::fmadd(k[q], Vec(-0.693359375f), xh[q]) + xl[q];
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) r[q] = at::vec::fmadd(k[q], Vec(2.12194440e-4f), r[q]);
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) p[q] = Vec(1.9875691500e-4f);
    for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
#pragma GCC unroll 8
      for (int q = 0; q < W; ++q) p[q] = at::vec::fmadd(p[q], r[q], Vec(c));
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) {
      const Vec y = at::vec::fmadd(p[q], r[q] * r[q], r[q]) + Vec(1.0f);
      // 2^k as 2 * 2^(k-1), so that k = 128 (x near 88.72) stays a finite float.
#if defined(CPU_CAPABILITY_AVX512)
      const Vec scale = _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_add_epi32(_mm512_cvtps_epi32(k[q]), _mm512_set1_epi32(126)), 23));
#else
      const Vec scale = _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_add_epi32(_mm256_cvtps_epi32(k[q]), _mm256_set1_epi32(126)), 23));
#endif
      e[q] = Vec::blendv(Vec::blendv(y * scale * Vec(2.0f), Vec(0.0f), x[q] < lo),
                         Vec(std::numeric_limits<float>::infinity()), x[q] > hi);
    }
  }
#endif

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
  static constexpr bool kFastFloat = sizeof(T) == 4;
  // Vectors per lock-step group of the fast float forms: a whole share of U, small enough that the
  // group's temporaries stay in registers (about five each; 16 ymm, 32 zmm registers).
#if defined(CPU_CAPABILITY_AVX512)
  static constexpr int kInterleave = U % 4 == 0 ? 4 : (U % 3 == 0 ? 3 : (U % 2 == 0 ? 2 : 1));
#else
  static constexpr int kInterleave = U % 3 == 0 ? 3 : (U % 2 == 0 ? 2 : 1);
#endif

  // Float lanes only, W vectors in lock-step. e = e^x and em = e^x - 1 for x <= 0, each to a few
  // ulp relative: p(r) = e^r - 1 after a two-part ln 2 reduction x = k ln 2 + r (Cephes' expf),
  // with p(r) = r + r^2 c(r) of degree 6, c fitted for the least largest relative error of 1 + p
  // on |r| <= ln 2 / 2 (4e-9, under float32's rounding; one multiply-add fewer than Cephes'
  // degree 7). Then e = 2^k (1 + p) and em = 2^k p + (2^k - 1), exact in its rounding for k = 0
  // (small |x|, where em is tiny) and free of cancellation below (em <= -0.29). Below -87.7, 2^k
  // is built as 0: e = 0, em = -1 exactly.
  template <int W>
  __attribute__((always_inline)) static void exp_expm1_nonpositive(const Vec (&x)[W], Vec (&e)[W], Vec (&em)[W]) {
    Vec k[W], r[W], c[W];
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) {
#if defined(CPU_CAPABILITY_AVX512)
      r[q] = _mm512_max_ps(_mm512_set1_ps(-88.0f), x[q]);  // x NaN: max returns its second operand, x
#else
      r[q] = _mm256_max_ps(_mm256_set1_ps(-88.0f), x[q]);  // x NaN: max returns its second operand, x
#endif
    }
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) k[q] = (r[q] * Vec(1.44269504088896341f)).round();
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) r[q] = at::vec::fmadd(k[q], Vec(-0.693359375f), r[q]);
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) r[q] = at::vec::fmadd(k[q], Vec(2.12194440e-4f), r[q]);
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) c[q] = Vec(1.38146046e-3f);
    for (const float coef : {8.36871099e-3f, 4.16683890e-2f, 1.66665211e-1f, 4.99999940e-1f})
#pragma GCC unroll 8
      for (int q = 0; q < W; ++q) c[q] = at::vec::fmadd(c[q], r[q], Vec(coef));
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) {
      const Vec p = at::vec::fmadd(c[q], r[q] * r[q], r[q]);
#if defined(CPU_CAPABILITY_AVX512)
      const Vec two_k = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k[q]), _mm512_set1_epi32(127)), 23));
#else
      const Vec two_k = _mm256_castsi256_ps(
          _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k[q]), _mm256_set1_epi32(127)), 23));
#endif
      e[q] = at::vec::fmadd(two_k, p, two_k);
      em[q] = at::vec::fmadd(two_k, p, two_k - Vec(1.0f));
    }
  }

  // 1 / d for moderate d >= 1 (float lanes; the callers' d lie in [1, 6]): the hardware's estimate
  // and one Newton step, about 1 ulp on AVX-512 (14-bit estimate) and 2 on AVX2 (12-bit); no division.
  __attribute__((always_inline)) static Vec reciprocal_estimate(const Vec& d) {
#if defined(CPU_CAPABILITY_AVX512)
    const Vec y = _mm512_rcp14_ps(d);
#else
    const Vec y = _mm256_rcp_ps(d);
#endif
    return at::vec::fmadd(y, at::vec::fnmadd(d, y, Vec(1.0f)), y);
  }

  // erfc x for float lanes, inline and branch-free, W vectors in lock-step (in place of Sleef's
  // erfc call, gelu (0, 1, 2)'s forward at n = 1024, d = 32, m = 4096 went from 28.6 to 15.5 ms):
  // with a = |x| and t = 1 / (1 + a / 2), erfc a = t exp(-a^2 + P(t)), P the degree-9 Chebyshev fit
  // of Numerical Recipes' erfcc (relative error under 1.2e-7 for every a >= 0). a^2 is split
  // exactly into hi + lo and the exponential taken as exp_sum(-hi, P - lo), which keeps its ulp
  // where a^2 is large (rounding the one argument -a^2 + P would cost a^2 / 2^24 relative).
  // erfc x = 2 - erfc a for x < 0. t comes from the hardware's reciprocal estimate and one Newton
  // step; 0 beyond a = 9.3 (erfc < 2e-39).
  template <int W>
  __attribute__((always_inline)) static void erfc_fast(const Vec* x, Vec* out) {
    Vec a[W], t[W], p[W], hi[W], rest[W], e[W];
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) a[q] = at::vec::minimum(x[q].abs(), Vec(10.0f));  // NaN stays NaN
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) t[q] = reciprocal_estimate(at::vec::fmadd(a[q], Vec(0.5f), Vec(1.0f)));
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) p[q] = Vec(0.17087277f);
    for (const float c : {-0.82215223f, 1.48851587f, -1.13520398f, 0.27886807f, -0.18628806f, 0.09678418f,
                          0.37409196f, 1.00002368f, -1.26551223f})
#pragma GCC unroll 8
      for (int q = 0; q < W; ++q) p[q] = at::vec::fmadd(p[q], t[q], Vec(c));
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) {
      hi[q] = a[q] * a[q];
      rest[q] = p[q] - at::vec::fmsub(a[q], a[q], hi[q]);  // P - lo
      hi[q] = hi[q].neg();
    }
    exp_sum<W>(hi, rest, e);
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) {
      const Vec r = t[q] * e[q];
      out[q] = Vec::blendv(r, Vec(2.0f) - r, x[q] < Vec(0.0f));
    }
  }

  // tanh_sech2_vec's float form, W vectors in lock-step, branch- and division-free: e = e^{-2|z|},
  // em = e - 1 (exp_expm1_nonpositive), then w = 1 - |t| = 2 e / (1 + e), |t| = -em / (1 + e) or
  // 1 - w, and s = (1 - |t|)(1 + |t|) = w * 2 / (1 + e), none of which cancels. The multiply pipes
  // bound this code, so what can be an addition or a logic operation is one.
  template <int W>
  __attribute__((always_inline)) static void tanh_sech2_fast(const Vec* z, Vec* t, Vec* s) {
    Vec x[W], e[W], em[W], r[W];
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) {
      const Vec minus_abs = z[q] | Vec(-0.0f);
      x[q] = minus_abs + minus_abs;  // -2 |z|, exactly
    }
    exp_expm1_nonpositive<W>(x, e, em);
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) r[q] = reciprocal_estimate(em[q] + Vec(2.0f));  // 1 / (1 + e)
#pragma GCC unroll 8
    for (int q = 0; q < W; ++q) {
      const Vec w = (e[q] + e[q]) * r[q];
      // |t| = -em / (1 + e) near 0; = 1 - w from |z| = 0.55 (w <= 1/2, no cancellation), exactly 1
      // where e = 0. Then z's sign.
      const Vec t_abs = Vec::blendv(em[q].neg() * r[q], Vec(1.0f) - w, x[q] < Vec(-1.1f));
      t[q] = t_abs | (z[q] & Vec(-0.0f));
      s[q] = w * (r[q] + r[q]);
    }
  }

  // sigmoid_pair_vec's float form, W vectors in lock-step: 1 / (1 + e) without a division.
  template <int W>
  __attribute__((always_inline)) static void sigmoid_pair_fast(const Vec* z, Vec* p, Vec* q) {
    Vec x[W], e[W], em[W];
#pragma GCC unroll 8
    for (int j = 0; j < W; ++j) x[j] = z[j].abs().neg();
    exp_expm1_nonpositive<W>(x, e, em);
#pragma GCC unroll 8
    for (int j = 0; j < W; ++j) sigmoid_from_exp(z[j], e[j], reciprocal_estimate(Vec(T(1)) + e[j]), p[j], q[j]);
  }
#else
  static constexpr bool kFastFloat = false;
#endif

  // t = tanh z and s = 1 - t^2, both to a few ulp relative everywhere, with exactly t = +-1, s = 0
  // where tanh saturates (double, and the portable build's float; float on AVX2 / AVX-512 takes
  // tanh_sech2_fast): w = 2 / (e^{2|z|} + 1) = 1 - |t| and s = w (2 - w) for |z| >= 0.4; below,
  // e / (e + 2) with e = expm1(2z) in double and the odd series of tanh to z^13 in float.
  __attribute__((always_inline)) static void tanh_sech2_vec(const Vec& z, Vec& t, Vec& s) {
    const Vec one(T(1)), two(T(2));
    const Vec a = z.abs();
    const Vec w = two / (exp_vec(a + a) + one);
    const Vec far = one - w;
    const Vec near_mask = a < Vec(T(0.4));
    Vec near;
    if constexpr (sizeof(T) == 4) {
      const Vec z2 = z * z;
      Vec poly(T(21844.0 / 6081075.0));
      for (const double c : {-1382.0 / 155925.0, 62.0 / 2835.0, -17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0})
        poly = at::vec::fmadd(poly, z2, Vec(static_cast<T>(c)));
      near = at::vec::fmadd(z * z2, poly, z);
    } else {
      const Vec e = (z + z).expm1();
      near = e / (e + two);
    }
    t = Vec::blendv(Vec::blendv(far, far.neg(), z < Vec(T(0))), near, near_mask);
    s = Vec::blendv(w * (two - w), one - near * near, near_mask);
  }

  // p = sigmoid(z) and q = sigmoid(-z) from e = exp(-|z|) and r = 1 / (1 + e): p, q = r and e r.
  __attribute__((always_inline)) static void sigmoid_from_exp(const Vec& z, const Vec& e, const Vec& r, Vec& p, Vec& q) {
    const Vec er = e * r;  // the smaller of p and q
    // the larger: 1 / (1 + e), or 1 - e / (1 + e) from |z| = 0.7 (e <= 1/2, no cancellation), which
    // is exactly 1 where e = 0 (an estimated reciprocal of 1 need not be)
    const Vec big = Vec::blendv(r, Vec(T(1)) - er, z.abs() > Vec(T(0.7)));
    const Vec negative = z < Vec(T(0));
    p = Vec::blendv(big, er, negative);
    q = Vec::blendv(er, big, negative);
  }
  __attribute__((always_inline)) static void sigmoid_pair_vec(const Vec& z, Vec& p, Vec& q) {
    const Vec e = exp_vec(z.abs().neg());
    sigmoid_from_exp(z, e, Vec(T(1)) / (Vec(T(1)) + e), p, q);
  }
  static P exp(const P& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (kFastFloat) {
      P r;
      Vec minus_zero[kInterleave];
      for (auto& z : minus_zero) z = Vec(-0.0f);
      for (int j = 0; j < U; j += kInterleave) exp_sum<kInterleave>(x.v + j, minus_zero, r.v + j);
      return r;
    }
#endif
    return P::map([](const Vec& a) { return exp_vec(a); }, x);
  }
  static P log1p(const P& x) { return P::map([](const Vec& a) { return a.log1p(); }, x); }
  static P erf(const P& x) { return P::map([](const Vec& a) { return a.erf(); }, x); }
  static P erfc(const P& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (kFastFloat) {
      P r;
      for (int j = 0; j < U; j += kInterleave) erfc_fast<kInterleave>(x.v + j, r.v + j);
      return r;
    }
#endif
    return P::map([](const Vec& a) { return a.erfc(); }, x);
  }
  static P sin(const P& x) { return P::map([](const Vec& a) { return a.sin(); }, x); }
  static P cos(const P& x) { return P::map([](const Vec& a) { return a.cos(); }, x); }
  static P abs(const P& x) { return P::map([](const Vec& a) { return a.abs(); }, x); }
  static P max0(const P& x) {
    return P::map([](const Vec& a) { return at::vec::maximum(a, Vec(T(0))); }, x);
  }
  static P step(const P& x) { return P::map([](const Vec& a) { return a.gt(Vec(T(0))); }, x); }
  static P fma(const P& a, const P& b, const P& c) {
    P r;
    for (int j = 0; j < U; ++j) r.v[j] = at::vec::fmadd(a.v[j], b.v[j], c.v[j]);
    return r;
  }
};

// Tile sizes: NB samples x MB neurons, a few such tiles per worker stay in L2.
constexpr int64_t kTileSamples = 128;
template <typename T>
constexpr int64_t kTileNeurons = 2048 / sizeof(T);  // 512 floats, 256 doubles

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether the training forward streams the derivatives it keeps past the caches (non-temporal
// stores of whole cache lines: auto, the default, or streamed) or writes them like h
// (TAYLORNET_SAVED_STORES=cached). Read at each call. Streamed, the forward+backward took 0-7 % less
// time on a Zen 4 (AVX-512); on an AVX2 EPYC 6-15 % less at m = 16384 and 1-6 % less at m = 4096,
// 4-7 % more at m = 1024 (n = 1024, d = 16 ... 64; docs/benchmarks.md).
bool saved_streamed() { return env_choice("TAYLORNET_SAVED_STORES", {"auto", "cached", "streamed"}) != "cached"; }

// The fused dual-product kernels (below) and where they take over from the BLAS tile path.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int kRows = 8;  // 2 x 8 accumulators + 2 weight vectors + 1 broadcast of 32 zmm registers
constexpr bool kHaveFused = true;
// MKL, the BLAS of PyTorch's x86 builds, runs its AVX2 kernels on AMD CPUs: on an AVX-512 EPYC
// (Zen 5) the fused kernels took 0.28-0.59x the time of the BLAS tile path at every d from 64 to
// 4096 (one thread, n = 1024, m = 4096, tanh order 2, features and net fwd+bwd; docs/benchmarks.md),
// so there they take every d. Where MKL has its AVX-512 kernels, the AVX2 crossover (below) stands.
int64_t default_fused_max_dim() {
  static const int64_t limit = [] {
    __builtin_cpu_init();
    return at::hasMKL() && __builtin_cpu_is("amd") ? kNoFusedLimit : int64_t(512);
  }();
  return limit;
}
#elif defined(CPU_CAPABILITY_AVX2)
constexpr int kRows = 6;  // 2 x 6 + 2 + 1 of 16 ymm registers
constexpr bool kHaveFused = true;
// The crossover measured on an AVX2 EPYC (Zen 3), where MKL runs its AVX2 kernels too: the fused
// kernels were faster up to d = 256 and even at 512 (docs/benchmarks.md).
int64_t default_fused_max_dim() { return 512; }
#else
constexpr int kRows = 6;
constexpr bool kHaveFused = false;  // the portable build keeps the BLAS tile path everywhere
int64_t default_fused_max_dim() { return 0; }
#endif

// Largest readout c contracted in registers.
constexpr int64_t kFusedMaxOutputs = 16;

// Largest d the fused kernels take under a limit set for every build (set_fused_max_dim,
// TAYLORNET_FUSED_MAX_DIM), which is how the crossover is measured (0: BLAS tiles everywhere).
int64_t build_fused_max_dim(int64_t setting) {
  if (!kHaveFused) return 0;
  return setting == kAutoFusedMaxDim ? default_fused_max_dim() : setting;
}

bool fused_dim_ok(int64_t d) { return kHaveFused && d <= build_fused_max_dim(fused_max_dim_setting()); }

template <typename T>
struct NetProblem;
template <typename T>
void fused_features_forward(const Args& args, Tensor& out, T* du = nullptr, T* dz = nullptr, bool stream = false);
template <typename T>
void fused_net_forward(const NetProblem<T>& p, Tensor& out);

template <typename T>
void fill_signs(const Signs& s, int64_t r0, int64_t count, T* out) {
  switch (s.kind) {
    case Signs::kNone: std::fill(out, out + count, T(1)); break;
    case Signs::kTensor: std::copy_n(s.values.const_data_ptr<T>() + r0, count, out); break;
    case Signs::kPhilox: {
      Philox4x32 bits{};
      uint64_t block = ~uint64_t(0);
      for (int64_t i = 0; i < count; ++i) {
        const uint64_t r = s.first_neuron + static_cast<uint64_t>(r0 + i);
        if ((r >> 7) != block) {
          block = r >> 7;
          bits = sign_bits(s.seed, s.offset, block);
        }
        out[i] = neuron_sign<T>(bits, r);
      }
      break;
    }
  }
}

// Runs body(column, count) over the columns [0, cols) of one row in steps of one Pack, the last
// step masked to the remaining count.
template <typename T, typename F>
void for_each_vector(int64_t cols, F&& body) {
  constexpr int64_t step = Pack<T>::size();
  int64_t r = 0;
  for (; r + step <= cols; r += step) body(r, static_cast<int>(step));
  if (r < cols) body(r, static_cast<int>(cols - r));
}

// Loads `cnt` numbers (a whole Pack or fewer; the rest are zero).
template <typename T>
Pack<T> load(const T* p, int cnt) {
  using Vec = at::vec::Vectorized<T>;
  Pack<T> r;
  for (int j = 0; j < kUnroll; ++j) {
    const int left = cnt - j * Vec::size();
    r.v[j] = left >= Vec::size() ? Vec::loadu(p + j * Vec::size())
             : left > 0          ? Vec::loadu(p + j * Vec::size(), left)
                                 : Vec(T(0));
  }
  return r;
}

// A product (x w0^T or x w^T) at columns [c, c + cnt) plus its bias, if there is one.
template <typename T>
Pack<T> with_bias(const T* product, const T* bias, int64_t c, int cnt) {
  return bias ? load(product + c, cnt) + load(bias + c, cnt) : load(product + c, cnt);
}

template <typename T>
void store(const Pack<T>& v, T* p, int cnt) {
  using Vec = at::vec::Vectorized<T>;
  for (int j = 0; j < kUnroll; ++j) {
    const int left = cnt - j * Vec::size();
    if (left >= Vec::size())
      v.v[j].store(p + j * Vec::size());
    else if (left > 0)
      v.v[j].store(p + j * Vec::size(), left);
  }
}

template <typename T>
T sum_lanes(const Pack<T>& v) {
  using Vec = at::vec::Vectorized<T>;
  Vec total = v.v[0];
  for (int j = 1; j < kUnroll; ++j) total = total + v.v[j];
  T lanes[Vec::size()];
  total.store(lanes);
  T sum = 0;
  for (T x : lanes) sum += x;
  return sum;
}

template <typename T>
const T* ptr_or_null(const Tensor& t, int64_t offset = 0) {
  return t.defined() ? t.const_data_ptr<T>() + offset : nullptr;
}

template <typename T>
std::vector<T> plan_coefficients(const Plan& plan) {
  return std::vector<T>(plan.coef.begin(), plan.coef.end());
}

// Runs tile(worker, block) for blocks 0..nblocks-1 split round-robin over `workers` workers.
// The tiles call ATen ops on the operands; the guard keeps those calls below autograd on every
// thread (dispatcher state is thread-local and OpenMP workers do not inherit it).
template <typename F>
void for_each_block(int64_t workers, int64_t nblocks, F&& tile) {
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t w = begin; w < end; ++w)
      for (int64_t blk = w; blk < nblocks; blk += workers) tile(w, blk);
  });
}

// ---------------------------------------------------------------------------------------------
// taylor_features: the n x m output is the point of the op. Its backward is the net's backward
// (below) with the cotangent of h in place of gout A, so it holds no other n x m tensor.

// With `save`, also dh/du (and dh/dz0 when `need_dz`) into outs[1] (and outs[2]): the features'
// backward then needs no recomputation of the products. The fused kernels store them from the
// register tile beside h; above their largest d, two whole BLAS products go straight into the
// output buffers.
template <typename T>
std::vector<Tensor> features_forward_impl(const Args& args, bool save, bool need_dz) {
  using V = Pack<T>;
  using M = VecMath<T>;
  const int64_t n = args.x.size(0), m = args.w.size(0);
  std::vector<Tensor> outs{recycled_buffer({n, m}, args.x.options())};
  if (save) {
    outs.push_back(recycled_buffer({n, m}, args.x.options()));
    outs.push_back(need_dz ? recycled_buffer({n, m}, args.x.options()) : at::empty({0}, args.x.options()));
  }
  // Read whenever a forward keeps derivatives, so that a bad value raises in every build.
  const bool stream_saved = save && saved_streamed();
  if (n == 0 || m == 0) return outs;
  T* saved[2] = {save ? outs[1].mutable_data_ptr<T>() : nullptr,
                 save && need_dz ? outs[2].mutable_data_ptr<T>() : nullptr};
  if (fused_dim_ok(args.x.size(1))) {
    fused_features_forward<T>(args, outs[0], saved[0], saved[1], stream_saved);
    return outs;
  }
  Tensor& out = outs[0];
  std::vector<T> signs(m);
  fill_signs<T>(args.signs, 0, m, signs.data());
  const auto coef = plan_coefficients<T>(*args.plan);
  const PlanView<T> plan = args.plan->view(coef.data());
  const T* b0 = ptr_or_null<T>(args.b0);
  const T* b = ptr_or_null<T>(args.b);
  if (save) {
    // Both products as two whole GEMMs straight into the output buffers (z0 into dh/du's, u into
    // h's), then the epilogue in place: BLAS at its full rate, weights read once, no scratch.
    at::mm_out(outs[1], args.x, args.w0.t());
    at::mm_out(out, args.x, args.w.t());
    T* hp = out.mutable_data_ptr<T>();
    at::parallel_for(0, n, 16, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T* zr = saved[0] + i * m;
        T* hr = hp + i * m;
        T* dzr = need_dz ? saved[1] + i * m : nullptr;
        for_each_vector<T>(m, [&](int64_t r, int cnt) {
          const V z = with_bias(zr, b0, r, cnt), u = with_bias(hr, b, r, cnt);
          const auto d = feature_grads<V, M>(plan, z, u, load(signs.data() + r, cnt), true, need_dz);
          store(d.value, hr + r, cnt);
          store(d.du, zr + r, cnt);
          if (dzr) store(d.dz, dzr + r, cnt);
        });
      }
    });
    return outs;
  }
  // Blocks of rows: u goes straight into the output rows, z0 into a scratch block of about 2^18
  // numbers, so the only n x m tensors are the outputs themselves.
  const int64_t rows = std::clamp<int64_t>((int64_t(1) << 18) / m, 1, 256);
  const int64_t nblocks = ceil_div(n, rows);
  for_each_block(std::min<int64_t>(at::get_num_threads(), nblocks), nblocks, [&](int64_t, int64_t blk) {
    const int64_t i0 = blk * rows, nb = std::min(rows, n - i0);
    const Tensor xb = args.x.narrow(0, i0, nb);
    const Tensor z0 = at::mm(xb, args.w0.t());
    Tensor ub = out.narrow(0, i0, nb);
    at::mm_out(ub, xb, args.w.t());
    for (int64_t i = 0; i < nb; ++i) {
      const T* zr = z0.const_data_ptr<T>() + i * m;
      T* ur = ub.mutable_data_ptr<T>() + i * m;
      for_each_vector<T>(m, [&](int64_t r, int cnt) {
        const V z = with_bias(zr, b0, r, cnt), u = with_bias(ur, b, r, cnt);
        store(feature<V, M>(plan, z, u, load(signs.data() + r, cnt)), ur + r, cnt);
      });
    }
  });
  return outs;
}

// ---------------------------------------------------------------------------------------------
// taylor_net and taylor_net_moments: R readouts of the per-neuron features phi_rho,
//   out_rho = scale_rho * Phi_rho A_rho^T
// net: R = 1, phi = h, A_0 = A.  moments: R = 2, phi = (e, o^2), A = (A, A*A), scales (s, s^2).

template <typename T>
struct NetProblem {
  const Args& args;
  bool moments;
  int R;
  int64_t n, d, m, c;
  Tensor A[2];
  T scale[2];
  // The features' backward: the (n, m) cotangent of h itself takes the place of g = gout A.
  const T* grad_h = nullptr;
  std::vector<T> coef;
  PlanView<T> plan;
  const int64_t NB = kTileSamples, MB = kTileNeurons<T>;

  NetProblem(const Args& a, bool is_moments)
      : args(a), moments(is_moments), R(is_moments ? 2 : 1), n(a.x.size(0)), d(a.x.size(1)),
        m(a.w.size(0)), c(a.a.defined() ? a.a.size(0) : 1), coef(plan_coefficients<T>(*a.plan)),
        plan(a.plan->view(coef.data())) {
    A[0] = a.a;
    scale[0] = static_cast<T>(a.scale);
    if (moments) {
      A[1] = a.a * a.a;
      scale[1] = static_cast<T>(a.scale * a.scale);
    }
  }
  int64_t sample_blocks() const { return ceil_div(n, NB); }
  int64_t neuron_blocks() const { return ceil_div(m, MB); }
};

// Per-worker scratch: tiles of NB x MB, viewed at the size of the current block.
template <typename T>
struct Scratch {
  Tensor storage;
  std::vector<T> signs;
  Scratch(const NetProblem<T>& p, int tiles)
      : storage(at::empty({tiles, p.NB * p.MB}, p.args.x.options())), signs(p.MB) {}
  Tensor tile(int k, int64_t rows, int64_t cols) {
    return storage.select(0, k).narrow(0, 0, rows * cols).view({rows, cols});
  }
};

// Tile slots in Scratch.
enum Slot : int { kZ0 = 0, kU = 1, kPhi0 = 2, kPhi1 = 3 };

template <typename T>
void forward_tile(const NetProblem<T>& p, Scratch<T>& ws, int64_t i0, int64_t nb, int64_t r0,
                  int64_t mb, Tensor* outs) {
  using V = Pack<T>;
  using M = VecMath<T>;
  const Tensor xb = p.args.x.narrow(0, i0, nb);
  Tensor z0 = ws.tile(kZ0, nb, mb), u = ws.tile(kU, nb, mb);
  at::mm_out(z0, xb, p.args.w0.narrow(0, r0, mb).t());
  at::mm_out(u, xb, p.args.w.narrow(0, r0, mb).t());
  fill_signs<T>(p.args.signs, r0, mb, ws.signs.data());
  const T* b0 = ptr_or_null<T>(p.args.b0, r0);
  const T* b = ptr_or_null<T>(p.args.b, r0);
  const T* s = ws.signs.data();
  T* zp = z0.mutable_data_ptr<T>();
  T* upp = u.mutable_data_ptr<T>();
  // One output (c = 1): the readout is a dot product per sample, accumulated in registers.
  const bool dot = p.c == 1;
  const T* a0 = p.A[0].template const_data_ptr<T>() + r0;
  const T* a1 = p.R > 1 ? p.A[1].template const_data_ptr<T>() + r0 : nullptr;
  for (int64_t i = 0; i < nb; ++i) {
    T* zr = zp + i * mb;
    T* ur = upp + i * mb;
    V acc0(T(0)), acc1(T(0));
    for_each_vector<T>(mb, [&](int64_t r, int cnt) {
      const V z = with_bias(zr, b0, r, cnt), uu = with_bias(ur, b, r, cnt);
      V phi0, phi1;
      if (p.moments) {
        const auto mo = moments<V, M>(p.plan, z, uu, false, false);
        phi0 = mo.e.value;
        phi1 = mo.o.value * mo.o.value;
      } else {
        phi0 = feature<V, M>(p.plan, z, uu, load(s + r, cnt));
      }
      if (dot) {
        acc0 = M::fma(phi0, load(a0 + r, cnt), acc0);  // zero-filled tails of a0 add 0
        if (a1) acc1 = M::fma(phi1, load(a1 + r, cnt), acc1);
      } else {
        store(phi0, zr + r, cnt);
        if (p.moments) store(phi1, ur + r, cnt);
      }
    });
    if (dot) {
      outs[0].template mutable_data_ptr<T>()[i0 + i] += p.scale[0] * sum_lanes(acc0);
      if (a1) outs[1].template mutable_data_ptr<T>()[i0 + i] += p.scale[1] * sum_lanes(acc1);
    }
  }
  if (dot) return;
  const Tensor phi[2] = {z0, u};
  for (int k = 0; k < p.R; ++k)
    outs[k].narrow(0, i0, nb).addmm_(phi[k], p.A[k].narrow(1, r0, mb).t(), 1, p.scale[k]);
}

template <typename T>
std::vector<Tensor> net_forward_impl(const Args& args, bool moments) {
  NetProblem<T> p(args, moments);
  std::vector<Tensor> outs;
  for (int k = 0; k < p.R; ++k) outs.push_back(at::zeros({p.n, p.c}, args.x.options()));
  if (p.n == 0 || p.m == 0 || p.c == 0) return outs;
  if (!moments && p.c <= kFusedMaxOutputs && fused_dim_ok(p.d)) {
    fused_net_forward(p, outs[0]);
    return outs;
  }
  const int64_t threads = at::get_num_threads();
  const int64_t nsb = p.sample_blocks(), nnb = p.neuron_blocks();
  if (nsb >= threads || nsb >= nnb) {
    // Each worker owns whole sample blocks and sweeps all neurons.
    const int64_t workers = std::min(threads, nsb);
    for_each_block(workers, nsb, [&](int64_t, int64_t sb) {
      Scratch<T> ws(p, 2);
      const int64_t i0 = sb * p.NB, nb = std::min(p.NB, p.n - i0);
      for (int64_t r0 = 0; r0 < p.m; r0 += p.MB)
        forward_tile(p, ws, i0, nb, r0, std::min(p.MB, p.m - r0), outs.data());
    });
    return outs;
  }
  // Few samples, many neurons: split the neurons, each worker sums into its own partial outputs.
  const int64_t workers = std::min(threads, nnb);
  std::vector<std::vector<Tensor>> partial(workers);
  for (auto& v : partial)
    for (int k = 0; k < p.R; ++k) v.push_back(at::zeros({p.n, p.c}, args.x.options()));
  for_each_block(workers, nnb, [&](int64_t w, int64_t nbk) {
    Scratch<T> ws(p, 2);
    const int64_t r0 = nbk * p.MB, mb = std::min(p.MB, p.m - r0);
    for (int64_t i0 = 0; i0 < p.n; i0 += p.NB)
      forward_tile(p, ws, i0, std::min(p.NB, p.n - i0), r0, mb, partial[w].data());
  });
  for (auto& v : partial)
    for (int k = 0; k < p.R; ++k) outs[k].add_(v[k]);
  return outs;
}

// Where a backward tile adds its contributions: the result tensors, or a worker's partial sums.
struct Targets {
  Tensor dx, dw0, dw, db0, db, da[2];
};

template <typename T>
void backward_tile(const NetProblem<T>& p, Scratch<T>& ws, const std::vector<Tensor>& gout,
                   const Needs& needs, bool params, bool x_grad, int64_t i0, int64_t nb, int64_t r0,
                   int64_t mb, Targets& t) {
  using V = Pack<T>;
  using M = VecMath<T>;
  const bool need_dz = (params && (needs.w0 || needs.b0)) || x_grad;
  const bool need_g = (params && (needs.w || needs.b)) || x_grad;
  const bool need_phi = params && needs.a;
  const Tensor xb = p.args.x.narrow(0, i0, nb);
  Tensor z0 = ws.tile(kZ0, nb, mb), u = ws.tile(kU, nb, mb);
  at::mm_out(z0, xb, p.args.w0.narrow(0, r0, mb).t());
  at::mm_out(u, xb, p.args.w.narrow(0, r0, mb).t());
  // g = gout A: with one output an outer product, formed in the epilogue; else a product into the
  // phi tiles, which then receive the features for dA.
  const bool outer = p.c == 1 && !p.grad_h;
  Tensor phi[2];
  for (int k = 0; k < p.R; ++k) {
    phi[k] = ws.tile(kPhi0 + k, nb, mb);
    if (!outer && !p.grad_h) at::mm_out(phi[k], gout[k].narrow(0, i0, nb), p.A[k].narrow(1, r0, mb));
  }
  const T* a0 = outer ? p.A[0].template const_data_ptr<T>() + r0 : nullptr;
  const T* a1 = outer && p.R > 1 ? p.A[1].template const_data_ptr<T>() + r0 : nullptr;
  const T* go0 = outer ? gout[0].template const_data_ptr<T>() + i0 : nullptr;
  const T* go1 = outer && p.R > 1 ? gout[1].template const_data_ptr<T>() + i0 : nullptr;
  fill_signs<T>(p.args.signs, r0, mb, ws.signs.data());
  const T* b0 = ptr_or_null<T>(p.args.b0, r0);
  const T* b = ptr_or_null<T>(p.args.b, r0);
  const T* s = ws.signs.data();
  T* zp = z0.mutable_data_ptr<T>();
  T* upp = u.mutable_data_ptr<T>();
  T* f0p = phi[0].mutable_data_ptr<T>();
  T* f1p = p.R > 1 ? phi[1].mutable_data_ptr<T>() : nullptr;
  const V s0(p.scale[0]), s1(p.R > 1 ? p.scale[1] : T(0)), two(T(2));
  for (int64_t i = 0; i < nb; ++i) {
    T* zr = zp + i * mb;
    T* ur = upp + i * mb;
    T* f0 = f0p + i * mb;
    T* f1 = f1p ? f1p + i * mb : nullptr;
    const V go0i(outer ? go0[i] : T(0)), go1i(outer && go1 ? go1[i] : T(0));
    const T* gh = p.grad_h ? p.grad_h + (i0 + i) * p.m + r0 : nullptr;
    for_each_vector<T>(mb, [&](int64_t r, int cnt) {
      const V z = with_bias(zr, b0, r, cnt), uu = with_bias(ur, b, r, cnt);
      V G, G0;
      if (p.moments) {
        const V gm = s0 * (outer ? go0i * load(a0 + r, cnt) : load(f0 + r, cnt));
        const V gv = s1 * (outer ? go1i * load(a1 + r, cnt) : load(f1 + r, cnt));
        const auto mo = moments<V, M>(p.plan, z, uu, true, need_dz);
        const V gvo = two * gv * mo.o.value;
        G = gm * mo.e.du + gvo * mo.o.du;
        G0 = gm * mo.e.dz + gvo * mo.o.dz;
        if (need_phi) {
          store(mo.e.value, f0 + r, cnt);
          store(mo.o.value * mo.o.value, f1 + r, cnt);
        }
      } else {
        const V g = s0 * (gh ? load(gh + r, cnt) : outer ? go0i * load(a0 + r, cnt) : load(f0 + r, cnt));
        const auto d = feature_grads<V, M>(p.plan, z, uu, load(s + r, cnt), need_phi, need_dz);
        G = g * d.du;
        G0 = g * d.dz;
        if (need_phi) store(d.value, f0 + r, cnt);
      }
      if (need_g) store(G, ur + r, cnt);
      if (need_dz) store(G0, zr + r, cnt);
    });
  }
  if (params) {
    if (needs.w) t.dw.narrow(0, r0, mb).addmm_(u.t(), xb);
    if (needs.w0) t.dw0.narrow(0, r0, mb).addmm_(z0.t(), xb);
    if (needs.b) t.db.narrow(0, r0, mb).add_(u.sum(0));
    if (needs.b0) t.db0.narrow(0, r0, mb).add_(z0.sum(0));
    if (needs.a)
      for (int k = 0; k < p.R; ++k)
        t.da[k].narrow(1, r0, mb).addmm_(gout[k].narrow(0, i0, nb).t(), phi[k], 1, p.scale[k]);
  }
  if (x_grad) {
    Tensor dxb = t.dx.narrow(0, i0, nb);
    dxb.addmm_(u, p.args.w.narrow(0, r0, mb));
    dxb.addmm_(z0, p.args.w0.narrow(0, r0, mb));
  }
}

template <typename T>
Targets make_targets(const NetProblem<T>& p, const Needs& needs, bool params, bool x_grad) {
  Targets t;
  const auto opt = p.args.x.options();
  if (x_grad) t.dx = at::zeros({p.n, p.d}, opt);
  if (params) {
    if (needs.w) t.dw = at::zeros({p.m, p.d}, opt);
    if (needs.w0) t.dw0 = at::zeros({p.m, p.d}, opt);
    if (needs.b) t.db = at::zeros({p.m}, opt);
    if (needs.b0) t.db0 = at::zeros({p.m}, opt);
    if (needs.a)
      for (int k = 0; k < p.R; ++k) t.da[k] = at::zeros({p.c, p.m}, opt);
  }
  return t;
}

void add_targets(Targets& into, const Targets& from) {
  auto add = [](Tensor& a, const Tensor& b) {
    if (b.defined()) a.add_(b);
  };
  add(into.dx, from.dx);
  add(into.dw, from.dw);
  add(into.dw0, from.dw0);
  add(into.db, from.db);
  add(into.db0, from.db0);
  add(into.da[0], from.da[0]);
  add(into.da[1], from.da[1]);
}

// ---------------------------------------------------------------------------------------------
// Fused dual-product kernels (the AVX2 and AVX-512 builds).
//
// Register tile: kRows samples x one SIMD vector of neurons (8 floats on AVX2, 16 on AVX-512), for
// both products at once. Per step k of the inner dimension: one load of w0^T[k] and one of w^T[k]
// from a packed panel, one broadcast of x[i][k] per row, 2 kRows FMAs. The tile's z0 and u then go
// through the Taylor epilogue (series.h) as one Pack of kRows vectors, rows in lock-step, and
// straight into the readout, the cotangent or the output rows: z0 and u never reach memory.
//
// The weight gradients dW = G^T X (and dW0 = G0^T X) accumulate in a second register kernel of the
// same shape, kRows input dimensions x one vector of neurons, over a panel of G kept in L2.
// For large d the products dominate and ATen's BLAS runs them faster than this kernel: the tile
// path above (fused_max_dim) takes over.
template <typename T>
using RowPack = Pack<T, kRows>;
template <typename T>
using RowMath = VecMath<T, kRows>;

int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// The packed weights: in the features forward a block of neurons' panel is at most
// kBlockPanelBytes (1024 neurons up to d = 256 in float32, fewer beyond); the fused ops pack a chunk
// of about kChunkPanelBytes at a time rather than a copy of all 2md weights. Beyond the inputs,
// taylor_features forward+backward at d = 1024, n = m = 1024 peaked at 17.5 MiB with the whole
// panel (8 MiB), 17.0 with chunks of 4 MiB and 14.0 with 2 MiB, against 16.0 for the compiled
// reference (AVX-512, taylornet bench --ops features_fb).
constexpr int64_t kBlockPanelBytes = int64_t(2) << 20;
constexpr int64_t kChunkPanelBytes = int64_t(2) << 20;

// Groups of VL neurons per 64-byte cache line: 2 on AVX2 (a group's row is half a line), 1 on AVX-512.
template <typename T>
constexpr int64_t kLineGroups = std::max<int64_t>(1, 64 / (at::vec::Vectorized<T>::size() * sizeof(T)));

// The weights of one call in the kernels' layout: per group of VL neurons, d rows of
// [w0^T (VL) | w^T (VL)]; biases, signs and readout rows padded to whole groups. Of neurons
// [first, first + count) only (all by default): group g holds neurons first + g VL ...
template <typename T>
struct FusedWeights {
  using Vec = at::vec::Vectorized<T>;
  static constexpr int VL = Vec::size();
  int64_t d = 0, m = 0, groups = 0, c = 0, first = 0;
  std::vector<T> panel, b0, b, s, a;  // a: c x groups*VL
  bool has_b0 = false, has_b = false;

  FusedWeights(const Args& args, const Tensor& A, int64_t first = 0, int64_t count = -1) {
    d = args.x.size(1);
    this->first = first;
    m = count < 0 ? args.w.size(0) - first : count;
    groups = ceil_div(m, VL);
    const int64_t mp = groups * VL;
    panel.assign(groups * d * 2 * VL, T(0));
    const T* w0p = args.w0.const_data_ptr<T>() + first * d;
    const T* wp = args.w.const_data_ptr<T>() + first * d;
    at::parallel_for(0, groups, 64, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        T* dst = panel.data() + g * d * 2 * VL;
        for (int64_t l = 0; l < VL && g * VL + l < m; ++l) {
          const T* r0 = w0p + (g * VL + l) * d;
          const T* r1 = wp + (g * VL + l) * d;
          for (int64_t k = 0; k < d; ++k) {
            dst[k * 2 * VL + l] = r0[k];
            dst[k * 2 * VL + VL + l] = r1[k];
          }
        }
      }
    });
    has_b0 = args.b0.defined();
    has_b = args.b.defined();
    b0.assign(mp, T(0));
    b.assign(mp, T(0));
    s.assign(mp, T(1));
    if (has_b0) std::copy_n(args.b0.const_data_ptr<T>() + first, m, b0.data());
    if (has_b) std::copy_n(args.b.const_data_ptr<T>() + first, m, b.data());
    fill_signs<T>(args.signs, first, m, s.data());
    if (A.defined()) {
      c = A.size(0);
      a.assign(c * mp, T(0));
      const T* ap = A.const_data_ptr<T>() + first;
      for (int64_t j = 0; j < c; ++j) std::copy_n(ap + j * A.size(1), m, a.data() + j * mp);
    }
  }
  int64_t padded() const { return groups * VL; }
  const T* group_panel(int64_t g) const { return panel.data() + g * d * 2 * VL; }
  int count(int64_t g) const { return static_cast<int>(std::min<int64_t>(VL, m - g * VL)); }
};

// body(f) for the weights of consecutive chunks of neurons, each packed only for its call: chunks
// of whole multiples of `align` neurons (where the caller's blocks start), about kChunkPanelBytes
// of panel but at least min_neurons (so that each is split among the threads as all of them would
// be; a shorter remainder joins the last chunk).
template <typename T, typename F>
void for_each_weight_chunk(const Args& args, const Tensor& A, int64_t align, int64_t min_neurons, F&& body) {
  const int64_t d = args.x.size(1), m = args.w.size(0);
  const int64_t per_neuron = 2 * std::max<int64_t>(d, 1) * int64_t(sizeof(T));
  min_neurons = std::max<int64_t>(min_neurons, 1);
  const int64_t chunk = std::max(kChunkPanelBytes / per_neuron / align * align, round_up(min_neurons, align));
  for (int64_t first = 0; first < m;) {
    const int64_t count = m - first - chunk < min_neurons ? m - first : chunk;
    body(FusedWeights<T>(args, A, first, count));
    first += count;
  }
}

// Rows [i0, i0 + rows) of x into buf, ld columns wide, zero-padded to rows_pad rows and ld columns.
template <typename T>
void copy_rows(const T* x, int64_t d, int64_t i0, int64_t rows, int64_t rows_pad, int64_t ld, T* buf) {
  std::fill(buf, buf + rows_pad * ld, T(0));
  for (int64_t i = 0; i < rows; ++i) std::copy_n(x + (i0 + i) * d, d, buf + i * ld);
}

// The instruction set's vector registers, for the register tiles: written with the intrinsics
// themselves, as GCC keeps arrays of at::vec::Vectorized in registers less reliably (it stored
// every accumulator to the stack at each step of the loop).
#if defined(CPU_CAPABILITY_AVX512)
template <typename T>
struct Reg;
template <>
struct Reg<float> {
  using R = __m512;
  static R zero() { return _mm512_setzero_ps(); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static R set1(float v) { return _mm512_set1_ps(v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static void store(R v, float* p) { _mm512_storeu_ps(p, v); }
  static void stream(R v, float* p) { _mm512_stream_ps(p, v); }  // p: 64-byte aligned
};
template <>
struct Reg<double> {
  using R = __m512d;
  static R zero() { return _mm512_setzero_pd(); }
  static R load(const double* p) { return _mm512_loadu_pd(p); }
  static R set1(double v) { return _mm512_set1_pd(v); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_pd(a, b, c); }
  static void store(R v, double* p) { _mm512_storeu_pd(p, v); }
  static void stream(R v, double* p) { _mm512_stream_pd(p, v); }  // p: 64-byte aligned
};
#elif defined(CPU_CAPABILITY_AVX2)
template <typename T>
struct Reg;
template <>
struct Reg<float> {
  using R = __m256;
  static R zero() { return _mm256_setzero_ps(); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static R set1(float v) { return _mm256_set1_ps(v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static void store(R v, float* p) { _mm256_storeu_ps(p, v); }
  static void stream(R v, float* p) { _mm256_stream_ps(p, v); }  // p: 32-byte aligned
};
template <>
struct Reg<double> {
  using R = __m256d;
  static R zero() { return _mm256_setzero_pd(); }
  static R load(const double* p) { return _mm256_loadu_pd(p); }
  static R set1(double v) { return _mm256_set1_pd(v); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_pd(a, b, c); }
  static void store(R v, double* p) { _mm256_storeu_pd(p, v); }
  static void stream(R v, double* p) { _mm256_stream_pd(p, v); }  // p: 32-byte aligned
};
#else
template <typename T>  // the portable build runs no fused kernel; this only keeps it compiling
struct Reg {
  using R = at::vec::Vectorized<T>;
  static R zero() { return R(T(0)); }
  static R load(const T* p) { return R::loadu(p); }
  static R set1(T v) { return R(v); }
  static R fma(R a, R b, R c) { return at::vec::fmadd(a, b, c); }
  static void store(R v, T* p) { v.store(p); }
  static void stream(R v, T* p) { v.store(p); }
};
#endif

// Orders this thread's non-temporal stores (Reg::stream) before what follows, such as the end of a
// parallel region after which other threads read what they wrote.
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// The register tile: z0 and u of kRows rows of x (stride ld) against one group panel.
template <typename T>
__attribute__((always_inline)) inline void dual_product(const T* x, int64_t ld, const T* panel, int64_t d,
                                                        RowPack<T>& z, RowPack<T>& u) {
  using G = Reg<T>;
  using R = typename G::R;
  constexpr int VL = at::vec::Vectorized<T>::size();
  R cz[kRows], cu[kRows];
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i) cz[i] = cu[i] = G::zero();
  for (int64_t k = 0; k < d; ++k) {
    const R w0 = G::load(panel + 2 * VL * k), w = G::load(panel + 2 * VL * k + VL);
#pragma GCC unroll 16
    for (int i = 0; i < kRows; ++i) {
      const R xi = G::set1(x[i * ld + k]);
      cz[i] = G::fma(xi, w0, cz[i]);
      cu[i] = G::fma(xi, w, cu[i]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i) {
    z.v[i] = at::vec::Vectorized<T>(cz[i]);
    u.v[i] = at::vec::Vectorized<T>(cu[i]);
  }
}

// The same, out of line: inlined into the backward's tile loop, which keeps more values live, the
// compiler gave the loop's 2 kRows accumulators one register too few and kept one on the stack (a
// store and reload per step, on the loop's critical path).
template <typename T>
__attribute__((noinline)) void dual_product_out_of_line(const T* x, int64_t ld, const T* panel, int64_t d,
                                                        RowPack<T>& z, RowPack<T>& u) {
  dual_product(x, ld, panel, d, z, u);
}

static_assert(kRows % kEpilogueRows == 0, "a tile is whole passes of the epilogue");

// f(e, z, u, s) for each pass of a tile: Packs of the kEpilogueRows rows from row e on.
template <typename T, typename F>
__attribute__((always_inline)) inline void for_each_epilogue_pass(const RowPack<T>& z, const RowPack<T>& u,
                                                                  const at::vec::Vectorized<T>& s, F&& f) {
  using P = Pack<T, kEpilogueRows>;
  static_for<kRows / kEpilogueRows>([&](auto pass) TN_LAMBDA_INLINE {
    constexpr int e = decltype(pass)::value * kEpilogueRows;
    P zp, up;
#pragma GCC unroll 8
    for (int i = 0; i < kEpilogueRows; ++i) zp.v[i] = z.v[e + i], up.v[i] = u.v[e + i];
    f(e, zp, up, P::rows(s));
  });
}

// f(e, h) for the tile's feature values h of rows e, e + 1, ... (a Pack of kEpilogueRows vectors
// per pass of a specialised epilogue; the plan's tables take the whole tile in one Pack, sharing
// their lookups).
template <int S, typename T, typename F>
__attribute__((always_inline)) inline void tile_feature_rows(const PlanView<T>& plan, const RowPack<T>& z,
                                                             const RowPack<T>& u, const at::vec::Vectorized<T>& s,
                                                             F&& f) {
  if constexpr (S >= 0) {
    for_each_epilogue_pass<T>(z, u, s, [&](int e, const auto& zp, const auto& up, const auto& sp) TN_LAMBDA_INLINE {
      f(e, spec_feature<S, std::decay_t<decltype(zp)>, VecMath<T, kEpilogueRows>>(zp, up, sp));
    });
  } else {
    f(0, feature<RowPack<T>, RowMath<T>>(plan, z, u, RowPack<T>::rows(s)));
  }
}

// The same for the value (NeedValue) and the derivatives: f(e, grads of rows e, e + 1, ...).
template <int S, bool NeedValue, bool NeedDz, typename T, typename F>
__attribute__((always_inline)) inline void tile_feature_grads_rows(const PlanView<T>& plan, const RowPack<T>& z,
                                                                   const RowPack<T>& u,
                                                                   const at::vec::Vectorized<T>& s, F&& f) {
  if constexpr (S >= 0) {
    for_each_epilogue_pass<T>(z, u, s, [&](int e, const auto& zp, const auto& up, const auto& sp) TN_LAMBDA_INLINE {
      f(e, spec_feature_grads<S, NeedValue, NeedDz, std::decay_t<decltype(zp)>, VecMath<T, kEpilogueRows>>(zp, up, sp));
    });
  } else {
    f(0, feature_grads<RowPack<T>, RowMath<T>>(plan, z, u, RowPack<T>::rows(s), NeedValue, NeedDz));
  }
}

// f(std::integral_constant<int, S>{}) with the epilogue of the call's series: float32 takes the
// series' specialised one where specialised.h has it (unless TAYLORNET_CPU_EPILOGUE=generic);
// float64, the reference precision, and every other series take the plan's tables.
template <typename T, typename F>
void with_tile_epilogue(const Plan& plan, F&& f) {
  if constexpr (std::is_same_v<T, float>) {
    if (!generic_epilogue_requested("TAYLORNET_CPU_EPILOGUE"))
      return with_epilogue(specialised_epilogue(plan.series), f);
  }
  f(std::integral_constant<int, kGenericEpilogue>{});
}

// z0 and u of one tile with the biases added; OutOfLine: see dual_product_out_of_line.
template <bool OutOfLine = false, typename T>
inline void tile_products(const FusedWeights<T>& f, const T* x, int64_t ld, int64_t g, RowPack<T>& z,
                          RowPack<T>& u) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int VL = Vec::size();
  if constexpr (OutOfLine) dual_product_out_of_line(x, ld, f.group_panel(g), f.d, z, u);
  else dual_product(x, ld, f.group_panel(g), f.d, z, u);
  if (f.has_b0) z = z + RowPack<T>::rows(Vec::loadu(f.b0.data() + g * VL));
  if (f.has_b) u = u + RowPack<T>::rows(Vec::loadu(f.b.data() + g * VL));
}

// acc[r][j] (r < Rows, j < NV vectors, stride ldacc) += sum_i S[i][r] * V[i][j], over `rows` rows of
// S (stride lds; each entry broadcast) and of V (stride ldv): the register kernel of the weight
// gradients, with V = G (lanes along neurons) or V = x (lanes along input dimensions).
// In the instruction set's registers (see Reg): with arrays of at::vec::Vectorized, GCC stored every
// accumulator to the stack at each step of the loop.
template <int Rows, int NV, typename T>
inline void outer_update(const T* S, int64_t lds, const T* V, int64_t ldv, int64_t rows, T* acc, int64_t ldacc) {
  using G = Reg<T>;
  using R = typename G::R;
  constexpr int VL = at::vec::Vectorized<T>::size();
  R c[Rows][NV];
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) c[r][j] = G::load(acc + r * ldacc + j * VL);
  for (int64_t i = 0; i < rows; ++i) {
    R v[NV];
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) v[j] = G::load(V + i * ldv + j * VL);
#pragma GCC unroll 16
    for (int r = 0; r < Rows; ++r) {
      const R s = G::set1(S[i * lds + r]);
#pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) c[r][j] = G::fma(s, v[j], c[r][j]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < Rows; ++r)
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) G::store(c[r][j], acc + r * ldacc + j * VL);
}

// accT (ld x width, row kk = input dimension kk) += x^T G over `rows` rows; ld is a multiple of kRows.
template <typename T>
void weight_grad_panel(const T* x, int64_t ld, const T* G, int64_t width, int64_t rows, T* accT) {
  constexpr int VL = at::vec::Vectorized<T>::size();
  for (int64_t k0 = 0; k0 < ld; k0 += kRows) {
    int64_t col = 0;
    for (; col + 2 * VL <= width; col += 2 * VL)
      outer_update<kRows, 2>(x + k0, ld, G + col, width, rows, accT + k0 * width + col, width);
    for (; col < width; col += VL)
      outer_update<kRows, 1>(x + k0, ld, G + col, width, rows, accT + k0 * width + col, width);
  }
}

// ---- taylor_features forward: h straight from the register tile into the output rows.

// With Saving, also dh/du into du and, when dz is not null, dh/dz0 into dz (rows of m like h).
template <int S, bool Saving, bool SavingDz, typename T>
void fused_features_forward_with(const Args& args, Tensor& out, T* du, T* dz, bool stream) {
  using V = RowPack<T>;
  using Vec = at::vec::Vectorized<T>;
  constexpr int VL = Vec::size();
  static_assert(kLineGroups<T> <= 2, "a run of groups is one or two tiles");
  const int64_t n = args.x.size(0), d = args.x.size(1), m = args.w.size(0);
  // 96 (AVX2) or 128 rows of x per pass over a block of up to 1024 neurons' weights: the weights
  // (beyond L2 for large m or d) come from L3 once per block of rows, half as often as with 48.
  // Past d = 256 (float32) a block holds fewer neurons, so that its panel stays within
  // kBlockPanelBytes (in runs of kLineGroups groups, which the stores below write together).
  const int64_t group_panel_bytes = 2 * std::max<int64_t>(d, 1) * VL * int64_t(sizeof(T));
  const int64_t block_rows = 16 * kRows;
  const int64_t block_groups = std::max<int64_t>(
      kLineGroups<T>, std::min<int64_t>(1024 / VL, kBlockPanelBytes / group_panel_bytes) / kLineGroups<T> * kLineGroups<T>);
  const int64_t nsb = ceil_div(n, block_rows);
  const auto coef = plan_coefficients<T>(*args.plan);
  const PlanView<T> plan = args.plan->view(coef.data());
  const T* x = args.x.const_data_ptr<T>();
  T* o = out.mutable_data_ptr<T>();
  // A chunk's tasks (a block of rows x a block of neurons) are shared among the threads: chunks of
  // whole blocks, enough of them for two tasks per thread.
  const int64_t block_neurons = block_groups * VL;
  const int64_t min_blocks = ceil_div(2 * at::get_num_threads(), std::max<int64_t>(nsb, 1));
  for_each_weight_chunk<T>(args, Tensor(), block_neurons, min_blocks * block_neurons, [&](const FusedWeights<T>& f) {
    const int64_t ngb = ceil_div(f.groups, block_groups);
    at::parallel_for(0, nsb * ngb, 1, [&](int64_t t0, int64_t t1) {
      std::vector<T> xb(block_rows * std::max<int64_t>(d, 1));
      int64_t loaded = -1;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t sb = t / ngb, gb = t % ngb;
        const int64_t i0 = sb * block_rows, rows = std::min(block_rows, n - i0);
        const int64_t rows_pad = round_up(rows, kRows);
        if (sb != loaded) {
          copy_rows(x, d, i0, rows, rows_pad, d, xb.data());
          loaded = sb;
        }
        const int64_t g_end = std::min(f.groups, (gb + 1) * block_groups);
        // Each tile of rows runs over the groups of one cache line (a run) before the next tile, so
        // that the rows' lines are written whole, one after the other.
        for (int64_t g0 = gb * block_groups; g0 < g_end; g0 += kLineGroups<T>) {
          const int64_t g1 = std::min(g_end, g0 + kLineGroups<T>);
          // The kept derivatives are read again only by the backward, after the layers above have
          // passed over more than the caches hold: streamed past the caches (where `stream`), they
          // neither evict h nor have their lines read for ownership first. Streamed, a line must be
          // written whole at once: written in two halves, a tile apart, it left the write-combining
          // buffer in parts and streaming cost 8-35 % more than ordinary stores (AVX2,
          // bench/bench_keep_derivatives.py). A run of two groups holds the first tile's derivatives
          // until the second's are at hand.
          const bool pair = stream && g1 - g0 == 2 && f.count(g0 + 1) == VL;
          for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
            V held_du, held_dz;
            for (int64_t g = g0; g < g1; ++g) {
              const int cnt = f.count(g);
              const Vec s = Vec::loadu(f.s.data() + g * VL);
              V z, u;
              tile_products(f, xb.data() + r0 * d, d, g, z, u);
              // Rows e, e + 1, ... of one group (a pass of the epilogue) into their rows of base,
              // streamed where a vector is a whole aligned line.
              const auto rows_into = [&](int e, const auto& v, T* base, bool streamed) TN_LAMBDA_INLINE {
                for (int i = 0; i < v.kVectors && r0 + e + i < rows; ++i) {
                  T* dst = base + (i0 + r0 + e + i) * m + f.first + g * VL;
                  if (cnt == VL && streamed && kLineGroups<T> == 1 && reinterpret_cast<uintptr_t>(dst) % 64 == 0) {
                    Reg<T>::stream(typename Reg<T>::R(v.v[i]), dst);
                  } else if (cnt == VL) {
                    v.v[i].store(dst);
                  } else {
                    v.v[i].store(dst, cnt);
                  }
                }
              };
              // The run's two groups into their rows, each row's line streamed whole where aligned.
              const auto pair_into = [&](int e, const V& first, const auto& second, T* base) TN_LAMBDA_INLINE {
                for (int i = 0; i < second.kVectors && r0 + e + i < rows; ++i) {
                  T* dst = base + (i0 + r0 + e + i) * m + f.first + g0 * VL;
                  if (reinterpret_cast<uintptr_t>(dst) % 64 == 0) {
                    Reg<T>::stream(typename Reg<T>::R(first.v[e + i]), dst);
                    Reg<T>::stream(typename Reg<T>::R(second.v[i]), dst + VL);
                  } else {
                    first.v[e + i].store(dst);
                    second.v[i].store(dst + VL);
                  }
                }
              };
              // Held for the run's second group: the first group's rows.
              const auto hold = [](int e, const auto& v, V& held) TN_LAMBDA_INLINE {
                for (int i = 0; i < v.kVectors; ++i) held.v[e + i] = v.v[i];
              };
              if constexpr (Saving) {
                tile_feature_grads_rows<S, true, SavingDz>(plan, z, u, s, [&](int e, const auto& dh) TN_LAMBDA_INLINE {
                  rows_into(e, dh.value, o, false);
                  if (pair && g == g0) {
                    hold(e, dh.du, held_du);
                    if constexpr (SavingDz) hold(e, dh.dz, held_dz);
                  } else if (pair) {
                    pair_into(e, held_du, dh.du, du);
                    if constexpr (SavingDz) pair_into(e, held_dz, dh.dz, dz);
                  } else {
                    rows_into(e, dh.du, du, stream);
                    if constexpr (SavingDz) rows_into(e, dh.dz, dz, stream);
                  }
                });
              } else {
                tile_feature_rows<S>(plan, z, u, s, [&](int e, const auto& h) TN_LAMBDA_INLINE { rows_into(e, h, o, false); });
              }
            }
          }
        }
      }
      if constexpr (Saving) stream_fence();
    });
  });
}

// h into out; with du (and dz), also dh/du (and dh/dz0) for the saving forward, streamed past the
// caches where `stream`.
template <typename T>
void fused_features_forward(const Args& args, Tensor& out, T* du, T* dz, bool stream) {
  with_tile_epilogue<T>(*args.plan, [&](auto e) {
    constexpr int S = decltype(e)::value;
    if (dz) fused_features_forward_with<S, true, true>(args, out, du, dz, stream);
    else if (du) fused_features_forward_with<S, true, false>(args, out, du, dz, stream);
    else fused_features_forward_with<S, false, false>(args, out, du, dz, stream);
  });
}

// ---- taylor_net forward: the readout contracted in registers, per row and output.

template <int S, typename T>
void fused_net_forward_block(const FusedWeights<T>& f, const PlanView<T>& plan, const T* x, T scale,
                             int64_t i0, int64_t rows, int64_t g0, int64_t g1, T* out, std::vector<T>& xb,
                             std::vector<at::vec::Vectorized<T>>& acc) {
  using V = RowPack<T>;
  using M = RowMath<T>;
  using Vec = at::vec::Vectorized<T>;
  constexpr int VL = Vec::size();
  const int64_t d = f.d, c = f.c, mp = f.padded();
  const int64_t rows_pad = round_up(rows, kRows);
  copy_rows(x, d, i0, rows, rows_pad, d, xb.data());
  std::fill(acc.begin(), acc.begin() + rows_pad * c, Vec(T(0)));
  for (int64_t g = g0; g < g1; ++g) {
    const Vec s = Vec::loadu(f.s.data() + g * VL);
    for (int64_t r0 = 0; r0 < rows_pad; r0 += kRows) {
      V z, u;
      tile_products(f, xb.data() + r0 * d, d, g, z, u);
      tile_feature_rows<S>(plan, z, u, s, [&](int e, const auto& h) TN_LAMBDA_INLINE {
        for (int64_t j = 0; j < c; ++j) {
          const Vec aj = Vec::loadu(f.a.data() + j * mp + g * VL);  // zero past m
          Vec* accj = acc.data() + (r0 + e) * c + j;
#pragma GCC unroll 16
          for (int i = 0; i < h.kVectors; ++i) accj[i * c] = at::vec::fmadd(h.v[i], aj, accj[i * c]);
        }
      });
    }
  }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < c; ++j) {
      const Vec v = acc[i * c + j];
      T lanes[VL];
      v.store(lanes);
      T sum = 0;
      for (T e : lanes) sum += e;
      out[(i0 + i) * c + j] += scale * sum;
    }
}

template <int S, typename T>
void fused_net_forward_with(const NetProblem<T>& p, Tensor& out) {
  const int64_t n = p.n, c = p.c;
  const int64_t block_rows = 16 * kRows;  // rows per pass over all weights (see the features forward)
  const int64_t threads = at::get_num_threads();
  const int64_t nsb = ceil_div(n, block_rows);
  const T* x = p.args.x.template const_data_ptr<T>();
  auto scratch = [&](std::vector<T>& xb, std::vector<at::vec::Vectorized<T>>& acc) {
    xb.resize(block_rows * std::max<int64_t>(p.d, 1));
    acc.resize(block_rows * c);
  };
  // Each chunk of neurons adds its share to every output; with few samples its neurons are split.
  const int64_t min_neurons = nsb >= threads ? 0 : threads * 2 * at::vec::Vectorized<T>::size();
  for_each_weight_chunk<T>(p.args, p.A[0], at::vec::Vectorized<T>::size(), min_neurons, [&](const FusedWeights<T>& f) {
    if (nsb >= threads || nsb >= f.groups) {
      // Workers own sample blocks and sweep the chunk's neurons.
      T* o = out.mutable_data_ptr<T>();
      at::parallel_for(0, nsb, 1, [&](int64_t b0, int64_t b1) {
        std::vector<T> xb;
        std::vector<at::vec::Vectorized<T>> acc;
        scratch(xb, acc);
        for (int64_t sb = b0; sb < b1; ++sb) {
          const int64_t i0 = sb * block_rows;
          fused_net_forward_block<S>(f, p.plan, x, p.scale[0], i0, std::min(block_rows, n - i0), 0, f.groups, o, xb,
                                     acc);
        }
      });
      return;
    }
    // Few samples: split the neurons, each worker sums into its own partial outputs.
    const int64_t workers = std::min(threads, f.groups);
    std::vector<Tensor> partial;
    for (int64_t w = 0; w < workers; ++w) partial.push_back(at::zeros({n, c}, p.args.x.options()));
    at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
      std::vector<T> xb;
      std::vector<at::vec::Vectorized<T>> acc;
      scratch(xb, acc);
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t g0 = f.groups * w / workers, g1 = f.groups * (w + 1) / workers;
        for (int64_t i0 = 0; i0 < n; i0 += block_rows)
          fused_net_forward_block<S>(f, p.plan, x, p.scale[0], i0, std::min(block_rows, n - i0), g0, g1,
                                     partial[w].template mutable_data_ptr<T>(), xb, acc);
      }
    });
    for (auto& t : partial) out.add_(t);
  });
}

template <typename T>
void fused_net_forward(const NetProblem<T>& p, Tensor& out) {
  with_tile_epilogue<T>(*p.args.plan, [&](auto e) { fused_net_forward_with<decltype(e)::value, T>(p, out); });
}

// ---- backward: dW, dW0, db, db0 and dA of the net (g = gout A) or of the features (g = grad_h).

template <typename T>
struct FusedGrads {
  // Per block of neurons (groups [g0, g0 + ng)): transposed weight gradients (ld x width), bias
  // gradient and dA accumulators (vectors), the panel of G and G0 (panel rows x width) and the
  // panel's scaled output cotangents gs (panel rows x c, zero on padding rows).
  int64_t width = 0, ld = 0;
  std::vector<T> dwT, dw0T, G, G0, xb, gs;
  std::vector<at::vec::Vectorized<T>> db, db0, da;
};

// The register tiles of one panel (rows p0 .. p0 + rows, padded to rows_pad) and the neuron groups
// [gb, gb + ng): the products, dL/dh and the epilogue's derivatives, then G = dL/dh dh/du and
// G0 = dL/dh dh/dz0 into the panels and the bias and dA sums into s. Without Full, only dh/du is
// computed (d/dz0 for dW0 and db0 and the value for dA not asked for), and a tile holds no more
// than that in registers: the common case, training W (and b).
template <int S, bool Full, typename T>
void backward_panel(const FusedWeights<T>& f, const NetProblem<T>& p, const Needs& needs, int64_t p0,
                    int64_t rows, int64_t rows_pad, int64_t gb, int64_t ng, int64_t ld, FusedGrads<T>& s) {
  using V = RowPack<T>;
  using Vec = at::vec::Vectorized<T>;
  constexpr int VL = Vec::size();
  const int64_t c = p.grad_h ? 0 : p.c, mp = f.padded(), width = ng * VL;
  const bool need_g = needs.w || needs.b, need_dz = needs.w0 || needs.b0, need_phi = needs.a;
  for (int64_t g = gb; g < gb + ng; ++g) {
    const int64_t col = (g - gb) * VL;
    const int cnt = f.count(g);
    const Vec sg = Vec::loadu(f.s.data() + g * VL);
    for (int64_t r0 = 0; r0 < rows_pad; r0 += kRows) {
      V z, u;
      tile_products<true>(f, s.xb.data() + r0 * ld, ld, g, z, u);
      // dL/dh of the tile's rows; zero on padding rows and neurons.
      V gh(T(0));
      if (p.grad_h) {
        for (int i = 0; i < kRows && r0 + i < rows; ++i) {
          const T* src = p.grad_h + (p0 + r0 + i) * p.m + f.first + g * VL;
          gh.v[i] = cnt == VL ? Vec::loadu(src) : Vec::loadu(src, cnt);
        }
      } else {
        const T* gs = s.gs.data() + r0 * c;
        for (int64_t j = 0; j < c; ++j) {
          const Vec aj = Vec::loadu(f.a.data() + j * mp + g * VL);  // zero past m
#pragma GCC unroll 16
          for (int i = 0; i < kRows; ++i) gh.v[i] = at::vec::fmadd(Vec(gs[i * c + j]), aj, gh.v[i]);
        }
      }
      // Per pass of the epilogue (rows e, e + 1, ...): the rows of v into the panel's columns of
      // this group, their sum into the bias sum.
      tile_feature_grads_rows<S, Full, Full>(p.plan, z, u, sg, [&](int e, const auto& dh) TN_LAMBDA_INLINE {
        constexpr int E = std::decay_t<decltype(dh.du)>::kVectors;
        const auto store_and_sum = [&](const auto& v, std::vector<T>& panel, Vec& bias_sum) TN_LAMBDA_INLINE {
          Vec sum(T(0));
#pragma GCC unroll 16
          for (int i = 0; i < E; ++i) {
            const Vec gv = gh.v[e + i] * v.v[i];
            gv.store(panel.data() + (r0 + e + i) * width + col);
            sum = sum + gv;
          }
          bias_sum = bias_sum + sum;
        };
        if (need_g) store_and_sum(dh.du, s.G, s.db[g - gb]);
        if (Full && need_dz) store_and_sum(dh.dz, s.G0, s.db0[g - gb]);
        if (Full && need_phi) {
          const T* gs = s.gs.data() + (r0 + e) * c;
          for (int64_t j = 0; j < c; ++j) {
            Vec acc = s.da[j * ng + (g - gb)];
            // real rows only: a padding row's value (z0 = b0) may overflow where no sample's does
            for (int i = 0; i < E && r0 + e + i < rows; ++i) acc = at::vec::fmadd(Vec(gs[i * c + j]), dh.value.v[i], acc);
            s.da[j * ng + (g - gb)] = acc;
          }
        }
      });
    }
  }
}

template <int S, typename T>
void fused_backward_block(const FusedWeights<T>& f, const NetProblem<T>& p, const T* gout, const Needs& needs,
                          int64_t i_begin, int64_t i_end, int64_t g0, int64_t g1, Targets& t) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int VL = Vec::size();
  const int64_t d = f.d, c = p.grad_h ? 0 : p.c, m = f.m;  // m: the chunk's neurons, from f.first
  const int64_t ld = round_up(std::max<int64_t>(d, 1), kRows);
  const int64_t panel_rows = 16 * kRows;
  const int64_t block_groups = std::max<int64_t>(1, 128 / VL);
  const bool need_g = needs.w || needs.b, need_dz = needs.w0 || needs.b0, need_phi = needs.a;
  const T* x = p.args.x.template const_data_ptr<T>();
  const T scale = p.scale[0];
  FusedGrads<T> s;
  s.xb.resize(panel_rows * ld);
  s.gs.resize(panel_rows * c);
  for (int64_t gb = g0; gb < g1; gb += block_groups) {
    const int64_t ng = std::min(block_groups, g1 - gb), width = ng * VL;
    if (needs.w) s.dwT.assign(ld * width, T(0));
    if (needs.w0) s.dw0T.assign(ld * width, T(0));
    if (need_g) s.G.assign(panel_rows * width, T(0));
    if (need_dz) s.G0.assign(panel_rows * width, T(0));
    s.db.assign(ng, Vec(T(0)));
    s.db0.assign(ng, Vec(T(0)));
    if (need_phi) s.da.assign(c * ng, Vec(T(0)));
    for (int64_t p0 = i_begin; p0 < i_end; p0 += panel_rows) {
      const int64_t rows = std::min(panel_rows, i_end - p0), rows_pad = round_up(rows, kRows);
      copy_rows(x, d, p0, rows, rows_pad, ld, s.xb.data());
      for (int64_t i = 0; i < rows_pad; ++i)
        for (int64_t j = 0; j < c; ++j) s.gs[i * c + j] = i < rows ? scale * gout[(p0 + i) * c + j] : T(0);
      if (need_dz || need_phi) backward_panel<S, true>(f, p, needs, p0, rows, rows_pad, gb, ng, ld, s);
      else backward_panel<S, false>(f, p, needs, p0, rows, rows_pad, gb, ng, ld, s);
      if (needs.w) weight_grad_panel(s.xb.data(), ld, s.G.data(), width, rows_pad, s.dwT.data());
      if (needs.w0) weight_grad_panel(s.xb.data(), ld, s.G0.data(), width, rows_pad, s.dw0T.data());
    }
    // Into the targets: transpose the block's weight gradients, add up the vector accumulators.
    const int64_t r_begin = gb * VL, r_end = std::min(m, (gb + ng) * VL);
    auto add_weight = [&](Tensor& dst, const std::vector<T>& srcT) {
      T* o = dst.mutable_data_ptr<T>() + f.first * d;
      for (int64_t r = r_begin; r < r_end; ++r)
        for (int64_t k = 0; k < d; ++k) o[r * d + k] += srcT[k * width + (r - r_begin)];
    };
    auto add_vec = [&](T* o, const Vec* v) {
      o += f.first;
      for (int64_t gi = 0; gi < ng; ++gi) {
        T lanes[VL];
        v[gi].store(lanes);
        for (int l = 0; l < VL && (gb + gi) * VL + l < m; ++l) o[(gb + gi) * VL + l] += lanes[l];
      }
    };
    if (needs.w) add_weight(t.dw, s.dwT);
    if (needs.w0) add_weight(t.dw0, s.dw0T);
    if (needs.b) add_vec(t.db.template mutable_data_ptr<T>(), s.db.data());
    if (needs.b0) add_vec(t.db0.template mutable_data_ptr<T>(), s.db0.data());
    if (need_phi)
      for (int64_t j = 0; j < c; ++j) add_vec(t.da[0].template mutable_data_ptr<T>() + j * p.m, s.da.data() + j * ng);
  }
}

// The parameter gradients by the fused kernels: workers own blocks of neurons and sweep all
// samples, or, with few neurons, own sample ranges and keep partial gradients.
template <int S, typename T>
void fused_param_grads_with(const NetProblem<T>& p, const std::vector<Tensor>& gout, const Needs& needs, Targets& t) {
  Needs params = needs;
  params.x = false;
  const T* go = p.grad_h ? nullptr : gout[0].template const_data_ptr<T>();
  const int64_t threads = at::get_num_threads();
  const int64_t VL = FusedWeights<T>::VL;
  const int64_t block_groups = std::max<int64_t>(1, 128 / VL);
  const int64_t nsb = ceil_div(p.n, 16 * kRows);
  // Chunks of at least a block of neurons per thread, so that a chunk is split like all of them.
  for_each_weight_chunk<T>(p.args, p.grad_h ? Tensor() : p.A[0], VL, threads * block_groups * VL,
                           [&](const FusedWeights<T>& f) {
    const int64_t nnb = ceil_div(f.groups, block_groups);
    if (nnb >= threads || nnb >= nsb) {
      at::parallel_for(0, nnb, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t nb = b0; nb < b1; ++nb)
          fused_backward_block<S>(f, p, go, params, 0, p.n, nb * block_groups,
                                  std::min(f.groups, (nb + 1) * block_groups), t);
      });
      return;
    }
    const int64_t workers = std::min(threads, nsb);
    std::vector<Targets> partial;
    for (int64_t w = 0; w < workers; ++w) partial.push_back(make_targets(p, params, true, false));
    at::parallel_for(0, workers, 1, [&](int64_t w0, int64_t w1) {
      for (int64_t w = w0; w < w1; ++w) {
        const int64_t i0 = p.n * w / workers, i1 = p.n * (w + 1) / workers;
        fused_backward_block<S>(f, p, go, params, i0, i1, 0, f.groups, partial[w]);
      }
    });
    for (auto& tw : partial) add_targets(t, tw);
  });
}

template <typename T>
void fused_param_grads(const NetProblem<T>& p, const std::vector<Tensor>& gout, const Needs& needs, Targets& t) {
  with_tile_epilogue<T>(*p.args.plan, [&](auto e) { fused_param_grads_with<decltype(e)::value, T>(p, gout, needs, t); });
}

template <typename T>
Grads net_backward_impl(const Args& args, bool moments, const std::vector<Tensor>& gout,
                        const Needs& needs, const Tensor& grad_h = Tensor()) {
  NetProblem<T> p(args, moments);
  if (grad_h.defined()) p.grad_h = grad_h.const_data_ptr<T>();
  const bool params = needs.w || needs.w0 || needs.b || needs.b0 || needs.a;
  Targets t = make_targets(p, needs, params, needs.x);
  const bool fused = !moments && fused_dim_ok(p.d) && (p.grad_h || p.c <= kFusedMaxOutputs);
  if (p.n > 0 && p.m > 0 && p.c > 0) {
    const int64_t threads = at::get_num_threads();
    const int64_t nsb = p.sample_blocks(), nnb = p.neuron_blocks();
    const int tiles = 2 + p.R;
    if (fused) {
      if (params) fused_param_grads(p, gout, needs, t);
      if (needs.x) {  // dX sums over neurons: BLAS tiles, workers owning sample blocks
        for_each_block(std::min(threads, nsb), nsb, [&](int64_t, int64_t sb) {
          Scratch<T> ws(p, tiles);
          const int64_t i0 = sb * p.NB, nb = std::min(p.NB, p.n - i0);
          for (int64_t r0 = 0; r0 < p.m; r0 += p.MB)
            backward_tile(p, ws, gout, needs, false, true, i0, nb, r0, std::min(p.MB, p.m - r0), t);
        });
      }
    } else if (nnb >= threads || nnb >= nsb) {
      // Parameter gradients: each worker owns whole neuron blocks and sweeps all samples.
      if (params) {
        for_each_block(std::min(threads, nnb), nnb, [&](int64_t, int64_t nbk) {
          Scratch<T> ws(p, tiles);
          const int64_t r0 = nbk * p.MB, mb = std::min(p.MB, p.m - r0);
          for (int64_t i0 = 0; i0 < p.n; i0 += p.NB)
            backward_tile(p, ws, gout, needs, true, false, i0, std::min(p.NB, p.n - i0), r0, mb, t);
        });
      }
      // dX sums over neurons: a second sweep with workers owning sample blocks.
      if (needs.x) {
        for_each_block(std::min(threads, nsb), nsb, [&](int64_t, int64_t sb) {
          Scratch<T> ws(p, tiles);
          const int64_t i0 = sb * p.NB, nb = std::min(p.NB, p.n - i0);
          for (int64_t r0 = 0; r0 < p.m; r0 += p.MB)
            backward_tile(p, ws, gout, needs, false, true, i0, nb, r0, std::min(p.MB, p.m - r0), t);
        });
      }
    } else {
      // Few neurons, many samples: one sweep, workers own sample blocks (and dX rows) and keep
      // partial parameter gradients, which are small here.
      const int64_t workers = std::min(threads, nsb);
      std::vector<Targets> partial;
      for (int64_t w = 0; w < workers; ++w) partial.push_back(make_targets(p, needs, params, false));
      for_each_block(workers, nsb, [&](int64_t w, int64_t sb) {
        Scratch<T> ws(p, tiles);
        Targets& tw = partial[w];
        tw.dx = t.dx;
        const int64_t i0 = sb * p.NB, nb = std::min(p.NB, p.n - i0);
        for (int64_t r0 = 0; r0 < p.m; r0 += p.MB)
          backward_tile(p, ws, gout, needs, params, needs.x, i0, nb, r0, std::min(p.MB, p.m - r0), tw);
      });
      for (auto& tw : partial) {
        tw.dx = Tensor();
        add_targets(t, tw);
      }
    }
  }
  Grads r;
  r.x = t.dx;
  r.w = t.dw;
  r.w0 = t.dw0;
  r.b = t.db;
  r.b0 = t.db0;
  if (needs.a) r.a = moments ? t.da[0] + 2 * p.A[0] * t.da[1] : t.da[0];
  return r;
}

// ---- taylor_features backward from the kept dh/du: dW = G^T x and db = sum_i G with
// G = grad * dh/du, for the common training case of W (and b) alone.
//
// Lanes run along the input dimensions: a register tile is 12 / NV neurons x NV vectors of dW's
// rows (NV <= kDimVecs; 12 accumulators, enough to cover the FMA latency), and each sample adds
// G[i][r] x[i] (a broadcast of G's entry and NV loads of x, shared by the tile's neurons) to it. G
// is formed per block of kSavedSamples samples x kSavedNeurons neurons in a buffer of the worker's
// and read there as broadcasts: grad and dh/du are read once, G is never written as an n x m tensor,
// and no BLAS product packs it again.
constexpr int kDimVecs = 4;
constexpr int kSavedTileAccumulators = 12;  // 12 / NV divides it for NV = 1 ... 4: G's rows are padded to it
constexpr int64_t kSavedNeurons = 96, kSavedSamples = 128;
static_assert(kSavedNeurons % kSavedTileAccumulators == 0, "a block of neurons holds whole tiles");
// The unit of the workers' shares of neurons: whole tiles, and shares whose rows of grad and dh/du
// start on a cache line where the rows do (with shares of 12 neurons, m = 4096 split at neuron 2052
// and the backward op ran 3-10 % slower at d = 32 and 64, m = 2048 and 4096).
constexpr int64_t kSavedShare = 48;
static_assert(kSavedShare % kSavedTileAccumulators == 0 && kSavedShare * sizeof(float) % 64 == 0,
              "a share holds whole tiles and starts on a cache line");
// The dW rows (kept in a worker's buffer, padded to dp numbers) of one chunk of a share: the blocks of
// a chunk's neurons are swept for each block of samples, so that the rows of grad and dh/du are read
// along their length rather than one block of neurons for every sample before the next block. One
// block of neurons at a time, each block read 384 bytes from each of 2 x 128 rows m numbers apart,
// each in its own 4 KiB page, and a sweep of 1024 samples touched 2048 pages (as many as a Zen 3's
// L2 TLB holds) before it came back to a page for the next block. Chunks of
// 128 KiB, a quarter of a Zen 3 L2, where the chunk's dW rows stay while its blocks pass: the
// backward op took 7-16 % less time than one block at a time at d = 16 and 32 with m = 1024 and
// 4096, 2-6 % less at m = 16384, 2-7 % at d = 64 and 0-4 % at 128 (n = 1024, AVX2, interleaved in
// one process, two runs); 256 KiB gained about as much, 32 or 64 KiB less. Past d = 170 in float32
// (85 in float64) a chunk is one block.
constexpr int64_t kSavedChunkBytes = int64_t(128) << 10;

// acc (neurons x dp) += G^T x over sb samples for the NV vectors of input dimensions from xt on.
template <int NV, typename T>
void saved_weight_tiles(const T* G, const T* xt, int64_t dp, int64_t sb, int64_t nb, T* acc) {
  constexpr int Rows = kSavedTileAccumulators / NV;
  static_assert(kSavedTileAccumulators % Rows == 0, "G's padding covers whole tiles");
  for (int64_t t = 0; t < nb; t += Rows) outer_update<Rows, NV>(G + t, kSavedNeurons, xt, dp, sb, acc + t * dp, dp);
}
// Largest d it takes; above, ATen's BLAS product of G's blocks is as fast or faster (the backward op,
// bench/bench_keep_derivatives.py --backward-only, n = 1024, m = 4096, silu, AVX-512: kernel
// 1.8-2.1x as fast as BLAS at d = 16 and 32, 1.2-1.3x at 128, 1.05x at 256; allowed at 512, 0.86x
// on AVX2).
constexpr int64_t kSavedMaxDim = 256;

template <typename T>
bool weight_grad_saved_impl(const Tensor& grad, const Tensor& du, const Tensor& x, Tensor& dw, Tensor& db) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int VL = Vec::size();
  const int64_t n = x.size(0), d = x.size(1), m = grad.size(1);
  const int64_t dp = round_up(d, VL);
  // x with its rows padded to whole vectors (zeros past d), unless they are whole already
  Tensor xp = x;
  if (dp != d) {
    xp = at::zeros({n, dp}, x.options());
    xp.narrow(1, 0, d).copy_(x);
  }
  const T* xd = xp.const_data_ptr<T>();
  const T* g = grad.const_data_ptr<T>();
  const T* u = du.const_data_ptr<T>();
  T* dwp = dw.mutable_data_ptr<T>();
  T* dbp = db.defined() ? db.mutable_data_ptr<T>() : nullptr;
  // Up to d = 128 the block's products are short and reading grad and dh/du bounds the kernel:
  // the next block's rows are prefetched while this one is formed. Into L2, not L1: a block's rows
  // of grad and dh/du (2 x 128 x 96 numbers, 96 KiB in float32) are more than L1 holds, so prefetched
  // there they evicted the block being read, and the prefetches waited on L1's miss buffers. Into L2
  // the backward op took 9-28 % less time than into L1 at d = 16 and 32, 0-11 % at 64 and 3-7 % at
  // 128, where prefetching into L1 had gained nothing (bench/bench_keep_derivatives.py
  // --backward-only, n = 1024, m = 4096, AVX-512; more on AVX2); at d = 256 neither changes the time.
  const bool prefetch_next = dp <= 128;
  // Each worker owns an equal share of the neurons and sweeps it in blocks of kSavedNeurons. With
  // whole blocks as the unit of work, m = 1024 made 11 blocks, 6 for one of two workers and 4 2/3
  // for the other; shares of kSavedShare neurons took 1-11 % off the backward op there (n = 1024,
  // d = 16 ... 64, interleaved in one process) and left m = 2048 and 4096 as they were (+-3 %).
  // A share is swept in chunks of neurons whose dW rows fill kSavedChunkBytes, samples outermost
  // within a chunk: each row of grad and dh/du is then read along its length, block after block.
  const int64_t units = ceil_div(m, kSavedShare);
  const int64_t chunk = std::max<int64_t>(1, kSavedChunkBytes / (dp * int64_t(sizeof(T))) / kSavedNeurons) * kSavedNeurons;
  at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
    const int64_t lo = u0 * kSavedShare, hi = std::min(m, u1 * kSavedShare);
    const int64_t width = std::min(chunk, round_up(hi - lo, kSavedNeurons));  // the widest chunk of this worker
    std::vector<T> G(kSavedSamples * kSavedNeurons), acc(width * dp), colsum(width);
    for (int64_t c0 = lo; c0 < hi; c0 += chunk) {
      const int64_t c1 = std::min(hi, c0 + chunk);
      std::fill(acc.begin(), acc.end(), T(0));
      std::fill(colsum.begin(), colsum.end(), T(0));
      for (int64_t i0 = 0; i0 < n; i0 += kSavedSamples) {
        const int64_t sb = std::min(kSavedSamples, n - i0);
        for (int64_t r0 = c0; r0 < c1; r0 += kSavedNeurons) {
          const int64_t nb = std::min(kSavedNeurons, c1 - r0);
          // the next block: the next neurons of these samples, else the chunk's first neurons in the
          // next samples, else the next chunk's first block
          int64_t next_i0 = i0, next_r0 = r0 + kSavedNeurons;
          if (next_r0 >= c1) {
            next_i0 = i0 + sb;
            next_r0 = c0;
            if (next_i0 >= n) {
              next_i0 = 0;
              next_r0 = c1;
            }
          }
          const int64_t next_sb = std::min(kSavedSamples, n - next_i0);
          const int64_t next_bytes = std::max<int64_t>(0, std::min(kSavedNeurons, hi - next_r0)) * int64_t(sizeof(T));
          const bool prefetch = prefetch_next && next_bytes > 0;
          for (int64_t i = 0; i < sb; ++i) {
            const T* gr = g + (i0 + i) * m + r0;
            const T* ur = u + (i0 + i) * m + r0;
            if (prefetch && i < next_sb) {
              const char* gn = reinterpret_cast<const char*>(g + (next_i0 + i) * m + next_r0);
              const char* un = reinterpret_cast<const char*>(u + (next_i0 + i) * m + next_r0);
              for (int64_t off = 0; off < next_bytes; off += 64) {
                __builtin_prefetch(gn + off, 0, 2);
                __builtin_prefetch(un + off, 0, 2);
              }
            }
            T* Gr = G.data() + i * kSavedNeurons;
            T* cs = colsum.data() + (r0 - c0);
            for_each_vector<T>(nb, [&](int64_t c, int cnt) {
              const Pack<T> v = load(gr + c, cnt) * load(ur + c, cnt);
              store(v, Gr + c, cnt);
              if (dbp) store(load(cs + c, cnt) + v, cs + c, cnt);
            });
            std::fill(Gr + nb, Gr + round_up(nb, kSavedTileAccumulators), T(0));
          }
          for (int64_t v0 = 0; v0 < dp; v0 += kDimVecs * VL) {
            const T* xt = xd + i0 * dp + v0;
            T* at = acc.data() + (r0 - c0) * dp + v0;
            switch (std::min<int64_t>(kDimVecs, (dp - v0) / VL)) {
              case 4: saved_weight_tiles<4>(G.data(), xt, dp, sb, nb, at); break;
              case 3: saved_weight_tiles<3>(G.data(), xt, dp, sb, nb, at); break;
              case 2: saved_weight_tiles<2>(G.data(), xt, dp, sb, nb, at); break;
              default: saved_weight_tiles<1>(G.data(), xt, dp, sb, nb, at); break;
            }
          }
        }
      }
      for (int64_t r = 0; r < c1 - c0; ++r) std::copy_n(acc.data() + r * dp, d, dwp + (c0 + r) * d);
      if (dbp) std::copy_n(colsum.data(), c1 - c0, dbp + c0);
    }
  });
  return true;
}

// ---------------------------------------------------------------------------------------------

#define TN_DISPATCH_FLOAT(dtype, name, ...)                                              \
  [&] {                                                                                  \
    if ((dtype) == at::kDouble) return name<double>(__VA_ARGS__);                        \
    TORCH_CHECK((dtype) == at::kFloat, "taylornet: CPU kernels support float32 and float64"); \
    return name<float>(__VA_ARGS__);                                                     \
  }()

Tensor features_forward(const Args& a) {
  return TN_DISPATCH_FLOAT(a.x.scalar_type(), features_forward_impl, a, false, false)[0];
}
std::vector<Tensor> features_forward_saving(const Args& a, bool need_dz) {
  return TN_DISPATCH_FLOAT(a.x.scalar_type(), features_forward_impl, a, true, need_dz);
}
Grads features_backward(const Args& a, const Tensor& grad, const Needs& needs) {
  return TN_DISPATCH_FLOAT(a.x.scalar_type(), net_backward_impl, a, false, {}, needs, grad);
}
std::vector<Tensor> net_forward(const Args& a, bool moments) {
  return TN_DISPATCH_FLOAT(a.x.scalar_type(), net_forward_impl, a, moments);
}
Grads net_backward(const Args& a, bool moments, const std::vector<Tensor>& grads, const Needs& needs) {
  return TN_DISPATCH_FLOAT(a.x.scalar_type(), net_backward_impl, a, moments, grads, needs);
}
// False where this build has no such kernel (the portable one) or d is beyond kSavedMaxDim.
bool weight_grad_saved(const Tensor& grad, const Tensor& du, const Tensor& x, Tensor& dw, Tensor& db) {
  if (!fused_dim_ok(x.size(1)) || x.size(1) > kSavedMaxDim) return false;
  return TN_DISPATCH_FLOAT(x.scalar_type(), weight_grad_saved_impl, grad, du, x, dw, db);
}

}  // namespace

const Kernels& kernels() {
  static const Kernels k{features_forward, features_forward_saving, features_backward, net_forward, net_backward,
                         weight_grad_saved, build_fused_max_dim};
  return k;
}

}  // namespace CPU_CAPABILITY
}  // namespace tn::cpu
