// Pairs of kernels that issue the CUDA kernels' hand-written PTX (wgmma, mma.sync, ldmatrix,
// cp.async, the copy engine's tensor copies, mbarriers, fences, named barriers) first through this
// project's wrappers and then through CuTe's and CUTLASS's of the same instructions, with the same
// operands: tests/test_cute_layouts.py compiles them to PTX and requires each pair to issue the same
// instructions, modifiers and immediates, each operand traced to the same input element (or output
// element). Inputs come from `in` (shared memory at word offsets read from `in`), outputs go to
// `out`; kernels named ours_<case> and cute_<case>.
#include <cute/arch/copy_sm75.hpp>
#include <cute/arch/copy_sm80.hpp>
#include <cute/arch/copy_sm90_tma.hpp>
#include <cute/arch/mma_sm80.hpp>
#include <cute/arch/mma_sm90_gmma.hpp>
#include <cutlass/arch/barrier.h>

#include "cuda/mma_sync.cuh"
#include "cuda/sm90/tma.cuh"
#include "cuda/sm90/wgmma.cuh"

namespace gmma = cute::SM90::GMMA;

// ---- wgmma.mma_async m64n64k16, both operands K-major in shared memory, f32 accumulators ----
template <class T>
__device__ void ours_wgmma(const uint64_t* in, float* out) {
  float acc[32];
  for (int i = 0; i < 32; ++i) acc[i] = out[i];
  tn::cuda::sm90::wgmma_m64n64k16<T>(acc, in[0], in[1], in[2] != 0);
  for (int i = 0; i < 32; ++i) out[i] = acc[i];
}
template <class Op>
__device__ void cute_wgmma(const uint64_t* in, float* out) {
  float d[32];
  for (int i = 0; i < 32; ++i) d[i] = out[i];
  Op::fma(in[0], in[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11], d[12], d[13], d[14],
          d[15], d[16], d[17], d[18], d[19], d[20], d[21], d[22], d[23], d[24], d[25], d[26], d[27], d[28], d[29], d[30],
          d[31], in[2] != 0 ? gmma::ScaleOut::One : gmma::ScaleOut::Zero);
  for (int i = 0; i < 32; ++i) out[i] = d[i];
}
extern "C" __global__ void ours_wgmma_bf16(const uint64_t* in, float* out) { ours_wgmma<__nv_bfloat16>(in, out); }
extern "C" __global__ void cute_wgmma_bf16(const uint64_t* in, float* out) {
  cute_wgmma<gmma::MMA_64x64x16_F32BF16BF16_SS<gmma::Major::K, gmma::Major::K>>(in, out);
}
extern "C" __global__ void ours_wgmma_f16(const uint64_t* in, float* out) { ours_wgmma<__half>(in, out); }
extern "C" __global__ void cute_wgmma_f16(const uint64_t* in, float* out) {
  cute_wgmma<gmma::MMA_64x64x16_F32F16F16_SS<gmma::Major::K, gmma::Major::K>>(in, out);
}

// ---- wgmma's fence, commit and waits ----
extern "C" __global__ void ours_wgmma_sync() {
  tn::cuda::sm90::wgmma_fence();
  tn::cuda::sm90::wgmma_commit();
  tn::cuda::sm90::wgmma_wait<1>();
  tn::cuda::sm90::wgmma_wait<0>();
}
extern "C" __global__ void cute_wgmma_sync() {
  cute::warpgroup_arrive();
  cute::warpgroup_commit_batch();
  cute::warpgroup_wait<1>();
  cute::warpgroup_wait<0>();
}

// ---- mma.sync m16n8k16 (bf16, f16) and m16n8k8 (tf32), C = D ----
template <class T>
__device__ void ours_mma(const uint32_t* in, float* out) {
  float d[4] = {out[0], out[1], out[2], out[3]};
  const uint32_t a[4] = {in[0], in[1], in[2], in[3]};
  tn::cuda::mma_16x8<T>(d, a, in[4], in[5]);
  for (int i = 0; i < 4; ++i) out[i] = d[i];
}
template <class Op>
__device__ void cute_mma(const uint32_t* in, float* out) {
  float d[4];
  Op::fma(d[0], d[1], d[2], d[3], in[0], in[1], in[2], in[3], in[4], in[5], out[0], out[1], out[2], out[3]);
  for (int i = 0; i < 4; ++i) out[i] = d[i];
}
extern "C" __global__ void ours_mma_bf16(const uint32_t* in, float* out) { ours_mma<__nv_bfloat16>(in, out); }
extern "C" __global__ void cute_mma_bf16(const uint32_t* in, float* out) {
  cute_mma<cute::SM80_16x8x16_F32BF16BF16F32_TN>(in, out);
}
extern "C" __global__ void ours_mma_f16(const uint32_t* in, float* out) { ours_mma<__half>(in, out); }
extern "C" __global__ void cute_mma_f16(const uint32_t* in, float* out) {
  cute_mma<cute::SM80_16x8x16_F32F16F16F32_TN>(in, out);
}
extern "C" __global__ void ours_mma_tf32(const uint32_t* in, float* out) { ours_mma<float>(in, out); }
extern "C" __global__ void cute_mma_tf32(const uint32_t* in, float* out) {
  cute_mma<cute::SM80_16x8x8_F32TF32TF32F32_TN>(in, out);
}

