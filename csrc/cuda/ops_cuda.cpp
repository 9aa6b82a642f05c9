// The CUDA implementations of the taylornet ops: the checks and plans of prepare() (op_call.h), the
// outputs allocated, then the torch-free launch layer (launch.h) on torch's current stream. Nothing
// here waits for the device or copies from the host: the plan travels in the kernel parameters,
// workspace comes from torch's caching allocator in stream order, so every op may be captured in a
// CUDA graph. A failed launch or runtime call raises RuntimeError naming the kernel and the error.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "cuda/launch.h"
#include "op_call.h"

namespace tn {
namespace {

using at::Tensor;

cuda::DType cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return cuda::DType::kFloat64;
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: TORCH_CHECK_VALUE(false, "taylornet: x: expected float64, float32, float16 or bfloat16 on CUDA, got ", t);
  }
}

// Workspace from torch's caching allocator: alive until the op returns, reusable by later work on
// the same stream (and inside a CUDA graph capture, from the graph's private pool).
struct TensorWorkspace final : cuda::Workspace {
  explicit TensorWorkspace(const at::Device& device) : options(at::TensorOptions().dtype(at::kByte).device(device)) {}
  void* allocate(size_t bytes) override {
    held.push_back(at::empty({static_cast<int64_t>(bytes)}, options));
    return held.back().mutable_data_ptr();
  }
  at::TensorOptions options;
  std::vector<Tensor> held;
};

// The GPU's compute capability, SM count and shared memory per block, asked of the runtime once
// per device.
cuda::Device device_info(int index) {
  static std::mutex mutex;
  static std::vector<cuda::Device> known;
  const std::lock_guard<std::mutex> lock(mutex);
  for (const cuda::Device& d : known)
    if (d.index == index) return d;
  cuda::Device d;
  d.index = index;
  int major = 0, minor = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, index));
  int smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, index));
  d.smem_optin = smem;
  d.arch = major * 10 + minor;
  known.push_back(d);
  return d;
}

// TAYLORNET_CUDA_MAINLOOP: auto (default), or one mainloop by name, for tests and benchmarks.
cuda::Mainloop requested_mainloop() {
  const char* env = std::getenv("TAYLORNET_CUDA_MAINLOOP");
  cuda::Mainloop m = cuda::Mainloop::kAuto;
  TORCH_CHECK_VALUE(cuda::parse_mainloop(env ? env : "", m), "taylornet: TAYLORNET_CUDA_MAINLOOP: expected one of ",
                    cuda::mainloop_list(), ", got '", env, "'");
  return m;
}


// The environment switch `name`: 1 on, 0 off, unset `fallback`.
bool switch_on(const char* name, bool fallback = true) {
  const char* env = std::getenv(name);
  const std::string v = env ? env : "";
  TORCH_CHECK_VALUE(v.empty() || v == "0" || v == "1", "taylornet: ", name, ": expected 0 or 1, got '", v, "'");
  return v.empty() ? fallback : v == "1";
}

// One op call on the GPU: the layer's operands and context, and the workspace they use.
struct CudaCall {
  explicit CudaCall(const Call& c) : workspace(c.args.x.device()) {
    const Args& a = c.args;
    const int index = a.x.device().index();
    ctx.device = device_info(index);
    ctx.stream = c10::cuda::getCurrentCUDAStream(index).stream();
    // float32 on tensor cores where torch allows TF32 matmuls (torch.backends.cuda.matmul.allow_tf32,
    // or float32_matmul_precision "high"/"medium"); bf16 and fp16 always.
    ctx.allow_tf32 = at::globalContext().allowTF32CuBLAS();
    // torch.use_deterministic_algorithms(True): run-to-run identical sums, at some loss of
    // parallelism when the outer grid is small.
    ctx.deterministic = at::globalContext().deterministicAlgorithms();
    ctx.requested = requested_mainloop();
    // TAYLORNET_CUDA_EPILOGUE=generic: the tensor-core kernels take the plan-driven epilogue for
    // every series
    ctx.generic_epilogue = generic_epilogue_requested("TAYLORNET_CUDA_EPILOGUE");
    // TAYLORNET_CUDA_TMA=0: the wgmma kernels stage their tiles with cp.async instead of the copy
    // engine's tensor copies (1 or unset: tensor copies where the shapes allow them).
    ctx.tensor_copies = switch_on("TAYLORNET_CUDA_TMA");
    // TAYLORNET_CUDA_OVERLAP=0: the wgmma reductions run each tile's products after the previous
    // tile's epilogue instead of under it (1 or unset: overlapped where shared memory allows).
    ctx.overlap_stage1 = switch_on("TAYLORNET_CUDA_OVERLAP");
    // TAYLORNET_CUDA_PINGPONG=1: the wgmma features forward runs on the warp-specialised ping-pong
    // kernel where it has tensor maps (0 or unset: the plain kernel, two blocks per SM).
    ctx.pingpong = switch_on("TAYLORNET_CUDA_PINGPONG", false);
    ctx.workspace = &workspace;
    op.dtype = cuda_dtype(a.x.scalar_type());
    auto ptr = [](const Tensor& t) -> const void* { return t.defined() ? t.const_data_ptr() : nullptr; };
    op.x = ptr(a.x);
    op.w0 = ptr(a.w0);
    op.w = ptr(a.w);
    op.b0 = ptr(a.b0);
    op.b = ptr(a.b);
    op.a = ptr(a.a);
    op.n = a.x.size(0);
    op.d = a.x.size(1);
    op.m = a.w.size(0);
    op.c = a.a.defined() ? a.a.size(0) : 0;
    if (a.signs.kind == Signs::kTensor) op.signs = ptr(a.signs.values);
    op.philox = a.signs.kind == Signs::kPhilox;
    op.seed = a.signs.seed;
    op.offset = a.signs.offset;
    op.first = a.signs.first_neuron;
    op.scale = a.scale;
    op.plan = a.plan;
  }

