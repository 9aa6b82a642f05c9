"""Bad arguments give clear Python exceptions that name the argument, both through the public API
and through direct calls of the compiled ops (which must raise, never crash), of the same type either
way: TypeError for a dtype or an argument of the wrong kind, ValueError for a wrong value or shape.

The compiled ops check dtypes, devices and shapes once for both paths; their messages start with
"taylornet: " and the argument's name, those of the Python layer with the name."""
from __future__ import annotations

import math

import pytest
import torch

import taylornet as tn

F32, F64 = torch.float32, torch.float64
n, d, m, c = 4, 3, 6, 2


def problem(dtype=F64):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return {"x": r(n, d), "w0": r(m, d), "w": r(m, d), "a": r(c, m), "b0": r(m), "b": r(m)}


def call(fn_name, **overrides):
    """Call tn.<fn_name> on a valid problem with some arguments replaced."""
    p = problem()
    kw = {}
    for k, v in overrides.items():
        if k in p:
            p[k] = v
        else:
            kw[k] = v
    if fn_name == "taylor_features":
        return tn.taylor_features(p["x"], p["w0"], p["w"], p["b0"], p["b"], **kw)
    if fn_name == "taylor_net":
        return tn.taylor_net(p["x"], p["w0"], p["w"], p["a"], p["b0"], p["b"], **kw)
    return tn.taylor_net_moments(p["x"], p["w0"], p["w"], p["a"], p["b0"], p["b"], **kw)


ALL = ["taylor_features", "taylor_net", "taylor_net_moments"]
NET = ["taylor_net", "taylor_net_moments"]
SIGNED = ["taylor_features", "taylor_net"]

_valid = problem()

