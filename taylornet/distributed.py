"""Width sharding over torch.distributed: ``ShardedTaylorNet``, the two-layer Taylor model with its
neurons split over the ranks of a process group.

Rank i of W holds the contiguous neurons [lo, hi) = [i*m//W, (i+1)*m//W): its rows of ``weight0``,
``weight``, ``bias0``, ``bias`` and its columns of the readout ``a``. The readout f = scale * A h is a
sum over neurons, so each rank computes its partial sum with the fused op and

    forward:   f = all_reduce(partial f)                 (one n x c all-reduce)
    backward:  dW, db, dA stay local (they only involve the rank's neurons);
               dX = all_reduce(partial dX)                (only when x requires a gradient)

Every rank computes the same loss from the same f, so the backward of the forward all-reduce is the
identity, and the replicated x gets the sum of the ranks' partial dX (the Megatron-LM "reduce from /
copy to the model-parallel region" pair). Both are small ``torch.autograd.Function``s around
``torch.distributed.all_reduce``: ``torch.distributed.nn.functional.all_reduce`` would all-reduce the
gradient in the backward as well, which assumes a different loss on every rank and here would
multiply every gradient by the world size.

Same numbers as the unsharded ``TaylorNet`` for the same seed, for any world size:

- initialization: one 64-bit init seed drawn from torch's default generator keys a counter-based
  (Philox) generator of the global neuron index (``taylornet.modules.taylor_net_init``); each rank
  generates only its own neurons.
- neuron signs: the kernels draw neuron r's sign from (seed, offset, global index), and each rank
  passes its first global neuron, so the slices together have exactly the unsharded layer's signs.
- seeds: every rank draws the init seed and each training forward's (seed, offset) from its own
  default generator (so each rank's generator advances exactly as in a single-process run), and with
  ``sync_seeds=True`` (the default) all ranks then use rank 0's draws, broadcast. So a sharded run
  seeded like a single-process run on rank 0 reproduces it even when the other ranks' generators
  differ (seeded per rank for data order, say). ``sync_seeds=False`` skips the 16-byte broadcast
  (with NCCL, a device-to-host copy each step) and relies on every rank's default generator being in
  the same state: ``torch.manual_seed(s)`` on all ranks and the same random draws everywhere.

Checkpoints: ``state_dict()`` is the rank's shard (the TaylorNet key names, sliced) plus the shard
geometry, checked on load; ``full_state_dict()`` / ``to_taylornet()`` gather a single-process model;
``load_full_state_dict`` / ``from_taylornet`` shard one.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .modules import TaylorNet, draw_sign_seed

__all__ = ["ShardedTaylorNet", "shard_range"]

# Tensors of a TaylorNet state dict and the dimension that runs over neurons.
_NEURON_DIM = {"weight0": 0, "weight": 0, "bias0": 0, "bias": 0, "a": 1}


def shard_range(width: int, world_size: int, rank: int) -> tuple[int, int]:
    """Neurons [lo, hi) of ``rank``: contiguous, sizes differing by at most one."""
    return rank * width // world_size, (rank + 1) * width // world_size


class _ReduceFromShards(torch.autograd.Function):
    """Forward: the sum over ranks of the partial readouts. Backward: identity (the loss is replicated,
    so d loss / d partial_i = d loss / d f on every rank)."""

    @staticmethod
    def forward(ctx, partial, group):
        out = partial.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _CopyToShards(torch.autograd.Function):
    """Forward: identity (x is replicated on every rank). Backward: the sum over ranks of the partial
    dX, each computed from the rank's neurons."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class ShardedTaylorNet(TaylorNet):
    r""":class:`~taylornet.TaylorNet` with its ``width`` neurons sharded over the ranks of ``process_group``.

    The model, its forward, :meth:`moments`, :meth:`expected_loss` and :meth:`ntk` are TaylorNet's;
    each rank holds its neurons and the partial readouts are summed over the ranks. The output, the
    loss and every gradient equal the unsharded model's for the same seed (to float rounding: the
    neuron sum is split). torch.distributed must be initialized (NCCL on GPUs, gloo on CPUs).

    Args:
        in_features, width, out_features: as in TaylorNet (``width`` is the global width).
        process_group: the ranks to shard over (default: the world).
        sync_seeds: use rank 0's seeds on every rank (one 16-byte broadcast per training forward);
            False relies on every rank's default generator being in the same state.
        **kwargs: TaylorNet's keyword arguments (activation, order, sign_randomization,
            symmetric_init, train_readout, scale, bias, eval_signs, device, dtype).

    Shape:
        - Input: :math:`(*, H_{in})`, the same on every rank
        - Output: :math:`(*, c)`, the same on every rank

    Attributes:
        lo, hi: this rank's neurons [lo, hi) of the global width.
        weight0, weight: :math:`(hi - lo, H_{in})`; a: :math:`(c, hi - lo)`; bias0, bias:
            :math:`(hi - lo,)`: TaylorNet's tensors, this rank's slice.

    Example::

        >>> # under torchrun, after torch.distributed.init_process_group("gloo")
        >>> _ = torch.manual_seed(0)
        >>> model = taylornet.ShardedTaylorNet(32, width=2**20, order=2, sign_randomization=True)
        >>> model(torch.randn(64, 32)).shape
        torch.Size([64, 1])
    """

    def __init__(self, in_features: int, width: int, out_features: int = 1, *,
                 process_group: dist.ProcessGroup | None = None, sync_seeds: bool = True, **kwargs) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "ShardedTaylorNet: torch.distributed is not initialized; call "
                "torch.distributed.init_process_group first (e.g. under torchrun)"
            )
        # TaylorNet.__init__ calls the sharding hooks below, which need the group: plain attributes,
        # which nn.Module allows before its own __init__.
        self.process_group = process_group
        self.sync_seeds = bool(sync_seeds)
        self.world_size = dist.get_world_size(process_group)
        self.rank = dist.get_rank(process_group)
        super().__init__(in_features, width, out_features, **kwargs)

    @property
    def local_width(self) -> int:
        """Neurons held by this rank."""
        return self.hi - self.lo

    # ---- the sharding hooks of TaylorNet ---------------------------------------------------------

    def _neuron_range(self) -> tuple[int, int]:
        if self.width < self.world_size:
            raise ValueError(f"width: every rank needs a neuron, got width {self.width} for {self.world_size} ranks")
        return shard_range(self.width, self.world_size, self.rank)

    def _comm_device(self) -> torch.device:
        backend = str(dist.get_backend(self.process_group)).lower()
        if "gloo" in backend or not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())

    def _src(self) -> int:
        group = self.process_group
        return 0 if group is None or group is dist.group.WORLD else dist.get_global_rank(group, 0)

    def _agree(self, value):
        """Rank 0's ``value`` (an int, or an int64 tensor) on every rank, if ``sync_seeds``."""
        if not self.sync_seeds or self.world_size == 1:
            return value
        as_int = not isinstance(value, Tensor)
        t = torch.tensor([value], dtype=torch.int64, device="cpu") if as_int else value
        t = t.to(self._comm_device())
        dist.broadcast(t, src=self._src(), group=self.process_group)
        return int(t.item()) if as_int else t.cpu()

    def _sign_seed(self) -> Tensor | None:
        """(seed, offset, first global neuron) while training with sign randomization; None otherwise."""
        if not (self.sign_randomization and self.training):
            return None
        seed = self._agree(draw_sign_seed())
        return torch.cat([seed, torch.tensor([self.lo], dtype=torch.int64, device="cpu")])

    def _reduce(self, partial: Tensor) -> Tensor:
        return _ReduceFromShards.apply(partial, self.process_group)

    def _reduce_pair(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        both = self._reduce(torch.stack([mean, var]))  # one all-reduce for both
        return both[0], both[1]

    def _args(self, x: Tensor) -> tuple:
        if torch.is_grad_enabled() and x.requires_grad:
            x = _CopyToShards.apply(x, self.process_group)  # dX is all-reduced only in this case
        return super()._args(x)

    # ---- checkpoints --------------------------------------------------------------------------

    def _geometry(self) -> dict:
        return {"width": self.width, "world_size": self.world_size, "rank": self.rank, "lo": self.lo,
                "hi": self.hi, "in_features": self.in_features, "out_features": self.out_features}

    def get_extra_state(self) -> dict:
        return {**self._geometry(), "init_seed": self.init_seed}

    def set_extra_state(self, state: dict) -> None:
        mine = self._geometry()
        theirs = {k: state.get(k) for k in ("width", "lo", "hi", "in_features", "out_features")}
        if any(theirs[k] != mine[k] for k in theirs):
            raise ValueError(
                f"ShardedTaylorNet.load_state_dict: the checkpoint holds neurons [{theirs['lo']}, "
                f"{theirs['hi']}) of width {theirs['width']} (rank {state.get('rank')} of "
                f"{state.get('world_size')}), this rank holds [{self.lo}, {self.hi}) of width {self.width}; "
                "load the shard saved by the same rank and world size, or use load_full_state_dict"
            )
        self.init_seed = state.get("init_seed", self.init_seed)

    def full_state_dict(self) -> dict:
        """The unsharded TaylorNet state dict, gathered on every rank (collective: call on all ranks).
        Holds the whole model in each rank's memory."""
        sizes = [hi - lo for lo, hi in (shard_range(self.width, self.world_size, r) for r in range(self.world_size))]
        longest = max(sizes)
        device = self._comm_device()
        out = {}
        for name, t in self.state_dict().items():
            if name not in _NEURON_DIM or t is None:
                continue
            dim = _NEURON_DIM[name]
            local = t.detach().movedim(dim, 0)
            padded = local.new_zeros((longest, *local.shape[1:]), device=device)
            padded[: local.shape[0]] = local
            pieces = [torch.empty_like(padded) for _ in range(self.world_size)]
            dist.all_gather(pieces, padded, group=self.process_group)
            full = torch.cat([p[:s] for p, s in zip(pieces, sizes)])
            out[name] = full.movedim(0, dim).contiguous().to(t.device)
        return out

    def to_taylornet(self) -> TaylorNet:
        """A single-process TaylorNet with this model's weights (collective: call on all ranks). Does not
        touch the default generator."""
        state = self.full_state_dict()
        with torch.random.fork_rng(devices=[]):
            model = TaylorNet(self.in_features, self.width, self.out_features, **self._config(),
                              device="meta", dtype=self.weight.dtype)
        model.load_state_dict(state, assign=True)
        model.init_seed = self.init_seed
        return model.train(self.training)

    def load_full_state_dict(self, state_dict: dict, *, assign: bool = False):
        """Loads this rank's slice of an unsharded TaylorNet state dict (no communication)."""
        sliced = {}
        for name, t in state_dict.items():
            if name in _NEURON_DIM and t is not None:
                t = t.narrow(_NEURON_DIM[name], self.lo, self.local_width)
            sliced[name] = t.clone() if assign and isinstance(t, Tensor) else t
        sliced["_extra_state"] = self.get_extra_state()
        return self.load_state_dict(sliced, assign=assign)

    @classmethod
    def from_taylornet(cls, model: TaylorNet, *, process_group: dist.ProcessGroup | None = None,
                       sync_seeds: bool = True) -> ShardedTaylorNet:
        """Shards a single-process TaylorNet (present on every rank) over ``process_group``."""
        with torch.random.fork_rng(devices=[]):
            sharded = cls(model.in_features, model.width, model.out_features, **model._config(), device="meta",
                          dtype=model.weight.dtype, process_group=process_group, sync_seeds=sync_seeds)
        sharded.init_seed = model.init_seed
        state = {k: v.to(model.weight.device) for k, v in model.state_dict().items()}
        sharded.load_full_state_dict(state, assign=True)
        return sharded.train(model.training)

    def extra_repr(self) -> str:
        return (super().extra_repr()
                + f", neurons=[{self.lo}, {self.hi}) on rank {self.rank} of {self.world_size}")
