"""What is benchmarked: operations, cases (one shape/dtype/configuration each), grids and presets.

A ``Case`` is plain data (JSON-serializable through ``Case.to_dict``), so the memory worker
subprocess rebuilds exactly the same case from the command line.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from ..activations import parse_order as _parse_order

# op key -> (function family, backward?, label). "moments_fb" is available but not in the default grid.
OPS = {
    "features": ("features", False, "features fwd"),
    "features_fb": ("features", True, "features fwd+bwd"),
    "net": ("net", False, "net fwd"),
    "net_fb": ("net", True, "net fwd+bwd"),
    "moments": ("moments", False, "moments fwd"),
    "moments_fb": ("moments", True, "moments fwd+bwd"),
}
DEFAULT_OPS = ("features", "features_fb", "net", "net_fb", "moments")

# The implementations compared: the fused ops, and the pure-autograd reference eager and compiled.
IMPLS = ("taylornet", "eager", "compiled")
BASELINES = ("eager", "compiled")
CEILING = "matmul"  # the matrix-multiply ceiling, a pseudo-implementation in the results

GRAD_TARGETS = ("w", "x", "w0", "a")

SHORT_DTYPE = {"float32": "f32", "float64": "f64", "bfloat16": "bf16", "float16": "f16"}


@dataclass(frozen=True)
class Case:
    op: str                      # a key of OPS
    n: int                       # samples
    d: int                       # input dimension
    m: int                       # width (neurons)
    order: int | str             # K (orders 0..K) or "exact"
    activation: str
    dtype: str                   # "float32", "bfloat16", ...
    device: str                  # "cpu" or "cuda"
    outputs: int = 1             # c: readout rows (net, moments); a is (m,) when c = 1
    grad_wrt: tuple = ("w",)     # backward ops: inputs that require grad (the training setting: w)
    bias: bool = False           # pass b0 and b
    signs: bool = False          # pass a fixed (m,) tensor of random signs

    @property
    def family(self) -> str:
        return OPS[self.op][0]

    @property
    def backward(self) -> bool:
        return OPS[self.op][1]

    @property
    def op_label(self) -> str:
        return OPS[self.op][2]

    @property
    def order_label(self) -> str:
        return "exact" if self.order == "exact" else f"K={self.order}"

    def label(self) -> str:
        """One readable line, e.g. 'net fwd+bwd  n=2048 d=32 m=16384  K=2 tanh float32 cpu'."""
        extra = []
        if self.backward and tuple(self.grad_wrt) != ("w",):
            extra.append("grad " + ",".join(self.grad_wrt))
        if self.outputs != 1 and self.family != "features":
            extra.append(f"c={self.outputs}")
        if self.bias:
            extra.append("bias")
        if self.signs:
            extra.append("signs")
        tail = ("  " + " ".join(extra)) if extra else ""
        return (f"{self.op_label}  n={self.n} d={self.d} m={self.m}  {self.order_label} {self.activation} "
                f"{self.dtype} {self.device}{tail}")

    def slug(self) -> str:
        """A compact id for test names and file names."""
        parts = [self.op, f"n{self.n}", f"d{self.d}", f"m{self.m}",
                 "exact" if self.order == "exact" else f"k{self.order}", self.activation,
                 SHORT_DTYPE.get(self.dtype, self.dtype), self.device]
        if self.backward and tuple(self.grad_wrt) != ("w",):
            parts.append("g" + "+".join(self.grad_wrt))
        if self.outputs != 1 and self.family != "features":
            parts.append(f"c{self.outputs}")
        if self.bias:
            parts.append("bias")
        if self.signs:
            parts.append("signs")
        return "-".join(parts)

    def series_key(self) -> tuple:
        """Everything but the width: the cases of one line in a plot or of one memory extrapolation."""
        return tuple(v for k, v in dataclasses.asdict(self).items() if k != "m")

    def with_width(self, m: int) -> Case:
        """The same case at width ``m``."""
        return dataclasses.replace(self, m=int(m))

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["grad_wrt"] = list(self.grad_wrt)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Case:
        data = dict(data)
        data["grad_wrt"] = tuple(data.get("grad_wrt", ("w",)))
        return cls(**data)


def parse_order(text) -> int | str:
    """An order from the command line: an int K or "exact", checked by the package's order parser."""
    order = text
    if isinstance(text, str) and text != "exact":
        try:
            order = int(text)
        except ValueError:
            raise ValueError(f"order: expected an int >= 0 or 'exact', got {text!r}") from None
    _parse_order(order)
    return order


def parse_width(text) -> int:
    """'16384', '2^14', '2**14' or '16k' -> int."""
    if isinstance(text, int):
        return text
    s = str(text).strip().lower()
    for sep in ("^", "**"):
        if sep in s:
            base, exp = s.split(sep, 1)
            return int(base) ** int(exp)
    if s.endswith("k"):
        return int(s[:-1]) * 1024
    if s.endswith("m"):
        return int(s[:-1]) * 1024 * 1024
    return int(s)


