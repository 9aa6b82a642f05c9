// Host stand-in for CUDA's <mma.h> (nvcuda::wmma) in the kernel emulator: fragments hold their
// elements per lane under a deliberately scrambled mapping, so kernels that assume the hardware's
// element layout (rather than going through load/store) fail here. mma_sync is warp-collective:
// lanes publish their operands in the warp's scratch, meet at the warp barrier, and each computes
// its own elements of the product in float. TF32 operands keep only the top 19 bits, as the
// hardware reads them.
//
// Also the PTX instructions of the mma.sync mainloop (csrc/cuda/mma_sync.cuh), warp-collective in
// the same way, with the per-lane fragment layouts of the PTX ISA: ldmatrix (x1, x2, x4, .trans),
// mma.sync.m16n8k16 (f16, bf16) and mma.sync.m16n8k8 (tf32), and cvt.rna.tf32.f32. A kernel that
// hands a register to the wrong place computes a wrong product here.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "emu.h"

namespace nvcuda::wmma {

struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
namespace precision {
struct tf32 {};
}  // namespace precision

inline float __float_to_tf32(float x) {  // round to nearest, ties away, to a 10-bit mantissa
  uint32_t b;
  std::memcpy(&b, &x, 4);
  if ((b & 0x7f800000u) != 0x7f800000u) b = (b + 0x1000u) & 0xffffe000u;
  std::memcpy(&x, &b, 4);
  return x;
}

namespace detail {
inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
inline float tf32_bits(float v) {  // what the tensor core reads of a TF32 operand
  uint32_t b;
  std::memcpy(&b, &v, 4);
  b &= 0xffffe000u;
  std::memcpy(&v, &b, 4);
  return v;
}
}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols / 32;
  static constexpr bool tf32 = std::is_same_v<T, precision::tf32>;
  using element_type = std::conditional_t<tf32, float, T>;
  element_type x[num_elements];

  // (row, col) of element e of this lane: an odd multiplier is a bijection modulo a power of two,
  // and each use gets its own.
  static int position(int lane, int e) {
    constexpr int mult = std::is_same_v<Use, accumulator> ? 37 : (std::is_same_v<Use, matrix_a> ? 91 : 53);
    return (mult * (lane * num_elements + e) + 11) % (rows * cols);
  }
};

template <typename Use, int M, int N, int K, typename T, typename L, typename V>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
  for (auto& x : f.x) x = v;
}

template <typename Use, int M, int N, int K, typename T, typename L, typename P>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* ptr, unsigned ld) {
  using F = fragment<Use, M, N, K, T, L>;
  static_assert(!std::is_same_v<Use, accumulator>, "accumulators take a layout_t");
  tn_emu::check_aligned(ptr, ld, sizeof(P));
  for (int e = 0; e < F::num_elements; ++e) {
    const int q = F::position(tn_emu::lane(), e), r = q / F::cols, c = q % F::cols;
    f.x[e] = std::is_same_v<L, row_major> ? ptr[r * ld + c] : ptr[c * ld + r];
  }
}

template <int M, int N, int K, typename T>
void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const T* ptr, unsigned ld, layout_t layout) {
  using F = fragment<accumulator, M, N, K, T>;
  tn_emu::check_aligned(ptr, ld, sizeof(T));
  for (int e = 0; e < F::num_elements; ++e) {
    const int q = F::position(tn_emu::lane(), e), r = q / F::cols, c = q % F::cols;
    f.x[e] = layout == mem_row_major ? ptr[r * ld + c] : ptr[c * ld + r];
  }
}

template <int M, int N, int K, typename T>
void store_matrix_sync(T* ptr, const fragment<accumulator, M, N, K, T>& f, unsigned ld, layout_t layout) {
  using F = fragment<accumulator, M, N, K, T>;
  tn_emu::check_aligned(ptr, ld, sizeof(T));
  for (int e = 0; e < F::num_elements; ++e) {
    const int q = F::position(tn_emu::lane(), e), r = q / F::cols, c = q % F::cols;
    (layout == mem_row_major ? ptr[r * ld + c] : ptr[c * ld + r]) = f.x[e];
  }
}

template <int M, int N, int K, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  using FA = fragment<matrix_a, M, N, K, T, LA>;
  using FB = fragment<matrix_b, M, N, K, T, LB>;
  using FC = fragment<accumulator, M, N, K, float>;
  tn_emu::WarpScratch& s = tn_emu::warp_scratch();
  const int lane = tn_emu::lane();
  auto operand = [](auto v) { return FA::tf32 ? detail::tf32_bits(detail::to_float(v)) : detail::to_float(v); };
  for (int e = 0; e < FA::num_elements; ++e) s.a[FA::position(lane, e)] = operand(a.x[e]);
  for (int e = 0; e < FB::num_elements; ++e) s.b[FB::position(lane, e)] = operand(b.x[e]);
  tn_emu::warp_sync();
  float out[FC::num_elements];
  for (int e = 0; e < FC::num_elements; ++e) {
    const int q = FC::position(lane, e), r = q / N, col = q % N;
    float acc = c.x[e];
    for (int k = 0; k < K; ++k) acc += s.a[r * K + k] * s.b[k * N + col];
    out[e] = acc;
  }
  tn_emu::warp_sync();  // every lane has read the scratch before any lane writes it again
  for (int e = 0; e < FC::num_elements; ++e) d.x[e] = out[e];
}

}  // namespace nvcuda::wmma

