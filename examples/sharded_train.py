"""Width-sharded training of a sign-randomized quadratic Taylor model, one process per device.

    torchrun --nproc_per_node=2 examples/sharded_train.py                    # CPUs: gloo
    torchrun --nproc_per_node=8 examples/sharded_train.py --width 2**27 --dim 256 --batch 4096
                                                                             # GPUs: NCCL, one per rank

Every rank holds width/world contiguous neurons (taylornet.distributed.ShardedTaylorNet) and sees
the same batch: the ranks split the neurons, not the data. The forward all-reduces the (batch, out)
partial readouts, the backward keeps dW local (x needs no gradient here), and Adam updates each
rank's shard. The model, the signs and hence the whole run are the ones a single process would
produce with the same seed (``--check`` gathers the model and verifies it on every rank).

The task (as in ``taylornet demo``): y = (b1.x)^2 - (b2.x)^2 with orthonormal b1, b2 and x uniform on
the sphere of radius sqrt(d), a quadratic target that the sign-randomized order-2 model (no linear,
NTK term in expectation) is built for; fresh samples every step, so the training loss tracks the
test loss.
"""
from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

import taylornet as tn
from taylornet.distributed import ShardedTaylorNet
from taylornet.experiments.data import sample_sphere


def _int(text: str) -> int:
    """An int, also written as a power such as 2**20."""
    if "**" in text:
        base, exp = text.split("**")
        return int(base) ** int(exp)
    return int(text)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=_int, default=2**14, help="global number of neurons m (default 2**14)")
    p.add_argument("--dim", type=int, default=16, help="input dimension d")
    p.add_argument("--order", type=int, default=2)
    p.add_argument("--activation", default="gelu", choices=tn.ACTIVATIONS,
                   help="default gelu: with tanh and no bias the model is odd in x and cannot fit this even target")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--log-every", type=int, default=40)
    p.add_argument("--checkpoint", default=None, help="directory for the sharded checkpoint (one file per rank)")
    p.add_argument("--check", action="store_true",
                   help="gather the trained model to one process and check it reproduces the sharded one")
    return p.parse_args()


def batch(generator: torch.Generator, n: int, beta: torch.Tensor):
    x = sample_sphere(n, beta.shape[1], generator)
    p = x @ beta.T
    return x, (p[:, 0] ** 2 - p[:, 1] ** 2)[:, None]


def main() -> int:
    args = parse_args()
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dtype = getattr(torch, args.dtype)

    # Same seed on every rank: the init seed and the per-step sign seeds are also broadcast from
    # rank 0 (sync_seeds=True), so this only has to make the data identical.
    torch.manual_seed(args.seed)
    model = ShardedTaylorNet(args.dim, args.width, activation=args.activation, order=args.order,
                             sign_randomization=True, device=device, dtype=dtype)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(args.seed + 1)
    beta = torch.linalg.qr(torch.randn(args.dim, 2, generator=data))[0].T  # (2, d), orthonormal rows
    x_test, y_test = batch(torch.Generator().manual_seed(args.seed + 2), 2048, beta)
    x_test, y_test = x_test.to(device, dtype), y_test.to(device, dtype)

    shard_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values() if isinstance(t, torch.Tensor))
    if rank == 0:
        print(f"world {world} ({backend}), width {args.width} = {world} x ~{model.local_width} neurons, "
              f"d {args.dim}, order {args.order}, {args.dtype}; shard {shard_bytes / 2**20:.1f} MiB "
              f"+ Adam {2 * model.weight.numel() * model.weight.element_size() / 2**20:.1f} MiB per rank",
              flush=True)

    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        x, y = batch(data, args.batch, beta)
        x, y = x.to(device, dtype), y.to(device, dtype)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x), y)  # fresh neuron signs every step
        loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                test = model.expected_loss(x_test, y_test)  # exact sign-averaged test loss
            model.train()
            if rank == 0:
                print(f"step {step:5d}  train loss {loss.item():.4f}  expected test loss {test.item():.4f}  "
                      f"({time.perf_counter() - start:.1f} s)", flush=True)

    if args.checkpoint:
        os.makedirs(args.checkpoint, exist_ok=True)
        path = os.path.join(args.checkpoint, f"rank{rank}-of-{world}.pt")
        torch.save(model.state_dict(), path)
        dist.barrier()
        if rank == 0:
            print(f"saved the sharded checkpoint to {args.checkpoint}/rank*-of-{world}.pt", flush=True)

    if args.check:
        model.eval()
        single = model.to_taylornet()  # collective: every rank gets the whole model
        with torch.no_grad():
            sharded_out, single_out = model(x_test), single(x_test)
        err = (sharded_out - single_out).abs().max().item()
        tol = 1e-4 if dtype == torch.float32 else (1e-10 if dtype == torch.float64 else 5e-2)
        ok = torch.tensor([err <= tol * max(1.0, single_out.abs().max().item())], dtype=torch.int32, device=device)
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)  # every rank checked its copy
        if rank == 0:
            print(f"check: the gathered single-process TaylorNet reproduces the sharded model "
                  f"(max |diff| {err:.2e}): {'ok' if ok.item() else 'FAILED'}", flush=True)
        if not ok.item():
            dist.barrier()
            dist.destroy_process_group()
            return 1
    dist.barrier()  # let every rank finish its collectives before the group goes away
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