# (functions, overrides, exception, message regex)
CASES = [
    # shapes
    (ALL, {"x": torch.randn(n, d + 1, dtype=F64)}, ValueError, r"^x: .*last dimension d = 3"),
    (ALL, {"x": torch.tensor(1.0, dtype=F64)}, ValueError, r"^x: .*at least 1 dimension"),
    (ALL, {"w0": torch.randn(m, d + 1, dtype=F64)}, ValueError, r"^w0: expected shape \[6, 3\], got \[6, 4\]"),
    (ALL, {"w0": torch.randn(m + 1, d, dtype=F64)}, ValueError, r"^w0: expected shape"),
    (ALL, {"w": torch.randn(m * d, dtype=F64)}, ValueError, r"^w: expected a 2-D tensor"),
    (ALL, {"w": torch.randn(0, d, dtype=F64), "w0": torch.randn(0, d, dtype=F64)}, ValueError, r"^w: .*m >= 1"),
    (ALL, {"b0": torch.randn(m + 1, dtype=F64)}, ValueError, r"^b0: expected shape \[6\], got \[7\]"),
    (ALL, {"b": torch.randn(m, 1, dtype=F64)}, ValueError, r"^b: expected shape \[6\], got \[6, 1\]"),
    (NET, {"a": torch.randn(m + 1, dtype=F64)}, ValueError, r"^a: expected shape \(m,\) = \(6,\) or \(c, 6\)"),
    (NET, {"a": torch.randn(c, m + 1, dtype=F64)}, ValueError, r"^a: expected shape \(c, 6\), got \[2, 7\]"),
    (NET, {"a": torch.randn(1, c, m, dtype=F64)}, ValueError, r"^a: expected shape"),
    (NET, {"a": torch.randn(m, c, dtype=F64)}, ValueError, r"^a: expected shape"),
    # dtypes
    (ALL, {"x": _valid["x"].float()}, TypeError, r"^w0?: expected dtype torch.float32 \(the dtype of x\)"),
    (ALL, {"w": _valid["w"].float()}, TypeError, r"^w: expected dtype torch.float64"),
    (ALL, {"b0": _valid["b0"].float()}, TypeError, r"^b0: expected dtype torch.float64"),
    (ALL, {"b": _valid["b"].float()}, TypeError, r"^b: expected dtype torch.float64"),
    (NET, {"a": _valid["a"].float()}, TypeError, r"^a: expected dtype torch.float64"),
    (ALL, {"x": torch.ones(n, d, dtype=torch.int64)}, TypeError, r"^x: expected a floating-point tensor.*int64"),
    (ALL, {"x": torch.ones(n, d, dtype=torch.bool)}, TypeError, r"^x: expected a floating-point tensor.*bool"),
    (ALL, {"x": torch.ones(n, d, dtype=torch.complex128)}, TypeError, r"^x: expected a floating-point tensor"),
    (ALL, {"x": torch.ones(n, d, dtype=torch.float16)}, TypeError,
     r"^x: expected dtype float32, float64 on cpu, got torch.float16"),
    (ALL, {"x": torch.ones(n, d, dtype=torch.bfloat16)}, TypeError, r"^x: expected dtype float32, float64"),
    (ALL, {"w0": torch.ones(m, d, dtype=torch.int32)}, TypeError,
     r"^w0: expected dtype torch.float64 .*got torch.int32"),
    (ALL, {"w": torch.ones(m, d, dtype=torch.bool)}, TypeError, r"^w: expected dtype torch.float64 .*got torch.bool"),
    (ALL, {"b": torch.ones(m, dtype=torch.complex128)}, TypeError, r"^b: expected dtype torch.float64"),
    (NET, {"a": torch.ones(c, m, dtype=torch.int64)}, TypeError, r"^a: expected dtype torch.float64"),
    (ALL, {"x": [[1.0] * d] * n}, TypeError, r"^x: expected a torch.Tensor, got list"),
    (ALL, {"w": 1.0}, TypeError, r"^w: expected a torch.Tensor, got float"),
    # activation
    (ALL, {"activation": "leaky_relu"}, ValueError,
     r"^activation: expected one of tanh, sigmoid, softplus, gelu, silu, sin, cos, exp, erf, relu, relu2, relu3, "
     r"got 'leaky_relu'"),
    (ALL, {"activation": "Tanh"}, ValueError, r"^activation: expected one of"),
    (ALL, {"activation": None}, ValueError, r"^activation: expected one of"),
    (ALL, {"activation": torch.tanh}, ValueError, r"^activation: expected one of"),
    # orders
    (ALL, {"order": -1}, ValueError, r"^order: expected a non-negative int, got -1"),
    (ALL, {"order": (0, -2)}, ValueError, r"^order: orders must be non-negative"),
    (ALL, {"order": (1, 2, 1)}, ValueError, r"^order: orders must be distinct"),
    (ALL, {"order": 17}, ValueError, r"^order: orders up to 16 are supported, got 17"),
    (ALL, {"order": (3, 17)}, ValueError, r"^order: orders up to 16"),
    (ALL, {"order": ()}, ValueError, r"^order: expected at least one order"),
    (ALL, {"order": []}, ValueError, r"^order: expected at least one order"),
    (ALL, {"order": 2.0}, TypeError, r"^order: expected an int"),
    (ALL, {"order": (1, 2.0)}, TypeError, r"^order: every order must be an int"),
    (ALL, {"order": (1, "2")}, TypeError, r"^order: every order must be an int"),
    (ALL, {"order": True}, TypeError, r"^order: expected an int"),
    (ALL, {"order": (True, 2)}, TypeError, r"^order: every order must be an int"),
    (ALL, {"order": "full"}, ValueError, r"^order: expected .*'exact'"),
    (ALL, {"order": None}, TypeError, r"^order: expected an int"),
    (ALL, {"order": {1, 2}}, TypeError, r"^order: expected an int"),
    (ALL, {"activation": "relu", "order": 2}, ValueError,
     r"^order: relu has no derivatives of order >= 2 \(they vanish almost everywhere.*relu2, relu3 or softplus"),
    (ALL, {"activation": "relu", "order": (0, 3)}, ValueError, r"^order: relu has no derivatives of order >= 2"),
    # signs
    (SIGNED, {"signs": torch.tensor([1.0, -1.0, 1.0, 1.0, 0.5, -1.0], dtype=F64)}, ValueError,
     r"^signs: expected every entry to be \+1 or -1"),
    (SIGNED, {"signs": torch.tensor([1.0, -1.0, 1.0, 1.0, 0.0, -1.0], dtype=F64)}, ValueError, r"^signs: .*\+1 or -1"),
    (SIGNED, {"signs": torch.tensor([1.0, -1.0, 1.0, 1.0, math.nan, -1.0], dtype=F64)}, ValueError,
     r"^signs: .*\+1 or -1"),
    (SIGNED, {"signs": torch.ones(m + 1, dtype=F64)}, ValueError,
     r"^signs: expected shape \(m,\) = \(6,\), got \(7,\)"),
    (SIGNED, {"signs": torch.ones(1, m, dtype=F64)}, ValueError, r"^signs: expected shape"),
    (SIGNED, {"signs": torch.ones(m, dtype=torch.bool)}, TypeError, r"^signs: expected a real tensor"),
    (SIGNED, {"signs": torch.ones(m, dtype=torch.complex64)}, TypeError, r"^signs: expected a real tensor"),
    (SIGNED, {"signs": [1.0] * m}, TypeError, r"^signs: expected None or a tensor"),
    (SIGNED, {"signs": torch.ones(m, dtype=F64), "sign_seed": 3}, ValueError,
     r"^signs / sign_seed: pass at most one of them"),
    # sign seeds
    (SIGNED, {"sign_seed": 1.5}, TypeError,
     r"^sign_seed: expected an int, a \(seed, offset\[, first neuron\]\) tuple or an int64 tensor, got 1.5"),
    (SIGNED, {"sign_seed": "7"}, TypeError, r"^sign_seed: expected an int"),
    (SIGNED, {"sign_seed": True}, TypeError, r"^sign_seed: expected an int"),
    (SIGNED, {"sign_seed": (1, 2, 3, 4)}, TypeError, r"^sign_seed: expected an int"),
    (SIGNED, {"sign_seed": (1,)}, TypeError, r"^sign_seed: expected an int"),
    (SIGNED, {"sign_seed": (1, 2.0)}, TypeError, r"^sign_seed: expected an int"),
    (SIGNED, {"sign_seed": (1, False)}, TypeError, r"^sign_seed: expected an int"),
    (SIGNED, {"sign_seed": (1, 2, -1)}, ValueError, r"^sign_seed: the first neuron index must be >= 0, got -1"),
    (SIGNED, {"sign_seed": torch.tensor([1, 2], dtype=torch.int32)}, ValueError,
     r"^sign_seed: expected an int64 tensor \(seed, offset\[, first neuron\]\) of 2 or 3 elements, got torch.int32"),
    (SIGNED, {"sign_seed": torch.tensor([1, 2, 3, 4])}, ValueError, r"^sign_seed: expected an int64 tensor"),
    (SIGNED, {"sign_seed": torch.tensor([1])}, ValueError, r"^sign_seed: expected an int64 tensor"),
    (SIGNED, {"sign_seed": torch.tensor([1.0, 2.0])}, ValueError, r"^sign_seed: expected an int64 tensor"),
    (SIGNED, {"sign_seed": torch.tensor([1, 2, -3])}, (ValueError, RuntimeError), r"first neuron index must be >= 0"),
    # scale
    (NET, {"scale": 0.0}, ValueError, r"^scale: expected a finite positive number, got 0.0"),
    (NET, {"scale": -1.0}, ValueError, r"^scale: expected a finite positive number"),
    (NET, {"scale": math.inf}, ValueError, r"^scale: expected a finite positive number, got inf"),
    (NET, {"scale": math.nan}, ValueError, r"^scale: expected a finite positive number, got nan"),
    (NET, {"scale": True}, TypeError, r"^scale: expected a positive real number or None, got True"),
    (NET, {"scale": "1"}, TypeError, r"^scale: expected a positive real number"),
    (NET, {"scale": torch.tensor([1.0, 2.0])}, TypeError, r"^scale: expected a positive real number"),
    (NET, {"scale": 1 + 2j}, TypeError, r"^scale: expected a positive real number"),
]

