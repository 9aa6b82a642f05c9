"""``taylornet experiment {taylorized, sample-complexity, hierarchical}``: reproduce the beyond-NTK claims.

Each experiment writes JSON, CSV and PNG files into --out and ends with a verdict line computed from
this run's numbers. --quick is the small CPU preset, --large the large-width GPU preset.
"""
from __future__ import annotations

import argparse
import importlib

# name -> (module with add_arguments(parser) and run(args) -> int, help)
EXPERIMENTS = {
    "taylorized": ("taylornet.experiments.taylorized",
                   "the full network vs its order-1..4 Taylor models at a large learning rate"),
    "sample-complexity": ("taylornet.experiments.sample_complexity",
                          "samples needed by the NTK vs the quadratic model on low-rank polynomials"),
    "hierarchical": ("taylornet.experiments.hierarchical",
                     "a quadratic Taylor layer on a random representation vs the quadratic model and the NTK"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="experiment", required=True, metavar="EXPERIMENT")
    for name, (module, help_text) in EXPERIMENTS.items():
        sp = sub.add_parser(name, help=help_text, description=importlib.import_module(module).__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        importlib.import_module(module).add_arguments(sp)


def run(args: argparse.Namespace) -> int:
    return importlib.import_module(EXPERIMENTS[args.experiment][0]).run(args)
