// The copy side of the sm_90a mainloop (csrc/cuda/sm90/tma.cuh) for the kernel emulator, from the
// PTX ISA and the CUDA driver's tensor-map rules: shared-memory barriers (mbarrier: an expected
// arrival count, transaction bytes, phases waited on by parity) and 2-D tensor copies
// (cp.async.bulk.tensor ... mbarrier::complete_tx) of a box of 16-bit elements with the 128-byte
// swizzle and zeros outside the tensor; plus the host's tensor-map encoding, whose fields the
// emulator keeps in the map's opaque words.
//
// A copy lands only when some thread waits on its barrier (or the block ends, which fails): a
// thread that reads a stage without waiting for its barrier reads what was there before, and a
// copy into a stage that wgmmas still read changes their operands before their wait_group, which
// wgmma.h reports. With `copies_land_at_issue` every copy lands as it is issued instead, the other
// extreme of the copy engine's timing: a stage refilled while the wgmmas issued on it are still
// pending (marked empty too early) changes their operands even when nobody waits for the new bytes
// before that wait_group. A wait blocks its fiber until the phase completes; a barrier that never
// completes stops the run (the scheduler's stall check).
#pragma once

#include <cuda.h>

#include <cstdint>
#include <cstring>
#include <deque>
#include <vector>

#include "cuda/sm90/tile_map.h"
#include "emu.h"

