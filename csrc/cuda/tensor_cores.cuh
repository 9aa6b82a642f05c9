// Tensor-core kernels of taylornet (sm_80 and newer): bfloat16 and float16 inputs (k = 16 per mma),
// and float32 inputs rounded to TF32 (k = 8) when torch allows TF32 matmuls; accumulation in float32.
//
// Same structure as the SIMT kernels: a block owns a 64 x 64 tile of (samples, neurons) (the
// features kernel on MmaLoop: 128 x 64, as two 64 x 64 halves that share stage 1's w0, w). Stage 1
// computes the tile's z0 = x w0^T and u = x w^T with warp-level mma, each warp holding the z0 and
// u accumulators of the same 16 x 32 sub-tile, so a neuron's pair meets in one thread's registers
// (the two products share their A fragment: x is loaded once for both). The Taylor epilogue runs
// on the accumulator elements in place. Stage 2 writes the contracted field to shared memory in the
// input type (float16: scaled per tile into its range) and multiplies it with the other factor
// (A^T, W, x, gout) on tensor cores again.
//
// Two mainloops share this structure, the kernels taking the mainloop's tag as their first template
// argument: WmmaLoop (here: nvcuda::wmma fragments, two staged k chunks) and MmaLoop (mma_sync.cuh:
// mma.sync and ldmatrix with the PTX ISA's fragment layouts, three staged k chunks). Everything
// that touches an accumulator goes through its element positions, (row, column) codes: wmma's
// layout is unspecified, so its kernels load a table of codes into an accumulator fragment once
// (element e of any accumulator fragment sits at the position the code fragment's element e
// names); mma.sync's layout is specified, and its codes are arithmetic on the lane index.
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

// The tensor-core mainloops: tags for the kernels' first template argument, with the number of k
// chunks of stage 1 in shared memory at once (kStages), the samples of the features kernel's block
// tile (kFeaturesRows, a multiple of 64, by 64 neurons; each warp holds kFeaturesRows / 64 row
// blocks of 16 x 32, which share its w0 and w fragments) and the blocks per SM that kernel is
// built for (its register budget). The reductions' tiles are 64 x 64 on both.
struct WmmaLoop {
  static constexpr int kStages = 2;
  static constexpr int kFeaturesRows = 64, kFeaturesBlocksPerSm = 1;
};
struct MmaLoop {
  static constexpr int kStages = 3;
  static constexpr int kFeaturesRows = 128, kFeaturesBlocksPerSm = 2;
};

// The samples per inner tile of sample_sum on mainloop M: 128 on mma.sync for 16-bit inputs with a
// specialised epilogue, as two halves of 64 that share stage 1's w0 and w fragments (half 1's z0
// and u wait in registers while half 0 runs its epilogue and stage 2: 32 registers that the generic
// epilogue and TF32 do not have to spare under one block's 255), else 64.
template <typename M, typename T>
__host__ __device__ constexpr int sample_sum_rows(bool specialised) {
  return std::is_same_v<M, MmaLoop> && sizeof(T) == 2 && specialised ? 2 * kTcTile : kTcTile;
}

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

// Shared memory. The work region holds stage 1's input chunks (Stages buffers, for the asynchronous
// copies of the next chunks during the products of this one), then the staged cotangents, then the
// field tiles and stage 2's factor tile: never live at once. The fixed part holds the (row, column)
// codes (wmma), the tile's signs and biases, the float16 tile maxima and the bias sums of a
// reduction over samples. Row strides keep every fragment pointer 32-byte aligned, and make the
// eight 16-byte rows of an ldmatrix matrix (row strides of 80, 144 and 272 bytes) fall in distinct
// banks.
template <typename T, int Stages>
struct TcSmem {
  using elem = T;
  static constexpr int rows = kTcTile;                                // samples of stage 1's x chunks
  static constexpr int ld_in = TcShape<T>::chunk + TcShape<T>::pad;  // x, w0, w chunks: [row][k]
  static constexpr int ld_mix = kTcTile + TcShape<T>::pad;           // field and factor: [k][col]
  static constexpr int stages = Stages;
  static constexpr int in_bytes = Stages * 3 * kTcTile * ld_in * static_cast<int>(sizeof(T));
  static constexpr int shared_bytes = in_bytes;  // the work region of stage 1
  static constexpr int fixed_bytes =
      static_cast<int>(round_up((256 + 3 * kTcTile + kMaxSampleTerms + kMaxSampleTerms * kTcTile) * 4, 128));
  static constexpr int bytes = shared_bytes + fixed_bytes;  // the features kernel's static shared memory

  unsigned char* raw;  // the work region
  unsigned char* fix;  // the fixed part
  __device__ T* x(int buf) const { return reinterpret_cast<T*>(raw) + buf * 3 * kTcTile * ld_in; }
  __device__ T* w0(int buf) const { return x(buf) + kTcTile * ld_in; }
  __device__ T* w(int buf) const { return w0(buf) + kTcTile * ld_in; }
  __device__ float* codes() const { return reinterpret_cast<float*>(fix); }
  __device__ float* sign() const { return codes() + 256; }  // per neuron of the tile
  __device__ float* b0() const { return sign() + kTcTile; }
  __device__ float* b() const { return b0() + kTcTile; }
  __device__ int* tile_max() const { return reinterpret_cast<int*>(b() + kTcTile); }  // per term, float bits
  __device__ float* bias(int t) const { return reinterpret_cast<float*>(tile_max() + kMaxSampleTerms) + t * kTcTile; }
};

// The features kernel's dynamic shared memory: as TcSmem, with stage 1's x chunks `Rows` samples
// tall (w0's and w's stay 64 neurons), so that each chunk of w0 and w serves Rows / 64 row blocks.
template <typename T, int Stages, int Rows>
struct TcTallSmem : TcSmem<T, Stages> {
  using Base = TcSmem<T, Stages>;
  static_assert(Rows % kTcTile == 0, "the tile's samples are a multiple of 64");
  static constexpr int rows = Rows;
  static constexpr int in_bytes = Stages * (Rows + 2 * kTcTile) * Base::ld_in * static_cast<int>(sizeof(T));
  static constexpr int shared_bytes = in_bytes > Base::shared_bytes ? in_bytes : Base::shared_bytes;
  static constexpr int bytes = shared_bytes + Base::fixed_bytes;

