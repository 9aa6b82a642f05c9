// A CPU emulator of the slice of CUDA the taylornet kernels use, so their tiling, shared-memory
// staging, barriers and split reductions run in the CPU test suite. Every CUDA thread of a block is
// a fiber (ucontext) on one OS thread; blocks run one after another, so __shared__ variables are
// function statics. A fiber runs until it reaches a barrier (__syncthreads, or the warp barrier of
// a collective mma): the fibers of a block therefore run far apart between barriers, and a missing
// barrier shows up as a wrong result rather than as a lucky interleaving.
#pragma once

#include <setjmp.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace tn_emu {

constexpr int kBlockThreads = 256;     // the kernels' usual block
constexpr int kMaxBlockThreads = 384;  // the largest block a kernel launches with (three warpgroups)
constexpr int kNamedBarriers = 16;     // bar.sync / bar.arrive ids; 0 is __syncthreads'
constexpr size_t kStack = 256 * 1024;

struct WarpScratch {
  float a[16 * 16], b[16 * 16];
  const unsigned char* rows[32];  // ldmatrix: the row address each lane supplies
};

// Fibers start through makecontext/setcontext and then switch with _setjmp/_longjmp, which do not
// save the signal mask: no system call per switch (build without _FORTIFY_SOURCE, whose longjmp
// check rejects jumps between stacks).
struct Fiber {
  ucontext_t start{};
  jmp_buf jmp;
  bool started = false;
  bool done = false;
};

// A barrier over the live fibers of a group: the last to arrive opens it for all.
struct Barrier {
  int expected;
  int arrived = 0;
  long generation = 0;
  void drop() {  // a fiber of the group finished
    --expected;
    if (arrived > 0 && arrived == expected) open();
  }
  void open() {
    arrived = 0;
    ++generation;
  }
};

struct ThreadState {
  uint3 thread{0, 0, 0}, block{0, 0, 0};
};
inline ThreadState self;

// The kernel being run (its launch name), for the failure messages.
inline std::string running;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "emulator: %s (%s, block %u,%u,%u thread %u)\n", what, running.c_str(), self.block.x,
               self.block.y, self.block.z, self.thread.x);
  std::abort();
}

// One block at a time: a fiber per thread and a round-robin scheduler.
class Block {
 public:
  Block(uint3 block, int threads, const std::function<void()>& kernel)
      : block_(block), kernel_(&kernel), threads_(threads), block_bar_{threads} {
    if (threads <= 0 || threads > kMaxBlockThreads || threads % 32 != 0) fail("block size not a multiple of 32 up to 384");
  }

  void run() {
    current_ = this;
    for (int t = 0; t < threads_; ++t) {
      Fiber& f = fibers_[t];
      getcontext(&f.start);
      f.start.uc_stack.ss_sp = stacks()[t].get();
      f.start.uc_stack.ss_size = kStack;
      f.start.uc_link = nullptr;  // entry() never returns: it jumps back to the scheduler
      makecontext(&f.start, &Block::entry, 0);
    }
    for (;;) {
      bool live = false;
      for (me_ = 0; me_ < threads_; ++me_) {
        if (fibers_[me_].done) continue;
        live = true;
        self = ThreadState{{static_cast<unsigned>(me_), 0, 0}, block_};
        progressed_ = false;
        Fiber& f = fibers_[me_];
        if (!_setjmp(scheduler_)) {
          if (!f.started) {
            f.started = true;
            setcontext(&f.start);
          }
          _longjmp(f.jmp, 1);
        }
        if (progressed_) stalled_rounds_ = 0;
      }
      if (!live) break;
      if (++stalled_rounds_ > 3) fail("barrier never completes (threads wait at different barriers)");
    }
    for (const Barrier& b : named_)
      if (b.arrived != 0) fail("a block ended with a named barrier that some threads arrived at and others never did");
    current_ = nullptr;
  }

  static Block& current() { return *current_; }
  static std::unique_ptr<char[]>* stacks() {  // allocated once, reused by every block
    static std::unique_ptr<char[]> s[kMaxBlockThreads];
    if (!s[0])
      for (auto& p : s) p.reset(new char[kStack]);
    return s;
  }
  WarpScratch& warp_scratch() { return warps_[me_ / 32]; }

