"""Experiments that reproduce the beyond-NTK claims, and their building blocks.

Commands (``taylornet experiment NAME``, see ``cli.py``): ``taylorized``, ``sample-complexity``,
``hierarchical``. Building blocks, for composing other experiments:

    data.load_digits, data.sample_sphere, data.LowRankPolynomial     data sets and targets
    features.RandomFeatures                                          fixed random representation h(x)
    taylornet.ntk_gram, ntk.kernel_ridge                             empirical NTK Gram (no n x m buffer), KRR
    learners.LEARNERS                                                NTK, quadratic, full, hierarchical learners
    taylornet.optim.NoisySGD, taylornet.TaylorNet.expected_loss      noisy SGD, the sign-expectation loss
"""
from .data import LowRankPolynomial, Split, load_digits, sample_sphere
from .features import RandomFeatures
from .ntk import kernel_ridge, ntk_gram

__all__ = ["LowRankPolynomial", "RandomFeatures", "Split", "kernel_ridge", "load_digits", "ntk_gram", "sample_sphere"]
