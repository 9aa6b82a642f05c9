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
// aligned; the epilogue's signs and biases and the ring's barriers in static shared memory.
//
// Pipeline. Where the copy engine can read x and the weights (tensor maps: d a multiple of 8,
// 16-byte aligned rows), thread 0 issues each chunk's copies (cp.async.bulk.tensor, which writes the
// swizzle itself and zeros past the tensors' edges) completing on the stage's full barrier, up to
// three chunks ahead; each warpgroup waits for a stage's full barrier, issues its four wgmmas as one
// group and waits only for the previous chunk's group (wait_group 1) before it marks that stage
// empty, and thread 0 refills a stage once all threads have marked it. Otherwise every thread copies
// its share of a chunk with 16-byte cp.async (element by element where d or the rows are not 16-byte
// aligned), chunks 0 and 1 up front; per chunk c: wait for this thread's copies of chunk c,
// fence.proxy.async (they become visible to wgmma's async proxy), a barrier (everyone's; and every
// warpgroup has finished chunk c - 1's wgmmas, whose buffer the next copy overwrites), four wgmmas
// committed as one group, the copies of chunk c + 2, and the wait for the wgmmas. Neither is
// warp-specialised: both warpgroups multiply, and two blocks per SM overlap one's epilogue with the
// other's wgmmas.
//
// Other targets (sm_80, plain sm_90) compile an entry point without shared memory that traps: the
// launch layer tells the two apart by the kernel's static shared memory (runtime.cuh) and never
// launches the trap.
#pragma once

#include <cstdint>

#include "cuda/mma_sync.cuh"
#include "cuda/sm90/layout.h"
#include "cuda/sm90/tma.cuh"
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

// The warp-specialised features forward (FlashAttention-3's ping-pong), on the copy engine's copies:
// 384 threads, a producer warpgroup and two consumer warpgroups. A block owns the 64 neurons r0 ..
// r0 + 63 and a run of `per` consecutive 64-sample tiles; consumer c (warpgroup c + 1) takes tiles
// c, c + 2, ... of the run, each whole: both column halves (two accumulators of 32 floats, the 8
// wgmmas of a k chunk in one group), then the epilogue and the stores of one half after the other,
// exactly as a warpgroup of the plain kernel runs its own half.
//
// Ping-pong. The consumers issue their tiles' wgmmas in turn: a consumer waits on its named barrier
// (kTurn + c) before its tile's first wgmma, and arrives on the other's once its last chunk's
// wgmmas are issued. So consumer 0's epilogue of tile j runs while the tensor cores work on
// consumer 1's tile j + 1, and the other way round: the issue slots of one warpgroup's epilogue and
// the tensor cores' time of the other's products overlap inside one block, not across two blocks
// as in the plain kernel. Every wait has its arrival (tile j > 0 waits for tile j - 1's, which
// arrives where j < count).
//
// Producer. Thread 0 copies the run's chunks in order (tile by tile, k chunk by k chunk) into the
// ring's stages (PingPong::kStages), each after the consumer that read the stage's last chunk marked
// it empty (128 arrivals: one warpgroup reads a chunk); the producer's other threads leave at once. The
// chunks are consumed in the same order as they are copied, since the turns go tile by tile, so a
// stage is always freed by the consumer ahead. Registers: __launch_bounds__(384, 1) gives each
// thread 168; the consumers (both accumulators and the epilogue) fit in that without setmaxnreg.
struct PingPong {
  static constexpr int kThreads = 384;
  static constexpr int kConsumerThreads = 256;  // the count of the turn barriers
  static constexpr int kTurn = 1;               // named barriers 1 and 2: consumer 0's and 1's turn
  // The ring: six stages (three tiles ahead at d <= 128) where the plain kernel has three, since one
  // block holds the SM (its registers) and no second block's copies cover the copy engine's latency.
  static constexpr int kStages = 6;
  static constexpr uint32_t dynamic_bytes = kStages * WgmmaRing::stage_bytes + sm90::kAtomBytes;
};