  __device__ TcTallSmem(unsigned char* work, unsigned char* fixed) : Base{work, fixed} {}
  __device__ T* x(int buf) const { return reinterpret_cast<T*>(this->raw) + buf * (Rows + 2 * kTcTile) * Base::ld_in; }
  __device__ T* w0(int buf) const { return x(buf) + Rows * Base::ld_in; }
  __device__ T* w(int buf) const { return w0(buf) + kTcTile * Base::ld_in; }
};
template <typename M, typename T>
using FeaturesSmem = TcTallSmem<T, M::kStages, M::kFeaturesRows>;

// The epilogue's staged cotangents (CotangentSmem): kCStage outputs of gout's rows and A's columns
// of a tile at a time.
constexpr int kCStage = 32;
constexpr int kCotangentBytes = (2 * kTcTile * (kCStage + 1) + kCStage * (kTcTile + 1)) * 4;

// The reductions' dynamic shared memory: the fixed part, the work region and the float accumulators
// of the block's column tiles ([row][col], one 64 x 64 tile per column tile and accumulator slot),
// which live across the whole inner loop. The work region holds stage 1's bytes (its chunks for
// `Rows` samples, as TcTallSmem, or the `Stage1Bytes` of another mainloop's stage 1 where more) and
// the scratch of the epilogue and stage 2 (the staged cotangents, then the field tiles of 64 samples
// and stage 2's factor tile), from `raw` on: in the same bytes, used in turn, or where `separate`
// after stage 1's, so that the next tile's stage 1 can run while the scratch is in use.
template <typename T, int Stages, int Rows = kTcTile, int64_t Stage1Bytes = 0>
struct TcReduceSmem : TcTallSmem<T, Stages, Rows> {
  using Base = TcTallSmem<T, Stages, Rows>;
  static constexpr int64_t field_bytes = int64_t(kTcTile) * Base::ld_mix * sizeof(T);
  static constexpr int acc_ld = kTcTile + 4;
  static constexpr int64_t acc_tile_bytes = int64_t(kTcTile) * acc_ld * 4;
  static constexpr int64_t stage1_bytes = Base::shared_bytes > Stage1Bytes ? Base::shared_bytes : Stage1Bytes;
  __host__ __device__ static constexpr int64_t scratch_bytes(int fields) {
    return (fields + 1) * field_bytes > kCotangentBytes ? (fields + 1) * field_bytes : kCotangentBytes;
  }
  __host__ __device__ static constexpr int64_t work_bytes(int fields, bool separate = false) {
    const int64_t scratch = scratch_bytes(fields);
    return separate ? stage1_bytes + scratch : stage1_bytes > scratch ? stage1_bytes : scratch;
  }
  // Everything but the accumulators.
  __host__ __device__ static constexpr int64_t fixed(int fields, bool separate = false) {
    return Base::fixed_bytes + work_bytes(fields, separate);
  }

  int fields;
  bool separate;
  unsigned char* stage1;  // stage 1's bytes: `raw` itself, or the bytes before it where separate
  __device__ TcReduceSmem(unsigned char* dyn, int f, bool sep = false)
      : Base(dyn + Base::fixed_bytes + (sep ? stage1_bytes : 0), dyn), fields(f), separate(sep),
        stage1(dyn + Base::fixed_bytes) {}
  __device__ T* field(int t) const { return reinterpret_cast<T*>(this->raw) + t * kTcTile * Base::ld_mix; }
  __device__ T* factor() const { return field(fields); }
  __device__ float* acc(int64_t k) const {
    return reinterpret_cast<float*>(stage1 + work_bytes(fields, separate)) + k * kTcTile * acc_ld;
  }
};

// 99 KiB: the shared memory per block of sm_86 and sm_89, the smallest of the GPUs with tensor cores.
static_assert(FeaturesSmem<MmaLoop, float>::bytes <= 101376 && FeaturesSmem<MmaLoop, __half>::bytes <= 101376 &&
                  FeaturesSmem<WmmaLoop, float>::bytes <= 101376 && FeaturesSmem<WmmaLoop, __half>::bytes <= 101376,
              "the features kernel's shared memory fits every GPU with tensor cores");
static_assert(TcSmem<float, 2>::ld_in * 4 * 16 % 32 == 0 && TcSmem<__half, 2>::ld_in * 2 * 16 % 32 == 0 &&
                  TcSmem<float, 2>::ld_mix * 4 * 8 % 32 == 0 && TcSmem<__half, 2>::ld_mix * 2 * 16 % 32 == 0 &&
                  TcReduceSmem<float, 2>::field_bytes % 128 == 0 && TcReduceSmem<__half, 2>::field_bytes % 128 == 0 &&
                  TcReduceSmem<float, 2>::acc_tile_bytes % 128 == 0 && TcSmem<float, 2>::shared_bytes % 128 == 0 &&
                  TcSmem<__half, 2>::shared_bytes % 128 == 0 && TcSmem<float, 3>::shared_bytes % 128 == 0 &&
                  TcSmem<__half, 3>::shared_bytes % 128 == 0 && FeaturesSmem<MmaLoop, float>::shared_bytes % 128 == 0 &&
                  FeaturesSmem<MmaLoop, __half>::shared_bytes % 128 == 0,
              "fragment pointers must stay 32-byte aligned");
// ldmatrix: every row is 16 bytes at a 16-byte aligned address, and the row strides are an odd
// number of 16-byte units apart modulo 128 bytes (the eight rows of a matrix in distinct banks).
static_assert(TcSmem<float, 3>::ld_in * 4 % 16 == 0 && TcSmem<__half, 3>::ld_in * 2 % 16 == 0 &&
                  TcSmem<float, 3>::ld_mix * 4 % 16 == 0 && TcSmem<__half, 3>::ld_mix * 2 % 16 == 0 &&
                  TcSmem<float, 3>::ld_in * 4 / 16 % 2 == 1 && TcSmem<__half, 3>::ld_in * 2 / 16 % 2 == 1 &&
                  TcSmem<float, 3>::ld_mix * 4 / 16 % 2 == 1 && TcSmem<__half, 3>::ld_mix * 2 / 16 % 2 == 1,
              "ldmatrix rows must be 16-byte aligned and free of bank conflicts");

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

