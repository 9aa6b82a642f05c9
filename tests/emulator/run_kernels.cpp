// Runs the CUDA kernels (SIMT and tensor-core) under the CPU emulator on random problems and checks
// every kernel result against sums of the float64 epilogue over the same (rounded) inputs. The
// epilogue's math is covered by the CPU tests; this checks what only the CUDA kernels do: tiles and
// their edges, shared-memory staging, fragment use, split reductions, signs, biases, scale handling.
//
//   run_kernels [prefix] [--small | --random K]
//     checks the cases whose name starts with prefix (e.g. bf16/mma), one line each: the fixed cases,
//     two small ones (--small), or K seeded random ones (--random); exit status 1 if any fails
#include "emu.h"
#include "mma.h"

#include <algorithm>
#include <limits>
#include <random>
#include <string>

#include "cuda/simt.cuh"
#include "cuda/tensor_cores.cuh"

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
  int64_t splits;  // requested splits of the inner loops
};

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

// max |got - want| over the largest magnitude: of `want` itself, or, for sums, of the sums of the
// terms' magnitudes (`mag`), the scale of a sum's rounding error however much its terms cancel.
template <typename Acc>
double max_rel_err(const std::vector<Acc>& got, const std::vector<double>& want,
                   const std::vector<double>* mag = nullptr) {
  double err = 0, scale = 1e-300;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::abs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::abs(mag ? (*mag)[i] : want[i]));
    if (!std::isfinite(static_cast<double>(got[i]))) return INFINITY;
  }
  return err / scale;
}

void report(const std::string& what, double err, double tol) {
  ++checks;
  const bool ok = err <= tol;
  if (!ok) ++failures;
  std::printf("%s %-72s rel.err %.2e (tol %.0e)\n", ok ? "ok  " : "FAIL", what.c_str(), err, tol);
}

std::string orders_text(const std::vector<int64_t>& orders) {
  std::string t;
  for (auto k : orders) t += (t.empty() ? "" : ",") + std::to_string(k);
  return "{" + t + "}";
}

template <typename T>
struct Case {
  using Acc = acc_t<T>;
  Shape sh;
  Config cf;
  bool tc;
  Plan plan;
  std::vector<Acc> coef;
  std::vector<double> coef64;
  Data<T> x, w0, w, a, b0, b, gout[2], grad, signs;
  Problem<T> p;
  Problem<double> pd;  // the same inputs in double, for the reference
  std::vector<double> xr, w0r, wr;  // x, w0, w as the products read them (TF32: rounded)
  std::string name;

  // v as a tensor-core operand: rounded to the input type, or to TF32 for float32 (the identity for
  // the SIMT path). The reference rounds where the kernel does, so that tolerances test the
  // kernel's indexing and sums rather than the input type's range and precision.
  double operand(double v) const {
    if (!tc) return v;
    if constexpr (std::is_same_v<T, float>) return nvcuda::wmma::__float_to_tf32(static_cast<float>(v));
    else return to_double(from_double<T>(static_cast<float>(v)));
  }

  Case(Shape s, Config c, bool tensor_cores, uint64_t seed)
      : sh(s), cf(c), tc(tensor_cores), plan(c.act, c.orders, c.exact, true) {
    std::mt19937_64 rng(seed);
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
    coef.assign(plan.coef.begin(), plan.coef.end());
    coef64 = plan.coef;
    fill(p, x.t, w0.t, w.t, a.t, b0.t, b.t, gout[0].t, gout[1].t, signs.t, coef);
    auto rounded = [&](const std::vector<double>& v) {
      std::vector<double> r(v.size());
      for (size_t k = 0; k < v.size(); ++k) r[k] = operand(v[k]);
      return r;
    };
    xr = rounded(x.v);
    w0r = rounded(w0.v);
    wr = rounded(w.v);
    fill(pd, xr, w0r, wr, a.v, b0.v, b.v, gout[0].v, gout[1].v, signs.v, coef64);
    p.tensor_cores = tc;
    name = std::string(type_name<T>()) + (tc ? (std::is_same_v<T, float> ? "/tf32" : "/mma") : "/simt") +
           " n=" + std::to_string(s.n) + " d=" + std::to_string(s.d) + " m=" + std::to_string(s.m) +
           " c=" + std::to_string(s.c) + " " + kActNames[static_cast<int>(c.act)] +
           (c.exact ? " exact" : " K=" + orders_text(c.orders)) + (c.moments ? " moments" : "") +
           (c.signs == SignSource::kPhilox ? " philox-signs" : c.signs == SignSource::kTensor ? " sign-tensor" : "") +
           " splits=" + std::to_string(c.splits);
  }

