// The arithmetic of the sm_90a dual-product mainloop, as pure functions of plain integers (no CUDA
// headers): the 128-byte swizzle shared by TMA and wgmma, the wgmma shared-memory matrix
// descriptor, the (row, column) of every accumulator register, the parameters and rules of the
// tiled tensor maps, the tile configuration per d, the shared-memory plan, the ping-pong schedule
// and the output staging layout. The kernels (dual_mainloop.cuh) and the host code (probe.cu) use
// these, and tests/sm90/check_layout.cpp checks them on the CPU against the PTX ISA's definitions.
#pragma once

#include <cstdint>
#if !defined(__CUDA_ARCH__)
#include <string>
#endif

#if defined(__CUDACC__)
#define TN_SM90_HD __host__ __device__ __forceinline__
#else
#define TN_SM90_HD inline
#endif

namespace tn::cuda::sm90 {

// ---- the 128-byte swizzle ----
//
// Every operand tile is K-major with rows of exactly 128 bytes (64 bf16/fp16 or 32 fp32 elements of
// K), stored as TMA's CU_TENSOR_MAP_SWIZZLE_128B writes it and as wgmma's swizzle mode 1 reads it:
// within each 1024-byte atom of 8 rows, the 16-byte chunk j of row r sits at chunk j ^ r. As an
// address function (CuTe's Swizzle<3, 4, 3>): bits 4-6 of the byte address are XORed with bits 7-9.
// Tiles start on 1024-byte boundaries, so the pattern is a function of the offset from the tile.
constexpr uint32_t kRowBytes = 128;
constexpr uint32_t kAtomBytes = 1024;

TN_SM90_HD constexpr uint32_t swizzle128(uint32_t offset) { return offset ^ (((offset >> 7) & 7u) << 4); }

// Byte offset of byte `kbyte` (< 128) of row `row` in a swizzled tile.
TN_SM90_HD constexpr uint32_t tile_offset(uint32_t row, uint32_t kbyte) { return swizzle128(row * kRowBytes + kbyte); }

// ---- the wgmma shared-memory matrix descriptor (PTX ISA, "Matrix Descriptor Format") ----
//
//   bits  0-13  start address        matrix-descriptor-encode(x) = (x & 0x3FFFF) >> 4
//   bits 16-29  leading dimension byte offset (LBO), encoded likewise
//   bits 32-45  stride dimension byte offset (SBO), encoded likewise
//   bits 49-51  matrix base offset (0: the swizzle pattern starts on its own boundary)
//   bits 62-63  swizzle mode: 0 none, 1 128-byte, 2 64-byte, 3 32-byte
enum class Swizzle : uint32_t { kNone = 0, k128B = 1, k64B = 2, k32B = 3 };

TN_SM90_HD constexpr uint64_t desc_encode(uint32_t bytes) { return (bytes & 0x3FFFFu) >> 4; }

TN_SM90_HD constexpr uint64_t smem_desc(uint32_t start, uint32_t lbo, uint32_t sbo, Swizzle mode) {
  return desc_encode(start) | desc_encode(lbo) << 16 | desc_encode(sbo) << 32 |
         static_cast<uint64_t>(mode) << 62;
}

// A K-major operand in the swizzled tiles above: 8-row groups 1024 bytes apart (SBO); the LBO is
// unused by swizzled K-major layouts ("assumed 1" by the ISA) and set to 16 bytes, encoded 1.
constexpr uint32_t kKMajorSbo = 8 * kRowBytes;
constexpr uint32_t kKMajorLbo = 16;

TN_SM90_HD constexpr uint64_t kmajor_desc(uint32_t start) { return smem_desc(start, kKMajorLbo, kKMajorSbo, Swizzle::k128B); }

// The descriptor `bytes` further on. One wgmma reads 32 bytes of K per row (k16 for 16-bit types,
// k8 for TF32); its k-th step inside a 128-byte row starts 32 k bytes after the tile, with the
// swizzle still taken from the absolute address bits. Shared addresses stay below 2^18, so the
// 14-bit start field never carries into the next field.
TN_SM90_HD constexpr uint64_t desc_advance(uint64_t desc, uint32_t bytes) { return desc + (bytes >> 4); }

// The shared-memory byte address at which wgmma finds byte `kbyte` of row `row` of an operand
// described by a K-major, 128-byte-swizzled descriptor: the canonical layout (rows of 128 bytes in
// groups of 8, groups SBO apart), then the swizzle applied to the address bits. This is the model
// the CPU tests hold the TMA placement (tile_offset) against.
TN_SM90_HD constexpr uint32_t kmajor_desc_address(uint64_t desc, uint32_t row, uint32_t kbyte) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFFu) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFFu) << 4;
  return swizzle128(start + (row / 8) * sbo + (row % 8) * kRowBytes + kbyte);
}

