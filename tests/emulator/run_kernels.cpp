// Runs the CUDA launch layer (csrc/cuda/launch.cuh) and its kernels, SIMT and tensor-core, under the
// CPU emulator on random problems, op by op as the CUDA implementation calls them, and checks every
// output against sums of the float64 epilogue over the same (rounded) inputs. The epilogue's math
// is covered by the CPU tests; this checks what only the CUDA code does: problem set-up, the plan's
// tables, kernel choice, tiles and their edges, shared-memory staging, fragment use, split
// reductions, the reductions' terms for every needs-mask, dA = dA0 + 2 A dA1, the output casts,
// signs, biases and scales; and, host-side, the kernel choice and the messages of launch failures.
//
//   run_kernels [prefix] [--small | --random K]
//     checks the cases whose name starts with prefix (e.g. bf16/mma, host/), one line each: the fixed
//     cases, two small ones (--small), or K seeded random ones (--random); exit status 1 if any fails
#include "runtime.h"
#include "mma.h"
#include "wgmma.h"

#include "cuda/launch.cuh"
#include "cuda/wgmma_kernels.cuh"

namespace tn::cuda {  // the layer for every type, as the taylor_<dtype>*.cu instantiate it
TN_INSTANTIATE_CUDA(double)
TN_INSTANTIATE_CUDA(float)
TN_INSTANTIATE_CUDA(__half)
TN_INSTANTIATE_CUDA(__nv_bfloat16)
TN_INSTANTIATE_WGMMA(__half)
TN_INSTANTIATE_WGMMA(__nv_bfloat16)
}  // namespace tn::cuda

#include <algorithm>
#include <limits>
#include <random>
#include <string>

namespace {

using namespace tn;
using namespace tn::cuda;

struct Shape {
  int64_t n, d, m, c;
};

enum class SignSource { kNone, kPhilox, kTensor };

struct Config {
  Act act;
  std::vector<int64_t> orders;
  bool exact, bias;
  SignSource signs;
  bool moments;
  int sms;             // the emulated GPU's SM count: how far the inner loops are split
  bool deterministic;  // no splits at all
  bool generic = false;  // the tensor-core kernels' generic epilogue even where a specialised one exists
  int64_t smem = 0;      // the emulated GPU's shared memory per block (0: an H100/H200's)
};

// Shared memory per block (cudaDevAttrMaxSharedMemoryPerBlockOptin) of sm_90 and sm_80 GPUs; and
// a small one that holds one column tile of accumulators at a time (several column groups, and
// for some paths the terms of a reduction one launch each, on small shapes).
constexpr int64_t kSmemSm90 = 232448, kSmemSm80 = 166912, kSmemTight = 70000;

int failures = 0, checks = 0;

template <typename T>
const char* type_name() {
  if constexpr (std::is_same_v<T, double>) return "f64";
  if constexpr (std::is_same_v<T, float>) return "f32";
  if constexpr (std::is_same_v<T, __half>) return "f16";
  return "bf16";
}

template <typename T>
T from_double(double v) {
  if constexpr (std::is_same_v<T, __half>) return __double2half(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __double2bfloat16(v);
  else return static_cast<T>(v);
}
template <typename T>
double to_double(T v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else return static_cast<double>(v);
}

// A tensor in the kernel's storage type and the same values in double.
template <typename T>
struct Data {
  std::vector<T> t;
  std::vector<double> v;
  Data() = default;
  Data(size_t size, std::mt19937_64& rng, double sd) : t(size), v(size) {
    std::normal_distribution<double> g(0.0, sd);
    for (size_t i = 0; i < size; ++i) {
      t[i] = from_double<T>(g(rng));
      v[i] = to_double(t[i]);
    }
  }
};

// The largest finite value of T.
template <typename T>
double max_finite() {
  if constexpr (std::is_same_v<T, __half>) return 65504.0;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return 3.3895313892515355e38;
  else return static_cast<double>(std::numeric_limits<T>::max());
}

// max |got - want| over the largest magnitude: of the sums of the terms' magnitudes (`mag`), the
// scale of a sum's rounding error however much its terms cancel. An infinity is right only where
// the exact value lies past T's range (less the checks' 3 % tolerance), with its sign: float16
// outputs of exp's moments reach that on small problems.
template <typename T>
double max_rel_err(const std::vector<T>& got, const std::vector<double>& want, const std::vector<double>& mag) {
  double err = 0, scale = 1e-300;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = to_double(got[i]);
    if (std::isinf(g) && std::abs(want[i]) > 0.97 * max_finite<T>() && (g > 0) == (want[i] > 0)) continue;
    if (!std::isfinite(g)) return INFINITY;
    err = std::max(err, std::abs(g - want[i]));
    scale = std::max(scale, std::abs(mag[i]));
  }
  return err / scale;
}

bool report(const std::string& what, double err, double tol) {
  ++checks;
  const bool ok = err <= tol;
  if (!ok) ++failures;
  std::printf("%s %-84s rel.err %.2e (tol %.0e)\n", ok ? "ok  " : "FAIL", what.c_str(), err, tol);
  return ok;
}

void expect(const std::string& what, bool ok, const std::string& detail = "") {
  ++checks;
  if (!ok) ++failures;
  std::printf("%s %s%s\n", ok ? "ok  " : "FAIL", what.c_str(), ok || detail.empty() ? "" : (": " + detail).c_str());
}

std::string orders_text(const std::vector<int64_t>& orders) {
  std::string t;
  for (auto k : orders) t += (t.empty() ? "" : ",") + std::to_string(k);
  return "{" + t + "}";
}

// Device memory of the emulated GPU is host memory; exact sizes, so that AddressSanitizer sees
// every access past a workspace buffer.
struct HostWorkspace final : Workspace {
  std::vector<std::unique_ptr<char[]>> blocks;
  void* allocate(size_t bytes) override {
    blocks.emplace_back(new char[bytes]);
    std::memset(blocks.back().get(), 0x7f, bytes);  // garbage: the layer must zero what it sums into
    return blocks.back().get();
  }
};

// The gradients of the backward ops in the op order x, w0, w, a, b0, b.
enum Grad { kX = 0, kW0, kW, kA, kB0, kB, kNumGrads };
const char* const kGradNames[kNumGrads] = {"dX", "dW0", "dW", "dA", "db0", "db"};

std::string mask_text(unsigned mask) {
  std::string t;
  for (int g = 0; g < kNumGrads; ++g)
    if (mask >> g & 1) t += (t.empty() ? "" : ",") + std::string(kGradNames[g]);
  return "{" + t + "}";
}

template <typename T>
struct Case {
  using Acc = acc_t<T>;
  Shape sh;
  Config cf;
  Mainloop path;
  bool request_auto = false;  // TAYLORNET_CUDA_MAINLOOP=auto on the path's GPU and code, not the path itself
  bool overlap = true;        // TAYLORNET_CUDA_OVERLAP: the wgmma reductions' overlap kernels where they fit
  bool pingpong = false;      // TAYLORNET_CUDA_PINGPONG: the wgmma features forward's ping-pong kernel
  bool tc;
  Plan plan;  // with d/dz0, for the reference
  std::vector<double> coef64;
  Data<T> x, w0, w, a, b0, b, gout[2], grad, signs;
  Problem<double> pd;  // the inputs in double, as the kernels' products read them, for the reference
  std::vector<double> xr, w0r, wr;  // x, w0, w as the products read them (TF32: rounded)
  std::string name;
  uint64_t seed;

  // v as a tensor-core operand: rounded to the input type, or to TF32 for float32 (the identity for
  // the SIMT path). The reference rounds where the kernel does, so that tolerances test the
  // kernel's indexing and sums rather than the input type's range and precision.
  double operand(double v) const {
    if (!tc) return v;
    if constexpr (std::is_same_v<T, float>) return nvcuda::wmma::__float_to_tf32(static_cast<float>(v));
    else return to_double(from_double<T>(static_cast<float>(v)));
  }

