// The checked arguments of one op call, shared by the CPU implementation (ops.cpp, cpu/) and the
// CUDA one (cuda/ops_cuda.cpp): contiguous operands, the sign source, the Taylor plan and the
// gradients asked for. prepare() is the one place that checks them.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "taylornet/series.h"

namespace tn {

struct Signs {
  enum Kind { kNone, kTensor, kPhilox } kind = kNone;
  at::Tensor values;  // (m,) contiguous, same dtype and device as x, when kind == kTensor
  uint64_t seed = 0, offset = 0;
  uint64_t first_neuron = 0;  // global index of local neuron 0 (width-sharded models)
};

// Contiguous operands of one call. b0 / b are undefined when absent.
struct Args {
  at::Tensor x, w0, w, b0, b;  // (n, d), (m, d), (m, d), (m,), (m,)
  at::Tensor a;                // (c, m) readout, for the net ops
  Signs signs;
  const Plan* plan = nullptr;
  double scale = 1.0;
};

// Which gradients to compute, in the op order x, w0, w, a, b0, b.
struct Needs {
  bool x = false, w0 = false, w = false, a = false, b0 = false, b = false;
  bool dz() const { return x || w0 || b0; }
};

// Gradients in the op order; undefined where not needed.
struct GradTensors {
  at::Tensor x, w0, w, a, b0, b;
};

// One checked call. Every op implementation, CPU or CUDA, starts from one of these.
struct Call {
  Args args;
  Needs needs;  // b0 / b only where present
  std::unique_ptr<const Plan> plan;  // args.plan points here
};

using OptTensor = std::optional<at::Tensor>;

Call prepare(const at::Tensor& x, const at::Tensor& w0, const at::Tensor& w, const OptTensor& a,
             const OptTensor& b0, const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
             c10::string_view activation, at::IntArrayRef orders, bool exact,
             std::optional<double> scale, const Needs& needs = {});

// The needs lists of the backward schemas: (x, w0, w, b0, b) and (x, w0, w, a, b0, b).
Needs feature_needs(const std::array<bool, 5>& n);
Needs net_needs(const std::array<bool, 6>& n);

// t checked against x's dtype and device and `shape`, made contiguous.
at::Tensor checked_param(const at::Tensor& t, const char* name, const at::Tensor& x, at::IntArrayRef shape);
// Output cotangents, each (n, c).
std::vector<at::Tensor> checked_grads(const std::vector<at::Tensor>& grads, const at::Tensor& x, int64_t c);
// t, or an empty tensor like `like` (a gradient that was not asked for).
at::Tensor or_empty(const at::Tensor& t, const at::Tensor& like);

// The value of the environment variable `variable`, read at each call: one of `values`, whose first
// is the default, also where the variable is unset or empty; any other value raises a ValueError
// naming the variable and the values.
std::string env_choice(const char* variable, const std::vector<std::string>& values);

// The environment variable `variable` as a whole number in [0, max], or nullopt where it is unset or
// empty; any other value raises a ValueError naming the variable and `expected`.
std::optional<int64_t> env_count(const char* variable, const char* expected, int64_t max);

// Whether the environment variable `variable`, read at each call, asks for `alternative` instead of
// the default ("auto" or unset); any other value raises a ValueError naming the variable.
bool env_requests(const char* variable, const std::string& alternative);

// Whether the environment variable `variable` (TAYLORNET_CPU_EPILOGUE, TAYLORNET_CUDA_EPILOGUE) asks
// for the plan-driven epilogue ("generic") instead of the one specialised for the call's series
// ("auto", the default, or unset). Read at each call; any other value raises a ValueError.
bool generic_epilogue_requested(const char* variable);

// The backward schemas' results: (x, w0, w, b0, b) and (x, w0, w, a, b0, b), empty where not asked for.
using FiveGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using SixGrads = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
FiveGrads five(const GradTensors& r, const at::Tensor& x);
SixGrads six(const GradTensors& r, const at::Tensor& x);

}  // namespace tn
