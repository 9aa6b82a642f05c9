// Device pieces shared by the SIMT kernels (simt.cuh) and the tensor-core kernels (tensor_cores.cuh):
// element conversions, the scalar math of the epilogue (epilogue.cuh), in-kernel signs, the
// reductions' factors and stores, launch geometry.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/taylor_cuda.h"
#include "taylornet/philox.h"

namespace tn::cuda {

constexpr int kThreads = 256;  // threads per block of every kernel but the ping-pong one (wgmma.cuh)

// A kernel's read-only struct parameter: __grid_constant__, so that device functions take it by
// reference without a per-thread copy of the plan's tables into local memory. The CPU emulator's
// threads share one copy by reference, as the GPU's share the parameter space.
// TN_PARAM_TYPE: the same parameter in a pointer-to-kernel type.
#ifdef TN_CUDA_EMULATOR
#define TN_PARAM(type) const type&
#define TN_PARAM_TYPE(type) const type&
#else
#define TN_PARAM(type) const __grid_constant__ type
#define TN_PARAM_TYPE(type) type
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

// 1/x to the type's full precision for x >= 1 (or +inf: 0) without the IEEE division, whose rare
// cases run out of line (a call): the hardware's reciprocal estimate refined by Newton steps, each
// doubling its correct bits (float: 23 bits refined once; double: about 23 bits refined three times).
template <typename V>
__device__ __forceinline__ V reciprocal(V x) {
#if defined(__CUDA_ARCH__)
  V r;
  if constexpr (sizeof(V) == 4) {
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    r = ::fmaf(r, ::fmaf(-x, r, 1.0f), r);
  } else {
    asm("rcp.approx.ftz.f64 %0, %1;" : "=d"(r) : "d"(x));
#pragma unroll
    for (int k = 0; k < 3; ++k) r = ::fma(r, ::fma(-x, r, 1.0), r);
  }
  return ::isinf(x) ? V(0) : r;
#else
  return V(1) / x;
#endif
}

// sin and cos of double without the library's out-of-line slow path (a Payne-Hanek reduction
// through local memory for huge arguments): the argument reduced by pi/2 in three parts with fused
// multiply-adds (k pi/2 to about 160 bits), then fdlibm's minimax polynomials on [-pi/4, pi/4] and
// the quadrant by selects.
__host__ __device__ __forceinline__ void sincos_reduced(double x, double& s, double& c) {
  const double k = ::rint(x * 0.6366197723675814);
  double r = ::fma(-k, 1.5707963267948966, x);
  r = ::fma(-k, 6.123233995736766e-17, r);
  r = ::fma(-k, -1.4973849048591698e-33, r);
  const double z = r * r;
  double ps = 1.58969099521155010221e-10;
  ps = ::fma(ps, z, -2.50507602534068634195e-08);
  ps = ::fma(ps, z, 2.75573137070700676789e-06);
  ps = ::fma(ps, z, -1.98412698298579493134e-04);
  ps = ::fma(ps, z, 8.33333333332248946124e-03);
  ps = ::fma(ps, z, -1.66666666666666324348e-01);
  const double sr = ::fma(r * z, ps, r);
  double pc = -1.13596475577881948265e-11;
  pc = ::fma(pc, z, 2.08757232129817482790e-09);
  pc = ::fma(pc, z, -2.75573143513906633035e-07);
  pc = ::fma(pc, z, 2.48015872894767294178e-05);
  pc = ::fma(pc, z, -1.38888888888741095749e-03);
  pc = ::fma(pc, z, 4.16666666666666019037e-02);
  const double hz = 0.5 * z, w = 1.0 - hz;
  const double cr = w + (((1.0 - w) - hz) + z * z * pc);  // 1 - z/2 without losing 1 - w's rounding
  const int q = static_cast<int>(static_cast<long long>(k) & 3);
  s = q == 0 ? sr : (q == 1 ? cr : (q == 2 ? -sr : -cr));
  c = q == 0 ? cr : (q == 1 ? -sr : (q == 2 ? -cr : sr));
}

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
        t = e * reciprocal(e + V(2));
      }
      s = V(1) - t * t;
    } else {
      const V w = V(2) * reciprocal(::exp(V(2) * a) + V(1));
      t = ::copysign(V(1) - w, z);
      s = w * (V(2) - w);
    }
  }
  static __device__ __forceinline__ void sigmoid_pair(V z, V& p, V& q) {
    const V e = ::exp(-::fabs(z));
    const V r = reciprocal(V(1) + e);
    p = z < V(0) ? e * r : r;
    q = z < V(0) ? r : e * r;
  }
  static __device__ __forceinline__ V exp(V x) { return ::exp(x); }
  // double: log(1 + x) corrected by the rounding of 1 + x (the library's log1p divides, and its
  // division's rare cases run out of line); float's log1pf needs no division.
  static __device__ __forceinline__ V log1p(V x) {
    if constexpr (sizeof(V) == 8) {
      const V u = V(1) + x;
      return ::log(u) + (x - (u - V(1))) * reciprocal(u);
    } else {
      return ::log1p(x);
    }
  }
  static __device__ __forceinline__ V erf(V x) { return ::erf(x); }
  static __device__ __forceinline__ V erfc(V x) { return ::erfc(x); }
  // float through double: correctly rounded but for rare ties
  static __device__ __forceinline__ V sin(V x) {
    double s, c;
    sincos_reduced(static_cast<double>(x), s, c);
    return static_cast<V>(s);
  }
  static __device__ __forceinline__ V cos(V x) {
    double s, c;
    sincos_reduced(static_cast<double>(x), s, c);
    return static_cast<V>(c);
  }
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

