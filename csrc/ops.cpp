// Schemas of the taylornet ops and their CPU implementations: argument checks, sign sources and
// Taylor plans (prepare(), shared with the CUDA implementation in cuda/ops_cuda.cpp), then the
// kernels of cpu/. The checks of the tensors' dtypes, devices and shapes live here only (TypeError
// for a dtype, ValueError for a shape or device, as torch raises them); taylornet/functional.py
// checks what only Python sees: argument kinds, batch shapes, order and sign-seed syntax. The
// activation table and the order limits are read by Python from here too.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/taylor_cpu.h"
#include "op_call.h"
#include "taylornet/philox.h"
#include "taylornet/series.h"

namespace tn {

using at::Tensor;

namespace {

// "torch.float32": dtypes named as Python names them.
std::string dtype_name(at::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }

Act checked_activation(const std::string& name) {
  const int id = activation_id(name);
  TORCH_CHECK_VALUE(id >= 0, "taylornet: activation: expected one of ", activation_list(), ", got '",
                    name, "'");
  return static_cast<Act>(id);
}

void check_orders(Act act, c10::IntArrayRef orders, bool exact) {
  if (exact) return;
  TORCH_CHECK_VALUE(!orders.empty(), "taylornet: orders: expected at least one order");
  std::vector<bool> seen(kMaxOrder + 1, false);
  for (auto k : orders) {
    TORCH_CHECK_VALUE(k >= 0 && k <= kMaxOrder, "taylornet: orders: expected values in [0, ",
                      kMaxOrder, "], got ", k);
    TORCH_CHECK_VALUE(!seen[k], "taylornet: orders: duplicate order ", k);
    seen[k] = true;
    TORCH_CHECK_VALUE(k <= max_order(act), "taylornet: orders: ", kActNames[static_cast<int>(act)],
                      " has no derivatives of order >= ", max_order(act) + 1,
                      "; use relu2, relu3 or softplus");
  }
}

}  // namespace

Tensor checked_param(const Tensor& t, const char* name, const Tensor& x, at::IntArrayRef shape) {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "taylornet: ", name, ": expected dtype ",
                   dtype_name(x.scalar_type()), " (the dtype of x), got ", dtype_name(t.scalar_type()));
  TORCH_CHECK_VALUE(t.device() == x.device(), "taylornet: ", name, ": expected device ", x.device(),
                    ", got ", t.device());
  TORCH_CHECK_VALUE(t.sizes() == shape, "taylornet: ", name, ": expected shape ", shape, ", got ",
                    t.sizes());
  return t.contiguous();
}

