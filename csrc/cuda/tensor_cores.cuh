// Tensor-core kernels of taylornet (sm_80 and newer): bfloat16 and float16 inputs (m16n16k16), and
// float32 inputs rounded to TF32 (m16n16k8) when torch allows TF32 matmuls; accumulation in float32.
//
// Same structure as the SIMT kernels: a block owns a 64 x 64 tile of (samples, neurons). Stage 1
// computes the tile's z0 = x w0^T and u = x w^T with warp-level mma, each warp holding the z0 and
// u accumulators of the same 16 x 32 sub-tile, so a neuron's pair meets in one thread's registers
// (the two products share their A fragment: x is loaded once for both). The Taylor epilogue runs
// on the accumulator elements in place. Stage 2 writes the contracted field to shared memory in the
// input type (float16: scaled per tile into its range) and multiplies it with the other factor
// (A^T, W, x, gout) on tensor cores again.
//
// The accumulator layout of wmma is unspecified, so nothing here assumes it: every kernel loads a
// table of (row, column) codes into an accumulator fragment once, and element e of any accumulator
// fragment sits at the position the code fragment's element e names.
#pragma once

#include <mma.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cuda/epilogue.cuh"

// Device passes for GPUs before sm_80 have neither bf16 nor TF32 mma: their kernels trap, and the
// launchers never pick them (they check the binary's architecture first).
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define TN_TENSOR_CORES 1
#else
#define TN_TENSOR_CORES 0
#endif

namespace tn::cuda {

constexpr int kTcTile = 64;  // samples x neurons per block (and output columns per block)

template <typename T>
struct TcShape;  // k of one mma, staged k chunk, row padding (elements) against bank conflicts
template <>
struct TcShape<__half> {
  static constexpr int K = 16, chunk = 32, pad = 8;
};
template <>
struct TcShape<__nv_bfloat16> {
  static constexpr int K = 16, chunk = 32, pad = 8;
};
template <>
struct TcShape<float> {
  static constexpr int K = 8, chunk = 16, pad = 4;
};

// Shared memory: stage 1's input chunks (two buffers, for the asynchronous copy of the next chunk
// during the products of this one), stage 2's factors and the output tile are never live at once
// and share one region; row strides keep every fragment pointer 32-byte aligned.
template <typename T>
struct TcSmem {
  static constexpr int ld_in = TcShape<T>::chunk + TcShape<T>::pad;  // x, w0, w chunks: [row][k]
  static constexpr int ld_mix = kTcTile + TcShape<T>::pad;           // field and factor: [k][col]
  static constexpr int ld_out = kTcTile + 4;                         // float output tile
  static constexpr int in_bytes = 2 * 3 * kTcTile * ld_in * static_cast<int>(sizeof(T));
  static constexpr int mix_bytes = 2 * kTcTile * ld_mix * static_cast<int>(sizeof(T));
  static constexpr int out_bytes = kTcTile * ld_out * 4;
  static constexpr int mix_or_out = mix_bytes > out_bytes ? mix_bytes : out_bytes;
  static constexpr int shared_bytes = in_bytes > mix_or_out ? in_bytes : mix_or_out;
  static constexpr int bytes = shared_bytes + 256 * 4 + 3 * kTcTile * 4 + 2 * 4;  // + codes, neurons, maxima

