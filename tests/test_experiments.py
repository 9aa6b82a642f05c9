"""The experiments' building blocks (data, random features, kernel ridge, sign-expectation
loss, NoisySGD, threshold search) and tiny smoke runs of every `taylornet experiment` command."""
import itertools
import json
import math

import pytest
import torch

import taylornet as tn
from taylornet.__main__ import main
from taylornet.experiments import learners
from taylornet.experiments.common import Interruptible, Verdict, fit_power_law
from taylornet.experiments.data import (
    LowRankPolynomial,
    degree_shares,
    load_digits,
    sample_sphere,
    sphere_moment,
    sphere_orthogonal_polynomials,
)
from taylornet.experiments.features import RandomFeatures, hermite
from taylornet.experiments.ntk import kernel_ridge
from taylornet.experiments.sample_complexity import claims_for, find_threshold, harmonic_count, judge, sample_grid
from taylornet.optim import NoisySGD

DT = torch.float64


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# data

@pytest.mark.slow  # scikit-learn's import
def test_digits_split_is_fixed_and_standardized():
    data = load_digits()
    assert data.x_train.shape == (1437, 64) and data.x_test.shape == (360, 64)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert set(data.y_train.tolist()) == set(range(10)) and set(data.y_test.tolist()) == set(range(10))
    x = data.x_train.double()
    varying = x.std(0) > 0
    torch.testing.assert_close(x.mean(0), torch.zeros(64, dtype=DT), atol=1e-6, rtol=0)
    torch.testing.assert_close(x.std(0)[varying], torch.ones(int(varying.sum()), dtype=DT), atol=1e-6, rtol=0)
    again = load_digits()
    assert torch.equal(again.x_test, data.x_test) and torch.equal(again.y_train, data.y_train)


def test_sphere_points_have_radius_sqrt_d_and_repeat():
    x = sample_sphere(100, 7, _gen(1), dtype=DT)
    torch.testing.assert_close(x.norm(dim=1), torch.full((100,), math.sqrt(7), dtype=DT))
    assert torch.equal(x, sample_sphere(100, 7, _gen(1), dtype=DT))
    torch.testing.assert_close(sample_sphere(5, 3, _gen(2), radius=2.0).norm(dim=1), torch.full((5,), 2.0))


@pytest.mark.parametrize("k", [2, 4, 6])
def test_sphere_moments_match_monte_carlo(k):
    d = 5
    t = sample_sphere(400_000, d, _gen(3), dtype=DT)[:, 0]
    assert abs(t.pow(k).mean().item() - sphere_moment(k, d)) < 0.03 * sphere_moment(k, d)
    assert sphere_moment(k - 1, d) == 0.0


def test_low_rank_polynomial_is_centered_with_unit_variance():
    d, rank, degree = 10, 3, 3
    f = LowRankPolynomial.random(d, rank, degree, _gen(4), dtype=DT)
    assert f.alpha.shape == (rank,) and f.beta.shape == (rank, d)
    torch.testing.assert_close(f.beta @ f.beta.T, torch.eye(rank, dtype=DT))
    torch.testing.assert_close(f.alpha.abs(), torch.full((rank,), rank**-0.5, dtype=DT))
    y = f(sample_sphere(200_000, d, _gen(5), dtype=DT))
    assert y.shape == (200_000,)
    assert abs(y.mean().item()) < 0.02 and abs(y.var().item() - 1) < 0.1
    with pytest.raises(ValueError, match="rank"):
        LowRankPolynomial.random(3, 4, 2, _gen())


def _poly(coefficients, t):
    return sum(c * t**i for i, c in enumerate(coefficients))