  // Runs f(operands, context), turning a layer error into a RuntimeError at the op call.
  template <typename F>
  void run(F&& f) {
    try {
      f(op, ctx);
    } catch (const cuda::Error& e) {
      TORCH_CHECK(false, e.what());
    }
  }

  cuda::Operands op;
  cuda::Context ctx;
  TensorWorkspace workspace;
};

// The gradient outputs asked for, allocated like their operands.
struct GradBuffers {
  GradBuffers(const Call& c, bool with_a) {
    const Args& a = c.args;
    auto make = [&](bool need, const Tensor& like, void*& slot) -> Tensor {
      if (!need) return {};
      Tensor t = at::empty(like.sizes(), like.options());
      slot = t.mutable_data_ptr();
      return t;
    };
    r.x = make(c.needs.x, a.x, ptrs.x);
    r.w0 = make(c.needs.w0, a.w0, ptrs.w0);
    r.w = make(c.needs.w, a.w, ptrs.w);
    if (with_a) r.a = make(c.needs.a, a.a, ptrs.a);
    r.b0 = make(c.needs.b0, a.b0, ptrs.b0);
    r.b = make(c.needs.b, a.b, ptrs.b);
  }
  GradTensors r;
  cuda::GradOutputs ptrs;
};

Tensor features_cuda(const Tensor& x, const Tensor& w0, const Tensor& w, const OptTensor& b0,
                     const OptTensor& b, const OptTensor& signs, const OptTensor& seed,
                     c10::string_view activation, at::IntArrayRef orders, bool exact) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, std::nullopt, b0, b, signs, seed, activation, orders, exact, std::nullopt);
  Tensor out = at::empty({x.size(0), w.size(0)}, x.options());
  CudaCall call(c);
  call.run([&](const cuda::Operands& op, const cuda::Context& ctx) {
    cuda::features_forward(op, out.mutable_data_ptr(), ctx);
  });
  return out;
}

FiveGrads features_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& w0, const Tensor& w,
                                 const OptTensor& b0, const OptTensor& b, const OptTensor& signs,
                                 const OptTensor& seed, c10::string_view activation, at::IntArrayRef orders,
                                 bool exact, std::array<bool, 5> needs) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, std::nullopt, b0, b, signs, seed, activation, orders, exact,
                         std::nullopt, feature_needs(needs));
  const Tensor g = checked_param(grad, "grad", x, {x.size(0), w.size(0)});
  GradBuffers out(c, false);
  CudaCall call(c);
  // The net backward's reductions with the features' cotangent in place of gout A: no n x m buffer.
  call.run([&](const cuda::Operands& op, const cuda::Context& ctx) {
    cuda::features_backward(op, g.const_data_ptr(), out.ptrs, ctx);
  });
  return five(out.r, x);
}

std::vector<Tensor> readout_cuda(const Call& c, bool moments) {
  const Args& a = c.args;
  std::vector<Tensor> outs;
  for (int k = 0; k < (moments ? 2 : 1); ++k) outs.push_back(at::empty({a.x.size(0), a.a.size(0)}, a.x.options()));
  CudaCall call(c);
  call.run([&](const cuda::Operands& op, const cuda::Context& ctx) {
    cuda::readout(op, moments, outs[0].mutable_data_ptr(), moments ? outs[1].mutable_data_ptr() : nullptr, ctx);
  });
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

SixGrads net_backward_common(const Call& c, const std::vector<Tensor>& g, bool moments) {
  GradBuffers out(c, true);
  const void* gout[2] = {g[0].const_data_ptr(), moments ? g[1].const_data_ptr() : nullptr};
  CudaCall call(c);
  call.run([&](const cuda::Operands& op, const cuda::Context& ctx) {
    cuda::net_backward(op, moments, gout, out.ptrs, ctx);
  });
  return six(out.r, c.args.x);
}

SixGrads net_backward_cuda(const Tensor& grad, const Tensor& x, const Tensor& w0, const Tensor& w,
                           const Tensor& a, const OptTensor& b0, const OptTensor& b,
                           const OptTensor& signs, const OptTensor& seed, c10::string_view activation,
                           at::IntArrayRef orders, bool exact, double scale, std::array<bool, 6> needs) {
  const c10::cuda::CUDAGuard guard(x.device());
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Call c = prepare(x, w0, w, a, b0, b, signs, seed, activation, orders, exact, scale, net_needs(needs));
  return net_backward_common(c, checked_grads({grad}, x, a.size(0)), false);
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
  return net_backward_common(c, checked_grads({grad_mean, grad_var}, x, a.size(0)), true);
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