// ---- the accumulator of wgmma.m64nNk16 / m64nNk8 with f32 results ----
//
// Thread t (0..127) of the warpgroup holds N/2 floats; register i holds element
//   row = 16 (t / 32) + (t % 32) / 4 + 8 ((i / 2) % 2),   col = 8 (i / 4) + 2 (t % 4) + i % 2.
// In the dual product B = [w0 block; w block] (N = 2 BN), so registers 0 .. BN/2 - 1 hold z0 and
// register i + BN/2 holds u of the same (row, neuron).
TN_SM90_HD constexpr int acc_row(int thread, int i) { return 16 * (thread / 32) + (thread % 32) / 4 + 8 * ((i / 2) % 2); }
TN_SM90_HD constexpr int acc_col(int thread, int i) { return 8 * (i / 4) + 2 * (thread % 4) + i % 2; }

// ---- tiles ----

constexpr int kRowsPerWarpgroup = 64;   // the wgmma M: each consumer warpgroup owns 64 sample rows
constexpr int kConsumers = 2;           // consumer warpgroups, in ping-pong
constexpr int kThreads = 128 * (1 + kConsumers);  // warpgroup 0 produces, 1 and 2 consume
constexpr uint32_t kXStageBytes = kRowsPerWarpgroup * kRowBytes;  // one ring stage: 64 rows x 128 bytes
constexpr int kInstrPerChunk = kRowBytes / 32;  // wgmmas per 128-byte K chunk
constexpr uint32_t kSmemLimit = 232448;  // the opt-in shared memory per block of sm_90 (227 KB)
constexpr uint32_t kMaxWBytes = 128 * 1024;  // the resident w0/w block
constexpr int kMaxStages = 8;
constexpr int kRegsProducer = 40, kRegsConsumer = 232;  // setmaxnreg: 128 x 40 + 256 x 232 <= 65536
static_assert(128 * kRegsProducer + 128 * kConsumers * kRegsConsumer <= 65536, "register file");

