// The Taylor epilogue specialised at compile time for the common series, shared by the CPU and CUDA
// kernels.
//
// A specialised series keeps its basis in an array indexed only by constants and its coefficients
// as immediates, folded in constant evaluation from series.h's quantity_coef: rows and terms that
// vanish leave no code. The plan-driven evaluation of series.h (rows and coefficients read from
// tables at run time) stays the fallback for every other series, and is as exact.
#pragma once

#include <type_traits>
#include <utility>

#include "series.h"

namespace tn {

// Compile-time loops: f(std::integral_constant<int, I>) for I = 0 ... N-1.
template <typename F, int... I>
TN_HD_INLINE void static_for_impl(F& f, std::integer_sequence<int, I...>) {
  (f(std::integral_constant<int, I>{}), ...);
}
template <int N, typename F>
TN_HD_INLINE void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

// The series with an epilogue of their own: the benchmarks' cases (tanh, orders up to 2 and (2,),
// (0, 2), exact) and the common activations at (0, 1, 2). Every entry costs one compilation of each
// kernel that takes it (build time and binary size).
inline constexpr Series kSpecialised[] = {
    {Act::kTanh, 0b1, false},    {Act::kTanh, 0b11, false},  {Act::kTanh, 0b111, false},
    {Act::kTanh, 0b100, false},  {Act::kTanh, 0b101, false}, {Act::kTanh, 0, true},
    {Act::kGelu, 0b111, false},  {Act::kRelu, 0b11, false},  {Act::kSilu, 0b111, false},
};
constexpr int kNumSpecialised = static_cast<int>(sizeof(kSpecialised) / sizeof(kSpecialised[0]));
constexpr int kGenericEpilogue = -1;
constexpr int kSpecMaxOrder = 4;  // specialised series stop at this order (their basis and degrees are fixed arrays)

// The specialised epilogue for series s, or kGenericEpilogue.
inline int specialised_epilogue(const Series& s) {
  for (int k = 0; k < kNumSpecialised; ++k) {
    const Series& c = kSpecialised[k];
    if (c.act == s.act && c.exact == s.exact && (c.exact || c.orders == s.orders)) return k;
  }
  return kGenericEpilogue;
}

// f(std::integral_constant<int, S>{}) for the S = specialised_epilogue(s) chosen at run time, or
// f(std::integral_constant<int, kGenericEpilogue>{}): one instantiation of f per epilogue.
template <typename F>
void with_epilogue(int epilogue, F&& f) {
  [&]<int... S>(std::integer_sequence<int, S...>) {
    if (!((epilogue == S ? (f(std::integral_constant<int, S>{}), true) : false) || ...))
      f(std::integral_constant<int, kGenericEpilogue>{});
  }(std::make_integer_sequence<int, kNumSpecialised>{});
}

// A specialised series' coefficients with d/dz0 (c_0 ... c_{K+1}), dense: coef[q][j][i] multiplies
// g_j v^i in quantity q.
constexpr int kSpecBasis = 2 * (kSpecMaxOrder + 2);
struct DenseSeries {
  int J = 0;
  double coef[kNumQuantities][kSpecBasis][kSpecMaxOrder + 1] = {};
  int top[kNumQuantities] = {};  // the top degree in v of quantity q (-1: q vanishes)
};

constexpr DenseSeries dense_series(const Series& s) {
  DenseSeries d;
  const int kmax = series_kmax(s, true);
  const CoefTable T = coefficient_table(s.act, kmax);
  d.J = basis_size(s.act, kmax);
  for (int q = 0; q < kNumQuantities; ++q) {
    d.top[q] = -1;
    for (int j = 0; j < d.J; ++j)
      for (int i = 0; i <= kSpecMaxOrder; ++i) {
        d.coef[q][j][i] = quantity_coef(T, s, true, q, j, i);
        if (d.coef[q][j][i] != 0.0 && i > d.top[q]) d.top[q] = i;
      }
  }
  return d;
}

template <int S>
inline constexpr DenseSeries kDense = dense_series(kSpecialised[S]);
template <int S, int Q, int J, int I>
inline constexpr double kCoef = kDense<S>.coef[Q][J][I];

// The first basis function in column I of quantity Q of series S, or -1 where the column is empty. A
// constant, not a function: device code may read a host constant but not call a host function.
constexpr int first_term(const DenseSeries& d, int q, int i) {
  for (int j = 0; j < d.J; ++j)
    if (d.coef[q][j][i] != 0.0) return j;
  return -1;
}
template <int S, int Q, int I>
inline constexpr int kFirstTerm = first_term(kDense<S>, Q, I);

static_assert([] {
  for (const Series& s : kSpecialised)
    if (series_kmax(s, true) > kSpecMaxOrder + 1 || basis_size(s.act, series_kmax(s, true)) > kSpecBasis) return false;
  return true;
}(), "a specialised series exceeds the fixed sizes of its epilogue");

// Basis functions g_0 ... g_{J-1} of series S at x, in an array with compile-time indices only (the
// same functions as eval_basis of activations.h, which the plan-driven evaluation uses).
template <int S, typename V, typename M>
struct SpecBasis {
  static constexpr Act act = kSpecialised[S].act;
  static constexpr int J = kDense<S>.J;
  V g[J];

  // g[first + k] = head * base^k for k < count
  template <int First, int Count>
  TN_HD_INLINE void powers(const V& head, const V& base) {
    V p = head;
    static_for<Count>([&](auto k) TN_LAMBDA_INLINE {
      g[First + decltype(k)::value] = p;
      if constexpr (decltype(k)::value + 1 < Count) p = p * base;
    });
  }