// The reductions' shared memory with the ring as stage 1: at 64 samples per tile, the field tiles
// and stage 2's factor tile in the ring's bytes once the products are done (as on mma.sync).
template <typename T>
using WgmmaReduceSmem = TcReduceSmem<T, MmaLoop::kStages, kTcTile, WgmmaRing::dynamic_bytes>;

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
      TN_GENERIC_SMEM_WRITE(dst, 16);
    }
  } else {
    constexpr int chunk = kWgmmaChunk<T>;
    const T zero = from_acc<T>(0.0f);
    for (int e = threadIdx.x; e < rows * chunk; e += kThreads) {  // consecutive threads: consecutive k
      const int row = e / chunk, k = e % chunk;
      const T* src = source(row, k0 + k);
      T* const dst = reinterpret_cast<T*>(target(row, k * static_cast<uint32_t>(sizeof(T))));
      *dst = src ? *src : zero;
      TN_GENERIC_SMEM_WRITE(dst, sizeof(T));
    }
  }
}

// The products of column half `half` (neurons 32 half .. 32 half + 31) of the chunk in `stage`:
// four wgmma.m64n64k16 (k steps of 32 bytes inside the 128-byte rows). `first`: the tile's first
// chunk, whose first wgmma starts the sums (scale-d 0) rather than adding to them.
template <typename T>
__device__ __forceinline__ void wgmma_half(float (&acc)[32], uint32_t stage, bool first, int half) {
  const uint32_t x = stage, w = stage + WgmmaRing::x_bytes + half * WgmmaRing::wg_w_bytes;
#pragma unroll
  for (int k = 0; k < 4; ++k)
    sm90::wgmma_m64n64k16<T>(acc, sm90::kmajor_desc(x + 32 * k), sm90::kmajor_desc(w + 32 * k), k > 0 || !first);
}

// This warpgroup's products of the chunk in `stage` (its own half), committed as one group.
template <typename T>
__device__ __forceinline__ void wgmma_chunk(float (&acc)[32], uint32_t stage, bool first) {
  sm90::fence_accumulators(acc);
  sm90::wgmma_fence();
  wgmma_half<T>(acc, stage, first, threadIdx.x / 128);
  sm90::wgmma_commit();
  sm90::fence_accumulators(acc);
}

// Waits for this warpgroup's wgmmas; the accumulators are final only after it.
__device__ __forceinline__ void wgmma_done(float (&acc)[32]) {
  sm90::wgmma_wait<0>();
  sm90::fence_accumulators(acc);
}

// The ring's barriers: full[s] completes when stage s's bytes have landed (one arrival, the copy
// engine's transaction bytes), empty[s] when every thread has finished reading it (kThreads
// arrivals, each after its warpgroup's wgmmas on it are done).
template <int Stages = WgmmaRing::stages>
struct WgmmaBarriersOf {
  uint64_t full[Stages], empty[Stages];
};
using WgmmaBarriers = WgmmaBarriersOf<>;

// The warpgroup's accumulators as this warp's MmaAcc blocks. Accumulator columns 8 s .. 8 s + 7 are
// registers 4 s .. 4 s + 3: z0's 16-column block j is registers 8 j .. 8 j + 7, u's the same 16
// further on.
__device__ __forceinline__ void tile_accumulators(const float (&acc)[32], MmaAcc (&z0)[2], MmaAcc (&u)[2]) {
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < MmaAcc::num_elements; ++e) {
      z0[j].x[e] = acc[8 * j + e];
      u[j].x[e] = acc[16 + 8 * j + e];
    }
}

// The ring filled by the copy engine (tensor maps) over a block's run of tiles (TileRun). Chunk g of
// the run is k chunk g % chunks of tile g / chunks; its number fixes its stage (g % stages) and the
// phases of that stage's full and empty barriers. Per thread: the chunks it has marked empty
// (`retired`); thread 0 also counts the chunks it has copied, with the tile and k chunk of the next
// one (a division by `chunks` would be an out-of-line subroutine).
struct WgmmaRingState {
  int64_t retired = 0, copied = 0, copy_tile = 0;
  int copy_chunk = 0;
};

template <typename T, int Stages = WgmmaRing::stages>
struct WgmmaRingCopies {
  static constexpr int St = Stages, chunk = kWgmmaChunk<T>;
  const sm90::TileMaps& maps;
  WgmmaBarriersOf<Stages>& bars;
  unsigned char* ring;
  const TileRun& run;
  int64_t chunks;
  int64_t last;  // copies stop before chunk `last`: the tile's end, or the run's (one stream over it)

