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

// The k chunks of x, w0, w (k-major), in shared memory.
template <typename Acc>
struct SimtInputs {
  Acc *xs, *w0s, *ws;
};

// Static shared memory of the features kernel: its input chunks only.
template <typename Acc>
struct Smem {
  static constexpr int B = tile<Acc>();
  Acc xs[kChunk * B], w0s[kChunk * B], ws[kChunk * B];
  __device__ SimtInputs<Acc> inputs() { return {xs, w0s, ws}; }
};

// Dynamic shared memory of the reductions. The work region holds the input chunks during the
// products, then (the products done, after their closing barrier) the field tiles of the terms
// ([sample][neuron], one per field) and the factor tile; after it come the bias sums of a
// reduction over samples (one per term and neuron) and the float accumulators of the block's
// column tiles (one B x B tile per column tile and accumulator slot), which live across the
// whole inner loop.
template <typename Acc>
struct SimtReduceSmem {
  static constexpr int B = tile<Acc>();
  static constexpr int64_t tile_bytes = int64_t(B) * B * sizeof(Acc);
  static constexpr int64_t in_bytes = int64_t(3) * kChunk * B * sizeof(Acc);
  static constexpr int64_t bias_bytes = round_up(int64_t(kMaxSampleTerms) * B * sizeof(Acc), 128);
  __host__ __device__ static constexpr int64_t work_bytes(int fields) {
    return in_bytes > (fields + 1) * tile_bytes ? in_bytes : (fields + 1) * tile_bytes;
  }
  // Everything but the accumulators.
  __host__ __device__ static constexpr int64_t fixed_bytes(int fields) { return work_bytes(fields) + bias_bytes; }

  unsigned char* raw;
  int fields;
  __device__ SimtInputs<Acc> inputs() const {
    Acc* x = reinterpret_cast<Acc*>(raw);
    return {x, x + kChunk * B, x + 2 * kChunk * B};
  }
  __device__ Acc* field(int t) const { return reinterpret_cast<Acc*>(raw) + static_cast<int64_t>(t) * B * B; }
  __device__ Acc* factor() const { return field(fields); }
  __device__ Acc* bias(int t) const { return reinterpret_cast<Acc*>(raw + work_bytes(fields)) + t * B; }
  __device__ Acc* acc(int64_t k) const { return reinterpret_cast<Acc*>(raw + fixed_bytes(fields)) + k * B * B; }
};