  unsigned char* raw;
  __device__ T* x(int buf) const { return reinterpret_cast<T*>(raw) + buf * 3 * kTcTile * ld_in; }
  __device__ T* w0(int buf) const { return x(buf) + kTcTile * ld_in; }
  __device__ T* w(int buf) const { return w0(buf) + kTcTile * ld_in; }
  __device__ T* field() const { return reinterpret_cast<T*>(raw); }
  __device__ T* factor() const { return field() + kTcTile * ld_mix; }
  __device__ float* out() const { return reinterpret_cast<float*>(raw); }
  __device__ float* codes() const { return reinterpret_cast<float*>(raw + shared_bytes); }
  __device__ float* sign() const { return codes() + 256; }  // per neuron of the tile
  __device__ float* b0() const { return sign() + kTcTile; }
  __device__ float* b() const { return b0() + kTcTile; }
  __device__ int* tile_max() const { return reinterpret_cast<int*>(b() + kTcTile); }  // per term, float bits
};

static_assert(TcSmem<float>::bytes <= 48 * 1024 && TcSmem<__half>::bytes <= 48 * 1024,
              "tensor-core kernels use static shared memory (48 KiB)");
static_assert(TcSmem<float>::ld_in * 4 * 16 % 32 == 0 && TcSmem<__half>::ld_in * 2 * 16 % 32 == 0 &&
                  TcSmem<float>::ld_mix * 4 * 8 % 32 == 0 && TcSmem<__half>::ld_mix * 2 * 16 % 32 == 0,
              "fragment pointers must stay 32-byte aligned");

#if TN_TENSOR_CORES
namespace wmma = nvcuda::wmma;

template <typename T>
using TcIn = std::conditional_t<std::is_same_v<T, float>, wmma::precision::tf32, T>;
template <typename T, typename Layout>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, TcShape<T>::K, TcIn<T>, Layout>;
template <typename T, typename Layout>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, TcShape<T>::K, TcIn<T>, Layout>;
template <typename T>
using FragC = wmma::fragment<wmma::accumulator, 16, 16, TcShape<T>::K, float>;

template <typename T, typename Frag>
__device__ __forceinline__ void load_input(Frag& f, const T* ptr, unsigned ld) {
  wmma::load_matrix_sync(f, ptr, ld);
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int e = 0; e < f.num_elements; ++e) f.x[e] = wmma::__float_to_tf32(f.x[e]);
  }
}

// Warp w owns the 16-row block w / 2 and the 16-column blocks 2 (w % 2) and 2 (w % 2) + 1 of a
// 64 x 64 tile, in both stages.
__device__ __forceinline__ int warp_row_block() { return (threadIdx.x / 32) >> 1; }
__device__ __forceinline__ int warp_col_block(int j) { return ((threadIdx.x / 32) & 1) * 2 + j; }

// The (row, column) code fragment: row * 16 + column at every element. Contains a barrier (the
// table is complete before any warp loads it).
template <typename T>
__device__ void load_codes(const TcSmem<T>& sm, FragC<T>& codes) {
  for (int e = threadIdx.x; e < 256; e += kThreads) sm.codes()[e] = static_cast<float>(e);
  __syncthreads();
  wmma::load_matrix_sync(codes, sm.codes(), 16, wmma::mem_row_major);
}

// Signs and biases of neurons r0 .. r0 + 63 as float; callers put a barrier before their use.
template <typename T>
__device__ void load_neurons(const Problem<T>& p, const TcSmem<T>& sm, int64_t r0) {
  for (int e = threadIdx.x; e < kTcTile; e += kThreads) {
    const int64_t r = r0 + e;
    const bool in = r < p.m;
    sm.sign()[e] = in ? static_cast<float>(neuron_sign_of(p, r)) : 1.0f;
    sm.b0()[e] = (in && p.b0) ? to_acc(p.b0[r]) : 0.0f;
    sm.b()[e] = (in && p.b) ? to_acc(p.b[r]) : 0.0f;
  }
}

// float16 field tiles are scaled by a power of two 2^e (one per tile and term) that puts their
// largest magnitude in [2^14, 2^15) before they are rounded to float16, and each tile's product is
// scaled back by 2^-e as it is added to the float32 accumulators: the fields neither overflow
// (65504) nor sink below float16's normal range (6e-5), whatever the activation, the cotangent or
// the 1/sqrt(m) scale. bfloat16 and TF32 have float32's exponent range and need no scaling.
template <typename T>
constexpr bool kTileScaled = std::is_same_v<T, __half>;

// The largest magnitude of this thread's elements of f, into the block's maximum at *slot (the bit
// patterns of non-negative floats order like their values).
template <typename T>
__device__ __forceinline__ void tile_max(const FragC<T> (&f)[2], int* slot) {
  float mx = 0.0f;
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < f[j].num_elements; ++e) mx = fmaxf(mx, fabsf(f[j].x[e]));
  atomicMax(slot, __float_as_int(mx));
}

// e for a tile whose largest magnitude has the float bits `bits` (0 for an all-zero or non-finite
// tile, whose values then pass as they are).
__device__ __forceinline__ int tile_exponent(int bits) {
  const float mx = __int_as_float(bits);
  if (!(mx > 0.0f) || !(mx <= 3.4e38f)) return 0;  // zero, inf or NaN
  int k;
  frexpf(mx, &k);  // mx in [2^(k-1), 2^k)
  const int e = 15 - k;
  return e < -120 ? -120 : (e > 120 ? 120 : e);
}