  __device__ uint32_t stage_at(int64_t g) const {
    return static_cast<uint32_t>(g % St) * WgmmaRing::stage_bytes;
  }
  // Thread 0: the next chunk's five copies (the x box, then w0 and w of neurons 0-31 and 32-63) into
  // its stage, once every thread has marked that stage empty.
  __device__ void copy_next(WgmmaRingState& st) const {
    const int64_t g = st.copied++, tile = st.copy_tile;
    unsigned char* const stage = ring + stage_at(g);
    uint64_t* const full = &bars.full[g % St];
    const int32_t k = st.copy_chunk * chunk;
    if (++st.copy_chunk == chunks) {
      st.copy_chunk = 0;
      ++st.copy_tile;
    }
    if (g >= St) sm90::mbarrier_wait(&bars.empty[g % St], static_cast<uint32_t>(g / St - 1) & 1u);
    sm90::mbarrier_arrive_expect_tx(full, WgmmaRing::stage_bytes);
    sm90::tma_load_2d(stage, maps.x, k, static_cast<int32_t>(run.i(tile)), full);
#pragma unroll
    for (int b = 0; b < 4; ++b)  // [w0 0-31; w 0-31; w0 32-63; w 32-63], 32 rows each
      sm90::tma_load_2d(stage + WgmmaRing::x_bytes + b * (WgmmaRing::w_bytes / 4), b % 2 ? maps.w : maps.w0, k,
                        static_cast<int32_t>(run.r(tile) + (b / 2) * (kTcTile / 2)), full);
  }
  // Thread 0: copies up to `stages` chunks ahead of the first one not yet retired.
  __device__ void top_up(WgmmaRingState& st) const {
    if (threadIdx.x == 0)
      while (st.copied < st.retired + St && st.copied < last) copy_next(st);
  }
  // Marks every chunk before `upto` empty (their wgmmas are done in this thread's warpgroup) and
  // copies as far as that frees stages.
  __device__ void retire(WgmmaRingState& st, int64_t upto) const {
    for (; st.retired < upto; ++st.retired) sm90::mbarrier_arrive(&bars.empty[st.retired % St]);
    top_up(st);
  }
  // Chunk g's wgmmas, once its bytes have landed; `first`: the tile's first chunk, which starts the
  // sums.
  __device__ void consume(int64_t g, bool first, float (&acc)[32]) const {
    sm90::mbarrier_wait(&bars.full[g % St], static_cast<uint32_t>(g / St) & 1u);
    wgmma_chunk<T>(acc, static_cast<uint32_t>(__cvta_generic_to_shared(ring)) + stage_at(g), first);
  }
};

// Stage 1 of tile j with the copy engine, in two steps: wgmma_tma_start, then wgmma_tma_finish, with
// the accumulators `acc` between them. Called for j = 0, 1, ... of the run in order.
//
// Thread 0 keeps up to `stages` chunks copied ahead, and every thread waits for a stage's full
// barrier, issues its warpgroup's wgmmas and then waits for the previous chunk's group only
// (wgmma.wait_group 1), which frees that chunk's stage: the tensor cores always have the next
// chunk's wgmmas queued behind the current ones, and no block-wide barrier is taken per chunk.
// Every chunk's stage is marked empty once read, the tile's last one's at the end.
//
// Without Overlap a tile's copies start at its call (start), after every thread has ordered its
// generic-proxy accesses of the ring's bytes (the previous tile's field tiles) before the copy
// engine's writes; the wgmmas all run in finish. With Overlap (the caller's scratch apart from the
// ring) the copies are one stream over the run (`last` is the run's end; the caller copies the
// first ones with top_up before any wgmma), and start issues the tile's first `ahead` chunks'
// wgmmas without waiting for them: the caller runs the previous tile's epilogue and stage 2 before
// finish, under those wgmmas. The issue and the wait stay in one iteration of the caller's loop:
// ptxas serialises wgmmas that are in flight across a loop's back edge, or where paths with and
// without them join.
template <bool Overlap, typename T>
__device__ __forceinline__ void wgmma_tma_start(const WgmmaRingCopies<T>& r, WgmmaRingState& st, int64_t j, int ahead,
                                                float (&acc)[32]) {
  const int64_t base = j * r.chunks;
  if constexpr (Overlap) {
    for (int64_t c = base; c < base + ahead; ++c) r.consume(c, c == base, acc);
  } else {
    if (j > 0) {
      sm90::fence_proxy_async();
      __syncthreads();
    }
    r.top_up(st);
  }
}
// z0 and u (biases not added) of tile j as the MmaAcc blocks of this warp (warp_row_block,
// warp_col_block). Ends with a barrier.
template <typename T>
__device__ __forceinline__ void wgmma_tma_finish(const Problem<T>& p, const WgmmaRingCopies<T>& r, WgmmaRingState& st,
                                                 int64_t j, int ahead, float (&acc)[32], MmaAcc (&z0)[2],
                                                 MmaAcc (&u)[2]) {
  TN_COUNT_RECOMPUTE(p, r.run.i(j), r.run.r(j), kTcTile, kTcTile);
  const int64_t base = j * r.chunks, end = base + r.chunks;
  for (int64_t c = base + ahead; c < end; ++c) {
    r.consume(c, c == base, acc);
    sm90::wgmma_wait<1>();  // every earlier chunk's wgmmas are done
    sm90::fence_accumulators(acc);
    r.retire(st, c);
  }
  wgmma_done(acc);
  r.retire(st, end);
  tile_accumulators(acc, z0, u);
  __syncthreads();
}

