"""PNG plots for the report (matplotlib, no display), written atomically beside the JSON."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from pipelines import storage  # noqa: E402

Series = dict[str, tuple[list[float], list[float]]]


def line_plot(url: str, series: Series, xlabel: str, ylabel: str, title: str,
              logx: bool = False, markers: bool = False) -> str:
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for name, (x, y) in series.items():
        axes.plot(x, y, label=name, marker="o" if markers else None, linewidth=1.6)
    if logx:
        axes.set_xscale("log")
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    return save(figure, url)


def accuracy_vs_k(url: str, curves: dict[str, list[float]], title: str,
                  ylabel: str = "top-1 accuracy") -> str:
    """Accuracy at k = 1..K, one line per named curve."""
    return line_plot(url, {name: (list(range(1, len(values) + 1)), values) for name, values in curves.items()},
                     "k (neighbours voting)", ylabel, title)


def bar_plot(url: str, groups: list[str], bars: dict[str, list[float]], ylabel: str, title: str,
             ylim: tuple[float, float] | None = None) -> str:
    figure, axes = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    width = 0.8 / max(len(bars), 1)
    for number, (name, values) in enumerate(bars.items()):
        axes.bar([g + number * width for g in range(len(groups))], values, width, label=name)
    axes.set_xticks([g + width * (len(bars) - 1) / 2 for g in range(len(groups))], groups)
    axes.set(ylabel=ylabel, title=title)
    if ylim:
        axes.set_ylim(*ylim)
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=8)
    figure.tight_layout()
    return save(figure, url)


def save(figure, url: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    storage.write_bytes_atomic(url, buffer.getvalue())
    return url.rsplit("/", 1)[-1]
