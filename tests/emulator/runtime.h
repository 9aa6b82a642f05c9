// The launch layer's runtime (csrc/cuda/runtime.cuh) for the CPU emulator: kernels run block by
// block under emu.h, device memory is host memory, and the emulated GPU (its compute capability,
// the code the "binary" holds per mainloop, the architectures it was "built" for) is set by the
// test. Launches are checked as the CUDA runtime checks them: an empty or oversized grid is an
// invalid configuration, a kernel without code is a missing image.
#pragma once

#define TN_CUDA_EMULATOR 1

#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "emu.h"
#include "tma.h"
#include "cuda/launch.h"

namespace tn_emu {

// The emulated GPU's binary: the code architecture of every kernel (0: none) and what it was built for.
struct Binary {
  int code_arch = 90;
  int sm90a_code_arch = 90;  // of the wgmma kernels (0: built without sm_90a)
  std::vector<int> built = {80, 90};
  long launches = 0;  // kernel launches so far
  // per launch: the kernel's name and the (sample tile, neuron tile) recomputations it ran
  std::vector<std::pair<std::string, long>> recomputes;
};
inline Binary binary;

}  // namespace tn_emu

namespace tn::cuda {

inline std::vector<int> built_archs() { return tn_emu::binary.built; }

// sm_90a kernels (wgmma) run on the emulator's model of their instructions (wgmma.h) where the
// binary holds sm_90a code.
inline int kernel_code_arch(const void*, const std::string&, const Device&, bool sm90a = false) {
  return sm90a ? tn_emu::binary.sm90a_code_arch : tn_emu::binary.code_arch;
}

// The tensor maps of the wgmma kernel's copies: the arguments the CUDA build passes the driver, in the
// emulator's own encoding (tma.h).
inline bool encode_tile_map(CUtensorMap& map, const void* base, int64_t inner, int64_t rows, uint32_t box_rows) {
  if (inner <= 0 || rows <= 0) return false;
  return tn_emu::encode_tile_map(map, base, sm90::tile_map_args(inner, rows, box_rows));
}

template <typename... P, typename... A>
void launch_threads(const std::string& name, void (*kernel)(P...), dim3 grid, int threads, size_t smem,
                    const Context& ctx, A&&... args) {
  const bool valid = grid.x >= 1 && grid.x <= 2147483647u && grid.y >= 1 && grid.y <= 65535 && grid.z >= 1 &&
                     grid.z <= 65535;
  if (!valid)
    throw Error(cuda_error_message("the launch", name, "cudaErrorInvalidConfiguration",
                                   "invalid configuration argument: grid " + std::to_string(grid.x) + " x " +
                                       std::to_string(grid.y) + " x " + std::to_string(grid.z)));
  if (static_cast<int64_t>(smem) > ctx.device.smem_optin)
    throw Error(cuda_error_message("the shared-memory attribute", name, "cudaErrorInvalidValue",
                                   std::to_string(smem) + " bytes of shared memory"));
  if (tn_emu::binary.code_arch == 0) throw Error(no_image_message(name, ctx.device.arch, tn_emu::binary.built));
  ++tn_emu::binary.launches;
  const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  const long before = tn_emu::recomputed;
  tn_emu::running = name;
  tn_emu::launch(grid, smem, [&] { std::apply(kernel, params); }, threads);
  tn_emu::binary.recomputes.emplace_back(name, tn_emu::recomputed - before);
}
template <typename... P, typename... A>
void launch(const std::string& name, void (*kernel)(P...), dim3 grid, size_t smem, const Context& ctx,
            A&&... args) {
  launch_threads(name, kernel, grid, tn_emu::kBlockThreads, smem, ctx, std::forward<A>(args)...);
}

inline void zero_async(void* ptr, size_t bytes, const Context&, const std::string&) {
  if (bytes) std::memset(ptr, 0, bytes);
}

}  // namespace tn::cuda