// A mainloop's accumulator fragment (a 16 x 16 block of a warp's tile) and code fragment.
template <typename M, typename T>
struct TcTypes;
template <typename T>
struct TcTypes<WmmaLoop, T> {
  using Acc = FragC<T>;
  using Codes = FragC<T>;
};

template <typename T, typename Frag>
__device__ __forceinline__ void load_input(Frag& f, const T* ptr, unsigned ld) {
  wmma::load_matrix_sync(f, ptr, ld);
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int e = 0; e < f.num_elements; ++e) f.x[e] = wmma::__float_to_tf32(f.x[e]);
  }
}

// Warp w owns the 16-row block w % 4 and the 16-column blocks 2 (w / 4) and 2 (w / 4) + 1 of a
// 64 x 64 tile, in both stages: warps 4q .. 4q + 3 (a warpgroup) own the 32 columns 32q .. 32q + 31
// (the half q) of all 64 rows, the shape of one warpgroup's wgmma accumulator (wgmma.cuh), so every
// mainloop hands the epilogue the same elements per thread. A warpgroup that holds both halves
// (the ping-pong kernel, wgmma.cuh) names the half it hands over.
__device__ __forceinline__ int warp_row_block() { return (threadIdx.x / 32) & 3; }
__device__ __forceinline__ int warp_half() { return (threadIdx.x / 32) >> 2; }
__device__ __forceinline__ int warp_col_block(int j, int half = warp_half()) { return half * 2 + j; }

// The (row, column) code fragment: row * 16 + column at every element. Contains a barrier (the
// table is complete before any warp loads it).
template <typename T, int St>
__device__ void load_codes(const TcSmem<T, St>& sm, FragC<T>& codes) {
  for (int e = threadIdx.x; e < 256; e += kThreads) sm.codes()[e] = static_cast<float>(e);
  __syncthreads();
  wmma::load_matrix_sync(codes, sm.codes(), 16, wmma::mem_row_major);
}

