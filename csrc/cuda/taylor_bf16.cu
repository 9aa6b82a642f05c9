// The launch layer and its kernels for __nv_bfloat16 storage.
#include "cuda/launch.cuh"
namespace tn::cuda {
TN_INSTANTIATE_CUDA(__nv_bfloat16)
}
