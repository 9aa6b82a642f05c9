// Activations and their normalized Taylor coefficients c_k(z) = sigma^(k)(z) / k!.
//
// Every coefficient is a fixed linear combination of a few basis functions of z,
//     c_k(z) = sum_j T[k][j] * g_j(z),
// e.g. for tanh g_j = tanh(z)^j, since sigma^(k) is a polynomial in tanh. The kernels evaluate the
// basis once per (sample, neuron) with the few transcendental functions it needs and contract it
// with tables built here on the host in double precision. The k! never appears: the recurrences
// below act on the normalized coefficients directly, so order 16 is as safe as order 2.
#pragma once

#include <initializer_list>
#include <string>

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

// Basis functions of the largest plan (silu at kMaxOrder with d/dz0).
constexpr int kMaxBasis = 2 * (kMaxOrder + 3);

// Power of max(z, 0) for the relu family.
TN_HD constexpr int relu_power(Act a) { return a == Act::kRelu ? 1 : a == Act::kRelu2 ? 2 : 3; }

// Number of basis functions g_j needed for the coefficients c_0 ... c_kmax.
//
// For tanh and the sigmoid family every derivative of order >= 1 carries the factor sigma' (1 - t^2,
// or p q with q = 1 - p), which is tiny where sigma saturates. Forming it from t or p would cancel
// away most digits there, so the basis multiplies the powers by sigma' computed directly. The
// sigmoids use powers of y = p - q = tanh(z/2), whose polynomials are even or odd and far better
// conditioned at high order than those in p.
TN_HD constexpr int basis_size(Act a, int kmax) {
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

// Host side (and compile time): the table T (row k = 0 ... kmax, J columns) with c_k = sum_j T[k][j] g_j,
// in fixed-size arrays so that the same code runs in constant evaluation, where the CUDA kernels
// specialised for one series take their coefficients as immediates (cuda/epilogue.cuh).
namespace detail {

constexpr int kPolyCap = kMaxOrder + 4;  // degree kmax + 1 <= kMaxOrder + 2, plus a spare

struct Poly {  // coefficients c[0 .. n-1], lowest degree first
  double c[kPolyCap] = {};
  int n = 0;
};

constexpr Poly poly(std::initializer_list<double> coefs) {
  Poly p;
  for (double v : coefs) p.c[p.n++] = v;
  return p;
}

constexpr Poly derivative(const Poly& p) {
  Poly d;
  d.n = p.n > 1 ? p.n - 1 : 1;
  for (int i = 1; i < p.n; ++i) d.c[i - 1] = static_cast<double>(i) * p.c[i];
  return d;
}

constexpr Poly multiply(const Poly& a, const Poly& b) {
  Poly r;
  r.n = a.n + b.n - 1;
  for (int i = 0; i < a.n; ++i)
    for (int j = 0; j < b.n; ++j) r.c[i + j] += a.c[i] * b.c[j];
  return r;
}

// 2^e, exactly.
constexpr double pow2(int e) {
  double r = 1.0;
  for (; e > 0; --e) r *= 2.0;
  for (; e < 0; ++e) r /= 2.0;
  return r;
}

struct Polys {  // p[0 .. kmax]
  Poly p[kMaxOrder + 2];
};

// Normalized derivative polynomials Q_k = sigma^(k) / k! in the variable y = sigma(z), for the
// sigmoids whose derivative is y' = factor(y): Q_{k+1} = factor * Q_k' / (k + 1).
constexpr Polys self_derivative_polys(const Poly& factor, int kmax) {
  Polys q;
  q.p[0] = poly({0.0, 1.0});
  for (int k = 0; k < kmax; ++k) {
    Poly next = multiply(factor, derivative(q.p[k]));
    for (int i = 0; i < next.n; ++i) next.c[i] /= (k + 1);
    q.p[k + 1] = next;
  }
  return q;
}

// R with q = factor * R, for a q that the factor divides (long division from the top degree).
constexpr Poly divide_exactly(const Poly& q, const Poly& factor) {
  const int df = factor.n - 1;
  const int dq = q.n - 1;
  if (dq < df) return poly({0.0});
  Poly rem = q, r;
  r.n = dq - df + 1;
  for (int i = dq - df; i >= 0; --i) {
    r.c[i] = rem.c[i + df] / factor.c[df];
    for (int j = 0; j <= df; ++j) rem.c[i + j] -= r.c[i] * factor.c[j];
  }
  return r;
}

// R_k = Q_k / (1 - t^2) for k = 1 ... kmax: the normalized tanh derivatives without tanh' = 1 - t^2.
constexpr Polys reduced_tanh_polys(int kmax) {
  const Poly factor = poly({1.0, 0.0, -1.0});
  const Polys q = self_derivative_polys(factor, kmax);
  Polys r;
  for (int k = 1; k <= kmax; ++k) r.p[k] = divide_exactly(q.p[k], factor);
  return r;
}

// The same for sigmoid = (1 + tanh(z/2)) / 2 in y = tanh(z/2) = p - q:
// sigmoid^(k) / k! = 2^(-k-1) Q_k(y) = 2^(1-k) pq R_k(y), since 1 - y^2 = 4 pq.
constexpr Polys reduced_sigmoid_polys(int kmax) {
  Polys r = reduced_tanh_polys(kmax);
  for (int k = 1; k <= kmax; ++k)
    for (int i = 0; i < r.p[k].n; ++i) r.p[k].c[i] *= pow2(1 - k);
  return r;
}

// Hermite polynomials by the three-term recurrence H_{n+1} = x H_n - scale n H_{n-1} with
// leading factor `lead` (probabilists' He: lead 1, scale 1; physicists' H: lead 2, scale 2).
constexpr Polys hermite(int nmax, double lead, double scale) {
  Polys h;
  h.p[0] = poly({1.0});
  if (nmax >= 1) h.p[1] = poly({0.0, lead});
  for (int n = 1; n < nmax; ++n) {
    Poly next;
    next.n = n + 2;
    for (int i = 0; i < h.p[n].n; ++i) next.c[i + 1] += lead * h.p[n].c[i];
    for (int i = 0; i < h.p[n - 1].n; ++i) next.c[i] -= scale * n * h.p[n - 1].c[i];
    h.p[n + 1] = next;
  }
  return h;
}

}  // namespace detail

// c_k = sum_j at(k, j) g_j for k = 0 ... kmax over the basis of basis_size(act, kmax) functions.
struct CoefTable {
  int kmax = 0, J = 0;
  double t[kMaxOrder + 2][kMaxBasis] = {};
  constexpr double at(int k, int j) const { return t[k][j]; }
  constexpr double& at(int k, int j) { return t[k][j]; }
};

constexpr CoefTable coefficient_table(Act a, int kmax) {
  using detail::Poly;
  CoefTable T;
  T.kmax = kmax;
  T.J = basis_size(a, kmax);
  double fact = 1.0;  // k!, only ever divided by the matching integer-coefficient polynomials
  switch (a) {
    case Act::kTanh:
    case Act::kSigmoid: {
      // c_0 = sigma (g_0); c_k = sigma' R_k(y) (g_{1+j} = sigma' y^j).
      const detail::Polys r = a == Act::kTanh ? detail::reduced_tanh_polys(kmax) : detail::reduced_sigmoid_polys(kmax);
      T.at(0, 0) = 1.0;
      for (int k = 1; k <= kmax; ++k)
        for (int j = 0; j < r.p[k].n; ++j) T.at(k, 1 + j) = r.p[k].c[j];
      break;
    }
    case Act::kSoftplus: {
      // c_0 = softplus; c_k = sigmoid^(k-1) / k! = S_{k-1} / k with S the normalized sigmoid
      // derivatives: c_1 = p (g_1), c_k = pq R_{k-1}(y) / k for k >= 2 (g_{2+j} = pq y^j).
      T.at(0, 0) = 1.0;
      if (kmax >= 1) T.at(1, 1) = 1.0;
      const detail::Polys r = detail::reduced_sigmoid_polys(kmax > 1 ? kmax - 1 : 0);
      for (int k = 2; k <= kmax; ++k)
        for (int j = 0; j < r.p[k - 1].n; ++j) T.at(k, 2 + j) = r.p[k - 1].c[j] / k;
      break;
    }
    case Act::kSilu: {
      // silu^(k) = z sigmoid^(k) + k sigmoid^(k-1)  =>  c_k = z S_k + S_{k-1}, with S_0 = p and
      // S_k = pq R_k(y). Basis: g_0 = p, g_1 = z p, g_{2+j} = pq y^j, g_{2+kmax+j} = z pq y^j.
      const detail::Polys r = detail::reduced_sigmoid_polys(kmax);
      auto add_s = [&](int k, int s_index, bool times_z) {
        if (s_index == 0) {
          T.at(k, times_z ? 1 : 0) += 1.0;
          return;
        }
        for (int j = 0; j < r.p[s_index].n; ++j) T.at(k, 2 + (times_z ? kmax : 0) + j) += r.p[s_index].c[j];
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
      const detail::Polys he = detail::hermite(kmax, 1.0, 1.0);
      T.at(0, 1) = 1.0;
      for (int k = 1; k <= kmax; ++k) {
        fact *= k;
        const double sign = (k % 2 == 1) ? 1.0 : -1.0;  // (-1)^(k-1)
        for (int i = 0; i < he.p[k - 1].n; ++i) T.at(k, 2 + i + 1) += sign * he.p[k - 1].c[i] / fact;
        if (k == 1) {
          T.at(k, 0) += 1.0;
        } else {
          const double sign1 = (k % 2 == 0) ? 1.0 : -1.0;  // (-1)^(k-2)
          for (int i = 0; i < he.p[k - 2].n; ++i) T.at(k, 2 + i) += sign1 * he.p[k - 2].c[i] * k / fact;
        }
      }
      break;
    }
    case Act::kErf: {
      // erf^(k) = 2/sqrt(pi) (-1)^(k-1) H_{k-1}(z) exp(-z^2) for k >= 1.
      const detail::Polys h = detail::hermite(kmax, 2.0, 2.0);
      T.at(0, 0) = 1.0;
      for (int k = 1; k <= kmax; ++k) {
        fact *= k;
        const double sign = (k % 2 == 1) ? 1.0 : -1.0;
        for (int i = 0; i < h.p[k - 1].n; ++i) T.at(k, 1 + i) = 1.12837916709551257390 * sign * h.p[k - 1].c[i] / fact;
      }
      break;
    }
    case Act::kExp:
      for (int k = 0; k <= kmax; ++k) {
        if (k > 0) fact *= k;
        T.at(k, 0) = 1.0 / fact;
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
        T.at(k, column[phase]) = sign[phase] / fact;
      }
      break;
    }
    default: {
      // max(z,0)^p: c_k = binom(p, k) step(z) z^(p-k) for k <= p, zero beyond.
      const int p = relu_power(a);
      double binom = 1.0;
      for (int k = 0; k <= kmax && k <= p; ++k) {
        T.at(k, p - k) = binom;
        binom = binom * (p - k) / (k + 1);
      }
      break;
    }
  }
  return T;
}

}  // namespace tn