// 16-byte copies global -> shared that complete asynchronously (cp.async, sm_80): the next chunk
// streams in while the tensor cores work on this one. The host pass (which the CPU emulator runs)
// copies at once.
__device__ __forceinline__ void copy16_async(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
#else
  std::memcpy(smem, gmem, 16);
#endif
}
__device__ __forceinline__ void copy_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int Pending>  // wait until at most Pending committed groups are still in flight
__device__ __forceinline__ void copy_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending));
#endif
}

// Stages x, w0, w [k0, k0 + chunk) of the tile into buffer buf, 16 bytes per copy (needs d a
// multiple of the vector and 16-byte aligned rows).
template <typename T>
__device__ void stage_chunk_async(const Problem<T>& p, const TcSmem<T>& sm, int buf, int64_t k0, int64_t i0,
                                  int64_t r0) {
  constexpr int chunk = TcShape<T>::chunk, ld = TcSmem<T>::ld_in, V = 16 / sizeof(T), per_row = chunk / V;
  T *xs = sm.x(buf), *w0s = sm.w0(buf), *ws = sm.w(buf);
  for (int e = threadIdx.x; e < kTcTile * per_row; e += kThreads) {
    const int row = e / per_row, k = e % per_row * V;
    const int64_t kk = k0 + k, i = i0 + row, r = r0 + row;
    const bool kin = kk < p.d;  // whole vectors: d is a multiple of V
    if (kin && i < p.n) copy16_async(xs + row * ld + k, p.x + i * p.d + kk);
    else *reinterpret_cast<uint4*>(xs + row * ld + k) = make_uint4(0, 0, 0, 0);
    if (kin && r < p.m) {
      copy16_async(w0s + row * ld + k, p.w0 + r * p.d + kk);
      copy16_async(ws + row * ld + k, p.w + r * p.d + kk);
    } else {
      *reinterpret_cast<uint4*>(w0s + row * ld + k) = make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint4*>(ws + row * ld + k) = make_uint4(0, 0, 0, 0);
    }
  }
}

// Stages the same chunk element by element: any d, any alignment.
template <typename T>
__device__ void stage_chunk(const Problem<T>& p, const TcSmem<T>& sm, int buf, int64_t k0, int64_t i0,
                            int64_t r0) {
  constexpr int chunk = TcShape<T>::chunk, ld = TcSmem<T>::ld_in;
  const T zero = from_acc<T>(acc_t<T>(0));
  T *xs = sm.x(buf), *w0s = sm.w0(buf), *ws = sm.w(buf);
  // Consecutive threads read consecutive k of a row: coalesced along d.
  for (int e = threadIdx.x; e < kTcTile * chunk; e += kThreads) {
    const int row = e / chunk, k = e % chunk;
    const int64_t kk = k0 + k, i = i0 + row, r = r0 + row;
    const bool kin = kk < p.d;
    xs[row * ld + k] = (kin && i < p.n) ? p.x[i * p.d + kk] : zero;
    w0s[row * ld + k] = (kin && r < p.m) ? p.w0[r * p.d + kk] : zero;
    ws[row * ld + k] = (kin && r < p.m) ? p.w[r * p.d + kk] : zero;
  }
}

// The products of one staged chunk.
template <typename T>
__device__ __forceinline__ void chunk_products(const TcSmem<T>& sm, int buf, FragC<T> (&z0)[2], FragC<T> (&u)[2]) {
  constexpr int chunk = TcShape<T>::chunk, K = TcShape<T>::K, ld = TcSmem<T>::ld_in;
  const T *xs = sm.x(buf), *w0s = sm.w0(buf), *ws = sm.w(buf);
#pragma unroll
  for (int k = 0; k < chunk; k += K) {
    FragA<T, wmma::row_major> xa;
    load_input(xa, xs + warp_row_block() * 16 * ld + k, ld);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      // w0 and w are (neuron, k) row-major, i.e. the (k, neuron) operand in column-major order.
      FragB<T, wmma::col_major> wb;
      load_input(wb, w0s + warp_col_block(j) * 16 * ld + k, ld);
      wmma::mma_sync(z0[j], xa, wb, z0[j]);
      load_input(wb, ws + warp_col_block(j) * 16 * ld + k, ld);
      wmma::mma_sync(u[j], xa, wb, u[j]);
    }
  }
}

