"""Benchmarks of the fused ops against the pure-autograd reference, eager and torch.compile'd.

    cases.py      operations, the case grid and the presets
    workloads.py  inputs and one call of a case per implementation
    flops.py      the FLOP model of the matrix products and the matmul ceiling on the same shapes
    floor.py      the compute floor: the model's FLOPs at the rate of a 2048^3 torch.mm
    memory.py     peak memory: CUDA allocator statistics, CPU peak RSS of a fresh process
    budget.py     memory against width: predictions and the width that reaches a budget
    runner.py     one case end to end, and the width sweep
    report.py     the table, JSON and CSV, machine and allocator settings
    plots.py      speedup / time / memory against width (PNG)
    training.py   ``--training``: training steps of TaylorLinear models, thread scaling
    hugepages.py  ``--hugepages``: the run restarted with glibc's huge-page malloc
    cli.py        ``taylornet bench`` (also ``python -m taylornet.bench``)

Timing (interleaved rounds on torch.utils.benchmark's synchronizing clock), progress bars, plotting
and result files come from taylornet.utils, shared with the experiments and the demo.
"""