// Stage 1 of tile j with the threads' copies (no tensor maps): 16-byte cp.async copies where d is a
// multiple of 8 and the rows are 16-byte aligned, else element by element; each chunk's wgmmas are
// waited for before the next. Ends with a barrier.
template <typename T>
__device__ void wgmma_thread_copies(const Problem<T>& p, unsigned char* ring, const TileRun& run, int64_t j,
                                    float (&acc)[32], MmaAcc (&z0)[2], MmaAcc (&u)[2]) {
  constexpr int St = WgmmaRing::stages, chunk = kWgmmaChunk<T>, V = 16 / sizeof(T);
  const int64_t chunks = (p.d + chunk - 1) / chunk;
  const int64_t i0 = run.i(j), r0 = run.r(j);
  TN_COUNT_RECOMPUTE(p, i0, r0, kTcTile, kTcTile);
  const uint32_t ring_addr = static_cast<uint32_t>(__cvta_generic_to_shared(ring));
  auto stage_at = [&](int64_t c) { return static_cast<uint32_t>(c % St) * WgmmaRing::stage_bytes; };
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
      wgmma_chunk<T>(acc, ring_addr + stage_at(c), c == 0);
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
      wgmma_chunk<T>(acc, ring_addr + stage_at(c), c == 0);
      wgmma_done(acc);
    }
  }
  __syncthreads();
  tile_accumulators(acc, z0, u);
}

// The copies a stage 1 is compiled with: both kinds (choosing by maps.usable), the copy engine's
// only (the launch has checked maps.usable), or the threads' only. A reduction kernel holds one
// kind: with the threads' copies beside the copy engine's in one kernel, ptxas serialised the
// wgmmas of the reductions of tanh (0,) (warning C7511).
enum class WgmmaCopies { kAny, kTensor, kThreads };

// Stage 1 of tile j of the run, all of it in one call: with the copy engine where x and the
// weights have tensor maps (maps.usable: wgmma_tma_start and wgmma_tma_finish without overlap);
// else (d not a multiple of 8, unaligned rows) with 16-byte cp.async copies by every thread, or
// element by element. C: the copies compiled in (WgmmaCopies). `st`: the ring's state
// (WgmmaRingState) with the copy engine. Ends with a barrier.
template <WgmmaCopies C, typename T>
__device__ void wgmma_preactivations(const Problem<T>& p, const sm90::TileMaps& maps, WgmmaBarriers& bars,
                                     unsigned char* ring, const TileRun& run, int64_t j, WgmmaRingState& st,
                                     MmaAcc (&z0)[2], MmaAcc (&u)[2]) {
  const int64_t chunks = (p.d + kWgmmaChunk<T> - 1) / kWgmmaChunk<T>;
  // Zero where d is (no chunk then). The first chunk starts the sums anyway, but with the fill moved
  // to a d = 0 branch of its own, ptxas serialised the wgmmas (C7515, accumulators defined by other
  // instructions).
  float acc[32];
#pragma unroll
  for (int i = 0; i < 32; ++i) acc[i] = 0.0f;
  if constexpr (C != WgmmaCopies::kThreads) {
    if (C == WgmmaCopies::kTensor || maps.usable) {
      const WgmmaRingCopies<T> r{maps, bars, ring, run, chunks, (j + 1) * chunks};
      wgmma_tma_start<false>(r, st, j, 0, acc);
      wgmma_tma_finish(p, r, st, j, 0, acc, z0, u);
      return;
    }
  }
  if constexpr (C != WgmmaCopies::kTensor) wgmma_thread_copies(p, ring, run, j, acc, z0, u);
}