// N values in lock-step through the epilogue (epilogue.cuh): the plan's rows are walked once for all
// N, and the N independent chains of math give the scheduler instruction-level parallelism.
template <typename A, int N>
struct Lanes {
  using value_type = A;
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

// The elementary functions of N lanes, lane by lane through the scalar math S.
template <typename A, int N, typename S = DeviceMath<A>>
struct LaneMath {
  using V = Lanes<A, N>;
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

// The factor of term t at (sample i, column k of the term): y_t, or 0 past its columns. The caller
// checks i < n.
template <typename T>
__device__ __forceinline__ acc_t<T> sample_factor(const SampleTerm<T>& term, int64_t i, int64_t k) {
  return k < term.ncols ? to_acc(term.y[i * term.ld_y + k]) : acc_t<T>(0);
}

// Column tile ct of a reduction over samples (tiles of `tile` columns): its term t and the term's
// first column k0 in it. Every term starts a tile of its own.
template <typename T>
__device__ __forceinline__ void sample_tile_of(const SampleSum<T>& s, int64_t ct, int tile, int& t, int64_t& k0) {
  int64_t first = 0;
  t = 0;
  k0 = 0;
  for (int k = 0; k < s.terms; ++k) {
    const int64_t count = SampleSum<T>::tiles_of(s.term[k].ncols, tile);
    if (ct >= first && ct < first + count) {
      t = k;
      k0 = (ct - first) * tile;
    }
    first += count;
  }
}

// Whether term t has a column tile in the group [g0, g1) of column tiles, or bias sums that
// group 0 takes: the block then needs its field.
template <typename T>
__device__ __forceinline__ bool sample_term_active(const SampleSum<T>& s, int t, int64_t g0, int64_t g1, int tile) {
  const int64_t first = s.first_tile(t, tile), count = SampleSum<T>::tiles_of(s.term[t].ncols, tile);
  return (first < g1 && g0 < first + count) || (g0 == 0 && s.term[t].ones != nullptr);
}

// The tiles [begin, end) of the inner loop that split blockIdx.z takes.
__device__ __forceinline__ void inner_tile_range(int64_t tiles, int64_t per_split, int64_t& begin,
                                                 int64_t& end) {
  begin = static_cast<int64_t>(blockIdx.z) * per_split;
  end = begin + per_split < tiles ? begin + per_split : tiles;
}

// Recomputations of the (sample, neuron) elements of a tile of `rows` samples from i0 and `cols`
// neurons from r0, counted by the CPU emulator (the elements inside the n x m problem, once per block
// and inner tile, by its thread 0), so that tests can assert how many passes over the n x m elements
// each op makes whatever its tiles. Compiled out of the device code.
#ifdef TN_CUDA_EMULATOR
#define TN_COUNT_RECOMPUTE(p, i0, r0, rows, cols) \
  tn_emu::count_recompute(((p).n - (i0) < (rows) ? (p).n - (i0) : (rows)) * ((p).m - (r0) < (cols) ? (p).m - (r0) : (cols)))
#else
#define TN_COUNT_RECOMPUTE(p, i0, r0, rows, cols) ((void)0)
#endif

// A write of shared memory through the generic proxy (a plain store, cp.async) that the
// asynchronous proxy (wgmma's operand reads) reads next: the CPU emulator records it and requires a
// fence.proxy.async of the writing thread before any wgmma reads those bytes. Compiled out of the
// device code.
#ifdef TN_CUDA_EMULATOR
#define TN_GENERIC_SMEM_WRITE(ptr, bytes) tn_emu::generic_smem_write(ptr, bytes)
#else
#define TN_GENERIC_SMEM_WRITE(ptr, bytes) ((void)0)
#endif

// The reductions' dynamic shared memory (their accumulators for a group of column tiles), sized at
// launch; the emulator hands each block a buffer of exactly that size.
#ifdef TN_CUDA_EMULATOR
#define TN_DYNAMIC_SMEM(name) unsigned char* const name = tn_emu::dynamic_smem()
#else
#define TN_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#endif

__host__ __device__ constexpr int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

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

// Column groups of a reduction: `tiles` column tiles (at least one group, even of none), each
// group's accumulators on chip: `fixed` bytes of shared memory plus `per_tile` per column tile,
// within `limit` (the GPU's opt-in maximum per block). The fewest groups that fit, of equal size
// but for the last; `fits` is false where not even one column tile fits.
struct ColumnGroups {
  bool fits = false;
  int64_t group_tiles = 0, groups = 0;
  size_t smem = 0;
};
inline ColumnGroups column_groups(int64_t tiles, int64_t fixed, int64_t per_tile, int64_t limit) {
  ColumnGroups g;
  const int64_t cap = (limit - fixed) / per_tile;
  if (cap < 1) return g;
  g.fits = true;
  g.groups = std::max<int64_t>(1, ceil_div(tiles, cap));
  g.group_tiles = ceil_div(tiles, g.groups);
  g.smem = static_cast<size_t>(fixed + g.group_tiles * per_tile);
  return g;
}

}  // namespace tn::cuda