  Case(Shape s, Config c, Mainloop ml, uint64_t sd)
      : sh(s), cf(c), path(ml), tc(ml == Mainloop::kMma || ml == Mainloop::kWmma || ml == Mainloop::kWgmma), plan(c.act, c.orders, c.exact, true), seed(sd) {
    std::mt19937_64 rng(sd);
    const double rd = 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(s.d, 1)));
    x = Data<T>(s.n * s.d, rng, 1.0);
    w0 = Data<T>(s.m * s.d, rng, rd);
    w = Data<T>(s.m * s.d, rng, 0.3 * rd);
    a = Data<T>(s.c * s.m, rng, 1.0);
    b0 = Data<T>(s.m, rng, 0.5);
    b = Data<T>(s.m, rng, 0.3);
    for (auto& g : gout) g = Data<T>(s.n * s.c, rng, 1.0);
    grad = Data<T>(s.n * s.m, rng, 1.0);
    signs = Data<T>(s.m, rng, 1.0);
    for (int64_t r = 0; r < s.m; ++r) {
      signs.v[r] = signs.v[r] < 0 ? -1.0 : 1.0;
      signs.t[r] = from_double<T>(signs.v[r]);
    }
    coef64 = plan.coef;
    auto rounded = [&](const std::vector<double>& v) {
      std::vector<double> r(v.size());
      for (size_t k = 0; k < v.size(); ++k) r[k] = operand(v[k]);
      return r;
    };
    xr = rounded(x.v);
    w0r = rounded(w0.v);
    wr = rounded(w.v);
    pd.x = xr.data();
    pd.w0 = w0r.data();
    pd.w = wr.data();
    pd.a = a.v.data();
    pd.b0 = cf.bias ? b0.v.data() : nullptr;
    pd.b = cf.bias ? b.v.data() : nullptr;
    pd.signs = cf.signs == SignSource::kTensor ? signs.v.data() : nullptr;
    pd.philox = cf.signs == SignSource::kPhilox;
    pd.seed = kSeed;
    pd.offset = kOffset;
    pd.first = kFirst;
    pd.n = s.n;
    pd.d = s.d;
    pd.m = s.m;
    pd.c = s.c;
    pd.moments = cf.moments;
    pd.scale[0] = scale();
    pd.scale[1] = scale() * scale();
    pd.gout[0] = gout[0].v.data();
    pd.gout[1] = gout[1].v.data();
    const char* mode = ml == Mainloop::kWgmma ? "/wgmma"
                       : ml == Mainloop::kMma ? "/mma"
                       : ml == Mainloop::kWmma ? "/wmma"
                                               : "/simt";
    name = std::string(type_name<T>()) + mode + " n=" + std::to_string(s.n) + " d=" + std::to_string(s.d) +
           " m=" + std::to_string(s.m) + " c=" + std::to_string(s.c) + " " + kActNames[static_cast<int>(c.act)] +
           (c.exact ? " exact" : " K=" + orders_text(c.orders)) + (c.moments ? " moments" : "") +
           (c.signs == SignSource::kPhilox ? " philox-signs" : c.signs == SignSource::kTensor ? " sign-tensor" : "") +
           (c.bias ? " bias" : "") + (c.deterministic ? " deterministic" : " sms=" + std::to_string(c.sms)) +
           (!tc                                                    ? ""
            : c.generic || specialised_epilogue(plan.series) < 0 ? " generic-epilogue"
                                                                   : " specialised-epilogue");
  }

  static constexpr uint64_t kSeed = 0x0DDBA11, kOffset = 7, kFirst = 3;
  double scale() const { return 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(sh.m, 1))); }

  // The operands as the CUDA implementation hands them to the layer.
  Operands operands(const Plan& p, bool features) const {
    Operands op;
    op.dtype = dtype_of<T>();
    op.x = x.t.data();
    op.w0 = w0.t.data();
    op.w = w.t.data();
    op.b0 = cf.bias ? b0.t.data() : nullptr;
    op.b = cf.bias ? b.t.data() : nullptr;
    op.a = features ? nullptr : a.t.data();
    op.signs = cf.signs == SignSource::kTensor ? signs.t.data() : nullptr;
    op.philox = cf.signs == SignSource::kPhilox;
    op.seed = kSeed;
    op.offset = kOffset;
    op.first = kFirst;
    op.n = sh.n;
    op.d = sh.d;
    op.m = sh.m;
    op.c = features ? 0 : sh.c;
    op.scale = features ? 1.0 : scale();
    op.plan = &p;
    return op;
  }

  Context context(Workspace& ws) const {
    Context ctx;
    ctx.device.arch = 90;
    ctx.device.sms = cf.sms;
    ctx.device.smem_optin = cf.smem ? cf.smem : kSmemSm90;
    ctx.allow_tf32 = tc;
    ctx.deterministic = cf.deterministic;
    ctx.requested = request_auto ? Mainloop::kAuto : path;
    ctx.generic_epilogue = cf.generic;
    ctx.overlap_stage1 = overlap;
    ctx.pingpong = pingpong;
    ctx.workspace = &ws;
    return ctx;
  }

  // Reference fields at (i, r): z0 and u from the double inputs, then the scalar epilogue of
  // series.h in double, written out here rather than through the kernels' N-wide fields_at.
  void fields(int64_t i, int64_t r, double (&v)[4]) const {
    using M = DeviceMath<double>;
    double z = 0, u = 0;
    for (int64_t k = 0; k < sh.d; ++k) {
      z += pd.x[i * sh.d + k] * pd.w0[r * sh.d + k];
      u += pd.x[i * sh.d + k] * pd.w[r * sh.d + k];
    }
    if (pd.b0) z += pd.b0[r];
    if (pd.b) u += pd.b[r];
    const double s = neuron_sign_of(pd, r);
    double g0 = 0, g1 = 0;
    if (pd.gelem) {
      g0 = pd.gelem[i * sh.m + r];
    } else {
      for (int64_t j = 0; j < sh.c; ++j) {
        const double aj = pd.a[j * sh.m + r];
        g0 += pd.gout[0][i * sh.c + j] * aj;
        g1 += pd.gout[1][i * sh.c + j] * aj * aj;
      }
      g0 *= pd.scale[0];
      g1 *= pd.scale[1];
    }
    const PlanView<double> pv = plan.view(coef64.data());
    if (pd.moments) {
      const Moments<double> mo = moments<double, M>(pv, z, u, true, true);
      v[kPhi0] = mo.e.value;
      v[kPhi1] = mo.o.value * mo.o.value;
      v[kGradU] = g0 * mo.e.du + 2 * g1 * mo.o.value * mo.o.du;
      v[kGradZ] = g0 * mo.e.dz + 2 * g1 * mo.o.value * mo.o.dz;
    } else {
      const Grads<double> d = feature_grads<double, M>(pv, z, u, s, true, true);
      v[kPhi0] = d.value;
      v[kPhi1] = 0;
      v[kGradU] = g0 * d.du;
      v[kGradZ] = g0 * d.dz;
    }
  }
};

template <typename T>
double tolerance(bool tc) {
  if constexpr (std::is_same_v<T, double>) return 1e-11;
  if (std::is_same_v<T, float> && !tc) return 2e-5;
  return 3e-2;  // fields rounded to 16-bit or TF32 operands
}

// The reference fields of a case's current problem, as stage 2 of the kernels multiplies them:
// rounded to the input type on tensor cores, float16 tiles scaled by 2^e so that their largest
// magnitude lies in [2^14, 2^15) before rounding.
template <typename T>
struct Reference {
  const Case<T>& cs;
  std::vector<double> F[4];
  std::vector<int> tile_exp[4];
  int64_t tiles_m;

  explicit Reference(const Case<T>& c) : cs(c) {
    const Shape s = cs.sh;
    for (auto& f : F) f.assign(s.n * s.m, 0.0);
    for (int64_t i = 0; i < s.n; ++i)
      for (int64_t r = 0; r < s.m; ++r) {
        double v[4];
        cs.fields(i, r, v);
        for (int q = 0; q < 4; ++q) F[q][i * s.m + r] = v[q];
      }
    tiles_m = ceil_div(s.m, kTcTile);
    for (int q = 0; q < 4; ++q) {
      std::vector<double> mx(ceil_div(s.n, kTcTile) * tiles_m, 0.0);
      for (int64_t i = 0; i < s.n; ++i)
        for (int64_t r = 0; r < s.m; ++r) {
          double& t = mx[(i / kTcTile) * tiles_m + r / kTcTile];
          t = std::max(t, std::abs(static_cast<double>(static_cast<float>(F[q][i * s.m + r]))));
        }
      for (double v : mx) {
        int k = 0;
        std::frexp(v, &k);
        tile_exp[q].push_back(v > 0 && std::isfinite(v) ? std::clamp(15 - k, -120, 120) : 0);
      }
    }
  }

  // The features (field 0, what the forward writes) and their magnitudes, a forward's yardstick.
  const std::vector<double>& features() const { return F[kPhi0]; }
  std::vector<double> feature_magnitudes() const {
    std::vector<double> mag(F[kPhi0].size());
    for (size_t e = 0; e < mag.size(); ++e) mag[e] = std::abs(F[kPhi0][e]);
    return mag;
  }

  double field(int q, int64_t i, int64_t r) const {
    const double f = F[q][i * cs.sh.m + r];
    if (!cs.tc || !std::is_same_v<T, __half>) return cs.operand(f);
    const int e = tile_exp[q][(i / kTcTile) * tiles_m + r / kTcTile];
    return std::ldexp(cs.operand(std::ldexp(f, e)), -e);
  }

  // A reduction of field q and its terms' magnitudes: over neurons, out[i][col] += scale *
  // sum_r field(q, i, r) factor(r, col); over samples, out[r][col] += scale * sum_i field(q, i, r)
  // factor(i, col).
  template <typename Factor>
  void sum(int q, bool over_neurons, int64_t ncols, double scale, Factor&& factor, std::vector<double>& out,
           std::vector<double>& mag) const {
    const int64_t outer = over_neurons ? cs.sh.n : cs.sh.m, inner = over_neurons ? cs.sh.m : cs.sh.n;
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t col = 0; col < ncols; ++col) {
        double acc = 0, abs_acc = 0;
        for (int64_t k = 0; k < inner; ++k) {
          const double t = (over_neurons ? field(q, o, k) : field(q, k, o)) * cs.operand(factor(k, col));
          acc += t;
          abs_acc += std::abs(t);
        }
        out[o * ncols + col] += scale * acc;
        mag[o * ncols + col] += std::abs(scale) * abs_acc;
      }
  }
  template <typename Z>
  void neuron_sum(int q, int64_t ncols, double scale, Z&& z, std::vector<double>& out, std::vector<double>& mag) const {
    sum(q, true, ncols, scale, z, out, mag);
  }
  template <typename Y>
  void sample_sum(int q, int64_t ncols, double scale, Y&& y, std::vector<double>& out, std::vector<double>& mag) const {
    sum(q, false, ncols, scale, y, out, mag);
  }
};

template <typename T>
std::vector<T> garbage(size_t size) {  // outputs start as garbage: the layer writes every element
  return std::vector<T>(size, from_double<T>(12345.0));
}

// Runs one op through the layer, turning a layer error into a failed check.
template <typename F>
bool run_op(const std::string& what, F&& f) {
  try {
    f();
    return true;
  } catch (const Error& e) {
    expect(what, false, e.what());
    return false;
  }
}

// Whether a kernel whose name starts with `kernel` ran since launch log entry `from`.
bool ran_since(size_t from, const std::string& kernel) {
  const auto& log = tn_emu::binary.recomputes;
  return std::any_of(log.begin() + from, log.end(), [&](const auto& l) { return l.first.rfind(kernel, 0) == 0; });
}

