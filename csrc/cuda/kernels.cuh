// CUDA kernels of taylornet, templated on the storage type T; taylor_<dtype>.cu instantiate them.
//
// Every kernel recomputes its tile of pre-activations z0 = x w0^T + b0 and u = x w^T + b from
// x, w0, w in shared-memory chunks (a 16x16 thread block, each thread a TM x TM micro-tile of both
// z0 and u, so a neuron's pair meets in one thread's registers), applies the Taylor epilogue of
// taylornet/series.h in registers, and contracts the result on chip. No n x m buffer exists except
// the features op's own output.
//   neuron_sum: blocks own sample tiles, loop over neurons    -> readout, dX
//   sample_sum: blocks own neuron tiles, loop over samples    -> dW, dW0, db, db0, dA
// Either loop can be split over blockIdx.z for parallelism, the partial sums meeting in atomics.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/taylor_cuda.h"
#include "taylornet/philox.h"

namespace tn::cuda {

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
  static __device__ __forceinline__ void tanh_sech2(V z, V& t, V& s) {
    const V a = ::fabs(z);
    t = ::tanh(z);
    if (a < V(0.4)) {
      s = V(1) - t * t;
    } else {  // 1 - |t| = w = 2 / (exp(2|z|) + 1), without cancellation
      const V w = V(2) / (::exp(V(2) * a) + V(1));
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

// ---- tiling ----

constexpr int kThreads = 256;  // 16 x 16
constexpr int kChunk = 16;     // reduction chunk over d

// Micro-tile edge: 4 x 4 (tile 64) for float accumulation, 2 x 2 (tile 32) for double, which keeps
// the shared memory of every kernel under the 48 KiB static limit.
template <typename Acc>
__host__ __device__ constexpr int micro_tile() { return sizeof(Acc) == 4 ? 4 : 2; }
template <typename Acc>
__host__ __device__ constexpr int tile() { return 16 * micro_tile<Acc>(); }

template <typename Acc>
struct Smem {
  static constexpr int B = tile<Acc>();
  Acc xs[kChunk * B], w0s[kChunk * B], ws[kChunk * B];  // k-major chunks of x, w0, w
  Acc fs[B * B];                                        // the contracted field F
  Acc ys[B * B];                                        // the other factor (Z or Y chunk)
};

// z0[a][b], u[a][b] for sample i0 + ty + 16a and neuron r0 + tx + 16b (biases not added).
template <typename T>
__device__ void preactivations(const Problem<T>& p, int64_t i0, int64_t r0, Smem<acc_t<T>>& sm,
                               acc_t<T> (&z0)[micro_tile<acc_t<T>>()][micro_tile<acc_t<T>>()],
                               acc_t<T> (&u)[micro_tile<acc_t<T>>()][micro_tile<acc_t<T>>()]) {
  using Acc = acc_t<T>;
  constexpr int TM = micro_tile<Acc>(), B = tile<Acc>();
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int a = 0; a < TM; ++a)
#pragma unroll
    for (int b = 0; b < TM; ++b) z0[a][b] = u[a][b] = Acc(0);
  for (int64_t k0 = 0; k0 < p.d; k0 += kChunk) {
    for (int e = threadIdx.x; e < B * kChunk; e += kThreads) {
      const int row = e % B, k = e / B;
      const int64_t kk = k0 + k;
      const bool kin = kk < p.d;
      const int64_t i = i0 + row, r = r0 + row;
      sm.xs[k * B + row] = (kin && i < p.n) ? to_acc(p.x[i * p.d + kk]) : Acc(0);
      sm.w0s[k * B + row] = (kin && r < p.m) ? to_acc(p.w0[r * p.d + kk]) : Acc(0);
      sm.ws[k * B + row] = (kin && r < p.m) ? to_acc(p.w[r * p.d + kk]) : Acc(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kChunk; ++k) {
      Acc xa[TM], wa0[TM], wa[TM];
#pragma unroll
      for (int a = 0; a < TM; ++a) xa[a] = sm.xs[k * B + ty + 16 * a];
#pragma unroll
      for (int b = 0; b < TM; ++b) {
        wa0[b] = sm.w0s[k * B + tx + 16 * b];
        wa[b] = sm.ws[k * B + tx + 16 * b];
      }
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int b = 0; b < TM; ++b) {
          z0[a][b] = ::fma(xa[a], wa0[b], z0[a][b]);
          u[a][b] = ::fma(xa[a], wa[b], u[a][b]);
        }
    }
    __syncthreads();
  }
}

template <typename T>
__device__ __forceinline__ acc_t<T> neuron_sign_of(const Problem<T>& p, int64_t r) {
  using Acc = acc_t<T>;
  if (p.signs) return to_acc(p.signs[r]);
  if (p.philox) return neuron_sign<Acc>(p.seed, p.offset, p.first + static_cast<uint64_t>(r));
  return Acc(1);
}

// The requested fields at one valid (sample i, neuron r), from the pre-activations z (with b0) and
// u (with b). `want` is a bit mask of Fields; out[f] receives field f.
// Not inlined: one copy of the whole epilogue per kernel keeps compile time and registers in check.
template <typename T>
__device__ __noinline__ void fields_at(const Problem<T>& p, unsigned want, int64_t i, int64_t r, acc_t<T> z,
                          acc_t<T> u, acc_t<T> s, acc_t<T> (&out)[4]) {
  using Acc = acc_t<T>;
  using M = DeviceMath<Acc>;
  const bool grads = want & ((1u << kGradU) | (1u << kGradZ));
  const bool need_dz = want & (1u << kGradZ);
  Acc g[2] = {Acc(0), Acc(0)};
  if (grads) {  // g_rho = scale_rho * sum_j gout_rho[i][j] A_rho[j][r]
    for (int64_t j = 0; j < p.c; ++j) {
      const Acc aj = to_acc(p.a[j * p.m + r]);
      g[0] = ::fma(to_acc(p.gout[0][i * p.c + j]), aj, g[0]);
      if (p.moments) g[1] = ::fma(to_acc(p.gout[1][i * p.c + j]), aj * aj, g[1]);
    }
    g[0] *= p.scale[0];
    g[1] *= p.scale[1];
  }
  if (p.moments) {
    const Moments<Acc> mo = moments<Acc, M>(p.plan, z, u, grads, need_dz);
    out[kPhi0] = mo.e.value;
    out[kPhi1] = mo.o.value * mo.o.value;
    const Acc go = Acc(2) * g[1] * mo.o.value;
    out[kGradU] = g[0] * mo.e.du + go * mo.o.du;
    out[kGradZ] = g[0] * mo.e.dz + go * mo.o.dz;
  } else if (grads) {
    const Grads<Acc> d = feature_grads<Acc, M>(p.plan, z, u, s, (want & 1u) != 0, need_dz);
    out[kPhi0] = d.value;
    out[kPhi1] = Acc(0);
    out[kGradU] = g[0] * d.du;
    out[kGradZ] = g[0] * d.dz;
  } else {
    out[kPhi0] = feature<Acc, M>(p.plan, z, u, s);
    out[kPhi1] = out[kGradU] = out[kGradZ] = Acc(0);
  }
}

// Fields over the thread's micro-tile; zero outside the problem so that padding never contributes.
template <typename T, int TM>
__device__ void tile_fields(const Problem<T>& p, unsigned want, int64_t i0, int64_t r0,
                            acc_t<T> (&z0)[TM][TM], acc_t<T> (&u)[TM][TM],
                            acc_t<T> (&f)[4][TM][TM]) {
  using Acc = acc_t<T>;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int b = 0; b < TM; ++b) {
    const int64_t r = r0 + tx + 16 * b;
    const bool rin = r < p.m;
    const Acc s = rin ? neuron_sign_of(p, r) : Acc(1);
    const Acc b0 = (rin && p.b0) ? to_acc(p.b0[r]) : Acc(0);
    const Acc bb = (rin && p.b) ? to_acc(p.b[r]) : Acc(0);
#pragma unroll
    for (int a = 0; a < TM; ++a) {
      const int64_t i = i0 + ty + 16 * a;
      Acc v[4] = {Acc(0), Acc(0), Acc(0), Acc(0)};
      if (rin && i < p.n) fields_at(p, want, i, r, z0[a][b] + b0, u[a][b] + bb, s, v);
#pragma unroll
      for (int q = 0; q < 4; ++q) f[q][a][b] = v[q];
    }
  }
}

// ---- kernels ----
// The tiles [begin, end) of the inner loop that split blockIdx.z takes.
__device__ __forceinline__ void inner_tile_range(int64_t tiles, int64_t per_split, int64_t& begin,
                                                 int64_t& end) {
  begin = static_cast<int64_t>(blockIdx.z) * per_split;
  end = begin + per_split < tiles ? begin + per_split : tiles;
}


template <typename T>
__global__ void __launch_bounds__(kThreads) features_forward_kernel(Problem<T> p, T* out) {
  using Acc = acc_t<T>;
  constexpr int TM = micro_tile<Acc>(), B = tile<Acc>();
  __shared__ Smem<Acc> sm;
  // Neuron tiles on grid.x, whose limit is 2^31 - 1 rather than 65535: widths reach 2^24 and beyond.
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * B, i0 = static_cast<int64_t>(blockIdx.y) * B;
  Acc z0[TM][TM], u[TM][TM], f[4][TM][TM];
  preactivations(p, i0, r0, sm, z0, u);
  tile_fields<T, TM>(p, 1u << kPhi0, i0, r0, z0, u, f);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int a = 0; a < TM; ++a)
#pragma unroll
    for (int b = 0; b < TM; ++b) {
      const int64_t i = i0 + ty + 16 * a, r = r0 + tx + 16 * b;
      if (i < p.n && r < p.m) out[i * p.m + r] = from_acc<T>(f[kPhi0][a][b]);
    }
}

