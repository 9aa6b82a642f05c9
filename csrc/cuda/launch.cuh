// Definitions of the launch layer (launch.h), instantiated per storage type by taylor_<dtype>.cu (the
// wgmma kernels' tables by taylor_<dtype>_wgmma.cu, wgmma_kernels.cuh) and compiled on the CPU by
// tests/emulator/, which supplies its own runtime.h (built_archs, kernel_code_arch, launch,
// zero_async, encode_tile_map) before including this file.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <array>
#include <string>
#include <type_traits>
#include <utility>

#include "cuda/launch.h"
#include "cuda/mma_sync.cuh"
#include "cuda/simt.cuh"
#include "cuda/tensor_cores.cuh"
#include "cuda/wgmma.cuh"
#ifndef TN_CUDA_EMULATOR
#include "cuda/runtime.cuh"
#endif

namespace tn::cuda {

template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, double>) return DType::kFloat64;
  else if constexpr (std::is_same_v<T, float>) return DType::kFloat32;
  else if constexpr (std::is_same_v<T, __half>) return DType::kFloat16;
  else return DType::kBFloat16;
}

template <typename T>
constexpr bool kHasTensorCoreKernels = !std::is_same_v<T, double>;

// The most any launch passes: the kernels' parameter space holds 32764 bytes.
static_assert(kMaxKernelParams<double> <= 32764 && kMaxKernelParams<float> <= 32764 &&
                  kMaxKernelParams<__half> <= 32764 && kMaxKernelParams<__nv_bfloat16> <= 32764,
              "kernel parameters over the 32764-byte limit");

// The plan's tables for the kernel parameter.
template <typename S>
PlanTables<S> plan_tables(const Plan& plan) {
  const size_t rows = plan.row_j.size(), coefs = plan.coef.size();
  if (rows > static_cast<size_t>(kPlanRows) || coefs > static_cast<size_t>(kPlanCoefs))
    throw Error("taylornet: the Taylor plan has " + std::to_string(rows) + " rows and " + std::to_string(coefs) +
                " coefficients; the CUDA kernels take at most " + std::to_string(kPlanRows) + " and " +
                std::to_string(kPlanCoefs));
  PlanTables<S> t{};
  t.act = plan.act;
  t.exact = plan.exact;
  t.basis = plan.basis;
  for (int q = 0; q <= kNumQuantities; ++q) t.row_begin[q] = static_cast<int16_t>(plan.row_begin[q]);
  for (size_t r = 0; r < rows; ++r) {
    t.row_j[r] = static_cast<uint8_t>(plan.row_j[r]);
    t.row_deg[r] = static_cast<uint8_t>(plan.row_deg[r]);
    t.row_off[r] = static_cast<uint16_t>(plan.row_off[r]);
  }
  for (size_t k = 0; k < coefs; ++k) t.coef[k] = static_cast<S>(plan.coef[k]);
  return t;
}

template <typename T>
Problem<T> make_problem(const Operands& op) {
  using Acc = acc_t<T>;
  if (op.plan == nullptr) throw Error("taylornet: internal: a CUDA call without a Taylor plan");
  Problem<T> p;
  p.x = static_cast<const T*>(op.x);
  p.w0 = static_cast<const T*>(op.w0);
  p.w = static_cast<const T*>(op.w);
  p.b0 = static_cast<const T*>(op.b0);
  p.b = static_cast<const T*>(op.b);
  p.a = static_cast<const T*>(op.a);
  p.signs = static_cast<const T*>(op.signs);
  p.philox = op.philox;
  p.seed = op.seed;
  p.offset = op.offset;
  p.first = op.first;
  p.n = op.n;
  p.d = op.d;
  p.m = op.m;
  p.c = op.c;
  p.scale[0] = static_cast<Acc>(op.scale);
  p.scale[1] = static_cast<Acc>(op.scale * op.scale);
  p.plan = plan_tables<Acc>(*op.plan);
  return p;
}

// "sample_sum<bfloat16>"
template <typename T>
std::string kernel_name(const char* family) {
  return std::string(family) + "<" + dtype_name(dtype_of<T>()) + ">";
}

// A kernel family's tensor-core kernels, per mainloop (null where the type has none).
struct TcKernels {
  const void* wgmma = nullptr;
  const void* mma = nullptr;
  const void* wmma = nullptr;
};