  TN_HD_INLINE explicit SpecBasis(const V& z) {
    if constexpr (act == Act::kTanh) {
      V t, s;
      M::tanh_sech2(z, t, s);
      g[0] = t;
      powers<1, J - 1>(s, t);
    } else if constexpr (act == Act::kSigmoid) {
      V p, q;
      M::sigmoid_pair(z, p, q);
      g[0] = p;
      powers<1, J - 1>(p * q, p - q);
    } else if constexpr (act == Act::kSoftplus) {
      g[0] = M::max0(z) + M::log1p(M::exp(V(0) - M::abs(z)));
      V p, q;
      M::sigmoid_pair(z, p, q);
      g[1] = p;
      powers<2, J - 2>(p * q, p - q);
    } else if constexpr (act == Act::kSilu) {
      constexpr int h = J / 2 - 1;
      V p, q;
      M::sigmoid_pair(z, p, q);
      g[0] = p;
      g[1] = z * p;
      powers<2, h>(p * q, p - q);
      static_for<h>([&](auto j) TN_LAMBDA_INLINE { g[2 + h + decltype(j)::value] = z * g[2 + decltype(j)::value]; });
    } else if constexpr (act == Act::kGelu) {
      const V Phi = V(0.5) * M::erfc(z * V(-0.70710678118654752440));
      g[0] = Phi;
      g[1] = z * Phi;
      powers<2, J - 2>(V(0.39894228040143267794) * M::exp(V(-0.5) * z * z), z);
    } else if constexpr (act == Act::kErf) {
      g[0] = M::erf(z);
      powers<1, J - 1>(M::exp(V(0) - z * z), z);
    } else if constexpr (act == Act::kExp) {
      g[0] = M::exp(z);
    } else if constexpr (act == Act::kSin || act == Act::kCos) {
      g[0] = M::sin(z);
      g[1] = M::cos(z);
    } else {
      powers<0, J>(M::step(z), z);
    }
  }

  // Quantity Q at v, Horner in v over its columns: the coefficient of v^i is a combination of the
  // basis with immediate coefficients, one operation per term (an addition where the coefficient is
  // 1 or -1), and the sum starts from its first term rather than a zero. Per basis function a Horner
  // polynomial of its own would cost one multiply-add per coefficient and one to add it in: about
  // twice the operations for silu's value and d/dv.
  template <int Q>
  TN_HD_INLINE V quantity(const V& v) const {
    using A = typename V::value_type;
    constexpr int top = kDense<S>.top[Q];
    if constexpr (top < 0) {
      return V(A(0));
    } else {
      constexpr int j0 = kFirstTerm<S, Q, top>;
      V acc = g[j0];
      if constexpr (kCoef<S, Q, j0, top> != 1.0) acc = acc * V(static_cast<A>(kCoef<S, Q, j0, top>));
      acc = add_terms<Q, top, j0 + 1>(acc);
      static_for<top>([&](auto kc) TN_LAMBDA_INLINE {
        constexpr int i = top - 1 - decltype(kc)::value, j = kFirstTerm<S, Q, i>;
        if constexpr (j < 0) {
          acc = acc * v;
        } else {
          if constexpr (kCoef<S, Q, j, i> == 1.0) acc = M::fma(acc, v, g[j]);
          else acc = M::fma(g[j], V(static_cast<A>(kCoef<S, Q, j, i>)), acc * v);
          acc = add_terms<Q, i, j + 1>(acc);
        }
      });
      return acc;
    }
  }

 private:
  // acc + the terms of column I of quantity Q from basis function From on.
  template <int Q, int I, int From>
  TN_HD_INLINE V add_terms(V acc) const {
    using A = typename V::value_type;
    static_for<J>([&](auto jc) TN_LAMBDA_INLINE {
      constexpr int j = decltype(jc)::value;
      if constexpr (j >= From) {
        constexpr double c = kCoef<S, Q, j, I>;
        if constexpr (c == 1.0) acc = acc + g[j];
        else if constexpr (c == -1.0) acc = acc - g[j];
        else if constexpr (c != 0.0) acc = M::fma(g[j], V(static_cast<A>(c)), acc);
      }
    });
    return acc;
  }
};

// The value and derivatives of h(z0, s u) for specialised series S (feature_grads of series.h with
// the series fixed at compile time); the value and d/dz0 only when asked for at compile time (else
// left unset).
template <int S, bool NeedValue, bool NeedDz, typename V, typename M>
TN_HD_INLINE Grads<V> spec_feature_grads(const V& z0, const V& u, const V& s) {
  using A = typename V::value_type;
  constexpr bool exact = kSpecialised[S].exact;
  const V v = s * u;
  const SpecBasis<S, V, M> b(exact ? z0 + v : z0);
  const V at = exact ? V(A(0)) : v;
  Grads<V> r;
  if constexpr (NeedValue) r.value = b.template quantity<kH>(at);
  r.du = s * b.template quantity<kHdv>(at);
  if constexpr (NeedDz) {
    if constexpr (exact) r.dz = r.du * s;
    else r.dz = b.template quantity<kHdz>(at);
  }
  return r;
}

template <int S, typename V, typename M>
TN_HD_INLINE V spec_feature(const V& z0, const V& u, const V& s) {
  using A = typename V::value_type;
  constexpr bool exact = kSpecialised[S].exact;
  const V v = s * u;
  return SpecBasis<S, V, M>(exact ? z0 + v : z0).template quantity<kH>(exact ? V(A(0)) : v);
}

}  // namespace tn
