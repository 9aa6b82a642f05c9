// Which kernels run, decided without touching a GPU: the mainloop (the code that forms the tiles'
// pre-activations and contracts the fields) from the device, the code the binary holds for it, the
// dtype and torch's switches, plus the split of the inner loops and the messages of every refusal.
// Pure functions of plain values (no CUDA, no torch), so that the CPU tests cover every branch.
//
// A new mainloop joins by an enumerator (before kSimt, in order of preference), a row of
// kMainloops, and its kernels in launch.cuh. A mainloop with kernels for some kernel families and
// dtypes only (wgmma) names the mainloop that runs the others in its `stand_in`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tn::cuda {

enum class DType : int { kFloat64 = 0, kFloat32, kFloat16, kBFloat16 };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::kFloat64: return "float64";
    case DType::kFloat32: return "float32";
    case DType::kFloat16: return "float16";
    default: return "bfloat16";
  }
}

// The mainloops, in order of preference. kAuto is a request only: the first one that can run.
enum class Mainloop : int {
  kWgmma = 0,  // tensor cores through wgmma from shared memory (sm_90a): bf16, fp16
  kMma,      // tensor cores through mma.sync and ldmatrix (sm_80+): bf16, fp16, float32 as TF32
  kWmma,     // tensor cores through wmma fragments (sm_80+): the same dtypes
  kSimt,     // CUDA cores: every dtype, every GPU
  kCount,
  kAuto = kCount,
};
constexpr int kNumMainloops = static_cast<int>(Mainloop::kCount);

struct MainloopInfo {
  const char* name;     // as TAYLORNET_CUDA_MAINLOOP spells it
  int min_arch;         // compute capability (major * 10 + minor) of the device and of its code
  bool dtypes[4];       // by DType: float64, float32, float16, bfloat16
  bool float32_as_tf32; // float32 runs only where TF32 matmuls are allowed (its products round)
  bool deterministic;   // can give run-to-run identical results (under torch.use_deterministic_algorithms)
  int max_arch;         // the newest compute capability it runs on (0: no limit); sm_90a code runs on 9.0 only
  const char* arch_suffix;  // of TORCH_CUDA_ARCH_LIST's entry that builds its code ("a": "9.0a")
  Mainloop stand_in;    // runs the kernel families and dtypes it has no kernels for (kAuto: none)
};

inline const MainloopInfo& mainloop_info(Mainloop m) {
  static const MainloopInfo table[kNumMainloops] = {
      {"wgmma", 90, {false, false, true, true}, false, true, 90, "a", Mainloop::kMma},
      {"mma", 80, {false, true, true, true}, true, true, 0, "", Mainloop::kAuto},
      {"wmma", 80, {false, true, true, true}, true, true, 0, "", Mainloop::kAuto},
      {"simt", 0, {true, true, true, true}, false, true, 0, "", Mainloop::kAuto},
  };
  return table[static_cast<int>(m)];
}

inline const char* mainloop_name(Mainloop m) { return m == Mainloop::kAuto ? "auto" : mainloop_info(m).name; }

// "auto", "wgmma", "mma", "wmma", "simt" (as TAYLORNET_CUDA_MAINLOOP takes them); false for anything else.
inline bool parse_mainloop(const std::string& text, Mainloop& out) {
  if (text.empty() || text == "auto") {
    out = Mainloop::kAuto;
    return true;
  }
  for (int k = 0; k < kNumMainloops; ++k)
    if (text == mainloop_info(static_cast<Mainloop>(k)).name) {
      out = static_cast<Mainloop>(k);
      return true;
    }
  return false;
}

inline std::string mainloop_list() {
  std::string s = "auto";
  for (int k = 0; k < kNumMainloops; ++k) s += std::string(", ") + mainloop_info(static_cast<Mainloop>(k)).name;
  return s;
}

// "sm_80, sm_90" for {80, 90}.
inline std::string arch_list(const std::vector<int>& archs) {
  std::string s;
  for (int a : archs) s += (s.empty() ? "sm_" : ", sm_") + std::to_string(a);
  return s.empty() ? "no architecture" : s;
}

inline std::string arch_text(int arch) { return std::to_string(arch / 10) + "." + std::to_string(arch % 10); }

// A kernel the binary holds no code for on this GPU; `suffix` that of the architecture to rebuild
// for ("a": sm_90a's wgmma).
inline std::string no_image_message(const std::string& kernel, int device_arch, const std::vector<int>& built,
                                    const std::string& suffix = "") {
  return "taylornet: no CUDA kernel image of " + kernel + " for this GPU (compute capability " +
         arch_text(device_arch) + "): the extension was built for " + arch_list(built) +
         ". Rebuild it for this GPU, e.g. TORCH_CUDA_ARCH_LIST=\"" + arch_text(device_arch) + suffix +
         "\" pip install --no-build-isolation .";
}

// A CUDA runtime call that failed: what was attempted, for which kernel, and the error.
inline std::string cuda_error_message(const std::string& what, const std::string& kernel, const std::string& error_name,
                                      const std::string& error_text) {
  return "taylornet: " + what + " of " + kernel + " failed: " + error_name + " (" + error_text + ")";
}

