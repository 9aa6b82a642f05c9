// The launch layer and its kernels for float storage.
#include "cuda/launch.cuh"
namespace tn::cuda {
TN_INSTANTIATE_CUDA(float)
}