def width_range(min_width: int, max_width: int, step: int) -> list[int]:
    """min_width, min_width * step, ... up to max_width (inclusive when it lands on it)."""
    if min_width < 1 or max_width < min_width or step < 2:
        raise ValueError(f"widths: need 1 <= min <= max and step >= 2, got {min_width}, {max_width}, {step}")
    out, m = [], min_width
    while m <= max_width:
        out.append(m)
        m *= step
    return out


def build_grid(*, ops, ns, dims, widths, orders, activations, dtypes, device, outputs=1,
               grad_wrt=("w",), bias=False, signs=False) -> list[Case]:
    """The cross product, ordered so that each (op, d, order, activation, dtype) line runs through
    its widths from small to large (the memory extrapolation then sees the small widths first)."""
    cases = []
    for op, dtype, activation, order, d, n in itertools.product(ops, dtypes, activations, orders, dims, ns):
        if op not in OPS:
            raise ValueError(f"op: expected one of {', '.join(OPS)}, got {op!r}")
        wrt = tuple(g for g in grad_wrt if not (g == "a" and OPS[op][0] == "features")) or ("w",)
        for m in sorted(widths):
            cases.append(Case(op=op, n=n, d=d, m=m, order=order, activation=activation, dtype=dtype,
                              device=device, outputs=outputs, grad_wrt=wrt, bias=bias, signs=signs))
    return cases


# ---- presets: named settings; explicit command-line options override them ----------------------

PRESETS = {
    # The core case: TaylorNet forward+backward at n=2048, d=32, m=16384 on CPU, against eager and
    # compiled.
    "core": dict(device="cpu", ops=["net_fb"], n=[2048], dims=[32], widths=[16384], orders=["2"],
                 activations=["tanh"], dtypes=["float32"]),
    # The CUDA target, float32 and bf16, plus a sweep for the widest m each implementation fits.
    "cuda-target": dict(device="cuda", ops=["net_fb"], n=[16384], dims=[128], widths=[262144],
                        orders=["2"], activations=["tanh"], dtypes=["bfloat16", "float32"],
                        width_sweep=True),
    # --quick: every op once or twice, small enough for a 2-core CPU in well under 3 minutes.
    "quick": dict(ops=list(DEFAULT_OPS), n=[1024], dims=[64], widths=[1024, 4096], orders=["2"],
                  activations=["tanh"], dtypes=None, repeats=5, warmup=1, min_time=0.02,
                  max_seconds=4.0),
}


def default_dtypes(device: str) -> list[str]:
    return ["float32", "bfloat16"] if device == "cuda" else ["float32"]


def default_settings(device: str) -> dict:
    """The full grid for ``device``: every default op x d in 16, 64, 256 x widths 2^10 ... x orders 1, 2,
    4, exact x tanh, gelu."""
    cuda = device == "cuda"
    return dict(
        device=device,
        ops=list(DEFAULT_OPS),
        n=[16384 if cuda else 2048],
        dims=[16, 64, 256],
        # From 2^10 up to what the device allows: cases whose predicted peak memory exceeds the
        # budget are skipped per implementation, so the fused path goes on where the baselines stop.
        widths=None,
        min_width=1024,
        max_width=(1 << 22) if cuda else (1 << 16),
        width_step=4,
        orders=["1", "2", "4", "exact"],
        activations=["tanh", "gelu"],
        dtypes=default_dtypes(device),
        repeats=10,
        warmup=2,
        min_time=0.05,
        max_seconds=30.0,
        width_sweep=False,
    )


def base_settings(device: str | None = None, *, quick: bool = False, preset: str | None = None) -> dict:
    """The device's full grid, then the quick grid, then the preset (later ones win)."""
    chosen = dict(PRESETS[preset]) if preset else {}
    device = device or chosen.get("device") or "cpu"
    s = default_settings(device)
    if quick:
        s.update({k: v for k, v in PRESETS["quick"].items() if v is not None})
    if device != chosen.get("device", device):  # a preset made for another device: its dtypes may not apply
        chosen.pop("dtypes", None)
    s.update({k: v for k, v in chosen.items() if v is not None})
    s["device"] = device
    return s


def normalize(s: dict) -> dict:
    """Parse the list-valued settings (strings from the command line) in place; returns ``s``."""
    s["n"] = [int(v) for v in s["n"]]
    s["dims"] = [int(v) for v in s["dims"]]
    s["orders"] = [parse_order(v) for v in s["orders"]]
    if s.get("widths"):
        s["widths"] = sorted({parse_width(v) for v in s["widths"]})
    else:
        s["widths"] = width_range(s["min_width"], s["max_width"], s["width_step"])
    bad = [o for o in s["ops"] if o not in OPS]
    if bad:
        raise ValueError(f"ops: unknown {', '.join(bad)} (expected {', '.join(OPS)})")
    return s


def grid(s: dict) -> list[Case]:
    """The cases of normalized settings ``s``."""
    return build_grid(ops=s["ops"], ns=s["n"], dims=s["dims"], widths=s["widths"], orders=s["orders"],
                      activations=s["activations"], dtypes=s["dtypes"], device=s["device"],
                      outputs=s.get("outputs", 1), grad_wrt=tuple(s.get("grad_wrt", ("w",))),
                      bias=s.get("bias", False), signs=s.get("signs", False))
