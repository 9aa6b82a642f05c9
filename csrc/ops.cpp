// Schemas of the taylornet ops and their CPU implementations: argument checks, sign sources and
// Taylor plans, then the kernels of cpu/. User-facing argument checking with friendly messages lives
// in taylornet/functional.py; the checks here keep direct callers of torch.ops.taylornet safe.
#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "cpu/taylor_cpu.h"
#include "taylornet/philox.h"
#include "taylornet/series.h"

namespace tn {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

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
    TORCH_CHECK_VALUE(act != Act::kRelu || k <= 1,
                      "taylornet: relu has no derivatives of order >= 2; use relu2, relu3 or softplus");
  }
}

Tensor checked_param(const Tensor& t, const char* name, const Tensor& x, at::IntArrayRef shape) {
  TORCH_CHECK_VALUE(t.scalar_type() == x.scalar_type(), "taylornet: ", name, ": expected dtype ",
                    x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "taylornet: ", name, ": expected device ", x.device(),
                    ", got ", t.device());
  TORCH_CHECK_VALUE(t.sizes() == shape, "taylornet: ", name, ": expected shape ", shape, ", got ",
                    t.sizes());
  return t.contiguous();
}

cpu::Signs make_signs(const OptTensor& signs, const OptTensor& seed, const Tensor& x, int64_t m) {
  cpu::Signs s;
  TORCH_CHECK_VALUE(!(signs.has_value() && seed.has_value()),
                    "taylornet: pass either explicit signs or a sign seed, not both");
  if (signs.has_value()) {
    TORCH_CHECK_VALUE(signs->dim() == 1 && signs->size(0) == m, "taylornet: signs: expected shape [",
                      m, "], got ", signs->sizes());
    s.kind = cpu::Signs::kTensor;
    s.values = signs->to(x.device(), x.scalar_type()).contiguous();
  } else if (seed.has_value()) {
    TORCH_CHECK_VALUE(seed->scalar_type() == at::kLong && (seed->numel() == 2 || seed->numel() == 3),
                      "taylornet: seed: expected an int64 tensor (seed, offset[, first neuron]), got ",
                      seed->scalar_type(), " of shape ", seed->sizes());
    const Tensor host = seed->to(at::kCPU).contiguous();
    const int64_t* v = host.const_data_ptr<int64_t>();
    s.kind = cpu::Signs::kPhilox;
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
cpu::Args make_args(const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& a,
                    const OptTensor& b0, const OptTensor& b, const OptTensor& signs,
                    const OptTensor& seed) {
  TORCH_CHECK_VALUE(x.dim() == 2, "taylornet: x: expected a 2-D tensor (n, d), got shape ", x.sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(x.scalar_type()),
                    "taylornet: x: expected a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == x.size(1),
                    "taylornet: w: expected shape (m, ", x.size(1), "), got ", w.sizes());
  const int64_t m = w.size(0), d = x.size(1);
  cpu::Args args;
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

Tensor or_empty(const Tensor& t, const Tensor& like) {
  return t.defined() ? t : at::empty({0}, like.options());
}

void check_scale(double scale) {
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0, "taylornet: scale: expected a finite positive "
                    "number, got ", scale);
}

// ---- features ----

Tensor features_cpu(const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& b0,
                    const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
                    c10::string_view activation, at::IntArrayRef orders, bool exact) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Act act = checked_activation(std::string(activation));
  check_orders(act, orders, exact);
  cpu::Args args = make_args(x, w0, w, std::nullopt, b0, b, signs, seed);
  const Plan plan(act, orders.vec(), exact, false);
  args.plan = &plan;
  return cpu::kernels().features_forward(args);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> features_backward_cpu(
    const Tensor& grad, const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& b0,
    const OptTensor& b, const OptTensor& signs, const OptTensor& seed, c10::string_view activation,
    at::IntArrayRef orders, bool exact, std::array<bool, 5> needs_in) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Act act = checked_activation(std::string(activation));
  check_orders(act, orders, exact);
  cpu::Args args = make_args(x, w0, w, std::nullopt, b0, b, signs, seed);
  const Tensor g = checked_param(grad, "grad", x, {x.size(0), w.size(0)});
  cpu::Needs needs;
  needs.x = needs_in[0];
  needs.w0 = needs_in[1];
  needs.w = needs_in[2];
  needs.b0 = needs_in[3] && b0.has_value();
  needs.b = needs_in[4] && b.has_value();
  const Plan plan(act, orders.vec(), exact, needs.dz());
  args.plan = &plan;
  const cpu::Grads r = cpu::kernels().features_backward(args, g, needs);
  return {or_empty(r.x, x), or_empty(r.w0, x), or_empty(r.w, x), or_empty(r.b0, x), or_empty(r.b, x)};
}

// ---- net and moments ----

Tensor net_cpu(const Tensor& x, const Tensor& w0, const Tensor& w, const Tensor& a,
               const OptTensor& b0, const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
               c10::string_view activation, at::IntArrayRef orders, bool exact, double scale) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Act act = checked_activation(std::string(activation));
  check_orders(act, orders, exact);
  check_scale(scale);
  cpu::Args args = make_args(x, w0, w, a, b0, b, signs, seed);
  const Plan plan(act, orders.vec(), exact, false);
  args.plan = &plan;
  args.scale = scale;
  return cpu::kernels().net_forward(args, false)[0];
}

