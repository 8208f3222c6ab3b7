"""Reports: the terminal table, a Markdown report, and PNG plots (matplotlib) of one or more systems' runs."""

from __future__ import annotations

from pathlib import Path

from loadtests.metrics import RequestResult, Summary

COLUMNS = ("conc", "ok", "fail", "refused", "p99 refusal ms", "cancelled", "out tok/s", "req/s", "med TTFT ms",
           "p99 TTFT ms", "med ITL ms", "med TPOT ms", "tok/req", "goodput")


def row_cells(concurrency: int, s: Summary) -> list[str]:
    return [str(concurrency), str(s.completed), str(s.failed), str(s.refused),
            f"{s.refusal_ms['p99']:.1f}" if s.refusal_ms else "-", str(s.cancelled), f"{s.output_throughput:.1f}",
            f"{s.request_throughput:.2f}", f"{s.ttft_ms['p50']:.1f}", f"{s.ttft_ms['p99']:.1f}",
            f"{s.itl_ms['p50']:.1f}", f"{s.tpot_ms['p50']:.1f}", f"{s.mean_output_tokens:.1f}",
            "-" if s.goodput is None else f"{s.goodput:.2f}"]


def text_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).rjust(width) for cell, width in zip(line, widths)) for line in [list(header), *rows]]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def markdown_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_rows(levels: dict[int, Summary]) -> list[list[str]]:
    return [row_cells(concurrency, summary) for concurrency, summary in sorted(levels.items())]


def plot(out_dir: Path, series: dict[str, dict[int, Summary]],
         raw: dict[str, dict[int, list[RequestResult]]] | None = None) -> list[Path]:
    """throughput.png, latency.png (TTFT and ITL percentiles vs concurrency) and ttft_cdf.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, levels in series.items():
        xs = sorted(levels)
        ax.plot(xs, [levels[x].output_throughput for x in xs], marker="o", label=name)
    ax.set(xlabel="concurrent requests", ylabel="output tokens/s", title="Throughput vs concurrency")
    ax.set_xscale("log", base=2)
    ax.legend()
    ax.grid(alpha=0.3)
    written.append(out_dir / "throughput.png")
    fig.savefig(written[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, levels in series.items():
        xs = sorted(levels)
        for axis, metric in ((left, "ttft_ms"), (right, "itl_ms")):
            line = axis.plot(xs, [getattr(levels[x], metric)["p50"] for x in xs], marker="o", label=f"{name} p50")
            axis.plot(xs, [getattr(levels[x], metric)["p99"] for x in xs], marker="x", linestyle="--",
                      color=line[0].get_color(), label=f"{name} p99")
    for axis, title in ((left, "Time to first token (ms)"), (right, "Inter-token latency (ms)")):
        axis.set(xlabel="concurrent requests", title=title)
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    written.append(out_dir / "latency.png")
    fig.savefig(written[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    if raw:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, levels in raw.items():
            for concurrency, results in sorted(levels.items()):
                ttfts = np.sort([r.ttft * 1000 for r in results if r.ok])
                if len(ttfts):
                    ax.plot(ttfts, np.arange(1, len(ttfts) + 1) / len(ttfts), label=f"{name} c={concurrency}")
        ax.set(xlabel="TTFT (ms)", ylabel="fraction of requests", title="TTFT distribution")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        written.append(out_dir / "ttft_cdf.png")
        fig.savefig(written[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return written