namespace {

// No copy between devices: the signs live where x does, and the seed is read on the host (a device
// seed would cost a synchronisation on every call).
Signs make_signs(const OptTensor& signs, const OptTensor& seed, const Tensor& x, int64_t m) {
  Signs s;
  TORCH_CHECK_VALUE(!(signs.has_value() && seed.has_value()),
                    "taylornet: pass either explicit signs or a sign seed, not both");
  if (signs.has_value()) {
    TORCH_CHECK_VALUE(signs->dim() == 1 && signs->size(0) == m, "taylornet: signs: expected shape [",
                      m, "], got ", signs->sizes());
    TORCH_CHECK_VALUE(signs->device() == x.device(), "taylornet: signs: expected device ", x.device(),
                      " (the device of x), got ", signs->device());
    s.kind = Signs::kTensor;
    s.values = signs->to(x.scalar_type()).contiguous();
  } else if (seed.has_value()) {
    TORCH_CHECK_VALUE(seed->scalar_type() == at::kLong && (seed->numel() == 2 || seed->numel() == 3),
                      "taylornet: seed: expected an int64 tensor (seed, offset[, first neuron]), got ",
                      seed->scalar_type(), " of shape ", seed->sizes());
    TORCH_CHECK_VALUE(seed->device().is_cpu(), "taylornet: seed: expected a CPU tensor (the kernels take "
                      "the seed by value), got device ", seed->device());
    const Tensor host = seed->contiguous();
    const int64_t* v = host.const_data_ptr<int64_t>();
    s.kind = Signs::kPhilox;
    s.seed = static_cast<uint64_t>(v[0]);
    s.offset = static_cast<uint64_t>(v[1]);
    if (seed->numel() == 3) {
      TORCH_CHECK_VALUE(v[2] >= 0, "taylornet: seed: the first neuron index must be >= 0, got ", v[2]);
      s.first_neuron = static_cast<uint64_t>(v[2]);
    }
  }
  return s;
}

// Checks every operand against x (n, d) and packs the contiguous operands.
Args make_args(const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& a,
                    const OptTensor& b0, const OptTensor& b, const OptTensor& signs,
                    const OptTensor& seed) {
  TORCH_CHECK_VALUE(x.dim() == 2, "taylornet: x: expected a 2-D tensor (n, d), got shape ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()),
                   "taylornet: x: expected a floating-point tensor, got ", dtype_name(x.scalar_type()));
  TORCH_CHECK_TYPE(!x.is_cpu() || x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "taylornet: x: expected dtype float32, float64 on cpu, got ", dtype_name(x.scalar_type()));
  TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == x.size(1),
                    "taylornet: w: expected shape (m, ", x.size(1), "), got ", w.sizes());
  const int64_t m = w.size(0), d = x.size(1);
  Args args;
  args.x = x.contiguous();
  args.w = checked_param(w, "w", x, {m, d});
  args.w0 = checked_param(w0, "w0", x, {m, d});
  if (a.has_value()) {
    TORCH_CHECK_VALUE(a->dim() == 2 && a->size(1) == m, "taylornet: a: expected shape (c, ", m,
                      "), got ", a->sizes());
    args.a = checked_param(*a, "a", x, {a->size(0), m});
  }
  if (b0.has_value()) args.b0 = checked_param(*b0, "b0", x, {m});
  if (b.has_value()) args.b = checked_param(*b, "b", x, {m});
  args.signs = make_signs(signs, seed, x, m);
  return args;
}

void check_scale(double scale) {
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0, "taylornet: scale: expected a finite positive "
                    "number, got ", scale);
}

}  // namespace

