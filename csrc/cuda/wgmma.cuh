// The wgmma mainloop (sm_90a) of the features forward kernel, bfloat16 and float16: the block's
// 64 x 64 tile of z0 = x w0^T and u = x w^T by wgmma.mma_async from shared memory, then the
// tensor-core kernels' epilogue (tensor_cores.cuh) on the accumulators as they stand.
//
// Shapes. The block's 256 threads are two warpgroups; warpgroup q computes neurons 32q .. 32q + 31
// of both products for all 64 samples with one wgmma.m64n64k16 per k step: A is the x tile (64
// samples x 16 k), B the 64 rows [w0 of those 32 neurons; w of them], so accumulator columns 0-31
// are z0 and 32-63 are u of the same neurons (32 floats per thread, what the mma.sync mainloop
// holds). That layout (sm90/layout.h: warp w of the warpgroup owns rows 16w .. 16w + 15, each
// 8-column slice in mma.sync's m16n8 layout) is exactly the MmaAcc blocks of the warp mapping of
// tensor_cores.cuh (warp_row_block, warp_col_block), so the epilogue and the stores are shared.
//
// Shared memory. k chunks of 64 elements (one 128-byte row per sample or weight row) in three ring
// stages of 8 KiB (x: 64 rows) + 16 KiB (w0/w: 128 rows, [w0 0-31; w 0-31; w0 32-63; w 32-63]),
// each stored K-major in the 128-byte swizzle that the descriptors name (sm90/layout.h), 1024-byte
// aligned; the epilogue's signs and biases in static shared memory.
//
// Pipeline (not warp-specialised): every thread copies its share of a chunk with 16-byte cp.async
// (zeros past the problem's edges; element by element where d or the rows are not 16-byte aligned),
// chunks 0 and 1 up front. Per chunk c: wait for this thread's copies of chunk c,
// fence.proxy.async (they become visible to wgmma's async proxy), a barrier (everyone's; and every
// warpgroup has finished chunk c - 1's wgmmas, whose buffer the next copy overwrites), four wgmmas
// committed as one group, the copies of chunk c + 2, and the wait for the wgmmas.
//
// Other targets (sm_80, plain sm_90) compile an entry point without shared memory that traps: the
// launch layer tells the two apart by the kernel's static shared memory (runtime.cuh) and never
// launches the trap.
#pragma once

#include <cstdint>

#include "cuda/mma_sync.cuh"
#include "cuda/sm90/layout.h"
#include "cuda/sm90/wgmma.cuh"
#include "cuda/tensor_cores.cuh"