// A kernel whose name starts with `kernel` ran since launch log entry `from`.
void expect_ran(const std::string& what, size_t from, const char* kernel) {
  expect(what + " ran " + kernel, ran_since(from, kernel));
}

// The same, on the wgmma path only (requested, not `auto`); `kernel` may name a family's prefix
// ("sample_sum_wgmma": the plain and the overlap kernels).
template <typename T>
void expect_wgmma_kernel(const Case<T>& cs, const std::string& what, size_t from, const char* kernel) {
  if (cs.path == Mainloop::kWgmma && !cs.request_auto) expect_ran(what, from, kernel);
}

// On the wgmma path (requested), the reductions of `family` ("neuron_sum", "sample_sum") ran on the
// threads' copies (the *_wgmma_fallback kernels) exactly where x and the weights have no tensor maps:
// copies turned off, d = 0 or d not a multiple of 8 (every operand here is 16-byte aligned).
template <typename T>
void expect_wgmma_copies(const Case<T>& cs, const std::string& what, size_t from, const std::string& family,
                         bool tensor_copies) {
  if (cs.path != Mainloop::kWgmma || cs.request_auto) return;
  const bool fallback = !(tensor_copies && cs.sh.d > 0 && cs.sh.d % 8 == 0);
  const std::string name = family + "_wgmma_fallback_kernel";
  expect(what + (fallback ? " ran " : " did not run ") + name, ran_since(from, name) == fallback);
}

// without_maps: on wgmma, the features a second time without tensor maps (its cp.async staging)
template <typename T>
void check_forward(Case<T>& cs, bool without_maps = true) {
  const Shape s = cs.sh;
  const double tol = tolerance<T>(cs.tc);
  const Plan plan(cs.cf.act, cs.cf.orders, cs.cf.exact, false);  // as prepare() builds it for a forward
  HostWorkspace ws;
  const Context ctx = cs.context(ws);
  const Reference<T> ref(cs);
  if (!cs.cf.moments) {
    // wgmma: with the copy engine's tensor maps where d allows them, and again without (cp.async)
    for (const bool maps : {true, false}) {
      if (!maps && (!without_maps || cs.path != Mainloop::kWgmma || s.d % 8 != 0)) break;
      Context with = ctx;
      with.tensor_copies = maps;
      const std::string what = cs.name + (maps ? " features" : " features (no tensor maps)");
      std::vector<T> out = garbage<T>(s.n * s.m);
      const size_t from = tn_emu::binary.recomputes.size();
      if (!run_op(what, [&] { features_forward(cs.operands(plan, true), out.data(), with); })) continue;
      expect_wgmma_kernel(cs, what, from, "features_forward_wgmma_kernel");
      report(what, max_rel_err(out, ref.features(), ref.feature_magnitudes()), tol);
    }
  }
  std::vector<T> out = garbage<T>(s.n * s.c), var = garbage<T>(s.n * s.c);
  const std::string what = cs.name + (cs.cf.moments ? " moments" : " net");
  const size_t from = tn_emu::binary.recomputes.size();
  if (!run_op(what, [&] { readout(cs.operands(plan, false), cs.cf.moments, out.data(), var.data(), ctx); })) return;
  expect_wgmma_kernel(cs, what, from, "neuron_sum_wgmma");
  if (s.n > 0 && s.m > 0 && s.c > 0) expect_wgmma_copies(cs, what, from, "neuron_sum", ctx.tensor_copies);
  const Case<T>& c = cs;
  auto a_at = [&](int64_t r, int64_t j) { return c.a.v[j * s.m + r]; };
  auto a2_at = [&](int64_t r, int64_t j) { return c.a.v[j * s.m + r] * c.a.v[j * s.m + r]; };
  for (int t = 0; t < (cs.cf.moments ? 2 : 1); ++t) {
    std::vector<double> want(s.n * s.c, 0.0), mag(want.size(), 0.0);
    if (t == 0) ref.neuron_sum(kPhi0, s.c, cs.pd.scale[0], a_at, want, mag);
    else ref.neuron_sum(kPhi1, s.c, cs.pd.scale[1], a2_at, want, mag);
    report(what + (t == 0 ? " readout" : " variance"), max_rel_err(t == 0 ? out : var, want, mag), tol);
  }
}

// One backward call with the gradients of `mask` (bits in the op order of Grad), checked output by
// output; the features op when `features` (its own cotangent, no dA). tensor_copies: false stages
// wgmma's ring with cp.async.
template <typename T>
void check_backward(Case<T>& cs, bool features, unsigned mask, const std::string& label, bool tensor_copies = true) {
  const Shape s = cs.sh;
  const double tol = tolerance<T>(cs.tc);
  if (!cs.cf.bias) mask &= ~((1u << kB0) | (1u << kB));  // prepare() drops the biases' needs
  if (features) mask &= ~(1u << kA);
  const bool dz = mask & ((1u << kX) | (1u << kW0) | (1u << kB0));
  const Plan plan(cs.cf.act, cs.cf.orders, cs.cf.exact, dz);
  HostWorkspace ws;
  Context ctx = cs.context(ws);
  ctx.tensor_copies = tensor_copies;
  const int64_t sizes[kNumGrads] = {s.n * s.d, s.m * s.d, s.m * s.d, s.c * s.m, s.m, s.m};
  std::vector<T> got[kNumGrads];
  GradOutputs out;
  void** slots[kNumGrads] = {&out.x, &out.w0, &out.w, &out.a, &out.b0, &out.b};
  for (int g = 0; g < kNumGrads; ++g)
    if (mask >> g & 1) {
      got[g] = garbage<T>(sizes[g]);
      *slots[g] = got[g].data();
    }
  const std::string what = cs.name + " " + label + mask_text(mask) + (tensor_copies ? "" : " (no tensor maps)");
  const size_t from = tn_emu::binary.recomputes.size();
  if (features) {
    cs.pd.gelem = cs.grad.v.data();
    cs.pd.scale[0] = cs.pd.scale[1] = 1;  // as the layer sets them: gelem carries no scale
    if (!run_op(what, [&] { features_backward(cs.operands(plan, true), cs.grad.t.data(), out, ctx); })) return;
  } else {
    const void* gout[2] = {cs.gout[0].t.data(), cs.cf.moments ? cs.gout[1].t.data() : nullptr};
    if (!run_op(what, [&] { net_backward(cs.operands(plan, false), cs.cf.moments, gout, out, ctx); })) return;
  }
  // (d = 0: no dX, dW0 or dW to compute)
  const unsigned sums = (1u << kA) | (1u << kB0) | (1u << kB) | (s.d > 0 ? (1u << kW0) | (1u << kW) : 0u);
  if (s.n > 0 && s.m > 0 && (mask & sums)) expect_wgmma_kernel(cs, what, from, "sample_sum_wgmma");
  if (s.n > 0 && s.m > 0 && s.d > 0 && (mask >> kX & 1)) expect_wgmma_kernel(cs, what, from, "neuron_sum_wgmma");
  if (s.n > 0 && s.m > 0 && (mask & sums)) expect_wgmma_copies(cs, what, from, "sample_sum", tensor_copies);
  if (s.n > 0 && s.m > 0 && s.d > 0 && (mask >> kX & 1))
    expect_wgmma_copies(cs, what, from, "neuron_sum", tensor_copies);
  const Reference<T> ref(cs);
  cs.pd.gelem = nullptr;
  cs.pd.scale[0] = cs.scale();
  cs.pd.scale[1] = cs.scale() * cs.scale();
  const Case<T>& c = cs;
  auto x_at = [&](int64_t i, int64_t k) { return c.x.v[i * s.d + k]; };
  auto one = [](int64_t, int64_t) { return 1.0; };
  for (int g = 0; g < kNumGrads; ++g) {
    if (!(mask >> g & 1)) continue;
    std::vector<double> want(sizes[g], 0.0), mag(want.size(), 0.0);
    switch (g) {
      case kX:
        ref.neuron_sum(kGradU, s.d, 1.0, [&](int64_t r, int64_t k) { return c.w.v[r * s.d + k]; }, want, mag);
        ref.neuron_sum(kGradZ, s.d, 1.0, [&](int64_t r, int64_t k) { return c.w0.v[r * s.d + k]; }, want, mag);
        break;
      case kW0: ref.sample_sum(kGradZ, s.d, 1.0, x_at, want, mag); break;
      case kW: ref.sample_sum(kGradU, s.d, 1.0, x_at, want, mag); break;
      case kB0: ref.sample_sum(kGradZ, 1, 1.0, one, want, mag); break;
      case kB: ref.sample_sum(kGradU, 1, 1.0, one, want, mag); break;
      case kA: {  // dA (c, m) = (m, c) sums transposed, + 2 A dA1 for the moments
        std::vector<double> t0(s.m * s.c, 0.0), m0(t0.size(), 0.0), t1(t0.size(), 0.0), m1(t0.size(), 0.0);
        ref.sample_sum(kPhi0, s.c, c.pd.scale[0], [&](int64_t i, int64_t j) { return c.gout[0].v[i * s.c + j]; }, t0, m0);
        if (cs.cf.moments)
          ref.sample_sum(kPhi1, s.c, c.pd.scale[1], [&](int64_t i, int64_t j) { return c.gout[1].v[i * s.c + j]; }, t1,
                         m1);
        for (int64_t j = 0; j < s.c; ++j)
          for (int64_t r = 0; r < s.m; ++r) {
            const double aj = c.a.v[j * s.m + r];
            want[j * s.m + r] = t0[r * s.c + j] + 2 * aj * t1[r * s.c + j];
            mag[j * s.m + r] = m0[r * s.c + j] + 2 * std::abs(aj) * m1[r * s.c + j];
          }
        break;
      }
    }
    report(what + " " + kGradNames[g], max_rel_err(got[g], want, mag), tol);
  }
}

constexpr unsigned kAllNet = (1u << kNumGrads) - 1;
constexpr unsigned kAllFeatures = kAllNet & ~(1u << kA);