Tensor or_empty(const Tensor& t, const Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

std::string env_choice(const char* variable, const std::vector<std::string>& values) {
  const char* env = std::getenv(variable);
  const std::string v = env && *env ? env : values.front();
  if (std::find(values.begin(), values.end(), v) != values.end()) return v;
  std::string expected = values.front();  // "a, b or c"
  for (size_t k = 1; k < values.size(); ++k) expected += (k + 1 < values.size() ? ", " : " or ") + values[k];
  TORCH_CHECK_VALUE(false, "taylornet: ", variable, ": expected ", expected, ", got '", v, "'");
}

std::optional<int64_t> env_count(const char* variable, const char* expected, int64_t max) {
  const char* env = std::getenv(variable);
  if (!env || !*env) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(env, &end, 10);
  TORCH_CHECK_VALUE(*end == '\0' && errno == 0 && env[0] != '-' && v >= 0 && v <= max, "taylornet: ", variable,
                    ": expected ", expected, ", got '", env, "'");
  return v;
}

bool env_requests(const char* variable, const std::string& alternative) {
  return env_choice(variable, {"auto", alternative}) == alternative;
}

bool generic_epilogue_requested(const char* variable) { return env_requests(variable, "generic"); }

Call prepare(const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& a,
             const OptTensor& b0, const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
             c10::string_view activation, at::IntArrayRef orders, bool exact,
             std::optional<double> scale, const Needs& needs) {
  const Act act = checked_activation(std::string(activation));
  check_orders(act, orders, exact);
  if (scale) check_scale(*scale);
  Call c;
  c.args = make_args(x, w0, w, a, b0, b, signs, seed);
  c.args.scale = scale.value_or(1.0);
  c.needs = needs;
  c.needs.b0 = needs.b0 && b0.has_value();
  c.needs.b = needs.b && b.has_value();
  c.plan = std::make_unique<const Plan>(act, orders.vec(), exact, c.needs.dz());
  c.args.plan = c.plan.get();
  return c;
}

Needs feature_needs(const std::array<bool, 5>& n) {
  Needs r;
  r.x = n[0];
  r.w0 = n[1];
  r.w = n[2];
  r.b0 = n[3];
  r.b = n[4];
  return r;
}

Needs net_needs(const std::array<bool, 6>& n) {
  Needs r;
  r.x = n[0];
  r.w0 = n[1];
  r.w = n[2];
  r.a = n[3];
  r.b0 = n[4];
  r.b = n[5];
  return r;
}

std::vector<Tensor> checked_grads(const std::vector<Tensor>& grads, const Tensor& x, int64_t c) {
  std::vector<Tensor> g;
  for (const auto& gi : grads) g.push_back(checked_param(gi, "grad", x, {x.size(0), c}));
  return g;
}

FiveGrads five(const GradTensors& r, const Tensor& x) {
  return {or_empty(r.x, x), or_empty(r.w0, x), or_empty(r.w, x), or_empty(r.b0, x), or_empty(r.b, x)};
}

SixGrads six(const GradTensors& r, const Tensor& x) {
  return {or_empty(r.x, x), or_empty(r.w0, x), or_empty(r.w, x),
          or_empty(r.a, x), or_empty(r.b0, x), or_empty(r.b, x)};
}

namespace {

// ---- CPU ----

Tensor features_cpu(const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& b0,
                    const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
                    c10::string_view activation, at::IntArrayRef orders, bool exact) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, std::nullopt, b0, b, signs, seed, activation, orders, exact, std::nullopt);
  return cpu::kernels().features_forward(c.args);
}

// The features with the derivatives that their backward needs (training with a large d, where
// recomputing the products in the backward would cost more than keeping one or two n x m tensors).
std::tuple<Tensor, Tensor, Tensor> features_saving_cpu(
    const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& b0, const OptTensor& b,
    const OptTensor& signs, const OptTensor& seed, c10::string_view activation, at::IntArrayRef orders,
    bool exact, bool need_dz) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  Needs needs;
  needs.w0 = need_dz;  // the plan then carries c_{K+1} for dh/dz0
  const Call c = prepare(x, w0, w, std::nullopt, b0, b, signs, seed, activation, orders, exact,
                         std::nullopt, needs);
  auto outs = cpu::kernels().features_forward_saving(c.args, need_dz);
  return {outs[0], outs[1], outs[2]};
}

// G = grad * du (and G0 = grad * dz where dz is given) on `rows` rows of `cols` numbers, read at a
// row stride of ld_in and written at ld_out into the buffers G and G0. One pass reads grad once for
// both products; threads own rows, which a block has plenty of in either direction.
template <typename T>
void scaled_cotangents(const T* __restrict g, const T* __restrict du, const T* __restrict dz, int64_t ld_in,
                       T* __restrict G, T* __restrict G0, int64_t ld_out, int64_t rows, int64_t cols) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* __restrict gr = g + r * ld_in;
      const T* __restrict ur = du + r * ld_in;
      T* __restrict out = G + r * ld_out;
      for (int64_t c = 0; c < cols; ++c) out[c] = gr[c] * ur[c];
      if (dz != nullptr) {
        const T* __restrict zr = dz + r * ld_in;
        T* __restrict out0 = G0 + r * ld_out;
        for (int64_t c = 0; c < cols; ++c) out0[c] = gr[c] * zr[c];
      }
    }
  });
}