def test_sphere_orthogonal_polynomials_are_orthonormal_zonal_harmonics():
    d, p = 6, 4
    qs = sphere_orthogonal_polynomials(p, d)
    assert [len(q) for q in qs] == [1, 2, 3, 4, 5]
    t = sample_sphere(400_000, d, _gen(20), dtype=DT)[:, 0]
    values = torch.stack([_poly(q, t) for q in qs])
    gram = values @ values.T / t.numel()
    torch.testing.assert_close(gram, torch.eye(p + 1, dtype=DT), atol=0.03, rtol=0)
    # they tend to the normalized Hermite polynomials as d grows
    big = sphere_orthogonal_polynomials(4, 10**6)[4]
    torch.testing.assert_close(torch.tensor(big, dtype=DT), torch.tensor([3.0, 0, -6, 0, 1], dtype=DT) / 24**0.5,
                               atol=1e-4, rtol=0)


def test_target_degree_shares():
    d = 8
    monomial = LowRankPolynomial.random(d, 1, 4, _gen(21), dtype=DT)
    shares = degree_shares(monomial.polynomial(), d)
    assert shares[1] == shares[3] == pytest.approx(0, abs=1e-12) and shares[0] == pytest.approx(0, abs=1e-12)
    assert shares[2] + shares[4] == pytest.approx(1) and 0.8 < shares[2] < 0.9  # 0.75 only as d grows
    assert degree_shares(LowRankPolynomial.random(10**5, 1, 4, _gen(21)).polynomial(), 10**5)[2] == \
        pytest.approx(0.75, abs=1e-3)
    x = sample_sphere(200_000, d, _gen(23), dtype=DT)
    for share in (0.0, 0.3, 1.0):
        f = LowRankPolynomial.random(d, 1, 4, _gen(22), dtype=DT, lower_share=share)
        got = degree_shares(f.polynomial(), d)
        assert got[2] == pytest.approx(share, abs=1e-12) and got[4] == pytest.approx(1 - share, abs=1e-12)
        y = f(x)
        assert abs(y.mean().item()) < 0.02 and abs(y.var().item() - 1) < 0.03
    # the same directions and signs as the monomial target of the same draw
    assert torch.equal(f.beta, LowRankPolynomial.random(d, 1, 4, _gen(22), dtype=DT).beta)
    with pytest.raises(ValueError, match="lower_share"):
        LowRankPolynomial.random(d, 1, 4, _gen(), lower_share=1.5)
    with pytest.raises(ValueError, match="lower_share"):
        LowRankPolynomial.random(d, 1, 2, _gen(), lower_share=0.5)


# ---------------------------------------------------------------------------------------------
# random features

def test_hermite_polynomials():
    t = torch.linspace(-2, 2, 9, dtype=DT)
    torch.testing.assert_close(hermite(t, 0), torch.ones_like(t))
    torch.testing.assert_close(hermite(t, 2), t**2 - 1)
    torch.testing.assert_close(hermite(t, 3), t**3 - 3 * t)
    torch.testing.assert_close(hermite(t, 4), t**4 - 6 * t**2 + 3)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_random_features_shape_scale_and_determinism(degree):
    d, D = 6, 40
    feats = RandomFeatures(d, D, degree, _gen(6), dtype=DT)
    assert feats.num_features == D
    torch.testing.assert_close(feats.directions.norm(dim=1), torch.ones(D, dtype=DT))
    x = sample_sphere(100_000, d, _gen(7), dtype=DT)
    h = feats(x)
    assert h.shape == (100_000, D) and h.dtype == DT
    assert h.mean(0).abs().max() < 0.03 and (h.var(0) - 1).abs().max() < 0.05  # exact on the sphere
    assert torch.equal(RandomFeatures(d, D, degree, _gen(6), dtype=DT)(x[:10]), feats(x[:10]))
    assert not torch.allclose(RandomFeatures(d, D, degree, _gen(8), dtype=DT)(x[:10]), feats(x[:10]))


# ---------------------------------------------------------------------------------------------
# Kernel ridge (the NTK Gram itself: tests/test_api.py)