PARAMS = [(fn, over, exc, msg) for fns, over, exc, msg in CASES for fn in fns]


def _id(case):
    fn, over, _, _ = case
    parts = []
    for k, v in over.items():
        if isinstance(v, torch.Tensor):
            v = f"{str(v.dtype).replace('torch.', '')}{list(v.shape)}"
        parts.append(f"{k}={v!r}"[:40])
    return f"{fn}-{','.join(parts)}"


def _from_either_layer(match: str) -> str:
    """The message regex, anchored after the compiled ops' "taylornet: " prefix when there is one."""
    return "^(taylornet: )?" + match[1:] if match.startswith("^") else match


@pytest.mark.parametrize("fn,overrides,exc,match", PARAMS, ids=[_id(c) for c in PARAMS])
def test_bad_arguments_raise_clear_errors(fn, overrides, exc, match):
    with pytest.raises(exc, match=_from_either_layer(match)) as info:
        call(fn, **overrides)
    assert type(info.value) in (exc if isinstance(exc, tuple) else (exc,)), type(info.value)


def test_unsupported_orders_list_the_supported_activations():
    with pytest.raises(ValueError) as info:
        tn.taylor_net(*problem().values(), activation="swish")
    for name in tn.ACTIVATIONS:
        assert name in str(info.value)