template <typename T>
void run_case(Case<T>& cs, bool extra_masks) {
  check_forward(cs);
  check_backward(cs, false, kAllNet, "");
  // wgmma: the reductions again with the ring staged by cp.async (the tensor maps need d % 8 == 0)
  if (cs.path == Mainloop::kWgmma && cs.sh.d % 8 == 0) check_backward(cs, false, kAllNet, "", false);
  // A second needs-mask per case, drawn from the seed: every reduction's term layout over the matrix.
  if (extra_masks) check_backward(cs, false, static_cast<unsigned>(cs.seed * 37 % 63) + 1, "");
  if (!cs.cf.moments) {
    check_backward(cs, true, kAllFeatures, "features-bwd ");
    if (extra_masks) check_backward(cs, true, static_cast<unsigned>(cs.seed * 11 % 31) + 1, "features-bwd ");
  }
}

template <typename T>
void run(Shape s, Config c, Mainloop ml, uint64_t seed, const std::string& filter, bool extra_masks = true) {
  Case<T> cs(s, c, ml, seed);
  if (!filter.empty() && cs.name.rfind(filter, 0) != 0) return;  // names start with the path
  run_case(cs, extra_masks);
}

// Every needs-mask of every op on one small problem (one tile): each backward result is the layer's
// assembly of terms for exactly that mask.
// On tensor cores, gelu {1, 2} takes the generic epilogue and tanh {0, 1, 2} a specialised one.
template <typename T>
void run_masks(Mainloop ml, const std::string& filter) {
  const Shape s{5, 3, 7, 2};
  for (const Act act : {Act::kGelu, Act::kTanh})
  for (bool moments : {false, true}) {
    const Config c{act, act == Act::kGelu ? std::vector<int64_t>{1, 2} : std::vector<int64_t>{0, 1, 2}, false, true,
                   SignSource::kPhilox, moments, 1, false};
    Case<T> cs(s, c, ml, moments ? 91 : 90);
    cs.name += " masks";
    if (!filter.empty() && cs.name.rfind(filter, 0) != 0) return;
    for (unsigned mask = 1; mask <= kAllNet; ++mask) check_backward(cs, false, mask, "");
    if (!moments)
      for (unsigned mask = 1; mask <= kAllFeatures; ++mask)
        if (!(mask >> kA & 1)) check_backward(cs, true, mask, "features-bwd ");
  }
}

// Every specialised epilogue of the tensor-core kernels (kSpecialised), with and without the sign
// moments, on one shape off the tile edges: forward, backward and the features' backward.
template <typename T>
void run_specialised(Mainloop ml, const std::string& filter) {
  for (int k = 0; k < kNumSpecialised; ++k)
    for (bool moments : {false, true}) {
      const Series& sr = kSpecialised[k];
      std::vector<int64_t> orders;
      for (int q = 0; q <= kMaxOrder; ++q)
        if (sr.orders >> q & 1u) orders.push_back(q);
      if (orders.empty()) orders = {1};  // "exact" ignores them
      const Config c{sr.act, orders, sr.exact, true, SignSource::kPhilox, moments, 2, false};
      run<T>(Shape{19, 40, 70, 3}, c, ml, 500 + 2 * k + moments, filter);
    }
}

// wgmma's ring across a reduction block's inner tiles: without splits (deterministic), neuron_sum
// takes 4 neuron tiles and sample_sum 5 sample tiles per block, 2 chunks each (d = 72, a multiple
// of 8: tensor copies, then cp.async), so the ring wraps within and across tiles and every stage's
// barriers run through several phases.
template <typename T>
void run_ring(Mainloop ml, const std::string& filter) {
  const Config c{Act::kTanh, {0, 1, 2}, false, true, SignSource::kPhilox, false, 1, true};
  run<T>(Shape{260, 72, 200, 2}, c, ml, 77, filter, false);
}

// The wgmma reductions' overlap kernels (each tile's first wgmmas under the previous tile's epilogue
// and stage 2), on tiles of 2 k chunks (d = 72: the whole of stage 1 issued ahead), 4 (d = 200: 2
// ahead, 2 after) and 1 (d = 64: the copies run up to 3 tiles ahead), without splits so that a block
// takes several tiles: the readout and every gradient checked against the reference, the overlap
// kernels having run; then with TAYLORNET_CUDA_OVERLAP=0, the plain ones, which must issue as many
// wgmmas (a tile's chunks issued ahead and then again would give the same sums at twice the work);
// and the overlap kernels once more with the copy engine's copies landing as they are issued.
template <typename T>
void run_overlap(const std::string& filter) {
  const Config c{Act::kTanh, {0, 1, 2}, false, true, SignSource::kPhilox, false, 1, true};
  for (const Shape& s : {Shape{260, 72, 200, 2}, Shape{150, 200, 140, 2}, Shape{200, 64, 200, 2}}) {
    long issued[2][2] = {};  // [overlap][forward, backward]
    bool ran[2] = {};
    std::string name;
    for (const bool overlap : {true, false}) {
      Case<T> cs(s, c, Mainloop::kWgmma, 91 + s.d);
      cs.overlap = overlap;
      cs.name = "overlap/" + cs.name + (overlap ? "" : " TAYLORNET_CUDA_OVERLAP=0");
      if (!filter.empty() && cs.name.rfind(filter, 0) != 0) continue;
      const char* sample = overlap ? "sample_sum_wgmma_overlap_kernel" : "sample_sum_wgmma_kernel";
      const char* neuron = overlap ? "neuron_sum_wgmma_overlap_kernel" : "neuron_sum_wgmma_kernel";
      size_t from = tn_emu::binary.recomputes.size();
      long before = tn_emu::wgmmas_issued;
      check_forward(cs, false);
      issued[overlap][0] = tn_emu::wgmmas_issued - before;
      expect_ran(cs.name + " forward", from, neuron);
      from = tn_emu::binary.recomputes.size();
      before = tn_emu::wgmmas_issued;
      check_backward(cs, false, kAllNet, "");
      issued[overlap][1] = tn_emu::wgmmas_issued - before;
      expect_ran(cs.name + " backward", from, sample);
      expect_ran(cs.name + " backward dX", from, neuron);
      name = cs.name;
      ran[overlap] = true;
    }
    if (!ran[0] || !ran[1]) continue;  // filtered out
    for (int k = 0; k < 2; ++k)
      expect(name + (k ? " backward" : " forward") + ": as many wgmmas with the overlap kernels as without",
             issued[1][k] == issued[0][k], std::to_string(issued[1][k]) + " vs " + std::to_string(issued[0][k]));
    // the overlap kernels again with the copies landing as they are issued (tma.h): a stage marked
    // empty while wgmmas on it are pending is then overwritten before their wait
    Case<T> cs(s, c, Mainloop::kWgmma, 91 + s.d);
    cs.name = "overlap/" + cs.name + " copies-land-at-issue";
    tn_emu::tma::copies_land_at_issue = true;
    check_forward(cs, false);
    check_backward(cs, false, kAllNet, "");
    tn_emu::tma::copies_land_at_issue = false;
  }
}

