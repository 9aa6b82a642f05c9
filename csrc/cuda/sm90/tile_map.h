// The tensor maps of the sm_90a mainloop's copies as plain data: the arguments that the driver's
// cuTensorMapEncodeTiled takes for a row-major (rows x inner) tensor of 16-bit elements read in boxes
// of box_rows rows by 64 elements (one 128-byte row), stored in shared memory with the 128-byte
// swizzle that the wgmma descriptors read (layout.h), zeros outside the tensor. runtime.cuh hands
// them to the driver; tests/test_cute_layouts.py holds them against the arguments CuTe's
// make_tma_copy passes for the same tensor and shared-memory tile.
#pragma once

#include <cuda.h>

#include <cstdint>

namespace tn::cuda::sm90 {

struct TileMapArgs {
  CUtensorMapDataType dtype;
  cuuint32_t rank;
  cuuint64_t dims[2];     // elements: inner, rows
  cuuint64_t strides[1];  // bytes from one row to the next
  cuuint32_t box[2];      // elements: 64 (128 bytes), box_rows
  cuuint32_t steps[2];    // element strides within the box: dense
  CUtensorMapInterleave interleave;
  CUtensorMapSwizzle swizzle;
  CUtensorMapL2promotion l2_promotion;
  CUtensorMapFloatOOBfill oob_fill;
};

// The element type only sets the element size, so bfloat16 serves float16 too.
inline TileMapArgs tile_map_args(int64_t inner, int64_t rows, uint32_t box_rows) {
  return {CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
          2,
          {static_cast<cuuint64_t>(inner), static_cast<cuuint64_t>(rows)},
          {static_cast<cuuint64_t>(inner) * 2},
          {64, box_rows},
          {1, 1},
          CU_TENSOR_MAP_INTERLEAVE_NONE,
          CU_TENSOR_MAP_SWIZZLE_128B,
          CU_TENSOR_MAP_L2_PROMOTION_L2_128B,
          CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE};
}

}  // namespace tn::cuda::sm90