// Thread 0 initialises the ring's barriers where the copy engine fills it; a barrier of the caller
// publishes them.
__device__ __forceinline__ void init_ring_barriers(const sm90::TileMaps& maps, WgmmaBarriers& bars) {
  if (maps.usable && threadIdx.x == 0) {
    for (int s = 0; s < WgmmaRing::stages; ++s) {
      sm90::mbarrier_init(&bars.full[s], 1);
      sm90::mbarrier_init(&bars.empty[s], kThreads);
    }
    sm90::mbarrier_init_fence();
  }
}

// The 1024-byte aligned ring at the start of a work region (which has WgmmaRing::dynamic_bytes).
__device__ __forceinline__ unsigned char* ring_in(unsigned char* work) {
  const uint32_t misalign = static_cast<uint32_t>(__cvta_generic_to_shared(work)) % sm90::kAtomBytes;
  return work + (sm90::kAtomBytes - misalign) % sm90::kAtomBytes;
}

// Stage 1 of a reduction's tiles by wgmma (neuron_sum_tc, sample_sum_tc): the block's tiles one
// after the other through the ring in the work region, the barriers' phases carried from tile to
// tile.
template <typename T, bool Overlap, WgmmaCopies C>
struct WgmmaStage1 {
  static_assert(!Overlap || C == WgmmaCopies::kTensor, "the overlap runs on the copy engine's copies");
  // Overlap: the epilogue's and stage 2's scratch apart from the ring (WgmmaReduceSmem's
  // `separate`), and the first wgmmas of each tile under the previous tile's epilogue and stage 2
  // (wgmma_tma_start); tensor maps only. C: the copies of the plain stage 1 (WgmmaCopies).
  static constexpr bool separate = Overlap, kOverlaps = Overlap;
  struct Pending {  // a tile's accumulators between start and finish
    float acc[Overlap ? 32 : 1];
  };
  const Problem<T>& p;
  const sm90::TileMaps& maps;
  WgmmaBarriers& bars;
  WgmmaRingState ring{};

  __device__ WgmmaRingCopies<T> copies(const WgmmaReduceSmem<T>& sm, const TileRun& run) const {
    const int64_t chunks = (p.d + kWgmmaChunk<T> - 1) / kWgmmaChunk<T>;
    return {maps, bars, ring_in(sm.stage1), run, chunks, run.count * chunks};
  }
  __device__ static int ahead(int64_t chunks) {  // the chunks of a tile that start issues
    return static_cast<int>(chunks < WgmmaRing::stages - 1 ? chunks : WgmmaRing::stages - 1);
  }
  __device__ __forceinline__ void begin(const WgmmaReduceSmem<T>& sm, const TileRun& run) {
    if constexpr (Overlap) copies(sm, run).top_up(ring);
  }
  __device__ __forceinline__ void start(const WgmmaReduceSmem<T>& sm, const TileRun& run, int64_t j, Pending& q) {
    if constexpr (Overlap) {
      const WgmmaRingCopies<T> r = copies(sm, run);
      wgmma_tma_start<true>(r, ring, j, ahead(r.chunks), q.acc);
    }
  }
  __device__ __forceinline__ void finish(const WgmmaReduceSmem<T>& sm, const TileRun& run, int64_t j, Pending& q,
                                         MmaAcc (&z0)[2], MmaAcc (&u)[2]) {
    if constexpr (Overlap) {
      const WgmmaRingCopies<T> r = copies(sm, run);
      wgmma_tma_finish(p, r, ring, j, ahead(r.chunks), q.acc, z0, u);
    } else {
      wgmma_preactivations<C>(p, maps, bars, ring_in(sm.stage1), run, j, ring, z0, u);
    }
  }
};

