"""Cost of taylornet.taylorize against the fused two-layer path, by Taylor order K.

    PYTHONPATH=. python -P bench/bench_taylorize.py                      # defaults below, 1 thread
    PYTHONPATH=. python -P bench/bench_taylorize.py --n 512 --m 8192 --orders 1 2 3 4 6 --threads 2

The same two-layer network f(x) = scale * a . tanh((W0 + W) x), expanded to order K in the first-layer
movement W (the readout fixed), computed four ways, forward and forward + backward (dW):

    fused      tn.TaylorNet: the C++ op (closed-form coefficients, no n x m tensor kept)
    reference  tn.reference.taylor_net: closed-form coefficients in plain PyTorch autograd
    taylor     tn.taylorize(net, K): Taylor-mode series through the traced ATen graph
    jvp        tn.taylorize(net, K, method="jvp"): nested forward-mode AD, 2^K evaluations

Prints a markdown table of median milliseconds (and the ratio to fused); --json writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import platform

import torch
from torch import nn

import taylornet as tn
from taylornet.utils.timing import median_time as timed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=256, help="samples")
    p.add_argument("--d", type=int, default=32, help="input dimension")
    p.add_argument("--m", type=int, default=4096, help="width")
    p.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--max-jvp-order", type=int, default=5, help="skip nested jvp beyond this order")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the measurements here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    n, d, m = args.n, args.d, args.m

    torch.manual_seed(0)
    x = torch.randn(n, d)
    rows = []
    for K in args.orders:
        fused = tn.TaylorNet(d, m, activation="tanh", order=K)
        with torch.no_grad():
            fused.weight.normal_(0, 0.3 / d**0.5)
        net = nn.Sequential(nn.Linear(d, m, bias=False), nn.Tanh(), nn.Linear(m, 1, bias=False))
        with torch.no_grad():
            net[0].weight.copy_(fused.weight0)
            net[2].weight.copy_(fused.scale * fused.a)
        net[2].weight.requires_grad_(False)
        models = {"taylor": tn.taylorize(net, K), "jvp": tn.taylorize(net, K, method="jvp")}
        for model in models.values():
            with torch.no_grad():
                model.movement()["0.weight"].copy_(fused.weight)
        w = fused.weight.detach().clone().requires_grad_(True)

        def run_reference():
            return tn.reference.taylor_net(x, fused.weight0, w, fused.a, activation="tanh", order=K, scale=fused.scale)

        calls = {"fused": lambda: fused(x), "reference": run_reference,
                 "taylor": lambda: models["taylor"](x), "jvp": lambda: models["jvp"](x)}
        params = {"fused": fused.weight, "reference": w, "taylor": models["taylor"].movement()["0.weight"],
                  "jvp": models["jvp"].movement()["0.weight"]}
        check = calls["fused"]().detach()
        row = {"K": K}
        for name, call in calls.items():
            if name == "jvp" and K > args.max_jvp_order:
                continue
            err = (call().detach().reshape(check.shape) - check).abs().max().item()
            assert err < 1e-3, f"{name} K={K}: outputs differ by {err}"

            def fwd_bwd(call=call, param=params[name]):
                param.grad = None
                call().sum().backward()

            with torch.no_grad():
                row[f"{name}_fwd"] = timed(call, args.repeats)
            row[f"{name}_fwd_bwd"] = timed(fwd_bwd, args.repeats)
        rows.append(row)
        print(f"K={K}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row.items() if k != "K"), flush=True)

    names = ["fused", "reference", "taylor", "jvp"]
    print(f"\nn={n}, d={d}, m={m}, float32, tanh, {args.threads} thread(s), torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}; median of {args.repeats}, milliseconds "
          "(x: ratio to fused)\n")
    print("| K | " + " | ".join(f"{k} fwd | {k} fwd+bwd" for k in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for row in rows:
        cells = []
        for k in names:
            for what in ("fwd", "fwd_bwd"):
                v = row.get(f"{k}_{what}")
                base = row[f"fused_{what}"]
                if v is None:
                    cells.append("—")
                else:
                    cells.append(f"{v * 1e3:.1f}" if k == "fused" else f"{v * 1e3:.1f} ({v / base:.0f}x)")
        print(f"| {row['K']} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": n, "d": d, "m": m, "threads": args.threads, "torch": torch.__version__, "rows": rows}, f,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