__device__ __forceinline__ bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Stage 1: z0 and u (biases not added) of samples i0.. and neurons r0.. for this warp's blocks.
// For d > 0 it ends with a barrier, so callers may reuse the shared region at once.
template <typename T>
__device__ void tc_preactivations(const Problem<T>& p, const TcSmem<T>& sm, int64_t i0, int64_t r0,
                                  FragC<T> (&z0)[2], FragC<T> (&u)[2]) {
  constexpr int chunk = TcShape<T>::chunk, V = 16 / sizeof(T);
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    wmma::fill_fragment(z0[j], 0.0f);
    wmma::fill_fragment(u[j], 0.0f);
  }
  const int64_t chunks = (p.d + chunk - 1) / chunk;
  if (p.d % V == 0 && aligned16(p.x) && aligned16(p.w0) && aligned16(p.w)) {
    // Double-buffered: chunk c + 1 is in flight while chunk c is multiplied. The barrier at the end
    // of each step keeps the copy issued in the next step off the buffer still being read.
    if (chunks > 0) stage_chunk_async(p, sm, 0, 0, i0, r0);
    copy_async_commit();
    for (int64_t c = 0; c < chunks; ++c) {
      if (c + 1 < chunks) {
        stage_chunk_async(p, sm, static_cast<int>((c + 1) & 1), (c + 1) * chunk, i0, r0);
        copy_async_commit();
        copy_async_wait<1>();
      } else {
        copy_async_wait<0>();
      }
      __syncthreads();
      chunk_products(sm, static_cast<int>(c & 1), z0, u);
      __syncthreads();
    }
  } else {
    for (int64_t c = 0; c < chunks; ++c) {
      stage_chunk(p, sm, 0, c * chunk, i0, r0);
      __syncthreads();
      chunk_products(sm, 0, z0, u);
      __syncthreads();
    }
  }
}

// Calls f(j, e, row, col) for element e of this warp's accumulator block j, at (row, col) of the
// block's 64 x 64 tile.
template <typename T, typename F>
__device__ __forceinline__ void for_each_element(const FragC<T>& codes, F&& f) {
  const int rb = warp_row_block();
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < codes.num_elements; ++e) {
      const int code = static_cast<int>(codes.x[e]);
      f(j, e, rb * 16 + (code >> 4), warp_col_block(j) * 16 + (code & 15));
    }
}

// The output cotangents' sums per accumulator element, g_rho[i][r] = scale_rho sum_j gout_rho[i][j]
// A_rho[j][r] (A_0 = A, A_1 = A * A, the latter for the moments only), or the features' own
// cotangent gelem[i][r] in g0. gout's rows and A's columns of the tile are staged in shared memory
// (the input region, free after stage 1), kCStage outputs at a time. Contains barriers: call it
// after stage 1's last barrier, and it ends with one.
constexpr int kCStage = 32;
template <typename T>
struct CotangentSmem {
  static constexpr int ld_g = kCStage + 1, ld_a = kTcTile + 1;
  float* g0;  // [sample][j]
  float* g1;
  float* a;   // [j][neuron]
  __device__ explicit CotangentSmem(const TcSmem<T>& sm)
      : g0(reinterpret_cast<float*>(sm.raw)), g1(g0 + kTcTile * ld_g), a(g1 + kTcTile * ld_g) {}
  static constexpr int bytes = (2 * kTcTile * ld_g + kCStage * ld_a) * 4;
};
static_assert(CotangentSmem<float>::bytes <= TcSmem<float>::shared_bytes &&
                  CotangentSmem<__half>::bytes <= TcSmem<__half>::shared_bytes,
              "the staged cotangents fit the shared region");

