"""The learners of the sample-complexity experiments, each a function (x, y, settings) -> predictor,
the predictor a function of new inputs; built on the fused ops so that they run at large width.

    ntk-krr             kernel ridge regression with the empirical NTK Gram of the two-layer model
    ntk-gd              the order-1 (linearized) model trained to convergence (L-BFGS) on the same
                        ridge loss, which converges to the same predictor
    quadratic-signs     the sign-randomized quadratic model (order 2), fresh in-kernel signs each step,
                        noisy SGD on the squared loss plus weight decay; predicts E_S f
    quadratic-expected  the same model on the exact sign-expectation loss E_S (f - y)^2 (no sampling
                        variance), noisy SGD plus weight decay; predicts E_S f
    full                the full network sigma(w0.x + w.x) (order "exact"), noisy SGD plus weight decay
    hierarchical        a fixed random representation h(x) (``RandomFeatures``) below a quadratic
                        Taylor layer trained like quadratic-expected

All models share the parametrization f = scale * sum_r a_r h_r with symmetric initialization (f = 0
at init), a fixed readout and the movement W trained from zero; the loss is the mean squared error.

Learning rates: the expected-loss models have no linear term, and their curvature grows like
d / sqrt(m), so they take the large ``lr``; the hierarchical learner's input h has D >> d
coordinates of unit variance and takes its own ``hierarchical_lr``. A loss that contains the linear
(NTK) term - the full network, and the quadratic model with sampled signs, whose every step sees the
linear term of that step's signs - diverges above 2 / lambda_max of the NTK Hessian (2 / n) K; those
learners run at min(lr, 1 / lambda_max), half that edge.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..modules import TaylorNet
from ..optim import NoisySGD
from .features import RandomFeatures

__all__ = ["LearnerSettings", "LEARNERS", "Predictor", "fit", "fit_predict", "fit_steps"]

Predictor = Callable[[torch.Tensor], torch.Tensor]
OnStep = Callable[[], None] | None  # called after every optimizer step (progress bars)


@dataclass
class LearnerSettings:
    """Hyperparameters shared by the learners (one setting for every d and n of a sweep)."""

    width: int = 4096
    activation: str = "softplus"
    ridge: float = 1e-3  # KRR ridge relative to the mean diagonal of the Gram matrix
    steps: int = 600  # noisy SGD steps (full batch)
    lr: float = 3.0
    noise_std: float = 1e-3
    weight_decay: float = 1e-4
    lbfgs_iters: int = 200
    feature_degree: int = 2  # hierarchical: Hermite degree q of h(x)
    feature_width: int = 64  # hierarchical: D
    hierarchical_lr: float | None = None  # hierarchical: its noisy SGD learning rate (None: lr)
    seed: int = 0


def _model(x: torch.Tensor, s: LearnerSettings, order, *, sign_randomization=False, bias=False) -> TaylorNet:
    """A fresh symmetric-initialized model for inputs like x, its initialization drawn from s.seed."""
    torch.manual_seed(s.seed)
    return TaylorNet(x.shape[1], s.width, activation=s.activation, order=order,
                     sign_randomization=sign_randomization, bias=bias, device=x.device, dtype=x.dtype)


def _gram(model: TaylorNet, x1, x2):
    """The model's NTK Gram in W (models without biases)."""
    return model.ntk(x1, x2)


def _ridge(gram: torch.Tensor, s: LearnerSettings) -> float:
    return s.ridge * gram.diagonal().mean().item()


def ntk_stable_lr(model: TaylorNet, x: torch.Tensor, lr: float) -> float:
    """min(lr, 1 / lambda_max) for the NTK Hessian (2 / n) K of the mean squared loss on x."""
    top = torch.linalg.eigvalsh(_gram(model, x, x).double())[-1].item()
    return min(lr, x.shape[0] / (2 * top))


def ntk_krr(x, y, s: LearnerSettings, on_step: OnStep = None) -> Predictor:
    """Kernel ridge regression with the empirical NTK of the width-m model at its initialization."""
    model = _model(x, s, 1)
    gram = _gram(model, x, x)
    eye = torch.eye(x.shape[0], dtype=torch.float64, device=x.device)
    coef = torch.linalg.solve(gram.double() + _ridge(gram, s) * eye, y.double())

    def predict(x_new):  # the training inputs reuse their Gram matrix
        k = gram if x_new is x else _gram(model, x_new, x)
        return (k.double() @ coef).to(x_new.dtype)
    return predict


def _predictor(model: TaylorNet) -> Predictor:
    """Outputs of a trained one-output model (in eval mode: the sign expectation when randomized)."""
    model.eval()

    def predict(x_new):
        with torch.no_grad():
            return model(x_new).squeeze(-1)
    return predict