// The warp-specialised ping-pong features forward (TAYLORNET_CUDA_PINGPONG=1, 384 threads: the
// copy engine's producer and two consumers taking a block's sample tiles in turn). Tiles of 1 k
// chunk (d = 64), 2 (d = 72) and 4 (d = 200), the six-stage ring wrapping across tiles; runs of one
// tile (the second consumer idle), of an odd and an even count, and a short last run; every specialised
// epilogue and the generic one. Each against the reference and bit for bit against the plain wgmma
// kernel (the same wgmmas in the same order per column half, the same epilogue); and where x and
// the weights have no tensor maps the switch falls back to the plain kernel. The ping-pong runs twice:
// with the emulator's copies landing when waited for, and as they are issued (tma.h); and its
// consumers must commit their wgmmas in turns of whole tiles (the log of wgmma.h).
template <typename T>
void run_pingpong(const std::string& filter) {
  struct Run {
    Shape s;
    Config c;
  };
  std::vector<Run> runs;
  const Config tanh2{Act::kTanh, {2}, false, true, SignSource::kPhilox, false, 1, false};
  for (const Shape& s : {Shape{450, 64, 100, 1}, Shape{300, 72, 130, 1}, Shape{200, 200, 70, 1}, Shape{40, 16, 70, 1}})
    runs.push_back({s, tanh2});
  runs.push_back({Shape{450, 64, 100, 1}, Config{Act::kTanh, {2}, false, true, SignSource::kPhilox, false, 4, false}});
  for (int k = 0; k < kNumSpecialised; ++k) {
    const Series& sr = kSpecialised[k];
    std::vector<int64_t> orders;
    for (int q = 0; q <= kMaxOrder; ++q)
      if (sr.orders >> q & 1u) orders.push_back(q);
    if (orders.empty()) orders = {1};  // "exact" ignores them
    runs.push_back({Shape{150, 40, 70, 1}, Config{sr.act, orders, sr.exact, true, SignSource::kTensor, false, 1, false}});
  }
  runs.push_back({Shape{150, 40, 70, 1}, Config{Act::kTanh, {2}, false, true, SignSource::kPhilox, false, 1, false, true}});
  runs.push_back({Shape{150, 40, 70, 1}, Config{Act::kGelu, {1, 3}, false, false, SignSource::kNone, false, 1, false}});
  uint64_t seed = 700;
  for (const Run& rn : runs) {
    Case<T> cs(rn.s, rn.c, Mainloop::kWgmma, ++seed);
    cs.name = "pingpong/" + cs.name;
    if (!filter.empty() && cs.name.rfind(filter, 0) != 0) continue;
    const Plan plan(cs.cf.act, cs.cf.orders, cs.cf.exact, false);
    HostWorkspace ws;
    const Reference<T> ref(cs);
    const std::vector<double>& want = ref.features();
    const std::vector<double> mag = ref.feature_magnitudes();
    std::vector<T> plain = garbage<T>(want.size()), ping = garbage<T>(want.size());
    Context ctx = cs.context(ws);
    size_t from = tn_emu::binary.recomputes.size();
    if (!run_op(cs.name + " plain", [&] { features_forward(cs.operands(plan, true), plain.data(), ctx); })) continue;
    expect_ran(cs.name + " plain", from, "features_forward_wgmma_kernel");
    ctx.pingpong = true;
    for (const bool at_issue : {false, true}) {  // the copies land when waited for, or when issued
      tn_emu::tma::copies_land_at_issue = at_issue;
      const std::string what = cs.name + (at_issue ? " copies-land-at-issue" : "");
      from = tn_emu::binary.recomputes.size();
      tn_emu::commits.clear();
      tn_emu::log_commits = true;
      const bool ok = run_op(what, [&] { features_forward(cs.operands(plan, true), ping.data(), ctx); });
      tn_emu::tma::copies_land_at_issue = false;
      tn_emu::log_commits = false;
      if (!ok) continue;
      expect_ran(what, from, "features_forward_pingpong_kernel");
      long recomputed = 0;  // one pass over the n x m tiles
      for (size_t k = from; k < tn_emu::binary.recomputes.size(); ++k) recomputed += tn_emu::binary.recomputes[k].second;
      expect(what + ": one pass over the n x m tiles", recomputed == rn.s.n * rn.s.m,
             std::to_string(recomputed) + " elements recomputed");
      // The turns: per block, the commit groups (one per k chunk) come in whole tiles that alternate
      // between the consumers (warpgroups 1 and 2), starting with the first.
      const int64_t chunks = ceil_div(rn.s.d, int64_t{64});
      bool turns = true;
      std::string where;
      for (size_t k = 0, start = 0; k < tn_emu::commits.size(); ++k) {
        const tn_emu::Commit& cm = tn_emu::commits[k];
        const tn_emu::Commit& b0 = tn_emu::commits[start];
        if (cm.block.x != b0.block.x || cm.block.y != b0.block.y) start = k;  // the next block's first
        const int64_t tile = static_cast<int64_t>(k - start) / chunks;
        if (cm.warpgroup != 1 + tile % 2) {
          turns = false;
          where = "block " + std::to_string(cm.block.x) + "," + std::to_string(cm.block.y) + " commit " +
                  std::to_string(k - start) + " by warpgroup " + std::to_string(cm.warpgroup);
          break;
        }
      }
      expect(what + ": the consumers' wgmmas take turns tile by tile", turns, where);
      report(what, max_rel_err(ping, want, mag), tolerance<T>(true));
      expect(what + ": bit for bit the plain kernel's output",
             std::memcmp(ping.data(), plain.data(), ping.size() * sizeof(T)) == 0);
      ping = garbage<T>(want.size());
    }
    if (rn.s.d == 72) {  // the threads' copies: the plain kernel
      ctx.tensor_copies = false;
      std::vector<T> again = garbage<T>(want.size());
      from = tn_emu::binary.recomputes.size();
      if (!run_op(cs.name + " (no tensor maps)", [&] { features_forward(cs.operands(plan, true), again.data(), ctx); }))
        continue;
      expect_ran(cs.name + " (no tensor maps)", from, "features_forward_wgmma_kernel");
      report(cs.name + " (no tensor maps)", max_rel_err(again, want, mag), tolerance<T>(true));
    }
  }
}

// The device tanh/sech^2 (no tanh call: one exp, or a series near 0) against long double, over
// z in [-30, 30] and near 0, as the largest error in units of the type's epsilon.
template <typename A>
void check_tanh_sech2(const std::string& filter) {
  const std::string name = std::string(std::is_same_v<A, float> ? "f32" : "f64") + "/math";
  if (!filter.empty() && name.rfind(filter, 0) != 0) return;
  double worst_t = 0, worst_s = 0;
  for (int k = -300000; k <= 300000; ++k) {
    for (const long double z : {k * 1e-4L, k * 1e-9L}) {
      A t, s;
      DeviceMath<A>::tanh_sech2(static_cast<A>(z), t, s);
      const long double zz = static_cast<A>(z);
      const long double tt = std::tanh(zz), ss = 1.0L / (std::cosh(zz) * std::cosh(zz));
      if (tt != 0) worst_t = std::max(worst_t, static_cast<double>(std::abs((t - tt) / tt)));
      if (ss > 1e-30L) worst_s = std::max(worst_s, static_cast<double>(std::abs((s - ss) / ss)));
    }
  }
  // sin and cos (own reduction and polynomials, no library call): absolute error in epsilons, over
  // [-30, 30] finely and out to 1e6 coarsely
  double worst_sc = 0;
  for (int k = -300000; k <= 300000; ++k)
    for (const long double z : {k * 1e-4L, k * 3.3333L}) {
      const A zz = static_cast<A>(z);
      const long double zl = zz;
      worst_sc = std::max({worst_sc, static_cast<double>(std::abs(DeviceMath<A>::sin(zz) - std::sin(zl))),
                           static_cast<double>(std::abs(DeviceMath<A>::cos(zz) - std::cos(zl)))});
    }
  double worst_l = 0;  // log1p on (0, 1], softplus's argument
  for (int k = 1; k <= 1000000; ++k)
    for (const long double x : {k * 1e-6L, std::ldexp(1.0L, -k % 1000)}) {
      const A xx = static_cast<A>(x);
      const long double want = std::log1p(static_cast<long double>(xx));
      worst_l = std::max(worst_l, static_cast<double>(std::abs((DeviceMath<A>::log1p(xx) - want) / want)));
    }
  const double eps = std::numeric_limits<A>::epsilon();
  report(name + " log1p on (0, 1], relative error in epsilons", worst_l / eps, 4);
  report(name + " tanh, relative error in epsilons", worst_t / eps, 4);
  report(name + " sech^2, relative error in epsilons", worst_s / eps, 8);
  report(name + " sin, cos, absolute error in epsilons", worst_sc / eps, 2);
}

// The tensor-core epilogue's fast math (epilogue.cuh: FastFormulas, reduce_2pi) against long double,
// with the special function unit's error as the PTX ISA bounds it injected: 2^x within 2 units in
// the last place (relative 2^-22), 1/x within 1 (2^-23), sine and cosine on [-pi, pi] within 2^-21.41
// absolute; each formula is evaluated with every sign of those errors and the worst case is kept.
// Relative errors are judged where the exact value is a normal float (ex2.approx.ftz flushes below).
// The bound, 1e-5, is under 5 % of the rounding unit of float16 and TF32 (2^-11) and under 1.5 % of
// bfloat16's (2^-8), to which every field is rounded before stage 2.
void check_fast_math(const std::string& filter) {
  const std::string name = "f32/fastmath";
  if (!filter.empty() && name.rfind(filter, 0) != 0) return;
  using L = long double;
  const L e2 = std::ldexp(1.0L, -22), er = std::ldexp(1.0L, -23), es = std::pow(2.0L, -21.41L);
  const L tiny = std::numeric_limits<float>::min();
  double worst[6] = {};  // tanh, sech^2, sigmoid p, sigmoid q, exp, sin/cos (absolute)
  auto rel = [&](L got, L want) {
    return std::abs(want) < tiny ? 0.0 : static_cast<double>(std::abs((got - want) / want));
  };
  for (int sx = -1; sx <= 1; sx += 2)
    for (int sr = -1; sr <= 1; sr += 2) {
      auto ex2 = [&](float x) { return static_cast<float>(std::exp2(static_cast<L>(x)) * (1 + sx * e2)); };
      auto rcp = [&](float x) { return static_cast<float>((1 / static_cast<L>(x)) * (1 + sr * er)); };
      for (int k = -300000; k <= 300000; ++k)
        for (const L zl : {k * 1e-4L, k * 1e-9L}) {
          const float z = static_cast<float>(zl);
          const L zz = z;
          float t, sc, p, q;
          FastFormulas::tanh_sech2(z, t, sc, ex2, rcp);
          FastFormulas::sigmoid_pair(z, p, q, ex2, rcp);
          const L tt = std::tanh(zz), ss = 1 / (std::cosh(zz) * std::cosh(zz));
          const L pp = 1 / (1 + std::exp(-zz)), qq = 1 / (1 + std::exp(zz));
          worst[0] = std::max(worst[0], rel(t, tt));
          worst[1] = std::max(worst[1], rel(sc, ss));
          worst[2] = std::max(worst[2], rel(p, pp));
          worst[3] = std::max(worst[3], rel(q, qq));
        }
      for (int k = -870000; k <= 880000; ++k) {  // exp over float's normal range of results
        const float x = static_cast<float>(k * 1e-4L);
        worst[4] = std::max(worst[4], rel(FastFormulas::exp(x, ex2), std::exp(static_cast<L>(x))));
      }
    }
  for (int k = -1000000; k <= 1000000; ++k) {  // sin, cos of |z| <= 1000 after the reduction
    const float x = static_cast<float>(k * 1e-3L);
    const float r = reduce_2pi(x);
    const L d = std::max(std::abs(static_cast<L>(std::sin(static_cast<L>(r))) - std::sin(static_cast<L>(x))),
                         std::abs(static_cast<L>(std::cos(static_cast<L>(r))) - std::cos(static_cast<L>(x))));
    worst[5] = std::max(worst[5], static_cast<double>(d + es));
  }
  const char* what[6] = {"tanh", "sech^2", "sigmoid", "1 - sigmoid", "exp", "sin, cos (absolute, |z| <= 1000)"};
  for (int f = 0; f < 6; ++f) report(name + " " + what[f] + ", with the hardware's error bounds", worst[f], 1e-5);
}

// ---- passes over the n x m elements ----

