// The launch layer and its kernels for double storage.
#include "cuda/launch.cuh"
namespace tn::cuda {
TN_INSTANTIATE_CUDA(double)
}