// The features' gradients from the saved derivatives: G = grad * dh/du, G0 = grad * dh/dz0, then
// dW = G^T x, db = sum G, dW0 = G0^T x, db0 = sum G0, dx = G w + G0 w0, by ATen's BLAS on blocks
// of G and G0 held in two buffers reused by every block (no further n x m tensor, and no fresh
// pages per block). Blocks of samples leave dx whole per block and add each block's product into
// dW and dW0; blocks of neurons do the reverse. Each added product reads and writes its output
// once more, so the blocks run along the dimension whose outputs that costs less: neurons wherever
// dx is not asked for (then no product is added at all), and for a layer of n = 1024,
// d = m = 2048 with dx and dW (blocks of 512 neurons add dx's 8 MB three times, blocks of 256
// samples dW's 16 MB).
FiveGrads features_backward_saved_cpu(
    const Tensor& grad, const Tensor& du, const Tensor& dz, const Tensor& x, const Tensor& w0,
    const Tensor& w, bool has_b0, bool has_b, std::array<bool, 5> needs) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  TORCH_CHECK_VALUE(x.dim() == 2 && w.dim() == 2 && w.size(1) == x.size(1) && w0.sizes() == w.sizes(),
                    "taylornet: features_backward_saved: expected x (n, d), w0 and w (m, d), got ",
                    x.sizes(), ", ", w0.sizes(), ", ", w.sizes());
  const int64_t n = x.size(0), m = w.size(0);
  const bool need_dz = needs[0] || needs[1] || (needs[3] && has_b0);
  const Tensor g = checked_param(grad, "grad", x, {n, m});
  const Tensor su = checked_param(du, "du", x, {n, m});
  const Tensor sz = need_dz ? checked_param(dz, "dz", x, {n, m}) : Tensor();
  // The weights enter dx alone: no copy of a non-contiguous w or w0 where dx is not asked for.
  const Tensor xc = x.contiguous();
  const Tensor wc = needs[0] ? w.contiguous() : Tensor(), w0c = needs[0] ? w0.contiguous() : Tensor();
  // Every output is written by the first block's product and accumulated by the others' (no zero
  // fill first), except where there is no block.
  const bool blocks = n > 0 && m > 0;
  const auto output = [blocks](const Tensor& like) { return blocks ? at::empty_like(like) : at::zeros_like(like); };
  Tensor dx = needs[0] ? output(xc) : Tensor();
  Tensor dw0 = needs[1] ? output(w0) : Tensor();
  Tensor dw = needs[2] ? output(w) : Tensor();
  Tensor db0 = needs[3] && has_b0 ? at::zeros({m}, x.options()) : Tensor();
  Tensor db = needs[4] && has_b ? at::zeros({m}, x.options()) : Tensor();
  if (!blocks) return {or_empty(dx, x), or_empty(dw0, x), or_empty(dw, x), or_empty(db0, x), or_empty(db, x)};
  // W (and b) alone, what training a layer on fixed inputs asks for: the fused kernel of this build,
  // where it has one, unless TAYLORNET_SAVED_BACKWARD=blas (read at each call, so that one process
  // can time both).
  const bool blas = env_requests("TAYLORNET_SAVED_BACKWARD", "blas");
  if (!blas && dw.defined() && !dx.defined() && !dw0.defined() && !db0.defined()) {
    Tensor dwc = dw.is_contiguous() ? dw : at::empty({m, x.size(1)}, x.options());  // the kernel writes rows
    if (cpu::kernels().weight_grad_saved(g, su, xc, dwc, db))
      return {or_empty(dx, x), or_empty(dw0, x), dwc, or_empty(db0, x), or_empty(db, x)};
  }
  // Blocks of about 2^20 numbers, and at most a quarter of the rows (columns): G and G0 then never
  // add more than a quarter of an n x m tensor each to the peak that h and the saved derivatives set.
  constexpr int64_t kBlock = int64_t(1) << 20;
  const int64_t rows = std::clamp<int64_t>(std::min(kBlock / m, (n + 3) / 4), 16, 1024);
  const int64_t cols = std::max<int64_t>(std::min(kBlock / n, (m + 3) / 4), 16);
  const int64_t row_blocks = (n + rows - 1) / rows, col_blocks = (m + cols - 1) / cols;
  const int64_t weight_grads = int64_t(dw.defined()) + int64_t(dw0.defined());
  // numbers of the outputs read and written again: d x (m per weight gradient per extra row block,
  // or n for dx per extra column block)
  const bool by_neurons = (dx.defined() ? n * (col_blocks - 1) : 0) <= weight_grads * m * (row_blocks - 1);
  const int64_t span = by_neurons ? std::min(cols, m) : std::min(rows, n);
  const Tensor G_buf = at::empty({by_neurons ? n * span : span * m}, x.options());
  const Tensor G0_buf = need_dz ? at::empty_like(G_buf) : Tensor();
  for (int64_t k0 = 0; k0 < (by_neurons ? m : n); k0 += span) {
    const int64_t kb = std::min(span, (by_neurons ? m : n) - k0);
    const int64_t nb = by_neurons ? n : kb, mb = by_neurons ? kb : m;  // the block: nb x mb of G
    const Tensor G = G_buf.narrow(0, 0, nb * mb).view({nb, mb});
    const Tensor G0 = need_dz ? G0_buf.narrow(0, 0, nb * mb).view({nb, mb}) : Tensor();
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "features_backward_saved", [&] {
      const int64_t o = by_neurons ? k0 : k0 * m;
      scaled_cotangents<scalar_t>(g.const_data_ptr<scalar_t>() + o, su.const_data_ptr<scalar_t>() + o,
                                  need_dz ? sz.const_data_ptr<scalar_t>() + o : nullptr, m,
                                  G.mutable_data_ptr<scalar_t>(),
                                  need_dz ? G0.mutable_data_ptr<scalar_t>() : nullptr, mb, nb, mb);
    });
    const int64_t c0 = by_neurons ? k0 : 0;  // the block's first neuron
    if (db.defined()) db.narrow(0, c0, mb).add_(G.sum(0));
    if (db0.defined()) db0.narrow(0, c0, mb).add_(G0.sum(0));
    const int first = k0 == 0 ? 0 : 1;  // beta: write, then add
    if (by_neurons) {
      if (dw.defined()) {
        Tensor dwb = dw.narrow(0, k0, kb);
        at::mm_out(dwb, G.t(), xc);
      }
      if (dw0.defined()) {
        Tensor dw0b = dw0.narrow(0, k0, kb);
        at::mm_out(dw0b, G0.t(), xc);
      }
      if (dx.defined()) {
        dx.addmm_(G, wc.narrow(0, k0, kb), first);
        dx.addmm_(G0, w0c.narrow(0, k0, kb));
      }
    } else {
      const Tensor xb = xc.narrow(0, k0, kb);
      if (dw.defined()) dw.addmm_(G.t(), xb, first);
      if (dw0.defined()) dw0.addmm_(G0.t(), xb, first);
      if (dx.defined()) {
        Tensor dxb = dx.narrow(0, k0, kb);
        at::mm_out(dxb, G, wc);
        dxb.addmm_(G0, w0c);
      }
    }
  }
  return {or_empty(dx, x), or_empty(dw0, x), or_empty(dw, x), or_empty(db0, x), or_empty(db, x)};
}

