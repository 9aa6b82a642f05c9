// Schemas of the taylornet ops and their CPU implementations: argument checks, sign sources and
// Taylor plans, then the kernels of cpu/. User-facing argument checking with friendly messages lives
// in taylornet/functional.py; the checks here keep direct callers of torch.ops.taylornet safe.
#include <ATen/ATen.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <optional>
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

// One checked call: operands, sign source, the Taylor plan and the gradients asked for. Every op
// implementation, CPU or CUDA, starts from one of these.
struct Call {
  cpu::Args args;
  cpu::Needs needs;
  std::unique_ptr<const Plan> plan;  // args.plan points here
};

Call prepare(const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& a,
             const OptTensor& b0, const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
             c10::string_view activation, at::IntArrayRef orders, bool exact,
             std::optional<double> scale, const cpu::Needs& needs = {}) {
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

// The needs lists of the backward schemas: (x, w0, w, b0, b) and (x, w0, w, a, b0, b).
cpu::Needs feature_needs(const std::array<bool, 5>& n) {
  cpu::Needs r;
  r.x = n[0];
  r.w0 = n[1];
  r.w = n[2];
  r.b0 = n[3];
  r.b = n[4];
  return r;
}

cpu::Needs net_needs(const std::array<bool, 6>& n) {
  cpu::Needs r;
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
  cpu::Needs needs;
  needs.w0 = need_dz;  // the plan then carries c_{K+1} for dh/dz0
  const Call c = prepare(x, w0, w, std::nullopt, b0, b, signs, seed, activation, orders, exact,
                         std::nullopt, needs);
  auto outs = cpu::kernels().features_forward_saving(c.args, need_dz);
  return {outs[0], outs[1], outs[2]};
}

// The features' gradients from the saved derivatives: G = grad * dh/du, G0 = grad * dh/dz0, then
// dW = G^T x, db = sum G, dW0 = G0^T x, db0 = sum G0, dx = G w + G0 w0, by ATen's BLAS on blocks
// of rows (no further n x m tensor).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> features_backward_saved_cpu(
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
  const Tensor xc = x.contiguous();
  Tensor dx = needs[0] ? at::empty_like(xc) : Tensor();
  Tensor dw0 = needs[1] ? at::zeros_like(w0) : Tensor();
  Tensor dw = needs[2] ? at::zeros_like(w) : Tensor();
  Tensor db0 = needs[3] && has_b0 ? at::zeros({m}, x.options()) : Tensor();
  Tensor db = needs[4] && has_b ? at::zeros({m}, x.options()) : Tensor();
  const int64_t rows = std::clamp<int64_t>((int64_t(1) << 20) / std::max<int64_t>(m, 1), 16, 1024);
  for (int64_t i0 = 0; i0 < n; i0 += rows) {
    const int64_t nb = std::min(rows, n - i0);
    const Tensor xb = xc.narrow(0, i0, nb), gb = g.narrow(0, i0, nb);
    const Tensor G = gb * su.narrow(0, i0, nb);
    const Tensor G0 = need_dz ? gb * sz.narrow(0, i0, nb) : Tensor();
    if (dw.defined()) dw.addmm_(G.t(), xb);
    if (db.defined()) db.add_(G.sum(0));
    if (dw0.defined()) dw0.addmm_(G0.t(), xb);
    if (db0.defined()) db0.add_(G0.sum(0));
    if (dx.defined()) {
      Tensor dxb = dx.narrow(0, i0, nb);
      at::mm_out(dxb, G, w.contiguous());
      dxb.addmm_(G0, w0.contiguous());
    }
  }
  return {or_empty(dx, x), or_empty(dw0, x), or_empty(dw, x), or_empty(db0, x), or_empty(db, x)};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> features_backward_cpu(
    const Tensor& grad, const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& b0,
    const OptTensor& b, const OptTensor& signs, const OptTensor& seed, c10::string_view activation,
    at::IntArrayRef orders, bool exact, std::array<bool, 5> needs) {
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, std::nullopt, b0, b, signs, seed, activation, orders, exact,
                         std::nullopt, feature_needs(needs));
  const Tensor g = checked_param(grad, "grad", x, {x.size(0), w.size(0)});
  const cpu::Grads r = cpu::kernels().features_backward(c.args, g, c.needs);
  return {or_empty(r.x, x), or_empty(r.w0, x), or_empty(r.w, x), or_empty(r.b0, x), or_empty(r.b, x)};
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

using SixGrads = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

SixGrads six(const cpu::Grads& r, const Tensor& x) {
  return {or_empty(r.x, x), or_empty(r.w0, x), or_empty(r.w, x),
          or_empty(r.a, x), or_empty(r.b0, x), or_empty(r.b, x)};
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

// The instruction set of the CPU kernels; with a name, forces that one first (tests, benchmarks).
std::string cpu_capability(const std::optional<std::string>& name) {
  if (name) cpu::set_capability(*name);
  return cpu::capability();
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
}

// ------------------------------------------------------------------------------------------------
// CUDA: the same checks and plans, then the kernels of cuda/ on the current stream. Results that
// are sums over many blocks are accumulated in float32 (float64 for float64) and cast at the end.
#ifdef TAYLORNET_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/taylor_cuda.h"

namespace tn {
namespace {

template <typename S>
struct DeviceType {
  using type = S;
};
template <>
struct DeviceType<at::Half> {
  using type = __half;
};
template <>
struct DeviceType<at::BFloat16> {
  using type = __nv_bfloat16;
};

at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The plan's tables on the device; the tensors keep them alive for the call.
struct DevicePlan {
  Tensor ints, coef;
};

template <typename T>
cuda::Problem<T> make_problem(const cpu::Args& args, const Plan& plan, DevicePlan& dp) {
  using Acc = cuda::acc_t<T>;
  const auto dev = args.x.device();
  const int64_t rows = static_cast<int64_t>(plan.row_j.size());
  Tensor ints = at::empty({3 * std::max<int64_t>(rows, 1)}, at::kInt);
  for (int64_t r = 0; r < rows; ++r) {
    ints.mutable_data_ptr<int>()[r] = plan.row_j[r];
    ints.mutable_data_ptr<int>()[rows + r] = plan.row_deg[r];
    ints.mutable_data_ptr<int>()[2 * rows + r] = plan.row_off[r];
  }
  Tensor coef = at::tensor(plan.coef.empty() ? std::vector<double>{0.0} : plan.coef, at::kDouble)
                    .to(std::is_same_v<Acc, double> ? at::kDouble : at::kFloat);
  dp.ints = ints.to(dev);
  dp.coef = coef.to(dev);
  cuda::Problem<T> p;
  auto ptr = [](const Tensor& t) -> const T* {
    return t.defined() ? reinterpret_cast<const T*>(t.const_data_ptr()) : nullptr;
  };
  p.x = ptr(args.x);
  p.w0 = ptr(args.w0);
  p.w = ptr(args.w);
  p.b0 = ptr(args.b0);
  p.b = ptr(args.b);
  p.a = ptr(args.a);
  p.n = args.x.size(0);
  p.d = args.x.size(1);
  p.m = args.w.size(0);
  p.c = args.a.defined() ? args.a.size(0) : 0;
  if (args.signs.kind == cpu::Signs::kTensor) p.signs = ptr(args.signs.values);
  p.philox = args.signs.kind == cpu::Signs::kPhilox;
  p.seed = args.signs.seed;
  p.offset = args.signs.offset;
  p.first = args.signs.first_neuron;
  // bf16/fp16 always run on tensor cores; float32 only where torch allows TF32 matmuls
  // (torch.backends.cuda.matmul.allow_tf32, or float32_matmul_precision "high"/"medium").
  if constexpr (std::is_same_v<T, float>) p.tensor_cores = at::globalContext().allowTF32CuBLAS();
  else p.tensor_cores = !std::is_same_v<T, double>;
  // torch.use_deterministic_algorithms(True): run-to-run identical sums, at some loss of parallelism
  // when the outer grid is small.
  p.deterministic = at::globalContext().deterministicAlgorithms();
  p.scale[0] = static_cast<Acc>(args.scale);
  p.scale[1] = static_cast<Acc>(args.scale * args.scale);
  const int* di = dp.ints.const_data_ptr<int>();
  p.plan.act = plan.act;
  p.plan.exact = plan.exact;
  p.plan.basis = plan.basis;
  for (int q = 0; q <= kNumQuantities; ++q) p.plan.row_begin[q] = plan.row_begin[q];
  p.plan.row_j = di;
  p.plan.row_deg = di + rows;
  p.plan.row_off = di + 2 * rows;
  p.plan.coef = dp.coef.const_data_ptr<Acc>();
  return p;
}

template <typename F>
void dispatch_cuda_dtype(at::ScalarType t, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "taylornet_cuda", [&] {
    f(static_cast<typename DeviceType<scalar_t>::type*>(nullptr));
  });
}

template <typename T>
T* mut(Tensor& t) {
  return reinterpret_cast<T*>(t.mutable_data_ptr());
}

Tensor features_cuda(const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& b0,
                     const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
                     c10::string_view activation, at::IntArrayRef orders, bool exact) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, std::nullopt, b0, b, signs, seed, activation, orders, exact, std::nullopt);
  Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
  if (out.numel() == 0) return out;
  dispatch_cuda_dtype(x.scalar_type(), [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    DevicePlan dp;
    const auto p = make_problem<T>(c.args, *c.plan, dp);
    cuda::features_forward<T>(p, mut<T>(out), c10::cuda::getCurrentCUDAStream());
  });
  return out;
}

// dX by a reduction over neurons; dW, dW0, db, db0, dA by reductions over samples. `g` are the
// output cotangents of the net or moments; for the features op, `gelem` is the (n, m) cotangent of
// the features themselves and g is empty.
cpu::Grads backward_cuda(const Call& c, const std::vector<Tensor>& g, bool moments, const Tensor& gelem = {}) {
  const cpu::Args& args = c.args;
  const cpu::Needs& need = c.needs;
  const Tensor& x = args.x;
  const int64_t n = x.size(0), d = x.size(1), m = args.w.size(0), nc = args.a.defined() ? args.a.size(0) : 0;
  const auto acc_opt = x.options().dtype(acc_dtype(x.scalar_type()));
  cpu::Grads r;
  if (need.x) r.x = at::zeros({n, d}, acc_opt);
  if (need.w0) r.w0 = at::zeros({m, d}, acc_opt);
  if (need.w) r.w = at::zeros({m, d}, acc_opt);
  if (need.b0) r.b0 = at::zeros({m}, acc_opt);
  if (need.b) r.b = at::zeros({m}, acc_opt);
  Tensor da_t[2];  // (m, c): dA^T per readout
  for (int k = 0; k < (moments ? 2 : 1); ++k)
    if (need.a) da_t[k] = at::zeros({m, nc}, acc_opt);
  if (n > 0 && (nc > 0 || gelem.defined())) {
    dispatch_cuda_dtype(x.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      using Acc = cuda::acc_t<T>;
      const auto stream = c10::cuda::getCurrentCUDAStream();
      DevicePlan dp;
      auto p = make_problem<T>(args, *c.plan, dp);
      p.moments = moments;
      for (size_t k = 0; k < g.size(); ++k) p.gout[k] = reinterpret_cast<const T*>(g[k].const_data_ptr());
      if (gelem.defined()) {
        p.gelem = reinterpret_cast<const T*>(gelem.const_data_ptr());
        p.scale[0] = p.scale[1] = Acc(1);
      }
      if (need.x) {  // dX = G W + G0 W0
        cuda::NeuronSum<T> s;
        s.terms = 2;
        s.field[0] = cuda::kGradU;
        s.field[1] = cuda::kGradZ;
        s.z[0] = p.w;
        s.z[1] = p.w0;
        for (int t = 0; t < 2; ++t) {
          s.z_row[t] = d;
          s.z_col[t] = 1;
          s.out[t] = mut<Acc>(r.x);
        }
        s.ncols = d;
        s.ld_out = d;
        cuda::neuron_sum<T>(p, s, stream);
      }
      // Reductions over samples, two terms per pass (one recomputation of the pre-activations and
      // the epilogue): a weight gradient with its bias's (a column of ones), dA beside them.
      std::vector<cuda::SampleTerm<T>> terms;
      auto add_term = [&](cuda::Field field, const T* y, int64_t ncols, Tensor* out, Tensor* ones, Acc scl) {
        cuda::SampleTerm<T> t;
        t.field = field;
        t.y = y;
        t.ld_y = ncols;
        t.ncols = ncols;
        t.out = out ? mut<Acc>(*out) : nullptr;
        t.ld_out = ncols;
        t.ones = ones ? mut<Acc>(*ones) : nullptr;
        t.scale = scl;
        terms.push_back(t);
      };
      if (need.w || need.b)
        add_term(cuda::kGradU, need.w ? p.x : nullptr, need.w ? d : 0, need.w ? &r.w : nullptr,
                 need.b ? &r.b : nullptr, Acc(1));
      if (need.w0 || need.b0)
        add_term(cuda::kGradZ, need.w0 ? p.x : nullptr, need.w0 ? d : 0, need.w0 ? &r.w0 : nullptr,
                 need.b0 ? &r.b0 : nullptr, Acc(1));
      if (need.a)
        for (int k = 0; k < (moments ? 2 : 1); ++k)
          add_term(k == 0 ? cuda::kPhi0 : cuda::kPhi1, p.gout[k], nc, &da_t[k], nullptr, p.scale[k]);
      for (size_t t = 0; t < terms.size(); t += 2) {
        cuda::SampleSum<T> s;
        s.terms = terms.size() - t > 1 ? 2 : 1;
        for (int k = 0; k < s.terms; ++k) s.term[k] = terms[t + k];
        cuda::sample_sum<T>(p, s, stream);
      }
    });
  }
  if (need.a) {
    r.a = da_t[0].t();
    if (moments) r.a = r.a + 2 * args.a.to(r.a.scalar_type()) * da_t[1].t();
  }
  for (Tensor* t : {&r.x, &r.w0, &r.w, &r.a, &r.b0, &r.b})
    if (t->defined()) *t = t->to(x.scalar_type()).contiguous();
  return r;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> features_backward_cuda(
    const Tensor& grad, const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& b0,
    const OptTensor& b, const OptTensor& signs, const OptTensor& seed, c10::string_view activation,
    at::IntArrayRef orders, bool exact, std::array<bool, 5> needs) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, std::nullopt, b0, b, signs, seed, activation, orders, exact,
                         std::nullopt, feature_needs(needs));
  const Tensor g = checked_param(grad, "grad", x, {x.size(0), w.size(0)});
  // The net backward's reductions with the features' cotangent in place of gout A: no n x m buffer.
  const cpu::Grads r = backward_cuda(c, {}, false, g);
  return {or_empty(r.x, x), or_empty(r.w0, x), or_empty(r.w, x), or_empty(r.b0, x), or_empty(r.b, x)};
}