def test_trained_order1_model_converges_to_kernel_ridge():
    d, n = 4, 12
    g = _gen(10)
    target = LowRankPolynomial.random(d, 1, 2, g, dtype=DT)
    x, x_test = sample_sphere(n, d, g, dtype=DT), sample_sphere(20, d, g, dtype=DT)
    settings = learners.LearnerSettings(width=32, ridge=1e-2, lbfgs_iters=300)
    krr = learners.fit("ntk-krr", x, target(x), settings)
    gd = learners.fit("ntk-gd", x, target(x), settings)
    assert gd(x_test).dtype == DT
    torch.testing.assert_close(gd(x_test), krr(x_test), rtol=1e-5, atol=1e-6)
    # the training inputs reuse the Gram matrix: the same as predicting at a copy of them
    torch.testing.assert_close(krr(x), krr(x.clone()), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(krr(x_test), learners.fit_predict("ntk-krr", x, target(x), x_test, settings))


def test_kernel_ridge_interpolates_with_zero_ridge():
    g = _gen(11)
    feats = torch.randn(6, 10, generator=g, dtype=DT)
    gram = feats @ feats.T
    y = torch.randn(6, generator=g, dtype=DT)
    torch.testing.assert_close(kernel_ridge(gram, y, gram, 0.0), y)
    shrunk = kernel_ridge(gram, y, gram, 1e3)
    assert shrunk.norm() < 0.5 * y.norm()


# ---------------------------------------------------------------------------------------------
# the sign-expectation loss

@pytest.mark.parametrize("order", [2, 3, "exact"])
def test_expected_loss_is_the_average_over_all_sign_patterns(order):
    """E_S (f - y)^2 from the moments == the mean over all 2^m patterns of the loss with those signs;
    so are its gradients in W."""
    torch.manual_seed(12)
    m, d = 6, 3
    net = tn.TaylorNet(d, m, 2, order=order, activation="softplus", sign_randomization=True, dtype=DT)
    with torch.no_grad():
        net.weight.normal_(0, 0.5)
    x = torch.randn(5, d, dtype=DT)
    y = torch.randn(5, 2, dtype=DT)
    patterns = torch.tensor(list(itertools.product((1.0, -1.0), repeat=m)), dtype=DT)

    def loss_with(signs):
        out = tn.taylor_net(x, net.weight0, net.weight, net.a, activation="softplus", order=order, signs=signs)
        return (out - y).pow(2).mean()

    average = torch.stack([loss_with(s) for s in patterns]).mean()
    (grad_average,) = torch.autograd.grad(average, net.weight)
    expected = net.expected_loss(x, y)
    (grad_expected,) = torch.autograd.grad(expected, net.weight)
    torch.testing.assert_close(expected, average, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_expected, grad_average, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# NoisySGD

def _quadratic_problem():
    torch.manual_seed(13)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(16, 4), torch.randn(16, 3)
    return model, lambda: (model(x) - y).pow(2).mean()


def _train(make_opt, steps=5):
    model, loss_fn = _quadratic_problem()
    opt = make_opt(model.parameters())
    for _ in range(steps):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_noisy_sgd_without_noise_is_sgd():
    ours = _train(lambda p: NoisySGD(p, lr=0.1, weight_decay=0.01))
    sgd = _train(lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.01))
    for a, b in zip(ours, sgd):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_noisy_sgd_noise_is_seeded_and_escapes_the_saddle():
    torch.manual_seed(14)
    first = _train(lambda p: NoisySGD(p, lr=0.1, noise_std=0.1))
    torch.manual_seed(14)
    again = _train(lambda p: NoisySGD(p, lr=0.1, noise_std=0.1))
    sgd = _train(lambda p: NoisySGD(p, lr=0.1))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.allclose(a, b) for a, b in zip(first, sgd))
    # W = 0 is a critical point of the sign-expectation loss: plain GD never moves, the noise does.
    torch.manual_seed(15)
    net = tn.TaylorNet(5, 64, order=2, sign_randomization=True, activation="softplus")
    x, y = torch.randn(32, 5), torch.randn(32, 1)
    for noise_std, moves in ((0.0, False), (1e-3, True)):
        with torch.no_grad():
            net.weight.zero_()
        opt = NoisySGD(net.parameters(), lr=1.0, noise_std=noise_std)
        for _ in range(3):
            opt.zero_grad()
            net.expected_loss(x, y).backward()
            opt.step()
        assert bool(net.weight.abs().max() > 0) == moves
    with pytest.raises(ValueError, match="noise_std"):
        NoisySGD(net.parameters(), lr=1.0, noise_std=-1.0)


