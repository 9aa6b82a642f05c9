// The layouts that the CUDA kernels and the CPU emulator's models of their instructions assume, held
// against CuTe's (CUTLASS) layouts of the same instructions: CuTe's are what its kernels run with
// on the hardware, and are written independently of this project's reading of the PTX ISA.
//
//   ldmatrix (x1, x2, x4, .trans)         tests/emulator/mma.h ldmatrix_source        CuTe SM75 LDSM traits
//   mma.sync m16n8k16 (f16, bf16), m16n8k8 (tf32) fragments
//                                         tests/emulator/mma.h mma_*_position         CuTe SM80 MMA traits
//   wgmma m64n64k16 accumulators          sm90/layout.h acc_row/acc_col,
//                                         tests/emulator/wgmma.h row_of/col_of        CuTe SM90 GMMA traits
//   operand tiles (128-byte swizzle)      sm90/layout.h tile_offset                   GMMA::Layout_K_SW128_Atom
//   wgmma descriptors of each k step      sm90/layout.h kmajor_desc                   GMMA::make_gmma_desc
//   the bytes each descriptor reads       sm90/layout.h kmajor_desc_address,
//                                         tests/emulator/wgmma.h Operand::address     the tile's layout
//   where a tensor copy puts a box        tests/emulator/tma.h box_address            the tile's layout
//   the tensor maps' driver arguments     sm90/tile_map.h tile_map_args               make_tma_copy's call
//
// Host code only (CuTe's layouts are constexpr arithmetic): no GPU. Prints "ok <check> <cases>" or
// "FAIL <check>: <first mismatch>" per check; exit status 1 on any failure.
#define CUTLASS_ENABLE_DIRECT_CUDA_DRIVER_CALL 1  // make_tma_copy calls cuTensorMapEncodeTiled: ours below

#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <cute/tensor.hpp>  // first: the atoms' headers build on it
#include <cute/atom/copy_traits_sm75.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cute/atom/mma_traits_sm80.hpp>
#include <cute/atom/mma_traits_sm90_gmma.hpp>

#include "cuda/sm90/layout.h"
#include "cuda/sm90/tile_map.h"
#include "mma.h"
#include "tma.h"
#include "wgmma.h"

using namespace cute;
namespace sm90 = tn::cuda::sm90;

