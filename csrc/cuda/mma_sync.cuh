// The mma.sync mainloop of the tensor-core kernels (tensor_cores.cuh, tag MmaLoop): warp-level
// mma.sync.m16n8k16 (bfloat16, float16) and mma.sync.m16n8k8 (float32 rounded to TF32), fed by
// ldmatrix from padded shared memory, with a ring of three cp.async k-chunk buffers in stage 1.
//
// Fragment layouts are the PTX ISA's, with g = lane / 4 and t = lane % 4:
//   A (16 x K, row-major): register i holds row g + 8 (i % 2) at columns c, c + 1 (16-bit: two
//     halves, the lower column in the low half) with c = 2t + 8 (i / 2); TF32: column t + 4 (i / 2).
//   B (K x 8): register i holds column g at rows 2t + 8i, 2t + 8i + 1 (16-bit); TF32: row t + 4i.
//   C, D (16 x 8, float): c0, c1 at row g, columns 2t, 2t + 1; c2, c3 at row g + 8.
// ldmatrix hands lane l the 32-bit word l % 4 of row l / 4 of each 8 x 8 matrix of 16-bit elements
// (lanes 8q .. 8q + 7 supplying the row addresses of matrix q); with .trans, the two 16-bit elements
// of rows 2 (l % 4) and 2 (l % 4) + 1 in column l / 4. A matrix of 16-bit elements stored k-major
// therefore arrives in the A or B layout as it is, one stored the other way round through .trans;
// for float32 an "8 x 8 matrix" is 8 rows of four floats, so k-major operands load whole and the
// others (stage 2's transposed operands) load as single words.
//
// Each PTX instruction sits in a small function whose host pass is what the CPU emulator runs
// (tests/emulator/mma.h): the kernels' lane arithmetic is then checked against the ISA's layouts.
#pragma once

#include <cstdint>

#include "cuda/tensor_cores.cuh"

namespace tn::cuda {

#if TN_TENSOR_CORES

// ---- the instructions ----

// ldmatrix.x{Count}[.trans]: Count 8 x 8 matrices of 16-bit elements from shared memory, this lane
// supplying the address of row lane % 8 of matrix lane / 8.
template <int Count, bool Trans>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[Count], const void* row) {
  static_assert(Count == 1 || Count == 2 || Count == 4, "ldmatrix loads one, two or four matrices");
#if defined(__CUDA_ARCH__)
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (Count == 4 && Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
  else if constexpr (Count == 4)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
  else if constexpr (Count == 2 && Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
  else if constexpr (Count == 2)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(s));
  else if constexpr (Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(s));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(s));
#elif defined(TN_CUDA_EMULATOR)
  tn_emu::ldmatrix<Count, Trans>(r, row);
#endif
}

// d += a b for one 16 x 8 block: mma.sync.m16n8k16 for __half and __nv_bfloat16 operands,
// mma.sync.m16n8k8 with TF32 operands for float; float accumulators.
template <typename T>
__device__ __forceinline__ void mma_16x8(float* d, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else if constexpr (std::is_same_v<T, __half>)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#elif defined(TN_CUDA_EMULATOR)
  tn_emu::mma_16x8<T>(d, a, b0, b1);
#endif
}

// The float32 bits v rounded to TF32 (to nearest, ties away from zero: cvt.rna.tf32.f32), as the
// wmma path rounds its operands.
__device__ __forceinline__ uint32_t round_tf32(uint32_t v) {
#if defined(__CUDA_ARCH__)
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(__uint_as_float(v)));
  return r;
#elif defined(TN_CUDA_EMULATOR)
  return tn_emu::round_tf32(v);
#else
  return v;
#endif
}

// ---- fragments ----

// A warp's 16 x 16 accumulator block: two 16 x 8 mma blocks, elements 4h .. 4h + 3 the c0 .. c3 of
// columns 8h .. 8h + 7.
struct MmaAcc {
  static constexpr int num_elements = 8;
  float x[8];
};

// The lane's place in the accumulator layout: row g = lane / 4, column 2t = 2 (lane % 4).
struct MmaCodes {
  static constexpr int num_elements = 8;
  int g, t2;
};

template <typename T>
struct TcTypes<MmaLoop, T> {
  using Acc = MmaAcc;
  using Codes = MmaCodes;
};

// Row and column apart, so that each is the lane's g or 2t plus a constant (no per-element values
// for the compiler to hold).
__device__ __forceinline__ Pos pos_at(const MmaCodes& c, int e) { return {c.g + (e & 2) * 4, c.t2 + (e >> 2) * 8 + (e & 1)}; }
template <typename Pick>
__device__ __forceinline__ Pos pos_of(const MmaCodes& c, Pick&&, int l, int g) {
  return pos_at(c, (g & 1) * 4 + l);
}

// The codes; contains a barrier, as the wmma path's table does (callers rely on it).
template <typename T, int St>
__device__ __forceinline__ void load_codes(const TcSmem<T, St>&, MmaCodes& c) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  c.g = lane >> 2;
  c.t2 = (lane & 3) * 2;
  __syncthreads();
}