template <typename T>
__device__ __forceinline__ void tc_cotangents(const Problem<T>& p, const TcSmem<T>& sm, const FragC<T>& codes,
                                              int64_t i0, int64_t r0, float (&g0)[2][FragC<T>::num_elements],
                                              float (&g1)[2][FragC<T>::num_elements]) {
  constexpr int E = FragC<T>::num_elements;
  const int rb = warp_row_block();
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < E; ++e) g0[j][e] = g1[j][e] = 0.0f;
  if (p.gelem) {  // the features' own cotangent, no scale
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int code = static_cast<int>(codes.x[e]);
        const int64_t i = i0 + rb * 16 + (code >> 4), r = r0 + warp_col_block(j) * 16 + (code & 15);
        if (i < p.n && r < p.m) g0[j][e] = to_acc(p.gelem[i * p.m + r]);
      }
    return;
  }
  const CotangentSmem<T> cs(sm);
  for (int64_t c0 = 0; c0 < p.c; c0 += kCStage) {
    const int width = static_cast<int>(p.c - c0 < kCStage ? p.c - c0 : kCStage);
    for (int e = threadIdx.x; e < kTcTile * kCStage; e += kThreads) {
      const int row = e / kCStage, k = e % kCStage;  // consecutive threads: consecutive outputs of a sample
      const int64_t i = i0 + row;
      const bool in = i < p.n && k < width;
      cs.g0[row * cs.ld_g + k] = in ? to_acc(p.gout[0][i * p.c + c0 + k]) : 0.0f;
      if (p.moments) cs.g1[row * cs.ld_g + k] = in ? to_acc(p.gout[1][i * p.c + c0 + k]) : 0.0f;
    }
    for (int e = threadIdx.x; e < kCStage * kTcTile; e += kThreads) {
      const int k = e / kTcTile, col = e % kTcTile;  // consecutive threads: consecutive neurons
      const int64_t r = r0 + col;
      cs.a[k * cs.ld_a + col] = (r < p.m && k < width) ? to_acc(p.a[(c0 + k) * p.m + r]) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < E; ++e) {
        const int code = static_cast<int>(codes.x[e]);
        const float* gr0 = cs.g0 + (rb * 16 + (code >> 4)) * cs.ld_g;
        const float* gr1 = cs.g1 + (rb * 16 + (code >> 4)) * cs.ld_g;
        const float* ac = cs.a + warp_col_block(j) * 16 + (code & 15);
        float a0 = g0[j][e], a1 = g1[j][e];
        if (p.moments) {
          for (int k = 0; k < width; ++k) {
            const float ak = ac[k * cs.ld_a];
            a0 = fmaf(gr0[k], ak, a0);
            a1 = fmaf(gr1[k], ak * ak, a1);
          }
        } else {
          for (int k = 0; k < width; ++k) a0 = fmaf(gr0[k], ac[k * cs.ld_a], a0);
        }
        g0[j][e] = a0;
        g1[j][e] = a1;
      }
    __syncthreads();
  }
  const float s0 = static_cast<float>(p.scale[0]), s1 = static_cast<float>(p.scale[1]);
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < E; ++e) {
      g0[j][e] *= s0;
      g1[j][e] *= s1;
    }
}

// The epilogue in place, four accumulator elements per call: fields need.pick[0] and need.pick[1]
// replace z0 and u (zero outside the problem, so that padding never contributes). Contains
// barriers where gradients are asked for (the staged cotangents). A specialised epilogue is
// unrolled over the thread's four groups of four elements; the generic one, much larger (every
// activation's functions), runs as a loop over the groups, which it reads and writes through
// selects (registers, not an indexed array), so that each kernel holds one copy of it.
template <int S, typename T>
__device__ __forceinline__ void tc_fields(const Problem<T>& p, const TcSmem<T>& sm, const FragC<T>& codes,
                                          const Need& need, int64_t i0, int64_t r0, FragC<T> (&z0)[2],
                                          FragC<T> (&u)[2]) {
  constexpr int N = 4, E = FragC<T>::num_elements, G = 2 * E / N;
  static_assert(E == 2 * N, "accumulator fragments are taken as two groups of four elements");
  using V = Lanes<float, N>;
  const int rb = warp_row_block();
  float g0[2][E], g1[2][E];
  if (need.grads) tc_cotangents(p, sm, codes, i0, r0, g0, g1);
  // group g: fragment g / 2, elements (g % 2) * N ...
  auto group = [&](int g, auto pick) {
    V z, uu, s, gg0(0.0f), gg1(0.0f), out0, out1;
    bool valid[N];
    const int j = g >> 1;
#pragma unroll
    for (int l = 0; l < N; ++l) {
      const int code = static_cast<int>(pick(codes.x, codes.x, l, g));
      const int row = rb * 16 + (code >> 4), col = warp_col_block(j) * 16 + (code & 15);
      valid[l] = i0 + row < p.n && r0 + col < p.m;
      z.v[l] = valid[l] ? pick(z0[0].x, z0[1].x, l, g) + sm.b0()[col] : 0.0f;
      uu.v[l] = valid[l] ? pick(u[0].x, u[1].x, l, g) + sm.b()[col] : 0.0f;
      s.v[l] = sm.sign()[col];
      if (need.grads) {
        gg0.v[l] = pick(g0[0], g0[1], l, g);
        gg1.v[l] = pick(g1[0], g1[1], l, g);
      }
    }
    Epilogue<S>::template fields<FastLaneMath<N>>(p.plan, need, z, uu, s, gg0, gg1, out0, out1);
#pragma unroll
    for (int l = 0; l < N; ++l) {
      const float a = valid[l] ? out0.v[l] : 0.0f, b = valid[l] ? out1.v[l] : 0.0f;
#pragma unroll
      for (int h = 0; h < G; ++h) {  // the group's own slots only (compile-time indices)
        if (h != g) continue;
        z0[h >> 1].x[(h & 1) * N + l] = a;
        u[h >> 1].x[(h & 1) * N + l] = b;
      }
    }
  };
  if constexpr (S >= 0) {
    // g is a compile-time constant after unrolling: plain register reads
    auto direct = [](const auto& f0, const auto& f1, int l, int g) { return (g >> 1 ? f1 : f0)[(g & 1) * N + l]; };
#pragma unroll
    for (int g = 0; g < G; ++g) group(g, direct);
  } else {
    auto select = [](const auto& f0, const auto& f1, int l, int g) {
      return g == 0 ? f0[l] : (g == 1 ? f0[N + l] : (g == 2 ? f1[l] : f1[N + l]));
    };
#pragma unroll 1
    for (int g = 0; g < G; ++g) group(g, select);
  }
}

