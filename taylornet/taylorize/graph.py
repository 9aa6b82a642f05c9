"""Tracing a module to a functional ATen graph, and evaluating that graph on jets."""
from __future__ import annotations

import operator

from torch import fx
from torch.func import functionalize
from torch.utils import _pytree as pytree

from .rules import apply, aten


def interpret(gm: fx.GraphModule, inputs, K: int):
    """Runs the graph ``gm`` on ``inputs`` (tensors and jets) with series truncated at order K."""
    env = {}
    it = iter(inputs)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            env[node] = next(it)
        elif node.op == "get_attr":
            env[node] = getattr(gm, node.target)
        elif node.op == "call_function":
            args, kwargs = pytree.tree_map_only(fx.Node, env.__getitem__, (node.args, node.kwargs))
            if node.target is operator.getitem:
                env[node] = args[0][args[1]]
            else:
                env[node] = apply(node.target, args, kwargs, K)
        elif node.op == "output":
            return pytree.tree_map_only(fx.Node, env.__getitem__, node.args[0])
        else:
            raise NotImplementedError(f"taylorize: unexpected graph node {node.op} {node.target}")


def _decompositions():
    from torch._decomp import core_aten_decompositions, get_decompositions

    table = dict(core_aten_decompositions())
    table.update(get_decompositions([
        aten.native_dropout, aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit,
        aten._native_batch_norm_legit_functional, aten.native_batch_norm, aten.native_group_norm,
        aten.elu, aten.leaky_relu, aten.linalg_vector_norm, aten.addmv, aten.hardtanh,
    ]))
    return table


_DECOMPOSITIONS = None


def trace(fn, example_inputs):
    """The functional ATen graph of fn(*flat_inputs) -> list of tensors."""
    global _DECOMPOSITIONS
    from torch.fx.experimental.proxy_tensor import make_fx

    if _DECOMPOSITIONS is None:
        _DECOMPOSITIONS = _decompositions()
    return make_fx(functionalize(fn, remove="mutations"), decomposition_table=_DECOMPOSITIONS,
                   tracing_mode="real")(*[t.detach() for t in example_inputs])