// The mainloop of one launch of a kernel family: its SIMT kernel and (but for float64) its
// tensor-core kernels of each mainloop. Throws when nothing can run.
template <typename T>
KernelChoice choose(const Context& ctx, const std::string& family, const void* simt, const TcKernels& tc) {
  KernelQuery q;
  q.device_arch = ctx.device.arch;
  q.kernel = family;
  q.built = built_archs();
  q.dtype = dtype_of<T>();
  q.allow_tf32 = ctx.allow_tf32;
  q.deterministic = ctx.deterministic;
  q.requested = ctx.requested;
  q.code_arch[static_cast<int>(Mainloop::kSimt)] = kernel_code_arch(simt, family, ctx.device);
  q.has_kernel[static_cast<int>(Mainloop::kWgmma)] = tc.wgmma != nullptr;
  if (tc.wgmma && ctx.device.arch == 90)  // sm_90a code loads on compute capability 9.0 only
    q.code_arch[static_cast<int>(Mainloop::kWgmma)] = kernel_code_arch(tc.wgmma, family, ctx.device, true);
  if (tc.mma) q.code_arch[static_cast<int>(Mainloop::kMma)] = kernel_code_arch(tc.mma, family, ctx.device);
  if (tc.wmma) q.code_arch[static_cast<int>(Mainloop::kWmma)] = kernel_code_arch(tc.wmma, family, ctx.device);
  KernelChoice k = choose_kernels(q);
  if (!k.error.empty()) throw Error(k.error);
  return k;
}

template <typename T>
const void* kernel_ptr(T kernel) {
  return reinterpret_cast<const void*>(kernel);
}

// The tensor-core kernels of mainloop M for every epilogue: [0] the generic one, [1 + k] series k
// of kSpecialised.
template <typename M, typename T, int... S>
auto features_tc_kernels(std::integer_sequence<int, S...>) {
  return std::array{&features_forward_tc_kernel<M, T, kGenericEpilogue>, &features_forward_tc_kernel<M, T, S>...};
}
template <typename M, typename T, int... S>
auto neuron_sum_tc_kernels(std::integer_sequence<int, S...>) {
  return std::array{&neuron_sum_tc_kernel<M, T, kGenericEpilogue>, &neuron_sum_tc_kernel<M, T, S>...};
}
// neuron_sum's 128-sample blocks, per specialised epilogue (slot 0, the generic epilogue, keeps 64).
template <typename T, int... S>
auto neuron_sum_tall_kernels(std::integer_sequence<int, S...>) {
  return std::array{&neuron_sum_tc_kernel<MmaLoop, T, kGenericEpilogue>,
                    &neuron_sum_tc_kernel<MmaLoop, T, S, 2 * kTcTile>...};
}
template <typename M, typename T, int... S>
auto sample_sum_tc_kernels(std::integer_sequence<int, S...>) {
  return std::array{&sample_sum_tc_kernel<M, T, kGenericEpilogue>, &sample_sum_tc_kernel<M, T, S>...};
}
using SpecialisedSeq = std::make_integer_sequence<int, kNumSpecialised>;

// The wgmma kernels of T (16-bit storage only), [slot] per epilogue as in the tables above; the
// overlap kernels [slot - 1], specialised epilogues only. Only declared here: the tables are defined
// (wgmma_kernels.cuh) in translation units of their own, taylor_<dtype>_wgmma.cu, which compile
// beside the rest of their type's kernels; for sm_90a they are about half of a 16-bit type's
// compilation (PTX of taylor_f16_wgmma.cu 118 s, of taylor_f16.cu 121 s, one core each).
template <typename T>
struct WgmmaKernels {
  // Spelled out: naming a kernel here, even in decltype, would instantiate it in this unit too.
  using FeaturesKernel = void (*)(TN_PARAM_TYPE(Problem<T>), T*, TN_PARAM_TYPE(sm90::TileMaps));
  using PingPongKernel = void (*)(TN_PARAM_TYPE(Problem<T>), T*, TN_PARAM_TYPE(sm90::TileMaps), int64_t);
  using NeuronSumKernel = void (*)(TN_PARAM_TYPE(Problem<T>), TN_PARAM_TYPE(NeuronSum<T>), int64_t, int64_t,
                                   TN_PARAM_TYPE(sm90::TileMaps));
  using SampleSumKernel = void (*)(TN_PARAM_TYPE(Problem<T>), TN_PARAM_TYPE(SampleSum<T>), int64_t, int64_t,
                                   TN_PARAM_TYPE(sm90::TileMaps));
  std::array<FeaturesKernel, kNumSpecialised + 1> features;
  std::array<PingPongKernel, kNumSpecialised + 1> features_pingpong;
  std::array<NeuronSumKernel, kNumSpecialised + 1> neuron_sum, neuron_sum_fallback;
  std::array<SampleSumKernel, kNumSpecialised + 1> sample_sum, sample_sum_fallback;
  std::array<NeuronSumKernel, kNumSpecialised> neuron_sum_overlap;
  std::array<SampleSumKernel, kNumSpecialised> sample_sum_overlap;
};
template <typename T>
const WgmmaKernels<T>& wgmma_kernels();