// Accumulators of this warp's output blocks -> store(row0 + row, col0 + col, value) for every
// element of the block's 64 x 64 output tile, through the float output tile. Starts and ends with
// a barrier.
template <typename T, typename Store>
__device__ void tc_flush(const TcSmem<T>& sm, FragC<T> (&acc)[2], int64_t row0, int64_t col0, Store&& store) {
  constexpr int ld_out = TcSmem<T>::ld_out;
  __syncthreads();
#pragma unroll
  for (int j = 0; j < 2; ++j)
    wmma::store_matrix_sync(sm.out() + warp_row_block() * 16 * ld_out + warp_col_block(j) * 16, acc[j], ld_out,
                            wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kTcTile * kTcTile; e += kThreads) {
    const int r = e / kTcTile, col = e % kTcTile;
    store(row0 + r, col0 + col, sm.out()[r * ld_out + col]);
  }
  __syncthreads();
}

template <int S, typename T>
__device__ __forceinline__ void features_forward_tc(const Problem<T>& p, T* out) {
  __shared__ __align__(128) unsigned char raw[TcSmem<T>::bytes];
  const TcSmem<T> sm{raw};
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTcTile, i0 = static_cast<int64_t>(blockIdx.y) * kTcTile;
  FragC<T> codes, z0[2], u[2];
  load_neurons(p, sm, r0);
  load_codes(sm, codes);
  tc_preactivations(p, sm, i0, r0, z0, u);
  tc_fields<S>(p, sm, codes, need_of(1u << kPhi0, false, kPhi0, kPhi0), i0, r0, z0, u);
  for_each_element<T>(codes, [&](int j, int e, int row, int col) {
    const int64_t i = i0 + row, r = r0 + col;
    if (i < p.n && r < p.m) out[i * p.m + r] = from_acc<T>(z0[j].x[e]);
  });
}

// The exponents of this tile's field tiles (term 0 in z0, term 1 in u): 0 unless float16. The
// maxima slots must have been cleared before a barrier that precedes this call; ends with one.
template <typename T>
__device__ __forceinline__ void tile_exponents(const TcSmem<T>& sm, const FragC<T> (&z0)[2], const FragC<T> (&u)[2],
                                               int terms, int (&exponent)[2]) {
  exponent[0] = exponent[1] = 0;
  if constexpr (kTileScaled<T>) {
    tile_max<T>(z0, sm.tile_max());
    if (terms > 1) tile_max<T>(u, sm.tile_max() + 1);
    __syncthreads();
    exponent[0] = tile_exponent(sm.tile_max()[0]);
    if (terms > 1) exponent[1] = tile_exponent(sm.tile_max()[1]);
  }
}

// The field tile f (F[i][r] at fs[i * ld + r]), times 2^exponent, in the input type.
template <typename T>
__device__ __forceinline__ void store_field(const FragC<T>& codes, const FragC<T> (&f)[2], int exponent, T* fs) {
  constexpr int ld = TcSmem<T>::ld_mix;
  const float up = ldexpf(1.0f, exponent);
  for_each_element<T>(codes, [&](int j, int e, int row, int col) { fs[row * ld + col] = from_acc<T>(f[j].x[e] * up); });
}

