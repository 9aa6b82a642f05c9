"""The benchmark tool: a smoke run of the CLI on one tiny case, and its small pure pieces, with the
timing, progress and result helpers it shares with the experiments."""
import csv
import json
import math
import sys

import pytest

from taylornet.bench import budget, cli
from taylornet.bench.cases import Case, parse_order, parse_width, width_range
from taylornet.bench.flops import MatmulCeiling, gemms, model_flops
from taylornet.utils import results, timing


def _case(op="net_fb", **kw):
    base = dict(op=op, n=64, d=8, m=256, order=2, activation="tanh", dtype="float32", device="cpu")
    base.update(kw)
    return Case(**base)


@pytest.mark.slow
def test_cli_smoke_writes_json_csv_png(tmp_path):
    argv = ["--ops", "net_fb", "--n", "64", "--dims", "8", "--widths", "256", "512", "--orders", "2",
            "--activations", "tanh", "--repeats", "1", "--warmup", "1", "--min-time", "0", "--no-compile",
            "--out", str(tmp_path), "--tag", "smoke", "--no-progress", "--threads", "1"]
    assert cli.main(argv) == 0
    doc = json.loads((tmp_path / "smoke.json").read_text())
    assert doc["status"] == "complete"
    assert doc["settings"]["impls"] == ["taylornet", "eager"]
    assert "torch" in doc["software"] and "env" in doc["allocator"] and "torch_threads" in doc["allocator"]
    rows = {(r["m"], r["impl"]): r for r in doc["results"]}
    assert set(rows) == {(m, i) for m in (256, 512) for i in ("taylornet", "eager", "matmul")}
    for (m, impl), r in rows.items():
        assert r["status"] == "ok", r
        assert r["median_s"] > 0 and r["flops"] == model_flops(_case(m=m))
        if impl != "matmul":
            assert r["peak_bytes"] is not None and r["total_bytes"] >= r["input_bytes"]
    fused = rows[(512, "taylornet")]
    assert fused["check"] == "ok" and fused["speedup_vs_eager"] > 0
    with open(tmp_path / "smoke.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {"median_s", "speedup_vs_eager", "setting_threads"} <= set(table[0])
    pytest.importorskip("matplotlib")
    for kind in ("speedup", "time", "memory"):
        png = tmp_path / f"smoke_{kind}_float32_tanh.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_runs_without_tqdm_and_numpy(tmp_path, monkeypatch, capsys):
    # GPU machines may have torch alone: the benchmark must still run and report.
    for mod in ("tqdm", "tqdm.auto", "numpy"):
        monkeypatch.setitem(sys.modules, mod, None)
    argv = ["--ops", "net", "--n", "32", "--dims", "4", "--widths", "64", "--orders", "1", "--activations", "tanh",
            "--repeats", "1", "--warmup", "1", "--min-time", "0", "--no-compile", "--memory", "none", "--no-plots",
            "--out", str(tmp_path), "--tag", "bare", "--threads", "1"]
    assert cli.main(argv) == 0
    doc = json.loads((tmp_path / "bare.json").read_text())
    assert doc["status"] == "complete" and doc["software"]["numpy"] is None
    assert "n=32 d=4 m=64" in capsys.readouterr().out  # the per-case table


def test_flop_model_counts_the_matrix_products():
    n, d, m = 64, 8, 256
    assert model_flops(_case("features")) == 4 * n * m * d
    assert model_flops(_case("net")) == 4 * n * m * d + 2 * n * m
    assert model_flops(_case("moments", outputs=3)) == 4 * n * m * d + 4 * n * m * 3
    # forward 4nmd + 2nmc; backward: recompute 4nmd, g 2nmc, dW 2nmd
    assert model_flops(_case("net_fb")) == 10 * n * m * d + 4 * n * m
    # also dX (4nmd) and dW0 (2nmd)
    assert model_flops(_case("net_fb", grad_wrt=("w", "x", "w0"))) == 16 * n * m * d + 4 * n * m
    assert model_flops(_case("features_fb")) == 10 * n * m * d


def test_matmul_ceiling_runs_the_model_gemms_and_splits_wide_cases():
    case = _case("net_fb", m=4096)
    mm = MatmulCeiling(case, max_bytes=float("inf"))
    mm()
    assert mm.chunks == 1 and len(mm.gemms) == len(gemms(case))
    small = MatmulCeiling(case, max_bytes=mm.nbytes / 3)
    assert small.chunks == 4 and small.flops == mm.flops


def test_summary_statistics():
    s = timing.summarize([3.0, 1.0, 2.0, 4.0, 100.0])
    assert s["median_s"] == 3.0 and s["q25_s"] == 2.0 and s["q75_s"] == 4.0
    assert s["iqr_rel"] == pytest.approx(2 / 3) and s["samples"] == 5
    assert timing.calibrate(0.001, 0.05) == 50 and timing.calibrate(1.0, 0.05) == 1
    assert timing.repeats_within(10.0, 10, 30.0) == 3 and timing.repeats_within(0.1, 10, 30.0) == 10


def test_budget_width_extrapolates_and_interpolates():
    pts = [(1024, 100 + 1024 * 10), (4096, 100 + 4096 * 10)]
    a, b = budget.fit_affine(pts)
    assert a == pytest.approx(100) and b == pytest.approx(10)
    got = budget.budget_width(pts, 100 + 10 * 100_000)
    assert got["how"] == "extrapolated" and got["width"] == pytest.approx(100_000)
    got = budget.budget_width(pts, 20_000)
    assert got["how"] == "measured" and 1024 < got["width"] < 4096
    assert budget.predict(pts, 8192) >= 100 + 8192 * 10


def test_width_and_order_parsing():
    assert parse_width("2^14") == 16384 and parse_width("16k") == 16384 and parse_width("300") == 300
    assert width_range(1024, 65536, 4) == [1024, 4096, 16384, 65536]
    assert math.isclose(len(width_range(2**10, 2**22, 2)), 13)
    assert parse_order("2") == 2 and parse_order("exact") == "exact"
    for bad in ("-1", "two", "17"):  # the package's order rules
        with pytest.raises(ValueError, match="^order: "):
            parse_order(bad)


def test_timing_interleaves_and_drops_a_failing_callable():
    calls = []

    def ok():
        calls.append("ok")

    def fails():
        raise RuntimeError("boom")

    errors = {}
    samples = timing.interleaved({"ok": ok, "fails": fails}, {"ok": 2, "fails": 1}, {"ok": 3, "fails": 3},
                                 on_error=lambda name, exc: errors.setdefault(name, str(exc)))
    assert len(samples["ok"]) == 3 and all(t >= 0 for t in samples["ok"]) and samples["fails"] == []
    assert calls == ["ok"] * 6 and errors == {"fails": "boom"}
    with pytest.raises(RuntimeError, match="boom"):
        timing.interleaved({"fails": fails}, {"fails": 1}, {"fails": 1})
    assert timing.median_time(ok, repeats=3, warmup=2) >= 0 and len(calls) == 11


def test_result_files_are_valid_json_and_csv(tmp_path):
    doc = {"nan": math.nan, "inf": -math.inf, "path": tmp_path, "nested": {"t": (1, 2)}}
    results.write_json(tmp_path / "r.json", doc)
    assert json.loads((tmp_path / "r.json").read_text()) == {"nan": None, "inf": None, "path": str(tmp_path),
                                                             "nested": {"t": [1, 2]}}
    results.write_csv(tmp_path / "r.csv", [{"a": 1, "l": [1, "x"], "d": {"skip": 1}}, {"b": 2}], first=("b",))
    with open(tmp_path / "r.csv") as f:
        assert list(csv.DictReader(f)) == [{"b": "", "a": "1", "l": "1+x"}, {"b": "2", "a": "", "l": ""}]
    info = results.machine_info("cpu")
    assert info["device"] == "cpu" and info["cpu_count"] >= 1


def test_cpu_peak_measures_resident_bytes():
    """The CPU method reads what a call really touches: one fresh 32 MiB tensor reads as 32 MiB."""
    import torch

    from taylornet.bench.memory import cpu_peak_here

    numel = 8 * 2**20

    def call():
        return torch.empty(numel).fill_(1.0)

    call()
    res = cpu_peak_here(call)
    assert res["method"] in ("vmhwm-reset", "vmhwm")
    if res["method"] == "vmhwm-reset":
        assert 0.95 <= res["peak_bytes"] / (4 * numel) <= 1.1


@pytest.mark.parametrize("argv0", ["/somewhere/bin/taylornet", "/somewhere/taylornet/__main__.py"])
def test_hugepages_restart_runs_the_same_command(monkeypatch, argv0):
    """--hugepages re-executes the benchmark with the glibc tunable, through the interpreter, whether
    it was started as the console script or as `python -m taylornet`."""
    from taylornet.bench import hugepages

    calls = []
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    monkeypatch.setattr(sys, "argv", [argv0, "bench", "--preset", "core", "--hugepages"])
    monkeypatch.setattr(hugepages.os, "execve", lambda prog, args, env: calls.append((prog, args, env)))
    hugepages.reexec_with_hugepages()
    (prog, args, env), = calls
    assert prog == sys.executable and args == [sys.executable, "-P", "-m", "taylornet", "bench", "--preset", "core",
                                               "--hugepages"]
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])
    hugepages.reexec_with_hugepages()  # already set: returns
    assert len(calls) == 1