// A kernel family's tensor-core kernels for one epilogue (null for float64), and the mainloop's tag
// to launch them with.
template <template <typename, typename> class Family, typename T>
TcKernels tc_kernels(int slot) {
  TcKernels k;
  if constexpr (kHasTensorCoreKernels<T>) {
    k.mma = kernel_ptr(Family<MmaLoop, T>::table()[slot]);
    k.wmma = kernel_ptr(Family<WmmaLoop, T>::table()[slot]);
  }
  return k;
}
template <typename M, typename T>
struct FeaturesTc {
  static auto table() { return features_tc_kernels<M, T>(SpecialisedSeq{}); }
};
template <typename M, typename T>
struct NeuronSumTc {
  static auto table() { return neuron_sum_tc_kernels<M, T>(SpecialisedSeq{}); }
};
template <typename M, typename T>
struct SampleSumTc {
  static auto table() { return sample_sum_tc_kernels<M, T>(SpecialisedSeq{}); }
};

// Calls f(tag) with the tag of tensor-core mainloop m, kMma or kWmma (the wgmma kernels are
// launched on their own).
template <typename F>
void with_tc_mainloop(Mainloop m, F&& f) {
  if (m == Mainloop::kMma) f(MmaLoop{});
  else f(WmmaLoop{});
}

// The copy engine's maps of x (n rows) and of the weights for the wgmma ring: one 64-row box of x
// and four 32-row boxes of w0, w per chunk (WgmmaRing). Not usable where the driver refuses them
// or TAYLORNET_CUDA_TMA=0: the kernels then stage with cp.async.
template <typename T>
sm90::TileMaps wgmma_tile_maps(const Problem<T>& p, const T* x, int64_t n, const Context& ctx) {
  sm90::TileMaps maps;
  maps.usable = ctx.tensor_copies && encode_tile_map(maps.x, x, p.d, n, kTcTile) &&
                encode_tile_map(maps.w0, p.w0, p.d, p.m, kTcTile / 2) &&
                encode_tile_map(maps.w, p.w, p.d, p.m, kTcTile / 2);
  return maps;
}

// The sample rows of a features_forward block on mainloop m (its neurons: 64 on tensor cores, as
// many as its rows on SIMT).
template <typename T>
int64_t features_tile_rows(Mainloop m) {
  if (m == Mainloop::kSimt) return tile<acc_t<T>>();
  if (m == Mainloop::kMma) return MmaLoop::kFeaturesRows;
  return m == Mainloop::kWmma ? WmmaLoop::kFeaturesRows : kTcTile;  // wgmma: 64 x 64
}

// The slot of the tensor-core kernel tables above for this call's series.
inline int epilogue_slot(const Context& ctx, const Operands& op) {
  return ctx.generic_epilogue ? 0 : specialised_epilogue(op.plan->series) + 1;
}

// ---- the finishing kernels: accumulators to outputs ----

constexpr int kFinishPerThread = 4;

inline int64_t finish_blocks(int64_t count) { return ceil_div(count, static_cast<int64_t>(kThreads) * kFinishPerThread); }

// out[e] = in[e], rounded to T.
template <typename T>
__global__ void __launch_bounds__(kThreads) cast_kernel(const acc_t<T>* in, T* out, int64_t count) {
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kFinishPerThread + threadIdx.x;
#pragma unroll
  for (int k = 0; k < kFinishPerThread; ++k) {
    const int64_t e = base + static_cast<int64_t>(k) * kThreads;
    if (e < count) out[e] = from_acc<T>(in[e]);
  }
}

// dA (c, m) from the (m, c) sums over samples: dA[j][r] = da0[r][j] (+ 2 A[j][r] da1[r][j] for the
// variance of the moments, da1 not null), rounded to T.
template <typename T>
__global__ void __launch_bounds__(kThreads) readout_grad_kernel(const acc_t<T>* da0, const acc_t<T>* da1, const T* a,
                                                                 T* out, int64_t m, int64_t c) {
  using Acc = acc_t<T>;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kThreads * kFinishPerThread + threadIdx.x;
#pragma unroll
  for (int k = 0; k < kFinishPerThread; ++k) {
    const int64_t e = base + static_cast<int64_t>(k) * kThreads;
    if (e >= m * c) continue;
    const int64_t j = e / m, r = e % m;
    Acc v = da0[r * c + j];
    if (da1) v += Acc(2) * to_acc(a[e]) * da1[r * c + j];
    out[e] = from_acc<T>(v);
  }
}

// Accumulator `in` (null: not asked for) to its output, where their types differ.
template <typename T>
void cast_out(const acc_t<T>* in, void* out, int64_t count, const Context& ctx) {
  if constexpr (!std::is_same_v<acc_t<T>, T>) {
    if (in && count > 0)
      launch(kernel_name<T>("cast_kernel"), &cast_kernel<T>, dim3(static_cast<unsigned>(finish_blocks(count))), 0,
             ctx, in, static_cast<T*>(out), count);
  }
}

