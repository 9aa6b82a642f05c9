// Autograd for the fused ops, registered in C++ for every device: the forward ops record a node
// that calls their backward op; the backward ops record a node that raises when differentiated.
// In C++ a call costs a few microseconds of autograd bookkeeping where a Python-registered
// autograd formula would add a Python function object, its context and the filling-in of the
// schema's defaults (about 0.2 ms per forward + backward of a small problem).
//
// Every op is called through the dispatcher below the autograd keys, so each device's kernel, the
// fake kernels of taylornet/ops.py and torch.compile's tracing all see the ops themselves.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/basic_ops.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

namespace tn {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The typed handle of op `name` (each call site keeps its own in a static).
template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// Which of the N differentiable arguments (x, w0, w, (a,) b0, b) this backward must compute a
// gradient for. Autograd numbers the inputs that were tensors, so an absent b0 shifts b's index.
template <size_t N>
std::array<bool, N> needs_of(AutogradContext* ctx, bool has_b0, bool has_b) {
  std::array<bool, N> needs{};
  size_t edge = 0;
  for (size_t i = 0; i < N; ++i) {
    const bool present = i < N - 2 || (i == N - 2 ? has_b0 : has_b);
    if (present) needs[i] = ctx->needs_input_grad(edge++);
  }
  return needs;
}

// The gradients asked for (the backward ops return empty tensors for the others, which autograd
// must receive as undefined), then an undefined one for each remaining forward argument.
template <size_t N>
variable_list grads_of(const std::array<bool, N>& needs, std::array<Tensor, N> grads, size_t n_args) {
  variable_list out(n_args);
  for (size_t i = 0; i < N; ++i)
    if (needs[i]) out[i] = std::move(grads[i]);
  return out;
}

template <typename Tuple, size_t... I>
auto tuple_to_array(Tuple&& t, std::index_sequence<I...>) {
  return std::array<Tensor, sizeof...(I)>{std::get<I>(std::forward<Tuple>(t))...};
}
template <typename... Ts>
std::array<Tensor, sizeof...(Ts)> to_array(std::tuple<Ts...>&& t) {
  return tuple_to_array(std::move(t), std::index_sequence_for<Ts...>{});
}

Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }
OptTensor or_none(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// The series arguments (activation, orders, exact) that every backward op takes again, saved by
// the forward and read back by the backward.
struct Series {
  std::string activation;
  std::vector<int64_t> orders;
  bool exact;
};
void save_series(AutogradContext* ctx, c10::string_view activation, at::IntArrayRef orders, bool exact) {
  ctx->saved_data["activation"] = std::string(activation);
  ctx->saved_data["orders"] = orders.vec();
  ctx->saved_data["exact"] = exact;
}
Series saved_series(AutogradContext* ctx) {
  return {ctx->saved_data["activation"].toStringRef(), ctx->saved_data["orders"].toIntVector(),
          ctx->saved_data["exact"].toBool()};
}

// ---- features ---------------------------------------------------------------------------------

using FeaturesSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
                           const OptTensor&, const OptTensor&, c10::string_view, at::IntArrayRef, bool);
using FeaturesBackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&,
    const OptTensor&, const OptTensor&, c10::string_view, at::IntArrayRef, bool, std::array<bool, 5>);

struct Features : torch::autograd::Function<Features> {
  static constexpr size_t kArgs = 10;
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w0, const Tensor& w,
                        const OptTensor& b0, const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
                        c10::string_view activation, at::IntArrayRef orders, bool exact) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({x, w0, w, or_undefined(b0), or_undefined(b), or_undefined(signs), or_undefined(seed)});
    save_series(ctx, activation, orders, exact);
    static const auto op = op_handle<FeaturesSig>("taylornet::features");
    return op.call(x, w0, w, b0, b, signs, seed, activation, orders, exact);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto s = ctx->get_saved_variables();
    const auto needs = needs_of<5>(ctx, s[3].defined(), s[4].defined());
    const Series series = saved_series(ctx);
    static const auto op = op_handle<FeaturesBackwardSig>("taylornet::features_backward");
    auto grads = op.call(grad_outputs[0].contiguous(), s[0], s[1], s[2], or_none(s[3]), or_none(s[4]), or_none(s[5]),
                         or_none(s[6]), series.activation, series.orders, series.exact, needs);
    return grads_of(needs, to_array(std::move(grads)), kArgs);
  }
};

