// Launchers of the CUDA kernels: the tensor-core kernels (tensor_cores.cuh) where the problem asks
// for them and the binary has them, the SIMT kernels (simt.cuh) otherwise. taylor_<dtype>.cu
// instantiate them per storage type.
#pragma once

#include "cuda/simt.cuh"
#include "cuda/tensor_cores.cuh"

#include <atomic>
#include <type_traits>

namespace tn::cuda {

// ---- launchers ----

// Splits of the inner loop so that the grid fills the device (about 4 blocks per SM). Deterministic
// problems take none: every output element then receives exactly one block's sum, added to zero,
// so the float atomics meet no other addend and the result is the same in every run.
template <typename T>
int64_t inner_splits(const Problem<T>& p, int64_t outer_blocks, int64_t inner_tiles) {
  if (p.deterministic) return 1;
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t want = ceil_div(4 * static_cast<int64_t>(sms), std::max<int64_t>(outer_blocks, 1));
  return std::max<int64_t>(1, std::min(want, inner_tiles));
}

// Whether the binary loaded for the current device holds sm_80+ code for Kernel. Asked of the
// runtime once per kernel and device (cudaFuncGetAttributes is not free; launches are frequent).
template <auto Kernel>
bool mma_binary() {
  constexpr int kDevices = 64;
  static std::atomic<int> known[kDevices];  // 0: not asked yet, 1: no, 2: yes
  int device = 0;
  cudaGetDevice(&device);
  int answer = device < kDevices ? known[device].load(std::memory_order_relaxed) : 0;
  if (answer == 0) {
    cudaFuncAttributes attr{};
    if (cudaFuncGetAttributes(&attr, reinterpret_cast<const void*>(Kernel)) != cudaSuccess) {
      cudaGetLastError();  // not sticky; leave no error behind for the caller
      attr.binaryVersion = 0;
    }
    answer = attr.binaryVersion >= 80 ? 2 : 1;
    if (device < kDevices) known[device].store(answer, std::memory_order_relaxed);
  }
  return answer == 2;
}

// Whether a tensor-core kernel runs: the problem asks for it (bf16/fp16 always, float32 when TF32
// is allowed) and the binary loaded for this device was compiled for sm_80 or newer.
template <auto Kernel, typename T>
bool use_tensor_cores(const Problem<T>& p) {
  if constexpr (std::is_same_v<T, double>) return false;
  else return p.tensor_cores && mma_binary<Kernel>();
}

template <typename T>
void features_forward(const Problem<T>& p, T* out, cudaStream_t stream) {
  if (p.n == 0 || p.m == 0) return;  // no blocks: an empty grid is a launch error
  bool tc = false;
  if constexpr (!std::is_same_v<T, double>)
    tc = use_tensor_cores<&features_forward_tc_kernel<T>>(p);
  const int64_t B = tc ? kTcTile : tile<acc_t<T>>();
  // Sample tiles run on grid.y, which stops at 65535 blocks: taller inputs go in slabs of rows
  // (rows are independent; the signs depend on the neuron only).
  const int64_t slab = 65535 * B;
  for (int64_t i = 0; i < p.n; i += slab) {
    Problem<T> q = p;
    q.x = p.x + i * p.d;
    q.n = std::min(slab, p.n - i);
    const dim3 grid(ceil_div(p.m, B), ceil_div(q.n, B));
    if constexpr (!std::is_same_v<T, double>) {
      if (tc) {
        features_forward_tc_kernel<T><<<grid, kThreads, 0, stream>>>(q, out + i * p.m);
        continue;
      }
    }
    features_forward_kernel<T><<<grid, kThreads, 0, stream>>>(q, out + i * p.m);
  }
}

template <typename T>
void neuron_sum(const Problem<T>& p, const NeuronSum<T>& s, cudaStream_t stream) {
  if (p.n == 0 || p.m == 0 || s.ncols == 0) return;  // the outputs start at zero
  if constexpr (!std::is_same_v<T, double>) {
    if (use_tensor_cores<&neuron_sum_tc_kernel<T>>(p)) {
      const int64_t gx = ceil_div(p.n, kTcTile), gy = ceil_div(s.ncols, kTcTile), tiles = ceil_div(p.m, kTcTile);
      const SplitLaunch l = split_launch(gx, gy, tiles, inner_splits(p, gx * gy, tiles));
      neuron_sum_tc_kernel<T><<<l.grid, kThreads, 0, stream>>>(p, s, l.tiles_per_split);
      return;
    }
  }
  constexpr int B = tile<acc_t<T>>();
  const int64_t gx = ceil_div(p.n, B), gy = ceil_div(s.ncols, B), tiles = ceil_div(p.m, B);
  const SplitLaunch l = split_launch(gx, gy, tiles, inner_splits(p, gx * gy, tiles));
  neuron_sum_kernel<T><<<l.grid, kThreads, 0, stream>>>(p, s, l.tiles_per_split);
}

template <typename T>
void sample_sum(const Problem<T>& p, const SampleSum<T>& s, cudaStream_t stream) {
  if (p.n == 0 || p.m == 0 || s.width() == 0) return;
  if constexpr (!std::is_same_v<T, double>) {
    if (use_tensor_cores<&sample_sum_tc_kernel<T>>(p)) {
      const int64_t gx = ceil_div(p.m, kTcTile), gy = ceil_div(s.width(), kTcTile), tiles = ceil_div(p.n, kTcTile);
      const SplitLaunch l = split_launch(gx, gy, tiles, inner_splits(p, gx * gy, tiles));
      sample_sum_tc_kernel<T><<<l.grid, kThreads, 0, stream>>>(p, s, l.tiles_per_split);
      return;
    }
  }
  constexpr int B = tile<acc_t<T>>();
  const int64_t gx = ceil_div(p.m, B), gy = ceil_div(s.width(), B), tiles = ceil_div(p.n, B);
  const SplitLaunch l = split_launch(gx, gy, tiles, inner_splits(p, gx * gy, tiles));
  sample_sum_kernel<T><<<l.grid, kThreads, 0, stream>>>(p, s, l.tiles_per_split);
}

#define TN_INSTANTIATE_CUDA(T)                                                             \
  template void features_forward<T>(const Problem<T>&, T*, cudaStream_t);                  \
  template void neuron_sum<T>(const Problem<T>&, const NeuronSum<T>&, cudaStream_t);       \
  template void sample_sum<T>(const Problem<T>&, const SampleSum<T>&, cudaStream_t);

}  // namespace tn::cuda
