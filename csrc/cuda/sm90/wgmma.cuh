// wgmma.mma_async with both operands in shared memory (A: 64 x K rows of x, B: N x K rows of
// [w0 block; w block]), f32 accumulators in registers, for N = 64, 128, 256 and bf16, fp16 (k16)
// or TF32 (k8, float storage; the tensor cores read the top 19 bits of each float). Both operands
// are K-major, as TF32 requires. `accumulate` = 0 overwrites the accumulators (the first K step of
// a tile), 1 adds to them. The asynchronous-group controls (fence, commit, wait) and the operand
// fence that keeps the compiler from moving accumulator accesses across them are here too.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "cuda/sm90/ptx.cuh"

namespace tn::cuda::sm90 {

// Orders this thread's register accesses before the wgmmas that follow (required before the
// first wgmma of a batch, and whenever the accumulators were touched since the last one).
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }

// Closes the wgmmas issued since the last commit into one group.
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }

// Waits until at most kPending groups of this warpgroup are still running.
template <int kPending>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(kPending) : "memory");
}

// An empty asm that claims to read and write every accumulator register: the compiler may not move
// their reads or writes across it (wgmma writes them behind its back until the wait).
template <int kRegs>
__device__ __forceinline__ void fence_accumulators(float (&d)[kRegs]) {
#pragma unroll
  for (int i = 0; i < kRegs; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#define TN_WGMMA_D32 \
  "{" \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31" \
  "}"
#define TN_WGMMA_D64 \
  "{" \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63" \
  "}"
#define TN_WGMMA_D128 \
  "{" \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
  "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
  "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
  "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
  "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127" \
  "}"

#define TN_ACC8(d, i) \
  "+f"(d[(i)]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3]), "+f"(d[(i) + 4]), "+f"(d[(i) + 5]), \
      "+f"(d[(i) + 6]), "+f"(d[(i) + 7])
#define TN_ACC32(d, i) TN_ACC8(d, (i)), TN_ACC8(d, (i) + 8), TN_ACC8(d, (i) + 16), TN_ACC8(d, (i) + 24)
#define TN_ACC_OUT32(d) TN_ACC32(d, 0)
#define TN_ACC_OUT64(d) TN_ACC32(d, 0), TN_ACC32(d, 32)
#define TN_ACC_OUT128(d) TN_ACC32(d, 0), TN_ACC32(d, 32), TN_ACC32(d, 64), TN_ACC32(d, 96)

// One wgmma of shape m64nN and the element type Elem (float: TF32).
template <int N, typename Elem>
struct Wgmma;

// REGS: the accumulator list; A, B, S: the operand numbers of the two descriptors and the
// accumulate flag (they follow the N/2 accumulators); TAIL: the immediate scale and transpose
// arguments (16-bit types: scale-a, scale-b, trans-a, trans-b; TF32: scale-a, scale-b only).
#define TN_DEFINE_WGMMA(N, ELEM, INSTR, REGS, OUTS, A, B, S, TAIL)                                      \
  template <>                                                                                          \
  struct Wgmma<N, ELEM> {                                                                              \
    static __device__ __forceinline__ void mma(float (&d)[N / 2], uint64_t a, uint64_t b, uint32_t accumulate) { \
      asm volatile(                                                                                    \
          "{\n"                                                                                        \
          ".reg .pred p;\n"                                                                            \
          "setp.ne.b32 p, %" S ", 0;\n" INSTR " " REGS ", %" A ", %" B ", p" TAIL ";\n"               \
          "}\n"                                                                                        \
          : OUTS(d)                                                                                    \
          : "l"(a), "l"(b), "r"(accumulate));                                                          \
    }                                                                                                  \
  };

#define TN_DEFINE_WGMMA_TYPE(ELEM, NAME, K, TAIL)                                                                   \
  TN_DEFINE_WGMMA(64, ELEM, "wgmma.mma_async.sync.aligned.m64n64" K ".f32." NAME "." NAME, TN_WGMMA_D32,         \
                  TN_ACC_OUT32, "32", "33", "34", TAIL)                                                          \
  TN_DEFINE_WGMMA(128, ELEM, "wgmma.mma_async.sync.aligned.m64n128" K ".f32." NAME "." NAME, TN_WGMMA_D64,       \
                  TN_ACC_OUT64, "64", "65", "66", TAIL)                                                          \
  TN_DEFINE_WGMMA(256, ELEM, "wgmma.mma_async.sync.aligned.m64n256" K ".f32." NAME "." NAME, TN_WGMMA_D128,      \
                  TN_ACC_OUT128, "128", "129", "130", TAIL)

TN_DEFINE_WGMMA_TYPE(__nv_bfloat16, "bf16", "k16", ", 1, 1, 0, 0")
TN_DEFINE_WGMMA_TYPE(__half, "f16", "k16", ", 1, 1, 0, 0")
TN_DEFINE_WGMMA_TYPE(float, "tf32", "k8", ", 1, 1")

#undef TN_DEFINE_WGMMA_TYPE
#undef TN_DEFINE_WGMMA
#undef TN_ACC_OUT128
#undef TN_ACC_OUT64
#undef TN_ACC_OUT32
#undef TN_ACC32
#undef TN_ACC8
#undef TN_WGMMA_D128
#undef TN_WGMMA_D64
#undef TN_WGMMA_D32

}  // namespace tn::cuda::sm90