template <typename T>
constexpr int kRowElems = 16 / static_cast<int>(sizeof(T));  // elements of one 16-byte ldmatrix row

template <typename T, int N>
__device__ __forceinline__ void operands_to_tf32(uint32_t (&r)[N]) {
  if constexpr (std::is_same_v<T, float>) {
#pragma unroll
    for (int i = 0; i < N; ++i) r[i] = round_tf32(r[i]);
  }
}

// A (16 x K) with A[m][k] at p[m * ld + k]: one ldmatrix.x4 (matrices: rows 0-7 and 8-15 at the
// first k half, then at the second).
template <typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* p, int ld) {
  const int lane = static_cast<int>(threadIdx.x % 32), q = lane >> 3, r = lane & 7;
  ldmatrix<4, false>(a, p + ((q & 1) * 8 + r) * ld + (q >> 1) * kRowElems<T>);
  operands_to_tf32<T>(a);
}

// A (16 x K) with A[m][k] at p[k * ld + m]: ldmatrix.x4.trans (16-bit), single words (float).
template <typename T>
__device__ __forceinline__ void load_a_trans(uint32_t (&a)[4], const T* p, int ld) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  if constexpr (std::is_same_v<T, float>) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; ++i) a[i] = __float_as_uint(p[(t + 4 * (i >> 1)) * ld + g + 8 * (i & 1)]);
    operands_to_tf32<T>(a);
  } else {
    const int q = lane >> 3, r = lane & 7;
    ldmatrix<4, true>(a, p + ((q >> 1) * 8 + r) * ld + (q & 1) * 8);
  }
}

// B (K x 16) as two 16 x 8 operands (b[0], b[1] columns 0-7; b[2], b[3] columns 8-15) with
// B[k][n] at p[n * ld + k]: one ldmatrix.x4.
template <typename T>
__device__ __forceinline__ void load_b(uint32_t (&b)[4], const T* p, int ld) {
  const int lane = static_cast<int>(threadIdx.x % 32), q = lane >> 3, r = lane & 7;
  ldmatrix<4, false>(b, p + ((q >> 1) * 8 + r) * ld + (q & 1) * kRowElems<T>);
  operands_to_tf32<T>(b);
}

// The same with B[k][n] at p[k * ld + n]: ldmatrix.x4.trans (16-bit), single words (float).
template <typename T>
__device__ __forceinline__ void load_b_trans(uint32_t (&b)[4], const T* p, int ld) {
  const int lane = static_cast<int>(threadIdx.x % 32);
  if constexpr (std::is_same_v<T, float>) {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 4; ++i) b[i] = __float_as_uint(p[(t + 4 * (i & 1)) * ld + g + 8 * (i >> 1)]);
    operands_to_tf32<T>(b);
  } else {
    const int q = lane >> 3, r = lane & 7;
    ldmatrix<4, true>(b, p + ((q & 1) * 8 + r) * ld + (q >> 1) * 8);
  }
}

// acc (16 x 16) += a b, b as load_b and load_b_trans give it.
template <typename T>
__device__ __forceinline__ void mma_16x16(MmaAcc& acc, const uint32_t (&a)[4], const uint32_t (&b)[4]) {
  mma_16x8<T>(acc.x, a, b[0], b[1]);
  mma_16x8<T>(acc.x + 4, a, b[2], b[3]);
}

// ---- stage 1 ----

// The products of one staged chunk for the warp's H row blocks (rows 64 h + 16 warp_row_block(),
// h < H) and two column blocks: per k step one A fragment of x per row block, shared by z0 and u,
// and one B fragment of w0 and of w per column block, shared by the H row blocks.
template <typename Sm, int H>
__device__ __forceinline__ void chunk_products(const Sm& sm, int buf, MmaAcc (&z0)[H][2], MmaAcc (&u)[H][2]) {
  using T = typename Sm::elem;
  constexpr int chunk = TcShape<T>::chunk, K = TcShape<T>::K, ld = Sm::ld_in;
  static_assert(Sm::rows == H * kTcTile, "one row block per 64 samples of the staged x");
  const T* xs = sm.x(buf) + warp_row_block() * 16 * ld;
  const T* w0s = sm.w0(buf) + warp_col_block(0) * 16 * ld;
  const T* ws = sm.w(buf) + warp_col_block(0) * 16 * ld;
#pragma unroll
  for (int k = 0; k < chunk; k += K) {
    uint32_t a[H][4], b[4];
#pragma unroll
    for (int h = 0; h < H; ++h) load_a(a[h], xs + h * kTcTile * ld + k, ld);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      load_b(b, w0s + j * 16 * ld + k, ld);  // w0, w: (neuron, k) rows, B[k][n] at [n * ld + k]
#pragma unroll
      for (int h = 0; h < H; ++h) mma_16x16<T>(z0[h][j], a[h], b);
      load_b(b, ws + j * 16 * ld + k, ld);
#pragma unroll
      for (int h = 0; h < H; ++h) mma_16x16<T>(u[h][j], a[h], b);
    }
  }
}

