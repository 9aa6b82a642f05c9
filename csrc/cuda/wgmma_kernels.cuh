// The tables of the wgmma kernels that launch.cuh declares (WgmmaKernels), instantiated per 16-bit
// storage type by taylor_<dtype>_wgmma.cu: taking the kernels' addresses here, and nowhere else,
// compiles them in that translation unit only.
#pragma once

#include "cuda/launch.cuh"

namespace tn::cuda {

template <typename T, int... S>
WgmmaKernels<T> make_wgmma_kernels(std::integer_sequence<int, S...>) {
  constexpr int G = kGenericEpilogue;
  return {
      {&features_forward_wgmma_kernel<T, G>, &features_forward_wgmma_kernel<T, S>...},
      {&features_forward_pingpong_kernel<T, G>, &features_forward_pingpong_kernel<T, S>...},
      {&neuron_sum_wgmma_kernel<T, G>, &neuron_sum_wgmma_kernel<T, S>...},
      {&neuron_sum_wgmma_fallback_kernel<T, G>, &neuron_sum_wgmma_fallback_kernel<T, S>...},
      {&sample_sum_wgmma_kernel<T, G>, &sample_sum_wgmma_kernel<T, S>...},
      {&sample_sum_wgmma_fallback_kernel<T, G>, &sample_sum_wgmma_fallback_kernel<T, S>...},
      {&neuron_sum_wgmma_overlap_kernel<T, S>...},
      {&sample_sum_wgmma_overlap_kernel<T, S>...},
  };
}

template <typename T>
const WgmmaKernels<T>& wgmma_kernels() {
  static const WgmmaKernels<T> kernels = make_wgmma_kernels<T>(SpecialisedSeq{});
  return kernels;
}

#define TN_INSTANTIATE_WGMMA(T) template const WgmmaKernels<T>& wgmma_kernels<T>();

}  // namespace tn::cuda
