// CUDA-core (SIMT) kernels of taylornet, templated on the storage type T: the path for float64, for
// float32 without TF32, and for GPUs or builds without tensor cores.
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

#include "cuda/epilogue.cuh"

namespace tn::cuda {

// ---- tiling ----

constexpr int kChunk = 16;  // reduction chunk over d (16 x 16 threads)

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

// Element b of a thread's TM values, b known at run time: a chain of selects over registers.
template <typename A, int TM>
__device__ __forceinline__ A pick_column(const A (&row)[TM], int b) {
  A v = row[0];
#pragma unroll
  for (int k = 1; k < TM; ++k) v = b == k ? row[k] : v;
  return v;
}

// Fields need.pick[0] and need.pick[1] over the thread's micro-tile, in place of z0 and u; zero
// outside the problem so that padding never contributes. The generic epilogue with the library's
// math (exact), one neuron's TM samples per call, in a loop over the thread's neurons (one copy of
// the epilogue per kernel) that reads and writes its registers through selects.
template <typename T, int TM>
__device__ __forceinline__ void tile_fields(const Problem<T>& p, const Need& need, int64_t i0, int64_t r0,
                                            acc_t<T> (&z0)[TM][TM], acc_t<T> (&u)[TM][TM]) {
  using Acc = acc_t<T>;
  using V = Lanes<Acc, TM>;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll 1
  for (int b = 0; b < TM; ++b) {
    const int64_t r = r0 + tx + 16 * b;
    const bool rin = r < p.m;
    const Acc sign = rin ? neuron_sign_of(p, r) : Acc(1);
    const Acc b0 = (rin && p.b0) ? to_acc(p.b0[r]) : Acc(0);
    const Acc bb = (rin && p.b) ? to_acc(p.b[r]) : Acc(0);
    V z, uu, s(sign), g0(Acc(0)), g1(Acc(0)), out0, out1;
    bool valid[TM];
#pragma unroll
    for (int a = 0; a < TM; ++a) {
      const int64_t i = i0 + ty + 16 * a;
      valid[a] = rin && i < p.n;
      z.v[a] = valid[a] ? pick_column(z0[a], b) + b0 : Acc(0);
      uu.v[a] = valid[a] ? pick_column(u[a], b) + bb : Acc(0);
      if (!need.grads || !valid[a]) continue;
      if (p.gelem) {  // the features' own cotangent
        g0.v[a] = to_acc(p.gelem[i * p.m + r]);
        continue;
      }
      Acc a0 = Acc(0), a1 = Acc(0);  // g_rho = scale_rho * sum_j gout_rho[i][j] A_rho[j][r]
      for (int64_t j = 0; j < p.c; ++j) {
        const Acc aj = to_acc(p.a[j * p.m + r]);
        a0 = ::fma(to_acc(p.gout[0][i * p.c + j]), aj, a0);
        if (p.moments) a1 = ::fma(to_acc(p.gout[1][i * p.c + j]), aj * aj, a1);
      }
      g0.v[a] = a0 * p.scale[0];
      g1.v[a] = a1 * p.scale[1];
    }
    Epilogue<kGenericEpilogue>::template fields<LaneMath<Acc, TM>>(p.plan, need, z, uu, s, g0, g1, out0, out1);
#pragma unroll
    for (int a = 0; a < TM; ++a)
#pragma unroll
      for (int k = 0; k < TM; ++k) {
        if (k != b) continue;  // predicated: compile-time register names
        z0[a][k] = valid[a] ? out0.v[a] : Acc(0);
        u[a][k] = valid[a] ? out1.v[a] : Acc(0);
      }
  }
}

// ---- kernels ----

template <typename T>
__global__ void __launch_bounds__(kThreads) features_forward_kernel(TN_PARAM(Problem<T>) p, T* out) {
  using Acc = acc_t<T>;
  constexpr int TM = micro_tile<Acc>(), B = tile<Acc>();
  __shared__ Smem<Acc> sm;
  // Neuron tiles on grid.x, whose limit is 2^31 - 1 rather than 65535: widths reach 2^24 and beyond.
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * B, i0 = static_cast<int64_t>(blockIdx.y) * B;
  Acc z0[TM][TM], u[TM][TM];
  preactivations(p, i0, r0, sm, z0, u);
  tile_fields<T, TM>(p, need_of(1u << kPhi0, false, kPhi0, kPhi0), i0, r0, z0, u);
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
#pragma unroll
  for (int a = 0; a < TM; ++a)
#pragma unroll
    for (int b = 0; b < TM; ++b) {
      const int64_t i = i0 + ty + 16 * a, r = r0 + tx + 16 * b;
      if (i < p.n && r < p.m) out[i * p.m + r] = from_acc<T>(z0[a][b]);
    }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) neuron_sum_kernel(TN_PARAM(Problem<T>) p,
                                                               TN_PARAM(NeuronSum<T>) s,
                                                               int64_t tiles_per_split) {
  using Acc = acc_t<T>;
  constexpr int TM = micro_tile<Acc>(), B = tile<Acc>();
  __shared__ Smem<Acc> sm;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * B, c0 = static_cast<int64_t>(blockIdx.y) * B;
  int64_t t_begin, t_end;
  inner_tile_range((p.m + B - 1) / B, tiles_per_split, t_begin, t_end);
  const Need need = need_of(s.fields(), p.moments, s.field[0], s.field[s.terms - 1]);
  Acc acc[2][TM][TM];
#pragma unroll
  for (int t = 0; t < 2; ++t)
#pragma unroll
    for (int a = 0; a < TM; ++a)
#pragma unroll
      for (int b = 0; b < TM; ++b) acc[t][a][b] = Acc(0);
  for (int64_t rt = t_begin; rt < t_end; ++rt) {
    const int64_t r0 = rt * B;
    Acc z0[TM][TM], u[TM][TM];
    preactivations(p, i0, r0, sm, z0, u);
    tile_fields<T, TM>(p, need, i0, r0, z0, u);  // term 0's field in z0, term 1's in u
#pragma unroll
    for (int t = 0; t < 2; ++t) {  // unrolled: the registers are named at compile time
      if (t >= s.terms) break;
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int b = 0; b < TM; ++b) sm.fs[(ty + 16 * a) * B + tx + 16 * b] = t == 0 ? z0[a][b] : u[a][b];
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
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    if (t >= s.terms) break;
#pragma unroll
    for (int a = 0; a < TM; ++a)
#pragma unroll
      for (int b = 0; b < TM; ++b) {
        const int64_t i = i0 + ty + 16 * a, col = c0 + tx + 16 * b;
        if (i < p.n && col < s.ncols) atomicAdd(&s.out[t][i * s.ld_out + col], s.scale[t] * acc[t][a][b]);
      }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sample_sum_kernel(TN_PARAM(Problem<T>) p,
                                                               TN_PARAM(SampleSum<T>) s,
                                                               int64_t tiles_per_split) {
  using Acc = acc_t<T>;
  constexpr int TM = micro_tile<Acc>(), B = tile<Acc>();
  __shared__ Smem<Acc> sm;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * B, c0 = static_cast<int64_t>(blockIdx.y) * B;
  int64_t t_begin, t_end;
  inner_tile_range((p.n + B - 1) / B, tiles_per_split, t_begin, t_end);
  const Need need = need_of(s.fields(), p.moments, s.term[0].field, s.term[s.terms - 1].field);
  Acc acc[TM][TM];  // rows: neurons r0 + ty + 16a; columns c0 + tx + 16b
#pragma unroll
  for (int a = 0; a < TM; ++a)
#pragma unroll
    for (int b = 0; b < TM; ++b) acc[a][b] = Acc(0);
  for (int64_t it = t_begin; it < t_end; ++it) {
    const int64_t i0 = it * B;
    Acc z0[TM][TM], u[TM][TM];
    preactivations(p, i0, r0, sm, z0, u);
    tile_fields<T, TM>(p, need, i0, r0, z0, u);  // term 0's field in z0, term 1's in u
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      if (t >= s.terms) break;
      if (!term_in_tile(s, t, c0, B)) continue;  // block-uniform
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int b = 0; b < TM; ++b) sm.fs[(ty + 16 * a) * B + tx + 16 * b] = t == 0 ? z0[a][b] : u[a][b];  // [i][r]
      for (int e = threadIdx.x; e < B * B; e += kThreads) {
        const int i = e / B, col = e % B;
        const int64_t ii = i0 + i;
        sm.ys[i * B + col] = ii < p.n ? sample_factor(s, t, ii, c0 + col) : Acc(0);
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
  }
#pragma unroll
  for (int a = 0; a < TM; ++a)
#pragma unroll
    for (int b = 0; b < TM; ++b) {
      const int64_t r = r0 + ty + 16 * a;
      if (r < p.m) sample_store(s, r, c0 + tx + 16 * b, acc[a][b]);
    }
}

}  // namespace tn::cuda
