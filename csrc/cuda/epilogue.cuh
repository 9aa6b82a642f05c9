// The Taylor epilogue of the CUDA kernels: the fields of N (sample, neuron) elements at a time, in
// registers only (no array indexed at run time, no out-of-line call, hence no local memory).
//
// Two implementations of one interface (Epilogue<S>::fields):
//   - specialised (S >= 0): one series of kSpecialised, fixed at compile time. Its basis is a
//     register array with compile-time indices and its coefficients are immediates folded from
//     series.h's quantity_coef in constant evaluation; zero rows and terms vanish.
//   - generic (S = kGenericEpilogue): any plan. The coefficients come from the plan's tables in the
//     kernel parameters (warp-uniform constant-cache reads); the basis functions are produced in the
//     order the rows ask for them (rows list their basis functions in increasing order), from a
//     head of at most two functions and one or two geometric sequences, so that no basis array is
//     ever indexed.
// The math comes in as M (LaneMath of device.cuh: the library functions, exact for float64 and the
// float32 SIMT kernels; FastLaneMath below: the tensor-core kernels' branch-free approximations).
#pragma once

#include <cmath>
#include <type_traits>
#include <utility>

#include "cuda/device.cuh"
#include "taylornet/specialised.h"

namespace tn::cuda {

// ---- fast float math for the tensor-core epilogues ----

// 2^x and 1/x from the special function unit (ex2.approx.ftz.f32, rcp.approx.ftz.f32: at most 2 and
// 1 units in the last place by the PTX ISA; results below float's normal range flush to zero). The
// host pass (the CPU emulator) evaluates them exactly; tests/emulator measures the formulas below
// with the hardware's documented error injected.
__device__ __forceinline__ float fast_exp2(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return ::exp2f(x);
#endif
}
__device__ __forceinline__ float fast_rcp(float x) {
#if defined(__CUDA_ARCH__)
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return 1.0f / x;
#endif
}

// The fast formulas, written once for the device and for the host error measurement: E(x) = 2^x
// and R(x) = 1/x are passed in (the hardware's, or exact ones with an injected error).
struct FastFormulas {
  static constexpr float kLog2e = 1.4426950408889634f;
  // t = tanh z, s = 1 - t^2 without a branch: w = 2 / (e^{2|z|} + 1) = 1 - |t| gives t and
  // s = w (2 - w) without cancellation for |z| >= 0.4 (and exactly +-1 and 0 where e^{2|z|}
  // overflows); below, the odd series of tanh to z^13 (truncation under 2e-9 relative) and
  // s = 1 - t^2. Both are computed and one selected.
  template <typename E, typename R>
  static __host__ __device__ __forceinline__ void tanh_sech2(float z, float& t, float& s, E&& ex2, R&& rcp) {
    const float a = ::fabsf(z);
    const float w = 2.0f * rcp(ex2(a * (2.0f * kLog2e)) + 1.0f);
    const float z2 = z * z;
    float poly = 21844.0f / 6081075.0f;
    poly = ::fmaf(poly, z2, -1382.0f / 155925.0f);
    poly = ::fmaf(poly, z2, 62.0f / 2835.0f);
    poly = ::fmaf(poly, z2, -17.0f / 315.0f);
    poly = ::fmaf(poly, z2, 2.0f / 15.0f);
    poly = ::fmaf(poly, z2, -1.0f / 3.0f);
    const float ts = ::fmaf(z * z2, poly, z);
    const bool small = a < 0.4f;
    t = small ? ts : ::copysignf(1.0f - w, z);
    s = small ? ::fmaf(-ts, ts, 1.0f) : w * (2.0f - w);
  }
  // p = sigmoid z and q = 1 - p, each to full relative precision: e = e^{-|z|}, r = 1 / (1 + e).
  template <typename E, typename R>
  static __host__ __device__ __forceinline__ void sigmoid_pair(float z, float& p, float& q, E&& ex2, R&& rcp) {
    const float e = ex2(-::fabsf(z) * kLog2e);
    const float r = rcp(1.0f + e);
    p = z < 0.0f ? e * r : r;
    q = z < 0.0f ? r : e * r;
  }
  template <typename E>
  static __host__ __device__ __forceinline__ float exp(float x, E&& ex2) {
    return ex2(x * kLog2e);
  }
};

// sin and cos of float: a three-part Cody-Waite reduction by 2 pi (the first product exact for
// |x| < 2^18) and the special function unit's sine and cosine on [-pi, pi] (absolute error about
// 2^-21.4 there); no slow path, so no local memory.
__device__ __forceinline__ float reduce_2pi(float x) {
  const float k = ::rintf(x * 0.15915494309189535f);
  float r = ::fmaf(-k, 6.28125f, x);            // 2 pi = 6.28125 + c2 + c3: k * 6.28125 is exact
  r = ::fmaf(-k, 1.9353071693331003e-3f, r);    // c2 = float(2 pi - 6.28125)
  return ::fmaf(-k, 1.0253376273028358e-11f, r);  // c3 = float(2 pi - 6.28125 - c2)
}

struct FastMath {
  using V = float;
  static __device__ __forceinline__ void tanh_sech2(V z, V& t, V& s) {
    FastFormulas::tanh_sech2(z, t, s, fast_exp2, fast_rcp);
  }
  static __device__ __forceinline__ void sigmoid_pair(V z, V& p, V& q) {
    FastFormulas::sigmoid_pair(z, p, q, fast_exp2, fast_rcp);
  }
  static __device__ __forceinline__ V exp(V x) { return FastFormulas::exp(x, fast_exp2); }
  static __device__ __forceinline__ V log1p(V x) { return ::log1pf(x); }
  static __device__ __forceinline__ V erf(V x) { return ::erff(x); }
  static __device__ __forceinline__ V erfc(V x) { return ::erfcf(x); }
#if defined(__CUDA_ARCH__)
  static __device__ __forceinline__ V sin(V x) { return __sinf(reduce_2pi(x)); }
  static __device__ __forceinline__ V cos(V x) { return __cosf(reduce_2pi(x)); }
#else
  static __device__ __forceinline__ V sin(V x) { return ::sinf(reduce_2pi(x)); }
  static __device__ __forceinline__ V cos(V x) { return ::cosf(reduce_2pi(x)); }
#endif
  static __device__ __forceinline__ V abs(V x) { return ::fabsf(x); }
  static __device__ __forceinline__ V max0(V x) { return x > V(0) ? x : (x == x ? V(0) : x); }
  static __device__ __forceinline__ V step(V x) { return x > V(0) ? V(1) : V(0); }
  static __device__ __forceinline__ V fma(V a, V b, V c) { return ::fmaf(a, b, c); }
};

template <int N>
using FastLaneMath = LaneMath<float, N, FastMath>;

// ---- what an epilogue call computes ----

// The fields a kernel contracts (uniform over the launch): up to four of them leave the epilogue,
// as `pick` says (a reduction's terms in order; unused outputs repeat a field).
constexpr int kMaxPicks = 4;
struct Need {
  bool moments = false;  // the sign moments (e, o^2) instead of h
  bool grads = false;    // kGradU or kGradZ asked for
  bool value = false;    // kPhi0 / kPhi1 asked for
  bool dz = false;       // kGradZ asked for
  int pick[kMaxPicks] = {kPhi0, kPhi0, kPhi0, kPhi0};
};

__host__ __device__ inline Need need_of(unsigned want, bool moments, int pick0, int pick1, int pick2 = kPhi0,
                                        int pick3 = kPhi0) {
  Need n;
  n.moments = moments;
  n.grads = want & ((1u << kGradU) | (1u << kGradZ));
  n.value = want & ((1u << kPhi0) | (1u << kPhi1));
  n.dz = want & (1u << kGradZ);
  n.pick[0] = pick0;
  n.pick[1] = pick1;
  n.pick[2] = pick2;
  n.pick[3] = pick3;
  return n;
}

template <typename V>
__device__ __forceinline__ V select_field(int f, const V& phi0, const V& phi1, const V& du, const V& dz) {
  return f == kPhi0 ? phi0 : (f == kPhi1 ? phi1 : (f == kGradU ? du : dz));
}

// ---- the generic epilogue's basis ----

// g_j = head0 (j = 0 < start), head1 (j = 1 < start), else first * base^k * (z if in the second
// sequence) with k = j - start, or k = j - start - split in the second sequence (silu: z pq y^k).
template <typename V, typename M>
struct GenericBasis {
  V head0, head1, first, base, z;
  int start, split;
  // walking state: the power first * base^k reached so far
  V power;
  int k;