def ntk_gd(x, y, s: LearnerSettings, on_step: OnStep = None) -> Predictor:
    """The order-1 model on mean (f - y)^2 + lam ||W||^2 with lam = ridge / n, by L-BFGS: a convex
    quadratic in W whose minimizer predicts exactly what ``ntk_krr`` does."""
    model = _model(x, s, 1)
    lam = _ridge(_gram(model, x, x), s) / x.shape[0]
    opt = torch.optim.LBFGS([model.weight], lr=1.0, max_iter=s.lbfgs_iters, history_size=20,
                            tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad(set_to_none=True)
        loss = (model(x).squeeze(-1) - y).pow(2).mean() + lam * model.weight.pow(2).sum()
        loss.backward()
        if on_step is not None:  # one call per loss evaluation (L-BFGS evaluates about once an iteration)
            on_step()
        return loss

    opt.step(closure)
    return _predictor(model)


def train_noisy_sgd(model: TaylorNet, loss_fn, s: LearnerSettings, lr: float, on_step: OnStep = None) -> TaylorNet:
    """``steps`` full-batch NoisySGD steps on loss_fn(model); returns the model in eval mode."""
    opt = NoisySGD(model.parameters(), lr=lr, noise_std=s.noise_std, weight_decay=s.weight_decay)
    model.train()
    for _ in range(s.steps):
        loss = loss_fn(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if on_step is not None:
            on_step()
    return model.eval()


def quadratic_signs(x, y, s: LearnerSettings, on_step: OnStep = None) -> Predictor:
    """The order-2 model with fresh in-kernel signs every step, on the sampled squared loss."""
    model = _model(x, s, 2, sign_randomization=True)
    train_noisy_sgd(model, lambda m: (m(x).squeeze(-1) - y).pow(2).mean(), s, ntk_stable_lr(model, x, s.lr),
                    on_step)
    return _predictor(model)  # eval mode: the sign expectation E_S f


def _quadratic_expected(x, y, s: LearnerSettings, *, bias=False, lr=None, on_step: OnStep = None) -> Predictor:
    """The sign-randomized order-2 model trained on the exact expected loss; predicts E_S f."""
    model = _model(x, s, 2, sign_randomization=True, bias=bias)
    train_noisy_sgd(model, lambda m: m.expected_loss(x, y.unsqueeze(-1)), s, s.lr if lr is None else lr, on_step)
    return _predictor(model)


def quadratic_expected(x, y, s: LearnerSettings, on_step: OnStep = None) -> Predictor:
    """The sign-randomized quadratic model on raw x, exact sign-expectation loss."""
    return _quadratic_expected(x, y, s, on_step=on_step)


def full_network(x, y, s: LearnerSettings, on_step: OnStep = None) -> Predictor:
    """The full network sigma(w0.x + w.x), no signs, at the NTK-stable learning rate."""
    model = _model(x, s, "exact")
    train_noisy_sgd(model, lambda m: (m(x).squeeze(-1) - y).pow(2).mean(), s, ntk_stable_lr(model, x, s.lr),
                    on_step)
    return _predictor(model)


def hierarchical(x, y, s: LearnerSettings, on_step: OnStep = None) -> Predictor:
    """Quadratic Taylor layer (with a trainable bias, so it can form linear terms in h) on h(x)."""
    g = torch.Generator().manual_seed(s.seed)
    features = RandomFeatures(x.shape[1], s.feature_width, s.feature_degree, g, dtype=x.dtype).to(x.device)
    h = features(x)
    predict_h = _quadratic_expected(h, y, s, bias=True, lr=s.hierarchical_lr, on_step=on_step)
    return lambda x_new: predict_h(h if x_new is x else features(x_new))


LEARNERS = {
    "ntk-krr": ntk_krr,
    "ntk-gd": ntk_gd,
    "quadratic-signs": quadratic_signs,
    "quadratic-expected": quadratic_expected,
    "full": full_network,
    "hierarchical": hierarchical,
}


def fit(name: str, x, y, settings: LearnerSettings, on_step: OnStep = None) -> Predictor:
    """Trains learner ``name`` on (x, y); returns its predictor (a function of new inputs).
    ``on_step`` is called after every optimizer step (``fit_steps`` of them, about)."""
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}: expected one of {', '.join(LEARNERS)}")
    return LEARNERS[name](x, y, settings, on_step=on_step)


def fit_steps(name: str, settings: LearnerSettings) -> int:
    """How many times ``fit`` calls ``on_step``: the noisy SGD steps, the L-BFGS iterations (about:
    fewer when it converges, a few more with line searches), none for kernel ridge regression."""
    return 0 if name == "ntk-krr" else settings.lbfgs_iters if name == "ntk-gd" else settings.steps


def fit_predict(name: str, x, y, x_test, settings: LearnerSettings) -> torch.Tensor:
    """Trains learner ``name`` on (x, y) and returns its predictions on x_test."""
    return fit(name, x, y, settings)(x_test)