// Device memory of `count` Acc for an accumulator: the output itself where the types agree, else
// workspace; zeroed. Null where the output is not asked for.
template <typename T>
acc_t<T>* accumulator(void* out, int64_t count, const Context& ctx) {
  using Acc = acc_t<T>;
  if (out == nullptr) return nullptr;
  Acc* acc = nullptr;
  if constexpr (std::is_same_v<Acc, T>) acc = static_cast<Acc*>(out);
  else acc = count > 0 ? static_cast<Acc*>(ctx.workspace->allocate(count * sizeof(Acc))) : static_cast<Acc*>(out);
  zero_async(acc, count * sizeof(Acc), ctx, kernel_name<T>("accumulator"));
  return acc;
}

// ---- the reductions ----

// The samples of a sample_sum inner tile on mainloop m for the epilogue of table slot `slot` (0: the
// generic one).
template <typename T>
int sample_tile_rows(Mainloop m, int slot) {
  if (m == Mainloop::kSimt) return tile<acc_t<T>>();
  int rows = kTcTile;  // wgmma: 64
  if constexpr (kHasTensorCoreKernels<T>) {
    if (m != Mainloop::kWgmma)
      with_tc_mainloop(m, [&](auto tag) { rows = sample_sum_rows<decltype(tag), T>(slot != 0); });
  }
  return rows;
}

// The column groups of a reduction on this GPU: `fields` field tiles, `slots` accumulator tiles per
// column tile, `col_tiles` column tiles; stage 1's chunks of `rows` samples, accumulators of
// `acc_rows` rows per column tile and slot.
template <typename T>
ColumnGroups reduce_groups(Mainloop m, int fields, int slots, int64_t col_tiles, const Context& ctx,
                           int rows = kTcTile, int acc_rows = kTcTile) {
  int64_t fixed = 0, per_tile = 0;
  const bool tc = m != Mainloop::kSimt;
  if constexpr (kHasWgmmaKernels<T>) {
    if (m == Mainloop::kWgmma) {
      fixed = WgmmaReduceSmem<T>::fixed(fields);
      per_tile = slots * WgmmaReduceSmem<T>::acc_tile_bytes;
    }
  }
  if constexpr (kHasTensorCoreKernels<T>) {
    if (tc && m != Mainloop::kWgmma) {
      with_tc_mainloop(m, [&](auto tag) {
        constexpr int St = decltype(tag)::kStages;
        fixed = rows == 2 * kTcTile ? TcReduceSmem<T, St, 2 * kTcTile>::fixed(fields)
                                    : TcReduceSmem<T, St>::fixed(fields);
        per_tile = slots * TcReduceSmem<T, St>::acc_tile_bytes * (acc_rows / kTcTile);  // per 64 rows
      });
    }
  }
  if (!tc) {
    fixed = SimtReduceSmem<acc_t<T>>::fixed_bytes(fields);
    per_tile = slots * SimtReduceSmem<acc_t<T>>::tile_bytes;
  }
  return column_groups(col_tiles, fixed, per_tile, ctx.device.smem_optin);
}

// The wgmma reductions' column groups with the epilogue's and stage 2's scratch apart from the ring,
// where that needs no more groups than `shared` (their groups with the scratch in the ring's bytes),
// the copy engine fills the ring, the epilogue is specialised (slot != 0), d > 0 (the overlap
// kernels start every sum with a wgmma) and TAYLORNET_CUDA_OVERLAP is not 0: the overlap kernels
// then run each tile's first products under the previous tile's epilogue and stage 2
// (WgmmaStage1). Else `shared`, not separate.
template <typename T>
ColumnGroups wgmma_groups(const Problem<T>& p, const ColumnGroups& shared, int fields, int slots, int64_t col_tiles,
                          int slot, const sm90::TileMaps& maps, const Context& ctx, bool& separate) {
  separate = false;
  if (slot == 0 || !maps.usable || !ctx.overlap_stage1 || p.d == 0) return shared;
  const ColumnGroups g = column_groups(col_tiles, WgmmaReduceSmem<T>::fixed(fields, true),
                                      slots * WgmmaReduceSmem<T>::acc_tile_bytes, ctx.device.smem_optin);
  separate = g.fits && g.groups <= shared.groups;
  return separate ? g : shared;
}

// A wgmma reduction (`op`: "neuron_sum", "sample_sum"): the overlap kernel where wgmma_groups made
// its scratch separate, else the kernel of the copies that x and the weights allow (the copy
// engine's with tensor maps, else the threads'). The tables: [slot] of the op's wgmma kernels (no
// generic epilogue among the overlap ones, hence slot - 1 there).
template <typename T, typename Overlap, typename Plain, typename Sum>
void launch_wgmma_reduction(const char* op, const Overlap& overlap, const Plain& plain, const Plain& fallback, int slot,
                            bool separate, const sm90::TileMaps& maps, dim3 grid, const ColumnGroups& w,
                            const Context& ctx, const Problem<T>& p, const Sum& s, int64_t per) {
  const std::string name = std::string(op) + (separate ? "_wgmma_overlap_kernel"
                                              : maps.usable ? "_wgmma_kernel" : "_wgmma_fallback_kernel");
  const auto kernel = separate ? overlap[slot - 1] : maps.usable ? plain[slot] : fallback[slot];
  launch(kernel_name<T>(name.c_str()), kernel, grid, w.smem, ctx, p, s, per, w.group_tiles, maps);
}