  __device__ __forceinline__ GenericBasis(Act act, int J, const V& x) : z(x), start(1), split(1 << 20), k(0) {
    head1 = first = base = V(0);
    // The sigmoid family's sequence p q y^k with y = p - q; returns p = sigmoid(x).
    auto sigmoid_sequence = [&] {
      V p, q;
      M::sigmoid_pair(x, p, q);
      first = p * q;
      base = p - q;
      return p;
    };
    switch (act) {
      case Act::kTanh: {
        M::tanh_sech2(x, head0, first);
        base = head0;
        break;
      }
      case Act::kSigmoid: head0 = sigmoid_sequence(); break;
      case Act::kSoftplus: {
        head0 = M::max0(x) + M::log1p(M::exp(V(0) - M::abs(x)));
        head1 = sigmoid_sequence();
        start = 2;
        break;
      }
      case Act::kSilu: {
        head0 = sigmoid_sequence();
        head1 = x * head0;
        start = 2;
        split = J / 2 - 1;
        break;
      }
      case Act::kGelu: {
        head0 = V(0.5) * M::erfc(x * V(-0.70710678118654752440));
        head1 = x * head0;
        first = V(0.39894228040143267794) * M::exp(V(-0.5) * x * x);
        base = x;
        start = 2;
        break;
      }
      case Act::kErf: {
        head0 = M::erf(x);
        first = M::exp(V(0) - x * x);
        base = x;
        break;
      }
      case Act::kExp: head0 = M::exp(x); break;
      case Act::kSin:
      case Act::kCos: {
        head0 = M::sin(x);
        head1 = M::cos(x);
        start = 2;
        break;
      }
      default: {  // the relu family: step(z) z^k
        first = M::step(x);
        base = x;
        start = 0;
        break;
      }
    }
    power = first;
  }