// z0[a][b], u[a][b] for sample i0 + ty + 16a and neuron r0 + tx + 16b (biases not added). Ends
// with a barrier: the input chunks' region is free for other use afterwards.
template <typename T>
__device__ void preactivations(const Problem<T>& p, int64_t i0, int64_t r0, const SimtInputs<acc_t<T>>& sm,
                               acc_t<T> (&z0)[micro_tile<acc_t<T>>()][micro_tile<acc_t<T>>()],
                               acc_t<T> (&u)[micro_tile<acc_t<T>>()][micro_tile<acc_t<T>>()]) {
  using Acc = acc_t<T>;
  constexpr int TM = micro_tile<Acc>(), B = tile<Acc>();
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  TN_COUNT_RECOMPUTE(p, i0, r0, B, B);
#pragma unroll
  for (int a = 0; a < TM; ++a)
#pragma unroll
    for (int b = 0; b < TM; ++b) z0[a][b] = u[a][b] = Acc(0);
  __syncthreads();  // the region's previous users are done
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

// Fields need.pick[0 .. Outs) over the thread's micro-tile, handed to sink(k, a, b, value) for
// field k at sample i0 + ty + 16a and neuron r0 + tx + 16b; zero outside the problem so that
// padding never contributes. The generic epilogue with the library's math (exact), one neuron's TM
// samples per call, in a loop over the thread's neurons (one copy of the epilogue per kernel) that
// reads its registers through selects.
template <typename T, int TM, int Outs, typename Sink>
__device__ __forceinline__ void tile_fields(const Problem<T>& p, const Need& need, int64_t i0, int64_t r0,
                                            const acc_t<T> (&z0)[TM][TM], const acc_t<T> (&u)[TM][TM], Sink&& sink) {
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
    V z, uu, s(sign), g0(Acc(0)), g1(Acc(0)), out[Outs];
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
    Epilogue<kGenericEpilogue>::template fields<LaneMath<Acc, TM>, Outs>(p.plan, need, z, uu, s, g0, g1, out);
#pragma unroll
    for (int k = 0; k < Outs; ++k)
#pragma unroll
      for (int a = 0; a < TM; ++a) sink(k, a, b, valid[a] ? out[k].v[a] : Acc(0));
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
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  Acc z0[TM][TM], u[TM][TM];
  preactivations(p, i0, r0, sm.inputs(), z0, u);
  tile_fields<T, TM, 1>(p, need_of(1u << kPhi0, false, kPhi0, kPhi0), i0, r0, z0, u,
                        [&](int, int a, int b, Acc v) {
                          const int64_t i = i0 + ty + 16 * a, r = r0 + tx + 16 * b;
                          if (i < p.n && r < p.m) out[i * p.m + r] = from_acc<T>(v);
                        });
}

// Blocks own (sample tile, group of column tiles); the loop runs over neuron tiles: the readout and
// dX. Per neuron tile the products and the epilogue run once, then every column tile of the group
// takes both terms from the field tiles in shared memory into its accumulators there.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) neuron_sum_kernel(TN_PARAM(Problem<T>) p, TN_PARAM(NeuronSum<T>) s,
                                                               int64_t tiles_per_split, int64_t group_tiles) {
  using Acc = acc_t<T>;
  constexpr int TM = micro_tile<Acc>(), B = tile<Acc>();
  TN_DYNAMIC_SMEM(raw);
  const SimtReduceSmem<Acc> sm{raw, s.terms};
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * B;
  const int64_t g0 = static_cast<int64_t>(blockIdx.y) * group_tiles;
  const int64_t g1 = g0 + group_tiles < (s.ncols + B - 1) / B ? g0 + group_tiles : (s.ncols + B - 1) / B;
  const int slots = s.slots();
  int64_t t_begin, t_end;
  inner_tile_range((p.m + B - 1) / B, tiles_per_split, t_begin, t_end);
  const Need need = need_of(s.fields(), p.moments, s.field[0], s.field[s.terms - 1]);
  for (int64_t e = threadIdx.x; e < (g1 - g0) * slots * B * B; e += kThreads) sm.acc(0)[e] = Acc(0);
  for (int64_t rt = t_begin; rt < t_end; ++rt) {
    const int64_t r0 = rt * B;
    Acc z0[TM][TM], u[TM][TM];
    preactivations(p, i0, r0, sm.inputs(), z0, u);
    tile_fields<T, TM, 2>(p, need, i0, r0, z0, u, [&](int k, int a, int b, Acc v) {
      if (k < s.terms) sm.field(k)[(ty + 16 * a) * B + tx + 16 * b] = v;  // F_k[i][r]
    });
    for (int64_t ct = g0; ct < g1; ++ct) {
      const int64_t c0 = ct * B;
      for (int t = 0; t < s.terms; ++t) {
        Acc* zs = sm.factor();
        __syncthreads();  // the fields are written; the factor tile's previous readers are done
        for (int e = threadIdx.x; e < B * B; e += kThreads) {
          const int r = e / B, col = e % B;
          const int64_t rr = r0 + r, cc = c0 + col;
          Acc zv = Acc(0);
          if (rr < p.m && cc < s.ncols) zv = to_acc(s.z[t][rr * s.z_row[t] + cc * s.z_col[t]]);
          zs[r * B + col] = s.square[t] ? zv * zv : zv;  // Z_t[r][col]
        }
        __syncthreads();
        const Acc* fs = sm.field(t);
        Acc* acc = sm.acc((ct - g0) * slots + (slots == 1 ? 0 : t));  // [i][col]
        Acc sum[TM][TM];
#pragma unroll
        for (int a = 0; a < TM; ++a)
#pragma unroll
          for (int b = 0; b < TM; ++b) sum[a][b] = acc[(ty + 16 * a) * B + tx + 16 * b];
        for (int r = 0; r < B; ++r) {
          Acc fa[TM];
#pragma unroll
          for (int a = 0; a < TM; ++a) fa[a] = fs[(ty + 16 * a) * B + r];
#pragma unroll
          for (int b = 0; b < TM; ++b) {
            const Acc zb = zs[r * B + tx + 16 * b];
#pragma unroll
            for (int a = 0; a < TM; ++a) sum[a][b] = ::fma(fa[a], zb, sum[a][b]);
          }
        }
#pragma unroll
        for (int a = 0; a < TM; ++a)
#pragma unroll
          for (int b = 0; b < TM; ++b) acc[(ty + 16 * a) * B + tx + 16 * b] = sum[a][b];  // this thread's own
      }
    }
  }
  __syncthreads();
  for (int64_t ct = g0; ct < g1; ++ct)
    for (int t = 0; t < slots; ++t) {
      const Acc* acc = sm.acc((ct - g0) * slots + t);
      for (int e = threadIdx.x; e < B * B; e += kThreads) {
        const int64_t i = i0 + e / B, cc = ct * B + e % B;
        if (i < p.n && cc < s.ncols) atomicAdd(&s.out[t][i * s.ld_out + cc], s.scale[t] * acc[e]);
      }
    }
}