// Under `auto`, a reduction that the choice gives wgmma runs on mma.sync instead where mma.sync's
// smaller stage 1 fits the columns in fewer groups (each group is a pass over the n x m elements:
// by the model a pass costs far more than wgmma saves per pass). mma.sync is wgmma's stand-in, so
// its code is there wherever wgmma's is. groups(m): the column groups on mainloop m.
template <typename F>
void fewest_passes(KernelChoice& k, const Context& ctx, F&& groups) {
  if (k.mainloop != Mainloop::kWgmma || ctx.requested != Mainloop::kAuto) return;
  const ColumnGroups on_wgmma = groups(Mainloop::kWgmma), on_mma = groups(Mainloop::kMma);
  if (on_mma.fits && (!on_wgmma.fits || on_mma.groups < on_wgmma.groups)) k.mainloop = Mainloop::kMma;
}

[[noreturn]] inline void throw_no_room(const std::string& family, const Context& ctx) {
  throw Error("taylornet: " + family + " needs more shared memory per block than this GPU's " +
              std::to_string(ctx.device.smem_optin) + " bytes");
}

// Blocks own (sample tile, group of column tiles) and loop over neuron tiles: one pass over the
// n x m tiles per column group, and one group wherever the accumulators of every column fit.
template <typename T>
void neuron_sum(const Problem<T>& p, const NeuronSum<T>& s, int slot, const Context& ctx) {
  if (p.n == 0 || p.m == 0 || s.ncols == 0) return;  // the outputs start at zero
  const std::string family = kernel_name<T>("neuron_sum");
  TcKernels kernels = tc_kernels<NeuronSumTc, T>(slot);
  if constexpr (kHasWgmmaKernels<T>) kernels.wgmma = kernel_ptr(wgmma_kernels<T>().neuron_sum[slot]);
  KernelChoice k = choose<T>(ctx, family, kernel_ptr(&neuron_sum_kernel<T>), kernels);
  const bool tc = k.mainloop != Mainloop::kSimt;
  const int64_t B = tc ? kTcTile : tile<acc_t<T>>();
  fewest_passes(k, ctx, [&](Mainloop m) { return reduce_groups<T>(m, s.terms, s.slots(), ceil_div(s.ncols, B), ctx); });
  const ColumnGroups g = reduce_groups<T>(k.mainloop, s.terms, s.slots(), ceil_div(s.ncols, B), ctx);
  if (!g.fits) {
    if (s.terms == 1) throw_no_room(family, ctx);
    for (int t = 0; t < s.terms; ++t) {  // a small shared memory: the terms one at a time
      NeuronSum<T> one;
      one.field[0] = s.field[t];
      one.z[0] = s.z[t];
      one.z_row[0] = s.z_row[t];
      one.z_col[0] = s.z_col[t];
      one.square[0] = s.square[t];
      one.out[0] = s.out[t];
      one.scale[0] = s.scale[t];
      one.ncols = s.ncols;
      one.ld_out = s.ld_out;
      neuron_sum<T>(p, one, slot, ctx);
    }
    return;
  }
  // 128-sample blocks (mma.sync, 16-bit types, specialised epilogues) where their accumulators,
  // twice as tall, still fit every column in as few groups: each group is a pass over the n x m
  // elements.
  ColumnGroups use = g;
  bool tall = false;
  if constexpr (sizeof(T) == 2) {
    if (k.mainloop == Mainloop::kMma && slot != 0) {
      const ColumnGroups gt = reduce_groups<T>(k.mainloop, s.terms, s.slots(), ceil_div(s.ncols, B), ctx,
                                               2 * kTcTile, 2 * kTcTile);
      tall = gt.fits && gt.groups <= g.groups;
      if (tall) use = gt;
    }
  }
  const int64_t gx = ceil_div(p.n, tall ? 2 * kTcTile : B), tiles = ceil_div(p.m, B);
  const SplitLaunch l =
      split_launch(gx, use.groups, tiles, inner_splits(ctx.device.sms, k.split, gx * use.groups, tiles));
  if constexpr (kHasWgmmaKernels<T>) {
    if (k.mainloop == Mainloop::kWgmma) {
      const sm90::TileMaps maps = wgmma_tile_maps(p, p.x, p.n, ctx);
      bool separate = false;
      const ColumnGroups w = wgmma_groups<T>(p, use, s.terms, s.slots(), ceil_div(s.ncols, B), slot, maps, ctx, separate);
      const WgmmaKernels<T>& wk = wgmma_kernels<T>();
      launch_wgmma_reduction<T>("neuron_sum", wk.neuron_sum_overlap, wk.neuron_sum, wk.neuron_sum_fallback, slot, separate, maps,
                                l.grid, w, ctx, p, s, l.tiles_per_split);
      return;
    }
  }
  if constexpr (kHasTensorCoreKernels<T>) {
    if (tc) {
      with_tc_mainloop(k.mainloop, [&](auto tag) {
        auto kernel = NeuronSumTc<decltype(tag), T>::table()[slot];
        if constexpr (sizeof(T) == 2)
          if (tall) kernel = neuron_sum_tall_kernels<T>(SpecialisedSeq{})[slot];
        launch(kernel_name<T>("neuron_sum_tc_kernel"), kernel, l.grid, use.smem, ctx, p, s, l.tiles_per_split,
               use.group_tiles);
      });
      return;
    }
  }
  launch(kernel_name<T>("neuron_sum_kernel"), &neuron_sum_kernel<T>, l.grid, g.smem, ctx, p, s, l.tiles_per_split,
         g.group_tiles);
}