# ---------------------------------------------------------------------------------------------
# threshold search and exponent fit

def test_threshold_search_interpolates_and_walks_both_ways():
    grid = sample_grid(2.0, 1024)
    assert grid == [4, 8, 16, 32, 64, 128, 256, 512, 1024]
    calls = []

    def error_at(n):
        calls.append(n)
        return 100.0 / n

    for start in (0, 7):
        calls.clear()
        n_star, hit = find_threshold(error_at, grid, start, target=1.0)
        assert grid[hit] == 128 and 64 < n_star < 128 and 64 in calls and 128 in calls
        assert n_star == pytest.approx(2 ** (6 + (100 / 64 - 1) / (100 / 64 - 100 / 128)))
    assert math.isnan(find_threshold(error_at, grid, 0, target=0.01)[0])
    assert find_threshold(error_at, grid, 3, target=100.0) == (4.0, 0)
    # a plateau above the target ends the walk after `patience` points without a 5% better error
    calls.clear()
    assert math.isnan(find_threshold(lambda n: calls.append(n) or 0.3, grid, 0, target=0.1, patience=2)[0])
    assert calls == [4, 8, 16]
    # but a stall before the learner is halfway to the target does not
    calls.clear()
    errors = {4: 1.2, 8: 1.3, 16: 1.25, 32: 1.3, 64: 0.05}
    assert find_threshold(lambda n: calls.append(n) or errors.get(n, 0.01), grid, 0, target=0.1, patience=2)[1] == 4
    # errors >= 1 (no better than predicting 0) skip every other point; the walk down fills in the miss
    assert calls == [4, 16, 64, 32]
    calls.clear()
    assert find_threshold(lambda n: calls.append(n) or 2.0, grid[:4], 0, target=0.1) == (math.nan, None)
    assert calls == [4, 16, 32]  # the last grid point is always tried


def test_harmonic_count():
    # in R^3 there are 2k + 1 harmonics of degree k
    assert harmonic_count(3, 4) == 1 + 5 + 9 and harmonic_count(3, 3) == 3 + 7
    # both parities together: the polynomials of degree <= p modulo |x|^2 - d
    for d, p in ((5, 4), (12, 4), (7, 3)):
        assert harmonic_count(d, p) + harmonic_count(d, p - 1) == math.comb(d + p, p) - math.comb(d + p - 2, p - 2)


def _thresholds(exponents, dims=(6, 8, 10, 12), scale=None):
    scale = scale or {}
    return {name: {d: scale.get(name, 1.0) * d**e for d in dims} for name, e in exponents.items()}


