"""matplotlib for files: the Agg backend, plain-number log axes, saving and closing figures."""
from __future__ import annotations

from pathlib import Path

__all__ = ["plain_log_y", "pyplot", "save_figure"]


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_log_y(ax, unit: str = "", subs=(1.0, 2.0, 5.0)) -> None:
    """A log y axis labelled 0.5, 2, 300 (with ``unit``) instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{unit}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def save_figure(fig, path: Path, dpi: int = 110, **kwargs) -> Path:
    """Writes ``fig`` to ``path`` and closes it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi, **kwargs)
    plt.close(fig)
    return path