// out = scale * Phi A^T (and, for the moments, var = scale^2 Phi1 (A*A)^T).
std::vector<Tensor> readout_cuda(const Call& c, bool moments) {
  const cpu::Args& args = c.args;
  const int64_t n = args.x.size(0), nc = args.a.size(0), m = args.w.size(0);
  const auto acc_opt = args.x.options().dtype(acc_dtype(args.x.scalar_type()));
  std::vector<Tensor> outs;
  for (int k = 0; k < (moments ? 2 : 1); ++k) outs.push_back(at::zeros({n, nc}, acc_opt));
  if (n > 0 && nc > 0) {
    dispatch_cuda_dtype(args.x.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      using Acc = cuda::acc_t<T>;
      DevicePlan dp;
      auto p = make_problem<T>(args, *c.plan, dp);
      p.moments = moments;
      cuda::NeuronSum<T> s;
      s.terms = moments ? 2 : 1;
      s.ncols = nc;
      s.ld_out = nc;
      for (int t = 0; t < s.terms; ++t) {
        s.field[t] = t == 0 ? cuda::kPhi0 : cuda::kPhi1;
        s.z[t] = p.a;  // Z[r][j] = A[j][r]
        s.z_row[t] = 1;
        s.z_col[t] = m;
        s.square[t] = t == 1;
        s.out[t] = mut<Acc>(outs[t]);
        s.scale[t] = p.scale[t];
      }
      cuda::neuron_sum<T>(p, s, c10::cuda::getCurrentCUDAStream());
    });
  }
  for (auto& o : outs) o = o.to(args.x.scalar_type());
  return outs;
}

