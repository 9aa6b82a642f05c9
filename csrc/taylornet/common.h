// Shared by the CPU and CUDA kernels: no torch headers here.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TN_HD __host__ __device__ __forceinline__
#else
#define TN_HD inline
#endif
