// The n x m buffers of the CPU features forward, recycled: its output h and the derivatives that a
// training forward keeps for its backward (dh/du and dh/dz0). A buffer released by its last tensor
// goes to a small cache instead of back to malloc, and the next forward of the same size takes it
// from there. The cache holds at most 256 MiB of released buffers (TAYLORNET_SAVED_CACHE_MB, or
// saved_cache(limit)), and frees the longest-held ones to make room for a newly released one; 0
// turns the cache off.
//
// Why: glibc returns the top of its heap to the system once more than twice the largest freed
// mmapped block lies free there. When two n x m buffers are released together at the end of a
// training step (h and dh/du; or h and the cotangent of h that the layer above computed), that is
// the case, and the next step maps and zero-fills every page of them again: at n = m = 1024 (two
// buffers, 8 MiB in float32) about 2,000 page faults per step, which cost the saving forward a
// third of its time. Kept here, our buffers no longer count towards the heap's free top, and the
// pages of neither ours nor the others are faulted in again.
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/Exception.h>

#include <ATen/ATen.h>

#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "cpu/taylor_cpu.h"

namespace tn::cpu {
namespace {

class RecycledBufferCache {
 public:
  RecycledBufferCache() {
    if (const auto mb = env_count("TAYLORNET_SAVED_CACHE_MB", "a number of MiB", (int64_t(1) << 40) - 1))
      limit_ = static_cast<size_t>(*mb) << 20;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    size_t bytes = options.dtype().itemsize();
    for (int64_t s : sizes) bytes *= static_cast<size_t>(s);
    if (bytes == 0) return at::empty(sizes, options);
    void* p = take(bytes);
    if (p == nullptr) p = c10::alloc_cpu(bytes);
    // A storage like at::empty's, resizable: growing it moves the data to memory of the default
    // allocator and hands this buffer back.
    return at::for_blob(p, sizes)
        .deleter([this, bytes](void* q) { give(q, bytes); })
        .options(options)
        .resizeable_storage()
        .allocator(c10::GetCPUAllocator())
        .make_tensor();
  }

  void set_limit(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    limit_ = bytes;
    evict_locked(0);
  }
  size_t limit() {
    std::lock_guard<std::mutex> lock(mu_);
    return limit_;
  }
  size_t cached() {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }

 private:
  struct Buffer {
    size_t bytes;
    void* data;
  };

  // The most recently released buffer of exactly this size, or nullptr.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = free_.rbegin(); it != free_.rend(); ++it) {
      if (it->bytes != bytes) continue;
      void* p = it->data;
      free_.erase(std::next(it).base());
      cached_ -= bytes;
      return p;
    }
    return nullptr;
  }
  // Keeps the buffer, making room by freeing the longest-held ones: the sizes a training loop
  // allocates now are those it released last.
  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (bytes <= limit_) {
        evict_locked(bytes);
        free_.push_back({bytes, p});
        cached_ += bytes;
        return;
      }
    }
    c10::free_cpu(p);
  }
  // Frees the longest-held buffers until `room` more bytes fit under the limit.
  void evict_locked(size_t room) {
    while (!free_.empty() && cached_ + room > limit_) {
      cached_ -= free_.front().bytes;
      c10::free_cpu(free_.front().data);
      free_.pop_front();
    }
  }

  std::mutex mu_;
  std::list<Buffer> free_;  // released buffers, longest-held first
  size_t cached_ = 0;
  size_t limit_ = size_t(256) << 20;
};

// Never destroyed: tensors holding its buffers may outlive every static at exit.
RecycledBufferCache& cache() {
  static auto* c = new RecycledBufferCache();
  return *c;
}

}  // namespace

at::Tensor recycled_buffer(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return cache().empty(sizes, options);
}

std::vector<int64_t> saved_cache(std::optional<int64_t> limit_bytes) {
  if (limit_bytes) {
    TORCH_CHECK_VALUE(*limit_bytes >= 0, "taylornet: saved_cache: limit_bytes: expected >= 0, got ", *limit_bytes);
    cache().set_limit(static_cast<size_t>(*limit_bytes));
  }
  return {static_cast<int64_t>(cache().cached()), static_cast<int64_t>(cache().limit())};
}

}  // namespace tn::cpu