def test_verdict_has_the_form_of_each_claim():
    claims = claims_for(["ntk-krr", "quadratic-expected", "hierarchical", "full"], 4)
    assert claims == {"ntk-krr": ("lower", 4, 2), "quadratic-expected": ("upper", 3, 1),
                      "hierarchical": ("upper", 2, 0)}
    # lower bound for the NTK, upper bounds for the others: a fast quadratic model and a slow NTK pass
    held = _thresholds({"ntk-krr": 4.4, "quadratic-expected": 1.9, "hierarchical": 1.0, "full": 3.0})
    verdict, summary = judge(held, claims, 0.5, 0.1, 4, {})
    assert verdict.status == "HELD", verdict.reason
    assert summary["two_sided_within_tolerance"] == {"ntk-krr": True, "quadratic-expected": False,
                                                     "hierarchical": False}
    assert summary["exponents"]["ntk-krr"]["exponent"] == pytest.approx(4.4)
    assert summary["ordering"]["holds"] and summary["ordering"]["d"] == 12
    assert "two-sided" in verdict.reason and "pre-asymptotic" in verdict.reason
    assert summary["kernel_reference"]["harmonic_count"][12] == harmonic_count(12, 4)
    # an NTK exponent below p - tolerance fails its lower bound; a quadratic one above p - 1 + tolerance
    failed = _thresholds({"ntk-krr": 3.4, "quadratic-expected": 3.6, "hierarchical": 1.0},
                         scale={"quadratic-expected": 0.1})
    verdict, summary = judge(failed, claims, 0.5, 0.1, 4, {})
    assert verdict.status == "PARTLY HELD"
    assert summary["checks"] == {"ntk-krr: exponent >= 4 - 0.5": False,
                                 "quadratic-expected: exponent <= 3 + 0.5": False,
                                 "hierarchical: exponent <= 2 + 0.5": True, "ordering at d = 12": True}
    # the ordering at the largest d: the quadratic model needing more samples than the NTK fails it
    swapped = _thresholds({"ntk-krr": 4.0, "quadratic-expected": 3.0, "hierarchical": 2.0},
                          scale={"quadratic-expected": 20})
    verdict, summary = judge(swapped, claims, 0.5, 0.1, 4, {})
    assert summary["checks"]["ordering at d = 12"] is False and verdict.status == "PARTLY HELD"
    # a learner that missed the target has no exponent there: its check fails, and in the ordering it
    # needs more than the largest n tried
    missed = _thresholds({"ntk-krr": 4.0, "quadratic-expected": 3.0, "hierarchical": 2.0})
    missed["ntk-krr"][12] = math.nan
    verdict, summary = judge(missed, claims, 0.5, 0.1, 4, {"ntk-krr": 4096})
    assert summary["checks"]["ntk-krr: exponent >= 4 - 0.5"] is False
    assert summary["checks"]["ordering at d = 12"] is True and "ntk-krr >4096" in verdict.reason
    missed["quadratic-expected"][12] = math.nan
    verdict, summary = judge(missed, claims, 0.5, 0.1, 4, {"ntk-krr": 4096, "quadratic-expected": 4096})
    assert summary["checks"]["ordering at d = 12"] is False


def test_power_law_fit():
    slope, intercept = fit_power_law([2, 4, 8, float("nan")], [3 * 2**1.5, 3 * 4**1.5, 3 * 8**1.5, 1.0])
    assert slope == pytest.approx(1.5) and math.exp(intercept) == pytest.approx(3.0)
    assert math.isnan(fit_power_law([2], [1.0])[0])


# ---------------------------------------------------------------------------------------------
# smoke runs of the commands: files written, verdict line printed, CPU runs repeat exactly

SMOKE = {
    "taylorized": ["--width", "64", "--steps", "6", "--eval-every", "3", "--batch-size", "32",
                   "--sweep-widths", "32", "64", "--sweep-steps", "3", "--reference-widths",
                   "--synthetic-train", "64", "--synthetic-test", "32"],
    "sample-complexity": ["--dims", "4", "6", "--width", "64", "--steps", "20", "--test-samples", "64",
                          "--max-samples", "32", "--grid-ratio", "2", "--lbfgs-iters", "10"],
    "hierarchical": ["--dims", "3", "4", "--width", "64", "--steps", "20", "--test-samples", "64",
                     "--max-samples", "32", "--grid-ratio", "2", "--target-error", "0.5"],
}
STEMS = {"taylorized": ["taylorized", "taylorized_distances", "taylorized_width_sweep"],
         "sample-complexity": ["sample_complexity"],
         "hierarchical": ["hierarchical"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SMOKE))