def test_gpu_check_fits_its_time_budget():
    """bench/gpu_check.sh parses, and its steps' time limits sum to at most 480 s (a device run is
    cut at 600 s, start-up and transfers included)."""
    import re
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    limits = [int(s) for s in re.findall(r"^\s*timeout (\d+) ", script.read_text(), flags=re.M)]
    assert len(limits) >= 7 and sum(limits) <= 480, limits


@pytest.mark.parametrize("name", ["wide", "deep"])
def test_training_models_compute_the_same_step(name):
    """The training benchmark's fused model and its reference twin hold the same parameters and give
    the same loss and gradients on a batch; the plain network has the same layer shapes."""
    import torch
    from torch import nn

    from taylornet.bench import training

    fused, ref, plain = training.build(name)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, training.MODELS[name][0][0], generator=g)
    y = torch.randint(0, training.CLASSES, (64,), generator=g)
    grads = []
    for model in (fused, ref):
        loss = nn.functional.cross_entropy(model(x), y)
        grads.append((loss, torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])))
    (lf, gf), (lr, gr) = grads
    torch.testing.assert_close(lf, lr, rtol=1e-5, atol=1e-6)
    assert len(gf) == len(gr) == 2 * len(training.MODELS[name]) + 2
    for a, b in zip(gf, gr):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    shapes = [tuple(p.shape) for p in fused.parameters() if p.requires_grad]
    assert shapes == [tuple(p.shape) for p in plain.parameters()]
    assert plain(x).shape == (64, training.CLASSES)
