"""``python -m taylornet.bench``: the same as ``taylornet bench``."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
