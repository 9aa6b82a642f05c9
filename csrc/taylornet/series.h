// The Taylor epilogue shared by the CPU and CUDA kernels.
//
// Every quantity a kernel needs per (sample, neuron) is a bivariate form in the basis g(z0) and the
// signed movement v = s * u:
//     Q(z0, v) = sum_rows g_j(z0) * sum_{k <= deg} coef[k] v^k,
// evaluated by Horner in v. The host builds one row list per quantity (Plan), dropping zero rows,
// so asking for orders {0, 2} costs the same as a plain order-2 series without the k = 1 term.
//
//   value       h   = sum_{k in O} c_k v^k
//   d/dv        h_v = sum_{k in O} k c_k v^(k-1)            (dh/du = s * h_v)
//   d/dz0       h_z = sum_{k in O} (k+1) c_{k+1} v^k
// and the even (E) and odd (O) parts of the same sums for the sign moments.
// "exact" evaluates the basis at z0 + v instead and keeps c_0 (value) and c_1 (both derivatives).
#pragma once

#include <vector>

#include "activations.h"
#include "common.h"

namespace tn {

enum Quantity : int { kH = 0, kHdv, kHdz, kE, kEdu, kEdz, kO, kOdu, kOdz, kNumQuantities };

// A series: the activation, the orders in O (bit k for order k) and whether it is "exact".
struct Series {
  Act act = Act::kTanh;
  unsigned orders = 0;
  bool exact = false;
};

constexpr int top_order(unsigned orders) {
  int K = 0;
  for (int k = 0; k <= kMaxOrder; ++k)
    if (orders >> k & 1u) K = k;
  return K;
}

// The highest coefficient index c_kmax a series needs (c_{K+1} for d/dz0), and its basis.
constexpr int series_kmax(const Series& s, bool need_dz) {
  return s.exact ? 1 : top_order(s.orders) + (need_dz ? 1 : 0);
}

// The coefficient of v^i multiplying g_j in quantity q, from the coefficient table T of the series
// (built with need_dz where the d/dz0 quantities are wanted: they need c_{K+1}). Shared by the host
// plans below and by the CUDA kernels specialised for one series, which fold it into immediates.
constexpr double quantity_coef(const CoefTable& T, const Series& s, bool need_dz, int q, int j, int i) {
  const int kind = q % 3;  // value, d/dv, d/dz0: the quantities come in that order per part
  const int part = q / 3;  // h (all of O), e (its even orders), o (its odd orders)
  auto c = [&](int k) { return k <= T.kmax ? T.at(k, j) : 0.0; };
  if (s.exact) return i == 0 ? (kind == 0 ? c(0) : c(1)) : 0.0;
  auto in = [&](int k) {  // order k is in the part's set
    return k >= 0 && k <= kMaxOrder && (s.orders >> k & 1u) && (part == 0 || (k % 2 == 0) == (part == 1));
  };
  if (kind == 0) return in(i) ? c(i) : 0.0;
  if (kind == 1) return in(i + 1) ? (i + 1) * c(i + 1) : 0.0;
  return need_dz && in(i) ? (i + 1) * c(i + 1) : 0.0;
}

// Raw view of a plan for the kernels: row lists per quantity into shared coefficient storage. The
// functions below take any plan type P with these members (the CUDA kernels take the tables by
// value, as arrays, in cuda/taylor_cuda.h's PlanTables).
template <typename S>
struct PlanView {
  Act act;
  bool exact;
  int basis;  // number of basis functions J
  int row_begin[kNumQuantities + 1];
  const int* row_j;
  const int* row_deg;
  const int* row_off;
  const S* coef;
};

template <typename V, typename M, typename P>
TN_HD V eval_quantity(const P& p, int q, const V* g, const V& v) {
  V acc(0);
  for (int row = p.row_begin[q]; row < p.row_begin[q + 1]; ++row) {
    const auto* c = p.coef + p.row_off[row];
    int k = p.row_deg[row];
    V poly(c[k]);
    while (--k >= 0) poly = M::fma(poly, v, V(c[k]));
    acc = M::fma(g[p.row_j[row]], poly, acc);
  }
  return acc;
}

// Host-side owner of the tables behind a PlanView.
struct Plan {
  Act act = Act::kTanh;
  bool exact = false;
  bool has_dz = false;  // whether d/dz0 can be evaluated (built with need_dz, or exact)
  int basis = 0;
  int row_begin[kNumQuantities + 1] = {};
  std::vector<int> row_j, row_deg, row_off;
  std::vector<double> coef;

  Series series;        // what the plan evaluates (the CUDA kernels pick a specialised epilogue by it)

