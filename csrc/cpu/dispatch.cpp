// Picks the kernels compiled for one instruction set: by default the best this CPU has, as reported
// by ATen (ATEN_CPU_CAPABILITY lowers that choice). TAYLORNET_CPU_CAPABILITY (DEFAULT, AVX2, AVX512)
// or set_capability() force a lower one, e.g. to test every build on one machine.
#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#include "cpu/taylor_cpu.h"

namespace tn::cpu {

#define TN_DECLARE_CAPABILITY(cap) \
  namespace cap {                  \
  const Kernels& kernels();        \
  }
TN_DECLARE_CAPABILITY(DEFAULT)
#ifdef TN_HAVE_AVX2
TN_DECLARE_CAPABILITY(AVX2)
#endif
#ifdef TN_HAVE_AVX512
TN_DECLARE_CAPABILITY(AVX512)
#endif

namespace {

struct Build {
  const char* name;
  const Kernels& (*kernels)();
};

// Builds from the most capable down.
const std::vector<Build>& builds() {
  static const std::vector<Build> b = {
#ifdef TN_HAVE_AVX512
      {"AVX512", &AVX512::kernels},
#endif
#ifdef TN_HAVE_AVX2
      {"AVX2", &AVX2::kernels},
#endif
      {"DEFAULT", &DEFAULT::kernels},
  };
  return b;
}

// Index in builds() of the best build the CPU runs.
size_t best_supported() {
  const std::string cpu = at::get_cpu_capability();
  const auto& b = builds();
  for (size_t i = 0; i < b.size(); ++i) {
    const std::string name = b[i].name;
    if (name == "DEFAULT" || name == cpu || (name == "AVX2" && cpu == "AVX512")) return i;
  }
  return b.size() - 1;
}

std::string supported_list() {
  std::string s;
  for (size_t i = best_supported(); i < builds().size(); ++i) s += (s.empty() ? "" : ", ") + std::string(builds()[i].name);
  return s;
}

size_t lookup(const std::string& name) {
  const auto& b = builds();
  for (size_t i = best_supported(); i < b.size(); ++i)
    if (name == b[i].name) return i;
  TORCH_CHECK_VALUE(false, "taylornet: CPU capability: expected one of ", supported_list(),
                    " (what this CPU and build support), got '", name, "'");
  return 0;
}

// TAYLORNET_FUSED_MAX_DIM: unset, empty or "auto" for each build's default, else a d >= 0.
int64_t fused_max_dim_from_env() {
  const char* env = std::getenv("TAYLORNET_FUSED_MAX_DIM");
  if (env && std::string(env) == "auto") return kAutoFusedMaxDim;
  return env_count("TAYLORNET_FUSED_MAX_DIM", "'auto' or an integer d >= 0", kNoFusedLimit).value_or(kAutoFusedMaxDim);
}

std::atomic<int64_t>& fused_limit() {
  static std::atomic<int64_t> limit{fused_max_dim_from_env()};
  return limit;
}

std::atomic<size_t>& chosen() {
  static std::atomic<size_t> index = [] {
    const char* env = std::getenv("TAYLORNET_CPU_CAPABILITY");
    return env && *env ? lookup(env) : best_supported();
  }();
  return index;
}

}  // namespace

const Kernels& kernels() { return builds()[chosen().load()].kernels(); }

std::string capability() { return builds()[chosen().load()].name; }

void set_capability(const std::string& name) { chosen().store(name.empty() ? best_supported() : lookup(name)); }

int64_t fused_max_dim_setting() { return fused_limit().load(); }

void set_fused_max_dim(int64_t limit) {
  TORCH_CHECK_VALUE(limit >= 0 || limit == kAutoFusedMaxDim, "taylornet: fused_max_dim: limit: expected a d >= 0 ",
                    "or ", kAutoFusedMaxDim, " (each build's default), got ", limit);
  fused_limit().store(limit);
}

int64_t fused_max_dim() { return kernels().build_fused_max_dim(fused_limit().load()); }

}  // namespace tn::cpu