// ---- ldmatrix x1, x2, x4, with and without .trans, from the shared row at word in[0] ----
extern __shared__ uint32_t smem[];
template <int Count, bool Trans>
__device__ void ours_ldsm(const uint32_t* in, uint32_t* out) {
  uint32_t r[Count];
  tn::cuda::ldmatrix<Count, Trans>(r, &smem[in[0]]);
  for (int i = 0; i < Count; ++i) out[i] = r[i];
}
template <class Op, int Count>
__device__ void cute_ldsm(const uint32_t* in, uint32_t* out) {
  uint32_t r[4];
  const auto& row = *reinterpret_cast<const cute::uint128_t*>(&smem[in[0]]);
  if constexpr (Count == 1) Op::copy(row, r[0]);
  else if constexpr (Count == 2) Op::copy(row, r[0], r[1]);
  else Op::copy(row, r[0], r[1], r[2], r[3]);
  for (int i = 0; i < Count; ++i) out[i] = r[i];
}
#define TN_LDSM_CASE(name, count, trans, op)                                                               \
  extern "C" __global__ void ours_##name(const uint32_t* in, uint32_t* out) { ours_ldsm<count, trans>(in, out); } \
  extern "C" __global__ void cute_##name(const uint32_t* in, uint32_t* out) { cute_ldsm<op, count>(in, out); }
TN_LDSM_CASE(ldsm_x1, 1, false, cute::SM75_U32x1_LDSM_N)
TN_LDSM_CASE(ldsm_x2, 2, false, cute::SM75_U32x2_LDSM_N)
TN_LDSM_CASE(ldsm_x4, 4, false, cute::SM75_U32x4_LDSM_N)
TN_LDSM_CASE(ldsm_x1_trans, 1, true, cute::SM75_U16x2_LDSM_T)
TN_LDSM_CASE(ldsm_x2_trans, 2, true, cute::SM75_U16x4_LDSM_T)
TN_LDSM_CASE(ldsm_x4_trans, 4, true, cute::SM75_U16x8_LDSM_T)
#undef TN_LDSM_CASE

// ---- cp.async of 16 bytes into shared word in[0] from the global row at in + 16; its commit and waits ----
extern "C" __global__ void ours_cp_async(const uint32_t* in) {
  tn::cuda::copy16_async(&smem[in[0]], in + 4);
  tn::cuda::copy_async_commit();
  tn::cuda::copy_async_wait<2>();
  tn::cuda::copy_async_wait<1>();
}
extern "C" __global__ void cute_cp_async(const uint32_t* in) {
  cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(*reinterpret_cast<const cute::uint128_t*>(in + 4),
                                                         *reinterpret_cast<cute::uint128_t*>(&smem[in[0]]));
  cute::cp_async_fence();
  cute::cp_async_wait<2>();  // (CuTe's wait for none pending is wait_all)
  cute::cp_async_wait<1>();
}

// ---- the copy engine: a 2-D tile of the tensor map `map` at (inner in[1], row in[2]) into shared
// word in[0], completing on the mbarrier at shared word in[3] ----
extern "C" __global__ void ours_tma_2d(const __grid_constant__ CUtensorMap map, const uint32_t* in) {
  tn::cuda::sm90::tma_load_2d(&smem[in[0]], map, static_cast<int32_t>(in[1]), static_cast<int32_t>(in[2]),
                              reinterpret_cast<uint64_t*>(&smem[in[3]]));
}
extern "C" __global__ void cute_tma_2d(const __grid_constant__ CUtensorMap map, const uint32_t* in) {
  const int32_t inner = static_cast<int32_t>(in[1]), row = static_cast<int32_t>(in[2]);
  cute::SM90_TMA_LOAD_2D::copy(&map, reinterpret_cast<uint64_t*>(&smem[in[3]]), 0, &smem[in[0]], inner, row);
}

// ---- mbarriers at shared word in[0]: init (count in[1]) and its fence, arrive, arrive with in[2]
// transaction bytes; the proxy fence; named barrier in[3] over in[4] threads ----
extern "C" __global__ void ours_barriers(const uint32_t* in) {
  uint64_t* const bar = reinterpret_cast<uint64_t*>(&smem[in[0]]);
  tn::cuda::sm90::mbarrier_init(bar, in[1]);
  tn::cuda::sm90::mbarrier_init_fence();
  tn::cuda::sm90::mbarrier_arrive(bar);
  tn::cuda::sm90::mbarrier_arrive_expect_tx(bar, in[2]);
  tn::cuda::sm90::fence_proxy_async();
  tn::cuda::sm90::named_barrier_sync(static_cast<int>(in[3]), static_cast<int>(in[4]));
  tn::cuda::sm90::named_barrier_arrive(static_cast<int>(in[3]), static_cast<int>(in[4]));
}
extern "C" __global__ void cute_barriers(const uint32_t* in) {
  const uint64_t* const bar = reinterpret_cast<const uint64_t*>(&smem[in[0]]);
  cutlass::arch::ClusterBarrier::init(bar, in[1]);
  cutlass::arch::fence_barrier_init();
  cutlass::arch::ClusterBarrier::arrive(bar);
  cutlass::arch::ClusterTransactionBarrier::arrive_and_expect_tx(bar, in[2]);
  cutlass::arch::fence_view_async_shared();
  // the form that takes the barrier's own id (the other adds CUTLASS's reserved count)
  const auto id = static_cast<cutlass::arch::ReservedNamedBarriers>(in[3]);
  cutlass::arch::NamedBarrier::sync(in[4], id);
  cutlass::arch::NamedBarrier::arrive(in[4], id);
}

// ---- waiting on the mbarrier at shared word in[0] for the phase of parity in[1] ----
extern "C" __global__ void ours_mbarrier_wait(const uint32_t* in) {
  tn::cuda::sm90::mbarrier_wait(reinterpret_cast<uint64_t*>(&smem[in[0]]), in[1]);
}
extern "C" __global__ void cute_mbarrier_wait(const uint32_t* in) {
  const uint64_t* const bar = reinterpret_cast<const uint64_t*>(&smem[in[0]]);
  while (!cutlass::arch::ClusterBarrier::try_wait(bar, in[1])) {
  }
}
