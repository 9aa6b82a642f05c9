// Picks the kernels compiled for the best instruction set this CPU has (ATEN_CPU_CAPABILITY, as
// reported by ATen, lowers the choice, e.g. to test the portable build).
#include <ATen/Version.h>

#include <string>

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

const Kernels& kernels() {
  static const Kernels& chosen = [] () -> const Kernels& {
    const std::string cap = at::get_cpu_capability();
#ifdef TN_HAVE_AVX512
    if (cap == "AVX512") return AVX512::kernels();
#endif
#ifdef TN_HAVE_AVX2
    if (cap == "AVX512" || cap == "AVX2") return AVX2::kernels();
#endif
    return DEFAULT::kernels();
  }();
  return chosen;
}

}  // namespace tn::cpu
