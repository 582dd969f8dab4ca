"""Plot RSS, open fds and threads over time from a chaos history (`messenger chaos --history H`).

Usage: python scripts/plot_chaos_resources.py HISTORY.jsonl OUT.png   (needs the bench extra: matplotlib)
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_messenger.chaos.history import read_history

FIGURES = (("rss_kib", "RSS (MiB)", 1 / 1024), ("fds", "open file descriptors", 1.0), ("threads", "threads", 1.0))


def main(history_path: Path, out_path: Path) -> None:
    """Three panels, one line per process; a replica restarted by a fault continues its line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[float, dict[str, int]]]] = {}
    for event in read_history(history_path):
        if event["type"] == "resources":
            for process, figures in event["processes"].items():
                series.setdefault(process, []).append((event["t"] / 60, figures))
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for ax, (figure, label, scale) in zip(axes, FIGURES, strict=True):
        for process, rows in sorted(series.items()):
            ax.plot([t for t, _ in rows], [f[figure] * scale for _, f in rows], label=process, linewidth=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", ncol=4)
    axes[-1].set_xlabel("minutes into the run")
    fig.suptitle(f"messenger chaos: resources over time ({history_path.name})")
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
