"""Data for the experiments: the scikit-learn digits, the sphere, low-rank polynomial targets.

Everything takes a ``torch.Generator`` (or a seed), so a run repeats exactly on CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Split", "load_digits", "sample_sphere", "sphere_moment", "sphere_orthogonal_polynomials", "degree_shares",
           "LowRankPolynomial"]


@dataclass
class Split:
    """A train/test split: inputs (n, d) and targets (class indices or real values)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device=None, dtype=None) -> Split:
        """The split on ``device``, inputs (and real-valued targets) cast to ``dtype``."""
        def move(t):
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return Split(move(self.x_train), move(self.y_train), move(self.x_test), move(self.y_test))


def load_digits(test_fraction: float = 0.2, split_seed: int = 0, dtype=torch.float32) -> Split:
    """The 8x8 digits of scikit-learn (1797 images, 64 features, 10 classes), shipped with the package.

    A fixed stratified split (``split_seed``), features standardized with the training mean and
    standard deviation (pixels that are constant in the training set stay at zero). Targets are
    int64 class indices.
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    x, y = sk_load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=split_seed, stratify=y)
    x_train, x_test = torch.as_tensor(x_train, dtype=torch.float64), torch.as_tensor(x_test, dtype=torch.float64)
    mean, std = x_train.mean(0), x_train.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return Split(((x_train - mean) / std).to(dtype), torch.as_tensor(y_train, dtype=torch.int64),
                 ((x_test - mean) / std).to(dtype), torch.as_tensor(y_test, dtype=torch.int64))


def sample_sphere(n: int, d: int, generator: torch.Generator, *, radius: float | None = None,
                  dtype=torch.float32) -> torch.Tensor:
    """n points uniform on the sphere of radius ``radius`` (default sqrt(d)) in R^d, shape (n, d).

    With radius sqrt(d), every coordinate and every projection on a unit vector has variance 1.
    """
    g = torch.randn(n, d, generator=generator, dtype=torch.float64)
    r = math.sqrt(d) if radius is None else radius
    return (g * (r / g.norm(dim=1, keepdim=True))).to(dtype)


def sphere_moment(k: int, d: int) -> float:
    """E[t^k] for t = b.x, b a unit vector and x uniform on the sphere of radius sqrt(d) in R^d.

    Zero for odd k; for k = 2j it is d^j (2j - 1)!! / (d (d + 2) ... (d + 2j - 2)), which tends to
    the Gaussian moment (2j - 1)!! as d grows.
    """
    if k % 2:
        return 0.0
    j = k // 2
    value = 1.0
    for i in range(j):
        value *= d * (2 * i + 1) / (d + 2 * i)
    return value


def sphere_orthogonal_polynomials(p: int, d: int) -> list[list[float]]:
    """Polynomials q_0 .. q_p in t = b.x (ascending coefficients), q_k of degree k, orthonormal for x
    uniform on the sphere of radius sqrt(d): E[q_j(t) q_k(t)] = [j = k].

    Gram-Schmidt on 1, t, t^2, ... with the exact moments ``sphere_moment``. As functions of x these
    are the zonal spherical harmonics of degree k around b (Gegenbauer polynomials), so a target
    written in them has exactly known variance in each degree.
    """
    def inner(u, v):
        return sum(ui * vj * sphere_moment(i + j, d) for i, ui in enumerate(u) for j, vj in enumerate(v))

    basis: list[list[float]] = []
    for k in range(p + 1):
        q = [0.0] * k + [1.0]
        for b in basis:
            c = inner(q, b)
            q = [qi - c * (b[i] if i < len(b) else 0.0) for i, qi in enumerate(q)]
        norm = math.sqrt(inner(q, q))
        basis.append([qi / norm for qi in q])
    return basis


def degree_shares(coefficients, d: int) -> list[float]:
    """Fraction of the variance of the polynomial ``coefficients`` (in t = b.x, ascending) in each
    degree 0 .. p, for x uniform on the sphere of radius sqrt(d) (degree 0 is the squared mean)."""
    basis = sphere_orthogonal_polynomials(len(coefficients) - 1, d)
    parts = [sum(bi * cj * sphere_moment(i + j, d) for i, bi in enumerate(b) for j, cj in enumerate(coefficients))
             for b in basis]
    total = sum(v * v for v in parts)
    return [v * v / total for v in parts]


@dataclass
class LowRankPolynomial:
    """f*(x) = sum_{s <= r} alpha_s q(t_s),  t_s = beta_s . x,  with E q(t) = 0 and E q(t)^2 = 1.

    The low-rank degree-p polynomial of the beyond-NTK papers, with orthonormal directions
    ``beta`` (r, d). By default q is the monomial (t^p - E t^p) / sd(t^p); ``coefficients`` (ascending
    powers of t) sets another q. For x uniform on the sphere of radius sqrt(d) every term is centered
    with unit L2 norm (exactly, from ``sphere_moment``), so with alpha_s = +-1/sqrt(r) the target has
    mean 0 and variance close to 1 and the trivial predictor 0 has normalized error about 1.
    """

    alpha: torch.Tensor  # (r,)
    beta: torch.Tensor  # (r, d), orthonormal rows
    degree: int
    coefficients: tuple[float, ...] | None = None  # q(t), ascending powers; None: the centered monomial

    @classmethod
    def random(cls, d: int, rank: int, degree: int, generator: torch.Generator,
               dtype=torch.float32, lower_share: float | None = None) -> LowRankPolynomial:
        """Random orthonormal directions and random signs alpha_s = +-1/sqrt(rank).

        ``lower_share`` None: q is the centered monomial t^p (for p = 4 about 75% of its variance is
        in its degree-2 harmonic). A number s in [0, 1]: q = sqrt(1 - s) q_p + sqrt(s) q_{p-2}, the
        unit-variance zonal harmonics of degrees p and p - 2, so exactly a fraction s of the
        target's variance is in degree p - 2 (p >= 3).
        """
        if not 1 <= rank <= d:
            raise ValueError(f"rank: expected 1 <= rank <= d = {d}, got {rank}")
        if degree < 1:
            raise ValueError(f"degree: expected a positive int, got {degree}")
        coefficients = None
        if lower_share is not None:
            if not 0.0 <= lower_share <= 1.0:
                raise ValueError(f"lower_share: expected a fraction in [0, 1], got {lower_share}")
            if degree < 3:
                raise ValueError(f"lower_share: needs a degree p >= 3 (a centered degree p - 2 part), got {degree}")
            basis = sphere_orthogonal_polynomials(degree, d)
            hi, lo = basis[degree], basis[degree - 2] + [0.0, 0.0]
            coefficients = tuple(math.sqrt(1 - lower_share) * h + math.sqrt(lower_share) * lo_k
                                 for h, lo_k in zip(hi, lo))
        q, _ = torch.linalg.qr(torch.randn(d, rank, generator=generator, dtype=torch.float64))
        signs = torch.randint(0, 2, (rank,), generator=generator).to(torch.float64) * 2 - 1
        return cls(alpha=(signs / math.sqrt(rank)).to(dtype), beta=q.T.contiguous().to(dtype), degree=degree,
                   coefficients=coefficients)

    def polynomial(self) -> list[float]:
        """q(t), ascending coefficients."""
        if self.coefficients is not None:
            return list(self.coefficients)
        d, p = self.beta.shape[1], self.degree
        mean = sphere_moment(p, d)
        sd = math.sqrt(sphere_moment(2 * p, d) - mean**2)
        return [-mean / sd] + [0.0] * (p - 1) + [1.0 / sd]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t = x @ self.beta.to(x).T
        out = torch.zeros_like(t)
        for c in reversed(self.polynomial()):  # Horner
            out = out * t + c
        return out @ self.alpha.to(x)
