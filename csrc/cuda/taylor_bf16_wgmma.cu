// The wgmma kernels for __nv_bfloat16 storage (sm_90a; elsewhere they trap), apart from the rest of the
// type's kernels in taylor_bf16.cu so that the two compile side by side.
#include "cuda/wgmma_kernels.cuh"
namespace tn::cuda {
TN_INSTANTIATE_WGMMA(__nv_bfloat16)
}
