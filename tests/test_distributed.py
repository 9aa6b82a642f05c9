"""ShardedTaylorNet over 2 and 3 gloo processes on loopback against a single-process TaylorNet: the
initialization (direct, and on the meta device then reset_parameters), forward, loss, every gradient,
a few SGD steps with sign randomization, the eval-mode moments and NTK, the collectives issued,
sharded state_dict save/load and gathering to one process.

Each test spawns its processes (torch.multiprocessing) and compares, in every process, the shard
with the same slice of a TaylorNet built there from the same seed. Everything in float64 but one
float32 configuration."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import taylornet as tn
from taylornet.distributed import ShardedTaylorNet, shard_range

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _close(a, b, dtype):
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-6}
    torch.testing.assert_close(a, b, **tol)


class _Counter:
    """Counts torch.distributed.all_reduce calls (the module calls it through torch.distributed)."""

    def __init__(self):
        self.calls = 0

    def __enter__(self):
        self.original = dist.all_reduce

        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        dist.all_reduce = counted
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self.original


CONFIGS = {
    # odd shard sizes, a shard straddling the symmetric halves, biases, a trained readout, 3 outputs
    "f64": dict(in_features=5, width=22, out_features=3, activation="tanh", order=3, bias=True,
                train_readout=True, symmetric_init=True, dtype=torch.float64),
    "f32": dict(in_features=7, width=40, out_features=1, activation="gelu", order="exact", bias=False,
                train_readout=False, symmetric_init=False, dtype=torch.float32),
}


def _models(cfg, seed, **extra):
    """(the single-process TaylorNet, the sharded model), both from torch.manual_seed(seed) on rank 0.
    With the seeds broadcast (the default) the other ranks are seeded differently on purpose."""
    torch.manual_seed(seed)
    ref = tn.TaylorNet(**cfg, sign_randomization=True)
    rank = dist.get_rank()
    torch.manual_seed(seed if rank == 0 or extra.get("sync_seeds") is False else seed + 1000 + rank)
    sharded = ShardedTaylorNet(**cfg, sign_randomization=True, **extra)
    return ref, sharded


def _slice(name, t, lo, hi):
    return t[:, lo:hi] if name == "a" else t[lo:hi]


def _check_shard(ref, sharded, lo, hi, dtype, exact=False):
    ref_state, shard_state = ref.state_dict(), sharded.state_dict()
    for name, t in ref_state.items():
        expected = _slice(name, t, lo, hi)
        if exact:
            assert torch.equal(shard_state[name], expected), name
        else:
            _close(shard_state[name], expected, dtype)


def _perturb(ref, sharded, lo, hi):
    """Same random movement (and biases) in both models, so that every gradient is non-trivial."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            getattr(sharded, name).copy_(_slice(name, p, lo, hi))


