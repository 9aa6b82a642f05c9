// CPU kernels of the taylornet ops. The implementation (taylor_cpu.cpp) is compiled once per
// instruction set (CPU_CAPABILITY = DEFAULT, AVX2, AVX512); kernels() returns the best one the
// machine supports, as ATen's own kernels do, unless a lower one was forced.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "op_call.h"

namespace tn::cpu {

// The argument types (Signs, Args, Needs) are tn's, from op_call.h.
using Grads = GradTensors;

struct Kernels {
  at::Tensor (*features_forward)(const Args&);
  // (h, dh/du, dh/dz0): the features and the derivatives their backward needs; dh/dz0 only when
  // need_dz (else an empty tensor).
  std::vector<at::Tensor> (*features_forward_saving)(const Args&, bool need_dz);
  Grads (*features_backward)(const Args&, const at::Tensor& grad, const Needs&);
  // moments == false: the net, one output (n, c). moments == true: (mean, var).
  std::vector<at::Tensor> (*net_forward)(const Args&, bool moments);
  Grads (*net_backward)(const Args&, bool moments, const std::vector<at::Tensor>& grads, const Needs&);
  // dw = (grad * du)^T x and, where db is defined, db = sum over samples of grad * du (grad and du
  // (n, m) and x (n, d) contiguous; dw (m, d) and db (m) written whole). False where this build
  // has no such kernel or d is beyond the range where it is the faster way: the caller then
  // computes them itself.
  bool (*weight_grad_saved)(const at::Tensor& grad, const at::Tensor& du, const at::Tensor& x, at::Tensor& dw,
                            at::Tensor& db);
  // The largest d this build's fused dual-product kernels take under a limit set for every build
  // (kAutoFusedMaxDim: this build's default; the result is 0 where the build has no such kernels);
  // above it ATen's BLAS computes the products on tiles.
  int64_t (*build_fused_max_dim)(int64_t setting);
};

const Kernels& kernels();

// An uninitialised tensor for an n x m buffer of the features forward (its output, or a derivative
// that a training forward keeps for its backward), from the cache of such buffers
// (recycled_buffers.cpp).
at::Tensor recycled_buffer(at::IntArrayRef sizes, const at::TensorOptions& options);
// (bytes cached, limit in bytes) of that cache, after setting the limit when one is given (0: no
// cache; lowering it frees released buffers beyond it at once).
std::vector<int64_t> saved_cache(std::optional<int64_t> limit_bytes);

// The instruction set of kernels(): "DEFAULT", "AVX2" or "AVX512". set_capability forces one the
// CPU supports ("" restores the best); the environment variable TAYLORNET_CPU_CAPABILITY sets the
// starting choice. An unsupported name raises a ValueError naming the supported ones.
std::string capability();
void set_capability(const std::string& name);

// The largest d the fused kernels take: a limit set for every build (set_fused_max_dim, or the
// environment variable TAYLORNET_FUSED_MAX_DIM at start-up), else the build's own default
// (kAutoFusedMaxDim). fused_max_dim() is the limit in effect for kernels(); kNoFusedLimit: none.
constexpr int64_t kAutoFusedMaxDim = -1;
constexpr int64_t kNoFusedLimit = std::numeric_limits<int64_t>::max();
int64_t fused_max_dim_setting();  // the limit set for every build, or kAutoFusedMaxDim
void set_fused_max_dim(int64_t limit);
int64_t fused_max_dim();

}  // namespace tn::cpu