namespace tn::cuda {

// The mainloop's tag: stage 1 in kStages ring buffers.
struct WgmmaLoop {
  static constexpr int kStages = 3;
};

template <typename T>
constexpr bool kHasWgmmaKernels = std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;

// The ring of one block: per stage the x tile then the [w0; w] tile, in 128-byte swizzled rows.
struct WgmmaRing {
  static constexpr int stages = WgmmaLoop::kStages;
  static constexpr uint32_t x_bytes = kTcTile * sm90::kRowBytes;       // 64 sample rows
  static constexpr uint32_t w_bytes = 2 * kTcTile * sm90::kRowBytes;   // 128 weight rows
  static constexpr uint32_t wg_w_bytes = kTcTile * sm90::kRowBytes;    // one warpgroup's B: 64 rows
  static constexpr uint32_t stage_bytes = x_bytes + w_bytes;
  // The dynamic shared memory asked for: the ring and room to align it to 1024 bytes.
  static constexpr uint32_t dynamic_bytes = stages * stage_bytes + sm90::kAtomBytes;
};
static_assert(WgmmaRing::x_bytes % sm90::kAtomBytes == 0 && WgmmaRing::wg_w_bytes % sm90::kAtomBytes == 0 &&
                  WgmmaRing::stage_bytes % sm90::kAtomBytes == 0,
              "every operand tile starts on a 1024-byte swizzle atom");

#if TN_WGMMA

template <typename T>
constexpr int kWgmmaChunk = static_cast<int>(sm90::kRowBytes / sizeof(T));  // k per chunk: 64

// Chunk k0 .. k0 + 63 of the tile into the stage at `stage`: x rows 0-63, then the weight rows.
// Async: 16-byte cp.async (d a multiple of 8 and 16-byte aligned rows); else element by element.
template <bool Async, typename T>
__device__ __forceinline__ void wgmma_stage_chunk(const Problem<T>& p, unsigned char* stage, int64_t k0, int64_t i0,
                                                  int64_t r0) {
  constexpr int rows = 3 * kTcTile;  // 64 x rows, 128 weight rows
  unsigned char* const w_tile = stage + WgmmaRing::x_bytes;
  auto source = [&](int row, int64_t k) -> const T* {  // null outside the problem
    if (k >= p.d) return nullptr;
    if (row < kTcTile) return i0 + row < p.n ? p.x + (i0 + row) * p.d + k : nullptr;
    const int w = row - kTcTile;
    const int64_t r = r0 + sm90::dual_b_neuron(w);
    return r < p.m ? (sm90::dual_b_is_u(w) ? p.w : p.w0) + r * p.d + k : nullptr;
  };
  auto target = [&](int row, uint32_t kbyte) -> unsigned char* {
    return row < kTcTile ? stage + sm90::tile_offset(row, kbyte) : w_tile + sm90::tile_offset(row - kTcTile, kbyte);
  };
  if constexpr (Async) {
    constexpr int vectors = sm90::kRowBytes / 16;  // per row
    for (int e = threadIdx.x; e < rows * vectors; e += kThreads) {
      const int row = e / vectors, v = e % vectors;
      const T* src = source(row, k0 + v * (16 / static_cast<int>(sizeof(T))));
      unsigned char* dst = target(row, v * 16);
      if (src) copy16_async(dst, src);
      else *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
    }
  } else {
    constexpr int chunk = kWgmmaChunk<T>;
    const T zero = from_acc<T>(0.0f);
    for (int e = threadIdx.x; e < rows * chunk; e += kThreads) {  // consecutive threads: consecutive k
      const int row = e / chunk, k = e % chunk;
      const T* src = source(row, k0 + k);
      *reinterpret_cast<T*>(target(row, k * static_cast<uint32_t>(sizeof(T)))) = src ? *src : zero;
    }
  }
}

// This warpgroup's products of the chunk in `stage`: four wgmma.m64n64k16 (k steps of 32 bytes
// inside the 128-byte rows), committed as one group.
template <typename T>
__device__ __forceinline__ void wgmma_chunk(float (&acc)[32], uint32_t stage) {
  const uint32_t x = stage, w = stage + WgmmaRing::x_bytes + (threadIdx.x / 128) * WgmmaRing::wg_w_bytes;
  sm90::fence_accumulators(acc);
  sm90::wgmma_fence();
#pragma unroll
  for (int k = 0; k < 4; ++k)
    sm90::wgmma_m64n64k16<T>(acc, sm90::kmajor_desc(x + 32 * k), sm90::kmajor_desc(w + 32 * k));
  sm90::wgmma_commit();
  sm90::fence_accumulators(acc);
}

// Waits for this warpgroup's wgmmas; the accumulators are final only after it.
__device__ __forceinline__ void wgmma_done(float (&acc)[32]) {
  sm90::wgmma_wait<0>();
  sm90::fence_accumulators(acc);
}

// Stage 1: z0 and u (biases not added) of samples i0.. and neurons r0.. as the MmaAcc blocks of this
// warp (warp_row_block, warp_col_block). Ends with a barrier.
template <typename T>
__device__ void wgmma_preactivations(const Problem<T>& p, unsigned char* ring, int64_t i0, int64_t r0,
                                     MmaAcc (&z0)[2], MmaAcc (&u)[2]) {
  constexpr int St = WgmmaRing::stages, chunk = kWgmmaChunk<T>, V = 16 / sizeof(T);
  TN_COUNT_RECOMPUTE(p, i0, r0, kTcTile, kTcTile);
  float acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.0f;
  const uint32_t ring_addr = static_cast<uint32_t>(__cvta_generic_to_shared(ring));
  auto stage_at = [&](int64_t c) { return static_cast<uint32_t>(c % St) * WgmmaRing::stage_bytes; };
  const int64_t chunks = (p.d + chunk - 1) / chunk;
  if (p.d % V == 0 && aligned16(p.x) && aligned16(p.w0) && aligned16(p.w)) {
#pragma unroll
    for (int c = 0; c < St - 1; ++c) {  // one commit group per chunk, empty ones included
      if (c < chunks) wgmma_stage_chunk<true>(p, ring + stage_at(c), int64_t(c) * chunk, i0, r0);
      copy_async_commit();
    }
    for (int64_t c = 0; c < chunks; ++c) {
      copy_async_wait<St - 2>();  // this thread's copies of chunk c have landed
      sm90::fence_proxy_async();  // ... and are visible to wgmma
      __syncthreads();            // everyone's; and chunk c - 1's wgmmas are done in both warpgroups
      wgmma_chunk<T>(acc, ring_addr + stage_at(c));
      const int64_t next = c + St - 1;  // into the stage of chunk c - 1
      if (next < chunks) wgmma_stage_chunk<true>(p, ring + stage_at(next), next * chunk, i0, r0);
      copy_async_commit();
      wgmma_done(acc);
    }
    copy_async_wait<0>();
  } else {
    for (int64_t c = 0; c < chunks; ++c) {
      wgmma_stage_chunk<false>(p, ring + stage_at(c), c * chunk, i0, r0);
      sm90::fence_proxy_async();
      __syncthreads();
      wgmma_chunk<T>(acc, ring_addr + stage_at(c));
      wgmma_done(acc);
    }
  }
  __syncthreads();
  // Accumulator columns 8 s .. 8 s + 7 are registers 4 s .. 4 s + 3: z0's 16-column block j is
  // registers 8 j .. 8 j + 7, u's the same 16 further on.
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < MmaAcc::num_elements; ++e) {
      z0[j].x[e] = acc[8 * j + e];
      u[j].x[e] = acc[16 + 8 * j + e];
    }
}