Tensor net_cuda(const Tensor& x, const Tensor& w0, const Tensor& w, const Tensor& a,
                const OptTensor& b0, const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
                c10::string_view activation, at::IntArrayRef orders, bool exact, double scale) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return readout_cuda(prepare(x, w0, w, a, b0, b, signs, seed, activation, orders, exact, scale), false)[0];
}

std::tuple<Tensor, Tensor> moments_cuda(const Tensor& x, const Tensor& w0, const Tensor& w,
                                        const Tensor& a, const OptTensor& b0, const OptTensor& b,
                                        c10::string_view activation, at::IntArrayRef orders,
                                        bool exact, double scale) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto outs = readout_cuda(
      prepare(x, w0, w, a, b0, b, std::nullopt, std::nullopt, activation, orders, exact, scale), true);
  return {outs[0], outs[1]};
}

SixGrads net_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& w0, const Tensor& w,
                           const Tensor& a, const OptTensor& b0, const OptTensor& b,
                           const OptTensor& signs, const OptTensor& seed, c10::string_view activation,
                           at::IntArrayRef orders, bool exact, double scale, std::array<bool, 6> needs) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, a, b0, b, signs, seed, activation, orders, exact, scale, net_needs(needs));
  return six(backward_cuda(c, checked_grads({grad}, x, a.size(0)), false), x);
}

SixGrads moments_backward_cuda(const Tensor& grad_mean, const Tensor& grad_var, const Tensor& x,
                               const Tensor& w0, const Tensor& w, const Tensor& a,
                               const OptTensor& b0, const OptTensor& b, c10::string_view activation,
                               at::IntArrayRef orders, bool exact, double scale,
                               std::array<bool, 6> needs) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, a, b0, b, std::nullopt, std::nullopt, activation, orders, exact,
                         scale, net_needs(needs));
  return six(backward_cuda(c, checked_grads({grad_mean, grad_var}, x, a.size(0)), true), x);
}

}  // namespace
}  // namespace tn

TORCH_LIBRARY_IMPL(taylornet, CUDA, m) {
  m.impl("features", &tn::features_cuda);
  m.impl("features_backward", &tn::features_backward_cuda);
  m.impl("net", &tn::net_cuda);
  m.impl("net_backward", &tn::net_backward_cuda);
  m.impl("moments", &tn::moments_cuda);
  m.impl("moments_backward", &tn::moments_backward_cuda);
}
#endif  // TAYLORNET_WITH_CUDA