// Everything the choice depends on.
struct KernelQuery {
  int device_arch = 0;  // the GPU's compute capability, major * 10 + minor
  // Per mainloop, the architecture the code loaded for this GPU was compiled for (the kernel's
  // cudaFuncAttributes::ptxVersion, which __CUDA_ARCH__ saw); 0 where the binary holds none.
  int code_arch[kNumMainloops] = {};
  // Per mainloop, whether the kernel family has a kernel of it for this dtype at all (wgmma: bf16
  // and fp16 only); where not, its stand-in runs.
  bool has_kernel[kNumMainloops] = {true, true, true, true};
  static_assert(kNumMainloops == 4, "one has_kernel entry per mainloop");
  std::vector<int> built;  // the architectures the binary was built for (for messages)
  std::string kernel;      // the kernel family, for messages: "sample_sum<bfloat16>"
  DType dtype = DType::kFloat32;
  bool allow_tf32 = false;     // torch.backends.cuda.matmul.allow_tf32
  bool deterministic = false;  // torch.use_deterministic_algorithms(True)
  Mainloop requested = Mainloop::kAuto;
};

struct KernelChoice {
  Mainloop mainloop = Mainloop::kSimt;
  bool split = true;  // whether the inner loops may be split (float atomics meet in any order)
  std::string error;  // non-empty: nothing can run, and this says why
};

// Why mainloop m cannot run the query; empty when it can.
inline std::string mainloop_refusal(const KernelQuery& q, Mainloop m) {
  const MainloopInfo& info = mainloop_info(m);
  const std::string name = info.name;
  if (!info.dtypes[static_cast<int>(q.dtype)])
    return "the " + name + " mainloop does not take " + dtype_name(q.dtype);
  if (q.dtype == DType::kFloat32 && info.float32_as_tf32 && !q.allow_tf32)
    return "the " + name + " mainloop runs float32 as TF32, which torch does not allow now "
           "(torch.backends.cuda.matmul.allow_tf32 = True allows it)";
  if (q.deterministic && !info.deterministic)
    return "the " + name + " mainloop is not deterministic (torch.use_deterministic_algorithms is on)";
  if (!q.has_kernel[static_cast<int>(m)]) return "the " + name + " mainloop has no kernel of " + q.kernel;
  if (q.device_arch < info.min_arch)
    return "the " + name + " mainloop needs compute capability " + arch_text(info.min_arch) + " or newer, this GPU has " +
           arch_text(q.device_arch);
  if (info.max_arch && q.device_arch > info.max_arch)
    return "the " + name + " mainloop runs on compute capability " + arch_text(info.max_arch) + " only (sm_" +
           std::to_string(info.max_arch) + info.arch_suffix + "), this GPU has " + arch_text(q.device_arch);
  const int code = q.code_arch[static_cast<int>(m)];
  if (code == 0) return no_image_message(q.kernel + " (" + name + ")", q.device_arch, q.built, info.arch_suffix);
  if (code < info.min_arch)
    return "the " + name + " mainloop's code for this GPU was compiled for compute capability " + arch_text(code) +
           " (from PTX), which lacks its instructions; rebuild with TORCH_CUDA_ARCH_LIST=\"" +
           arch_text(q.device_arch) + "\"";
  return {};
}

// The mainloop that runs: the one requested (or its stand-in where the kernel family has no kernel
// of it for this dtype), or under kAuto the first that can.
inline KernelChoice choose_kernels(const KernelQuery& q) {
  KernelChoice c;
  c.split = !q.deterministic;
  if (q.requested != Mainloop::kAuto) {
    Mainloop m = q.requested;
    const MainloopInfo& info = mainloop_info(m);
    if (info.stand_in != Mainloop::kAuto &&
        (!q.has_kernel[static_cast<int>(m)] || !info.dtypes[static_cast<int>(q.dtype)]))
      m = info.stand_in;
    c.mainloop = m;
    const std::string why = mainloop_refusal(q, m);
    if (!why.empty()) {
      // A missing image says so itself; any other refusal names the request that cannot be met.
      c.error = why.rfind("taylornet:", 0) == 0
                    ? why
                    : "taylornet: " + q.kernel + ": TAYLORNET_CUDA_MAINLOOP=" + mainloop_name(q.requested) +
                          " cannot run here: " + why;
    }
    return c;
  }
  std::string last;
  for (int k = 0; k < kNumMainloops; ++k) {
    const Mainloop m = static_cast<Mainloop>(k);
    last = mainloop_refusal(q, m);
    if (last.empty()) {
      c.mainloop = m;
      return c;
    }
  }
  // The last mainloop (SIMT) takes every dtype on every GPU: only missing code stops it.
  c.error = last.rfind("taylornet:", 0) == 0 ? last : "taylornet: " + q.kernel + ": no mainloop can run here: " + last;
  return c;
}

// Splits of an inner loop of `inner_tiles` tiles so that the grid fills the device (about four
// blocks per SM), where splitting is allowed; deterministic problems take none, so that every
// output element receives exactly one block's sum, added to zero: the same result in every run.
inline int64_t inner_splits(int sms, bool split, int64_t outer_blocks, int64_t inner_tiles) {
  if (!split) return 1;
  const int64_t want_blocks = 4 * static_cast<int64_t>(sms > 0 ? sms : 1);
  const int64_t outer = outer_blocks > 0 ? outer_blocks : 1;
  const int64_t want = (want_blocks + outer - 1) / outer;
  return want < 1 ? 1 : (want < inner_tiles ? want : (inner_tiles > 0 ? inner_tiles : 1));
}

}  // namespace tn::cuda