def test_experiment_smoke_run(name, tmp_path, capsys):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["experiment", name, "--no-progress", "--seed", "3", "--out", str(out), *SMOKE[name]]) == 0
    printed = capsys.readouterr().out
    assert printed.count(f"verdict ({name}): ") == 2
    record = json.loads((outs[0] / f"{name}.json").read_text())
    assert record["verdict"]["status"] in ("HELD", "PARTLY HELD", "NOT HELD")
    assert record["verdict"]["line"] in printed and record["seed"] == 3
    csvs = [f for f in record["files"] if f.endswith(".csv")]
    assert csvs and all((outs[0] / f).stat().st_size > 0 for f in csvs)
    for stem in STEMS[name]:
        assert (outs[0] / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = json.loads((outs[1] / f"{name}.json").read_text())
    assert again["summary"] == record["summary"]
    for f in csvs:
        runs = [(out / f).read_text() for out in outs]
        if "seconds" not in runs[0].splitlines()[0]:
            assert runs[0] == runs[1], f


def test_interrupted_sweep_keeps_what_finished(tmp_path, monkeypatch, capsys):
    """Ctrl-C during a sweep: the evaluations that finished are in the CSV, the JSON and the verdict
    say the run is partial, and the command returns 130."""
    from taylornet.experiments import sample_complexity

    calls = []
    real_fit = sample_complexity.fit

    def fit_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(sample_complexity, "fit", fit_then_interrupt)
    out = tmp_path / "run"
    args = ["experiment", "sample-complexity", "--no-progress", "--out", str(out), "--learners", "ntk-krr",
            "--dims", "4", "6", "--width", "32", "--test-samples", "32", "--samples", "8", "16", "--repeats", "1"]
    assert main(args) == 130
    record = json.loads((out / "sample-complexity.json").read_text())
    assert record["summary"]["interrupted"] is True
    assert record["verdict"]["reason"].startswith("interrupted run, partial results")
    rows = (out / "sample-complexity_runs.csv").read_text().splitlines()
    assert rows[0].startswith("learner,d,n,test_error") and len(rows) == 1 + 2  # the two finished fits
    assert "interrupted" in capsys.readouterr().err


def test_interruptible_stops_on_ctrl_c_only():
    closed = []
    with Interruptible(lambda: closed.append(1)) as run:
        raise KeyboardInterrupt
    assert run.stopped and run.exit_code == 130 and closed == [1]
    verdict, summary = Verdict("HELD", "ok"), {}
    run.mark(verdict, summary)
    assert verdict.reason == "interrupted run, partial results: ok" and summary == {"interrupted": True}
    with Interruptible() as run:
        pass
    verdict, summary = Verdict("HELD", "ok"), {}
    run.mark(verdict, summary)
    assert not run.stopped and run.exit_code == 0 and verdict.reason == "ok" and summary == {}
    with pytest.raises(ValueError), Interruptible(lambda: closed.append(2)):
        raise ValueError("not an interruption")
    assert closed == [1, 2]


@pytest.mark.slow
def test_reference_costs_are_measured_and_extrapolated():
    """The width sweep's memory model of the autograd references: measured in fresh processes at two
    widths, growing with the width, and the prediction affine in m."""
    from taylornet.experiments import taylorized

    cfg = taylorized.TaylorizedConfig(tasks=("synthetic",), synthetic_train=64, synthetic_test=32, batch_size=32,
                                      sweep_orders=(1,), reference_widths=(64, 256))
    task = taylorized.make_task("synthetic", cfg, 0, torch.device("cpu"))
    bar = tqdm_disabled()
    costs = taylorized.reference_costs(task, cfg, torch.device("cpu"), bar)
    assert [m for m, _ in costs["eager"]["points"]] == [64, 256]
    assert [m for m, _ in costs["compiled"]["points"]] == [256]  # one compilation per shape: the widest only
    for impl in ("eager", "compiled"):
        assert costs[impl]["bytes_per_neuron"] > 0
    assert costs["eager"]["seconds_per_neuron"] > 0
    small, big = (taylorized._predicted_reference(costs, m, 2.0**40) for m in (2**10, 2**20))
    assert big["eager_predicted_bytes"] > small["eager_predicted_bytes"] and big["eager_fits"]
    assert not taylorized._predicted_reference(costs, 2**20, 1.0)["compiled_fits"]


def tqdm_disabled():
    from tqdm.auto import tqdm

    return tqdm(disable=True)


def test_taylor_coefficient_hermite():
    """c_2 = exp(z) / 2 has Hermite coefficients e^(1/2) / (2 j!); odd activations' even ones vanish."""
    from taylornet.experiments.features import taylor_coefficient_hermite

    got = taylor_coefficient_hermite("exp", 2, 4)
    want = [math.exp(0.5) / (2 * math.factorial(j)) for j in range(5)]
    assert got == pytest.approx(want, rel=1e-10)
    assert taylor_coefficient_hermite("tanh", 2, 2)[::2] == pytest.approx([0, 0], abs=1e-12)
    softplus = taylor_coefficient_hermite("softplus", 2, 2)
    assert softplus[0] > 0 and softplus[2] < 0 and abs(softplus[2] / softplus[0]) < 0.2


def test_taylorized_width_sweep_alone(tmp_path, capsys):
    """--steps 0 runs only the width sweep: one row per width with both orders' distances, a
    median step time and the measured peak, the slopes in the summary."""
    out = tmp_path / "sweep"
    args = ["experiment", "taylorized", "--no-progress", "--out", str(out), "--steps", "0", "--tasks", "synthetic",
            "--synthetic-train", "64", "--synthetic-test", "32", "--batch-size", "32", "--sweep-widths", "16", "64",
            "--sweep-steps", "3", "--reference-widths"]
    assert main(args) == 0
    record = json.loads((out / "taylorized.json").read_text())
    assert record["summary"]["final_distance_to_full"] == {}
    sweep = record["summary"]["width_sweep"]
    assert sweep["widths"] == [16, 64] and sweep["order1"]["theory_slope"] == -0.5
    assert sweep["order2"]["theory_slope"] == -1.0 and len(sweep["order2"]["distance_to_full"]) == 2
    rows = (out / "taylorized_width_sweep.csv").read_text().splitlines()
    assert rows[0].startswith("width,distance_order1,cosine_order1,distance_order2") and len(rows) == 3
    assert "width sweep (distance to the full network after 3 steps)" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["ntk-krr", "ntk-gd", "quadratic-expected", "hierarchical"])
