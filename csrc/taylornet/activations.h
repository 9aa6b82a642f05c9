// Activations and their normalized Taylor coefficients c_k(z) = sigma^(k)(z) / k!.
//
// Every coefficient is a fixed linear combination of a few basis functions of z,
//     c_k(z) = sum_j T[k][j] * g_j(z),
// e.g. for tanh g_j = tanh(z)^j, since sigma^(k) is a polynomial in tanh. The kernels evaluate the
// basis once per (sample, neuron) with the few transcendental functions it needs and contract it
// with tables built here on the host in double precision. The k! never appears: the recurrences
// below act on the normalized coefficients directly, so order 16 is as safe as order 2.
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "common.h"

namespace tn {

// Ids index kActNames, which taylornet.ACTIVATIONS reads through the activations op.
enum class Act : int {
  kTanh = 0, kSigmoid, kSoftplus, kGelu, kSilu, kSin, kCos, kExp, kErf, kRelu, kRelu2, kRelu3,
  kCount
};

inline const char* const kActNames[] = {
    "tanh", "sigmoid", "softplus", "gelu", "silu", "sin", "cos", "exp", "erf", "relu", "relu2", "relu3"};

// -1 when the name is unknown.
inline int activation_id(const std::string& name) {
  for (int i = 0; i < static_cast<int>(Act::kCount); ++i)
    if (name == kActNames[i]) return i;
  return -1;
}

inline std::string activation_list() {
  std::string s;
  for (int i = 0; i < static_cast<int>(Act::kCount); ++i) {
    if (i) s += ", ";
    s += kActNames[i];
  }
  return s;
}

// Highest Taylor order accepted. Coefficients are normalized (sigma^(k)/k!), so nothing overflows,
// but float32 evaluation of the high-degree polynomials loses digits past this point.
constexpr int kMaxOrder = 16;

// The highest Taylor order each activation accepts: relu's derivatives of order >= 2 vanish almost
// everywhere, so those terms would be zero; every other activation takes any order up to kMaxOrder.
inline int max_order(Act a) { return a == Act::kRelu ? 1 : kMaxOrder; }

// Power of max(z, 0) for the relu family.
TN_HD int relu_power(Act a) { return a == Act::kRelu ? 1 : a == Act::kRelu2 ? 2 : 3; }

// Number of basis functions g_j needed for the coefficients c_0 ... c_kmax.
//
// For tanh and the sigmoid family every derivative of order >= 1 carries the factor sigma' (1 - t^2,
// or p q with q = 1 - p), which is tiny where sigma saturates. Forming it from t or p would cancel
// away most digits there, so the basis multiplies the powers by sigma' computed directly. The
// sigmoids use powers of y = p - q = tanh(z/2), whose polynomials are even or odd and far better
// conditioned at high order than those in p.
TN_HD int basis_size(Act a, int kmax) {
  switch (a) {
    case Act::kTanh:                              // t; s t^j, j < kmax (s = 1 - t^2)
    case Act::kSigmoid: return kmax + 1;          // p; pq y^j, j < kmax (y = p - q)
    case Act::kSoftplus: return kmax + 1;         // softplus; p; pq y^j, j < kmax - 1
    case Act::kSilu: return 2 * (kmax + 1);       // p, z p; pq y^j, z pq y^j, j < kmax
    case Act::kGelu: return kmax + 3;             // Phi, z Phi, phi z^j for j = 0 ... kmax
    case Act::kErf: return kmax + 1;              // erf, exp(-z^2) z^j for j = 0 ... kmax-1
    case Act::kExp: return 1;                     // exp(z)
    case Act::kSin:
    case Act::kCos: return 2;                     // sin(z), cos(z)
    default: return relu_power(a) + 1;            // step(z) z^j for j = 0 ... p
  }
}

// Evaluates g_0 ... g_{J-1} at z. V is a scalar or SIMD vector type; M supplies its elementary
// functions (exp, log1p, erf, erfc, sin, cos, abs, max0 = max(z, 0), step = [z > 0], fma) and
//   tanh_sech2(z, t, s): t = tanh z and s = 1 - t^2, both to full relative precision;
//   sigmoid_pair(z, p, q): p = sigmoid(z) and q = sigmoid(-z) = 1 - p, likewise.
template <typename V, typename M>
TN_HD void eval_basis(Act a, int J, const V& z, V* g) {
  auto powers = [](const V& base, const V& first, V* out, int count) {
    V p = first;
    for (int j = 0; j < count; ++j) {
      out[j] = p;
      p = p * base;
    }
  };
  switch (a) {
    case Act::kTanh: {
      V t, s;
      M::tanh_sech2(z, t, s);
      g[0] = t;
      powers(t, s, g + 1, J - 1);
      break;
    }
    case Act::kSigmoid: {
      V p, q;
      M::sigmoid_pair(z, p, q);
      g[0] = p;
      powers(p - q, p * q, g + 1, J - 1);
      break;
    }
    case Act::kSoftplus: {
      g[0] = M::max0(z) + M::log1p(M::exp(V(0) - M::abs(z)));
      if (J > 1) {
        V p, q;
        M::sigmoid_pair(z, p, q);
        g[1] = p;
        powers(p - q, p * q, g + 2, J - 2);
      }
      break;
    }
    case Act::kSilu: {
      const int h = J / 2 - 1;  // kmax
      V p, q;
      M::sigmoid_pair(z, p, q);
      g[0] = p;
      g[1] = z * p;
      powers(p - q, p * q, g + 2, h);
      for (int j = 0; j < h; ++j) g[2 + h + j] = z * g[2 + j];
      break;
    }
    case Act::kGelu: {
      const V Phi = V(0.5) * M::erfc(z * V(-0.70710678118654752440));
      g[0] = Phi;
      g[1] = z * Phi;
      powers(z, V(0.39894228040143267794) * M::exp(V(-0.5) * z * z), g + 2, J - 2);
      break;
    }
    case Act::kErf: {
      g[0] = M::erf(z);
      powers(z, M::exp(V(0) - z * z), g + 1, J - 1);
      break;
    }
    case Act::kExp: g[0] = M::exp(z); break;
    case Act::kSin:
    case Act::kCos:
      g[0] = M::sin(z);
      g[1] = M::cos(z);
      break;
    default: powers(z, M::step(z), g, J); break;
  }
}

// Host side: the table T (row k = 0 ... kmax, J columns) with c_k = sum_j T[k][j] g_j.
namespace detail {

using Poly = std::vector<double>;  // coefficients, lowest degree first

inline Poly derivative(const Poly& p) {
  Poly d(p.size() > 1 ? p.size() - 1 : 1, 0.0);
  for (size_t i = 1; i < p.size(); ++i) d[i - 1] = static_cast<double>(i) * p[i];
  return d;
}

inline Poly multiply(const Poly& a, const Poly& b) {
  Poly r(a.size() + b.size() - 1, 0.0);
  for (size_t i = 0; i < a.size(); ++i)
    for (size_t j = 0; j < b.size(); ++j) r[i + j] += a[i] * b[j];
  return r;
}

// Normalized derivative polynomials Q_k = sigma^(k) / k! in the variable y = sigma(z), for the
// sigmoids whose derivative is y' = factor(y): Q_{k+1} = factor * Q_k' / (k + 1).
inline std::vector<Poly> self_derivative_polys(const Poly& factor, int kmax) {
  std::vector<Poly> q{{0.0, 1.0}};
  for (int k = 0; k < kmax; ++k) {
    Poly next = multiply(factor, derivative(q.back()));
    for (double& c : next) c /= (k + 1);
    q.push_back(next);
  }
  return q;
}

// R with q = factor * R, for a q that the factor divides (long division from the top degree).
inline Poly divide_exactly(const Poly& q, const Poly& factor) {
  const int df = static_cast<int>(factor.size()) - 1;
  const int dq = static_cast<int>(q.size()) - 1;
  if (dq < df) return Poly{0.0};
  Poly rem = q, r(dq - df + 1, 0.0);
  for (int i = dq - df; i >= 0; --i) {
    r[i] = rem[i + df] / factor[df];
    for (int j = 0; j <= df; ++j) rem[i + j] -= r[i] * factor[j];
  }
  return r;
}

// R_k = Q_k / (1 - t^2) for k = 1 ... kmax: the normalized tanh derivatives without tanh' = 1 - t^2.
inline std::vector<Poly> reduced_tanh_polys(int kmax) {
  const Poly factor{1.0, 0.0, -1.0};
  const auto q = self_derivative_polys(factor, kmax);
  std::vector<Poly> r(kmax + 1);
  for (int k = 1; k <= kmax; ++k) r[k] = divide_exactly(q[k], factor);
  return r;
}

// The same for sigmoid = (1 + tanh(z/2)) / 2 in y = tanh(z/2) = p - q:
// sigmoid^(k) / k! = 2^(-k-1) Q_k(y) = 2^(1-k) pq R_k(y), since 1 - y^2 = 4 pq.
inline std::vector<Poly> reduced_sigmoid_polys(int kmax) {
  auto r = reduced_tanh_polys(kmax);
  for (int k = 1; k <= kmax; ++k)
    for (double& c : r[k]) c = std::ldexp(c, 1 - k);
  return r;
}

// Hermite polynomials by the three-term recurrence H_{n+1} = x H_n - scale n H_{n-1} with
// leading factor `lead` (probabilists' He: lead 1, scale 1; physicists' H: lead 2, scale 2).
inline std::vector<Poly> hermite(int nmax, double lead, double scale) {
  std::vector<Poly> h{{1.0}};
  if (nmax >= 1) h.push_back({0.0, lead});
  for (int n = 1; n < nmax; ++n) {
    Poly next(n + 2, 0.0);
    for (size_t i = 0; i < h[n].size(); ++i) next[i + 1] += lead * h[n][i];
    for (size_t i = 0; i < h[n - 1].size(); ++i) next[i] -= scale * n * h[n - 1][i];
    h.push_back(next);
  }
  return h;
}

}  // namespace detail

inline std::vector<double> coefficient_table(Act a, int kmax) {
  using detail::Poly;
  const int J = basis_size(a, kmax);
  std::vector<double> T(static_cast<size_t>(kmax + 1) * J, 0.0);
  auto at = [&](int k, int j) -> double& { return T[static_cast<size_t>(k) * J + j]; };
  double fact = 1.0;  // k!, only ever divided by the matching integer-coefficient polynomials
  switch (a) {
    case Act::kTanh:
    case Act::kSigmoid: {
      // c_0 = sigma (g_0); c_k = sigma' R_k(y) (g_{1+j} = sigma' y^j).
      const auto r = a == Act::kTanh ? detail::reduced_tanh_polys(kmax) : detail::reduced_sigmoid_polys(kmax);
      at(0, 0) = 1.0;
      for (int k = 1; k <= kmax; ++k)
        for (size_t j = 0; j < r[k].size(); ++j) at(k, 1 + j) = r[k][j];
      break;
    }
    case Act::kSoftplus: {
      // c_0 = softplus; c_k = sigmoid^(k-1) / k! = S_{k-1} / k with S the normalized sigmoid
      // derivatives: c_1 = p (g_1), c_k = pq R_{k-1}(y) / k for k >= 2 (g_{2+j} = pq y^j).
      at(0, 0) = 1.0;
      if (kmax >= 1) at(1, 1) = 1.0;
      const auto r = detail::reduced_sigmoid_polys(kmax > 1 ? kmax - 1 : 0);
      for (int k = 2; k <= kmax; ++k)
        for (size_t j = 0; j < r[k - 1].size(); ++j) at(k, 2 + j) = r[k - 1][j] / k;
      break;
    }
    case Act::kSilu: {
      // silu^(k) = z sigmoid^(k) + k sigmoid^(k-1)  =>  c_k = z S_k + S_{k-1}, with S_0 = p and
      // S_k = pq R_k(y). Basis: g_0 = p, g_1 = z p, g_{2+j} = pq y^j, g_{2+kmax+j} = z pq y^j.
      const auto r = detail::reduced_sigmoid_polys(kmax);
      auto add_s = [&](int k, int s_index, bool times_z) {
        if (s_index == 0) {
          at(k, times_z ? 1 : 0) += 1.0;
          return;
        }
        for (size_t j = 0; j < r[s_index].size(); ++j) at(k, 2 + (times_z ? kmax : 0) + j) += r[s_index][j];
      };
      for (int k = 0; k <= kmax; ++k) {
        add_s(k, k, true);
        if (k > 0) add_s(k, k - 1, false);
      }
      break;
    }
    case Act::kGelu: {
      // N_j = Phi^(j) / j!: N_0 = Phi, N_j = (-1)^(j-1) He_{j-1}(z) phi(z) / j!.
      // gelu^(k) = z Phi^(k) + k Phi^(k-1)  =>  c_0 = z Phi, c_k = z N_k + N_{k-1}.
      const auto he = detail::hermite(kmax, 1.0, 1.0);
      at(0, 1) = 1.0;
      for (int k = 1; k <= kmax; ++k) {
        fact *= k;
        const double sign = (k % 2 == 1) ? 1.0 : -1.0;  // (-1)^(k-1)
        for (size_t i = 0; i < he[k - 1].size(); ++i) at(k, 2 + i + 1) += sign * he[k - 1][i] / fact;
        if (k == 1) {
          at(k, 0) += 1.0;
        } else {
          const double sign1 = (k % 2 == 0) ? 1.0 : -1.0;  // (-1)^(k-2)
          for (size_t i = 0; i < he[k - 2].size(); ++i) at(k, 2 + i) += sign1 * he[k - 2][i] * k / fact;
        }
      }
      break;
    }
    case Act::kErf: {
      // erf^(k) = 2/sqrt(pi) (-1)^(k-1) H_{k-1}(z) exp(-z^2) for k >= 1.
      const auto h = detail::hermite(kmax, 2.0, 2.0);
      at(0, 0) = 1.0;
      for (int k = 1; k <= kmax; ++k) {
        fact *= k;
        const double sign = (k % 2 == 1) ? 1.0 : -1.0;
        for (size_t i = 0; i < h[k - 1].size(); ++i)
          at(k, 1 + i) = 1.12837916709551257390 * sign * h[k - 1][i] / fact;
      }
      break;
    }
    case Act::kExp:
      for (int k = 0; k <= kmax; ++k) {
        if (k > 0) fact *= k;
        at(k, 0) = 1.0 / fact;
      }
      break;
    case Act::kSin:
    case Act::kCos: {
      // The derivatives cycle through sin, cos, -sin, -cos (cos starts one step later).
      const int start = a == Act::kSin ? 0 : 1;
      const int column[4] = {0, 1, 0, 1};
      const double sign[4] = {1.0, 1.0, -1.0, -1.0};
      for (int k = 0; k <= kmax; ++k) {
        if (k > 0) fact *= k;
        const int phase = (k + start) % 4;
        at(k, column[phase]) = sign[phase] / fact;
      }
      break;
    }
    default: {
      // max(z,0)^p: c_k = binom(p, k) step(z) z^(p-k) for k <= p, zero beyond.
      const int p = relu_power(a);
      double binom = 1.0;
      for (int k = 0; k <= kmax && k <= p; ++k) {
        at(k, p - k) = binom;
        binom = binom * (p - k) / (k + 1);
      }
      break;
    }
  }
  return T;
}

}  // namespace tn