Tensor features_autograd(const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& b0,
                         const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
                         c10::string_view activation, at::IntArrayRef orders, bool exact) {
  return Features::apply(x, w0, w, b0, b, signs, seed, activation, orders, exact);
}

// ---- features_saving: h with the derivatives its backward needs (saved, not differentiable) ----

using FeaturesSavingSig = std::tuple<Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    const OptTensor&, c10::string_view, at::IntArrayRef, bool, bool);
using FeaturesBackwardSavedSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, bool, bool,
    std::array<bool, 5>);

struct FeaturesSaving : torch::autograd::Function<FeaturesSaving> {
  static constexpr size_t kArgs = 11;
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w0, const Tensor& w,
                               const OptTensor& b0, const OptTensor& b, const OptTensor& signs,
                               const OptTensor& seed, c10::string_view activation, at::IntArrayRef orders,
                               bool exact, bool need_dz) {
    at::AutoDispatchBelowADInplaceOrView below;
    static const auto op = op_handle<FeaturesSavingSig>("taylornet::features_saving");
    auto [h, du, dz] = op.call(x, w0, w, b0, b, signs, seed, activation, orders, exact, need_dz);
    ctx->save_for_backward({x, w0, w, du, dz});
    ctx->saved_data["has_b0"] = or_undefined(b0).defined();
    ctx->saved_data["has_b"] = or_undefined(b).defined();
    ctx->mark_non_differentiable({du, dz});
    // No zero tensors for the cotangents of du and dz, which nothing differentiates: each would be
    // another n x m buffer at the backward's peak.
    ctx->set_materialize_grads(false);
    return {h, du, dz};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // Only du or dz reached the loss (a direct call of the op): they carry no gradient.
    if (!grad_outputs[0].defined()) return variable_list(kArgs);
    const auto s = ctx->get_saved_variables();
    const bool has_b0 = ctx->saved_data["has_b0"].toBool(), has_b = ctx->saved_data["has_b"].toBool();
    const auto needs = needs_of<5>(ctx, has_b0, has_b);
    static const auto op = op_handle<FeaturesBackwardSavedSig>("taylornet::features_backward_saved");
    auto grads = op.call(grad_outputs[0].contiguous(), s[3], s[4], s[0], s[1], s[2], has_b0, has_b, needs);
    return grads_of(needs, to_array(std::move(grads)), kArgs);
  }
};

std::tuple<Tensor, Tensor, Tensor> features_saving_autograd(
    const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& b0, const OptTensor& b,
    const OptTensor& signs, const OptTensor& seed, c10::string_view activation, at::IntArrayRef orders,
    bool exact, bool need_dz) {
  auto outs = FeaturesSaving::apply(x, w0, w, b0, b, signs, seed, activation, orders, exact, need_dz);
  return {outs[0], outs[1], outs[2]};
}

// ---- net --------------------------------------------------------------------------------------

using NetSig = Tensor(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                      const OptTensor&, const OptTensor&, const OptTensor&, c10::string_view, at::IntArrayRef,
                      bool, double);
using NetBackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
    const OptTensor&, const OptTensor&, const OptTensor&, c10::string_view, at::IntArrayRef, bool, double,
    std::array<bool, 6>);

struct Net : torch::autograd::Function<Net> {
  static constexpr size_t kArgs = 12;
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w0, const Tensor& w,
                        const Tensor& a, const OptTensor& b0, const OptTensor& b, const OptTensor& signs,
                        const OptTensor& seed, c10::string_view activation, at::IntArrayRef orders, bool exact,
                        double scale) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward(
        {x, w0, w, a, or_undefined(b0), or_undefined(b), or_undefined(signs), or_undefined(seed)});
    save_series(ctx, activation, orders, exact);
    ctx->saved_data["scale"] = scale;
    static const auto op = op_handle<NetSig>("taylornet::net");
    return op.call(x, w0, w, a, b0, b, signs, seed, activation, orders, exact, scale);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto s = ctx->get_saved_variables();
    const auto needs = needs_of<6>(ctx, s[4].defined(), s[5].defined());
    const Series series = saved_series(ctx);
    static const auto op = op_handle<NetBackwardSig>("taylornet::net_backward");
    auto grads = op.call(grad_outputs[0].contiguous(), s[0], s[1], s[2], s[3], or_none(s[4]), or_none(s[5]),
                         or_none(s[6]), or_none(s[7]), series.activation, series.orders, series.exact,
                         ctx->saved_data["scale"].toDouble(), needs);
    return grads_of(needs, to_array(std::move(grads)), kArgs);
  }
};