// Blocks own (neuron tile, group of column tiles); the loop runs over sample tiles: dW, dW0, db,
// db0, dA, every requested term in one pass. Per sample tile the products and the epilogue run
// once (the fields of every term the group needs), then every column tile of the group takes its
// term's field tile from shared memory into its accumulators there; group 0 also sums the
// fields of the terms with a bias column.
template <typename T>
__global__ void __launch_bounds__(kThreads, 1) sample_sum_kernel(TN_PARAM(Problem<T>) p, TN_PARAM(SampleSum<T>) s,
                                                               int64_t tiles_per_split, int64_t group_tiles) {
  using Acc = acc_t<T>;
  constexpr int TM = micro_tile<Acc>(), B = tile<Acc>();
  TN_DYNAMIC_SMEM(raw);
  const SimtReduceSmem<Acc> sm{raw, s.terms};
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * B, tiles = s.tiles(B);
  const int64_t g0 = static_cast<int64_t>(blockIdx.y) * group_tiles;
  const int64_t g1 = g0 + group_tiles < tiles ? g0 + group_tiles : tiles;
  int64_t t_begin, t_end;
  inner_tile_range((p.n + B - 1) / B, tiles_per_split, t_begin, t_end);
  const Need need = need_of(s.fields(), p.moments, s.term[0].field, s.term[1 % s.terms].field,
                            s.term[2 % s.terms].field, s.term[3 % s.terms].field);
  for (int64_t e = threadIdx.x; e < (g1 - g0) * B * B; e += kThreads) sm.acc(0)[e] = Acc(0);
  for (int e = threadIdx.x; e < kMaxSampleTerms * B; e += kThreads) sm.bias(0)[e] = Acc(0);
  for (int64_t it = t_begin; it < t_end; ++it) {
    const int64_t i0 = it * B;
    Acc z0[TM][TM], u[TM][TM];
    preactivations(p, i0, r0, sm.inputs(), z0, u);
    tile_fields<T, TM, kMaxSampleTerms>(p, need, i0, r0, z0, u, [&](int k, int a, int b, Acc v) {
      if (k < s.terms) sm.field(k)[(ty + 16 * a) * B + tx + 16 * b] = v;  // F_k[i][r]
    });
    __syncthreads();
    if (g0 == 0 && threadIdx.x < B) {  // the bias columns: one thread per neuron, in sample order
      for (int t = 0; t < s.terms; ++t) {
        if (!s.term[t].ones) continue;
        const Acc* fs = sm.field(t);
        Acc sum = sm.bias(t)[threadIdx.x];
        for (int i = 0; i < B; ++i) sum += fs[i * B + threadIdx.x];
        sm.bias(t)[threadIdx.x] = sum;
      }
    }
    for (int64_t ct = g0; ct < g1; ++ct) {
      int t;
      int64_t k0;
      sample_tile_of(s, ct, B, t, k0);
      const SampleTerm<T>& term = s.term[t];
      Acc* ys = sm.factor();
      for (int e = threadIdx.x; e < B * B; e += kThreads) {
        const int i = e / B, col = e % B;
        const int64_t ii = i0 + i;
        ys[i * B + col] = ii < p.n ? sample_factor(term, ii, k0 + col) : Acc(0);  // Y_t[i][col]
      }
      __syncthreads();
      const Acc* fs = sm.field(t);
      Acc* acc = sm.acc(ct - g0);  // [neuron][col]
      Acc sum[TM][TM];
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int b = 0; b < TM; ++b) sum[a][b] = acc[(ty + 16 * a) * B + tx + 16 * b];
      for (int i = 0; i < B; ++i) {
        Acc fr[TM];
#pragma unroll
        for (int a = 0; a < TM; ++a) fr[a] = fs[i * B + ty + 16 * a];
#pragma unroll
        for (int b = 0; b < TM; ++b) {
          const Acc yb = ys[i * B + tx + 16 * b];
#pragma unroll
          for (int a = 0; a < TM; ++a) sum[a][b] = ::fma(fr[a], yb, sum[a][b]);
        }
      }
#pragma unroll
      for (int a = 0; a < TM; ++a)
#pragma unroll
        for (int b = 0; b < TM; ++b) acc[(ty + 16 * a) * B + tx + 16 * b] = sum[a][b];  // this thread's own
      __syncthreads();  // the factor tile is read before the next one is staged
    }
  }
  __syncthreads();
  for (int64_t ct = g0; ct < g1; ++ct) {
    int t;
    int64_t k0;
    sample_tile_of(s, ct, B, t, k0);
    const SampleTerm<T>& term = s.term[t];
    const Acc* acc = sm.acc(ct - g0);
    for (int e = threadIdx.x; e < B * B; e += kThreads) {
      const int64_t r = r0 + e / B, k = k0 + e % B;
      if (r < p.m && k < term.ncols) atomicAdd(&term.out[r * term.ld_out + k], term.scale * acc[e]);
    }
  }
  if (g0 == 0 && threadIdx.x < B && r0 + threadIdx.x < p.m)
    for (int t = 0; t < s.terms; ++t)
      if (s.term[t].ones) atomicAdd(&s.term[t].ones[r0 + threadIdx.x], s.term[t].scale * sm.bias(t)[threadIdx.x]);
}

}  // namespace tn::cuda