// Stage 1: z0 and u (biases not added) of samples i0 .. i0 + Sm::rows - 1 and neurons r0 .. r0 + 63
// for this warp's blocks, z0[h] and u[h] those of samples i0 + 64 h onwards. The k chunks cycle
// through St buffers: chunk c + St - 1 is copied while chunk c is multiplied, one barrier per chunk
// (it also frees the buffer the next copy overwrites, read in the step before). Ends with a
// barrier, so callers may reuse the shared region at once.
template <typename T, typename Sm, int H>
__device__ void tc_preactivations(const Problem<T>& p, const Sm& sm, int64_t i0, int64_t r0, MmaAcc (&z0)[H][2],
                                  MmaAcc (&u)[H][2]) {
  constexpr int St = Sm::stages, chunk = TcShape<T>::chunk, V = 16 / sizeof(T);
  static_assert(St >= 2, "the ring needs two buffers at least");
  TN_COUNT_RECOMPUTE(p, i0, r0, Sm::rows, kTcTile);
#pragma unroll
  for (int h = 0; h < H; ++h)
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
      for (int e = 0; e < MmaAcc::num_elements; ++e) z0[h][j].x[e] = u[h][j].x[e] = 0.0f;
  const int64_t chunks = (p.d + chunk - 1) / chunk;
  if (p.d % V == 0 && aligned16(p.x) && aligned16(p.w0) && aligned16(p.w)) {
#pragma unroll
    for (int c = 0; c < St - 1; ++c) {  // one commit group per chunk, empty ones included
      if (c < chunks) stage_chunk_async(p, sm, c, int64_t(c) * chunk, i0, r0);
      copy_async_commit();
    }
    for (int64_t c = 0; c < chunks; ++c) {
      copy_async_wait<St - 2>();  // this thread's copies of chunk c have landed
      __syncthreads();            // everyone's; and buffer (c - 1) % St is read out
      const int64_t next = c + St - 1;
      if (next < chunks) stage_chunk_async(p, sm, static_cast<int>(next % St), next * chunk, i0, r0);
      copy_async_commit();
      chunk_products(sm, static_cast<int>(c % St), z0, u);
    }
    copy_async_wait<0>();
  } else {
    for (int64_t c = 0; c < chunks; ++c) {
      stage_chunk(p, sm, static_cast<int>(c % St), c * chunk, i0, r0);
      __syncthreads();
      chunk_products(sm, static_cast<int>(c % St), z0, u);
    }
  }
  __syncthreads();
}

// The same for a 64-sample tile (the reductions).
template <typename T, int St>
__device__ __forceinline__ void tc_preactivations(const Problem<T>& p, const TcSmem<T, St>& sm, int64_t i0,
                                                  int64_t r0, MmaAcc (&z0)[2], MmaAcc (&u)[2]) {
  MmaAcc z[1][2], uu[1][2];
  tc_preactivations(p, sm, i0, r0, z, uu);
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    z0[j] = z[0][j];
    u[j] = uu[0][j];
  }
}

// ---- stage 2 ----

// As the wmma path's tile_products: acc += down * sum_k A[.][k] B[k][.] over the tile's 64 k for
// this warp's blocks below `cols`, one A fragment per k step for both blocks; the products are
// summed in registers from zero and added to the shared accumulators once.
template <bool kTransA, typename T>
__device__ __forceinline__ void tile_products(const MmaCodes& codes, float* acc, const T* a, const T* b,
                                              int64_t cols, float down) {
  constexpr int K = TcShape<T>::K, ld = TcSmem<T, MmaLoop::kStages>::ld_mix,
                acc_ld = TcReduceSmem<T, MmaLoop::kStages>::acc_ld;
  bool live[2];
  MmaAcc part[2];
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    live[j] = warp_col_block(j) * 16 < cols;  // warp-uniform
#pragma unroll
    for (int e = 0; e < MmaAcc::num_elements; ++e) part[j].x[e] = 0.0f;
  }
  if (!live[0]) return;  // block 1 lies right of block 0
#pragma unroll
  for (int k = 0; k < kTcTile; k += K) {
    uint32_t fa[4], fb[4];
    if constexpr (kTransA) load_a_trans(fa, a + k * ld, ld);
    else load_a(fa, a + k, ld);
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      if (!live[j]) continue;
      load_b_trans(fb, b + k * ld + warp_col_block(j) * 16, ld);
      mma_16x16<T>(part[j], fa, fb);
    }
  }
  const int rb = warp_row_block();
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    if (!live[j]) continue;
#pragma unroll
    for (int e = 0; e < MmaAcc::num_elements; ++e) {
      const Pos pos = pos_at(codes, e);
      float& at = acc[(rb * 16 + pos.row) * acc_ld + warp_col_block(j) * 16 + pos.col];
      at = kTileScaled<T> ? fmaf(part[j].x[e], down, at) : at + part[j].x[e];
    }
  }
}

#endif  // TN_TENSOR_CORES

}  // namespace tn::cuda