template <int S, typename T>
__device__ __forceinline__ void features_forward_wgmma(const Problem<T>& p, T* out) {
  using Sm = TcSmem<T, WgmmaLoop::kStages>;
  __shared__ __align__(128) unsigned char fix[Sm::fixed_bytes];
  extern __shared__ __align__(128) unsigned char dyn[];
  unsigned char* const ring = dyn + (sm90::kAtomBytes - static_cast<uint32_t>(__cvta_generic_to_shared(dyn)) %
                                                           sm90::kAtomBytes) % sm90::kAtomBytes;
  const Sm sm{ring, fix};  // the epilogue of the forward reads the fixed part only
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTcTile, i0 = static_cast<int64_t>(blockIdx.y) * kTcTile;
  MmaCodes codes;
  MmaAcc z0[2], u[2], unused[2][2];
  load_neurons(p, sm, r0);
  load_codes(sm, codes);  // its barrier publishes the signs and biases
  wgmma_preactivations(p, ring, i0, r0, z0, u);
  tc_fields<S, 1>(p, sm, codes, need_of(1u << kPhi0, false, kPhi0, kPhi0), i0, r0, z0, u, unused);
  for_each_element(codes, [&](int j, int e, int row, int col) {
    const int64_t i = i0 + row, r = r0 + col;
    if (i < p.n && r < p.m) out[i * p.m + r] = from_acc<T>(z0[j].x[e]);
  });
  // A series without u (order 0 alone) leaves u's accumulators unread, and ptxas then serialises
  // the wgmmas (warning C7511: a wait after each); an empty read at the end keeps them live.
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < MmaAcc::num_elements; ++e) asm volatile("" ::"f"(u[j].x[e]));
}

#endif  // TN_WGMMA

// S: the epilogue, a series of kSpecialised or kGenericEpilogue. WgmmaRing::dynamic_bytes of
// dynamic shared memory.
template <typename T, int S>
__global__ void __launch_bounds__(kThreads, 1) features_forward_wgmma_kernel(TN_PARAM(Problem<T>) p, T* out) {
#if TN_WGMMA
  features_forward_wgmma<S>(p, out);
#else
  __trap();
#endif
}

}  // namespace tn::cuda