// The (sample, neuron) elements recomputed since `from` by the launches of one kernel family, as
// passes over the problem's n x m elements (whatever the kernels' tiles).
double passes(const std::string& family, size_t from, int64_t elements) {
  long sum = 0;
  const auto& log = tn_emu::binary.recomputes;
  for (size_t k = from; k < log.size(); ++k)
    if (log[k].first.rfind(family, 0) == 0) sum += log[k].second;
  return static_cast<double>(sum) / static_cast<double>(elements);
}

// The passes each op makes over the n x m elements, per path, emulated GPU and d (n = 70, m = 9,
// c = 3), from the column groups of docs/cuda.md: the forward one pass; the backward one pass of
// sample_sum for every requested parameter gradient while their accumulators fit in shared memory
// (then one per column group), and dX a pass (or its groups) of its own. The 16-bit mma.sync
// kernels' three staged k chunks (46080 bytes, against wmma's two: 30720) leave room for fewer
// column tiles of accumulators where a reduction has fewer than four terms: 10 instead of 11 on
// sm_90, 6 instead of 7 on sm_80; their sample_sum's chunks of 128 samples (61440 bytes) for 9 on
// sm_90 and 5 on sm_80, where d = 1024 then takes four column groups instead of three. wgmma's
// ring (three 24 KiB stages and 1 KiB to align them: 74752 bytes) leaves room for 8 on sm_90: 3
// groups for every parameter gradient at d = 512 and 5 at d = 1024.
struct PassCase {
  const char* path;
  int64_t smem;
  int64_t d;
  int w, params, params_dx, dx, moments_all, moments_dx;  // sample_sum passes; dX's neuron_sum passes
};
constexpr PassCase kPassCases[] = {
    // path       GPU        d     {W} params +dX  dX  moments(all) dX
    {"bf16/wmma", kSmemSm90, 32, 1, 1, 1, 1, 1, 1},    {"bf16/wmma", kSmemSm90, 128, 1, 1, 1, 1, 1, 1},
    {"bf16/wmma", kSmemSm90, 512, 1, 2, 2, 1, 2, 1},   {"bf16/wmma", kSmemSm90, 1024, 2, 3, 3, 2, 4, 2},
    {"bf16/wmma", kSmemSm80, 1024, 3, 5, 5, 3, 6, 3},  {"f16/wmma", kSmemSm90, 1024, 2, 3, 3, 2, 4, 2},
    {"f32/wmma", kSmemSm90, 128, 1, 1, 1, 1, 1, 1},    {"f32/wmma", kSmemSm90, 512, 1, 2, 2, 1, 3, 1},
    {"f32/wmma", kSmemSm90, 1024, 2, 4, 4, 2, 5, 2},   {"bf16/mma", kSmemSm90, 32, 1, 1, 1, 1, 1, 1},
    {"bf16/mma", kSmemSm90, 128, 1, 1, 1, 1, 1, 1},    {"bf16/mma", kSmemSm90, 512, 1, 2, 2, 1, 2, 1},
    {"bf16/mma", kSmemSm90, 1024, 2, 4, 4, 2, 4, 2},   {"bf16/mma", kSmemSm80, 1024, 4, 7, 7, 3, 7, 3},
    {"f16/mma", kSmemSm90, 1024, 2, 4, 4, 2, 4, 2},    {"bf16/wgmma", kSmemSm90, 32, 1, 1, 1, 1, 1, 1},
    {"bf16/wgmma", kSmemSm90, 128, 1, 1, 1, 1, 1, 1},  {"bf16/wgmma", kSmemSm90, 512, 1, 3, 3, 1, 3, 1},
    {"bf16/wgmma", kSmemSm90, 1024, 2, 5, 5, 2, 5, 2}, {"f16/wgmma", kSmemSm90, 1024, 2, 5, 5, 2, 5, 2},    {"f32/mma", kSmemSm90, 128, 1, 1, 1, 1, 1, 1},
    {"f32/mma", kSmemSm90, 512, 1, 2, 2, 1, 3, 1},     {"f32/mma", kSmemSm90, 1024, 2, 4, 4, 2, 5, 2},
    {"f32/simt", kSmemSm90, 32, 1, 1, 1, 1, 1, 1},
    {"f32/simt", kSmemSm90, 128, 1, 1, 1, 1, 1, 1},    {"f32/simt", kSmemSm90, 512, 1, 2, 2, 1, 2, 1},
    {"f32/simt", kSmemSm90, 1024, 2, 4, 4, 2, 4, 2},   {"f64/simt", kSmemSm90, 128, 1, 1, 1, 1, 1, 1},
    {"f64/simt", kSmemSm90, 512, 1, 2, 2, 1, 2, 1},    {"f64/simt", kSmemSm90, 1024, 2, 3, 3, 2, 3, 2},
};

template <typename T>
void check_passes(Mainloop ml, const std::string& filter) {
  for (const PassCase& pc : kPassCases) {
    Case<T> probe({1, 1, 1, 1}, Config{Act::kTanh, {2}, false, true, SignSource::kPhilox, false, 1, false}, ml, 1);
    if (probe.name.rfind(pc.path, 0) != 0) continue;  // this type and path only
    const std::string gpu = pc.smem == kSmemSm90 ? "sm_90" : "sm_80";
    const std::string name = std::string("passes/") + pc.path + " " + gpu + " d=" + std::to_string(pc.d);
    if (!filter.empty() && name.rfind(filter, 0) != 0) continue;
    const Shape s{70, pc.d, 9, 3};
    const int64_t elements = s.n * s.m;  // one pass
    for (bool moments : {false, true}) {
      Config c{Act::kTanh, {0, 1, 2}, false, true, SignSource::kPhilox, moments, 1, false};
      c.smem = pc.smem;
      Case<T> cs(s, c, ml, 7 + pc.d);
      auto& log = tn_emu::binary.recomputes;
      size_t from = log.size();
      check_forward(cs, false);  // outputs checked too
      const std::string fw = name + (moments ? " moments" : " net") + " forward";
      if (!moments) expect(fw + ": features 1 pass", passes("features_forward", from, elements) == 1.0);
      expect(fw + ": readout 1 pass", passes("neuron_sum", from, elements) == 1.0,
             std::to_string(passes("neuron_sum", from, elements)));
      auto backward = [&](unsigned mask, int want_sample, int want_neuron) {
        from = log.size();
        check_backward(cs, false, mask, "");
        const double got_s = passes("sample_sum", from, elements), got_n = passes("neuron_sum", from, elements);
        expect(name + (moments ? " moments" : " net") + " backward " + mask_text(mask) + ": " +
                   std::to_string(want_sample) + " + " + std::to_string(want_neuron) + " passes",
               got_s == want_sample && got_n == want_neuron,
               "sample_sum " + std::to_string(got_s) + ", neuron_sum " + std::to_string(got_n));
      };
      const unsigned params = kAllNet & ~(1u << kX);
      if (moments) {
        backward(kAllNet, pc.moments_all, pc.moments_dx);
      } else {
        backward(1u << kW, pc.w, 0);
        backward(params, pc.params, 0);
        backward(kAllNet, pc.params_dx, pc.dx);
        backward(1u << kX, 0, pc.dx);
      }
    }
  }
}

// `auto` on an sm_90 GPU with sm_90a code (path wgmma): a reduction runs on wgmma unless mma.sync's
// smaller stage 1 fits its columns in fewer groups. d = 128, every gradient: one group either way,
// wgmma; d = 512, every parameter gradient: 2 groups on mma.sync (9 column tiles per group, 128
// samples) against 3 on wgmma (8), so mma.sync and 2 passes.
template <typename T>
void check_auto_passes(const std::string& filter) {
  for (const int64_t d : {128, 512}) {
    Case<T> cs({70, d, 9, 3}, Config{Act::kTanh, {0, 1, 2}, false, true, SignSource::kPhilox, false, 1, false},
               Mainloop::kWgmma, 7 + d);
    cs.request_auto = true;
    cs.name = "passes/auto " + cs.name;
    if (!filter.empty() && cs.name.rfind(filter, 0) != 0) continue;
    const size_t from = tn_emu::binary.recomputes.size();
    check_backward(cs, false, kAllNet & ~(1u << kX), "");
    const bool wgmma = d == 128;
    expect_ran(cs.name, from, wgmma ? "sample_sum_wgmma" : "sample_sum_tc_kernel");
    const double got = passes("sample_sum", from, cs.sh.n * cs.sh.m);
    expect(cs.name + (wgmma ? ": 1 pass" : ": 2 passes"), got == (wgmma ? 1.0 : 2.0), std::to_string(got));
  }
}

// ---- host-side checks: kernel choice, splits, plan capacity, launch failures ----

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

KernelQuery query(DType dtype, int device, int code, Mainloop requested, bool tf32 = false, bool det = false) {
  KernelQuery q;
  q.device_arch = device;
  q.code_arch[static_cast<int>(Mainloop::kMma)] = code;
  q.code_arch[static_cast<int>(Mainloop::kWmma)] = code;
  q.code_arch[static_cast<int>(Mainloop::kSimt)] = code;
  q.built = {80, 90};
  q.kernel = "sample_sum<float32>";
  q.dtype = dtype;
  q.allow_tf32 = tf32;
  q.deterministic = det;
  q.requested = requested;
  return q;
}