Tensor net_autograd(const Tensor& x, const Tensor& w0, const Tensor& w, const Tensor& a, const OptTensor& b0,
                    const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
                    c10::string_view activation, at::IntArrayRef orders, bool exact, double scale) {
  return Net::apply(x, w0, w, a, b0, b, signs, seed, activation, orders, exact, scale);
}

// ---- moments ----------------------------------------------------------------------------------

using MomentsSig = std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                              const OptTensor&, const OptTensor&, c10::string_view,
                                              at::IntArrayRef, bool, double);
using MomentsBackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
    const OptTensor&, c10::string_view, at::IntArrayRef, bool, double, std::array<bool, 6>);

struct Moments : torch::autograd::Function<Moments> {
  static constexpr size_t kArgs = 10;
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& w0, const Tensor& w,
                               const Tensor& a, const OptTensor& b0, const OptTensor& b,
                               c10::string_view activation, at::IntArrayRef orders, bool exact, double scale) {
    at::AutoDispatchBelowADInplaceOrView below;
    ctx->save_for_backward({x, w0, w, a, or_undefined(b0), or_undefined(b)});
    save_series(ctx, activation, orders, exact);
    ctx->saved_data["scale"] = scale;
    static const auto op = op_handle<MomentsSig>("taylornet::moments");
    auto [mean, var] = op.call(x, w0, w, a, b0, b, activation, orders, exact, scale);
    return {mean, var};
  }
  // An output that did not reach the loss gets a zero cotangent (autograd materializes it).
  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto s = ctx->get_saved_variables();
    const auto needs = needs_of<6>(ctx, s[4].defined(), s[5].defined());
    const Series series = saved_series(ctx);
    static const auto op = op_handle<MomentsBackwardSig>("taylornet::moments_backward");
    auto grads = op.call(grad_outputs[0].contiguous(), grad_outputs[1].contiguous(), s[0], s[1], s[2], s[3],
                         or_none(s[4]), or_none(s[5]), series.activation, series.orders, series.exact,
                         ctx->saved_data["scale"].toDouble(), needs);
    return grads_of(needs, to_array(std::move(grads)), kArgs);
  }
};

std::tuple<Tensor, Tensor> moments_autograd(const Tensor& x, const Tensor& w0, const Tensor& w, const Tensor& a,
                                            const OptTensor& b0, const OptTensor& b, c10::string_view activation,
                                            at::IntArrayRef orders, bool exact, double scale) {
  auto outs = Moments::apply(x, w0, w, a, b0, b, activation, orders, exact, scale);
  return {outs[0], outs[1]};
}

// ---- the backward ops: second derivatives are not implemented ---------------------------------

// Runs a backward op below autograd; where its result would be differentiated (a backward with
// create_graph=True), its outputs get a node that raises instead of autograd's silent zero.
void no_double_backward(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const size_t n_in = schema.arguments().size();
  std::vector<Tensor> differentiable_inputs;
  if (at::GradMode::is_enabled()) {
    for (const c10::IValue& v : torch::jit::last(*stack, n_in))
      if (v.isTensor() && v.toTensor().requires_grad()) differentiable_inputs.push_back(v.toTensor());
  }
  {
    at::AutoDispatchBelowADInplaceOrView below;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  if (differentiable_inputs.empty()) return;
  const std::string name = schema.operator_name().name.substr(std::string("taylornet::").size());
  auto node = c10::make_intrusive<torch::autograd::Error>(
      "taylornet: " + name + " does not support double backward (second derivatives); use "
                             "taylornet.reference for higher-order autograd",
      torch::autograd::collect_next_edges(differentiable_inputs));
  for (const c10::IValue& v : torch::jit::last(*stack, schema.returns().size())) {
    Tensor t = v.toTensor();
    if (t.defined() && t.numel() > 0) torch::autograd::set_history(t, node);
  }
}

}  // namespace
}  // namespace tn

TORCH_LIBRARY_IMPL(taylornet, Autograd, m) {
  m.impl("features", &tn::features_autograd);
  m.impl("features_saving", &tn::features_saving_autograd);
  m.impl("net", &tn::net_autograd);
  m.impl("moments", &tn::moments_autograd);
  for (const char* name : {"features_backward", "features_backward_saved", "net_backward", "moments_backward"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&tn::no_double_backward>());
}