template <int S, typename T>
__device__ __forceinline__ void features_forward_wgmma(const Problem<T>& p, T* out, const sm90::TileMaps& maps) {
  using Sm = TcSmem<T, WgmmaLoop::kStages>;
  __shared__ __align__(128) unsigned char fix[Sm::fixed_bytes];
  __shared__ __align__(8) WgmmaBarriers bars;
  TN_DYNAMIC_SMEM(dyn);
  unsigned char* const ring = ring_in(dyn);
  const Sm sm{ring, fix};  // the epilogue of the forward reads the fixed part only
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTcTile, i0 = static_cast<int64_t>(blockIdx.y) * kTcTile;
  MmaCodes codes;
  MmaAcc z0[2], u[2];
  init_ring_barriers(maps, bars);
  load_neurons(p, sm, r0);
  load_codes(sm, codes);  // its barrier publishes the signs and biases, and the ring's barriers
  WgmmaRingState ring_state;
  wgmma_preactivations<WgmmaCopies::kAny>(p, maps, bars, ring, TileRun{i0, r0, 0, 0, 1}, 0, ring_state, z0, u);
  features_tile<S>(p, sm, codes, i0, r0, z0, u, out);
  // A series without u (order 0 alone) leaves u's accumulators unread, and ptxas then serialises
  // the wgmmas (warning C7511: a wait after each); an empty read at the end keeps them live.
#if !TN_WGMMA_EMULATED
#pragma unroll
  for (int j = 0; j < 2; ++j)
#pragma unroll
    for (int e = 0; e < MmaAcc::num_elements; ++e) asm volatile("" ::"f"(u[j].x[e]));
#endif
}

// Both column halves of the chunk in `stage`, committed as one group.
template <typename T>
__device__ __forceinline__ void wgmma_chunk_both(float (&acc)[2][32], uint32_t stage, bool first) {
  sm90::fence_accumulators(acc[0]);
  sm90::fence_accumulators(acc[1]);
  sm90::wgmma_fence();
  wgmma_half<T>(acc[0], stage, first, 0);
  wgmma_half<T>(acc[1], stage, first, 1);
  sm90::wgmma_commit();
  sm90::fence_accumulators(acc[0]);
  sm90::fence_accumulators(acc[1]);
}

template <int S, typename T>
__device__ __forceinline__ void features_forward_pingpong(const Problem<T>& p, T* out, const sm90::TileMaps& maps,
                                                          int64_t per) {
  using Sm = TcSmem<T, WgmmaLoop::kStages>;
  constexpr int St = PingPong::kStages;
  __shared__ __align__(128) unsigned char fix[Sm::fixed_bytes];
  __shared__ __align__(8) WgmmaBarriersOf<St> bars;
  TN_DYNAMIC_SMEM(dyn);
  unsigned char* const ring = ring_in(dyn);
  const Sm sm{ring, fix};  // the epilogue of the forward reads the fixed part only
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kTcTile, first = static_cast<int64_t>(blockIdx.y) * per;
  const int64_t tiles = (p.n + kTcTile - 1) / kTcTile, chunks = (p.d + kWgmmaChunk<T> - 1) / kWgmmaChunk<T>;
  const TileRun run{first * kTcTile, r0, kTcTile, 0, tiles - first < per ? tiles - first : per};
  if (threadIdx.x == 0) {
    for (int s = 0; s < St; ++s) {
      sm90::mbarrier_init(&bars.full[s], 1);
      sm90::mbarrier_init(&bars.empty[s], 128);  // a chunk's readers: one consumer warpgroup
    }
    sm90::mbarrier_init_fence();
  }
  MmaCodes codes;
  load_neurons(p, sm, r0);
  load_codes(sm, codes);  // its barrier publishes the signs and biases, and the ring's barriers
  const int group = static_cast<int>(threadIdx.x / 128);
  if (group == 0) {
    if (threadIdx.x == 0) {
      const WgmmaRingCopies<T, St> r{maps, bars, ring, run, chunks, run.count * chunks};
      WgmmaRingState st;
      for (int64_t j = 0; j < run.count; ++j) {
        TN_COUNT_RECOMPUTE(p, run.i(j), r0, kTcTile, kTcTile);
        for (int64_t k = 0; k < chunks; ++k) r.copy_next(st);
      }
    }
    return;
  }
  const int c = group - 1;
  const uint32_t ring_addr = static_cast<uint32_t>(__cvta_generic_to_shared(ring));
  for (int64_t j = c; j < run.count; j += 2) {
    if (j > 0) sm90::named_barrier_sync(PingPong::kTurn + c, PingPong::kConsumerThreads);
    // Zeroed though the first chunk's wgmmas start the sums (scale-d 0, and d > 0 here): 64 moves
    // per tile, and no accumulator is ever read undefined (the emulator copies them at issue).
    float acc[2][32];
#pragma unroll
    for (int h = 0; h < 2; ++h)
#pragma unroll
      for (int i = 0; i < 32; ++i) acc[h][i] = 0.0f;
    const int64_t base = j * chunks, end = base + chunks;
    for (int64_t g = base; g < end; ++g) {
      sm90::mbarrier_wait(&bars.full[g % St], static_cast<uint32_t>(g / St) & 1u);
      wgmma_chunk_both<T>(acc, ring_addr + static_cast<uint32_t>(g % St) * WgmmaRing::stage_bytes, g == base);
      sm90::wgmma_wait<1>();  // every earlier chunk's wgmmas are done: the previous stage is free
      sm90::fence_accumulators(acc[0]);
      sm90::fence_accumulators(acc[1]);
      if (g > base) sm90::mbarrier_arrive(&bars.empty[(g - 1) % St]);
    }
    if (j + 1 < run.count) sm90::named_barrier_arrive(PingPong::kTurn + 1 - c, PingPong::kConsumerThreads);
    sm90::wgmma_wait<0>();
    sm90::fence_accumulators(acc[0]);
    sm90::fence_accumulators(acc[1]);
    if (end > base) sm90::mbarrier_arrive(&bars.empty[(end - 1) % St]);
    const int64_t i0 = run.i(j);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      MmaAcc z0[2], u[2];
      tile_accumulators(acc[h], z0, u);
      features_tile<S>(p, sm, codes, i0, r0, z0, u, out, h);
    }
  }
}