// Stage 2 for this warp's output blocks: acc[j] += 2^-exponent * sum_k A[.][k] B[k][.] over the
// tile's 64 k, A's 16 rows from `a` (A's layout; stepping `a_step` elements per k) and column block
// j of B from `b` (row-major). Blocks at or past `cols` hold padding only and are skipped.
template <typename T, typename LayoutA>
__device__ __forceinline__ void tile_products(FragC<T> (&acc)[2], const T* a, int a_step, const T* b, int64_t cols,
                                              int exponent) {
  constexpr int K = TcShape<T>::K, ld = TcSmem<T>::ld_mix;
  const float down = ldexpf(1.0f, -exponent);
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    if (warp_col_block(j) * 16 >= cols) continue;  // warp-uniform
    FragC<T> part;  // this tile's product, scaled back before it joins acc
    FragC<T>& into = kTileScaled<T> ? part : acc[j];
    if constexpr (kTileScaled<T>) wmma::fill_fragment(part, 0.0f);
#pragma unroll
    for (int k = 0; k < kTcTile; k += K) {
      FragA<T, LayoutA> fa;
      FragB<T, wmma::row_major> fb;
      load_input(fa, a + k * a_step, ld);
      load_input(fb, b + k * ld + warp_col_block(j) * 16, ld);
      wmma::mma_sync(into, fa, fb, into);
    }
    if constexpr (kTileScaled<T>) {
#pragma unroll
      for (int e = 0; e < part.num_elements; ++e) acc[j].x[e] = fmaf(part.x[e], down, acc[j].x[e]);
    }
  }
}

// Blocks own (sample tile, column tile); the loop runs over neuron tiles: the readout and dX.
template <int S, typename T>
__device__ __forceinline__ void neuron_sum_tc(const Problem<T>& p, const NeuronSum<T>& s, int64_t tiles_per_split) {
  constexpr int ld = TcSmem<T>::ld_mix;
  __shared__ __align__(128) unsigned char raw[TcSmem<T>::bytes];
  const TcSmem<T> sm{raw};
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTcTile, c0 = static_cast<int64_t>(blockIdx.y) * kTcTile;
  int64_t t_begin, t_end;
  inner_tile_range((p.m + kTcTile - 1) / kTcTile, tiles_per_split, t_begin, t_end);
  const Need need = need_of(s.fields(), p.moments, s.field[0], s.field[s.terms - 1]);
  // Column blocks past ncols hold padding only: their warps skip stage 2, and only the columns
  // that some warp reads are staged.
  const int64_t cols = s.ncols - c0 < kTcTile ? s.ncols - c0 : kTcTile;
  const int staged = static_cast<int>((cols + 15) / 16 * 16);
  FragC<T> codes, acc[2][2];
  load_codes(sm, codes);
#pragma unroll
  for (int t = 0; t < 2; ++t)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[t][j], 0.0f);
  for (int64_t rt = t_begin; rt < t_end; ++rt) {
    const int64_t r0 = rt * kTcTile;
    FragC<T> z0[2], u[2];
    load_neurons(p, sm, r0);
    if (kTileScaled<T> && threadIdx.x < 2) sm.tile_max()[threadIdx.x] = 0;
    __syncthreads();
    tc_preactivations(p, sm, i0, r0, z0, u);
    tc_fields<S>(p, sm, codes, need, i0, r0, z0, u);  // term 0's field in z0, term 1's in u
    int exponent[2];
    tile_exponents<T>(sm, z0, u, s.terms, exponent);
#pragma unroll
    for (int t = 0; t < 2; ++t) {  // unrolled: the fragments are named at compile time
      if (t >= s.terms) break;
      T *fs = sm.field(), *zs = sm.factor();
      store_field<T>(codes, t == 0 ? z0 : u, exponent[t], fs);  // F[i][r]
      for (int e = threadIdx.x; e < kTcTile * staged; e += kThreads) {
        const int r = e / staged, col = e % staged;
        const int64_t rr = r0 + r, cc = c0 + col;
        float zv = 0.0f;
        if (rr < p.m && cc < s.ncols) zv = to_acc(s.z[t][rr * s.z_row[t] + cc * s.z_col[t]]);
        zs[r * ld + col] = from_acc<T>(s.square[t] ? zv * zv : zv);  // Z[r][col]
      }
      __syncthreads();
      tile_products<T, wmma::row_major>(acc[t], fs + warp_row_block() * 16 * ld, 1, zs, cols, exponent[t]);
      __syncthreads();
    }
  }