namespace tn_emu {

// cvt.rna.tf32.f32 on the bits of a float.
inline uint32_t round_tf32(uint32_t v) {
  float f;
  std::memcpy(&f, &v, 4);
  f = nvcuda::wmma::__float_to_tf32(f);
  std::memcpy(&v, &f, 4);
  return v;
}

// The per-lane layouts of the mma.sync mainloop's instructions, from the PTX ISA, as functions
// that the instructions below use and tests/test_cute_layouts.py holds against CuTe's (thread,
// value) layouts of the same instructions. With g = lane / 4, t = lane % 4 throughout.
struct FragPos {
  int row, col;
};

// ldmatrix.sync.aligned.m8n8.x{Count}[.trans].shared.b16: lane 8q + r supplies the address of row r
// of matrix q (16 bytes, 16-byte aligned). Lane l receives, of matrix q, the 32-bit word l % 4 of
// row l / 4; with .trans the 16-bit elements in column l / 4 of rows 2 (l % 4) (low half) and
// 2 (l % 4) + 1 (high half). ldmatrix_source: where half `half` (0 low, 1 high) of register q of
// lane l comes from: the supplying lane (its row address) and the byte offset in that row.
inline FragPos ldmatrix_source(int l, int q, int half, bool trans) {
  return trans ? FragPos{8 * q + 2 * (l % 4) + half, 2 * (l / 4)} : FragPos{8 * q + l / 4, 4 * (l % 4) + 2 * half};
}

// mma.sync.aligned.m16n8k16 (16-bit operands) and m16n8k8 (TF32): A register i holds row
// g + 8 (i % 2), columns 2t + 8 (i / 2) + half (TF32: column t + 4 (i / 2), one element); B register
// i holds column g, rows (k) 2t + 8i + half (TF32: row t + 4i); accumulator c sits at row
// g + 8 (c / 2), column 2t + c % 2.
template <bool Tf32>
FragPos mma_a_position(int l, int i, int half) {
  const int g = l / 4, t = l % 4;
  return Tf32 ? FragPos{g + 8 * (i % 2), t + 4 * (i / 2)} : FragPos{g + 8 * (i % 2), 2 * t + 8 * (i / 2) + half};
}
template <bool Tf32>
FragPos mma_b_position(int l, int i, int half) {  // (k, n)
  const int g = l / 4, t = l % 4;
  return Tf32 ? FragPos{t + 4 * i, g} : FragPos{2 * t + 8 * i + half, g};
}
inline FragPos mma_c_position(int l, int c) { return {l / 4 + 8 * (c / 2), 2 * (l % 4) + c % 2}; }

template <int Count, bool Trans>
void ldmatrix(uint32_t (&r)[Count], const void* row) {
  WarpScratch& s = warp_scratch();
  const int l = lane();
  s.rows[l] = static_cast<const unsigned char*>(row);
  if (l < 8 * Count && reinterpret_cast<uintptr_t>(row) % 16 != 0) fail("ldmatrix row address not 16-byte aligned");
  warp_sync();
  for (int q = 0; q < Count; ++q) {
    uint16_t half[2];
    for (int h = 0; h < 2; ++h) {
      const FragPos src = ldmatrix_source(l, q, h, Trans);
      std::memcpy(&half[h], s.rows[src.row] + src.col, 2);
    }
    r[q] = static_cast<uint32_t>(half[0]) | static_cast<uint32_t>(half[1]) << 16;
  }
  warp_sync();  // every lane has read the addresses before any lane publishes new ones
}

namespace detail {
template <typename T>
float half_bits(uint32_t v) {  // a 16-bit element of type T from the low 16 bits of v
  const uint16_t h = static_cast<uint16_t>(v);
  T x;
  std::memcpy(&x, &h, 2);
  return nvcuda::wmma::detail::to_float(x);
}
inline float tf32_operand(uint32_t v) {
  float f;
  std::memcpy(&f, &v, 4);
  return nvcuda::wmma::detail::tf32_bits(f);
}
}  // namespace detail

// d += a b on one 16 x 8 block: mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16} (T = __half,
// __nv_bfloat16) or m16n8k8.row.col.f32.tf32 (T = float), the fragments placed by mma_a_position,
// mma_b_position and mma_c_position.
template <typename T>
void mma_16x8(float* d, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  constexpr bool tf32 = std::is_same_v<T, float>;
  constexpr int K = tf32 ? 8 : 16;
  WarpScratch& s = warp_scratch();
  const int l = lane();
  const uint32_t b[2] = {b0, b1};
  for (int i = 0; i < 4; ++i) {
    if constexpr (tf32) {
      const FragPos p = mma_a_position<true>(l, i, 0);
      s.a[p.row * K + p.col] = detail::tf32_operand(a[i]);
    } else {
      for (int h = 0; h < 2; ++h) {
        const FragPos p = mma_a_position<false>(l, i, h);
        s.a[p.row * K + p.col] = detail::half_bits<T>(a[i] >> (16 * h));
      }
    }
  }
  for (int i = 0; i < 2; ++i) {
    if constexpr (tf32) {
      const FragPos p = mma_b_position<true>(l, i, 0);
      s.b[p.row * 8 + p.col] = detail::tf32_operand(b[i]);
    } else {
      for (int h = 0; h < 2; ++h) {
        const FragPos p = mma_b_position<false>(l, i, h);
        s.b[p.row * 8 + p.col] = detail::half_bits<T>(b[i] >> (16 * h));
      }
    }
  }
  warp_sync();
  float out[4];
  for (int c = 0; c < 4; ++c) {
    const FragPos p = mma_c_position(l, c);
    float acc = d[c];
    for (int k = 0; k < K; ++k) acc += s.a[p.row * K + k] * s.b[k * 8 + p.col];
    out[c] = acc;
  }
  warp_sync();  // every lane has read the scratch before any lane writes it again
  for (int c = 0; c < 4; ++c) d[c] = out[c];
}

}  // namespace tn_emu