// The reductions on wgmma (bfloat16, float16): neuron_sum_tc and sample_sum_tc at 64 x 64 tiles with
// stage 1 by WgmmaStage1 (dynamic shared memory: WgmmaReduceSmem), stage 2 and the epilogue those
// of mma.sync.
template <bool Overlap, WgmmaCopies C, int S, typename T>
__device__ __forceinline__ void neuron_sum_wgmma(const Problem<T>& p, const NeuronSum<T>& s, int64_t per,
                                                 int64_t group_tiles, const sm90::TileMaps& maps) {
  __shared__ __align__(8) WgmmaBarriers bars;
  init_ring_barriers(maps, bars);  // published by load_codes' barrier
  neuron_sum_tc<MmaLoop, S, T, WgmmaReduceSmem<T>>(p, s, per, group_tiles, WgmmaStage1<T, Overlap, C>{p, maps, bars});
}
template <bool Overlap, WgmmaCopies C, int S, typename T>
__device__ __forceinline__ void sample_sum_wgmma(const Problem<T>& p, const SampleSum<T>& s, int64_t per,
                                                 int64_t group_tiles, const sm90::TileMaps& maps) {
  __shared__ __align__(8) WgmmaBarriers bars;
  init_ring_barriers(maps, bars);  // published by load_codes' barrier
  sample_sum_tc<MmaLoop, S, T, WgmmaReduceSmem<T>>(p, s, per, group_tiles, WgmmaStage1<T, Overlap, C>{p, maps, bars});
}

#endif  // TN_WGMMA

// S: the epilogue, a series of kSpecialised or kGenericEpilogue. WgmmaRing::dynamic_bytes of
// dynamic shared memory. `maps`: the copy engine's tensor maps of x and the weights (a
// __grid_constant__ parameter, which the copies name by address).
template <typename T, int S>
__global__ void __launch_bounds__(kThreads, 1)
    features_forward_wgmma_kernel(TN_PARAM(Problem<T>) p, T* out, TN_PARAM(sm90::TileMaps) maps) {
#if TN_WGMMA
  features_forward_wgmma<S>(p, out, maps);
#else
  __trap();
#endif
}