def test_fit_reports_its_steps(name):
    """``on_step`` is called once per optimizer step: the noisy SGD steps exactly, about the L-BFGS
    iterations (at most its evaluation limit), never for kernel ridge regression."""
    g = torch.Generator().manual_seed(0)
    x = sample_sphere(24, 5, g)
    settings = learners.LearnerSettings(width=16, steps=7, lbfgs_iters=5, feature_width=6)
    calls = []
    learners.fit(name, x, x[:, 0] * x[:, 1], settings, on_step=lambda: calls.append(1))
    expected = learners.fit_steps(name, settings)
    if name == "ntk-gd":
        assert 1 <= len(calls) <= expected * 5 // 4 + 1  # L-BFGS' max_eval default is 1.25 max_iter
    else:
        assert len(calls) == expected == {"ntk-krr": 0}.get(name, 7)


def test_reference_memory_is_extrapolated_upwards_only():
    """Below the narrowest measured width the affine fit is not used (its intercept may be
    negative): no prediction, and the reference fits."""
    from taylornet.experiments import taylorized

    costs = {"eager": {"points": [(1024, 1e7), (4096, 6e7)], "fixed_bytes": -8e6, "bytes_per_neuron": 1.6e4,
                       "seconds_per_neuron": 1e-6},
             "compiled": {"points": [(4096, 2e7)], "fixed_bytes": 0.0, "bytes_per_neuron": 4e3},
             "model_bytes_per_neuron": 2e3}
    small = taylorized._predicted_reference(costs, 256, 2.0**30)
    assert math.isnan(small["eager_predicted_bytes"]) and small["eager_fits"]
    assert math.isnan(small["compiled_predicted_bytes"]) and small["compiled_fits"]
    mid = taylorized._predicted_reference(costs, 2048, 2.0**30)
    assert mid["eager_predicted_bytes"] == -8e6 + 1.8e4 * 2048 and math.isnan(mid["compiled_predicted_bytes"])
    big = taylorized._predicted_reference(costs, 2**20, 2.0**30)
    assert not big["eager_fits"] and big["compiled_fits"] == (6e3 * 2**20 <= 2.0**30)