// Signs and biases of neurons r0 .. r0 + 63 as float; callers put a barrier before their use.
template <typename T, int St>
__device__ void load_neurons(const Problem<T>& p, const TcSmem<T, St>& sm, int64_t r0) {
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
template <typename Acc>
__device__ __forceinline__ void tile_max(const Acc (&f)[2], int* slot) {
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

// Stages x, w0, w [k0, k0 + chunk) of the tile (Sm::rows samples, 64 neurons) into buffer buf,
// 16 bytes per copy (needs d a multiple of the vector and 16-byte aligned rows). A 64-sample tile
// takes x, w0 and w in one loop; a taller one takes x and then w0, w.
template <typename T, typename Sm>
__device__ void stage_chunk_async(const Problem<T>& p, const Sm& sm, int buf, int64_t k0, int64_t i0, int64_t r0) {
  constexpr int chunk = TcShape<T>::chunk, ld = Sm::ld_in, V = 16 / sizeof(T), per_row = chunk / V;
  constexpr bool tall = Sm::rows > kTcTile;
  T *xs = sm.x(buf), *w0s = sm.w0(buf), *ws = sm.w(buf);
  auto stage_x = [&](int row, int k) {
    const int64_t kk = k0 + k, i = i0 + row;
    if (kk < p.d && i < p.n) copy16_async(xs + row * ld + k, p.x + i * p.d + kk);  // whole vectors: V | d
    else *reinterpret_cast<uint4*>(xs + row * ld + k) = make_uint4(0, 0, 0, 0);
  };
  if constexpr (tall) {
    for (int e = threadIdx.x; e < Sm::rows * per_row; e += kThreads) stage_x(e / per_row, e % per_row * V);
  }
  for (int e = threadIdx.x; e < kTcTile * per_row; e += kThreads) {
    const int row = e / per_row, k = e % per_row * V;
    const int64_t kk = k0 + k, r = r0 + row;
    if constexpr (!tall) stage_x(row, k);
    if (kk < p.d && r < p.m) {
      copy16_async(w0s + row * ld + k, p.w0 + r * p.d + kk);
      copy16_async(ws + row * ld + k, p.w + r * p.d + kk);
    } else {
      *reinterpret_cast<uint4*>(w0s + row * ld + k) = make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint4*>(ws + row * ld + k) = make_uint4(0, 0, 0, 0);
    }
  }
}

// Stages the same chunk element by element: any d, any alignment.
template <typename T, typename Sm>
__device__ void stage_chunk(const Problem<T>& p, const Sm& sm, int buf, int64_t k0, int64_t i0, int64_t r0) {
  constexpr int chunk = TcShape<T>::chunk, ld = Sm::ld_in;
  constexpr bool tall = Sm::rows > kTcTile;
  const T zero = from_acc<T>(acc_t<T>(0));
  T *xs = sm.x(buf), *w0s = sm.w0(buf), *ws = sm.w(buf);
  auto stage_x = [&](int row, int k) {
    const int64_t kk = k0 + k, i = i0 + row;
    xs[row * ld + k] = (kk < p.d && i < p.n) ? p.x[i * p.d + kk] : zero;
  };
  // Consecutive threads read consecutive k of a row: coalesced along d.
  if constexpr (tall) {
    for (int e = threadIdx.x; e < Sm::rows * chunk; e += kThreads) stage_x(e / chunk, e % chunk);
  }
  for (int e = threadIdx.x; e < kTcTile * chunk; e += kThreads) {
    const int row = e / chunk, k = e % chunk;
    const int64_t kk = k0 + k, r = r0 + row;
    const bool kin = kk < p.d;
    if constexpr (!tall) stage_x(row, k);
    w0s[row * ld + k] = (kin && r < p.m) ? p.w0[r * p.d + kk] : zero;
    ws[row * ld + k] = (kin && r < p.m) ? p.w[r * p.d + kk] : zero;
  }
}

// The products of one staged chunk.
template <typename T, int St>
__device__ __forceinline__ void chunk_products(const TcSmem<T, St>& sm, int buf, FragC<T> (&z0)[2],
                                               FragC<T> (&u)[2]) {
  constexpr int chunk = TcShape<T>::chunk, K = TcShape<T>::K, ld = TcSmem<T, St>::ld_in;
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
template <typename T, int St>
__device__ void tc_preactivations(const Problem<T>& p, const TcSmem<T, St>& sm, int64_t i0, int64_t r0,
                                  FragC<T> (&z0)[2], FragC<T> (&u)[2]) {
  constexpr int chunk = TcShape<T>::chunk, V = 16 / sizeof(T);
  TN_COUNT_RECOMPUTE(p, i0, r0, kTcTile, kTcTile);
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

// The position (row, column in its 16 x 16 block) of accumulator element e, and of element
// (g % 2) * 4 + l of a group of four through `pick` (selects where g is not a compile-time constant).
struct Pos {
  int row, col;
};
template <int K>
__device__ __forceinline__ Pos pos_at(const wmma::fragment<wmma::accumulator, 16, 16, K, float>& codes, int e) {
  const int code = static_cast<int>(codes.x[e]);
  return {code >> 4, code & 15};
}
template <int K, typename Pick>
__device__ __forceinline__ Pos pos_of(const wmma::fragment<wmma::accumulator, 16, 16, K, float>& codes, Pick&& pick,
                                      int l, int g) {
  const int code = static_cast<int>(pick(codes.x, codes.x, l, g));
  return {code >> 4, code & 15};
}

// Calls f(j, e, row, col) for element e of this warp's accumulator block j, at (row, col) of the
// block's 64 x 64 tile (its column half `half`).
template <typename Codes, typename F>
__device__ __forceinline__ void for_each_element(const Codes& codes, F&& f, int half = warp_half()) {
  const int rb = warp_row_block();
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < Codes::num_elements; ++e) {
      const Pos pos = pos_at(codes, e);
      f(j, e, rb * 16 + pos.row, warp_col_block(j, half) * 16 + pos.col);
    }
}

// The output cotangents' sums per accumulator element, g_rho[i][r] = scale_rho sum_j gout_rho[i][j]
// A_rho[j][r] (A_0 = A, A_1 = A * A, the latter for the moments only), or the features' own
// cotangent gelem[i][r] in g0. gout's rows and A's columns of the tile are staged in shared memory
// (from `raw` on: stage 1's bytes, free after stage 1, or the reductions' scratch, see
// TcReduceSmem), kCStage outputs at a time. Contains barriers: call it
// after stage 1's last barrier, and it ends with one.
template <typename T, int St>
struct CotangentSmem {
  static constexpr int ld_g = kCStage + 1, ld_a = kTcTile + 1;
  float* g0;  // [sample][j]
  float* g1;
  float* a;   // [j][neuron]
  __device__ explicit CotangentSmem(const TcSmem<T, St>& sm)
      : g0(reinterpret_cast<float*>(sm.raw)), g1(g0 + kTcTile * ld_g), a(g1 + kTcTile * ld_g) {}
  static constexpr int bytes = (2 * kTcTile * ld_g + kCStage * ld_a) * 4;
  static_assert(bytes == kCotangentBytes, "TcReduceSmem sizes its scratch by kCotangentBytes");
};
static_assert(CotangentSmem<float, 2>::bytes <= TcSmem<float, 2>::shared_bytes &&
                  CotangentSmem<__half, 2>::bytes <= TcSmem<__half, 2>::shared_bytes,
              "the staged cotangents fit the shared region");

template <typename T, int St, typename Codes>
__device__ __forceinline__ void tc_cotangents(const Problem<T>& p, const TcSmem<T, St>& sm, const Codes& codes,
                                              int64_t i0, int64_t r0, float (&g0)[2][Codes::num_elements],
                                              float (&g1)[2][Codes::num_elements]) {
  constexpr int E = Codes::num_elements;
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
        const Pos pos = pos_at(codes, e);
        const int64_t i = i0 + rb * 16 + pos.row, r = r0 + warp_col_block(j) * 16 + pos.col;
        if (i < p.n && r < p.m) g0[j][e] = to_acc(p.gelem[i * p.m + r]);
      }
    return;
  }
  const CotangentSmem<T, St> cs(sm);
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
        const Pos pos = pos_at(codes, e);
        const float* gr0 = cs.g0 + (rb * 16 + pos.row) * cs.ld_g;
        const float* gr1 = cs.g1 + (rb * 16 + pos.row) * cs.ld_g;
        const float* ac = cs.a + warp_col_block(j) * 16 + pos.col;
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
// replace z0 and u, and (Outs = 4) fields need.pick[2] and need.pick[3] go to extra[0] and
// extra[1] (zero outside the problem, so that padding never contributes). Contains barriers where
// gradients are asked for (the staged cotangents). A specialised epilogue is unrolled over the
// thread's four groups of four elements; the generic one, much larger (every activation's
// functions), runs as a loop over the groups, which it reads and writes through selects
// (registers, not an indexed array), so that each kernel holds one copy of it. `half`: the column
// half of the tile that z0 and u hold (warp_col_block); the staged cotangents are the whole block's
// work, by its own warps' halves, so a kernel that names another half asks for no gradients.
template <int S, int Outs, typename T, int St, typename Codes, typename Acc>
__device__ __forceinline__ void tc_fields(const Problem<T>& p, const TcSmem<T, St>& sm, const Codes& codes,
                                          const Need& need, int64_t i0, int64_t r0, Acc (&z0)[2], Acc (&u)[2],
                                          Acc (&extra)[2][2], int half = warp_half()) {
  static_assert(Outs == 1 || Outs == 2 || Outs == 4, "one, two or four fields leave the epilogue");
  constexpr int N = 4, E = Acc::num_elements, G = 2 * E / N;
  static_assert(E == 2 * N, "accumulator fragments are taken as two groups of four elements");
  using V = Lanes<float, N>;
  const int rb = warp_row_block();
  float g0[2][E], g1[2][E];
  if (need.grads) tc_cotangents(p, sm, codes, i0, r0, g0, g1);
  // group g: fragment g / 2, elements (g % 2) * N ...
  auto group = [&](int g, auto pick) {
    V z, uu, s, gg0(0.0f), gg1(0.0f), out[Outs];
    bool valid[N];
    const int j = g >> 1;
#pragma unroll
    for (int l = 0; l < N; ++l) {
      const Pos pos = pos_of(codes, pick, l, g);
      const int row = rb * 16 + pos.row, col = warp_col_block(j, half) * 16 + pos.col;
      valid[l] = i0 + row < p.n && r0 + col < p.m;
      z.v[l] = valid[l] ? pick(z0[0].x, z0[1].x, l, g) + sm.b0()[col] : 0.0f;
      uu.v[l] = valid[l] ? pick(u[0].x, u[1].x, l, g) + sm.b()[col] : 0.0f;
      s.v[l] = sm.sign()[col];
      if (need.grads) {
        gg0.v[l] = pick(g0[0], g0[1], l, g);
        gg1.v[l] = pick(g1[0], g1[1], l, g);
      }
    }
    Epilogue<S>::template fields<FastLaneMath<N>, Outs>(p.plan, need, z, uu, s, gg0, gg1, out);
#pragma unroll
    for (int l = 0; l < N; ++l) {
      float o[Outs];
#pragma unroll
      for (int k = 0; k < Outs; ++k) o[k] = valid[l] ? out[k].v[l] : 0.0f;
#pragma unroll
      for (int h = 0; h < G; ++h) {  // the group's own slots only (compile-time indices)
        if (h != g) continue;
        const int e = (h & 1) * N + l;
        z0[h >> 1].x[e] = o[0];
        if constexpr (Outs > 1) u[h >> 1].x[e] = o[1];
        if constexpr (Outs > 2) {
          extra[0][h >> 1].x[e] = o[2];
          extra[1][h >> 1].x[e] = o[3];
        }
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

// The features of this warp's blocks of the 64 x 64 tile at (i0, r0), column half `half`: the
// epilogue on z0 and u (biases not yet added), then h into out (n x m) inside the problem.
template <int S, typename T, int St, typename Codes, typename Acc>
__device__ __forceinline__ void features_tile(const Problem<T>& p, const TcSmem<T, St>& sm, const Codes& codes,
                                              int64_t i0, int64_t r0, Acc (&z0)[2], Acc (&u)[2], T* out,
                                              int half = warp_half()) {
  Acc unused[2][2];
  tc_fields<S, 1>(p, sm, codes, need_of(1u << kPhi0, false, kPhi0, kPhi0), i0, r0, z0, u, unused, half);
  for_each_element(
      codes,
      [&](int j, int e, int row, int col) {
        const int64_t i = i0 + row, r = r0 + col;
        if (i < p.n && r < p.m) out[i * p.m + r] = from_acc<T>(z0[j].x[e]);
      },
      half);
}

// A block owns M::kFeaturesRows samples by 64 neurons (dynamic shared memory: FeaturesSmem). Its
// H row halves of 64 samples share stage 1's w0 and w chunks; the epilogue and the stores then
// run per half, each exactly as for a 64 x 64 tile at samples i0 + 64 h.
template <typename M, int S, typename T>
__device__ __forceinline__ void features_forward_tc(const Problem<T>& p, T* out) {
  using Sm = FeaturesSmem<M, T>;
  using Acc = typename TcTypes<M, T>::Acc;
  constexpr int H = M::kFeaturesRows / kTcTile;
  TN_DYNAMIC_SMEM(dyn);
  const Sm sm(dyn, dyn + Sm::shared_bytes);
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTcTile;
  const int64_t i0 = static_cast<int64_t>(blockIdx.y) * M::kFeaturesRows;
  typename TcTypes<M, T>::Codes codes;
  Acc z0[H][2], u[H][2];
  load_neurons(p, sm, r0);
  load_codes(sm, codes);
  if constexpr (H == 1) tc_preactivations(p, sm, i0, r0, z0[0], u[0]);
  else tc_preactivations(p, sm, i0, r0, z0, u);
#pragma unroll
  for (int h = 0; h < H; ++h) {
    const int64_t ih = i0 + h * kTcTile;
    if (ih >= p.n) break;  // block-uniform: a last tile's empty half
    features_tile<S>(p, sm, codes, ih, r0, z0[h], u[h], out);
  }
}

// The field tiles of this (sample, neuron) tile in shared memory, F_t[i][r] at field(t)[i * ld + r]
// in the input type, for the terms t < terms that `active` admits: term 0's field in z0, term 1's
// in u, terms 2 and 3 in extra. A float16 tile is scaled by 2^e first, e from its largest
// magnitude (tile_exponent of tile_max()[t], which stage 2 reads again). The maxima must have been
// cleared before a barrier that precedes this call; ends with a barrier.
template <typename T, int St, int R, int64_t W, typename Codes, typename Acc, typename Active>
__device__ __forceinline__ void store_fields(const TcReduceSmem<T, St, R, W>& sm, const Codes& codes, const Acc (&z0)[2],
                                             const Acc (&u)[2], const Acc (&extra)[2][2], int terms,
                                             Active&& active) {
  constexpr int ld = TcSmem<T, St>::ld_mix;
  auto each = [&](auto&& f) {  // f(t, fragments of term t), t known at compile time
    if (terms > 0 && active(0)) f(0, z0);
    if (terms > 1 && active(1)) f(1, u);
    if (terms > 2 && active(2)) f(2, extra[0]);
    if (terms > 3 && active(3)) f(3, extra[1]);
  };
  if constexpr (kTileScaled<T>) {
    each([&](int t, const Acc(&f)[2]) { tile_max(f, sm.tile_max() + t); });
    __syncthreads();
  }
  each([&](int t, const Acc(&f)[2]) {
    const float up = kTileScaled<T> ? ldexpf(1.0f, tile_exponent(sm.tile_max()[t])) : 1.0f;
    T* fs = sm.field(t);
    for_each_element(codes, [&](int j, int e, int row, int col) { fs[row * ld + col] = from_acc<T>(f[j].x[e] * up); });
  });
  __syncthreads();
}

// Clears the float16 field tiles' maxima that store_fields gathers, and publishes that (a no-op
// for the other types).
template <typename T, int St>
__device__ __forceinline__ void clear_tile_max(const TcSmem<T, St>& sm) {
  if constexpr (kTileScaled<T>) {
    if (threadIdx.x < kMaxSampleTerms) sm.tile_max()[threadIdx.x] = 0;
    __syncthreads();
  }
}

// 2^-e for term t's field tile (1 unless float16).
template <typename T, int St>
__device__ __forceinline__ float field_unscale(const TcSmem<T, St>& sm, int t) {
  if constexpr (kTileScaled<T>) return ldexpf(1.0f, -tile_exponent(sm.tile_max()[t]));
  else return 1.0f;
}

// Stage 2 for this warp's output blocks of one column tile: acc += down * sum_k A[.][k] B[k][.]
// over the tile's 64 k, the float accumulators in shared memory (this warp's 16 x 32 of them,
// row-major with stride acc_ld), A's 16 rows from `a` (stride ld_mix: A[m][k] at a[m * ld + k], or
// with kTransA at a[k * ld + m]) and column block j of B from `b` (B[k][n] at b[k * ld + n]).
// Blocks at or past `cols` hold padding only and are skipped. The codes select the mainloop.
template <bool kTransA, int CodesK, typename T>
__device__ __forceinline__ void tile_products(const wmma::fragment<wmma::accumulator, 16, 16, CodesK, float>&,
                                              float* acc, const T* a, const T* b, int64_t cols, float down) {
  using LayoutA = std::conditional_t<kTransA, wmma::col_major, wmma::row_major>;
  constexpr int K = TcShape<T>::K, ld = TcSmem<T, 2>::ld_mix, acc_ld = TcReduceSmem<T, 2>::acc_ld;
  constexpr int a_step = kTransA ? ld : 1;
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    if (warp_col_block(j) * 16 >= cols) continue;  // warp-uniform
    float* at = acc + warp_row_block() * 16 * acc_ld + warp_col_block(j) * 16;
    FragC<T> sum, part;  // a float16 tile's product is scaled back before it joins the sum
    wmma::load_matrix_sync(sum, at, acc_ld, wmma::mem_row_major);
    FragC<T>& into = kTileScaled<T> ? part : sum;
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
      for (int e = 0; e < part.num_elements; ++e) sum.x[e] = fmaf(part.x[e], down, sum.x[e]);
    }
    wmma::store_matrix_sync(at, sum, acc_ld, wmma::mem_row_major);
  }
}

// The reductions' loops over the halves of a 128-sample tile read half 0's registers: this moves
// half 1's accumulators there (constant indices, so no local memory; a no-op for 64 samples).
template <typename Acc, int H>
__device__ __forceinline__ void next_half(Acc (&z0)[H][2], Acc (&u)[H][2]) {
  static_assert(H == 1 || H == 2, "one or two halves");
  if constexpr (H == 2) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      z0[0][j] = z0[1][j];
      u[0][j] = u[1][j];
    }
  }
}

// A block's inner tiles in the order it takes them: tile j at samples i0 + j di, neurons r0 + j dr.
struct TileRun {
  int64_t i0, r0, di, dr, count;
  __device__ int64_t i(int64_t j) const { return i0 + j * di; }
  __device__ int64_t r(int64_t j) const { return r0 + j * dr; }
};

// The block's tiles in order: stage 1 of each (TcStage1 and its kin: begin, then per tile start and
// finish, which leaves the products in z0 and u) and body(j), the epilogue and stage 2 of tile j. A
// stage 1 that overlaps (kOverlaps) gets iterations that start tile j's stage 1, run body(j - 1)
// under it and then finish tile j: the wgmmas issued by start and the wait for them in finish stay
// in one iteration (ptxas serialises wgmmas in flight across a loop's back edge). The others keep
// the plain order: stage 1 of tile j, then body(j).
template <int H, typename Stage1, typename Sm, typename Acc, typename Body>
__device__ __forceinline__ void run_tiles(Stage1& stage1, const Sm& sm, const TileRun& run, Acc (&z0)[H][2],
                                          Acc (&u)[H][2], Body&& body) {
  using Pending = typename Stage1::Pending;
  auto finish = [&](int64_t j, Pending& pending) {
    if constexpr (H == 1) stage1.finish(sm, run, j, pending, z0[0], u[0]);
    else stage1.finish(sm, run, j, pending, z0, u);
  };
  stage1.begin(sm, run);
  if constexpr (Stage1::kOverlaps) {
    for (int64_t j = 0; j <= run.count; ++j) {
      Pending pending;
      if (j < run.count) stage1.start(sm, run, j, pending);
      if (j > 0) body(j - 1);
      if (j < run.count) finish(j, pending);
    }
  } else {
    for (int64_t j = 0; j < run.count; ++j) {
      Pending pending;
      stage1.start(sm, run, j, pending);
      finish(j, pending);
      body(j);
    }
  }
}

// Blocks own (sample tile, group of column tiles); the loop runs over neuron tiles: the readout and
// dX. Per neuron tile the products run once; then per half of R / 64 the epilogue, and every column
// tile of the group takes both terms from the field tiles in shared memory into its accumulators
// there. R = 128 (mma.sync, 16-bit inputs, specialised epilogues) shares stage 1's w0 and w
// fragments between two halves of 64 samples and holds accumulators for 128 rows per column tile:
// the launch takes it where that costs no extra column group.
//
// Sm: the shared memory's layout (TcReduceSmem), R = Sm::rows. stage1: stage 1 of the block's tiles
// (TcStage1 and its kin), the products of R samples per tile (z0 and u: Acc[2] per 64 rows, or
// Acc[H][2]); stage1.separate: the field tiles are apart from stage 1's bytes (Sm's `separate`).
template <typename M, int S, typename T, typename Sm, typename Stage1>
__device__ __forceinline__ void neuron_sum_tc(const Problem<T>& p, const NeuronSum<T>& s, int64_t tiles_per_split,
                                              int64_t group_tiles, Stage1&& stage1) {
  constexpr int R = Sm::rows, H = R / kTcTile;
  using Acc = typename TcTypes<M, T>::Acc;
  constexpr int ld = Sm::ld_mix, acc_ld = Sm::acc_ld;
  TN_DYNAMIC_SMEM(dyn);
  const Sm sm(dyn, s.terms, stage1.separate);
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * R, col_tiles = (s.ncols + kTcTile - 1) / kTcTile;
  const int64_t g0 = static_cast<int64_t>(blockIdx.y) * group_tiles;
  const int64_t g1 = g0 + group_tiles < col_tiles ? g0 + group_tiles : col_tiles;
  const int slots = s.slots();
  // The 64-row accumulator tile of column tile ct, slot t and half h.
  auto acc_tile = [&](int64_t ct, int t, int h) { return sm.acc(((ct - g0) * slots + t) * H + h); };
  int64_t t_begin, t_end;
  inner_tile_range((p.m + kTcTile - 1) / kTcTile, tiles_per_split, t_begin, t_end);
  const Need need = need_of(s.fields(), p.moments, s.field[0], s.field[s.terms - 1]);
  typename TcTypes<M, T>::Codes codes;
  load_codes(sm, codes);
  for (int64_t e = threadIdx.x; e < (g1 - g0) * slots * H * kTcTile * acc_ld; e += kThreads) sm.acc(0)[e] = 0.0f;
  const TileRun run{i0, t_begin * kTcTile, 0, kTcTile, t_end - t_begin};
  Acc z0[H][2], u[H][2], unused[2][2];
  run_tiles(stage1, sm, run, z0, u, [&](int64_t j) {
    const int64_t r0 = run.r(j);
    load_neurons(p, sm, r0);
    __syncthreads();
    // Half after half from z0[0] and u[0] (the next half moves there at the end of the body): not
    // unrolled, so the kernel holds one copy of the epilogue and stage 2.
#pragma unroll 1
    for (int h = 0; h < H; ++h) {
      const int64_t ih = i0 + h * kTcTile;
      if (ih >= p.n) break;  // block-uniform: a last tile's empty half
      clear_tile_max(sm);
      tc_fields<S, 2>(p, sm, codes, need, ih, r0, z0[0], u[0], unused);  // term 0's field in z0, term 1's in u
      store_fields(sm, codes, z0[0], u[0], unused, s.terms, [](int) { return true; });
      for (int64_t ct = g0; ct < g1; ++ct) {
        const int64_t c0 = ct * kTcTile, cols = s.ncols - c0 < kTcTile ? s.ncols - c0 : kTcTile;
        const int staged = static_cast<int>((cols + 15) / 16 * 16);  // the columns some warp reads
        // Not unrolled: with this loop unrolled, ptxas serialised the overlapping stage 1's wgmmas
        // (warning C7518).
#pragma unroll 1
        for (int t = 0; t < 2; ++t) {
          if (t >= s.terms) break;
          T* zs = sm.factor();
          for (int e = threadIdx.x; e < kTcTile * staged; e += kThreads) {
            const int r = e / staged, col = e % staged;
            const int64_t rr = r0 + r, cc = c0 + col;
            float zv = 0.0f;
            if (rr < p.m && cc < s.ncols) zv = to_acc(s.z[t][rr * s.z_row[t] + cc * s.z_col[t]]);
            zs[r * ld + col] = from_acc<T>(s.square[t] ? zv * zv : zv);  // Z_t[r][col]
          }
          __syncthreads();
          tile_products<false>(codes, acc_tile(ct, slots == 1 ? 0 : t, h), sm.field(t) + warp_row_block() * 16 * ld,
                               zs, cols, field_unscale(sm, t));
          __syncthreads();
        }
      }
      next_half(z0, u);
    }
  });
  __syncthreads();
  for (int64_t ct = g0; ct < g1; ++ct)
    for (int t = 0; t < slots; ++t)
#pragma unroll
      for (int h = 0; h < H; ++h) {
        const float* acc = acc_tile(ct, t, h);
        const float scale = static_cast<float>(s.scale[t]);
        for (int e = threadIdx.x; e < kTcTile * kTcTile; e += kThreads) {
          const int row = e / kTcTile, col = e % kTcTile;
          const int64_t i = i0 + h * kTcTile + row, cc = ct * kTcTile + col;
          if (i < p.n && cc < s.ncols) atomicAdd(&s.out[t][i * s.ld_out + cc], scale * acc[row * acc_ld + col]);
        }
      }
}

// Blocks own (neuron tile, group of column tiles); the loop runs over sample tiles: dW, dW0, db,
// db0, dA, every requested term in one pass. Per sample tile the products run once, then per half
// of 64 samples the epilogue (the fields of every term the group needs), and every column tile of
// the group takes its term's field tile from shared memory into its accumulators there; group 0
// also sums the fields of the terms with a bias column.
// Sm and stage1 as in neuron_sum_tc.
template <typename M, int S, typename T, typename Sm, typename Stage1>
__device__ __forceinline__ void sample_sum_tc(const Problem<T>& p, const SampleSum<T>& s, int64_t tiles_per_split,
                                              int64_t group_tiles, Stage1&& stage1) {
  constexpr int R = Sm::rows, H = R / kTcTile;
  using Acc = typename TcTypes<M, T>::Acc;
  constexpr int ld = Sm::ld_mix, acc_ld = Sm::acc_ld;
  TN_DYNAMIC_SMEM(dyn);
  const Sm sm(dyn, s.terms, stage1.separate);
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTcTile, tiles = s.tiles(kTcTile);
  const int64_t g0 = static_cast<int64_t>(blockIdx.y) * group_tiles;
  const int64_t g1 = g0 + group_tiles < tiles ? g0 + group_tiles : tiles;
  int64_t t_begin, t_end;
  inner_tile_range((p.n + R - 1) / R, tiles_per_split, t_begin, t_end);
  const Need need = need_of(s.fields(), p.moments, s.term[0].field, s.term[1 % s.terms].field,
                            s.term[2 % s.terms].field, s.term[3 % s.terms].field);
  auto active = [&](int t) { return sample_term_active(s, t, g0, g1, kTcTile); };  // block-uniform
  typename TcTypes<M, T>::Codes codes;
  load_neurons(p, sm, r0);
  load_codes(sm, codes);
  for (int64_t e = threadIdx.x; e < (g1 - g0) * kTcTile * acc_ld; e += kThreads) sm.acc(0)[e] = 0.0f;
  for (int e = threadIdx.x; e < kMaxSampleTerms * kTcTile; e += kThreads) sm.bias(0)[e] = 0.0f;
  const TileRun run{t_begin * R, r0, R, 0, t_end - t_begin};
  Acc z0[H][2], u[H][2], extra[2][2];
  run_tiles(stage1, sm, run, z0, u, [&](int64_t j) {
    // Half after half from z0[0] and u[0], as in neuron_sum_tc.
#pragma unroll 1
    for (int h = 0; h < H; ++h) {
      const int64_t i0 = run.i(j) + h * kTcTile;
      if (i0 >= p.n) break;  // block-uniform: a last tile's empty half
      clear_tile_max(sm);
      tc_fields<S, kMaxSampleTerms>(p, sm, codes, need, i0, r0, z0[0], u[0], extra);
      store_fields(sm, codes, z0[0], u[0], extra, s.terms, active);
      if (g0 == 0 && threadIdx.x < kTcTile) {  // the bias columns: one thread per neuron, in sample order
        for (int t = 0; t < s.terms; ++t) {
          if (!s.term[t].ones) continue;
          const T* fs = sm.field(t);
          float sum = 0.0f;
          for (int i = 0; i < kTcTile; ++i) sum += to_acc(fs[i * ld + threadIdx.x]);
          sm.bias(t)[threadIdx.x] = fmaf(sum, field_unscale(sm, t), sm.bias(t)[threadIdx.x]);
        }
      }
      __syncthreads();  // the field tiles and maxima stay until the bias sums have read them
      for (int64_t ct = g0; ct < g1; ++ct) {
        int t;
        int64_t k0;
        sample_tile_of(s, ct, kTcTile, t, k0);
        const SampleTerm<T>& term = s.term[t];
        const int64_t cols = term.ncols - k0 < kTcTile ? term.ncols - k0 : kTcTile;
        const int staged = static_cast<int>((cols + 15) / 16 * 16);  // the columns some warp reads
        T* ys = sm.factor();
        for (int e = threadIdx.x; e < kTcTile * staged; e += kThreads) {
          const int i = e / staged, col = e % staged;
          const int64_t ii = i0 + i;
          ys[i * ld + col] = from_acc<T>(ii < p.n ? sample_factor(term, ii, k0 + col) : 0.0f);  // Y_t[i][col]
        }
        __syncthreads();
        // F^T: element (neuron, sample) at fs[sample * ld + neuron], a transposed operand.
        tile_products<true>(codes, sm.acc(ct - g0), sm.field(t) + warp_row_block() * 16, ys, cols,
                            field_unscale(sm, t));
        __syncthreads();
      }
      next_half(z0, u);
    }
  });
  __syncthreads();
  for (int64_t ct = g0; ct < g1; ++ct) {
    int t;
    int64_t k0;
    sample_tile_of(s, ct, kTcTile, t, k0);
    const SampleTerm<T>& term = s.term[t];
    const float* acc = sm.acc(ct - g0);
    for (int e = threadIdx.x; e < kTcTile * kTcTile; e += kThreads) {
      const int row = e / kTcTile, col = e % kTcTile;
      const int64_t r = r0 + row, k = k0 + col;
      if (r < p.m && k < term.ncols) atomicAdd(&term.out[r * term.ld_out + k], term.scale * acc[row * acc_ld + col]);
    }
  }
  if (g0 == 0 && threadIdx.x < kTcTile && r0 + threadIdx.x < p.m)
    for (int t = 0; t < s.terms; ++t)
      if (s.term[t].ones) atomicAdd(&s.term[t].ones[r0 + threadIdx.x], s.term[t].scale * sm.bias(t)[threadIdx.x]);
}

// Stage 1 of a reduction's tiles by mma.sync or wmma from the staged chunks of x, w0, w, all of it
// in finish. A stage 1 (for run_tiles) has `separate` (the field tiles apart from stage 1's bytes:
// the shared memory's `separate`), kOverlaps, a type Pending (what start leaves for finish), and
// begin(sm, run) before the block's first tile, start(sm, run, j, pending) and finish(sm, run, j,
// pending, z0, u) per tile j, called for j = 0, 1, ... in order; finish ends with a barrier.
template <typename T>
struct TcStage1 {
  static constexpr bool separate = false, kOverlaps = false;
  struct Pending {};
  const Problem<T>& p;
  template <typename Sm>
  __device__ __forceinline__ void begin(const Sm&, const TileRun&) const {}
  template <typename Sm>
  __device__ __forceinline__ void start(const Sm&, const TileRun&, int64_t, Pending&) const {}
  template <typename Sm, typename Acc>
  __device__ __forceinline__ void finish(const Sm& sm, const TileRun& run, int64_t j, Pending&, Acc& z0,
                                         Acc& u) const {
    tc_preactivations(p, sm, run.i(j), run.r(j), z0, u);
  }
};
#endif  // TN_TENSOR_CORES

// Kernel entry points exist for every architecture; the bodies only where mma does.
#if TN_TENSOR_CORES
#define TN_TC_BODY(call) call
#else
#define TN_TC_BODY(call) __trap()
#endif

// M: the mainloop (WmmaLoop, MmaLoop); S: the epilogue, a series of kSpecialised or kGenericEpilogue.
template <typename M, typename T, int S>
__global__ void __launch_bounds__(kThreads, M::kFeaturesBlocksPerSm) features_forward_tc_kernel(TN_PARAM(Problem<T>) p, T* out) {
  TN_TC_BODY((features_forward_tc<M, S>(p, out)));
}
// R: the samples of a block (64, or 128 for neuron_sum_tc's taller tile).
template <typename M, typename T, int S, int R = kTcTile>
__global__ void __launch_bounds__(kThreads, 1) neuron_sum_tc_kernel(TN_PARAM(Problem<T>) p,
                                                                  TN_PARAM(NeuronSum<T>) s, int64_t per,
                                                                  int64_t group_tiles) {
  TN_TC_BODY((neuron_sum_tc<M, S, T, TcReduceSmem<T, M::kStages, R>>(p, s, per, group_tiles, TcStage1<T>{p})));
}
template <typename M, typename T, int S>
__global__ void __launch_bounds__(kThreads, 1) sample_sum_tc_kernel(TN_PARAM(Problem<T>) p,
                                                                  TN_PARAM(SampleSum<T>) s, int64_t per,
                                                                  int64_t group_tiles) {
  using Sm = TcReduceSmem<T, M::kStages, sample_sum_rows<M, T>(S != kGenericEpilogue)>;
  TN_TC_BODY((sample_sum_tc<M, S, T, Sm>(p, s, per, group_tiles, TcStage1<T>{p})));
}

#undef TN_TC_BODY

}  // namespace tn::cuda
