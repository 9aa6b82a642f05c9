// Device pieces shared by the SIMT kernels (simt.cuh) and the tensor-core kernels (tensor_cores.cuh):
// element conversions, the scalar math of the shared epilogue, in-kernel signs, and the fields of
// one (sample, neuron) element.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/taylor_cuda.h"
#include "taylornet/philox.h"

namespace tn::cuda {

constexpr int kThreads = 256;  // threads per block of every kernel

// A kernel's read-only struct parameter: __grid_constant__, so that device functions take it by
// reference (the out-of-line epilogue too) without a per-thread copy of the plan's tables into local
// memory. The CPU emulator's threads share one copy by reference, as the GPU's share the parameter
// space.
#ifdef TN_CUDA_EMULATOR
#define TN_PARAM(type) const type&
#else
#define TN_PARAM(type) const __grid_constant__ type
#endif

// ---- element conversions ----

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(acc_t<T> v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ double from_acc<double>(double v) { return v; }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// ---- scalar math for the shared epilogue (series.h / activations.h) ----

// CUDA's math headers overload ::exp, ::tanh, ... for float and double alike.
template <typename A>
struct DeviceMath {
  using V = A;
  // t = tanh z and s = 1 - t^2, as the CPU kernels compute them: for |z| >= 0.4 one exp gives
  // w = 2 / (exp(2|z|) + 1) = 1 - |t|, hence t and s = w (2 - w) without cancellation (and exactly
  // +-1 and 0 where exp overflows); below, where 1 - w would cancel, the odd series of tanh to z^13
  // (float: truncation below 2e-9 relative) or expm1 (double), and s = 1 - t^2.
  static __device__ __forceinline__ void tanh_sech2(V z, V& t, V& s) {
    const V a = ::fabs(z);
    if (a < V(0.4)) {
      if constexpr (sizeof(V) == 4) {
        const V z2 = z * z;
        V poly = V(21844.0 / 6081075.0);
        poly = ::fma(poly, z2, V(-1382.0 / 155925.0));
        poly = ::fma(poly, z2, V(62.0 / 2835.0));
        poly = ::fma(poly, z2, V(-17.0 / 315.0));
        poly = ::fma(poly, z2, V(2.0 / 15.0));
        poly = ::fma(poly, z2, V(-1.0 / 3.0));
        t = ::fma(z * z2, poly, z);
      } else {
        const V e = ::expm1(V(2) * z);
        t = e / (e + V(2));
      }
      s = V(1) - t * t;
    } else {
      const V w = V(2) / (::exp(V(2) * a) + V(1));
      t = ::copysign(V(1) - w, z);
      s = w * (V(2) - w);
    }
  }
  static __device__ __forceinline__ void sigmoid_pair(V z, V& p, V& q) {
    const V e = ::exp(-::fabs(z));
    const V r = V(1) / (V(1) + e);
    p = z < V(0) ? e * r : r;
    q = z < V(0) ? r : e * r;
  }
  static __device__ __forceinline__ V exp(V x) { return ::exp(x); }
  static __device__ __forceinline__ V log1p(V x) { return ::log1p(x); }
  static __device__ __forceinline__ V erf(V x) { return ::erf(x); }
  static __device__ __forceinline__ V erfc(V x) { return ::erfc(x); }
  static __device__ __forceinline__ V sin(V x) { return ::sin(x); }
  static __device__ __forceinline__ V cos(V x) { return ::cos(x); }
  static __device__ __forceinline__ V abs(V x) { return ::fabs(x); }
  static __device__ __forceinline__ V max0(V x) { return x > V(0) ? x : (x == x ? V(0) : x); }  // NaN stays
  static __device__ __forceinline__ V step(V x) { return x > V(0) ? V(1) : V(0); }
  static __device__ __forceinline__ V fma(V a, V b, V c) { return ::fma(a, b, c); }
};

template <typename T>
__device__ __forceinline__ acc_t<T> neuron_sign_of(const Problem<T>& p, int64_t r) {
  using Acc = acc_t<T>;
  if (p.signs) return to_acc(p.signs[r]);
  if (p.philox) return neuron_sign<Acc>(p.seed, p.offset, p.first + static_cast<uint64_t>(r));
  return Acc(1);
}

// N values in lock-step through the shared epilogue (series.h is generic in its value type, as the
// CPU's vector packs use it): the plan's row lists are walked once for all N, and the N independent
// chains of math give the scheduler instruction-level parallelism, which the tensor-core kernels
// (one block of 8 warps per SM) need.
template <typename A, int N>
struct Lanes {
  A v[N];
  Lanes() = default;  // uninitialized, like the basis arrays it fills
  __host__ __device__ Lanes(A x) {
#pragma unroll
    for (int l = 0; l < N; ++l) v[l] = x;
  }
#define TN_LANES_OP(op)                                                            \
  friend __host__ __device__ Lanes operator op(const Lanes& a, const Lanes& b) {   \
    Lanes r;                                                                       \
    _Pragma("unroll") for (int l = 0; l < N; ++l) r.v[l] = a.v[l] op b.v[l];       \
    return r;                                                                      \
  }
  TN_LANES_OP(+)
  TN_LANES_OP(-)
  TN_LANES_OP(*)
  TN_LANES_OP(/)
#undef TN_LANES_OP
};

template <typename A, int N>
struct LaneMath {
  using V = Lanes<A, N>;
  using S = DeviceMath<A>;
  static __device__ __forceinline__ void tanh_sech2(const V& z, V& t, V& s) {
#pragma unroll
    for (int l = 0; l < N; ++l) S::tanh_sech2(z.v[l], t.v[l], s.v[l]);
  }
  static __device__ __forceinline__ void sigmoid_pair(const V& z, V& p, V& q) {
#pragma unroll
    for (int l = 0; l < N; ++l) S::sigmoid_pair(z.v[l], p.v[l], q.v[l]);
  }
#define TN_LANES_FN(name)                                             \
  static __device__ __forceinline__ V name(const V& x) {              \
    V r;                                                              \
    _Pragma("unroll") for (int l = 0; l < N; ++l) r.v[l] = S::name(x.v[l]); \
    return r;                                                         \
  }
  TN_LANES_FN(exp)
  TN_LANES_FN(log1p)
  TN_LANES_FN(erf)
  TN_LANES_FN(erfc)
  TN_LANES_FN(sin)
  TN_LANES_FN(cos)
  TN_LANES_FN(abs)
  TN_LANES_FN(max0)
  TN_LANES_FN(step)
#undef TN_LANES_FN
  static __device__ __forceinline__ V fma(const V& a, const V& b, const V& c) {
    V r;
#pragma unroll
    for (int l = 0; l < N; ++l) r.v[l] = S::fma(a.v[l], b.v[l], c.v[l]);
    return r;
  }
};

// N (sample, neuron) elements for one epilogue call: indices, whether they lie in the problem, the
// pre-activations z (with b0) and u (with b), and the neuron's sign.
template <typename Acc, int N>
struct Elements {
  int64_t i[N], r[N];
  bool valid[N];
  Acc z[N], u[N], s[N];
};

// The requested fields of N elements; `want` is a bit mask of Fields, out[f][l] receives field f of
// element l (zero for elements outside the problem, so that padding never contributes).
// Not inlined: one copy of the whole epilogue per kernel keeps compile time and registers in check.
template <typename T, int N>
__device__ __noinline__ void fields_at(const Problem<T>& p, unsigned want, const Elements<acc_t<T>, N>& el,
                                       acc_t<T> (&out)[4][N]) {
  using Acc = acc_t<T>;
  using V = Lanes<Acc, N>;
  using M = LaneMath<Acc, N>;
  const bool grads = want & ((1u << kGradU) | (1u << kGradZ));
  const bool need_dz = want & (1u << kGradZ);
  V g0(Acc(0)), g1(Acc(0)), z, u, s;
  for (int l = 0; l < N; ++l) {
    z.v[l] = el.valid[l] ? el.z[l] : Acc(0);
    u.v[l] = el.valid[l] ? el.u[l] : Acc(0);
    s.v[l] = el.valid[l] ? el.s[l] : Acc(1);
    if (!grads || !el.valid[l]) continue;
    const int64_t i = el.i[l], r = el.r[l];
    if (p.gelem) {  // the features' own cotangent
      g0.v[l] = to_acc(p.gelem[i * p.m + r]);
      continue;
    }
    Acc a0 = Acc(0), a1 = Acc(0);  // g_rho = scale_rho * sum_j gout_rho[i][j] A_rho[j][r]
    for (int64_t j = 0; j < p.c; ++j) {
      const Acc aj = to_acc(p.a[j * p.m + r]);
      a0 = ::fma(to_acc(p.gout[0][i * p.c + j]), aj, a0);
      if (p.moments) a1 = ::fma(to_acc(p.gout[1][i * p.c + j]), aj * aj, a1);
    }
    g0.v[l] = a0 * p.scale[0];
    g1.v[l] = a1 * p.scale[1];
  }
  V f[4];
  if (p.moments) {
    const Moments<V> mo = moments<V, M>(p.plan, z, u, grads, need_dz);
    const V go = V(Acc(2)) * g1 * mo.o.value;
    f[kPhi0] = mo.e.value;
    f[kPhi1] = mo.o.value * mo.o.value;
    f[kGradU] = g0 * mo.e.du + go * mo.o.du;
    f[kGradZ] = g0 * mo.e.dz + go * mo.o.dz;
  } else if (grads) {
    const Grads<V> d = feature_grads<V, M>(p.plan, z, u, s, (want & 1u) != 0, need_dz);
    f[kPhi0] = d.value;
    f[kPhi1] = V(Acc(0));
    f[kGradU] = g0 * d.du;
    f[kGradZ] = g0 * d.dz;
  } else {
    f[kPhi0] = feature<V, M>(p.plan, z, u, s);
    f[kPhi1] = f[kGradU] = f[kGradZ] = V(Acc(0));
  }
#pragma unroll
  for (int q = 0; q < 4; ++q)
#pragma unroll
    for (int l = 0; l < N; ++l) out[q][l] = el.valid[l] ? f[q].v[l] : Acc(0);
}

// The factor of term t at (sample i, column col of the reduction): y_t, 1 in its ones column, 0 in
// the other term's columns. The caller checks i < n.
template <typename T>
__device__ __forceinline__ acc_t<T> sample_factor(const SampleSum<T>& s, int t, int64_t i, int64_t col) {
  const SampleTerm<T>& term = s.term[t];
  const int64_t k = col - s.first(t);
  if (k < 0 || k >= term.width()) return acc_t<T>(0);
  return k < term.ncols ? to_acc(term.y[i * term.ld_y + k]) : acc_t<T>(1);
}

// Adds the sum v of neuron r, column col of the reduction, to the output of the term it belongs to.
template <typename T>
__device__ __forceinline__ void sample_store(const SampleSum<T>& s, int64_t r, int64_t col, acc_t<T> v) {
  for (int t = 0; t < s.terms; ++t) {
    const SampleTerm<T>& term = s.term[t];
    const int64_t k = col - s.first(t);
    if (k < 0 || k >= term.width()) continue;
    if (k < term.ncols) atomicAdd(&term.out[r * term.ld_out + k], term.scale * v);
    else atomicAdd(&term.ones[r], term.scale * v);
  }
}

// Whether term t of s has columns in [c0, c0 + width).
template <typename T>
__device__ __forceinline__ bool term_in_tile(const SampleSum<T>& s, int t, int64_t c0, int64_t width) {
  return s.first(t) < c0 + width && c0 < s.first(t) + s.term[t].width();
}

// The tiles [begin, end) of the inner loop that split blockIdx.z takes.
__device__ __forceinline__ void inner_tile_range(int64_t tiles, int64_t per_split, int64_t& begin,
                                                 int64_t& end) {
  begin = static_cast<int64_t>(blockIdx.z) * per_split;
  end = begin + per_split < tiles ? begin + per_split : tiles;
}

// ---- launch geometry (host) ----

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A reduction kernel's grid: gx x gy output blocks, each inner loop of `tiles` tiles split about
// `splits` ways over grid.z (tiles_per_split each; the last split may take fewer).
struct SplitLaunch {
  dim3 grid;
  int64_t tiles_per_split;
};
inline SplitLaunch split_launch(int64_t gx, int64_t gy, int64_t tiles, int64_t splits) {
  const int64_t per = std::max<int64_t>(1, ceil_div(tiles, std::max<int64_t>(1, splits)));
  return {dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy),
               static_cast<unsigned>(std::max<int64_t>(1, ceil_div(tiles, per)))),
          per};
}

}  // namespace tn::cuda
