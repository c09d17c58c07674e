"""Plots a relay's CPU per call against the number of calls from the tables
relay_bench prints (one file per mode: give each as MODE=FILE). Needs the
PyPI package matplotlib.

    /tmp/pesq-venv/bin/pip install matplotlib
    /tmp/pesq-venv/bin/python scripts/plot_cpu_per_call.py docs/cpu_per_call.png \
        relay=/tmp/relay.txt transcode=/tmp/transcode.txt
"""
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def rows(path):
    """(relay, calls, core % per call, loss %) of each run row; the columns
    are found by the header's names, which relay_bench may add to."""
    columns = None
    for line in open(path, encoding="utf-8"):
        cells = [cell.strip() for cell in line.split("|")]
        if len(cells) > 2 and cells[1] == "relay" and "core per call" in cells:
            columns = {name: index for index, name in enumerate(cells)}
            continue
        if columns is None or len(cells) < len(columns) - 1:
            continue
        if cells[1] not in ("Dialtone", "rtpengine"):
            continue
        core = float(cells[columns["core per call"]].rstrip(" %"))
        loss = float(cells[columns["loss"]].rstrip(" %"))
        yield cells[1], int(cells[columns["calls"]]), core, loss


def main():
    out, inputs = sys.argv[1], sys.argv[2:]
    figure, axes = plt.subplots(1, len(inputs), figsize=(6 * len(inputs), 4.2), squeeze=False)
    for axis, spec in zip(axes[0], inputs):
        mode, path = spec.split("=", 1)
        series = defaultdict(lambda: defaultdict(list))
        for relay, calls, core, loss in rows(path):
            series[relay][calls].append((core, loss))
        for relay, style in (("Dialtone", "o-"), ("rtpengine", "s--")):
            points = sorted(series[relay].items())
            calls = [n for n, _ in points]
            cores = [sum(c for c, _ in runs) / len(runs) for _, runs in points]
            axis.plot(calls, cores, style, label=relay)
            for n, runs in points:
                loss = max(l for _, l in runs)
                if loss >= 0.1:
                    axis.annotate(f"{loss:.1f} % lost", (n, sum(c for c, _ in runs) / len(runs)),
                                  textcoords="offset points", xytext=(4, 6), fontsize=8)
        axis.set_title(f"{mode}: CPU per call")
        axis.set_xlabel("concurrent calls")
        axis.set_ylabel("% of one core per call")
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=90)


if __name__ == "__main__":
    main()