namespace {

struct Check {
  explicit Check(std::string n) : name(std::move(n)) {}
  std::string name;
  long cases = 0;
  std::string first;  // the first mismatch
  void expect(bool ok, const std::string& what) {
    ++cases;
    if (!ok && first.empty()) first = what;
  }
  ~Check() {
    if (first.empty()) std::printf("ok %s %ld\n", name.c_str(), cases);
    else std::printf("FAIL %s: %s\n", name.c_str(), first.c_str());
    if (!first.empty()) failed = true;
  }
  static inline bool failed = false;
};

std::string at(const char* fmt, long a, long b = 0, long c = 0, long d = 0) {
  char buf[256];
  std::snprintf(buf, sizeof buf, fmt, a, b, c, d);
  return buf;
}

// ---- ldmatrix: CuTe's DstLayout maps (lane, bit of the lane's registers) to the bit of the 32
// supplied rows of 128 bits (SrcLayout: lane t supplies row t).
template <class Op, int Count, bool Trans>
void ldmatrix_case(Check& c) {
  using Tr = Copy_Traits<Op>;
  // lanes 0 .. 8 Count - 1 supply the rows; CuTe's further lanes repeat them (their addresses unread)
  for (int l = 0; l < 32; ++l)
    c.expect(int(typename Tr::SrcLayout{}(l, 0)) == 128 * (l % (8 * Count)), at("lane %ld supplies row", l));
  for (int l = 0; l < 32; ++l)
    for (int q = 0; q < Count; ++q)
      for (int h = 0; h < 2; ++h) {
        const int bit = typename Tr::DstLayout{}(l, 32 * q + 16 * h);  // bit 0 of half h of register q
        const tn_emu::FragPos ours = tn_emu::ldmatrix_source(l, q, h, Trans);
        c.expect(ours.row == bit / 128 && ours.col == (bit % 128) / 8,
                 at("trans %ld lane %ld register %ld half %ld", Trans, l, q, h));
      }
}

// ---- mma.sync: CuTe's ALayout (thread, value) -> m + M k, BLayout -> n + N k, CLayout -> m + M n;
// a 16-bit operand's value v is half v % 2 of register v / 2, a TF32 one's register v.
template <class Op, bool Tf32>
void mma_sync_case(Check& c) {
  using Tr = MMA_Traits<Op>;
  constexpr int M = 16, N = 8, per = Tf32 ? 1 : 2;
  for (int l = 0; l < 32; ++l) {
    for (int v = 0; v < int(size<1>(typename Tr::ALayout{})); ++v) {
      const int idx = typename Tr::ALayout{}(l, v);
      const tn_emu::FragPos p = tn_emu::mma_a_position<Tf32>(l, v / per, v % per);
      c.expect(p.row == idx % M && p.col == idx / M, at("A lane %ld value %ld", l, v));
    }
    for (int v = 0; v < int(size<1>(typename Tr::BLayout{})); ++v) {
      const int idx = typename Tr::BLayout{}(l, v);
      const tn_emu::FragPos p = tn_emu::mma_b_position<Tf32>(l, v / per, v % per);
      c.expect(p.col == idx % N && p.row == idx / N, at("B lane %ld value %ld", l, v));
    }
    for (int v = 0; v < int(size<1>(typename Tr::CLayout{})); ++v) {
      const int idx = typename Tr::CLayout{}(l, v);
      const tn_emu::FragPos p = tn_emu::mma_c_position(l, v);
      c.expect(p.row == idx % M && p.col == idx / M, at("C lane %ld value %ld", l, v));
    }
  }
}

// The operand tile of `Rows` rows of 64 16-bit elements in CuTe's canonical K-major layout with the
// 128-byte swizzle, over a 1024-byte aligned buffer: CuTe applies the swizzle to the shared-memory
// address (its smem pointer), so the byte offsets are read off the elements' addresses.
template <class T, int Rows>
auto cute_layout() {
  return tile_to_shape(SM90::GMMA::Layout_K_SW128_Atom<T>{}, Shape<Int<Rows>, _64>{});
}
template <class T, int Rows>
struct CuteTile {
  alignas(1024) static inline T buffer[Rows * 64];
  decltype(make_tensor(make_smem_ptr(buffer), cute_layout<T, Rows>())) tensor =
      make_tensor(make_smem_ptr(buffer), cute_layout<T, Rows>());
  uint32_t offset(int row, int k) const {  // bytes from the tile's start
    return uint32_t(reinterpret_cast<const char*>(&tensor(row, k)) - reinterpret_cast<const char*>(buffer));
  }
};

template <class T>
void operand_tiles(Check& tiles, Check& descs, Check& reads) {
  const CuteTile<T, 128> tile;
  for (int row = 0; row < 128; ++row)
    for (int k = 0; k < 64; ++k)
      tiles.expect(tile.offset(row, k) == sm90::tile_offset(row, 2 * k), at("row %ld k %ld", row, k));

  // A warpgroup's B is rows 64 q .. 64 q + 63 of the 128-row weight tile (the x tile is the q = 0
  // case); each wgmma reads k step s: elements 16 s .. 16 s + 15 of every row.
  const auto slices = flat_divide(tile.tensor, Shape<_64, _16>{});  // (64, 16, 2, 4)
  for (int q = 0; q < 2; ++q)
    for (int s = 0; s < 4; ++s) {
      const auto slice = slices(_, _, q, s);
      const uint32_t start = uint32_t(reinterpret_cast<const char*>(raw_pointer_cast(slice.data())) -
                                      reinterpret_cast<const char*>(tile.buffer));
      const GmmaDescriptor theirs = SM90::GMMA::make_gmma_desc<SM90::GMMA::Major::K>(slice);
      for (uint32_t base : {0u, 0x2400u, 0x1C000u}) {
        GmmaDescriptor ours;
        ours.desc_ = sm90::kmajor_desc(base + q * 64 * sm90::kRowBytes + 32 * s);
        descs.expect(ours.bitfield.layout_type_ == theirs.bitfield.layout_type_ &&
                         ours.bitfield.leading_byte_offset_ == theirs.bitfield.leading_byte_offset_ &&
                         ours.bitfield.stride_byte_offset_ == theirs.bitfield.stride_byte_offset_ &&
                         ours.bitfield.base_offset_ == theirs.bitfield.base_offset_ &&
                         uint32_t(ours.bitfield.start_address_) << 4 == base + start,
                     at("half %ld k step %ld base %ld", q, s, base));
        for (int row = 0; row < 64; ++row)
          for (int kb = 0; kb < 32; ++kb) {
            const uint32_t want = base + tile.offset(64 * q + row, 16 * s + kb / 2) + kb % 2;
            reads.expect(sm90::kmajor_desc_address(ours.desc_, row, kb) == want &&
                             tn_emu::wg::Operand::address(ours.desc_, row, kb) == want,
                         at("half %ld k step %ld row %ld byte %ld", q, s, row, kb));
          }
      }
    }
}

void accumulators(Check& c) {
  using Tr = MMA_Traits<SM90::GMMA::MMA_64x64x16_F32BF16BF16_SS<SM90::GMMA::Major::K, SM90::GMMA::Major::K>>;
  using C = typename Tr::CLayout;
  static_assert(decltype(size<0>(C{}))::value == 128 && decltype(size<1>(C{}))::value == 32);
  for (int t = 0; t < 128; ++t)
    for (int i = 0; i < 32; ++i) {
      const int idx = C{}(t, i), row = idx % 64, col = idx / 64;
      c.expect(sm90::acc_row(t, i) == row && sm90::acc_col(t, i) == col && tn_emu::wg::row_of(t, i) == row &&
                   tn_emu::wg::col_of(t, i) == col,
               at("thread %ld register %ld", t, i));
    }
}

void tma_boxes(Check& c) {
  const CuteTile<cutlass::bfloat16_t, 64> tile;
  for (uint32_t base : {0u, 0x2400u, 0x1C000u})
    for (uint32_t r = 0; r < 64; ++r)
      for (uint32_t b = 0; b < 128; ++b)
        c.expect(tn_emu::tma::box_address(base, r, b) == base + tile.offset(int(r), int(b / 2)) + b % 2,
                 at("base %ld row %ld byte %ld", base, r, b));
}

// ---- the tensor maps: what CuTe's make_tma_copy passes the driver for a row-major (rows x inner)
// bfloat16 tensor and a (box_rows x 64) shared tile in the 128-byte swizzle.
struct Encoded {
  CUtensorMapDataType dtype;
  cuuint32_t rank;
  std::vector<cuuint64_t> dims, strides;
  std::vector<cuuint32_t> box, steps;
  CUtensorMapInterleave interleave;
  CUtensorMapSwizzle swizzle;
  CUtensorMapL2promotion l2;
  CUtensorMapFloatOOBfill oob;
};
Encoded last_encoded;

template <int BoxRows>
void tensor_map_case(Check& c, int64_t inner, int64_t rows) {
  alignas(128) static cutlass::bfloat16_t storage[8];  // the address only: nothing is read
  const auto gmem = make_tensor(make_gmem_ptr(storage), make_layout(make_shape(rows, inner), make_stride(inner, _1{})));
  (void)make_tma_copy(SM90_TMA_LOAD{}, gmem, cute_layout<cutlass::bfloat16_t, BoxRows>());
  const Encoded& t = last_encoded;
  const sm90::TileMapArgs o = sm90::tile_map_args(inner, rows, BoxRows);
  const bool same = t.dtype == o.dtype && t.rank == o.rank && t.dims == std::vector<cuuint64_t>(o.dims, o.dims + 2) &&
                    t.strides == std::vector<cuuint64_t>(o.strides, o.strides + 1) &&
                    t.box == std::vector<cuuint32_t>(o.box, o.box + 2) &&
                    t.steps == std::vector<cuuint32_t>(o.steps, o.steps + 2) && t.interleave == o.interleave &&
                    t.swizzle == o.swizzle && t.oob == o.oob_fill;
  c.expect(same, at("inner %ld rows %ld box rows %ld: CuTe's rank %ld", inner, rows, BoxRows, t.rank));
  if (t.l2 != o.l2_promotion) std::printf("note: L2 promotion %d (CuTe) and %d (ours)\n", int(t.l2), int(o.l2_promotion));
}

}  // namespace