def test_valid_arguments_pass():
    """The error cases above differ from a valid call only in the named argument."""
    for fn in ALL:
        call(fn)
        call(fn, order=(0, 16), activation="tanh")
        call(fn, activation="relu", order=(0, 1))
    for fn in SIGNED:
        call(fn, signs=torch.tensor([1, -1, 1, 1, -1, -1], dtype=torch.int64))
        call(fn, signs=torch.ones(m, dtype=F32))
        call(fn, sign_seed=(2**64 + 5, -(2**70)))
        call(fn, sign_seed=torch.tensor([[1, 2]]))
    for fn in NET:
        call(fn, scale=2)
        call(fn, scale=1e-30)


@pytest.mark.parametrize("bad,match", [(-1, r"^m: expected a non-negative int"), (2.0, r"^m: "), (True, r"^m: ")])
def test_philox_signs_bad_width(bad, match):
    with pytest.raises(ValueError, match=match):
        tn.philox_signs(bad, 3)


@pytest.mark.parametrize("seed,exc", [(None, ValueError), (1.0, TypeError), ((1, 2, 3, 4), TypeError),
                                      ((1, 2, -5), ValueError),
                                      (torch.tensor([1, 2], dtype=torch.int16), ValueError)])
def test_philox_signs_bad_seed(seed, exc):
    with pytest.raises(exc, match=r"^sign_seed: "):
        tn.philox_signs(10, seed)


# ---------------------------------------------------------------------------------------------
# Modules

@pytest.mark.parametrize("kwargs,exc,match", [
    ({"in_features": 3, "width": 7}, ValueError, r"^width: symmetric_init pairs neurons, so width must be even, got 7"),
    ({"in_features": 3, "width": 0, "symmetric_init": False}, ValueError, r"^width: expected an int >= 1"),
    ({"in_features": 0, "width": 4}, ValueError, r"^in_features: expected an int >= 1"),
    ({"in_features": 3.0, "width": 4}, ValueError, r"^in_features: "),
    ({"in_features": 3, "width": 4, "out_features": 0}, ValueError, r"^out_features: expected an int >= 1"),
    ({"in_features": 3, "width": 4, "eval_signs": "mean"}, ValueError,
     r"^eval_signs: expected one of expectation, none, got 'mean'"),
    ({"in_features": 3, "width": 4, "activation": "elu"}, ValueError, r"^activation: expected one of"),
    ({"in_features": 3, "width": 4, "activation": "relu", "order": 2}, ValueError, r"^order: relu has no"),
    ({"in_features": 3, "width": 4, "order": -1}, ValueError, r"^order: "),
    ({"in_features": 3, "width": 4, "scale": 0.0}, ValueError, r"^scale: "),
    ({"in_features": 3, "width": 4, "scale": math.nan}, ValueError, r"^scale: "),
])
def test_taylor_net_bad_arguments(kwargs, exc, match):
    kwargs = dict(kwargs)
    args = (kwargs.pop("in_features"), kwargs.pop("width"))
    with pytest.raises(exc, match=match):
        tn.TaylorNet(*args, **kwargs)


def test_taylor_net_odd_width_without_symmetric_init_is_fine():
    assert tn.TaylorNet(3, 7, symmetric_init=False).weight0.shape == (7, 3)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"in_features": 0, "out_features": 4}, ValueError, r"^in_features: "),
    ({"in_features": 3, "out_features": -2}, ValueError, r"^out_features: "),
    ({"in_features": 3, "out_features": 4, "eval_signs": "sample"}, ValueError, r"^eval_signs: expected one of"),
    ({"in_features": 3, "out_features": 4, "order": (1, 1)}, ValueError, r"^order: orders must be distinct"),
    ({"in_features": 3, "out_features": 4, "activation": "relu", "order": 3}, ValueError, r"^order: relu"),
])
def test_taylor_linear_bad_arguments(kwargs, exc, match):
    kwargs = dict(kwargs)
    args = (kwargs.pop("in_features"), kwargs.pop("out_features"))
    with pytest.raises(exc, match=match):
        tn.TaylorLinear(*args, **kwargs)


