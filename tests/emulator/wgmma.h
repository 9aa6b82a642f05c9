// The sm_90a instructions of the wgmma mainloop (csrc/cuda/sm90/wgmma.cuh) for the kernel emulator:
// wgmma.mma_async m64n64k16 with both operands in shared memory, read through the matrix
// descriptors of the PTX ISA ("Matrix Descriptor Format", K-major, 128-byte swizzle), f32
// accumulators in the ISA's per-thread layout; wgmma.fence, commit_group and wait_group.
//
// The model is written from the ISA, not from csrc/cuda/sm90/layout.h, so that a wrong descriptor
// or a register read from the wrong place gives a wrong product here.
//
// Asynchrony. A wgmma runs when the wait_group that completes its group is reached, not when it is
// issued, and it checks there that what it reads is what it would have read at issue: its operand
// bytes in shared memory (a stage overwritten before the wait) and its accumulator registers (a
// register written while a wgmma on it is in flight). Accumulators read before the wait hold their
// old values, which gives a wrong result. The threads of a warpgroup must issue the same wgmmas
// (.sync.aligned), a wgmma after a wait needs a wgmma.fence first, and no thread may leave a block
// with wgmmas in flight.
//
// Proxies. The kernels mark their generic-proxy writes of shared memory that wgmma reads
// (TN_GENERIC_SMEM_WRITE: cp.async and plain stores of the operand tiles); a wgmma whose operand
// bytes a thread wrote without a fence.proxy.async since fails. (The copy engine writes in the
// asynchronous proxy: its copies need none.)
//
// Not modelled: the instruction's internal rounding (products are summed in float).
#pragma once

#include <cstdint>
#include <cstring>
#include <deque>
#include <type_traits>
#include <vector>

#include "emu.h"

namespace tn_emu {

namespace wg {

constexpr int kM = 64, kN = 64, kK = 16;       // wgmma.m64n64k16
constexpr int kRegs = kM * kN / 128;          // f32 accumulators per thread: 32
constexpr int kWarpgroups = kMaxBlockThreads / 128;

// A K-major operand of kRows rows of kK 16-bit elements (32 bytes each) through descriptor `desc`:
// start address (bits 0-13), stride byte offset between 8-row groups (bits 32-45), both in units of
// 16 bytes; swizzle mode (bits 62-63) 1, 128-byte: within a 1024-byte span, the 16-byte chunk
// index (address bits 4-6) is XORed with the row within the span (bits 7-9) of the address.
struct Operand {
  uint16_t e[kM][kK];  // row x k, the raw 16-bit elements

  static uint32_t address(uint64_t desc, int row, int kbyte) {
    const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
    const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
    const uint32_t linear = start + static_cast<uint32_t>(row / 8) * sbo + static_cast<uint32_t>(row % 8) * 128 + kbyte;
    return linear ^ (((linear >> 7) & 7u) << 4);
  }

