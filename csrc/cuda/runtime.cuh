// The launch layer's only contact with the CUDA runtime, every call checked: kernel launches, the
// zeroing of accumulators, which code the binary holds for a kernel on this GPU, and the tensor
// maps of the copy engine (through the driver's entry point). The CPU emulator
// (tests/emulator/runtime.h) provides the same five functions.
#pragma once

#include <cuda_runtime.h>
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled

#include <mutex>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda/device.cuh"
#include "cuda/launch.h"
#include "cuda/sm90/tile_map.h"

namespace tn::cuda {

// The architectures this binary was compiled for (nvcc's __CUDA_ARCH_LIST__: 800, 900, ...).
inline std::vector<int> built_archs() {
#ifdef __CUDA_ARCH_LIST__
  std::vector<int> archs = {__CUDA_ARCH_LIST__};
  for (int& a : archs) a /= 10;
  return archs;
#else
  return {};
#endif
}

inline bool is_missing_image(cudaError_t e) {
  return e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction;
}

// Throws the error of a failed runtime call on `kernel`, after clearing it from the runtime's
// last-error slot so that it is not reported again by the next caller (sticky errors stay).
[[noreturn]] inline void throw_cuda_error(cudaError_t e, const char* what, const std::string& kernel,
                                          const Device& device) {
  cudaGetLastError();
  if (is_missing_image(e)) throw Error(no_image_message(kernel, device.arch, built_archs()));
  throw Error(cuda_error_message(what, kernel, cudaGetErrorName(e), cudaGetErrorString(e)));
}

// The architecture the code of `kernel` loaded for the current device was compiled for (the
// __CUDA_ARCH__ it saw, from cudaFuncAttributes::ptxVersion), 0 where the binary holds no code this
// GPU can run. An sm_90a kernel (`sm90a`: the wgmma mainloop's) is compiled for every target, but
// only its sm_90a code has a body; the others are entry points without shared memory that trap, and
// count as no code (ptxVersion does not tell compute_90 from compute_90a). Asked of the runtime once
// per kernel and device.
inline int kernel_code_arch(const void* kernel, const std::string& name, const Device& device, bool sm90a = false) {
  static std::mutex mutex;
  static std::vector<std::tuple<const void*, int, int>> known;  // (kernel, device, arch)
  {
    const std::lock_guard<std::mutex> lock(mutex);
    for (const auto& [k, dev, arch] : known)
      if (k == kernel && dev == device.index) return arch;
  }
  cudaFuncAttributes attr{};
  const cudaError_t e = cudaFuncGetAttributes(&attr, kernel);
  int arch = 0;
  if (e == cudaSuccess) arch = (sm90a && attr.sharedSizeBytes == 0) ? 0 : attr.ptxVersion;
  else if (is_missing_image(e)) cudaGetLastError();
  else throw_cuda_error(e, "the attribute query", name, device);
  const std::lock_guard<std::mutex> lock(mutex);
  known.emplace_back(kernel, device.index, arch);
  return arch;
}

// kernel<<<grid, threads, smem, stream>>>(args...), checked: the launch's own status, not a stale
// one. Dynamic shared memory above the default 48 KiB is allowed for the kernel first
// (cudaFuncAttributeMaxDynamicSharedMemorySize, a host-side attribute: no synchronisation).
template <typename... P, typename... A>
void launch_threads(const std::string& name, void (*kernel)(P...), dim3 grid, int threads, size_t smem,
                    const Context& ctx, A&&... args) {
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  void* pointers[sizeof...(P)];
  std::apply([&](auto&... p) {
    int k = 0;
    ((pointers[k++] = static_cast<void*>(&p)), ...);
  }, params);
  if (smem > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel),
                                               cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) throw_cuda_error(e, "the shared-memory attribute", name, ctx.device);
  }
  const cudaError_t e = cudaLaunchKernel(reinterpret_cast<const void*>(kernel), grid, dim3(threads), pointers, smem,
                                         ctx.stream);
  if (e != cudaSuccess) throw_cuda_error(e, "the launch", name, ctx.device);
}
// The same with the kernels' usual kThreads threads per block.
template <typename... P, typename... A>
void launch(const std::string& name, void (*kernel)(P...), dim3 grid, size_t smem, const Context& ctx, A&&... args) {
  launch_threads(name, kernel, grid, kThreads, smem, ctx, std::forward<A>(args)...);
}

// A tensor map for the copy engine (sm_90): a row-major (rows x inner) tensor of 16-bit elements at
// `base`, read in boxes of box_rows rows by 64 elements (one 128-byte row, stored with the 128-byte
// swizzle), zeros outside it. False where the driver refuses it (a base or row stride that is not a
// multiple of 16 bytes, say) or has no cuTensorMapEncodeTiled: the caller then copies without one.
// The arguments: sm90::tile_map_args.
inline bool encode_tile_map(CUtensorMap& map, const void* base, int64_t inner, int64_t rows, uint32_t box_rows) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      fn = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (!encode || inner <= 0 || rows <= 0 || reinterpret_cast<uintptr_t>(base) % 16 != 0 || (inner * 2) % 16 != 0)
    return false;
  const sm90::TileMapArgs a = sm90::tile_map_args(inner, rows, box_rows);
  return encode(&map, a.dtype, a.rank, const_cast<void*>(base), a.dims, a.strides, a.box, a.steps, a.interleave,
                a.swizzle, a.l2_promotion, a.oob_fill) == CUDA_SUCCESS;
}

// bytes of zeros at ptr, in stream order.
inline void zero_async(void* ptr, size_t bytes, const Context& ctx, const std::string& name) {
  if (bytes == 0) return;
  const cudaError_t e = cudaMemsetAsync(ptr, 0, bytes, ctx.stream);
  if (e != cudaSuccess) throw_cuda_error(e, "zeroing the accumulators", name, ctx.device);
}

}  // namespace tn::cuda
