// Hand-written PTX of the sm_90a mainloop: wgmma.mma_async m64n64k16 with both operands in shared
// memory (bf16 or fp16, f32 accumulators in registers), its asynchronous-group controls, and the
// proxy fence that makes ordinary shared-memory writes (cp.async, st.shared) visible to it. Device
// code only where __CUDA_ARCH_FEAT_SM90_ALL is defined (-gencode=arch=compute_90a,code=sm_90a):
// callers compile nothing of this for other targets. The CPU emulator (TN_CUDA_EMULATOR, host code)
// runs the same calls on its model of the instructions (tests/emulator/wgmma.h).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define TN_WGMMA 1
#define TN_WGMMA_EMULATED 0
#elif defined(TN_CUDA_EMULATOR) && !defined(__CUDA_ARCH__)
#define TN_WGMMA 1
#define TN_WGMMA_EMULATED 1
#else
#define TN_WGMMA 0
#endif

namespace tn::cuda::sm90 {

#if TN_WGMMA && TN_WGMMA_EMULATED

__forceinline__ void wgmma_fence() { tn_emu::wgmma_fence(); }
__forceinline__ void wgmma_commit() { tn_emu::wgmma_commit(); }
template <int Pending>
__forceinline__ void wgmma_wait() {
  tn_emu::wgmma_wait(Pending);
}
__forceinline__ void fence_proxy_async() { tn_emu::fence_proxy_async(); }
template <int N>
__forceinline__ void fence_accumulators(float (&)[N]) {}
template <typename T>
__forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t a, uint64_t b, bool accumulate = true) {
  tn_emu::wgmma_m64n64k16<T>(d, a, b, accumulate);
}
__forceinline__ void named_barrier_sync(int id, int threads) { tn_emu::named_barrier_sync(id, threads); }
__forceinline__ void named_barrier_arrive(int id, int threads) { tn_emu::named_barrier_arrive(id, threads); }

#elif TN_WGMMA

// Orders this thread's register accesses before the wgmmas that follow (required before the
// first wgmma of a batch, and whenever the accumulators were touched since the last one).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }

// Closes the wgmmas issued since the last commit into one group.
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }

// Waits until at most Pending groups of this warpgroup are still running.
template <int Pending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(Pending) : "memory");
}

// Orders this thread's earlier generic-proxy writes of shared memory (completed cp.async copies,
// plain stores) before later async-proxy reads of it (wgmma operands); a barrier then publishes
// them to the other threads.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Named barrier `id` (1-15; 0 is __syncthreads') over `threads` threads, a multiple of 32: sync
// arrives and waits for the rest, arrive only arrives. One group of warps signals another with it
// (arrive on one side, sync on the other) without a block-wide barrier.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// An empty asm that claims to read and write every accumulator register: the compiler moves no
// access of them across it (wgmma writes them behind its back until the wait), and keeps all of
// them live, also those the epilogue does not read (else ptxas serialises the wgmmas).
template <int N>
__device__ __forceinline__ void fence_accumulators(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define TN_WGMMA_D32                                                                              \
  "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                       \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
#define TN_ACC8(d, i)                                                                                           \
  "+f"(d[(i)]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3]), "+f"(d[(i) + 4]), "+f"(d[(i) + 5]), \
      "+f"(d[(i) + 6]), "+f"(d[(i) + 7])

// d (64 x 64 per warpgroup, 32 floats per thread) = A B^T + (accumulate ? d : 0): A (64 x 16) and B
// (64 x 16) K-major in shared memory, read through descriptors a and b (scale-d is `accumulate`).
// No negation, no transpose (both operands K-major). Starting a sum with accumulate = false instead
// of zeroing d keeps every write of the accumulators inside wgmmas, which ptxas needs to keep a
// chain of them in flight across other code.
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16(float (&d)[32], uint64_t a, uint64_t b, bool accumulate = true) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "bf16 or fp16 operands");
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " TN_WGMMA_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : TN_ACC8(d, 0), TN_ACC8(d, 8), TN_ACC8(d, 16), TN_ACC8(d, 24)
        : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)));
  else
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 " TN_WGMMA_D32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
        : TN_ACC8(d, 0), TN_ACC8(d, 8), TN_ACC8(d, 16), TN_ACC8(d, 24)
        : "l"(a), "l"(b), "r"(static_cast<int>(accumulate)));
}

#undef TN_ACC8
#undef TN_WGMMA_D32

#endif  // TN_WGMMA && TN_WGMMA_EMULATED, TN_WGMMA

}  // namespace tn::cuda::sm90
