// The launch layer and its kernels for __half storage.
#include "cuda/launch.cuh"
namespace tn::cuda {
TN_INSTANTIATE_CUDA(__half)
}
