// CPU kernels: blocked over samples x neurons, matrix products by ATen's BLAS on cache-sized tiles,
// the Taylor epilogue vectorized with at::vec, parallel with at::parallel_for.
//
// The net ops never hold an n x m tensor: each worker keeps a few tiles of NB x MB numbers. The
// dimension with enough blocks is split among workers, who own their rows of the result; the other
// is looped over inside, with per-worker partial sums only when the owned dimension is too short to
// keep every thread busy.
//
// This file is compiled once per CPU_CAPABILITY; everything in it lives in that inline namespace.
#include "cpu/taylor_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <functional>
#include <type_traits>

#include "taylornet/philox.h"

namespace tn::cpu {
inline namespace CPU_CAPABILITY {
namespace {

using at::Tensor;

// kUnroll SIMD vectors processed in lock-step: the epilogue's short dependency chains (Horner in v,
// the basis powers) then overlap, and the table lookups are shared by all of them.
constexpr int kUnroll = 4;

template <typename T>
struct Pack {
  using Vec = at::vec::Vectorized<T>;
  // In a union so that default construction leaves the lanes uninitialized: Vectorized's own
  // default constructor zeroes them, which for the epilogue's basis arrays costs more than the math.
  union {
    Vec v[kUnroll];
  };

  static constexpr int size() { return kUnroll * Vec::size(); }
  Pack() {}
  template <typename A, std::enable_if_t<std::is_arithmetic_v<A>, int> = 0>
  Pack(A x) {  // broadcast
    for (auto& e : v) e = Vec(static_cast<T>(x));
  }
  template <typename F>
  static Pack map(F&& f, const Pack& a) {
    Pack r;
    for (int j = 0; j < kUnroll; ++j) r.v[j] = f(a.v[j]);
    return r;
  }
  template <typename F>
  static Pack map(F&& f, const Pack& a, const Pack& b) {
    Pack r;
    for (int j = 0; j < kUnroll; ++j) r.v[j] = f(a.v[j], b.v[j]);
    return r;
  }
  friend Pack operator+(const Pack& a, const Pack& b) { return map(std::plus<>(), a, b); }
  friend Pack operator-(const Pack& a, const Pack& b) { return map(std::minus<>(), a, b); }
  friend Pack operator*(const Pack& a, const Pack& b) { return map(std::multiplies<>(), a, b); }
  friend Pack operator/(const Pack& a, const Pack& b) { return map(std::divides<>(), a, b); }
};

template <typename T>
struct VecMath {
  using P = Pack<T>;
  using Vec = at::vec::Vectorized<T>;
  static void tanh_sech2(const P& z, P& t, P& s) {
    for (int j = 0; j < kUnroll; ++j) tanh_sech2_vec(z.v[j], t.v[j], s.v[j]);
  }
  static void sigmoid_pair(const P& z, P& p, P& q) {
    for (int j = 0; j < kUnroll; ++j) sigmoid_pair_vec(z.v[j], p.v[j], q.v[j]);
  }

  // t = tanh z and s = 1 - t^2. With E = exp(2|z|) and w = 2 / (E + 1) = 1 - |t|, s = w (2 - w) keeps
  // its digits where tanh saturates (1 - t^2 would not), and E = inf gives exactly t = +-1, s = 0.
  // For |z| < 0.4, where 1 - w cancels, t is the odd Taylor series to z^13 in float (truncation
  // below 2e-9 relative) and e / (e + 2) with e = expm1(2z) in double. Both are a few ulp, and
  // cheaper than Sleef's tanh, which costs more than the rest of a low-order epilogue.
  static void tanh_sech2_vec(const Vec& z, Vec& t, Vec& s) {
    const Vec one(T(1)), two(T(2));
    const Vec a = z.abs();
    const Vec w = two / ((a + a).exp() + one);
    const Vec far = one - w;
    const Vec near_mask = a < Vec(T(0.4));
    Vec near;
    if constexpr (sizeof(T) == 4) {
      const Vec z2 = z * z;
      Vec poly(T(21844.0 / 6081075.0));
      for (const double c : {-1382.0 / 155925.0, 62.0 / 2835.0, -17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0})
        poly = at::vec::fmadd(poly, z2, Vec(static_cast<T>(c)));
      near = at::vec::fmadd(z * z2, poly, z);
    } else {
      const Vec e = (z + z).expm1();
      near = e / (e + two);
    }
    t = Vec::blendv(Vec::blendv(far, far.neg(), z < Vec(T(0))), near, near_mask);
    s = Vec::blendv(w * (two - w), one - near * near, near_mask);
  }

  // p = sigmoid(z) and q = sigmoid(-z) from e = exp(-|z|): p, q = 1 / (1 + e) and e / (1 + e).
  static void sigmoid_pair_vec(const Vec& z, Vec& p, Vec& q) {
    const Vec e = z.abs().neg().exp();
    const Vec r = Vec(T(1)) / (Vec(T(1)) + e);
    const Vec er = e * r;
    const Vec negative = z < Vec(T(0));
    p = Vec::blendv(r, er, negative);
    q = Vec::blendv(er, r, negative);
  }

  static P exp(const P& x) { return P::map([](const Vec& a) { return a.exp(); }, x); }
  static P log1p(const P& x) { return P::map([](const Vec& a) { return a.log1p(); }, x); }
  static P erf(const P& x) { return P::map([](const Vec& a) { return a.erf(); }, x); }
  static P erfc(const P& x) { return P::map([](const Vec& a) { return a.erfc(); }, x); }
  static P sin(const P& x) { return P::map([](const Vec& a) { return a.sin(); }, x); }
  static P cos(const P& x) { return P::map([](const Vec& a) { return a.cos(); }, x); }
  static P abs(const P& x) { return P::map([](const Vec& a) { return a.abs(); }, x); }
  static P max0(const P& x) {
    return P::map([](const Vec& a) { return at::vec::maximum(a, Vec(T(0))); }, x);
  }
  static P step(const P& x) { return P::map([](const Vec& a) { return a.gt(Vec(T(0))); }, x); }
  static P fma(const P& a, const P& b, const P& c) {
    P r;
    for (int j = 0; j < kUnroll; ++j) r.v[j] = at::vec::fmadd(a.v[j], b.v[j], c.v[j]);
    return r;
  }
};

// Tile sizes: NB samples x MB neurons, a few such tiles per worker stay in L2.
constexpr int64_t kTileSamples = 128;
template <typename T>
constexpr int64_t kTileNeurons = 2048 / sizeof(T);  // 512 floats, 256 doubles

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
void fill_signs(const Signs& s, int64_t r0, int64_t count, T* out) {
  switch (s.kind) {
    case Signs::kNone: std::fill(out, out + count, T(1)); break;
    case Signs::kTensor: std::copy_n(s.values.const_data_ptr<T>() + r0, count, out); break;
    case Signs::kPhilox: {
      Philox4x32 bits{};
      uint64_t block = ~uint64_t(0);
      for (int64_t i = 0; i < count; ++i) {
        const uint64_t r = s.first_neuron + static_cast<uint64_t>(r0 + i);
        if ((r >> 7) != block) {
          block = r >> 7;
          bits = sign_bits(s.seed, s.offset, block);
        }
        out[i] = neuron_sign<T>(bits, r);
      }
      break;
    }
  }
}

// Runs body(column, count) over the columns [0, cols) of one row in steps of one Pack, the last
// step masked to the remaining count.
template <typename T, typename F>
void for_each_vector(int64_t cols, F&& body) {
  constexpr int64_t step = Pack<T>::size();
  int64_t r = 0;
  for (; r + step <= cols; r += step) body(r, static_cast<int>(step));
  if (r < cols) body(r, static_cast<int>(cols - r));
}

// Loads `cnt` numbers (a whole Pack or fewer; the rest are zero).
template <typename T>
Pack<T> load(const T* p, int cnt) {
  using Vec = at::vec::Vectorized<T>;
  Pack<T> r;
  for (int j = 0; j < kUnroll; ++j) {
    const int left = cnt - j * Vec::size();
    r.v[j] = left >= Vec::size() ? Vec::loadu(p + j * Vec::size())
             : left > 0          ? Vec::loadu(p + j * Vec::size(), left)
                                 : Vec(T(0));
  }
  return r;
}

// A product (x w0^T or x w^T) at columns [c, c + cnt) plus its bias, if there is one.
template <typename T>
Pack<T> with_bias(const T* product, const T* bias, int64_t c, int cnt) {
  return bias ? load(product + c, cnt) + load(bias + c, cnt) : load(product + c, cnt);
}

template <typename T>
void store(const Pack<T>& v, T* p, int cnt) {
  using Vec = at::vec::Vectorized<T>;
  for (int j = 0; j < kUnroll; ++j) {
    const int left = cnt - j * Vec::size();
    if (left >= Vec::size())
      v.v[j].store(p + j * Vec::size());
    else if (left > 0)
      v.v[j].store(p + j * Vec::size(), left);
  }
}

template <typename T>
T sum_lanes(const Pack<T>& v) {
  using Vec = at::vec::Vectorized<T>;
  Vec total = v.v[0];
  for (int j = 1; j < kUnroll; ++j) total = total + v.v[j];
  T lanes[Vec::size()];
  total.store(lanes);
  T sum = 0;
  for (T x : lanes) sum += x;
  return sum;
}

template <typename T>
const T* ptr_or_null(const Tensor& t, int64_t offset = 0) {
  return t.defined() ? t.const_data_ptr<T>() + offset : nullptr;
}

template <typename T>
std::vector<T> plan_coefficients(const Plan& plan) {
  return std::vector<T>(plan.coef.begin(), plan.coef.end());
}

// Runs tile(worker, block) for blocks 0..nblocks-1 split round-robin over `workers` workers.
// The tiles call ATen ops on the operands; the guard keeps those calls below autograd on every
// thread (dispatcher state is thread-local and OpenMP workers do not inherit it).
template <typename F>
void for_each_block(int64_t workers, int64_t nblocks, F&& tile) {
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    for (int64_t w = begin; w < end; ++w)
      for (int64_t blk = w; blk < nblocks; blk += workers) tile(w, blk);
  });
}

// ---------------------------------------------------------------------------------------------
// taylor_features: the n x m output is the point of the op. Its backward is the net's backward
// (below) with the cotangent of h in place of gout A, so it holds no other n x m tensor.

template <typename T>
Tensor features_forward_impl(const Args& args) {
  using V = Pack<T>;
  using M = VecMath<T>;
  const int64_t n = args.x.size(0), m = args.w.size(0);
  Tensor out = at::empty({n, m}, args.x.options());
  if (n == 0 || m == 0) return out;
  std::vector<T> signs(m);
  fill_signs<T>(args.signs, 0, m, signs.data());
  const auto coef = plan_coefficients<T>(*args.plan);
  const PlanView<T> plan = args.plan->view(coef.data());
  const T* b0 = ptr_or_null<T>(args.b0);
  const T* b = ptr_or_null<T>(args.b);
  // Blocks of rows: u goes straight into the output rows, z0 into a scratch block of about 2^18
  // numbers, so the only n x m tensor is the output itself.
  const int64_t rows = std::clamp<int64_t>((int64_t(1) << 18) / m, 1, 256);
  const int64_t nblocks = ceil_div(n, rows);
  for_each_block(std::min<int64_t>(at::get_num_threads(), nblocks), nblocks, [&](int64_t, int64_t blk) {
    const int64_t i0 = blk * rows, nb = std::min(rows, n - i0);
    const Tensor xb = args.x.narrow(0, i0, nb);
    const Tensor z0 = at::mm(xb, args.w0.t());
    Tensor ub = out.narrow(0, i0, nb);
    at::mm_out(ub, xb, args.w.t());
    for (int64_t i = 0; i < nb; ++i) {
      const T* zr = z0.const_data_ptr<T>() + i * m;
      T* ur = ub.mutable_data_ptr<T>() + i * m;
      for_each_vector<T>(m, [&](int64_t r, int cnt) {
        const V z = with_bias(zr, b0, r, cnt), u = with_bias(ur, b, r, cnt);
        store(feature<V, M>(plan, z, u, load(signs.data() + r, cnt)), ur + r, cnt);
      });
    }
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// taylor_net and taylor_net_moments: R readouts of the per-neuron features phi_rho,
//   out_rho = scale_rho * Phi_rho A_rho^T
// net: R = 1, phi = h, A_0 = A.  moments: R = 2, phi = (e, o^2), A = (A, A*A), scales (s, s^2).

template <typename T>
struct NetProblem {
  const Args& args;
  bool moments;
  int R;
  int64_t n, d, m, c;
  Tensor A[2];
  T scale[2];
  // The features' backward: the (n, m) cotangent of h itself takes the place of g = gout A.
  const T* grad_h = nullptr;
  std::vector<T> coef;
  PlanView<T> plan;
  const int64_t NB = kTileSamples, MB = kTileNeurons<T>;

  NetProblem(const Args& a, bool is_moments)
      : args(a), moments(is_moments), R(is_moments ? 2 : 1), n(a.x.size(0)), d(a.x.size(1)),
        m(a.w.size(0)), c(a.a.defined() ? a.a.size(0) : 1), coef(plan_coefficients<T>(*a.plan)),
        plan(a.plan->view(coef.data())) {
    A[0] = a.a;
    scale[0] = static_cast<T>(a.scale);
    if (moments) {
      A[1] = a.a * a.a;
      scale[1] = static_cast<T>(a.scale * a.scale);
    }
  }
  int64_t sample_blocks() const { return ceil_div(n, NB); }
  int64_t neuron_blocks() const { return ceil_div(m, MB); }
};

// Per-worker scratch: tiles of NB x MB, viewed at the size of the current block.
template <typename T>
struct Scratch {
  Tensor storage;
  std::vector<T> signs;
  Scratch(const NetProblem<T>& p, int tiles)
      : storage(at::empty({tiles, p.NB * p.MB}, p.args.x.options())), signs(p.MB) {}
  Tensor tile(int k, int64_t rows, int64_t cols) {
    return storage.select(0, k).narrow(0, 0, rows * cols).view({rows, cols});
  }
};

// Tile slots in Scratch.
enum Slot : int { kZ0 = 0, kU = 1, kPhi0 = 2, kPhi1 = 3 };

template <typename T>
void forward_tile(const NetProblem<T>& p, Scratch<T>& ws, int64_t i0, int64_t nb, int64_t r0,
                  int64_t mb, Tensor* outs) {
  using V = Pack<T>;
  using M = VecMath<T>;
  const Tensor xb = p.args.x.narrow(0, i0, nb);
  Tensor z0 = ws.tile(kZ0, nb, mb), u = ws.tile(kU, nb, mb);
  at::mm_out(z0, xb, p.args.w0.narrow(0, r0, mb).t());
  at::mm_out(u, xb, p.args.w.narrow(0, r0, mb).t());
  fill_signs<T>(p.args.signs, r0, mb, ws.signs.data());
  const T* b0 = ptr_or_null<T>(p.args.b0, r0);
  const T* b = ptr_or_null<T>(p.args.b, r0);
  const T* s = ws.signs.data();
  T* zp = z0.mutable_data_ptr<T>();
  T* upp = u.mutable_data_ptr<T>();
  // One output (c = 1): the readout is a dot product per sample, accumulated in registers.
  const bool dot = p.c == 1;
  const T* a0 = p.A[0].template const_data_ptr<T>() + r0;
  const T* a1 = p.R > 1 ? p.A[1].template const_data_ptr<T>() + r0 : nullptr;
  for (int64_t i = 0; i < nb; ++i) {
    T* zr = zp + i * mb;
    T* ur = upp + i * mb;
    V acc0(T(0)), acc1(T(0));
    for_each_vector<T>(mb, [&](int64_t r, int cnt) {
      const V z = with_bias(zr, b0, r, cnt), uu = with_bias(ur, b, r, cnt);
      V phi0, phi1;
      if (p.moments) {
        const auto mo = moments<V, M>(p.plan, z, uu, false, false);
        phi0 = mo.e.value;
        phi1 = mo.o.value * mo.o.value;
      } else {
        phi0 = feature<V, M>(p.plan, z, uu, load(s + r, cnt));
      }
      if (dot) {
        acc0 = M::fma(phi0, load(a0 + r, cnt), acc0);  // zero-filled tails of a0 add 0
        if (a1) acc1 = M::fma(phi1, load(a1 + r, cnt), acc1);
      } else {
        store(phi0, zr + r, cnt);
        if (p.moments) store(phi1, ur + r, cnt);
      }
    });
    if (dot) {
      outs[0].template mutable_data_ptr<T>()[i0 + i] += p.scale[0] * sum_lanes(acc0);
      if (a1) outs[1].template mutable_data_ptr<T>()[i0 + i] += p.scale[1] * sum_lanes(acc1);
    }
  }
  if (dot) return;
  const Tensor phi[2] = {z0, u};
  for (int k = 0; k < p.R; ++k)
    outs[k].narrow(0, i0, nb).addmm_(phi[k], p.A[k].narrow(1, r0, mb).t(), 1, p.scale[k]);
}

template <typename T>
std::vector<Tensor> net_forward_impl(const Args& args, bool moments) {
  NetProblem<T> p(args, moments);
  std::vector<Tensor> outs;
  for (int k = 0; k < p.R; ++k) outs.push_back(at::zeros({p.n, p.c}, args.x.options()));
  if (p.n == 0 || p.m == 0 || p.c == 0) return outs;
  const int64_t threads = at::get_num_threads();
  const int64_t nsb = p.sample_blocks(), nnb = p.neuron_blocks();
  if (nsb >= threads || nsb >= nnb) {
    // Each worker owns whole sample blocks and sweeps all neurons.
    const int64_t workers = std::min(threads, nsb);
    for_each_block(workers, nsb, [&](int64_t, int64_t sb) {
      Scratch<T> ws(p, 2);
      const int64_t i0 = sb * p.NB, nb = std::min(p.NB, p.n - i0);
      for (int64_t r0 = 0; r0 < p.m; r0 += p.MB)
        forward_tile(p, ws, i0, nb, r0, std::min(p.MB, p.m - r0), outs.data());
    });
    return outs;
  }
  // Few samples, many neurons: split the neurons, each worker sums into its own partial outputs.
  const int64_t workers = std::min(threads, nnb);
  std::vector<std::vector<Tensor>> partial(workers);
  for (auto& v : partial)
    for (int k = 0; k < p.R; ++k) v.push_back(at::zeros({p.n, p.c}, args.x.options()));
  for_each_block(workers, nnb, [&](int64_t w, int64_t nbk) {
    Scratch<T> ws(p, 2);
    const int64_t r0 = nbk * p.MB, mb = std::min(p.MB, p.m - r0);
    for (int64_t i0 = 0; i0 < p.n; i0 += p.NB)
      forward_tile(p, ws, i0, std::min(p.NB, p.n - i0), r0, mb, partial[w].data());
  });
  for (auto& v : partial)
    for (int k = 0; k < p.R; ++k) outs[k].add_(v[k]);
  return outs;
}

// Where a backward tile adds its contributions: the result tensors, or a worker's partial sums.
struct Targets {
  Tensor dx, dw0, dw, db0, db, da[2];
};

template <typename T>
void backward_tile(const NetProblem<T>& p, Scratch<T>& ws, const std::vector<Tensor>& gout,
                   const Needs& needs, bool params, bool x_grad, int64_t i0, int64_t nb, int64_t r0,
                   int64_t mb, Targets& t) {
  using V = Pack<T>;
  using M = VecMath<T>;
  const bool need_dz = (params && (needs.w0 || needs.b0)) || x_grad;
  const bool need_g = (params && (needs.w || needs.b)) || x_grad;
  const bool need_phi = params && needs.a;
  const Tensor xb = p.args.x.narrow(0, i0, nb);
  Tensor z0 = ws.tile(kZ0, nb, mb), u = ws.tile(kU, nb, mb);
  at::mm_out(z0, xb, p.args.w0.narrow(0, r0, mb).t());
  at::mm_out(u, xb, p.args.w.narrow(0, r0, mb).t());
  // g = gout A: with one output an outer product, formed in the epilogue; else a product into the
  // phi tiles, which then receive the features for dA.
  const bool outer = p.c == 1 && !p.grad_h;
  Tensor phi[2];
  for (int k = 0; k < p.R; ++k) {
    phi[k] = ws.tile(kPhi0 + k, nb, mb);
    if (!outer && !p.grad_h) at::mm_out(phi[k], gout[k].narrow(0, i0, nb), p.A[k].narrow(1, r0, mb));
  }
  const T* a0 = outer ? p.A[0].template const_data_ptr<T>() + r0 : nullptr;
  const T* a1 = outer && p.R > 1 ? p.A[1].template const_data_ptr<T>() + r0 : nullptr;
  const T* go0 = outer ? gout[0].template const_data_ptr<T>() + i0 : nullptr;
  const T* go1 = outer && p.R > 1 ? gout[1].template const_data_ptr<T>() + i0 : nullptr;
  fill_signs<T>(p.args.signs, r0, mb, ws.signs.data());
  const T* b0 = ptr_or_null<T>(p.args.b0, r0);
  const T* b = ptr_or_null<T>(p.args.b, r0);
  const T* s = ws.signs.data();
  T* zp = z0.mutable_data_ptr<T>();
  T* upp = u.mutable_data_ptr<T>();
  T* f0p = phi[0].mutable_data_ptr<T>();
  T* f1p = p.R > 1 ? phi[1].mutable_data_ptr<T>() : nullptr;
  const V s0(p.scale[0]), s1(p.R > 1 ? p.scale[1] : T(0)), two(T(2));
  for (int64_t i = 0; i < nb; ++i) {
    T* zr = zp + i * mb;
    T* ur = upp + i * mb;
    T* f0 = f0p + i * mb;
    T* f1 = f1p ? f1p + i * mb : nullptr;
    const V go0i(outer ? go0[i] : T(0)), go1i(outer && go1 ? go1[i] : T(0));
    const T* gh = p.grad_h ? p.grad_h + (i0 + i) * p.m + r0 : nullptr;
    for_each_vector<T>(mb, [&](int64_t r, int cnt) {
      const V z = with_bias(zr, b0, r, cnt), uu = with_bias(ur, b, r, cnt);
      V G, G0;
      if (p.moments) {
        const V gm = s0 * (outer ? go0i * load(a0 + r, cnt) : load(f0 + r, cnt));
        const V gv = s1 * (outer ? go1i * load(a1 + r, cnt) : load(f1 + r, cnt));
        const auto mo = moments<V, M>(p.plan, z, uu, true, need_dz);
        const V gvo = two * gv * mo.o.value;
        G = gm * mo.e.du + gvo * mo.o.du;
        G0 = gm * mo.e.dz + gvo * mo.o.dz;
        if (need_phi) {
          store(mo.e.value, f0 + r, cnt);
          store(mo.o.value * mo.o.value, f1 + r, cnt);
        }
      } else {
        const V g = s0 * (gh ? load(gh + r, cnt) : outer ? go0i * load(a0 + r, cnt) : load(f0 + r, cnt));
        const auto d = feature_grads<V, M>(p.plan, z, uu, load(s + r, cnt), need_phi, need_dz);
        G = g * d.du;
        G0 = g * d.dz;
        if (need_phi) store(d.value, f0 + r, cnt);
      }
      if (need_g) store(G, ur + r, cnt);
      if (need_dz) store(G0, zr + r, cnt);
    });
  }
  if (params) {
    if (needs.w) t.dw.narrow(0, r0, mb).addmm_(u.t(), xb);
    if (needs.w0) t.dw0.narrow(0, r0, mb).addmm_(z0.t(), xb);
    if (needs.b) t.db.narrow(0, r0, mb).add_(u.sum(0));
    if (needs.b0) t.db0.narrow(0, r0, mb).add_(z0.sum(0));
    if (needs.a)
      for (int k = 0; k < p.R; ++k)
        t.da[k].narrow(1, r0, mb).addmm_(gout[k].narrow(0, i0, nb).t(), phi[k], 1, p.scale[k]);
  }
  if (x_grad) {
    Tensor dxb = t.dx.narrow(0, i0, nb);
    dxb.addmm_(u, p.args.w.narrow(0, r0, mb));
    dxb.addmm_(z0, p.args.w0.narrow(0, r0, mb));
  }
}

template <typename T>
Targets make_targets(const NetProblem<T>& p, const Needs& needs, bool params, bool x_grad) {
  Targets t;
  const auto opt = p.args.x.options();
  if (x_grad) t.dx = at::zeros({p.n, p.d}, opt);
  if (params) {
    if (needs.w) t.dw = at::zeros({p.m, p.d}, opt);
    if (needs.w0) t.dw0 = at::zeros({p.m, p.d}, opt);
    if (needs.b) t.db = at::zeros({p.m}, opt);
    if (needs.b0) t.db0 = at::zeros({p.m}, opt);
    if (needs.a)
      for (int k = 0; k < p.R; ++k) t.da[k] = at::zeros({p.c, p.m}, opt);
  }
  return t;
}

void add_targets(Targets& into, const Targets& from) {
  auto add = [](Tensor& a, const Tensor& b) {
    if (b.defined()) a.add_(b);
  };
  add(into.dx, from.dx);
  add(into.dw, from.dw);
  add(into.dw0, from.dw0);
  add(into.db, from.db);
  add(into.db0, from.db0);
  add(into.da[0], from.da[0]);
  add(into.da[1], from.da[1]);
}

template <typename T>
Grads net_backward_impl(const Args& args, bool moments, const std::vector<Tensor>& gout,
                        const Needs& needs, const Tensor& grad_h = Tensor()) {
  NetProblem<T> p(args, moments);
  if (grad_h.defined()) p.grad_h = grad_h.const_data_ptr<T>();
  const bool params = needs.w || needs.w0 || needs.b || needs.b0 || needs.a;
  Targets t = make_targets(p, needs, params, needs.x);
  if (p.n > 0 && p.m > 0 && p.c > 0) {
    const int64_t threads = at::get_num_threads();
    const int64_t nsb = p.sample_blocks(), nnb = p.neuron_blocks();
    const int tiles = 2 + p.R;
    if (nnb >= threads || nnb >= nsb) {
      // Parameter gradients: each worker owns whole neuron blocks and sweeps all samples.
      if (params) {
        for_each_block(std::min(threads, nnb), nnb, [&](int64_t, int64_t nbk) {
          Scratch<T> ws(p, tiles);
          const int64_t r0 = nbk * p.MB, mb = std::min(p.MB, p.m - r0);
          for (int64_t i0 = 0; i0 < p.n; i0 += p.NB)
            backward_tile(p, ws, gout, needs, true, false, i0, std::min(p.NB, p.n - i0), r0, mb, t);
        });
      }
      // dX sums over neurons: a second sweep with workers owning sample blocks.
      if (needs.x) {
        for_each_block(std::min(threads, nsb), nsb, [&](int64_t, int64_t sb) {
          Scratch<T> ws(p, tiles);
          const int64_t i0 = sb * p.NB, nb = std::min(p.NB, p.n - i0);
          for (int64_t r0 = 0; r0 < p.m; r0 += p.MB)
            backward_tile(p, ws, gout, needs, false, true, i0, nb, r0, std::min(p.MB, p.m - r0), t);
        });
      }
    } else {
      // Few neurons, many samples: one sweep, workers own sample blocks (and dX rows) and keep
      // partial parameter gradients, which are small here.
      const int64_t workers = std::min(threads, nsb);
      std::vector<Targets> partial;
      for (int64_t w = 0; w < workers; ++w) partial.push_back(make_targets(p, needs, params, false));
      for_each_block(workers, nsb, [&](int64_t w, int64_t sb) {
        Scratch<T> ws(p, tiles);
        Targets& tw = partial[w];
        tw.dx = t.dx;
        const int64_t i0 = sb * p.NB, nb = std::min(p.NB, p.n - i0);
        for (int64_t r0 = 0; r0 < p.m; r0 += p.MB)
          backward_tile(p, ws, gout, needs, params, needs.x, i0, nb, r0, std::min(p.MB, p.m - r0), tw);
      });
      for (auto& tw : partial) {
        tw.dx = Tensor();
        add_targets(t, tw);
      }
    }
  }
  Grads r;
  r.x = t.dx;
  r.w = t.dw;
  r.w0 = t.dw0;
  r.b = t.db;
  r.b0 = t.db0;
  if (needs.a) r.a = moments ? t.da[0] + 2 * p.A[0] * t.da[1] : t.da[0];
  return r;
}

// ---------------------------------------------------------------------------------------------

#define TN_DISPATCH_FLOAT(dtype, name, ...)                                              \
  [&] {                                                                                  \
    if ((dtype) == at::kDouble) return name<double>(__VA_ARGS__);                        \
    TORCH_CHECK((dtype) == at::kFloat, "taylornet: CPU kernels support float32 and float64"); \
    return name<float>(__VA_ARGS__);                                                     \
  }()

Tensor features_forward(const Args& a) {
  return TN_DISPATCH_FLOAT(a.x.scalar_type(), features_forward_impl, a);
}
Grads features_backward(const Args& a, const Tensor& grad, const Needs& needs) {
  return TN_DISPATCH_FLOAT(a.x.scalar_type(), net_backward_impl, a, false, {}, needs, grad);
}
std::vector<Tensor> net_forward(const Args& a, bool moments) {
  return TN_DISPATCH_FLOAT(a.x.scalar_type(), net_forward_impl, a, moments);
}
Grads net_backward(const Args& a, bool moments, const std::vector<Tensor>& grads, const Needs& needs) {
  return TN_DISPATCH_FLOAT(a.x.scalar_type(), net_backward_impl, a, moments, grads, needs);
}

}  // namespace

const Kernels& kernels() {
  static const Kernels k{features_forward, features_backward, net_forward, net_backward};
  return k;
}

}  // namespace CPU_CAPABILITY
}  // namespace tn::cpu