  // Waits until every live thread of the block (or of the warp) has arrived.
  void sync_block() { wait(block_bar_); }
  void sync_warp() { wait(warp_bars_[me_ / 32]); }
  // bar.sync id, count: arrives and waits until `count` threads have arrived (bar.sync and
  // bar.arrive both count); bar.arrive id, count: arrives without waiting. Threads that finished
  // do not count: a barrier some never reach stalls the run.
  void named_sync(int id, int count) { wait(named(id, count)); }
  void named_arrive(int id, int count) {
    Barrier& b = named(id, count);
    progressed_ = true;
    if (++b.arrived == b.expected) b.open();
  }

  // Lets the other fibers run until pred() holds: a wait on state that other threads (or the
  // emulated copy engine) change, which must call progress() when they do.
  template <typename P>
  void wait_until(P&& pred) {
    Fiber& f = fibers_[me_];
    while (!pred())
      if (!_setjmp(f.jmp)) _longjmp(scheduler_, 1);
  }
  void progress() { progressed_ = true; }

 private:
  static void entry() {
    Block& b = *current_;
    (*b.kernel_)();
    b.fibers_[b.me_].done = true;  // a finished thread no longer holds back barriers, as on the GPU
    b.block_bar_.drop();
    b.warp_bars_[b.me_ / 32].drop();
    b.progressed_ = true;
    _longjmp(b.scheduler_, 1);
  }
  Barrier& named(int id, int count) {
    if (id <= 0 || id >= kNamedBarriers) fail("named barrier id outside 1 .. 15");
    if (count <= 0 || count % 32 != 0 || count > threads_) fail("named barrier count not a multiple of 32 up to the block");
    Barrier& b = named_[id];
    if (b.arrived == 0) b.expected = count;
    else if (b.expected != count) fail("threads name one barrier with different counts");
    return b;
  }
  void wait(Barrier& bar) {
    Fiber& f = fibers_[me_];
    const long generation = bar.generation;
    progressed_ = true;
    if (++bar.arrived == bar.expected) {
      bar.open();
      return;
    }
    while (bar.generation == generation)
      if (!_setjmp(f.jmp)) _longjmp(scheduler_, 1);
  }

  uint3 block_;
  const std::function<void()>* kernel_;
  int threads_;
  Fiber fibers_[kMaxBlockThreads];
  WarpScratch warps_[kMaxBlockThreads / 32];
  Barrier block_bar_;
  Barrier warp_bars_[kMaxBlockThreads / 32] = {{32}, {32}, {32}, {32}, {32}, {32}, {32}, {32}, {32}, {32}, {32}, {32}};
  Barrier named_[kNamedBarriers] = {};
  jmp_buf scheduler_;
  int me_ = 0, stalled_rounds_ = 0;
  bool progressed_ = false;
  static inline Block* current_ = nullptr;
};

inline int lane() { return static_cast<int>(self.thread.x % 32); }
inline WarpScratch& warp_scratch() { return Block::current().warp_scratch(); }
inline void warp_sync() { Block::current().sync_warp(); }
inline void sync_block() { Block::current().sync_block(); }
inline void named_barrier_sync(int id, int count) { Block::current().named_sync(id, count); }
inline void named_barrier_arrive(int id, int count) { Block::current().named_arrive(id, count); }

// wmma's contract: 256-bit aligned pointers and a leading dimension of a multiple of 16 bytes.
inline void check_aligned(const void* p, unsigned ld, size_t elem) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) fail("wmma pointer not 32-byte aligned");
  if (ld * elem % 16 != 0) fail("wmma leading dimension not a multiple of 16 bytes");
}

// The (sample, neuron) elements the kernels' products recompute (TN_COUNT_RECOMPUTE: once per block
// and inner tile, by thread 0).
inline long recomputed = 0;
inline void count_recompute(long elements) {
  if (self.thread.x == 0) recomputed += elements;
}