FiveGrads features_backward_cpu(
    const Tensor& grad, const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& b0,
    const OptTensor& b, const OptTensor& signs, const OptTensor& seed, c10::string_view activation,
    at::IntArrayRef orders, bool exact, std::array<bool, 5> needs) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, std::nullopt, b0, b, signs, seed, activation, orders, exact,
                         std::nullopt, feature_needs(needs));
  const Tensor g = checked_param(grad, "grad", x, {x.size(0), w.size(0)});
  return five(cpu::kernels().features_backward(c.args, g, c.needs), x);
}

Tensor net_cpu(const Tensor& x, const Tensor& w0, const Tensor& w, const Tensor& a,
               const OptTensor& b0, const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
               c10::string_view activation, at::IntArrayRef orders, bool exact, double scale) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, a, b0, b, signs, seed, activation, orders, exact, scale);
  return cpu::kernels().net_forward(c.args, false)[0];
}

std::tuple<Tensor, Tensor> moments_cpu(const Tensor& x, const Tensor& w0, const Tensor& w,
                                       const Tensor& a, const OptTensor& b0, const OptTensor& b,
                                       c10::string_view activation, at::IntArrayRef orders,
                                       bool exact, double scale) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, a, b0, b, std::nullopt, std::nullopt, activation, orders, exact, scale);
  auto outs = cpu::kernels().net_forward(c.args, true);
  return {outs[0], outs[1]};
}