// The driver's entry point, for make_tma_copy (no driver here): records the arguments.
extern "C" CUresult cuTensorMapEncodeTiled(CUtensorMap*, CUtensorMapDataType dtype, cuuint32_t rank, void*,
                                           const cuuint64_t* dims, const cuuint64_t* strides, const cuuint32_t* box,
                                           const cuuint32_t* steps, CUtensorMapInterleave interleave,
                                           CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2,
                                           CUtensorMapFloatOOBfill oob) {
  last_encoded = {dtype,
                  rank,
                  {dims, dims + rank},
                  {strides, strides + (rank - 1)},
                  {box, box + rank},
                  {steps, steps + rank},
                  interleave,
                  swizzle,
                  l2,
                  oob};
  return CUDA_SUCCESS;
}

int main() {
  {
    Check c{"ldmatrix"};
    ldmatrix_case<SM75_U32x1_LDSM_N, 1, false>(c);
    ldmatrix_case<SM75_U32x2_LDSM_N, 2, false>(c);
    ldmatrix_case<SM75_U32x4_LDSM_N, 4, false>(c);
    ldmatrix_case<SM75_U16x2_LDSM_T, 1, true>(c);
    ldmatrix_case<SM75_U16x4_LDSM_T, 2, true>(c);
    ldmatrix_case<SM75_U16x8_LDSM_T, 4, true>(c);
  }
  {
    Check c{"mma_sync"};
    mma_sync_case<SM80_16x8x16_F32F16F16F32_TN, false>(c);
    mma_sync_case<SM80_16x8x16_F32BF16BF16F32_TN, false>(c);
    mma_sync_case<SM80_16x8x8_F32TF32TF32F32_TN, true>(c);
  }
  {
    Check c{"wgmma_accumulators"};
    accumulators(c);
  }
  {
    Check tiles{"operand_tiles"}, descs{"descriptors"}, reads{"descriptor_reads"};
    operand_tiles<cutlass::bfloat16_t>(tiles, descs, reads);
    operand_tiles<cutlass::half_t>(tiles, descs, reads);
  }
  {
    Check c{"tma_boxes"};
    tma_boxes(c);
  }
  {
    Check c{"tensor_maps"};
    tensor_map_case<64>(c, 128, 16384);
    tensor_map_case<32>(c, 128, 1 << 18);
    tensor_map_case<64>(c, 200, 37);
    tensor_map_case<32>(c, 1024, 96);
    tensor_map_case<32>(c, 8, 5);
  }
  return Check::failed ? 1 : 0;
}
