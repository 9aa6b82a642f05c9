"""Command line: ``python -m taylornet demo`` (more subcommands in bench/ and experiments/)."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="taylornet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small sign-randomized quadratic Taylor model")
    from . import demo as demo_module

    demo_module.add_arguments(demo)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo_module.run(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