SixGrads net_backward_cpu(const Tensor& grad, const Tensor& x, const Tensor& w0, const Tensor& w,
                          const Tensor& a, const OptTensor& b0, const OptTensor& b,
                          const OptTensor& signs, const OptTensor& seed, c10::string_view activation,
                          at::IntArrayRef orders, bool exact, double scale,
                          std::array<bool, 6> needs) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, a, b0, b, signs, seed, activation, orders, exact, scale, net_needs(needs));
  return six(cpu::kernels().net_backward(c.args, false, checked_grads({grad}, x, a.size(0)), c.needs), x);
}

SixGrads moments_backward_cpu(const Tensor& grad_mean, const Tensor& grad_var, const Tensor& x,
                              const Tensor& w0, const Tensor& w, const Tensor& a,
                              const OptTensor& b0, const OptTensor& b, c10::string_view activation,
                              at::IntArrayRef orders, bool exact, double scale,
                              std::array<bool, 6> needs) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, a, b0, b, std::nullopt, std::nullopt, activation, orders, exact,
                         scale, net_needs(needs));
  const auto g = checked_grads({grad_mean, grad_var}, x, a.size(0));
  return six(cpu::kernels().net_backward(c.args, true, g, c.needs), x);
}

// Philox4x32-10 of every row of `counters` (n, 4), 32-bit words held in int64, under the 64-bit key
// `seed`: the kernels' generator (taylornet/philox.h) for counter-based initialization on the host.
Tensor philox(const Tensor& counters, int64_t seed) {
  TORCH_CHECK_TYPE(counters.scalar_type() == at::kLong, "taylornet: counters: expected an int64 tensor, got ",
                   dtype_name(counters.scalar_type()));
  TORCH_CHECK_VALUE(counters.dim() == 2 && counters.size(1) == 4,
                    "taylornet: counters: expected shape (n, 4), got ", counters.sizes());
  const Tensor in = counters.contiguous();
  Tensor out = at::empty_like(in);
  const int64_t* src = in.const_data_ptr<int64_t>();
  int64_t* dst = out.mutable_data_ptr<int64_t>();
  const auto key = static_cast<uint64_t>(seed);
  at::parallel_for(0, in.size(0), 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      Philox4x32 ctr;
      for (int j = 0; j < 4; ++j) ctr.v[j] = static_cast<uint32_t>(src[4 * i + j]);
      ctr = philox4x32_10(ctr, static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32));
      for (int j = 0; j < 4; ++j) dst[4 * i + j] = static_cast<int64_t>(ctr.v[j]);
    }
  });
  return out;
}

// The supported activations in id order, and the highest Taylor order each one accepts.
std::vector<std::string> activation_names() {
  return std::vector<std::string>(std::begin(kActNames), std::end(kActNames));
}

int64_t activation_max_order(c10::string_view activation) {
  return max_order(checked_activation(std::string(activation)));
}

// The signs that (seed, offset[, first]) gives neurons first ... first+m-1, as float32 on the CPU.
Tensor philox_signs(const Tensor& seed, int64_t m) {
  TORCH_CHECK_VALUE(m >= 0, "taylornet: m: expected a non-negative width, got ", m);
  const Tensor x = at::empty({0, 0}, at::TensorOptions().dtype(at::kFloat));
  const Signs s = make_signs(std::nullopt, seed, x, m);
  Tensor out = at::empty({m}, x.options());
  float* p = out.mutable_data_ptr<float>();
  for (int64_t r = 0; r < m; ++r)
    p[r] = neuron_sign<float>(s.seed, s.offset, s.first_neuron + static_cast<uint64_t>(r));
  return out;
}