// Blocks own (neuron tile, group of column tiles) and loop over sample tiles: every term in one
// pass over the n x m tiles per column group, one group wherever the accumulators of every column
// fit.
template <typename T>
void sample_sum(const Problem<T>& p, const SampleSum<T>& s, int slot, const Context& ctx) {
  if (p.n == 0 || p.m == 0 || s.terms == 0) return;
  const std::string family = kernel_name<T>("sample_sum");
  TcKernels kernels = tc_kernels<SampleSumTc, T>(slot);
  if constexpr (kHasWgmmaKernels<T>) kernels.wgmma = kernel_ptr(wgmma_kernels<T>().sample_sum[slot]);
  KernelChoice k = choose<T>(ctx, family, kernel_ptr(&sample_sum_kernel<T>), kernels);
  const bool tc = k.mainloop != Mainloop::kSimt;
  fewest_passes(k, ctx, [&](Mainloop m) {
    return reduce_groups<T>(m, s.terms, 1, s.tiles(kTcTile), ctx, sample_tile_rows<T>(m, slot));
  });
  const int B = tc ? kTcTile : tile<acc_t<T>>(), rows = sample_tile_rows<T>(k.mainloop, slot);
  const ColumnGroups g = reduce_groups<T>(k.mainloop, s.terms, 1, s.tiles(B), ctx, rows);
  // Stage 1 of 128 samples needs a third more shared memory: a GPU with too little for it (none
  // with tensor cores has) takes the generic epilogue's 64-sample kernel.
  if (!g.fits && rows > B) return sample_sum<T>(p, s, 0, ctx);
  if (!g.fits) {
    if (s.terms == 1) throw_no_room(family, ctx);
    for (int t = 0; t < s.terms; ++t) {  // a small shared memory: the terms one at a time
      SampleSum<T> one;
      one.terms = 1;
      one.term[0] = s.term[t];
      sample_sum<T>(p, one, slot, ctx);
    }
    return;
  }
  const int64_t gx = ceil_div(p.m, B), tiles = ceil_div(p.n, rows);
  const SplitLaunch l = split_launch(gx, g.groups, tiles, inner_splits(ctx.device.sms, k.split, gx * g.groups, tiles));
  if constexpr (kHasWgmmaKernels<T>) {
    if (k.mainloop == Mainloop::kWgmma) {
      const sm90::TileMaps maps = wgmma_tile_maps(p, p.x, p.n, ctx);
      bool separate = false;
      const ColumnGroups w = wgmma_groups<T>(p, g, s.terms, 1, s.tiles(B), slot, maps, ctx, separate);
      const WgmmaKernels<T>& wk = wgmma_kernels<T>();
      launch_wgmma_reduction<T>("sample_sum", wk.sample_sum_overlap, wk.sample_sum, wk.sample_sum_fallback, slot, separate, maps,
                                l.grid, w, ctx, p, s, l.tiles_per_split);
      return;
    }
  }
  if constexpr (kHasTensorCoreKernels<T>) {
    if (tc) {
      with_tc_mainloop(k.mainloop, [&](auto tag) {
        launch(kernel_name<T>("sample_sum_tc_kernel"), SampleSumTc<decltype(tag), T>::table()[slot], l.grid, g.smem,
               ctx, p, s, l.tiles_per_split, g.group_tiles);
      });
      return;
    }
  }
  launch(kernel_name<T>("sample_sum_kernel"), &sample_sum_kernel<T>, l.grid, g.smem, ctx, p, s, l.tiles_per_split,
         g.group_tiles);
}

// ---- the ops ----

