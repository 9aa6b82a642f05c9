"""taylornet: fused higher-order Taylor models of wide two-layer networks, beyond the NTK.

    import taylornet as tn
    f = tn.taylor_net(x, w0, w, a, activation="tanh", order=2)
    model = tn.TaylorNet(d, width=2**16, order=2, sign_randomization=True)
"""
from . import (
    ops,  # noqa: F401  (loads the compiled ops)
    reference,
)
from .activations import ACTIVATIONS, MAX_ORDER
from .distributed import ShardedTaylorNet
from .functional import (
    expected_squared_loss,
    ntk_gram,
    philox_signs,
    taylor_features,
    taylor_net,
    taylor_net_moments,
)
from .modules import TaylorLinear, TaylorNet
from .taylorize import TaylorizedModule, empirical_ntk, taylorize

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS", "MAX_ORDER", "ShardedTaylorNet", "TaylorLinear", "TaylorNet", "TaylorizedModule",
    "empirical_ntk", "expected_squared_loss", "ntk_gram", "philox_signs", "reference", "taylor_features",
    "taylor_net", "taylor_net_moments", "taylorize",
]
