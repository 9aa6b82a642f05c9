// Hand-written PTX of the copy side of the sm_90a mainloop: the tensor memory accelerator's 2-D
// tile copies (cp.async.bulk.tensor) from global into shared memory, completing on shared-memory
// barriers (mbarrier) that count arrivals and transaction bytes. Compiled where TN_WGMMA is set
// (sm90/wgmma.cuh): the sm_90a device pass, or the CPU emulator's model (tests/emulator/tma.h).
#pragma once

#include <cuda.h>  // CUtensorMap

#include <cstdint>

#include "cuda/sm90/wgmma.cuh"

namespace tn::cuda::sm90 {

// The tensor maps of one wgmma features launch: x (n rows of d), w0 and w (m rows of d), each read
// in boxes of 64 elements of k (one 128-byte swizzled row) by `rows` rows, with zeros outside the
// tensor. `usable` is false where the maps could not be made (d not a multiple of 8, rows not
// 16-byte aligned, or no driver entry point): the kernel then stages with cp.async.
struct TileMaps {
  CUtensorMap x, w0, w;
  bool usable = false;
};

#if TN_WGMMA && TN_WGMMA_EMULATED

__forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) { tn_emu::mbarrier_init(bar, count); }
__forceinline__ void mbarrier_init_fence() {}
__forceinline__ void mbarrier_arrive(uint64_t* bar) { tn_emu::mbarrier_arrive(bar, 0); }
__forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) { tn_emu::mbarrier_arrive(bar, bytes); }
__forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) { tn_emu::mbarrier_wait(bar, parity); }
__forceinline__ void tma_load_2d(void* smem, const CUtensorMap& map, int32_t inner, int32_t row, uint64_t* bar) {
  tn_emu::tma_load_2d(smem, map, inner, row, bar);
}

#elif TN_WGMMA

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// A barrier whose phase completes after `count` arrivals (and the transaction bytes expected in it).
__device__ __forceinline__ void mbarrier_init(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(count) : "memory");
}
// Makes the initialised barriers visible to the other threads and to the copy engine (then a
// __syncthreads).
__device__ __forceinline__ void mbarrier_init_fence() {
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
__device__ __forceinline__ void mbarrier_arrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_addr(bar)) : "memory");
}
// An arrival that also expects `bytes` more transaction bytes in the current phase.
__device__ __forceinline__ void mbarrier_arrive_expect_tx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_addr(bar)), "r"(bytes)
               : "memory");
}
// Waits until the phase of parity `parity` has completed.
__device__ __forceinline__ void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  const uint32_t addr = smem_addr(bar);
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(addr), "r"(parity)
        : "memory");
  } while (!done);
}
// The box of `map` at (inner, row) into shared memory at `smem` (1024-byte aligned for the 128-byte
// swizzle), its bytes completing on `bar`.
__device__ __forceinline__ void tma_load_2d(void* smem, const CUtensorMap& map, int32_t inner, int32_t row,
                                            uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::
          "r"(smem_addr(smem)),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(inner), "r"(row), "r"(smem_addr(bar))
      : "memory");
}

#endif

}  // namespace tn::cuda::sm90