template <typename T>
void Launch<T>::features_forward(const Operands& op, void* out_ptr, const Context& ctx) {
  if (op.n == 0 || op.m == 0) return;  // no blocks: an empty grid is a launch error
  const Problem<T> p = make_problem<T>(op);
  T* out = static_cast<T*>(out_ptr);
  const std::string family = kernel_name<T>("features_forward");
  const int slot = epilogue_slot(ctx, op);
  TcKernels kernels = tc_kernels<FeaturesTc, T>(slot);
  if constexpr (kHasWgmmaKernels<T>) kernels.wgmma = kernel_ptr(wgmma_kernels<T>().features[slot]);
  const KernelChoice k = choose<T>(ctx, family, kernel_ptr(&features_forward_kernel<T>), kernels);
  const bool tc = k.mainloop != Mainloop::kSimt;
  if constexpr (kHasWgmmaKernels<T>) {
    if (k.mainloop == Mainloop::kWgmma && ctx.pingpong && p.d > 0 && PingPong::dynamic_bytes <= ctx.device.smem_optin) {
      const sm90::TileMaps maps = wgmma_tile_maps(p, p.x, p.n, ctx);
      if (maps.usable) {
        // Runs of `per` sample tiles: at least two (one per consumer), enough runs for a block per
        // SM, and at most 65535 of them (grid.y).
        const int64_t tiles_i = ceil_div(p.n, kTcTile), tiles_r = ceil_div(p.m, kTcTile);
        const int64_t wanted = std::max<int64_t>(1, ceil_div(std::max<int64_t>(ctx.device.sms, 1), tiles_r));
        const int64_t per = std::max({int64_t{2}, ceil_div(tiles_i, wanted), ceil_div(tiles_i, int64_t{65535})});
        const dim3 grid(static_cast<unsigned>(tiles_r), static_cast<unsigned>(ceil_div(tiles_i, per)));
        launch_threads(kernel_name<T>("features_forward_pingpong_kernel"), wgmma_kernels<T>().features_pingpong[slot],
                       grid, PingPong::kThreads, PingPong::dynamic_bytes, ctx, p, out, maps, per);
        return;
      }
    }
  }
  const int64_t B = tc ? kTcTile : tile<acc_t<T>>(), rows = features_tile_rows<T>(k.mainloop);
  // Sample tiles run on grid.y, which stops at 65535 blocks: taller inputs go in slabs of rows
  // (rows are independent; the signs depend on the neuron only).
  const int64_t slab = 65535 * rows;
  for (int64_t i = 0; i < p.n; i += slab) {
    Problem<T> q = p;
    q.x = p.x + i * p.d;
    q.n = p.n - i < slab ? p.n - i : slab;
    const dim3 grid(static_cast<unsigned>(ceil_div(p.m, B)), static_cast<unsigned>(ceil_div(q.n, rows)));
    if constexpr (kHasWgmmaKernels<T>) {
      if (k.mainloop == Mainloop::kWgmma) {
        launch(kernel_name<T>("features_forward_wgmma_kernel"), wgmma_kernels<T>().features[slot],
               grid, WgmmaRing::dynamic_bytes, ctx, q, out + i * p.m, wgmma_tile_maps(p, q.x, q.n, ctx));
        continue;
      }
    }
    if constexpr (kHasTensorCoreKernels<T>) {
      if (tc) {
        with_tc_mainloop(k.mainloop, [&](auto tag) {
          using M = decltype(tag);
          launch(kernel_name<T>("features_forward_tc_kernel"), FeaturesTc<M, T>::table()[slot], grid,
                 FeaturesSmem<M, T>::bytes, ctx, q, out + i * p.m);
        });
        continue;
      }
    }
    launch(kernel_name<T>("features_forward_kernel"), &features_forward_kernel<T>, grid, 0, ctx, q, out + i * p.m);
  }
}

// out = scale * Phi A^T (and, for the moments, var = scale^2 Phi1 (A*A)^T), summed over neurons.
template <typename T>
void Launch<T>::readout(const Operands& op, bool moments, void* out, void* var, const Context& ctx) {
  using Acc = acc_t<T>;
  const int64_t count = op.n * op.c;
  if (count == 0) return;
  const int terms = moments ? 2 : 1;
  void* const outs[2] = {out, var};
  Acc* acc[2] = {nullptr, nullptr};
  for (int t = 0; t < terms; ++t) acc[t] = accumulator<T>(outs[t], count, ctx);
  if (op.m > 0) {
    Problem<T> p = make_problem<T>(op);
    p.moments = moments;
    NeuronSum<T> s;
    s.terms = terms;
    s.ncols = op.c;
    s.ld_out = op.c;
    for (int t = 0; t < terms; ++t) {
      s.field[t] = t == 0 ? kPhi0 : kPhi1;
      s.z[t] = p.a;  // Z[r][j] = A[j][r]
      s.z_row[t] = 1;
      s.z_col[t] = op.m;
      s.square[t] = t == 1;
      s.out[t] = acc[t];
      s.scale[t] = p.scale[t];
    }
    neuron_sum<T>(p, s, epilogue_slot(ctx, op), ctx);
  }
  for (int t = 0; t < terms; ++t) cast_out<T>(acc[t], outs[t], count, ctx);
}