def _worker(rank, world, port, tmpdir):
    if os.path.isdir("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for key, cfg in CONFIGS.items():
            _check_config(key, cfg, rank, world, tmpdir)
        _check_local_seeds(rank, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _check_config(key, cfg, rank, world, tmpdir):
    dtype = cfg["dtype"]
    lo, hi = shard_range(cfg["width"], world, rank)
    ref, sharded = _models(cfg, seed=0)
    assert (sharded.lo, sharded.hi) == (lo, hi)
    # Initialization: the shard is the single-process model's slice, bit for bit.
    _check_shard(ref, sharded, lo, hi, dtype, exact=True)
    # The same built on the meta device, then to_empty and reset_parameters.
    torch.manual_seed(0 if rank == 0 else 1000 + rank)
    with torch.device("meta"):
        meta = ShardedTaylorNet(**cfg, sign_randomization=True)
    assert meta.weight0.is_meta
    meta.to_empty(device="cpu")
    meta.reset_parameters()
    _check_shard(ref, meta, lo, hi, dtype, exact=True)
    _perturb(ref, sharded, lo, hi)

    gx = torch.Generator().manual_seed(11)
    x = torch.randn(9, cfg["in_features"], generator=gx, dtype=dtype)
    y = torch.randn(9, cfg["out_features"], generator=gx, dtype=dtype)

    # Forward, loss and gradients with fresh neuron signs. Rank 0 is seeded like the single process,
    # the others differently: the seeds are broadcast from rank 0.
    xr, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    torch.manual_seed(1)
    out_ref = ref(xr)
    loss_ref = torch.nn.functional.mse_loss(out_ref, y)
    loss_ref.backward()
    torch.manual_seed(1 if rank == 0 else 1000 + rank)
    with _Counter() as count:
        out = sharded(xs)
        assert count.calls == 1  # the readout
        loss = torch.nn.functional.mse_loss(out, y)
        loss.backward()
        assert count.calls == 2  # + dX, as x requires a gradient
    _close(out, out_ref, dtype)
    _close(loss, loss_ref, dtype)
    _close(xs.grad, xr.grad, dtype)
    for name, p in ref.named_parameters():
        _close(getattr(sharded, name).grad, _slice(name, p.grad, lo, hi), dtype)

    # x without a gradient: no all-reduce in the backward.
    ref.zero_grad(), sharded.zero_grad()
    with _Counter() as count:
        torch.manual_seed(2)
        sharded(x).square().sum().backward()
        assert count.calls == 1
    torch.manual_seed(2)
    ref(x).square().sum().backward()
    for name, p in ref.named_parameters():
        _close(getattr(sharded, name).grad, _slice(name, p.grad, lo, hi), dtype)

    # Three SGD steps with sign randomization.
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
    opt = torch.optim.SGD(sharded.parameters(), lr=0.5)
    for step in range(3):
        for model, optimizer in ((ref, opt_ref), (sharded, opt)):
            torch.manual_seed(100 + step)
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            if model is ref:
                loss_ref = loss.detach()
        _close(loss.detach(), loss_ref, dtype)
    _check_shard(ref, sharded, lo, hi, dtype)

    # Eval mode: the sign expectation (moments, one all-reduce) and the exact expected loss.
    ref.eval(), sharded.eval()
    with torch.no_grad():
        _close(sharded(x), ref(x), dtype)
        for a, b in zip(sharded.moments(x), ref.moments(x)):
            _close(a, b, dtype)
        _close(sharded.expected_loss(x, y), ref.expected_loss(x, y), dtype)
        _close(sharded.ntk(x), ref.ntk(x), dtype)  # a sum over neurons: one all-reduce
    ref.train(), sharded.train()

    # Sharded state_dict save / load into a differently initialized model.
    path = os.path.join(tmpdir, f"{key}-{world}-rank{rank}.pt")
    torch.save(sharded.state_dict(), path)
    dist.barrier()
    torch.manual_seed(12345)
    other = ShardedTaylorNet(**cfg, sign_randomization=True)
    assert not torch.equal(other.weight0, sharded.weight0)
    other.load_state_dict(torch.load(path, weights_only=True))
    for name, t in sharded.state_dict().items():
        if name != "_extra_state":
            assert torch.equal(other.state_dict()[name], t), name
    torch.manual_seed(3)
    out_other = other(x)
    torch.manual_seed(3)
    _close(out_other, sharded(x), dtype)
    if world > 1:  # another rank's shard is refused
        wrong = os.path.join(tmpdir, f"{key}-{world}-rank{(rank + 1) % world}.pt")
        with pytest.raises(ValueError, match="neurons"):
            other.load_state_dict(torch.load(wrong, weights_only=True))

    # Gather to a single-process TaylorNet (without touching the default generator), and back.
    rng = torch.get_rng_state()
    gathered = sharded.to_taylornet()
    assert torch.equal(torch.get_rng_state(), rng)
    assert isinstance(gathered, tn.TaylorNet)
    assert set(gathered.state_dict()) == set(ref.state_dict())
    for name, t in ref.state_dict().items():
        _close(gathered.state_dict()[name], t, dtype)
    torch.manual_seed(4)
    out_g = gathered(x)
    torch.manual_seed(4)
    _close(out_g, ref(x), dtype)
    back = ShardedTaylorNet.from_taylornet(gathered)
    _check_shard(gathered, back, lo, hi, dtype, exact=True)
    torch.manual_seed(5)
    out_back = back(x)
    torch.manual_seed(5)
    _close(out_back, gathered(x), dtype)
    dist.barrier()


def _check_local_seeds(rank, world):
    """sync_seeds=False: no broadcast; identical seeding on every rank gives the same model."""
    cfg = dict(CONFIGS["f64"], train_readout=False)
    ref, sharded = _models(cfg, seed=21, sync_seeds=False)
    lo, hi = shard_range(cfg["width"], world, rank)
    _check_shard(ref, sharded, lo, hi, torch.float64, exact=True)
    _perturb(ref, sharded, lo, hi)
    x = torch.randn(4, cfg["in_features"], dtype=torch.float64)
    dist.broadcast(x, src=0)
    torch.manual_seed(6)
    out = sharded(x)
    torch.manual_seed(6)
    _close(out, ref(x), torch.float64)


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 3])
def test_sharded_matches_single_process(world, tmp_path):
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)


def test_shard_range_partitions():
    for width in (1, 2, 7, 22, 1000):
        for world in range(1, min(width, 9) + 1):
            ranges = [shard_range(width, world, r) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == width
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
            sizes = [hi - lo for lo, hi in ranges]
            assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


def test_requires_initialized_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    with pytest.raises(RuntimeError, match="init_process_group"):
        ShardedTaylorNet(4, 8)