// The ping-pong features forward (features_forward_pingpong): PingPong::kThreads threads, tensor maps
// only (maps.usable), d > 0, PingPong::dynamic_bytes of dynamic shared memory; grid (neuron tiles,
// runs of `per` sample tiles).
template <typename T, int S>
__global__ void __launch_bounds__(PingPong::kThreads, 1)
    features_forward_pingpong_kernel(TN_PARAM(Problem<T>) p, T* out, TN_PARAM(sm90::TileMaps) maps, int64_t per) {
#if TN_WGMMA
  features_forward_pingpong<S>(p, out, maps, per);
#else
  __trap();
#endif
}

// The reductions: with the copy engine's copies (maps.usable), and the same with the threads'
// copies (`_fallback`: d not a multiple of 8, unaligned rows, or no tensor maps), kernels of their
// own (WgmmaCopies).
template <typename T, int S>
__global__ void __launch_bounds__(kThreads, 1)
    neuron_sum_wgmma_kernel(TN_PARAM(Problem<T>) p, TN_PARAM(NeuronSum<T>) s, int64_t per, int64_t group_tiles,
                            TN_PARAM(sm90::TileMaps) maps) {
#if TN_WGMMA
  neuron_sum_wgmma<false, WgmmaCopies::kTensor, S>(p, s, per, group_tiles, maps);
#else
  __trap();
#endif
}
template <typename T, int S>
__global__ void __launch_bounds__(kThreads, 1)
    sample_sum_wgmma_kernel(TN_PARAM(Problem<T>) p, TN_PARAM(SampleSum<T>) s, int64_t per, int64_t group_tiles,
                            TN_PARAM(sm90::TileMaps) maps) {
#if TN_WGMMA
  sample_sum_wgmma<false, WgmmaCopies::kTensor, S>(p, s, per, group_tiles, maps);
#else
  __trap();
#endif
}
template <typename T, int S>
__global__ void __launch_bounds__(kThreads, 1)
    neuron_sum_wgmma_fallback_kernel(TN_PARAM(Problem<T>) p, TN_PARAM(NeuronSum<T>) s, int64_t per,
                                     int64_t group_tiles, TN_PARAM(sm90::TileMaps) maps) {
#if TN_WGMMA
  neuron_sum_wgmma<false, WgmmaCopies::kThreads, S>(p, s, per, group_tiles, maps);
#else
  __trap();
#endif
}
template <typename T, int S>
__global__ void __launch_bounds__(kThreads, 1)
    sample_sum_wgmma_fallback_kernel(TN_PARAM(Problem<T>) p, TN_PARAM(SampleSum<T>) s, int64_t per,
                                     int64_t group_tiles, TN_PARAM(sm90::TileMaps) maps) {
#if TN_WGMMA
  sample_sum_wgmma<false, WgmmaCopies::kThreads, S>(p, s, per, group_tiles, maps);
#else
  __trap();
#endif
}

// The same with each tile's first wgmmas under the previous tile's epilogue and stage 2
// (WgmmaStage1<T, true>), for specialised epilogues S (the generic one has no registers to spare for
// the second set of accumulators). Only with tensor maps (maps.usable), and with the shared memory
// for the scratch apart from the ring (WgmmaReduceSmem::fixed(fields, true)). Kernels of their own:
// beside the other stage 1 in one function, ptxas serialised the wgmmas and spilled registers.
template <typename T, int S>
__global__ void __launch_bounds__(kThreads, 1)
    neuron_sum_wgmma_overlap_kernel(TN_PARAM(Problem<T>) p, TN_PARAM(NeuronSum<T>) s, int64_t per,
                                    int64_t group_tiles, TN_PARAM(sm90::TileMaps) maps) {
  static_assert(S != kGenericEpilogue, "a specialised epilogue");
#if TN_WGMMA
  neuron_sum_wgmma<true, WgmmaCopies::kTensor, S>(p, s, per, group_tiles, maps);
#else
  __trap();
#endif
}
template <typename T, int S>
__global__ void __launch_bounds__(kThreads, 1)
    sample_sum_wgmma_overlap_kernel(TN_PARAM(Problem<T>) p, TN_PARAM(SampleSum<T>) s, int64_t per,
                                    int64_t group_tiles, TN_PARAM(sm90::TileMaps) maps) {
  static_assert(S != kGenericEpilogue, "a specialised epilogue");
#if TN_WGMMA
  sample_sum_wgmma<true, WgmmaCopies::kTensor, S>(p, s, per, group_tiles, maps);
#else
  __trap();
#endif
}

}  // namespace tn::cuda