def test_module_forward_with_bad_input():
    net = tn.TaylorNet(3, 4)
    with pytest.raises(ValueError, match=r"^x: .*last dimension d = 3"):
        net(torch.randn(2, 5))
    with pytest.raises(TypeError, match=r"^taylornet: w: expected dtype torch.float64 \(the dtype of x\), "
                                        r"got torch.float32"):
        net(torch.randn(2, 3, dtype=F64))
    layer = tn.TaylorLinear(3, 4)
    with pytest.raises(TypeError, match=r"^taylornet: x: expected a floating-point tensor, got torch.int64"):
        layer(torch.ones(2, 3, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------
# Direct calls of the compiled ops: checked in C++, never a crash; a dtype is a TypeError, a value or
# a shape a ValueError, as through the Python API.

ops = torch.ops.taylornet


def _direct_cases():
    p = problem()
    x, w0, w, a, b0, b = p.values()
    signs = torch.ones(m, dtype=F64)
    seed = torch.tensor([1, 2])
    grad_f, grad_n = torch.ones(n, m, dtype=F64), torch.ones(n, c, dtype=F64)
    feat = lambda **o: ops.features(*_args(  # noqa: E731
        dict(x=x, w0=w0, w=w, b0=b0, b=b, signs=None, seed=None, activation="tanh", orders=[0, 1, 2],
             exact=False), o))
    net = lambda **o: ops.net(*_args(  # noqa: E731
        dict(x=x, w0=w0, w=w, a=a, b0=b0, b=b, signs=None, seed=None, activation="tanh", orders=[0, 1, 2],
             exact=False, scale=0.5), o))
    mom = lambda **o: ops.moments(*_args(  # noqa: E731
        dict(x=x, w0=w0, w=w, a=a, b0=b0, b=b, activation="tanh", orders=[0, 1, 2], exact=False, scale=0.5), o))
    fb = lambda **o: ops.features_backward(*_args(  # noqa: E731
        dict(grad=grad_f, x=x, w0=w0, w=w, b0=b0, b=b, signs=None, seed=None, activation="tanh",
             orders=[0, 1, 2], exact=False, needs=[True] * 5), o))
    nb = lambda **o: ops.net_backward(*_args(  # noqa: E731
        dict(grad=grad_n, x=x, w0=w0, w=w, a=a, b0=b0, b=b, signs=None, seed=None, activation="tanh",
             orders=[0, 1, 2], exact=False, scale=0.5, needs=[True] * 6), o))
    mb = lambda **o: ops.moments_backward(*_args(  # noqa: E731
        dict(grad_mean=grad_n, grad_var=grad_n, x=x, w0=w0, w=w, a=a, b0=b0, b=b, activation="tanh",
             orders=[0, 1, 2], exact=False, scale=0.5, needs=[True] * 6), o))
    fwd = {"features": feat, "net": net, "moments": mom, "features_backward": fb, "net_backward": nb,
           "moments_backward": mb}
    cases = []
    for name, f in fwd.items():
        cases += [
            (name, "x 1-D", lambda f=f: f(x=x[0]), r"x: expected a 2-D tensor"),
            (name, "x 3-D", lambda f=f: f(x=x[None]), r"x: expected a 2-D tensor"),
            (name, "x int", lambda f=f: f(x=x.long()), r"x: expected a floating-point tensor"),
            (name, "x half", lambda f=f, name=name: f(
                x=x.half(), w0=w0.half(), w=w.half(), a=a.half(), b0=None, b=None,
                grad=(grad_f if name == "features_backward" else grad_n).half(), grad_mean=grad_n.half(),
                grad_var=grad_n.half()), r"x: expected dtype float32, float64 on cpu, got torch.float16"),
            (name, "w wrong d", lambda f=f: f(w=w[:, :2]), r"w: expected shape"),
            (name, "w0 wrong m", lambda f=f: f(w0=w0[:3]), r"w0: expected shape"),
            (name, "w0 dtype", lambda f=f: f(w0=w0.float()), r"w0: expected dtype"),
            (name, "b0 length", lambda f=f: f(b0=b0[:2]), r"b0: expected shape"),
            (name, "b dtype", lambda f=f: f(b=b.float()), r"b: expected dtype"),
            (name, "unknown activation", lambda f=f: f(activation="swish"),
             r"activation: expected one of tanh, .*relu3, got 'swish'"),
            (name, "empty orders", lambda f=f: f(orders=[]), r"orders: expected at least one order"),
            (name, "order 17", lambda f=f: f(orders=[1, 17]), r"orders: expected values in \[0, 16\], got 17"),
            (name, "negative order", lambda f=f: f(orders=[-1]), r"orders: expected values in \[0, 16\], got -1"),
            (name, "duplicate order", lambda f=f: f(orders=[2, 2]), r"orders: duplicate order 2"),
            (name, "relu order 2", lambda f=f: f(activation="relu", orders=[0, 2]),
             r"relu has no derivatives of order >= 2; use relu2, relu3 or softplus"),
        ]
        if name in ("features", "net", "features_backward", "net_backward"):
            cases += [
                (name, "signs length", lambda f=f: f(signs=torch.ones(m + 1, dtype=F64)), r"signs: expected shape"),
                (name, "signs and seed", lambda f=f: f(signs=signs, seed=seed), r"not both"),
                (name, "seed int32", lambda f=f: f(seed=seed.int()), r"seed: expected an int64 tensor"),
                (name, "seed 4 elements", lambda f=f: f(seed=torch.tensor([1, 2, 3, 4])), r"seed: expected an int64"),
                (name, "seed 1 element", lambda f=f: f(seed=torch.tensor([1])), r"seed: expected an int64"),
                (name, "seed first neuron < 0", lambda f=f: f(seed=torch.tensor([1, 2, -1])),
                 r"seed: the first neuron index must be >= 0"),
            ]
        if name not in ("features", "features_backward"):
            cases += [
                (name, "a 1-D", lambda f=f: f(a=a[0]), r"a: expected shape \(c, 6\)"),
                (name, "a wrong m", lambda f=f: f(a=a[:, :3]), r"a: expected shape"),
                (name, "a dtype", lambda f=f: f(a=a.float()), r"a: expected dtype"),
                (name, "scale 0", lambda f=f: f(scale=0.0), r"scale: expected a finite positive number"),
                (name, "scale nan", lambda f=f: f(scale=math.nan), r"scale: expected a finite positive number"),
                (name, "scale -inf", lambda f=f: f(scale=-math.inf), r"scale: expected a finite positive number"),
            ]
    cases += [
        ("features_backward", "grad shape", lambda: fb(grad=grad_f[:, :2]), r"grad: expected shape"),
        ("features_backward", "grad dtype", lambda: fb(grad=grad_f.float()), r"grad: expected dtype"),
        ("net_backward", "grad shape", lambda: nb(grad=grad_n[:2]), r"grad: expected shape"),
        ("moments_backward", "grad_var shape", lambda: mb(grad_var=grad_n[:, :1]), r"grad: expected shape"),
        ("philox_signs", "negative m", lambda: ops.philox_signs(seed, -1), r"m: expected a non-negative width"),
        ("philox_signs", "seed dtype", lambda: ops.philox_signs(seed.float(), 3), r"seed: expected an int64 tensor"),
        ("philox_signs", "seed size", lambda: ops.philox_signs(torch.tensor([1]), 3), r"seed: expected an int64"),
    ]
    return cases


def _args(defaults, overrides):
    # the keyword names of the lambdas above double as schema argument names; ignore the ones an op
    # does not take (e.g. `a` for features)
    return [overrides.get(k, v) for k, v in defaults.items()]


DIRECT = _direct_cases()
# The cases about a dtype; every other one is about a value or a shape.
DIRECT_TYPE_ERRORS = {"x int", "x half", "w0 dtype", "b dtype", "a dtype", "grad dtype"}


@pytest.mark.parametrize("case", range(len(DIRECT)), ids=[f"{op}-{what}" for op, what, _, _ in DIRECT])
def test_direct_op_calls_raise(case):
    _, what, fn, match = DIRECT[case]
    exc = TypeError if what in DIRECT_TYPE_ERRORS else ValueError
    with pytest.raises(exc, match=match) as info:
        fn()
    assert type(info.value) is exc


def test_moments_take_no_sign_pattern():
    import numpy as np

    x, w0, w, a = torch.randn(4, 3), torch.randn(5, 3), torch.zeros(5, 3), torch.randn(5)
    mean, var = tn.taylor_net_moments(x, w0, w, a)
    assert mean.shape == var.shape == (4,)
    for impl in (tn, tn.reference):  # the moments average over every sign pattern: no signs argument
        with pytest.raises(TypeError, match="unexpected keyword argument 'signs'"):
            impl.taylor_net_moments(x, w0, w, a, signs=torch.ones(5))
    # numpy integers are orders too
    assert torch.equal(tn.taylor_net(x, w0, w, a, order=np.int64(2)), tn.taylor_net(x, w0, w, a, order=2))
    assert torch.equal(tn.taylor_net(x, w0, w, a, order=[np.int32(0), 2]), tn.taylor_net(x, w0, w, a, order=(0, 2)))
