"""The hierarchical learner (Chen, Bai, Lee et al. 2020, arXiv:2006.13436): a quadratic Taylor layer on a
fixed random representation, against the quadratic model on raw x and the NTK.

h(x) holds D = feature_factor * d^(p/2) random Hermite features of degree q = p/2
(``RandomFeatures``); above it a sign-randomized quadratic Taylor model (with a trainable bias, so it can
form linear terms in h) trains on the exact sign-expectation loss with noisy SGD and weight decay, like
the quadratic-expected learner on raw x. The targets and the threshold search are those of the
sample-complexity experiment. The claim: the NTK needs about d^p samples, the quadratic model
d^(p-1) and the hierarchical learner d^(p/2).

The degree p must be even. For p = 4 a centered (b.x)^4 has 75% of its variance in its degree-2 part,
which every learner picks up early, so the target error must be well below 0.25 for n* to measure
the learning of the degree-4 part: the default is 0.1.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from .common import add_common_arguments, resolve_config
from .sample_complexity import SampleComplexityConfig, add_sweep_arguments, learner_settings, run_experiment

__all__ = ["HierarchicalConfig", "PRESETS", "feature_width", "add_arguments", "run"]

NAME = "hierarchical"


@dataclass
class HierarchicalConfig(SampleComplexityConfig):
    dims: tuple[int, ...] = (6, 8, 10, 12, 14)
    degree: int = 4
    lower_share: float | None = 0.0
    learners: tuple[str, ...] = ("ntk-krr", "quadratic-expected", "hierarchical")
    target_error: float = 0.5
    test_samples: int = 2000
    max_samples: int = 4096
    width: int = 1024
    activation: str = "gelu"
    steps: int = 600
    lr: float = 10.0
    hierarchical_lr: float | None = 1.0
    feature_factor: float = 1.0


PRESETS = {
    "quick": dict(dims=(6, 8, 10), steps=400, test_samples=1000, max_samples=2048),
    # the expected-loss models' curvature falls like 1/sqrt(m): the learning rates scale up with it
    "large": dict(dims=(8, 12, 16, 20, 24), width=2**16, lr=80.0, hierarchical_lr=8.0, steps=1000,
                  test_samples=4000, max_samples=32768),
}


def feature_width(d: int, degree: int, factor: float) -> int:
    """D = round(factor * d^(p/2)), at least 1."""
    return max(1, round(factor * d ** (degree / 2)))


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p, NAME)
    g = p.add_argument_group("experiment knobs (override the preset; defaults without one)")
    add_sweep_arguments(g, HierarchicalConfig())
    g.add_argument("--feature-factor", type=float, help="representation width D = factor * d^(p/2) (1.0)")
    g.add_argument("--hierarchical-lr", type=float,
                   help=f"noisy SGD learning rate of the hierarchical learner ({HierarchicalConfig().hierarchical_lr})")


def run(args: argparse.Namespace) -> int:
    cfg, preset = resolve_config(HierarchicalConfig, PRESETS, args)
    if cfg.degree % 2:
        raise SystemExit(f"--degree: the hierarchical learner needs an even degree p, got {cfg.degree}")

    def settings_for(d: int):
        return learner_settings(cfg, feature_degree=cfg.degree // 2,
                                feature_width=feature_width(d, cfg.degree, cfg.feature_factor))

    return run_experiment(NAME, cfg, preset, args, settings_for,
                          f"hierarchical vs quadratic vs NTK, p = {cfg.degree}")
