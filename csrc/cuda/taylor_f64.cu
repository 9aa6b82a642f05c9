#include "cuda/kernels.cuh"
namespace tn::cuda {
TN_INSTANTIATE_CUDA(double)
}