  template <typename S>
  void fill(Problem<S>& q, const std::vector<S>& xs, const std::vector<S>& w0s, const std::vector<S>& ws,
            const std::vector<S>& as, const std::vector<S>& b0s, const std::vector<S>& bs,
            const std::vector<S>& g0, const std::vector<S>& g1, const std::vector<S>& sg,
            const std::vector<acc_t<S>>& co) {
    q.x = xs.data();
    q.w0 = w0s.data();
    q.w = ws.data();
    q.a = as.data();
    q.b0 = cf.bias ? b0s.data() : nullptr;
    q.b = cf.bias ? bs.data() : nullptr;
    q.philox = cf.signs == SignSource::kPhilox;
    q.signs = cf.signs == SignSource::kTensor ? sg.data() : nullptr;
    q.seed = 0x0DDBA11;
    q.offset = 7;
    q.first = 3;
    q.n = sh.n;
    q.d = sh.d;
    q.m = sh.m;
    q.c = sh.c;
    q.moments = cf.moments;
    const double scale = 1.0 / std::sqrt(static_cast<double>(sh.m));
    q.scale[0] = static_cast<acc_t<S>>(scale);
    q.scale[1] = static_cast<acc_t<S>>(scale * scale);
    q.gout[0] = g0.data();
    q.gout[1] = g1.data();
    q.plan = plan.view(co.data());
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
    if (pd.moments) {
      const Moments<double> mo = moments<double, M>(pd.plan, z, u, true, true);
      v[kPhi0] = mo.e.value;
      v[kPhi1] = mo.o.value * mo.o.value;
      v[kGradU] = g0 * mo.e.du + 2 * g1 * mo.o.value * mo.o.du;
      v[kGradZ] = g0 * mo.e.dz + 2 * g1 * mo.o.value * mo.o.dz;
    } else {
      const Grads<double> d = feature_grads<double, M>(pd.plan, z, u, s, true, true);
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

// Reference fields over the whole problem.
template <typename T>
void reference_fields(const Case<T>& cs, std::vector<double> (&F)[4]) {
  const Shape s = cs.sh;
  for (auto& f : F) f.assign(s.n * s.m, 0.0);
  for (int64_t i = 0; i < s.n; ++i)
    for (int64_t r = 0; r < s.m; ++r) {
      double v[4];
      cs.fields(i, r, v);
      for (int q = 0; q < 4; ++q) F[q][i * s.m + r] = v[q];
    }
}

template <typename T>
void run_sums(Case<T>& cs, const std::string& label);

template <typename T>
void run_case(Case<T>& cs) {
  using Acc = acc_t<T>;
  const Shape s = cs.sh;
  const bool tc = cs.tc;
  const int64_t B = tc ? kTcTile : tile<Acc>();
  const double tol = tolerance<T>(tc);
  std::vector<double> F[4];
  reference_fields(cs, F);

  if (!cs.cf.moments) {  // features forward
    std::vector<T> out(s.n * s.m, from_double<T>(0));
    tn_emu::launch(dim3(ceil_div(s.m, B), ceil_div(s.n, B)), [&] {
      if (tc) {
        if constexpr (!std::is_same_v<T, double>) features_forward_tc_kernel<T>(cs.p, out.data());
      } else {
        features_forward_kernel<T>(cs.p, out.data());
      }
    });
    std::vector<double> got(out.size());
    for (size_t e = 0; e < out.size(); ++e) got[e] = to_double(out[e]);
    report(cs.name + " features", max_rel_err(got, F[kPhi0]), tol);

  }
  run_sums(cs, "");
  if (!cs.cf.moments) {  // the features backward: the same sums with the features' own cotangent
    cs.p.gelem = cs.grad.t.data();
    cs.pd.gelem = cs.grad.v.data();
    cs.p.scale[0] = cs.p.scale[1] = 1;  // as the op sets them: gelem carries no scale
    cs.pd.scale[0] = cs.pd.scale[1] = 1;
    run_sums(cs, "features-bwd ");
  }
}

// The reductions over neurons (readout, dX) and over samples (dW, dW0, db, db0, dA) of the case's
// current problem (net or moments cotangents, or the features' cotangent when gelem is set).
template <typename T>
void run_sums(Case<T>& cs, const std::string& label) {
  using Acc = acc_t<T>;
  const Shape s = cs.sh;
  const bool tc = cs.tc;
  const int64_t B = tc ? kTcTile : tile<Acc>();
  const double tol = tolerance<T>(tc);
  const bool features = cs.p.gelem != nullptr;
  std::vector<double> F[4];
  reference_fields(cs, F);
  // float16 tensor-core kernels scale each 64 x 64 field tile by 2^e so that its largest magnitude
  // lies in [2^14, 2^15) before rounding (and scale the tile's product back).
  const int64_t tiles_m = ceil_div(s.m, kTcTile);
  std::vector<int> tile_exp[4];
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
  // The value of field q at (i, r) as stage 2 of the kernel multiplies it.
  auto field_operand = [&](int q, int64_t i, int64_t r) {
    const double f = F[q][i * s.m + r];
    if (!tc || !std::is_same_v<T, __half>) return cs.operand(f);
    const int e = tile_exp[q][(i / kTcTile) * tiles_m + r / kTcTile];
    return std::ldexp(cs.operand(std::ldexp(f, e)), -e);
  };
  // neuron sums: the readout(s) and dX.
  auto neuron = [&](NeuronSum<T> ns, const std::string& what, const std::vector<double>* Z[2],
                    const bool square[2], std::vector<Acc>* out[2]) {
    const Problem<T>& q = cs.p;
    const int64_t gx = ceil_div(s.n, B), gy = ceil_div(ns.ncols, B), tiles = ceil_div(s.m, B);
    const SplitLaunch l = split_launch(gx, gy, tiles, cs.cf.splits);
    tn_emu::launch(l.grid, [&] {
      if (tc) {
        if constexpr (!std::is_same_v<T, double>) neuron_sum_tc_kernel<T>(q, ns, l.tiles_per_split);
      } else {
        neuron_sum_kernel<T>(q, ns, l.tiles_per_split);
      }
    });
    for (int t = 0; t < ns.terms; ++t) {
      // out[t] accumulates every term that targets it; compare once per distinct output.
      if (t > 0 && out[t] == out[t - 1]) continue;
      std::vector<double> want(s.n * ns.ncols, 0.0), mag(want.size(), 0.0);
      for (int u = t; u < ns.terms && out[u] == out[t]; ++u)
        for (int64_t i = 0; i < s.n; ++i)
          for (int64_t col = 0; col < ns.ncols; ++col) {
            double acc = 0, abs_acc = 0;
            for (int64_t r = 0; r < s.m; ++r) {
              const double zv = (*Z[u])[r * ns.z_row[u] + col * ns.z_col[u]];
              const double term = field_operand(ns.field[u], i, r) * cs.operand(square[u] ? zv * zv : zv);
              acc += term;
              abs_acc += std::abs(term);
            }
            want[i * ns.ncols + col] += static_cast<double>(ns.scale[u]) * acc;
            mag[i * ns.ncols + col] += std::abs(static_cast<double>(ns.scale[u])) * abs_acc;
          }
      report(cs.name + " " + label + what + (ns.terms > 1 && out[1] != out[0] ? " term " + std::to_string(t) : ""),
             max_rel_err(*out[t], want, &mag), tol);
    }
  };
  if (!features) {
    NeuronSum<T> ns;
    ns.terms = cs.cf.moments ? 2 : 1;
    std::vector<Acc> o0(s.n * s.c, 0), o1(s.n * s.c, 0);
    std::vector<Acc>* out[2] = {&o0, &o1};
    const std::vector<double>* Z[2] = {&cs.a.v, &cs.a.v};
    const bool square[2] = {false, true};
    for (int t = 0; t < ns.terms; ++t) {
      ns.field[t] = t == 0 ? kPhi0 : kPhi1;
      ns.z[t] = cs.p.a;
      ns.z_row[t] = 1;
      ns.z_col[t] = s.m;
      ns.square[t] = square[t];
      ns.out[t] = out[t]->data();
      ns.scale[t] = cs.p.scale[t];
    }
    ns.ncols = ns.ld_out = s.c;
    neuron(ns, "readout", Z, square, out);
  }
  {
    NeuronSum<T> ns;
    ns.terms = 2;
    std::vector<Acc> dx(s.n * s.d, 0);
    std::vector<Acc>* out[2] = {&dx, &dx};
    const std::vector<double>* Z[2] = {&cs.wr, &cs.w0r};
    const bool square[2] = {false, false};
    ns.field[0] = kGradU;
    ns.field[1] = kGradZ;
    ns.z[0] = cs.p.w;
    ns.z[1] = cs.p.w0;
    for (int t = 0; t < 2; ++t) {
      ns.z_row[t] = s.d;
      ns.z_col[t] = 1;
      ns.out[t] = dx.data();
    }
    ns.ncols = ns.ld_out = s.d;
    neuron(ns, "dX", Z, square, out);
  }

  // sample sums: dW, dW0, db, db0, dA.
  // One term of a reduction over samples: out[r][col] = scale sum_i F[i][r] y[i][col] (col < ncols)
  // and, with ones, sum_i F[i][r].
  struct Term {
    Field field;
    const Data<T>* y;
    int64_t ncols;
    bool ones;
    Acc scale;
    std::string what;
  };
  // Runs one pass with one or two terms and checks every output of each term.
  auto sample = [&](const std::vector<Term>& terms) {
    SampleSum<T> ss;
    ss.terms = static_cast<int>(terms.size());
    std::vector<std::vector<Acc>> out(terms.size()), out1(terms.size());
    for (size_t t = 0; t < terms.size(); ++t) {
      const Term& tm = terms[t];
      out[t].assign(s.m * tm.ncols, 0);
      out1[t].assign(s.m, 0);
      SampleTerm<T>& st = ss.term[t];
      st.field = tm.field;
      st.y = tm.y ? tm.y->t.data() : nullptr;
      st.ld_y = st.ncols = st.ld_out = tm.ncols;
      st.out = out[t].data();
      st.ones = tm.ones ? out1[t].data() : nullptr;
      st.scale = tm.scale;
    }
    const Problem<T>& q = cs.p;
    const int64_t gx = ceil_div(s.m, B), gy = ceil_div(ss.width(), B), tiles = ceil_div(s.n, B);
    const SplitLaunch l = split_launch(gx, gy, tiles, cs.cf.splits);
    tn_emu::launch(l.grid, [&] {
      if (tc) {
        if constexpr (!std::is_same_v<T, double>) sample_sum_tc_kernel<T>(q, ss, l.tiles_per_split);
      } else {
        sample_sum_kernel<T>(q, ss, l.tiles_per_split);
      }
    });
    for (size_t t = 0; t < terms.size(); ++t) {
      const Term& tm = terms[t];
      const int64_t width = tm.ncols + (tm.ones ? 1 : 0);
      std::vector<double> want(s.m * width, 0.0), mag(want.size(), 0.0);
      std::vector<Acc> got(want.size());
      for (int64_t r = 0; r < s.m; ++r)
        for (int64_t col = 0; col < width; ++col) {
          double acc = 0, abs_acc = 0;
          for (int64_t i = 0; i < s.n; ++i) {
            const double term = field_operand(tm.field, i, r) *
                                (col < tm.ncols ? cs.operand(tm.y->v[i * tm.ncols + col]) : 1.0);
            acc += term;
            abs_acc += std::abs(term);
          }
          want[r * width + col] = static_cast<double>(tm.scale) * acc;
          mag[r * width + col] = std::abs(static_cast<double>(tm.scale)) * abs_acc;
          got[r * width + col] = col < tm.ncols ? out[t][r * tm.ncols + col] : out1[t][r];
        }
      report(cs.name + " " + label + tm.what + (terms.size() > 1 ? " (of " + std::to_string(terms.size()) + ")" : ""),
             max_rel_err(got, want, &mag), tol);
    }
  };
  const Term dw{kGradU, &cs.x, s.d, true, 1, "dW+db"}, dw0{kGradZ, &cs.x, s.d, true, 1, "dW0+db0"};
  const Term dw0_only{kGradZ, &cs.x, s.d, false, 1, "dW0"}, db{kGradU, nullptr, 0, true, 1, "db"};
  sample({dw});
  sample({dw0_only});
  sample({db});
  sample({dw, dw0});
  if (features) return;
  const Term da{kPhi0, &cs.gout[0], s.c, false, cs.p.scale[0], "dA"};
  const Term da1{kPhi1, &cs.gout[1], s.c, false, cs.p.scale[1], "dA (variance)"};
  sample({da});
  sample({dw, da});
  sample({db, da});
  if (cs.cf.moments) sample({da, da1});

}

template <typename T>
void run(Shape s, Config c, bool tc, uint64_t seed, const std::string& filter) {
  Case<T> cs(s, c, tc, seed);
  if (!filter.empty() && cs.name.rfind(filter, 0) != 0) return;  // names start with the path
  run_case(cs);
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
  const double eps = std::numeric_limits<A>::epsilon();
  report(name + " tanh, relative error in epsilons", worst_t / eps, 4);
  report(name + " sech^2, relative error in epsilons", worst_s / eps, 8);
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
           rng() % 3 == 0, pick({1, 2, 3, 7, 1000})};
  const int kind = static_cast<int>(rng() % 4);
  const int top = c.act == Act::kRelu ? 1 : 5;  // relu: orders 0 and 1 only
  if (kind == 0) c.exact = true;
  else if (kind == 1) c.orders = {static_cast<int64_t>(rng() % (top + 1))};
  else for (int64_t k = 0; k <= top; ++k) if (rng() % 2) c.orders.push_back(k);
  if (!c.exact && c.orders.empty()) c.orders = {0};
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
  auto run_all = [&](const Shape& s, const Config& c, uint64_t seed) {
    run<double>(s, c, false, seed, filter);
    run<float>(s, c, false, seed, filter);
    run<float>(s, c, true, seed, filter);
    run<__half>(s, c, true, seed, filter);
    run<__nv_bfloat16>(s, c, true, seed, filter);
  };
  if (random > 0) {
    std::mt19937_64 rng(20261129);
    for (int k = 0; k < random; ++k) {
      const auto [s, c] = random_case(rng);
      run_all(s, c, 1000 + k);
    }
  } else {
    // Shapes off every tile, chunk and fragment multiple; d past one k chunk; c and d over a column
    // tile. d = 8, 40 and 96 take the vectorized, double-buffered staging of the tensor-core kernels.
    const Shape shapes[] = {{70, 37, 150, 3}, {1, 1, 1, 1}, {130, 8, 67, 17}, {33, 70, 129, 2}, {65, 96, 70, 5},
                            {19, 40, 70, 3}, {5, 0, 9, 2}};
    const Config configs[] = {
        {Act::kTanh, {2}, false, true, SignSource::kPhilox, false, 2},
        {Act::kGelu, {1, 3}, false, true, SignSource::kNone, true, 1},
        {Act::kSigmoid, {}, true, false, SignSource::kTensor, false, 3},
        {Act::kSoftplus, {0, 2}, false, true, SignSource::kTensor, true, 100},
    };
    uint64_t seed = 1;
    for (const Shape& s : shapes)
      for (const Config& c : configs) {
        ++seed;
        // --small: both staging paths (d = 1, d = 40), with and without moments and splits.
        if (small && (!(s.d == 1 || s.d == 40) || c.act == Act::kGelu || c.act == Act::kSigmoid)) continue;
        run_all(s, c, seed);
      }
  }
  if (random == 0) {
    check_tanh_sech2<float>(filter);
    check_tanh_sech2<double>(filter);
  }
  std::printf("%d of %d checks failed\n", failures, checks);
  return failures ? 1 : 0;
}