// The running block's dynamic shared memory: a buffer of exactly the launch's size (AddressSanitizer
// sees an access past it), filled with garbage.
inline unsigned char* dynamic_smem_ptr = nullptr;
inline size_t dynamic_smem_bytes = 0;
inline unsigned char* dynamic_smem() { return dynamic_smem_ptr; }

// The shared-memory window's address of the dynamic buffer's first byte, as __cvta_generic_to_shared
// gives it: on the GPU the dynamic part follows the kernel's static shared memory, so it is
// 128-byte but not necessarily 1024-byte aligned; this one is not, so that code aligning its
// swizzled tiles to 1024 bytes does work here.
constexpr uint32_t kDynamicSmemBase = 0x580;

inline uint32_t shared_address(const void* p) {
  const auto* b = static_cast<const unsigned char*>(p);
  if (!dynamic_smem_ptr || b < dynamic_smem_ptr || b >= dynamic_smem_ptr + dynamic_smem_bytes)
    fail("__cvta_generic_to_shared of an address outside the block's dynamic shared memory");
  return kDynamicSmemBase + static_cast<uint32_t>(b - dynamic_smem_ptr);
}
// The dynamic shared memory at window address `addr`, `bytes` of it, which must lie in the buffer.
inline const unsigned char* shared_bytes(uint32_t addr, uint32_t bytes, const char* what) {
  if (addr < kDynamicSmemBase || addr + bytes > kDynamicSmemBase + dynamic_smem_bytes) fail(what);
  return dynamic_smem_ptr + (addr - kDynamicSmemBase);
}

// Checks run after every block (e.g. that no asynchronous operation is left in flight).
inline std::vector<void (*)()>& block_end_checks() {
  static std::vector<void (*)()> checks;
  return checks;
}

// Runs `kernel` for every block of `grid`, blocks in order, `threads` threads per block.
inline void launch(dim3 grid, size_t smem, const std::function<void()>& kernel, int threads = kBlockThreads) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        unsigned char* dyn = smem ? static_cast<unsigned char*>(::operator new(smem, std::align_val_t(128))) : nullptr;
        if (dyn) std::memset(dyn, 0xA5, smem);
        dynamic_smem_ptr = dyn;
        dynamic_smem_bytes = smem;
        auto blk = std::make_unique<Block>(uint3{x, y, z}, threads, kernel);
        blk->run();
        for (auto check : block_end_checks()) check();
        dynamic_smem_ptr = nullptr;
        dynamic_smem_bytes = 0;
        if (dyn) ::operator delete(dyn, std::align_val_t(128));
      }
}

}  // namespace tn_emu

// The CUDA vocabulary of the kernels, for the host compiler.
#undef __shared__
#define __shared__ static
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __noinline__
#define __noinline__  // empty: libstdc++'s own __attribute__((__noinline__)) stays valid
#endif
#define threadIdx (tn_emu::self.thread)
#define blockIdx (tn_emu::self.block)
inline void __syncthreads() { tn_emu::sync_block(); }
inline size_t __cvta_generic_to_shared(const void* p) { return tn_emu::shared_address(p); }
[[noreturn]] inline void __trap() { tn_emu::fail("__trap"); }
inline int __float_as_int(float v) {
  int i;
  std::memcpy(&i, &v, 4);
  return i;
}
inline float __int_as_float(int i) {
  float v;
  std::memcpy(&v, &i, 4);
  return v;
}
inline unsigned __float_as_uint(float v) {
  unsigned i;
  std::memcpy(&i, &v, 4);
  return i;
}
inline float __uint_as_float(unsigned i) {
  float v;
  std::memcpy(&v, &i, 4);
  return v;
}
// One OS thread runs every fiber: plain read-modify-writes are atomic here.
inline int atomicMax(int* p, int v) {
  const int old = *p;
  *p = old > v ? old : v;
  return old;
}
inline float atomicAdd(float* p, float v) {
  const float old = *p;
  *p = old + v;
  return old;
}
inline double atomicAdd(double* p, double v) {
  const double old = *p;
  *p = old + v;
  return old;
}