  // Starts a quantity: its rows ask for increasing j again.
  __device__ __forceinline__ void restart() {
    power = first;
    k = 0;
  }

  // g_j; within a quantity, j must not decrease (the plan's rows list their basis functions in
  // increasing order).
  __device__ __forceinline__ V at(int j) {
    if (j < start) return j == 0 ? head0 : head1;
    int want = j - start;
    const bool second = want >= split;
    if (second) want -= split;
    if (want < k) restart();  // the second sequence starts over from `first`
    for (; k < want; ++k) power = power * base;
    return second ? z * power : power;
  }
};

// ---- the epilogue ----

template <int S>
struct Epilogue {
  static constexpr bool kExact = S >= 0 && kSpecialised[S >= 0 ? S : 0].exact;
  // Fields of N elements: z (with b0), u (with b), their neuron's sign s, and g0, g1 the output
  // cotangents' sums g_rho = scale_rho sum_j gout_rho A_rho (or the features' own cotangent in g0);
  // out[k] receives field need.pick[k] for k < Outs.
  template <typename M, int Outs, typename A, int N>
  static __device__ __forceinline__ void fields(const PlanTables<A>& plan, const Need& need, const Lanes<A, N>& z,
                                                const Lanes<A, N>& u, const Lanes<A, N>& s, const Lanes<A, N>& g0,
                                                const Lanes<A, N>& g1, Lanes<A, N> (&out)[Outs]) {
    using V = Lanes<A, N>;
    const V zero(A(0));
    V phi0 = zero, phi1 = zero, du = zero, dz = zero;
    const bool exact = S >= 0 ? kExact : plan.exact;
    // quantity(basis, q, at): the specialised basis takes q at compile time
    auto basis_at = [&](const V& x) {
      if constexpr (S >= 0) return SpecBasis<S, V, M>(x);
      else return GenericBasis<V, M>(plan.act, plan.basis, x);
    };
    auto quantity = [&](auto& b, auto qc, const V& at) -> V {
      constexpr int q = decltype(qc)::value;
      if constexpr (S >= 0) {
        return b.template quantity<q>(at);
      } else {
        b.restart();
        V acc = zero;
        for (int row = plan.row_begin[q]; row < plan.row_begin[q + 1]; ++row) {
          const A* c = plan.coef + plan.row_off[row];
          int k = plan.row_deg[row];
          V poly(c[k]);
          while (--k >= 0) poly = M::fma(poly, at, V(c[k]));
          acc = M::fma(b.at(plan.row_j[row]), poly, acc);
        }
        return acc;
      }
    };
    using QH = std::integral_constant<int, kH>;
    using QHdv = std::integral_constant<int, kHdv>;
    using QHdz = std::integral_constant<int, kHdz>;
    if (need.moments) {
      Moments<V> mo;
      if (exact) {
        // h(+-) = sigma(z0 +- u), h'(+-) = sigma'(z0 +- u)
        auto bp = basis_at(z + u);
        const V hp = quantity(bp, QH{}, zero), dp = need.grads ? quantity(bp, QHdv{}, zero) : zero;
        auto bm = basis_at(z - u);
        const V hm = quantity(bm, QH{}, zero), dm = need.grads ? quantity(bm, QHdv{}, zero) : zero;
        mo = exact_moments(hp, hm, dp, dm);
      } else {
        auto b = basis_at(z);
        mo.e.value = quantity(b, std::integral_constant<int, kE>{}, u);
        mo.o.value = quantity(b, std::integral_constant<int, kO>{}, u);
        mo.e.du = mo.o.du = mo.e.dz = mo.o.dz = zero;
        if (need.grads) {
          mo.e.du = quantity(b, std::integral_constant<int, kEdu>{}, u);
          mo.o.du = quantity(b, std::integral_constant<int, kOdu>{}, u);
          if (need.dz) {
            mo.e.dz = quantity(b, std::integral_constant<int, kEdz>{}, u);
            mo.o.dz = quantity(b, std::integral_constant<int, kOdz>{}, u);
          }
        }
      }
      phi0 = mo.e.value;
      phi1 = mo.o.value * mo.o.value;
      if (need.grads) {
        const V go = V(A(2)) * g1 * mo.o.value;
        du = g0 * mo.e.du + go * mo.o.du;
        dz = g0 * mo.e.dz + go * mo.o.dz;
      }
    } else {
      const V v = s * u;
      auto b = basis_at(exact ? z + v : z);
      const V at = exact ? zero : v;
      if (need.value || !need.grads) phi0 = quantity(b, QH{}, at);
      if (need.grads) {
        const V hdu = s * quantity(b, QHdv{}, at);
        du = g0 * hdu;
        if (exact) dz = g0 * (hdu * s);
        else if (need.dz) dz = g0 * quantity(b, QHdz{}, at);
      }
    }
#pragma unroll
    for (int k = 0; k < Outs; ++k)
#pragma unroll
      for (int l = 0; l < N; ++l) out[k].v[l] = select_field(need.pick[k], phi0.v[l], phi1.v[l], du.v[l], dz.v[l]);
  }
};

}  // namespace tn::cuda