// The instruction set of the CPU kernels; with a name, forces that one first (tests, benchmarks).
std::string cpu_capability(const std::optional<std::string>& name) {
  if (name) cpu::set_capability(*name);
  return cpu::capability();
}

// The largest d the CPU fused kernels take under the current instruction set; with a limit, sets it
// for every build first (kAutoFusedMaxDim: each build's default).
int64_t cpu_fused_max_dim(std::optional<int64_t> limit) {
  if (limit) cpu::set_fused_max_dim(*limit);
  return cpu::fused_max_dim();
}

}  // namespace
}  // namespace tn

TORCH_LIBRARY(taylornet, m) {
  m.def("features(Tensor x, Tensor w0, Tensor w, Tensor? b0, Tensor? b, Tensor? signs, Tensor? seed, "
        "str activation, int[] orders, bool exact) -> Tensor");
  m.def("features_backward(Tensor grad, Tensor x, Tensor w0, Tensor w, Tensor? b0, Tensor? b, "
        "Tensor? signs, Tensor? seed, str activation, int[] orders, bool exact, bool[5] needs) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("features_saving(Tensor x, Tensor w0, Tensor w, Tensor? b0, Tensor? b, Tensor? signs, "
        "Tensor? seed, str activation, int[] orders, bool exact, bool need_dz) -> (Tensor, Tensor, Tensor)");
  m.def("features_backward_saved(Tensor grad, Tensor du, Tensor dz, Tensor x, Tensor w0, Tensor w, "
        "bool has_b0, bool has_b, bool[5] needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("net(Tensor x, Tensor w0, Tensor w, Tensor a, Tensor? b0, Tensor? b, Tensor? signs, "
        "Tensor? seed, str activation, int[] orders, bool exact, float scale) -> Tensor");
  m.def("net_backward(Tensor grad, Tensor x, Tensor w0, Tensor w, Tensor a, Tensor? b0, Tensor? b, "
        "Tensor? signs, Tensor? seed, str activation, int[] orders, bool exact, float scale, "
        "bool[6] needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("moments(Tensor x, Tensor w0, Tensor w, Tensor a, Tensor? b0, Tensor? b, str activation, "
        "int[] orders, bool exact, float scale) -> (Tensor, Tensor)");
  m.def("moments_backward(Tensor grad_mean, Tensor grad_var, Tensor x, Tensor w0, Tensor w, "
        "Tensor a, Tensor? b0, Tensor? b, str activation, int[] orders, bool exact, float scale, "
        "bool[6] needs) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("philox_signs(Tensor seed, int m) -> Tensor");
  m.def("cpu_capability(str? name=None) -> str", &tn::cpu_capability);
  m.def("cpu_saved_cache(int? limit_bytes=None) -> int[]", &tn::cpu::saved_cache);
  m.def("cpu_fused_max_dim(int? limit=None) -> int", &tn::cpu_fused_max_dim);
  m.def("philox(Tensor counters, int seed) -> Tensor");
  m.def("activations() -> str[]", &tn::activation_names);
  m.def("max_order(str activation) -> int", &tn::activation_max_order);
}

TORCH_LIBRARY_IMPL(taylornet, CPU, m) {
  m.impl("features", &tn::features_cpu);
  m.impl("features_backward", &tn::features_backward_cpu);
  m.impl("features_saving", &tn::features_saving_cpu);
  m.impl("features_backward_saved", &tn::features_backward_saved_cpu);
  m.impl("net", &tn::net_cpu);
  m.impl("net_backward", &tn::net_backward_cpu);
  m.impl("moments", &tn::moments_cpu);
  m.impl("moments_backward", &tn::moments_backward_cpu);
  m.impl("philox_signs", &tn::philox_signs);
  m.impl("philox", &tn::philox);
}
