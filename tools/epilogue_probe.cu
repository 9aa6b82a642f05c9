// The SASS cost of the tensor-core kernels' epilogue per element, for the performance model of
// docs/cuda.md: one kernel per (series, fields) that loads 4 elements per thread, runs
// Epilogue<S>::fields on them (the fast math of the tensor-core path) and stores the two fields.
// tools/epilogue_cost.sh compiles it for sm_90 and counts the instructions between the loads and
// the stores. Not part of the library.
#include "cuda/epilogue.cuh"

using namespace tn;
using namespace tn::cuda;

template <int S>
__device__ __forceinline__ void probe(const PlanTables<float>& plan, Need need, const float* in, float* dst) {
  using V = Lanes<float, 4>;
  V z, u, s, g0, g1, out[2];
  const int i = threadIdx.x * 4;
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    z.v[l] = in[i + l];
    u.v[l] = in[1024 + i + l];
    s.v[l] = in[2048 + i + l];
    g0.v[l] = in[3072 + i + l];
    g1.v[l] = in[4096 + i + l];
  }
  Epilogue<S>::template fields<FastLaneMath<4>, 2>(plan, need, z, u, s, g0, g1, out);
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    dst[i + l] = out[0].v[l];
    dst[1024 + i + l] = out[1].v[l];
  }
}

// The loads and stores alone: subtracted from each count.
__global__ void baseline(const __grid_constant__ PlanTables<float> plan, const float* in, float* out) {
  const int i = threadIdx.x * 4;
#pragma unroll
  for (int l = 0; l < 4; ++l) {
    out[i + l] = in[i + l] + in[1024 + i + l] + in[2048 + i + l] + in[3072 + i + l] + in[4096 + i + l];
    out[1024 + i + l] = 0.0f;
  }
}

// forward of the net: h; backward with only W trainable: G = g dh/du; backward with W0 too: G, G0.
#define TN_PROBE(S)                                                                                  \
  __global__ void forward_##S(const __grid_constant__ PlanTables<float> plan, const float* in, float* out) { \
    probe<S>(plan, need_of(1u << kPhi0, false, kPhi0, kPhi0), in, out);                              \
  }                                                                                                  \
  __global__ void backward_w_##S(const __grid_constant__ PlanTables<float> plan, const float* in, float* out) { \
    probe<S>(plan, need_of(1u << kGradU, false, kGradU, kGradU), in, out);                           \
  }                                                                                                  \
  __global__ void backward_w_w0_##S(const __grid_constant__ PlanTables<float> plan, const float* in, float* out) { \
    probe<S>(plan, need_of((1u << kGradU) | (1u << kGradZ), false, kGradU, kGradZ), in, out);        \
  }
TN_PROBE(0)
TN_PROBE(1)
TN_PROBE(2)
TN_PROBE(3)
TN_PROBE(4)
TN_PROBE(5)
TN_PROBE(6)
TN_PROBE(7)
TN_PROBE(8)