std::tuple<Tensor, Tensor> moments_cpu(const Tensor& x, const Tensor& w0, const Tensor& w,
                                       const Tensor& a, const OptTensor& b0, const OptTensor& b,
                                       c10::string_view activation, at::IntArrayRef orders,
                                       bool exact, double scale) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Act act = checked_activation(std::string(activation));
  check_orders(act, orders, exact);
  check_scale(scale);
  cpu::Args args = make_args(x, w0, w, a, b0, b, std::nullopt, std::nullopt);
  const Plan plan(act, orders.vec(), exact, false);
  args.plan = &plan;
  args.scale = scale;
  auto outs = cpu::kernels().net_forward(args, true);
  return {outs[0], outs[1]};
}

using SixGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

SixGrads net_backward_common(const std::vector<Tensor>& grads, const Tensor& x, const Tensor& w0,
                             const Tensor& w, const Tensor& a, const OptTensor& b0,
                             const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
                             c10::string_view activation, at::IntArrayRef orders, bool exact,
                             double scale, std::array<bool, 6> needs_in, bool moments) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Act act = checked_activation(std::string(activation));
  check_orders(act, orders, exact);
  check_scale(scale);
  cpu::Args args = make_args(x, w0, w, a, b0, b, signs, seed);
  std::vector<Tensor> g;
  for (const auto& gi : grads) g.push_back(checked_param(gi, "grad", x, {x.size(0), a.size(0)}));
  cpu::Needs needs;
  needs.x = needs_in[0];
  needs.w0 = needs_in[1];
  needs.w = needs_in[2];
  needs.a = needs_in[3];
  needs.b0 = needs_in[4] && b0.has_value();
  needs.b = needs_in[5] && b.has_value();
  const Plan plan(act, orders.vec(), exact, needs.dz());
  args.plan = &plan;
  args.scale = scale;
  const cpu::Grads r = cpu::kernels().net_backward(args, moments, g, needs);
  return {or_empty(r.x, x),  or_empty(r.w0, x), or_empty(r.w, x),
          or_empty(r.a, x),  or_empty(r.b0, x), or_empty(r.b, x)};
}

SixGrads net_backward_cpu(const Tensor& grad, const Tensor& x, const Tensor& w0, const Tensor& w,
                          const Tensor& a, const OptTensor& b0, const OptTensor& b,
                          const OptTensor& signs, const OptTensor& seed, c10::string_view activation,
                          at::IntArrayRef orders, bool exact, double scale,
                          std::array<bool, 6> needs) {
  return net_backward_common({grad}, x, w0, w, a, b0, b, signs, seed, activation, orders, exact,
                             scale, needs, false);
}

SixGrads moments_backward_cpu(const Tensor& grad_mean, const Tensor& grad_var, const Tensor& x,
                              const Tensor& w0, const Tensor& w, const Tensor& a,
                              const OptTensor& b0, const OptTensor& b, c10::string_view activation,
                              at::IntArrayRef orders, bool exact, double scale,
                              std::array<bool, 6> needs) {
  return net_backward_common({grad_mean, grad_var}, x, w0, w, a, b0, b, std::nullopt, std::nullopt,
                             activation, orders, exact, scale, needs, true);
}

// The signs that (seed, offset[, first]) gives neurons first ... first+m-1, as float32 on the CPU.
Tensor philox_signs(const Tensor& seed, int64_t m) {
  TORCH_CHECK_VALUE(m >= 0, "taylornet: m: expected a non-negative width, got ", m);
  const Tensor x = at::empty({0, 0}, at::TensorOptions().dtype(at::kFloat));
  const cpu::Signs s = make_signs(std::nullopt, seed, x, m);
  Tensor out = at::empty({m}, x.options());
  float* p = out.mutable_data_ptr<float>();
  for (int64_t r = 0; r < m; ++r)
    p[r] = neuron_sign<float>(s.seed, s.offset, s.first_neuron + static_cast<uint64_t>(r));
  return out;
}

}  // namespace
}  // namespace tn

TORCH_LIBRARY(taylornet, m) {
  m.def("features(Tensor x, Tensor w0, Tensor w, Tensor? b0, Tensor? b, Tensor? signs, Tensor? seed, "
        "str activation, int[] orders, bool exact) -> Tensor");
  m.def("features_backward(Tensor grad, Tensor x, Tensor w0, Tensor w, Tensor? b0, Tensor? b, "
        "Tensor? signs, Tensor? seed, str activation, int[] orders, bool exact, bool[5] needs) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
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
}

TORCH_LIBRARY_IMPL(taylornet, CPU, m) {
  m.impl("features", &tn::features_cpu);
  m.impl("features_backward", &tn::features_backward_cpu);
  m.impl("net", &tn::net_cpu);
  m.impl("net_backward", &tn::net_backward_cpu);
  m.impl("moments", &tn::moments_cpu);
  m.impl("moments_backward", &tn::moments_backward_cpu);
  m.impl("philox_signs", &tn::philox_signs);
}
