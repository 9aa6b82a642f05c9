"""Progress bars: tqdm's when it is installed, otherwise a stand-in that only prints ``write``."""
from __future__ import annotations

import sys

__all__ = ["progress_bar"]


class _Plain:
    """The part of tqdm's interface the commands use, for machines without tqdm."""

    def __init__(self, *args, **kwargs):
        pass

    def set_description(self, *args, **kwargs):
        pass

    def set_postfix_str(self, *args, **kwargs):
        pass

    def update(self, *args):
        pass

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @staticmethod
    def write(text, file=None):
        print(text, file=file or sys.stdout, flush=True)


def progress_bar(total: int, desc: str = "", unit: str = "it", disable: bool = False, leave: bool = True,
                 **kwargs):
    """A progress bar on stderr: ``tqdm.auto.tqdm`` if available, else a silent stand-in; ``kwargs``
    (``unit_scale``, say) go to tqdm."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Plain()
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=disable or None, leave=leave,
                file=sys.stderr, **kwargs)
