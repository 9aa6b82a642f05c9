// Shared by the CPU and CUDA kernels: no torch headers here.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TN_HD __host__ __device__ __forceinline__
#define TN_HD_INLINE TN_HD
#define TN_LAMBDA_INLINE
#else
#define TN_HD inline
// Inlined on the host as on the device: the specialised epilogue of a few rows, whose values stay in
// registers only where it is inlined into the register tile's loop (GCC kept it out of line).
#define TN_HD_INLINE inline __attribute__((always_inline))
#define TN_LAMBDA_INLINE __attribute__((always_inline))
#endif