  static Operand read(uint64_t desc) {
    if ((desc >> 62) != 1) fail("wgmma descriptor: the emulator models the 128-byte swizzle only");
    if (((desc >> 49) & 7) != 0) fail("wgmma descriptor: nonzero matrix base offset");
    Operand o;
    for (int r = 0; r < kM; ++r)
      for (int k = 0; k < kK; ++k)
        std::memcpy(&o.e[r][k], shared_bytes(address(desc, r, 2 * k), 2, "wgmma operand outside the shared memory"), 2);
    return o;
  }
  bool operator==(const Operand& o) const { return std::memcmp(e, o.e, sizeof(e)) == 0; }
};

// Accumulator register i of thread t (0-127) of the warpgroup: warp t / 32 owns rows 16 (t / 32)
// .. + 15; in each 8-column slice i / 4 the mma m16n8 layout: row (t % 32) / 4 + 8 ((i / 2) % 2),
// column 2 (t % 4) + i % 2.
inline int row_of(int t, int i) { return 16 * (t / 32) + (t % 32) / 4 + 8 * ((i / 2) % 2); }
inline int col_of(int t, int i) { return 8 * (i / 4) + 2 * (t % 4) + i % 2; }

struct Op {
  float* d;
  uint64_t a, b;
  Operand sa, sb;  // the operands as they stood at issue
  bool bf16;
  bool accumulate;  // scale-d: d += A B^T, else d = A B^T
};

struct ThreadState {
  std::vector<std::pair<uintptr_t, uintptr_t>> unfenced;  // generic-proxy writes [begin, end) since a fence
  std::vector<Op> open;                 // issued since the last commit
  std::deque<std::vector<Op>> groups;   // committed, not yet complete
  std::vector<std::pair<float*, std::vector<float>>> regs;  // accumulators in flight: their values at issue
  bool fenced = false;                  // a wgmma.fence since the last wait
  size_t issued = 0;                    // wgmmas issued in this block
};

struct Issued {
  uint64_t a, b;
  bool bf16, accumulate;
};

struct BlockState {
  ThreadState thread[kMaxBlockThreads];
  std::vector<Issued> warpgroup[kWarpgroups];  // the wgmmas each warpgroup issued, in order
};

inline BlockState& block() {
  static BlockState s;
  return s;
}

inline float element(uint16_t bits, bool bf16) {
  if (bf16) {
    const uint32_t f = static_cast<uint32_t>(bits) << 16;
    float v;
    std::memcpy(&v, &f, 4);
    return v;
  }
  __half h;
  std::memcpy(&h, &bits, 2);
  return __half2float(h);
}

// Fails if a thread wrote bytes of the operand at desc through the generic proxy without a proxy
// fence since (the operand spans 8 groups of 8 rows, SBO apart, from its start address).
inline void check_fenced(uint64_t desc) {
  const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
  const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
  const auto lo =
      reinterpret_cast<uintptr_t>(shared_bytes(start & ~1023u, 1, "wgmma operand outside the shared memory"));
  const uintptr_t hi = lo + (kM / 8) * sbo;
  for (const ThreadState& t : block().thread)
    for (const auto& [b, e] : t.unfenced)
      if (b < hi && e > lo) fail("wgmma reads shared memory that a thread wrote without fence.proxy.async since");
}

inline std::vector<float>* in_flight(ThreadState& s, float* d) {
  for (auto& [p, v] : s.regs)
    if (p == d) return &v;
  return nullptr;
}

// Runs op for this thread: its 32 accumulators += A B^T at its (row, column) positions.
inline void execute(ThreadState& s, const Op& op) {
  if (!(Operand::read(op.a) == op.sa) || !(Operand::read(op.b) == op.sb))
    fail("a wgmma's shared-memory operands changed between its issue and the wait_group that completes it");
  std::vector<float>* at_issue = in_flight(s, op.d);
  if (std::memcmp(at_issue->data(), op.d, kRegs * sizeof(float)) != 0)
    fail("accumulator registers written while a wgmma on them was in flight");
  const int t = static_cast<int>(self.thread.x % 128);
  for (int i = 0; i < kRegs; ++i) {
    const int r = row_of(t, i), c = col_of(t, i);
    float acc = 0;
    for (int k = 0; k < kK; ++k) acc += element(op.sa.e[r][k], op.bf16) * element(op.sb.e[c][k], op.bf16);
    op.d[i] = op.accumulate ? op.d[i] + acc : acc;  // scale-d
  }
  std::memcpy(at_issue->data(), op.d, kRegs * sizeof(float));  // the next wgmma of the chain starts here
}

}  // namespace wg

inline void wgmma_fence() { wg::block().thread[self.thread.x].fenced = true; }

// The wgmmas issued (each warpgroup's, counted once), for checks that two kernels do the same work.
inline long wgmmas_issued = 0;

// Every commit group in the order the warpgroups committed them while `log_commits` is set: the
// block and the warpgroup, for checks of the order in which warpgroups take turns.
struct Commit {
  uint3 block;
  int warpgroup;
};
inline std::vector<Commit> commits;
inline bool log_commits = false;

template <typename T>
void wgmma_m64n64k16(float (&d)[32], uint64_t a, uint64_t b, bool accumulate) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "bf16 or fp16 operands");
  constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
  wg::BlockState& blk = wg::block();
  wg::ThreadState& s = blk.thread[self.thread.x];
  if (!s.fenced) fail("wgmma issued without a wgmma.fence since the last wait_group");
  std::vector<wg::Issued>& log = blk.warpgroup[self.thread.x / 128];
  if (s.issued == log.size()) log.push_back({a, b, bf16, accumulate});
  else if (log[s.issued].a != a || log[s.issued].b != b || log[s.issued].bf16 != bf16 ||
           log[s.issued].accumulate != accumulate)
    fail("the threads of a warpgroup issued different wgmmas (.sync.aligned)");
  ++s.issued;
  wgmmas_issued += self.thread.x % 128 == 0;
  wg::check_fenced(a);
  wg::check_fenced(b);
  std::vector<float>* at_issue = wg::in_flight(s, d);
  if (!at_issue) s.regs.emplace_back(d, std::vector<float>(d, d + 32));
  else if (std::memcmp(at_issue->data(), d, sizeof(d)) != 0)
    fail("accumulator registers written while a wgmma on them was in flight");
  s.open.push_back({d, a, b, wg::Operand::read(a), wg::Operand::read(b), bf16, accumulate});
}

inline void generic_smem_write(const void* p, size_t bytes) {
  const auto b = reinterpret_cast<uintptr_t>(p);
  wg::block().thread[self.thread.x].unfenced.emplace_back(b, b + bytes);
}

inline void fence_proxy_async() { wg::block().thread[self.thread.x].unfenced.clear(); }

inline void wgmma_commit() {
  if (log_commits && self.thread.x % 128 == 0) commits.push_back({self.block, static_cast<int>(self.thread.x / 128)});
  wg::ThreadState& s = wg::block().thread[self.thread.x];
  s.groups.push_back(std::move(s.open));
  s.open.clear();
}

// wgmma.wait_group N: the oldest groups run until at most N are pending.
inline void wgmma_wait(int pending) {
  wg::ThreadState& s = wg::block().thread[self.thread.x];
  while (static_cast<int>(s.groups.size()) > pending) {
    for (const wg::Op& op : s.groups.front()) wg::execute(s, op);
    s.groups.pop_front();
  }
  s.fenced = false;
  if (s.groups.empty() && s.open.empty()) s.regs.clear();
}

// After every block: nothing in flight; then a clean state for the next block.
inline void wgmma_block_end() {
  wg::BlockState& blk = wg::block();
  for (auto& s : blk.thread)
    if (!s.open.empty() || !s.groups.empty()) fail("a thread ended its block with wgmmas in flight");
  blk = wg::BlockState{};
}

inline const bool wgmma_block_end_registered = [] {
  block_end_checks().push_back(&wgmma_block_end);
  return true;
}();

}  // namespace tn_emu
