// The wgmma kernels for __half storage (sm_90a; elsewhere they trap), apart from the rest of the
// type's kernels in taylor_f16.cu so that the two compile side by side.
#include "cuda/wgmma_kernels.cuh"
namespace tn::cuda {
TN_INSTANTIATE_WGMMA(__half)
}
