// Host stand-in for CUDA's <mma.h> (nvcuda::wmma) in the kernel emulator: fragments hold their
// elements per lane under a deliberately scrambled mapping, so kernels that assume the hardware's
// element layout (rather than going through load/store) fail here. mma_sync is warp-collective:
// lanes publish their operands in the warp's scratch, meet at the warp barrier, and each computes
// its own elements of the product in float. TF32 operands keep only the top 19 bits, as the
// hardware reads them.
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