// Features backward: p.gout[0] is the (n, m) cotangent; fields use c = 1 per element, so the
// cotangent enters as g directly.
template <typename T>
__global__ void __launch_bounds__(kThreads) features_grads_kernel(Problem<T> p, const T* grad, T* G,
                                                                   T* G0) {
  using Acc = acc_t<T>;
  using M = DeviceMath<Acc>;
  constexpr int TM = micro_tile<Acc>(), B = tile<Acc>();
  __shared__ Smem<Acc> sm;
  // Neuron tiles on grid.x, whose limit is 2^31 - 1 rather than 65535: widths reach 2^24 and beyond.
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * B, i0 = static_cast<int64_t>(blockIdx.y) * B;
  Acc z0[TM][TM], u[TM][TM];
  preactivations(p, i0, r0, sm, z0, u);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int b = 0; b < TM; ++b) {
    const int64_t r = r0 + tx + 16 * b;
    if (r >= p.m) continue;
    const Acc s = neuron_sign_of(p, r);
    const Acc b0 = p.b0 ? to_acc(p.b0[r]) : Acc(0);
    const Acc bb = p.b ? to_acc(p.b[r]) : Acc(0);
#pragma unroll
    for (int a = 0; a < TM; ++a) {
      const int64_t i = i0 + ty + 16 * a;
      if (i >= p.n) continue;
      const Grads<Acc> d = feature_grads<Acc, M>(p.plan, z0[a][b] + b0, u[a][b] + bb, s, false, G0 != nullptr);
      const Acc g = to_acc(grad[i * p.m + r]);
      G[i * p.m + r] = from_acc<T>(g * d.du);
      if (G0) G0[i * p.m + r] = from_acc<T>(g * d.dz);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) neuron_sum_kernel(Problem<T> p, NeuronSum<T> s,
                                                               int64_t tiles_per_split) {
  using Acc = acc_t<T>;
  constexpr int TM = micro_tile<Acc>(), B = tile<Acc>();
  __shared__ Smem<Acc> sm;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * B, c0 = static_cast<int64_t>(blockIdx.y) * B;
  int64_t t_begin, t_end;
  inner_tile_range((p.m + B - 1) / B, tiles_per_split, t_begin, t_end);
  unsigned want = 0;
  for (int t = 0; t < s.terms; ++t) want |= 1u << s.field[t];
  Acc acc[2][TM][TM];
#pragma unroll
  for (int t = 0; t < 2; ++t)
#pragma unroll
    for (int a = 0; a < TM; ++a)
#pragma unroll
      for (int b = 0; b < TM; ++b) acc[t][a][b] = Acc(0);
  for (int64_t rt = t_begin; rt < t_end; ++rt) {
    const int64_t r0 = rt * B;
    Acc z0[TM][TM], u[TM][TM], f[4][TM][TM];
    preactivations(p, i0, r0, sm, z0, u);
    tile_fields<T, TM>(p, want, i0, r0, z0, u, f);
    for (int t = 0; t < s.terms; ++t) {
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int b = 0; b < TM; ++b) sm.fs[(ty + 16 * a) * B + tx + 16 * b] = f[s.field[t]][a][b];
      for (int e = threadIdx.x; e < B * B; e += kThreads) {
        const int r = e / B, col = e % B;
        const int64_t rr = r0 + r, cc = c0 + col;
        Acc zv = Acc(0);
        if (rr < p.m && cc < s.ncols) zv = to_acc(s.z[t][rr * s.z_row[t] + cc * s.z_col[t]]);
        sm.ys[r * B + col] = s.square[t] ? zv * zv : zv;
      }
      __syncthreads();
      for (int r = 0; r < B; ++r) {
        Acc fa[TM];
#pragma unroll
        for (int a = 0; a < TM; ++a) fa[a] = sm.fs[(ty + 16 * a) * B + r];
#pragma unroll
        for (int b = 0; b < TM; ++b) {
          const Acc zb = sm.ys[r * B + tx + 16 * b];
#pragma unroll
          for (int a = 0; a < TM; ++a) acc[t][a][b] = ::fma(fa[a], zb, acc[t][a][b]);
        }
      }
      __syncthreads();
    }
  }
  for (int t = 0; t < s.terms; ++t)
#pragma unroll
    for (int a = 0; a < TM; ++a)
#pragma unroll
      for (int b = 0; b < TM; ++b) {
        const int64_t i = i0 + ty + 16 * a, col = c0 + tx + 16 * b;
        if (i < p.n && col < s.ncols) atomicAdd(&s.out[t][i * s.ld_out + col], s.scale[t] * acc[t][a][b]);
      }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_sum_kernel(Problem<T> p, SampleSum<T> s,
                                                               int64_t tiles_per_split) {
  using Acc = acc_t<T>;
  constexpr int TM = micro_tile<Acc>(), B = tile<Acc>();
  __shared__ Smem<Acc> sm;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * B, c0 = static_cast<int64_t>(blockIdx.y) * B;
  int64_t t_begin, t_end;
  inner_tile_range((p.n + B - 1) / B, tiles_per_split, t_begin, t_end);
  Acc acc[TM][TM];  // rows: neurons r0 + ty + 16a; columns c0 + tx + 16b
#pragma unroll
  for (int a = 0; a < TM; ++a)
#pragma unroll
    for (int b = 0; b < TM; ++b) acc[a][b] = Acc(0);
  for (int64_t it = t_begin; it < t_end; ++it) {
    const int64_t i0 = it * B;
    Acc z0[TM][TM], u[TM][TM], f[4][TM][TM];
    preactivations(p, i0, r0, sm, z0, u);
    tile_fields<T, TM>(p, 1u << s.field, i0, r0, z0, u, f);
#pragma unroll
    for (int a = 0; a < TM; ++a)
#pragma unroll
      for (int b = 0; b < TM; ++b) sm.fs[(ty + 16 * a) * B + tx + 16 * b] = f[s.field][a][b];  // [i][r]
    for (int e = threadIdx.x; e < B * B; e += kThreads) {
      const int i = e / B, col = e % B;
      const int64_t ii = i0 + i, cc = c0 + col;
      Acc yv = Acc(0);
      if (ii < p.n && cc < s.ncols) yv = s.y ? to_acc(s.y[ii * s.ld_y + cc]) : Acc(1);
      sm.ys[i * B + col] = yv;
    }
    __syncthreads();
    for (int i = 0; i < B; ++i) {
      Acc fr[TM];
#pragma unroll
      for (int a = 0; a < TM; ++a) fr[a] = sm.fs[i * B + ty + 16 * a];
#pragma unroll
      for (int b = 0; b < TM; ++b) {
        const Acc yb = sm.ys[i * B + tx + 16 * b];
#pragma unroll
        for (int a = 0; a < TM; ++a) acc[a][b] = ::fma(fr[a], yb, acc[a][b]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int a = 0; a < TM; ++a)
#pragma unroll
    for (int b = 0; b < TM; ++b) {
      const int64_t r = r0 + ty + 16 * a, col = c0 + tx + 16 * b;
      if (r < p.m && col < s.ncols) atomicAdd(&s.out[r * s.ld_out + col], s.scale * acc[a][b]);
    }
}

// ---- launchers ----

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Splits of the inner loop so that the grid fills the device (about 4 blocks per SM).
inline int64_t inner_splits(int64_t outer_blocks, int64_t inner_tiles) {
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t want = ceil_div(4 * static_cast<int64_t>(sms), std::max<int64_t>(outer_blocks, 1));
  return std::max<int64_t>(1, std::min(want, inner_tiles));
}

template <typename T>
void features_forward(const Problem<T>& p, T* out, cudaStream_t stream) {
  constexpr int B = tile<acc_t<T>>();
  const dim3 grid(ceil_div(p.m, B), ceil_div(p.n, B));
  features_forward_kernel<T><<<grid, kThreads, 0, stream>>>(p, out);
}

template <typename T>
void features_grads(const Problem<T>& p, const T* grad, T* G, T* G0, cudaStream_t stream) {
  constexpr int B = tile<acc_t<T>>();
  const dim3 grid(ceil_div(p.m, B), ceil_div(p.n, B));
  features_grads_kernel<T><<<grid, kThreads, 0, stream>>>(p, grad, G, G0);
}

template <typename T>
void neuron_sum(const Problem<T>& p, const NeuronSum<T>& s, cudaStream_t stream) {
  constexpr int B = tile<acc_t<T>>();
  const int64_t gx = ceil_div(p.n, B), gy = ceil_div(s.ncols, B), tiles = ceil_div(p.m, B);
  const int64_t splits = inner_splits(gx * gy, tiles);
  const int64_t per = ceil_div(tiles, splits);
  const dim3 grid(gx, gy, ceil_div(tiles, per));
  neuron_sum_kernel<T><<<grid, kThreads, 0, stream>>>(p, s, per);
}

template <typename T>
void sample_sum(const Problem<T>& p, const SampleSum<T>& s, cudaStream_t stream) {
  constexpr int B = tile<acc_t<T>>();
  const int64_t gx = ceil_div(p.m, B), gy = ceil_div(s.ncols, B), tiles = ceil_div(p.n, B);
  const int64_t splits = inner_splits(gx * gy, tiles);
  const int64_t per = ceil_div(tiles, splits);
  const dim3 grid(gx, gy, ceil_div(tiles, per));
  sample_sum_kernel<T><<<grid, kThreads, 0, stream>>>(p, s, per);
}

#define TN_INSTANTIATE_CUDA(T)                                                             \
  template void features_forward<T>(const Problem<T>&, T*, cudaStream_t);                  \
  template void features_grads<T>(const Problem<T>&, const T*, T*, T*, cudaStream_t);      \
  template void neuron_sum<T>(const Problem<T>&, const NeuronSum<T>&, cudaStream_t);       \
  template void sample_sum<T>(const Problem<T>&, const SampleSum<T>&, cudaStream_t);

}  // namespace tn::cuda