TN_SM90_HD constexpr int ceil_div_int(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// K chunks of 128 bytes for d elements of `elem_bytes`.
TN_SM90_HD constexpr int k_chunks(int64_t d, uint32_t elem_bytes) { return ceil_div_int(d * elem_bytes, kRowBytes); }

// Bytes of one resident K chunk of the B operand: 2 bn rows (w0's block, then w's) of 128 bytes.
TN_SM90_HD constexpr uint32_t w_chunk_bytes(int bn) { return 2u * static_cast<uint32_t>(bn) * kRowBytes; }

// An epilogue's shared memory per consumer warpgroup, rounded up to whole 1024-byte atoms.
TN_SM90_HD constexpr uint32_t scratch_stride(uint32_t bytes) { return (bytes + kAtomBytes - 1) / kAtomBytes * kAtomBytes; }

// Per consumer warpgroup, the epilogue's staging of a 64 x bn output tile.
TN_SM90_HD constexpr uint32_t staging_bytes(int bn, uint32_t out_bytes) {
  return static_cast<uint32_t>(kRowsPerWarpgroup) * static_cast<uint32_t>(bn) * out_bytes;
}

// The x ring's depth for a block of bn neurons: what is left of the shared memory next to the
// largest resident w block and the staging, at most 8.
TN_SM90_HD constexpr int ring_stages(int bn, uint32_t out_bytes) {
  const int64_t room = static_cast<int64_t>(kSmemLimit) - kAtomBytes - kMaxWBytes -
                       kConsumers * static_cast<int64_t>(staging_bytes(bn, out_bytes)) - 256;
  const int64_t s = room / kXStageBytes;
  return static_cast<int>(s > kMaxStages ? kMaxStages : s);
}

// The shared-memory plan of one CTA, offsets from a 1024-byte aligned base (the dynamic allocation
// asks for 1024 bytes more to align it): the resident w0/w block (kb chunks), the x ring, the two
// staging buffers, the mbarriers (full_w, full[stages], empty[stages]).
struct SmemPlan {
  uint32_t w = 0, x = 0, staging = 0, barriers = 0, bytes = 0;
};

TN_SM90_HD constexpr SmemPlan smem_plan(int kb, int bn, int stages, uint32_t staging_per_wg) {
  SmemPlan p;
  p.w = 0;
  p.x = p.w + static_cast<uint32_t>(kb) * w_chunk_bytes(bn);
  p.staging = p.x + static_cast<uint32_t>(stages) * kXStageBytes;
  p.barriers = p.staging + kConsumers * staging_per_wg;
  p.bytes = p.barriers + 8u * (1u + 2u * static_cast<uint32_t>(stages)) + kAtomBytes;
  return p;
}

// The tile shape for d: BN neurons per CTA, the largest of 128, 64, 32 whose w0 and w blocks (2 BN
// rows of d elements, in 128-byte chunks) fit in 128 KB, so that they stay resident while the CTA
// streams x. 0 when none fits (d beyond 1024 for 16-bit types, 512 for float32).
TN_SM90_HD constexpr int block_neurons(int64_t d, uint32_t elem_bytes) {
  const int kb = k_chunks(d, elem_bytes);
  for (int bn = 128; bn >= 32; bn /= 2)
    if (static_cast<int64_t>(kb) * w_chunk_bytes(bn) <= kMaxWBytes) return bn;
  return 0;
}

// ---- the schedule ----
//
// A CTA owns one block of BN neurons and a run of 64-row sample tiles; local tile q goes to consumer
// warpgroup q % 2. The producer loads, in the order q = 0, 1, ... and K chunk c = 0 .. kb-1, the
// chunk (q, c) into ring slot seq = q kb + c: stage seq % stages, and its full/empty mbarriers
// complete phase (seq / stages) for it. Ping-pong: a consumer issues all wgmmas of a tile while it
// holds the turn, then hands the turn to the other one (named barriers) and runs its epilogue
// under the other's MMAs. The turn passes from tile q to tile q + 1 iff q + 1 < tiles; the first
// turn (tile 0, warpgroup 0) is given by warpgroup 1 at the start. So every barrier arrival has
// its matching wait.
TN_SM90_HD constexpr int wg_tiles(int tiles, int g) { return (tiles + 1 - g) / 2; }
TN_SM90_HD constexpr int ring_stage(int seq, int stages) { return seq % stages; }
TN_SM90_HD constexpr uint32_t ring_phase(int seq, int stages) { return static_cast<uint32_t>(seq / stages) & 1u; }
TN_SM90_HD constexpr bool hands_over(int q, int tiles) { return q + 1 < tiles; }

// ---- output staging ----
//
// The epilogue writes its 64 x BN tile (rows of BN * out_bytes bytes) to shared memory from the
// accumulator layout, then copies it out in coalesced 16-byte chunks. Chunk j of row r is stored at
// chunk j ^ (r % min(8, chunks per row)), so that the 8 rows of one accumulator store land in
// different banks.
TN_SM90_HD constexpr uint32_t staging_offset(uint32_t row, uint32_t byte, uint32_t row_bytes) {
  const uint32_t chunks = row_bytes / 16;
  const uint32_t mask = (chunks < 8 ? chunks : 8) - 1;
  return row * row_bytes + (((byte / 16) ^ (row & mask)) * 16) + byte % 16;
}

#if !defined(__CUDA_ARCH__)
// ---- tensor maps (host) ----

// A 2-D tiled tensor map as cuTensorMapEncodeTiled takes it: dimension 0 is the contiguous one.
struct TmaTile2d {
  uint64_t dims[2] = {0, 0};   // {columns, rows}
  uint64_t row_stride = 0;     // bytes between rows
  uint32_t box[2] = {0, 0};    // {box columns, box rows}
  uint32_t elem_bytes = 0;
  bool swizzle128 = true;
};

// The map of a row-major (rows, cols) operand with row stride `ld` elements, read in boxes of
// box_rows rows and one 128-byte K chunk. Columns past `cols` and rows past `rows` read as zero.
inline TmaTile2d operand_map(int64_t rows, int64_t cols, int64_t ld, uint32_t elem_bytes, uint32_t box_rows) {
  TmaTile2d t;
  t.dims[0] = static_cast<uint64_t>(cols);
  t.dims[1] = static_cast<uint64_t>(rows);
  t.row_stride = static_cast<uint64_t>(ld) * elem_bytes;
  t.box[0] = kRowBytes / elem_bytes;
  t.box[1] = box_rows;
  t.elem_bytes = elem_bytes;
  return t;
}

// Why cuTensorMapEncodeTiled would refuse the map for a tensor at `address` (its documented rules
// for a rank-2, non-interleaved map), empty when it would not.
inline std::string tma_refusal(const TmaTile2d& t, uintptr_t address) {
  auto s = [](uint64_t v) { return std::to_string(v); };
  if (address % 16 != 0) return "its address is not 16-byte aligned";
  for (int i = 0; i < 2; ++i)
    if (t.dims[i] == 0 || t.dims[i] > (uint64_t{1} << 32))
      return "dimension " + s(i) + " is " + s(t.dims[i]) + ", outside [1, 2^32]";
  if (t.row_stride % 16 != 0) return "its row stride of " + s(t.row_stride) + " bytes is not a multiple of 16";
  if (t.row_stride >= (uint64_t{1} << 40)) return "its row stride of " + s(t.row_stride) + " bytes is not below 2^40";
  for (int i = 0; i < 2; ++i)
    if (t.box[i] == 0 || t.box[i] > 256) return "box dimension " + s(i) + " is " + s(t.box[i]) + ", outside [1, 256]";
  const uint64_t inner = static_cast<uint64_t>(t.box[0]) * t.elem_bytes;
  if (inner % 16 != 0) return "the box's inner extent of " + s(inner) + " bytes is not a multiple of 16";
  if (t.swizzle128 && inner > kRowBytes) return "the box's inner extent of " + s(inner) + " bytes exceeds the 128-byte swizzle";
  return {};
}

// TMA needs rows whose stride is a multiple of 16 bytes and a 16-byte aligned base; an operand that
// has neither is copied into rows of padded_ld elements first.
inline bool needs_padded_copy(int64_t ld, uint32_t elem_bytes, uintptr_t address) {
  return (static_cast<uint64_t>(ld) * elem_bytes) % 16 != 0 || address % 16 != 0;
}
inline int64_t padded_ld(int64_t cols, uint32_t elem_bytes) {
  const int64_t per16 = 16 / elem_bytes;
  return (cols + per16 - 1) / per16 * per16;
}

// Sample splits of a launch: with few neuron blocks the sample tiles are split over grid.y so that
// about two CTAs per SM exist; each CTA keeps at least 8 tiles to pay for loading its w block.
struct RowSplit {
  int64_t tiles_per_cta = 0, ctas = 0;
};
inline RowSplit row_split(int64_t row_tiles, int64_t neuron_blocks, int sms) {
  RowSplit r;
  const int64_t want = (2 * static_cast<int64_t>(sms > 0 ? sms : 1) + neuron_blocks - 1) / neuron_blocks;
  int64_t splits = want < 1 ? 1 : want;
  const int64_t most = (row_tiles + 7) / 8;
  if (splits > most) splits = most < 1 ? 1 : most;
  if (splits > 65535) splits = 65535;
  r.tiles_per_cta = (row_tiles + splits - 1) / splits;
  r.ctas = (row_tiles + r.tiles_per_cta - 1) / r.tiles_per_cta;  // no CTA without tiles
  return r;
}
#endif

}  // namespace tn::cuda::sm90
