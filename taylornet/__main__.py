"""Command line: ``taylornet demo | bench | experiment ...`` (also ``python -m taylornet ...``)."""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module providing add_arguments(parser) and run(args) -> int, help)
COMMANDS = {
    "demo": ("taylornet.demo", "train a small sign-randomized quadratic Taylor model"),
    "bench": ("taylornet.bench.cli", "benchmark the fused ops against autograd and torch.compile"),
    "experiment": ("taylornet.experiments.cli", "reproduce the beyond-NTK claims at large width"),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="taylornet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else list(argv)
    # Import only the chosen command's module (the others may need optional dependencies).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return importlib.import_module(COMMANDS[args.command][0]).run(args)


if __name__ == "__main__":
    sys.exit(main())
