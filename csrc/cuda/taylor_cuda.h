// The kernels' parameters, free of torch headers: raw device pointers, sizes and the plan's tables
// by value. T is the storage type (float, double, __half, __nv_bfloat16), Acc the accumulation type
// (double for double, float otherwise). launch.h fills them from an op call.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "taylornet/series.h"

namespace tn::cuda {

template <typename T>
struct AccType {
  using type = float;
};
template <>
struct AccType<double> {
  using type = double;
};
template <typename T>
using acc_t = typename AccType<T>::type;

// The Taylor plan's tables by value (series.h's plan interface, with arrays): they travel in the
// kernel parameters, so a call needs no device copy of them and no host synchronisation, and CUDA
// graphs capture them with the launch. Capacities: the largest plan there is (silu, orders 0 ... 16
// with d/dz0: 198 rows, 3086 coefficients; tests/emulator checks every activation's). Kernel
// parameters may take 32764 bytes (CUDA 12.1 and newer, sm_70 and newer): PlanTables<double> is
// 25.5 KB, PlanTables<float> 13.2 KB. Rows are read warp-uniformly: constant-cache broadcasts.
constexpr int kPlanRows = 200, kPlanCoefs = 3088;
static_assert(kMaxBasis <= 256 && kMaxOrder + 1 <= 256 && kPlanCoefs <= 65536, "row fields fit their types");

template <typename S>
struct PlanTables {
  Act act;
  bool exact;
  int basis;
  int16_t row_begin[kNumQuantities + 1];
  uint8_t row_j[kPlanRows], row_deg[kPlanRows];
  uint16_t row_off[kPlanRows];
  S coef[kPlanCoefs];
};

// Everything one call needs; pointers are device pointers, optional ones may be null.
template <typename T>
struct Problem {
  using Acc = acc_t<T>;
  const T *x = nullptr, *w0 = nullptr, *w = nullptr;  // (n, d), (m, d), (m, d)
  const T *b0 = nullptr, *b = nullptr;                // (m,)
  const T* a = nullptr;                               // (c, m) readout
  const T* signs = nullptr;                           // (m,) explicit signs
  bool philox = false;                                // else signs from (seed, offset, first)
  uint64_t seed = 0, offset = 0, first = 0;
  int64_t n = 0, d = 0, m = 0, c = 0;
  bool moments = false;                               // readouts (e, o^2) instead of h
  Acc scale[2] = {1, 1};                              // scale and scale^2
  const T* gout[2] = {nullptr, nullptr};              // (n, c) output cotangents (backward)
  const T* gelem = nullptr;  // (n, m) cotangent of the features themselves: g = gelem[i][r], no scale
  PlanTables<Acc> plan{};
};

// Per-element quantities a reduction kernel can contract.
enum Field : int {
  kPhi0 = 0,  // the first readout feature: h (net) or e (moments)
  kPhi1 = 1,  // the second readout feature: o^2 (moments)
  kGradU = 2,  // G  = sum_rho g_rho d phi_rho / du    (g from gout and A, or gelem)
  kGradZ = 3,  // G0 = sum_rho g_rho d phi_rho / dz0
};

// out[i][col] += scale[t] * sum_r F_t[i][r] * Z_t[r][col] for t < terms, where
// Z_t[r][col] = z[t][r * z_row + col * z_col] (squared if square[t]); out[t] is (n, ncols)
// with row stride ld_out. Reduces over neurons: the forward readout (Z = A^T) and dX (Z = W).
// A block owns a sample tile and a group of column tiles (all of them unless they do not fit on
// chip), and contracts both terms over all its columns from one evaluation of the fields per
// neuron tile.
template <typename T>
struct NeuronSum {
  int terms = 1;
  Field field[2] = {kPhi0, kPhi0};
  const T* z[2] = {nullptr, nullptr};
  int64_t z_row[2] = {0, 0}, z_col[2] = {0, 0};
  bool square[2] = {false, false};
  acc_t<T>* out[2] = {nullptr, nullptr};
  acc_t<T> scale[2] = {1, 1};
  int64_t ncols = 0, ld_out = 0;

  __host__ __device__ unsigned fields() const {  // bit mask of the fields the terms contract
    unsigned f = 0;
    for (int t = 0; t < terms; ++t) f |= 1u << field[t];
    return f;
  }
  // Accumulator slots per column tile: one where both terms add into the same output with the
  // same scale (dX = G W + G0 W0), else one per term.
  __host__ __device__ int slots() const {
    return terms == 2 && out[0] == out[1] && scale[0] == scale[1] ? 1 : terms;
  }
};

// One term of a reduction over samples: out[r][col] += scale * sum_i F[i][r] * y[i][col] for
// col < ncols (y has row stride ld_y and may be null when ncols = 0; out is (m, ncols) with row
// stride ld_out) and, when `ones` is set, ones[r] += scale * sum_i F[i][r]: a bias gradient with
// its weight gradient (the field's column sums, no product).
template <typename T>
struct SampleTerm {
  Field field = kGradU;
  const T* y = nullptr;
  int64_t ld_y = 0, ncols = 0;
  acc_t<T>* out = nullptr;
  int64_t ld_out = 0;
  acc_t<T>* ones = nullptr;
  acc_t<T> scale = 1;
};

// Every term of a backward's reduction over samples in one pass (one recomputation of the
// pre-activations and the epilogue per (sample tile, neuron tile)): dW with db, dW0 with db0, and
// dA (one or two readouts). The terms' columns are laid out in column tiles of `tile` columns,
// each term starting a tile of its own; a block owns a neuron tile and a group of consecutive
// column tiles, and group 0 also sums the bias columns.
constexpr int kMaxSampleTerms = 4;
template <typename T>
struct SampleSum {
  int terms = 1;
  SampleTerm<T> term[kMaxSampleTerms];

  __host__ __device__ unsigned fields() const {  // bit mask of the fields the terms contract
    unsigned f = 0;
    for (int t = 0; t < terms; ++t) f |= 1u << term[t].field;
    return f;
  }
  // Column tiles of term t, and the first of them in the whole layout.
  __host__ __device__ static int64_t tiles_of(int64_t ncols, int tile) { return (ncols + tile - 1) / tile; }
  __host__ __device__ int64_t first_tile(int t, int tile) const {
    int64_t f = 0;
    for (int k = 0; k < t; ++k) f += tiles_of(term[k].ncols, tile);
    return f;
  }
  __host__ __device__ int64_t tiles(int tile) const { return first_tile(terms, tile); }
  __host__ __device__ bool any_ones() const {
    bool any = false;
    for (int t = 0; t < terms; ++t) any = any || term[t].ones != nullptr;
    return any;
  }
};

// What one kernel launch carries at most: the problem, a reduction, the split's tile count and the
// column group's.
template <typename T>
constexpr size_t kMaxKernelParams =
    sizeof(Problem<T>) + (sizeof(NeuronSum<T>) > sizeof(SampleSum<T>) ? sizeof(NeuronSum<T>) : sizeof(SampleSum<T>)) +
    2 * sizeof(int64_t);

}  // namespace tn::cuda