// dX by a reduction over neurons (its own pass, only when asked for); dW, dW0, db, db0, dA by one
// reduction over samples (one recomputation of the pre-activations and the epilogue per column
// group): a weight gradient with its bias's (the field's sums), dA beside them. `gout` are the net's or moments' output cotangents;
// for the features op `gelem` is the (n, m) cotangent of the features themselves.
template <typename T>
void Launch<T>::backward(const Operands& op, bool moments, const void* const gout[2], const void* gelem,
                         const GradOutputs& out, const Context& ctx) {
  using Acc = acc_t<T>;
  const int64_t n = op.n, d = op.d, m = op.m, c = op.c;
  if ((out.x || out.w0 || out.b0) && !(op.plan && op.plan->has_dz))
    throw Error("taylornet: internal: d/dz0 gradients asked of a Taylor plan built without them");
  if ((out.b0 && !op.b0) || (out.b && !op.b) || (out.a && !op.a))
    throw Error("taylornet: internal: a gradient asked for an absent operand");
  Acc* const gx = accumulator<T>(out.x, n * d, ctx);
  Acc* const gw0 = accumulator<T>(out.w0, m * d, ctx);
  Acc* const gw = accumulator<T>(out.w, m * d, ctx);
  Acc* const gb0 = accumulator<T>(out.b0, m, ctx);
  Acc* const gb = accumulator<T>(out.b, m, ctx);
  Acc* da[2] = {nullptr, nullptr};  // (m, c): dA^T per readout
  const bool need_a = out.a && m * c > 0;
  for (int k = 0; k < (moments ? 2 : 1) && need_a; ++k)
    da[k] = static_cast<Acc*>(ctx.workspace->allocate(m * c * sizeof(Acc)));
  for (Acc* t : da)
    if (t) zero_async(t, m * c * sizeof(Acc), ctx, kernel_name<T>("accumulator"));

  if (n > 0 && m > 0 && (c > 0 || gelem)) {
    Problem<T> p = make_problem<T>(op);
    p.moments = moments;
    if (gout)
      for (int k = 0; k < 2; ++k) p.gout[k] = static_cast<const T*>(gout[k]);
    if (gelem) {
      p.gelem = static_cast<const T*>(gelem);
      p.scale[0] = p.scale[1] = Acc(1);
    }
    if (gx) {  // dX = G W + G0 W0
      NeuronSum<T> s;
      s.terms = 2;
      s.field[0] = kGradU;
      s.field[1] = kGradZ;
      s.z[0] = p.w;
      s.z[1] = p.w0;
      for (int t = 0; t < 2; ++t) {
        s.z_row[t] = d;
        s.z_col[t] = 1;
        s.out[t] = gx;
      }
      s.ncols = d;
      s.ld_out = d;
      neuron_sum<T>(p, s, epilogue_slot(ctx, op), ctx);
    }
    SampleSum<T> s;  // every term in one pass: dW with db, dW0 with db0, dA
    s.terms = 0;
    auto add = [&](Field field, const T* y, int64_t ncols, Acc* dst, Acc* ones, Acc scale) {
      SampleTerm<T>& t = s.term[s.terms++];
      t.field = field;
      t.y = y;
      t.ld_y = ncols;
      t.ncols = ncols;
      t.out = dst;
      t.ld_out = ncols;
      t.ones = ones;
      t.scale = scale;
    };
    if (gw || gb) add(kGradU, gw ? p.x : nullptr, gw ? d : 0, gw, gb, Acc(1));
    if (gw0 || gb0) add(kGradZ, gw0 ? p.x : nullptr, gw0 ? d : 0, gw0, gb0, Acc(1));
    for (int k = 0; k < 2; ++k)
      if (da[k]) add(k == 0 ? kPhi0 : kPhi1, p.gout[k], c, da[k], nullptr, p.scale[k]);
    sample_sum<T>(p, s, epilogue_slot(ctx, op), ctx);
  }

  cast_out<T>(gx, out.x, n * d, ctx);
  cast_out<T>(gw0, out.w0, m * d, ctx);
  cast_out<T>(gw, out.w, m * d, ctx);
  cast_out<T>(gb0, out.b0, m, ctx);
  cast_out<T>(gb, out.b, m, ctx);
  if (need_a)
    launch(kernel_name<T>("readout_grad_kernel"), &readout_grad_kernel<T>,
           dim3(static_cast<unsigned>(finish_blocks(m * c))), 0, ctx, da[0], da[1], static_cast<const T*>(op.a),
           static_cast<T*>(out.a), m, c);
}

#define TN_INSTANTIATE_CUDA(T) template struct Launch<T>;

}  // namespace tn::cuda