namespace tn_emu {

namespace tma {

// The fields of an emulated tensor map (2-D, 16-bit elements, 128-byte swizzle), in its opaque words.
struct Map {
  const unsigned char* base;
  uint64_t inner, rows, stride;  // elements, rows, bytes between rows
  uint32_t box_inner, box_rows;
};
static_assert(sizeof(Map) <= sizeof(CUtensorMap), "the fields fit the map");

inline Map fields(const CUtensorMap& m) {
  Map f;
  std::memcpy(&f, &m, sizeof(f));
  return f;
}

struct Copy {
  unsigned char* dst;
  Map map;
  int32_t inner, row;
};

struct Barrier {
  const uint64_t* at;
  uint32_t expected, pending;
  int64_t tx;                // transaction bytes still expected in this phase
  uint32_t phase;            // phases completed
  std::vector<Copy> copies;  // issued, not landed
};

inline bool copies_land_at_issue = false;

inline std::deque<Barrier>& barriers() {  // of the running block (a deque: references stay valid)
  static std::deque<Barrier> b;
  return b;
}

inline Barrier& find(const uint64_t* at) {
  for (Barrier& b : barriers())
    if (b.at == at) return b;
  fail("mbarrier used before mbarrier.init");
}

inline void complete_if_done(Barrier& b) {
  if (b.pending == 0 && b.tx == 0) {
    ++b.phase;
    b.pending = b.expected;
  }
}

// The shared address at which a copy with the 128-byte swizzle to shared address `dst` puts byte
// `byte` of box row r (rows of 128 bytes): row r at dst + 128 r, its 16-byte chunks swizzled by the
// absolute shared address (bits 4-6 ^= bits 7-9).
inline uint32_t box_address(uint32_t dst, uint32_t r, uint32_t byte) {
  const uint32_t linear = dst + r * 128 + byte;
  return linear ^ (((linear >> 7) & 7u) << 4);
}

// The box of the copy into shared memory (box_address), zeros outside the tensor. Returns its bytes.
inline uint32_t land(const Copy& c) {
  const Map& m = c.map;
  const uint32_t row_bytes = m.box_inner * 2, bytes = row_bytes * m.box_rows;
  if (row_bytes != 128) fail("tensor copy: the emulator models boxes of 128-byte rows (the 128-byte swizzle)");
  const uint32_t addr = shared_address(c.dst);
  if (addr % 128 != 0) fail("tensor copy: shared-memory destination not 128-byte aligned");
  shared_bytes(addr, bytes, "tensor copy past the dynamic shared memory");
  for (uint32_t r = 0; r < m.box_rows; ++r)
    for (uint32_t e = 0; e < m.box_inner; ++e) {
      const int64_t gr = int64_t(c.row) + r, ge = int64_t(c.inner) + e;
      uint16_t v = 0;
      if (gr >= 0 && gr < int64_t(m.rows) && ge >= 0 && ge < int64_t(m.inner))
        std::memcpy(&v, m.base + gr * m.stride + ge * 2, 2);
      std::memcpy(c.dst + (box_address(addr, r, e * 2) - addr), &v, 2);
    }
  return bytes;
}

}  // namespace tma

inline void mbarrier_init(uint64_t* bar, uint32_t count) {
  if (reinterpret_cast<uintptr_t>(bar) % 8 != 0) fail("mbarrier not 8-byte aligned");
  if (count == 0) fail("mbarrier.init with a zero count");
  for (const tma::Barrier& b : tma::barriers())
    if (b.at == bar) fail("mbarrier initialised twice in one block");
  tma::barriers().push_back({bar, count, count, 0, 0, {}});
}

// mbarrier.arrive (tx = 0) or mbarrier.arrive.expect_tx (tx bytes more in this phase).
inline void mbarrier_arrive(uint64_t* bar, uint32_t tx) {
  tma::Barrier& b = tma::find(bar);
  if (b.pending == 0) fail("mbarrier: more arrivals than its count in one phase");
  b.tx += tx;
  --b.pending;
  tma::complete_if_done(b);
  Block::current().progress();
}

// Waits until the phase of parity `parity` has completed; the barrier's copies land first.
inline void mbarrier_wait(uint64_t* bar, uint32_t parity) {
  tma::Barrier& b = tma::find(bar);
  Block::current().wait_until([&] {
    if (!b.copies.empty()) {
      for (const tma::Copy& c : b.copies) b.tx -= tma::land(c);
      b.copies.clear();
      if (b.tx < 0) fail("mbarrier: more transaction bytes landed than were expected");
      tma::complete_if_done(b);
      Block::current().progress();
    }
    return (b.phase & 1u) != parity;
  });
}

inline void tma_load_2d(void* smem, const CUtensorMap& map, int32_t inner, int32_t row, uint64_t* bar) {
  tma::Barrier& b = tma::find(bar);
  const tma::Copy c{static_cast<unsigned char*>(smem), tma::fields(map), inner, row};
  if (tma::copies_land_at_issue) {
    b.tx -= tma::land(c);
    if (b.tx < 0) fail("mbarrier: more transaction bytes landed than were expected");
    tma::complete_if_done(b);
  } else {
    b.copies.push_back(c);
  }
  Block::current().progress();
}

// After every block: no copy in flight; then no barriers for the next block.
inline void tma_block_end() {
  for (const tma::Barrier& b : tma::barriers())
    if (!b.copies.empty()) fail("a block ended with tensor copies in flight");
  tma::barriers().clear();
}

inline const bool tma_block_end_registered = [] {
  block_end_checks().push_back(&tma_block_end);
  return true;
}();

// The host's cuTensorMapEncodeTiled on the arguments the CUDA runtime layer passes the driver
// (csrc/cuda/sm90/tile_map.h): the driver's conditions (16-byte aligned base and row stride, box
// sides in 1 ... 256), else false; the emulator models 2-D maps of 16-bit elements, dense boxes of
// 128-byte rows and the 128-byte swizzle, and fails on anything else.
inline bool encode_tile_map(CUtensorMap& map, const void* base, const tn::cuda::sm90::TileMapArgs& a) {
  if (a.rank != 2 || a.dtype != CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 || a.box[0] * 2 != 128 || a.steps[0] != 1 ||
      a.steps[1] != 1 || a.interleave != CU_TENSOR_MAP_INTERLEAVE_NONE || a.swizzle != CU_TENSOR_MAP_SWIZZLE_128B ||
      a.oob_fill != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE)
    fail("tensor map: the emulator models 2-D maps of 16-bit elements in 128-byte boxes with the 128-byte swizzle");
  if (reinterpret_cast<uintptr_t>(base) % 16 != 0 || a.strides[0] % 16 != 0 || a.dims[0] == 0 || a.dims[1] == 0 ||
      a.box[1] == 0 || a.box[1] > 256)
    return false;
  std::memset(&map, 0, sizeof(map));
  const tma::Map f{static_cast<const unsigned char*>(base), a.dims[0], a.dims[1], a.strides[0], a.box[0], a.box[1]};
  std::memcpy(&map, &f, sizeof(f));
  return true;
}

}  // namespace tn_emu