  // `orders`: the orders in O (ignored when exact). `need_dz`: whether d/dz0 quantities are needed
  // (they need c_{K+1}, hence a larger basis).
  Plan(Act a, const std::vector<int64_t>& orders, bool is_exact, bool need_dz)
      : act(a), exact(is_exact), has_dz(need_dz || is_exact) {
    series.act = a;
    series.exact = is_exact;
    for (auto k : orders) series.orders |= 1u << k;
    const int K = top_order(series.orders);
    const int kmax = series_kmax(series, need_dz);
    basis = basis_size(a, kmax);
    const CoefTable T = coefficient_table(a, kmax);
    // One row per (quantity, basis function) with a nonzero polynomial in v, to its top degree.
    for (int q = 0; q < kNumQuantities; ++q) {
      row_begin[q] = static_cast<int>(row_j.size());
      for (int j = 0; j < basis; ++j) {
        std::vector<double> m(K + 1, 0.0);
        for (int i = 0; i <= K; ++i) m[i] = quantity_coef(T, series, need_dz, q, j, i);
        int deg = K;
        while (deg >= 0 && m[deg] == 0.0) --deg;
        if (deg < 0) continue;
        row_j.push_back(j);
        row_deg.push_back(deg);
        row_off.push_back(static_cast<int>(coef.size()));
        coef.insert(coef.end(), m.begin(), m.begin() + deg + 1);
      }
    }
    row_begin[kNumQuantities] = static_cast<int>(row_j.size());
  }

  template <typename S>
  PlanView<S> view(const S* coef_as_s) const {
    PlanView<S> v{act, exact, basis, {}, row_j.data(), row_deg.data(), row_off.data(), coef_as_s};
    for (int q = 0; q <= kNumQuantities; ++q) v.row_begin[q] = row_begin[q];
    return v;
  }
};

// Per-element results of the epilogue.
template <typename V>
struct Grads {
  V value, du, dz;  // h, dh/du, dh/dz0
};

// h(z0, s u): the (signed) Taylor feature, or sigma(z0 + s u) when exact.
template <typename V, typename M, typename P>
TN_HD V feature(const P& p, const V& z0, const V& u, const V& s) {
  V g[kMaxBasis];
  const V v = s * u;
  if (p.exact) {
    eval_basis<V, M>(p.act, p.basis, z0 + v, g);
    return eval_quantity<V, M>(p, kH, g, V(0));
  }
  eval_basis<V, M>(p.act, p.basis, z0, g);
  return eval_quantity<V, M>(p, kH, g, v);
}

// h and its derivatives; the value and d/dz0 are computed only when asked for.
template <typename V, typename M, typename P>
TN_HD Grads<V> feature_grads(const P& p, const V& z0, const V& u, const V& s,
                             bool need_value, bool need_dz) {
  V g[kMaxBasis];
  const V v = s * u;
  const bool exact = p.exact;
  eval_basis<V, M>(p.act, p.basis, exact ? z0 + v : z0, g);
  const V at = exact ? V(0) : v;
  Grads<V> r;
  r.value = need_value ? eval_quantity<V, M>(p, kH, g, at) : V(0);
  r.du = s * eval_quantity<V, M>(p, kHdv, g, at);
  r.dz = exact ? r.du * s : (need_dz ? eval_quantity<V, M>(p, kHdz, g, at) : V(0));
  return r;
}

// Sign moments of one neuron: even part e and odd part o of h over s = +-1 (h = e + s o).
template <typename V>
struct Moments {
  Grads<V> e, o;
};

// The moments of the exact network from its two branches h(+-) = sigma(z0 +- u) and their
// derivatives h'(+-) = sigma'(z0 +- u): e = (h+ + h-)/2, o = (h+ - h-)/2, and d/du, d/dz0 of both.
template <typename V>
TN_HD Moments<V> exact_moments(const V& hp, const V& hm, const V& dp, const V& dm) {
  const V half(0.5);
  Moments<V> r;
  r.e.value = half * (hp + hm);
  r.o.value = half * (hp - hm);
  r.e.du = half * (dp - dm);
  r.e.dz = half * (dp + dm);
  r.o.du = r.e.dz;
  r.o.dz = r.e.du;
  return r;
}

template <typename V, typename M, typename P>
TN_HD Moments<V> moments(const P& p, const V& z0, const V& u, bool grads, bool need_dz) {
  Moments<V> r;
  V g[kMaxBasis];
  if (p.exact) {
    // h(+-) = sigma(z0 +- u), h'(+-) = sigma'(z0 +- u).
    eval_basis<V, M>(p.act, p.basis, z0 + u, g);
    const V hp = eval_quantity<V, M>(p, kH, g, V(0));
    const V dp = grads ? eval_quantity<V, M>(p, kHdv, g, V(0)) : V(0);
    eval_basis<V, M>(p.act, p.basis, z0 - u, g);
    const V hm = eval_quantity<V, M>(p, kH, g, V(0));
    const V dm = grads ? eval_quantity<V, M>(p, kHdv, g, V(0)) : V(0);
    return exact_moments(hp, hm, dp, dm);
  }
  eval_basis<V, M>(p.act, p.basis, z0, g);
  r.e.value = eval_quantity<V, M>(p, kE, g, u);
  r.o.value = eval_quantity<V, M>(p, kO, g, u);
  if (grads) {
    r.e.du = eval_quantity<V, M>(p, kEdu, g, u);
    r.o.du = eval_quantity<V, M>(p, kOdu, g, u);
    r.e.dz = need_dz ? eval_quantity<V, M>(p, kEdz, g, u) : V(0);
    r.o.dz = need_dz ? eval_quantity<V, M>(p, kOdz, g, u) : V(0);
  } else {
    r.e.du = r.e.dz = r.o.du = r.o.dz = V(0);
  }
  return r;
}

}  // namespace tn
