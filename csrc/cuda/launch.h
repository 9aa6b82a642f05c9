// The CUDA launch layer: everything between a checked op call and the kernels, free of torch. It
// builds the kernels' problem (operands, signs, the plan's tables by value, scales), chooses the
// kernels (kernel_choice.h), assembles the reductions (dX; dW, dW0, db, db0, dA in one pass),
// zeroes and accumulates, combines dA = dA0 + 2 A dA1 for the moments, and casts to the output
// type. Every launch and runtime query is checked: a failure throws Error, naming the kernel and
// the CUDA error. Nothing here synchronises with the host or copies host memory to the device.
//
// The caller (cuda/ops_cuda.cpp, or the CPU emulator in tests/emulator/) checks the arguments,
// allocates the outputs and hands over a Workspace; the definitions are in launch.cuh, instantiated
// per storage type by taylor_<dtype>.cu.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include "cuda/kernel_choice.h"
#include "taylornet/series.h"

namespace tn::cuda {

// A failed launch, runtime call or kernel choice; its message says which and why.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The GPU a call runs on.
struct Device {
  int index = 0;
  int arch = 0;  // compute capability, major * 10 + minor
  int sms = 1;   // streaming multiprocessors
  int64_t smem_optin = 48 * 1024;  // shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin)
};

// Device memory for the duration of one call, ordered on its stream (the caller's allocator).
struct Workspace {
  virtual ~Workspace() = default;
  virtual void* allocate(size_t bytes) = 0;
};

// Where and how a call runs.
struct Context {
  Device device;
  cudaStream_t stream = nullptr;
  bool allow_tf32 = false;     // float32 may run on tensor cores as TF32
  bool deterministic = false;  // run-to-run identical sums (no split inner loops)
  Mainloop requested = Mainloop::kAuto;
  bool generic_epilogue = false;  // the tensor-core kernels skip their specialised epilogues
  bool tensor_copies = true;      // the wgmma kernel stages through the copy engine where it can (else cp.async)
  bool overlap_stage1 = true;     // the wgmma reductions run the next tile's products under this tile's epilogue
  bool pingpong = false;          // the wgmma features forward runs on the warp-specialised ping-pong kernel
  Workspace* workspace = nullptr;
};

// The operands of one call: contiguous row-major device arrays of storage type `dtype`.
struct Operands {
  DType dtype = DType::kFloat32;
  const void *x = nullptr, *w0 = nullptr, *w = nullptr;  // (n, d), (m, d), (m, d)
  const void *b0 = nullptr, *b = nullptr;                // (m,), or null
  const void* a = nullptr;                               // (c, m) readout (net, moments)
  const void* signs = nullptr;                           // (m,) explicit signs, or null
  bool philox = false;                                   // else signs from (seed, offset, first)
  uint64_t seed = 0, offset = 0, first = 0;
  int64_t n = 0, d = 0, m = 0, c = 0;
  double scale = 1.0;
  const Plan* plan = nullptr;  // built with need_dz where d/dz0 gradients are asked for
};

// Gradient outputs in the operands' type, each of its operand's shape; null where not asked for.
struct GradOutputs {
  void *x = nullptr, *w0 = nullptr, *w = nullptr, *a = nullptr, *b0 = nullptr, *b = nullptr;
};

// The per-type definitions behind the functions below (launch.cuh).
template <typename T>
struct Launch {
  static void features_forward(const Operands& op, void* out, const Context& ctx);
  static void readout(const Operands& op, bool moments, void* out, void* var, const Context& ctx);
  static void backward(const Operands& op, bool moments, const void* const gout[2], const void* gelem,
                       const GradOutputs& out, const Context& ctx);
};

// Each taylor_<dtype>.cu instantiates its own type (the dispatchers below name all four: without
// these declarations every translation unit would compile every type's kernels).
extern template struct Launch<double>;
extern template struct Launch<float>;
extern template struct Launch<__half>;
extern template struct Launch<__nv_bfloat16>;

template <typename F>
void by_dtype(DType t, F&& f) {
  switch (t) {
    case DType::kFloat64: return f(static_cast<double*>(nullptr));
    case DType::kFloat32: return f(static_cast<float*>(nullptr));
    case DType::kFloat16: return f(static_cast<__half*>(nullptr));
    case DType::kBFloat16: return f(static_cast<__nv_bfloat16*>(nullptr));
  }
  throw Error("taylornet: internal: unknown CUDA dtype");
}

// out (n, m): the features h.
inline void features_forward(const Operands& op, void* out, const Context& ctx) {
  by_dtype(op.dtype, [&](auto* tag) { Launch<std::remove_pointer_t<decltype(tag)>>::features_forward(op, out, ctx); });
}

// out (n, c): scale * h A^T; with moments, out = E_S f and var = Var_S f (both (n, c)).
inline void readout(const Operands& op, bool moments, void* out, void* var, const Context& ctx) {
  by_dtype(op.dtype, [&](auto* tag) { Launch<std::remove_pointer_t<decltype(tag)>>::readout(op, moments, out, var, ctx); });
}

// The gradients of the features op for its (n, m) cotangent `grad` (out.a stays null).
inline void features_backward(const Operands& op, const void* grad, const GradOutputs& out, const Context& ctx) {
  by_dtype(op.dtype, [&](auto* tag) {
    Launch<std::remove_pointer_t<decltype(tag)>>::backward(op, false, nullptr, grad, out, ctx);
  });
}

// The gradients of the net op (gout[0], (n, c)) or of the moments (gout[0] for the mean, gout[1]
// for the variance).
inline void net_backward(const Operands& op, bool moments, const void* const gout[2], const GradOutputs& out,
                         const Context& ctx) {
  by_dtype(op.dtype, [&](auto* tag) {
    Launch<std::remove_pointer_t<decltype(tag)>>::backward(op, moments, gout, nullptr, out, ctx);
  });
}

}  // namespace tn::cuda