void check_host(const std::string& filter) {
  if (!filter.empty() && std::string("host/").rfind(filter, 0) != 0 && filter.rfind("host/", 0) != 0) return;
  const auto X = Mainloop::kMma, W = Mainloop::kWmma, S = Mainloop::kSimt, A = Mainloop::kAuto;
  auto picks = [](const KernelQuery& q, Mainloop want) {
    const KernelChoice c = choose_kernels(q);
    return c.error.empty() && c.mainloop == want;
  };
  // auto: tensor cores (mma.sync first) for bf16/fp16 on sm_80+, float32 only with TF32, never float64.
  expect("host/choice auto bf16 sm_90 -> mma", picks(query(DType::kBFloat16, 90, 90, A), X));
  expect("host/choice auto fp16 sm_80 -> mma", picks(query(DType::kFloat16, 80, 80, A), X));
  expect("host/choice auto fp16 sm_86 (sm_80 code) -> mma", picks(query(DType::kFloat16, 86, 80, A), X));
  expect("host/choice auto f32 without TF32 -> simt", picks(query(DType::kFloat32, 90, 90, A), S));
  expect("host/choice auto f32 with TF32 -> mma", picks(query(DType::kFloat32, 90, 90, A, true), X));
  expect("host/choice requested wmma for bf16 -> wmma", picks(query(DType::kBFloat16, 90, 90, W), W));
  expect("host/choice requested mma for f32 with TF32 -> mma", picks(query(DType::kFloat32, 80, 80, X, true), X));
  expect("host/choice auto f64 -> simt", picks(query(DType::kFloat64, 90, 90, A, true), S));
  expect("host/choice auto bf16 sm_75 -> simt", picks(query(DType::kBFloat16, 75, 75, A), S));
  expect("host/choice auto bf16 sm_90 from sm_75 PTX -> simt", picks(query(DType::kBFloat16, 90, 75, A), S));
  expect("host/choice requested simt for bf16 -> simt", picks(query(DType::kBFloat16, 90, 90, S), S));
  {
    KernelQuery q = query(DType::kBFloat16, 90, 90, A);
    q.code_arch[static_cast<int>(X)] = 0;  // mma.sync code missing, wmma present
    expect("host/choice auto without mma.sync code -> wmma", picks(q, W));
    q.code_arch[static_cast<int>(W)] = 0;  // tensor-core code missing, SIMT present
    expect("host/choice auto without tensor-core code -> simt", picks(q, S));
  }
  // wgmma (sm_90a): first where the family has a kernel of it for the dtype and its code loaded;
  // otherwise, and for what it has no kernel of even on request, mma.sync.
  {
    const auto G = Mainloop::kWgmma;
    auto with_wgmma = [&](DType dtype, int device, Mainloop requested, bool tf32 = false) {
      KernelQuery q = query(dtype, device, device, requested, tf32);
      q.code_arch[static_cast<int>(G)] = device == 90 ? 90 : 0;
      q.kernel = "features_forward<bfloat16>";
      return q;
    };
    expect("host/choice auto bf16 sm_90 with sm_90a code -> wgmma", picks(with_wgmma(DType::kBFloat16, 90, A), G));
    expect("host/choice auto fp16 sm_90 with sm_90a code -> wgmma", picks(with_wgmma(DType::kFloat16, 90, A), G));
    expect("host/choice auto f32 TF32 sm_90 -> mma", picks(with_wgmma(DType::kFloat32, 90, A, true), X));
    expect("host/choice requested wgmma for f32 TF32 -> mma", picks(with_wgmma(DType::kFloat32, 90, G, true), X));
    expect("host/choice requested wgmma for bf16 sm_90 -> wgmma", picks(with_wgmma(DType::kBFloat16, 90, G), G));
    KernelQuery q = with_wgmma(DType::kBFloat16, 90, A);
    q.has_kernel[static_cast<int>(G)] = false;  // a kernel family without a wgmma kernel
    expect("host/choice auto bf16 sm_90 without a wgmma kernel -> mma", picks(q, X));
    q.requested = G;
    expect("host/choice requested wgmma without a wgmma kernel -> mma", picks(q, X));
    q = with_wgmma(DType::kBFloat16, 90, A);
    q.code_arch[static_cast<int>(G)] = 0;  // built without sm_90a (plain sm_90: the trap entry point)
    expect("host/choice auto bf16 sm_90 without sm_90a code -> mma", picks(q, X));
    q.requested = G;
    KernelChoice c = choose_kernels(q);
    expect("host/choice wgmma without sm_90a code refused",
           contains(c.error, "(wgmma)") && contains(c.error, "TORCH_CUDA_ARCH_LIST=\"9.0a\""), c.error);
    c = choose_kernels(with_wgmma(DType::kFloat64, 90, G));
    expect("host/choice wgmma for float64 refused",
           contains(c.error, "TAYLORNET_CUDA_MAINLOOP=wgmma cannot run here") && contains(c.error, "float64"), c.error);
    c = choose_kernels(with_wgmma(DType::kBFloat16, 80, G));
    expect("host/choice wgmma on sm_80 refused", contains(c.error, "9.0 or newer") && contains(c.error, "8.0"), c.error);
    c = choose_kernels(with_wgmma(DType::kBFloat16, 100, G));
    expect("host/choice wgmma on sm_100 refused", contains(c.error, "9.0 only (sm_90a)") && contains(c.error, "10.0"),
           c.error);
    expect("host/choice auto bf16 sm_100 -> mma", picks(with_wgmma(DType::kBFloat16, 100, A), X));
    Mainloop m = A;
    expect("host/choice parse wgmma", parse_mainloop("wgmma", m) && m == G);
  }
  // deterministic: no splits; otherwise splits allowed
  expect("host/choice deterministic takes no splits", !choose_kernels(query(DType::kFloat32, 90, 90, A, false, true)).split);
  expect("host/choice splits otherwise", choose_kernels(query(DType::kFloat32, 90, 90, A)).split);
  // refusals, each naming its reason
  {
    const KernelChoice c = choose_kernels(query(DType::kFloat64, 90, 90, W));
    expect("host/choice wmma for float64 refused", !c.error.empty() && contains(c.error, "float64") &&
                                                       contains(c.error, "TAYLORNET_CUDA_MAINLOOP=wmma"), c.error);
  }
  {
    const KernelChoice c = choose_kernels(query(DType::kFloat32, 90, 90, W));
    expect("host/choice wmma for float32 without TF32 refused", contains(c.error, "allow_tf32"), c.error);
  }
  {
    const KernelChoice c = choose_kernels(query(DType::kBFloat16, 75, 75, W));
    expect("host/choice wmma on sm_75 refused", contains(c.error, "8.0 or newer") && contains(c.error, "7.5"), c.error);
  }
  {
    const KernelChoice c = choose_kernels(query(DType::kBFloat16, 90, 75, W));
    expect("host/choice wmma from sm_75 PTX refused", contains(c.error, "TORCH_CUDA_ARCH_LIST=\"9.0\""), c.error);
  }
  {
    const KernelChoice c = choose_kernels(query(DType::kFloat64, 90, 90, X));
    expect("host/choice mma for float64 refused", contains(c.error, "TAYLORNET_CUDA_MAINLOOP=mma cannot run here") &&
                                                      contains(c.error, "float64"), c.error);
  }
  {
    const KernelChoice c = choose_kernels(query(DType::kBFloat16, 75, 75, X));
    expect("host/choice mma on sm_75 refused", contains(c.error, "8.0 or newer") && contains(c.error, "7.5"), c.error);
  }
  {
    const KernelChoice c = choose_kernels(query(DType::kBFloat16, 75, 0, A));
    const std::string want = "taylornet: no CUDA kernel image of sample_sum<float32> (simt) for this GPU (compute "
                             "capability 7.5): the extension was built for sm_80, sm_90. Rebuild it for this GPU, "
                             "e.g. TORCH_CUDA_ARCH_LIST=\"7.5\" pip install --no-build-isolation .";
    expect("host/choice no image: the message", c.error == want, c.error);
  }
  {
    Mainloop m = A;
    expect("host/choice parse", parse_mainloop("simt", m) && m == S && parse_mainloop("wmma", m) && m == W &&
                                    parse_mainloop("mma", m) && m == X && parse_mainloop("", m) && m == A &&
                                    parse_mainloop("auto", m) && m == A && !parse_mainloop("fastest", m) &&
                                    mainloop_list() == "auto, wgmma, mma, wmma, simt");
  }
  {
    // the epilogue a series takes on tensor cores: its own where kSpecialised lists it, else the generic one
    bool routed = specialised_epilogue(Plan(Act::kGelu, {1, 3}, false, true).series) == kGenericEpilogue &&
                  specialised_epilogue(Plan(Act::kTanh, {2}, false, false).series) >= 0 &&
                  specialised_epilogue(Plan(Act::kTanh, {0, 2}, false, true).series) >= 0 &&
                  specialised_epilogue(Plan(Act::kTanh, {0, 1, 2, 3}, false, true).series) == kGenericEpilogue &&
                  specialised_epilogue(Plan(Act::kSigmoid, {2}, true, true).series) == kGenericEpilogue;
    for (int k = 0; k < kNumSpecialised; ++k) routed = routed && specialised_epilogue(kSpecialised[k]) == k;
    expect("host/epilogue routing", routed);
  }
  expect("host/message launch failure",
         cuda_error_message("the launch", "neuron_sum_kernel<float32>", "cudaErrorInvalidConfiguration",
                            "invalid configuration argument") ==
             "taylornet: the launch of neuron_sum_kernel<float32> failed: cudaErrorInvalidConfiguration "
             "(invalid configuration argument)");
  // splits: about four blocks per SM, never more than the tiles, none when not allowed
  expect("host/splits", inner_splits(132, true, 1, 1000) == 528 && inner_splits(132, true, 1000, 1000) == 1 &&
                            inner_splits(132, true, 2, 10) == 10 && inner_splits(132, false, 1, 1000) == 1 &&
                            inner_splits(0, true, 0, 0) == 1);
  // the plan tables hold the largest plan of every activation (orders 0 ... 16 with d/dz0)
  {
    size_t rows = 0, coefs = 0;
    for (int a = 0; a < static_cast<int>(Act::kCount); ++a) {
      std::vector<int64_t> orders;
      for (int k = 0; k <= (static_cast<Act>(a) == Act::kRelu ? 1 : kMaxOrder); ++k) orders.push_back(k);
      for (bool dz : {false, true}) {
        const Plan p(static_cast<Act>(a), orders, false, dz);
        rows = std::max(rows, p.row_j.size());
        coefs = std::max(coefs, p.coef.size());
        bool ok = true;
        try {
          plan_tables<double>(p);
        } catch (const Error&) {
          ok = false;
        }
        if (!ok) expect(std::string("host/plan tables take ") + kActNames[a], false);
      }
    }
    expect("host/plan tables hold the largest plan (" + std::to_string(rows) + " rows, " + std::to_string(coefs) +
               " coefficients; PlanTables<double> " + std::to_string(sizeof(PlanTables<double>)) + " B, <float> " +
               std::to_string(sizeof(PlanTables<float>)) + " B, kernel parameters at most " +
               std::to_string(kMaxKernelParams<double>) + " B)",
           rows <= static_cast<size_t>(kPlanRows) && coefs <= static_cast<size_t>(kPlanCoefs) &&
               rows + 8 > static_cast<size_t>(kPlanRows) && coefs + 8 > static_cast<size_t>(kPlanCoefs));
  }
  // launch failures through the layer: a missing image and a grid past its limit raise, naming the kernel
  {
    const Shape s{3, 2, 5, 1};
    const Config c{Act::kTanh, {2}, false, false, SignSource::kNone, false, 1, false};
    Case<float> cs(s, c, Mainloop::kAuto, 5);
    HostWorkspace ws;
    Context ctx = cs.context(ws);
    ctx.device.arch = 75;
    const Plan plan(c.act, c.orders, c.exact, false);
    std::vector<float> out(s.n * s.m);
    tn_emu::binary.code_arch = 0;
    std::string message;
    try {
      features_forward(cs.operands(plan, true), out.data(), ctx);
    } catch (const Error& e) {
      message = e.what();
    }
    tn_emu::binary.code_arch = 90;
    expect("host/layer no image raises",
           contains(message, "no CUDA kernel image of features_forward<float32>") &&
               contains(message, "compute capability 7.5") && contains(message, "sm_80, sm_90") &&
               contains(message, "TORCH_CUDA_ARCH_LIST=\"7.5\""),
           message);
    // d = 2^22 columns of dX on a GPU whose shared memory holds one column tile of accumulators:
    // grid.y would need 65536 column groups
    Operands op = cs.operands(plan, true);
    op.d = int64_t(1) << 22;
    op.n = 1;
    op.m = 1;
    const Plan dz_plan(c.act, c.orders, c.exact, true);
    op.plan = &dz_plan;
    GradOutputs g;
    std::vector<float> dx(op.n * op.d);  // zeroed, then the launch is refused before any block runs
    g.x = dx.data();
    message.clear();
    const long before = tn_emu::binary.launches;
    ctx.device.arch = 90;
    ctx.device.smem_optin = SimtReduceSmem<float>::fixed_bytes(2) + SimtReduceSmem<float>::tile_bytes;
    try {
      features_backward(op, out.data(), g, ctx);
    } catch (const Error& e) {
      message = e.what();
    }
    expect("host/layer oversized grid raises",
           contains(message, "the launch of neuron_sum_kernel<float32> failed: cudaErrorInvalidConfiguration") &&
               tn_emu::binary.launches == before,
           message);
  }
}

}  // namespace