#pragma unroll
  for (int t = 0; t < 2; ++t) {
    if (t >= s.terms) break;
    const float scale = static_cast<float>(s.scale[t]);
    tc_flush(sm, acc[t], i0, c0, [&](int64_t i, int64_t col, float v) {
      if (i < p.n && col < s.ncols) atomicAdd(&s.out[t][i * s.ld_out + col], scale * v);
    });
  }
}

// Blocks own (neuron tile, column tile); the loop runs over sample tiles: dW, dW0, db, db0, dA.
template <int S, typename T>
__device__ __forceinline__ void sample_sum_tc(const Problem<T>& p, const SampleSum<T>& s, int64_t tiles_per_split) {
  constexpr int ld = TcSmem<T>::ld_mix;
  __shared__ __align__(128) unsigned char raw[TcSmem<T>::bytes];
  const TcSmem<T> sm{raw};
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTcTile, c0 = static_cast<int64_t>(blockIdx.y) * kTcTile;
  int64_t t_begin, t_end;
  inner_tile_range((p.n + kTcTile - 1) / kTcTile, tiles_per_split, t_begin, t_end);
  const Need need = need_of(s.fields(), p.moments, s.term[0].field, s.term[s.terms - 1].field);
  // Column blocks past the reduction's width hold padding only: their warps skip stage 2, and only
  // the columns that some warp reads are staged.
  const int64_t cols = s.width() - c0 < kTcTile ? s.width() - c0 : kTcTile;
  const int staged = static_cast<int>((cols + 15) / 16 * 16);
  FragC<T> codes, acc[2];
  load_neurons(p, sm, r0);
  load_codes(sm, codes);
#pragma unroll
  for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[j], 0.0f);
  for (int64_t it = t_begin; it < t_end; ++it) {
    const int64_t i0 = it * kTcTile;
    FragC<T> z0[2], u[2];
    if constexpr (kTileScaled<T>) {
      if (threadIdx.x < 2) sm.tile_max()[threadIdx.x] = 0;
      __syncthreads();
    }
    tc_preactivations(p, sm, i0, r0, z0, u);
    tc_fields<S>(p, sm, codes, need, i0, r0, z0, u);  // term 0's field in z0, term 1's in u
    int exponent[2];
    tile_exponents<T>(sm, z0, u, s.terms, exponent);
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      if (t >= s.terms) break;
      if (!term_in_tile(s, t, c0, kTcTile)) continue;  // block-uniform
      T *fs = sm.field(), *ys = sm.factor();
      store_field<T>(codes, t == 0 ? z0 : u, exponent[t], fs);  // F[i][r]
      for (int e = threadIdx.x; e < kTcTile * staged; e += kThreads) {
        const int i = e / staged, col = e % staged;
        const int64_t ii = i0 + i;
        ys[i * ld + col] = from_acc<T>(ii < p.n ? sample_factor(s, t, ii, c0 + col) : 0.0f);  // Y_t[i][col]
      }
      __syncthreads();
      // F^T: element (neuron, sample) at fs[sample * ld + neuron], a column-major operand.
      tile_products<T, wmma::col_major>(acc, fs + warp_row_block() * 16, ld, ys, cols, exponent[t]);
      __syncthreads();
    }
  }
  tc_flush(sm, acc, r0, c0, [&](int64_t r, int64_t col, float v) {
    if (r < p.m) sample_store(s, r, col, v);
  });
}
#endif  // TN_TENSOR_CORES

// Kernel entry points exist for every architecture; the bodies only where mma does.
#if TN_TENSOR_CORES
#define TN_TC_BODY(call) call
#else
#define TN_TC_BODY(call) __trap()
#endif

// S: the epilogue, a series of kSpecialised or kGenericEpilogue.
template <typename T, int S>
__global__ void __launch_bounds__(kThreads, 1) features_forward_tc_kernel(TN_PARAM(Problem<T>) p, T* out) {
  TN_TC_BODY(features_forward_tc<S>(p, out));
}
template <typename T, int S>
__global__ void __launch_bounds__(kThreads, 1) neuron_sum_tc_kernel(TN_PARAM(Problem<T>) p,
                                                                  TN_PARAM(NeuronSum<T>) s, int64_t per) {
  TN_TC_BODY(neuron_sum_tc<S>(p, s, per));
}
template <typename T, int S>
__global__ void __launch_bounds__(kThreads, 1) sample_sum_tc_kernel(TN_PARAM(Problem<T>) p,
                                                                  TN_PARAM(SampleSum<T>) s, int64_t per) {
  TN_TC_BODY(sample_sum_tc<S>(p, s, per));
}

#undef TN_TC_BODY

}  // namespace tn::cuda
