"""Data for the experiments: the scikit-learn digits, the sphere, low-rank polynomial targets.

Everything takes a ``torch.Generator`` (or a seed), so a run repeats exactly on CPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Split", "load_digits", "sample_sphere", "sphere_moment", "LowRankPolynomial"]


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


@dataclass
class LowRankPolynomial:
    """f*(x) = sum_{s <= r} alpha_s (t_s^p - E t_s^p) / sd(t_s^p),  t_s = beta_s . x.

    The low-rank degree-p polynomial of the beyond-NTK papers, with orthonormal directions
    ``beta`` (r, d). For x uniform on the sphere of radius sqrt(d) every term is centered with unit
    L2 norm (exactly, from ``sphere_moment``), so with alpha_s = +-1/sqrt(r) the target has mean 0 and
    variance close to 1 and the trivial predictor 0 has normalized error about 1.
    """

    alpha: torch.Tensor  # (r,)
    beta: torch.Tensor  # (r, d), orthonormal rows
    degree: int

    @classmethod
    def random(cls, d: int, rank: int, degree: int, generator: torch.Generator,
               dtype=torch.float32) -> LowRankPolynomial:
        """Random orthonormal directions and random signs alpha_s = +-1/sqrt(rank)."""
        if not 1 <= rank <= d:
            raise ValueError(f"rank: expected 1 <= rank <= d = {d}, got {rank}")
        if degree < 1:
            raise ValueError(f"degree: expected a positive int, got {degree}")
        q, _ = torch.linalg.qr(torch.randn(d, rank, generator=generator, dtype=torch.float64))
        signs = torch.randint(0, 2, (rank,), generator=generator).to(torch.float64) * 2 - 1
        return cls(alpha=(signs / math.sqrt(rank)).to(dtype), beta=q.T.contiguous().to(dtype), degree=degree)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        d, p = self.beta.shape[1], self.degree
        mean = sphere_moment(p, d)
        sd = math.sqrt(sphere_moment(2 * p, d) - mean**2)
        t = x @ self.beta.to(x).T
        return ((t**p - mean) / sd) @ self.alpha.to(x)