// A random case of the fuzzing mode: sizes around the tile, chunk and fragment edges, any
// activation, order set, sign source and split.
std::pair<Shape, Config> random_case(std::mt19937_64& rng) {
  auto pick = [&](std::initializer_list<int64_t> v) { return *(v.begin() + rng() % v.size()); };
  const Shape s{pick({1, 2, 15, 16, 17, 31, 63, 64, 65, 100, 129}), pick({0, 1, 4, 7, 8, 16, 31, 32, 33, 64, 72}),
                pick({1, 3, 16, 47, 64, 65, 127, 130}), pick({1, 2, 5, 16, 17, 64, 65})};
  const int acts = static_cast<int>(Act::kCount);
  Config c{static_cast<Act>(rng() % acts), {}, false, rng() % 2 == 0, static_cast<SignSource>(rng() % 3),
           rng() % 3 == 0, static_cast<int>(pick({1, 2, 3, 7, 1000})), rng() % 4 == 0};
  const int kind = static_cast<int>(rng() % 4);
  const int top = c.act == Act::kRelu ? 1 : 5;  // relu: orders 0 and 1 only
  if (kind == 0) c.exact = true;
  else if (kind == 1) c.orders = {static_cast<int64_t>(rng() % (top + 1))};
  else for (int64_t k = 0; k <= top; ++k) if (rng() % 2) c.orders.push_back(k);
  if (!c.exact && c.orders.empty()) c.orders = {0};
  if (rng() % 3 == 0) c.smem = kSmemTight;
  return {s, c};
}

int main(int argc, char** argv) {
  std::string filter;
  bool small = false;  // two small shapes and two configurations: for the slow sanitizer build
  int random = 0;      // --random K: K random cases (seeded, so reproducible) instead of the fixed ones
  for (int a = 1; a < argc; ++a) {
    const std::string arg = argv[a];
    if (arg == "--small") small = true;
    else if (arg == "--random" && a + 1 < argc) random = std::atoi(argv[++a]);
    else filter = arg;
  }
  const auto G = Mainloop::kWgmma, X = Mainloop::kMma, W = Mainloop::kWmma, S = Mainloop::kSimt;
  auto run_all = [&](const Shape& s, const Config& c, uint64_t seed, bool extra_masks) {
    run<double>(s, c, S, seed, filter, extra_masks);
    run<float>(s, c, S, seed, filter, extra_masks);
    for (const Mainloop tc : {X, W}) {
      run<float>(s, c, tc, seed, filter, extra_masks);
      run<__half>(s, c, tc, seed, filter, extra_masks);
      run<__nv_bfloat16>(s, c, tc, seed, filter, extra_masks);
    }
    // wgmma: every op (the features' forward and the reductions on its ring), on the shared memory
    // of the GPUs that run sm_90a (the tight one does not hold its ring)
    if (c.smem != kSmemTight) {
      run<__half>(s, c, G, seed, filter, extra_masks);
      run<__nv_bfloat16>(s, c, G, seed, filter, extra_masks);
    }
  };
  if (random > 0) {
    std::mt19937_64 rng(20261129);
    for (int k = 0; k < random; ++k) {
      const auto [s, c] = random_case(rng);
      run_all(s, c, 1000 + k, false);
    }
  } else {
    // Shapes off every tile, chunk and fragment multiple; d past one k chunk; c and d over a column
    // tile; d = 200 over four of them (several column groups where the shared memory is small). d = 8, 40 and 96 take the vectorized, double-buffered staging of the tensor-core kernels.
    const Shape shapes[] = {{70, 37, 150, 3}, {1, 1, 1, 1}, {130, 8, 67, 17}, {33, 70, 129, 2}, {65, 96, 70, 5},
                            {19, 40, 70, 3}, {5, 0, 9, 2},
                            {40, 200, 70, 3}};
    const Config configs[] = {
        {Act::kTanh, {2}, false, true, SignSource::kPhilox, false, 2, false},
        {Act::kGelu, {1, 3}, false, true, SignSource::kNone, true, 1, true},
        {Act::kSigmoid, {}, true, false, SignSource::kTensor, false, 3, false},
        {Act::kSoftplus, {0, 2}, false, true, SignSource::kTensor, true, 100, false},
        // specialised epilogues (tensor cores) with moments, and one forced onto the generic one
        {Act::kTanh, {0, 1, 2}, false, true, SignSource::kTensor, true, 3, false},
        {Act::kTanh, {2}, false, false, SignSource::kPhilox, false, 7, false, true},
        // a shared memory that holds one column tile of accumulators: several column groups (and,
        // where the field tiles of every term do not fit beside one, the terms one launch each)
        {Act::kTanh, {0, 1, 2}, false, true, SignSource::kPhilox, true, 2, false, false, kSmemTight},
        {Act::kGelu, {1, 2}, false, true, SignSource::kNone, false, 1, true, false, kSmemTight},
    };
    uint64_t seed = 1;
    for (const Shape& s : shapes)
      for (const Config& c : configs) {
        ++seed;
        // --small: both staging paths (d = 1, d = 40), with and without moments and splits.
        if (small && (!(s.d == 1 || s.d == 40) || c.act == Act::kGelu || c.act == Act::kSigmoid)) continue;
        run_all(s, c, seed, true);
      }
    if (!small) {
      run_masks<double>(S, filter);
      run_masks<float>(S, filter);
      for (const Mainloop tc : {X, W}) {
        run_masks<float>(tc, filter);
        run_masks<__half>(tc, filter);
        run_masks<__nv_bfloat16>(tc, filter);
        run_specialised<float>(tc, filter);
        run_specialised<__half>(tc, filter);
        run_specialised<__nv_bfloat16>(tc, filter);
      }
      run_masks<__half>(G, filter);
      run_masks<__nv_bfloat16>(G, filter);
      run_specialised<__half>(G, filter);
      run_specialised<__nv_bfloat16>(G, filter);
      run_ring<__half>(G, filter);
      run_ring<__nv_bfloat16>(G, filter);
      run_overlap<__half>(filter);
      run_overlap<__nv_bfloat16>(filter);
      run_pingpong<__half>(filter);
      run_pingpong<__nv_bfloat16>(filter);
    }
    if (!small) {
      check_passes<double>(S, filter);
      check_passes<float>(S, filter);
      for (const Mainloop tc : {X, W}) {
        check_passes<float>(tc, filter);
        check_passes<__half>(tc, filter);
        check_passes<__nv_bfloat16>(tc, filter);
      }
      check_passes<__half>(G, filter);
      check_passes<__nv_bfloat16>(G, filter);
      check_auto_passes<__nv_bfloat16>(filter);
    }
    check_host(filter);
    check_tanh_sech2<float>(filter);
    check_tanh_sech2<double>(filter);
    check_fast_math(filter);
  }
  std::printf("%d of %d checks failed\n", failures, checks);
  return failures ? 1 : 0;
}
