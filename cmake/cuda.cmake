# CUDA kernels: built when the installed torch has CUDA and a CUDA compiler is found
# (TAYLORNET_CUDA=AUTO), required with TAYLORNET_CUDA=ON.
include(CheckLanguage)
check_language(CUDA)
file(GLOB TN_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu)
set(TN_TORCH_HAS_CUDA OFF)
if(TARGET torch_cuda OR TARGET c10_cuda)
  set(TN_TORCH_HAS_CUDA ON)
endif()

if(CMAKE_CUDA_COMPILER AND TN_TORCH_HAS_CUDA AND TN_CUDA_SOURCES)
  # The -gencode flags come from torch (TORCH_CUDA_ARCH_LIST, see CMakeLists.txt), not from CMake.
  set(CMAKE_CUDA_ARCHITECTURES OFF)
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 20)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  # torch adds these for its own headers; the kernels need neither (device code calls no host
  # constexpr function and no lambda crosses to the device), and building without them keeps it so.
  string(REPLACE "--expt-relaxed-constexpr" "" CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS}")
  string(REPLACE "--expt-extended-lambda" "" CMAKE_CUDA_FLAGS "${CMAKE_CUDA_FLAGS}")
  message(STATUS "taylornet: building CUDA kernels for TORCH_CUDA_ARCH_LIST=$ENV{TORCH_CUDA_ARCH_LIST}")
  # One object library per dtype file so they compile in parallel; -Xptxas -v reports registers
  # and spills of every kernel in the build log.
  add_library(taylornet_cuda OBJECT ${TN_CUDA_SOURCES})
  target_include_directories(taylornet_cuda PRIVATE csrc)
  target_compile_options(taylornet_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-O3 -lineinfo -Xptxas=-v>)
  # The bfloat16 and float16 files hold over a hundred kernels each for sm_90a alone (about five
  # minutes of one core with nvcc 13.0): split compilation runs their optimisation and ptxas on
  # every core, where nvcc has it (about 1.7x faster on two cores).
  include(CheckCompilerFlag)
  check_compiler_flag(CUDA "--split-compile=0" TN_NVCC_SPLIT_COMPILE)
  if(TN_NVCC_SPLIT_COMPILE)
    target_compile_options(taylornet_cuda PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--split-compile=0>)
  endif()
  # ops_cuda.cpp (the C++ compiler, with torch) registers the ops' CUDA implementations.
  target_sources(taylornet_ops PRIVATE csrc/cuda/ops_cuda.cpp $<TARGET_OBJECTS:taylornet_cuda>)
  set(TAYLORNET_CUDA_BUILT ON)
elseif(TAYLORNET_CUDA STREQUAL "ON")
  message(FATAL_ERROR "taylornet: TAYLORNET_CUDA=ON but torch has no CUDA or nvcc is missing")
else()
  message(STATUS "taylornet: CPU-only build")
endif()
