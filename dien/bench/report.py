"""The benchmark's outputs: a text table, JSON, Markdown and a latency-against-throughput plot."""
from __future__ import annotations

import json
import math
from pathlib import Path

from dien.bench.load import LoadResult
from dien.bench.qps import QpsReport

COLUMNS = ("variant", "cand", "load", "req/s", "cand/s", "of offline", "p50 ms", "p90 ms", "p99 ms", "max ms",
           "errors")


def _load(result: LoadResult) -> str:
    return f"c={result.concurrency}" if result.mode == "closed" else f"{result.offered_rps:g}/s open"


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _grouped(report: QpsReport) -> list:
    """The rows by variant (in the order first measured), request size, closed before open loop, load."""
    order = {variant: i for i, variant in enumerate(dict.fromkeys(r.variant for r in report.rows))}
    return sorted(report.rows, key=lambda r: (order[r.variant], r.result.candidates, r.result.mode != "closed",
                                              r.result.concurrency or r.result.offered_rps or 0))


def table_rows(report: QpsReport) -> list[tuple[str, ...]]:
    rows = []
    for row in _grouped(report):
        r = row.result
        offline = report.offline.get(r.candidates)
        share = f"{r.candidates_per_s / offline:.0%}" if offline else "-"
        # Several rounds: the median round, and the range of all in the column that ranked them.
        spread = f" ({min(row.rounds):.0f}-{max(row.rounds):.0f})" if row.rounds else ""
        closed = r.mode == "closed"
        rows.append((row.variant, str(r.candidates), _load(r), f"{r.requests_per_s:.1f}{spread if closed else ''}",
                     f"{r.candidates_per_s:.0f}", share, _ms(r.p50_ms), _ms(r.p90_ms),
                     _ms(r.p99_ms) + ("" if closed else spread), _ms(r.max_ms), str(r.errors)))
    return rows


def ratio_rows(report: QpsReport) -> list[tuple[str, ...]]:
    """Per request size: each variant's best closed-loop candidates/s and its ratio to every peer's."""
    from dien.bench.qps import PLAIN, PLAIN_PEER

    rows = []
    for candidates in sorted({r.result.candidates for r in report.rows}):
        peers = {name: report.best(name, candidates) for name in (PLAIN, PLAIN_PEER)}
        for variant in dict.fromkeys(r.variant for r in report.rows):
            best = report.best(variant, candidates)
            if best is None:
                continue
            ratios = [f"{best.candidates_per_s / p.candidates_per_s:.2f}x" if p and p.candidates_per_s else "-"
                      for p in peers.values()]
            rows.append((str(candidates), variant, f"{best.candidates_per_s:.0f}", f"c={best.concurrency}", *ratios))
    return rows


RATIO_COLUMNS = ("cand", "variant", "best cand/s", "at", "vs student, uvicorn", "vs DeepCTR-Torch, uvicorn")


def context_lines(report: QpsReport) -> list[str]:
    """The compute limit and the in-process request path, as text lines."""
    lines = []
    if report.offline:
        lines.append("offline scoring (one thread, no HTTP), candidates/s: "
                     + ", ".join(f"{n} cand {rate:,.0f}" for n, rate in sorted(report.offline.items()))
                     + (f"; one request per batch: {report.offline_unbatched:,.0f}" if report.offline_unbatched else ""))
    if report.breakdown:
        lines.append("request path in-process, ms per request: "
                     + ", ".join(f"{step} {ms:.3f}" for step, ms in report.breakdown.items()))
    if report.hop:
        lines.append("a call to the Scorer deployment (idle), ms: "
                     + "; ".join(f"{n} request{'s' if n != '1' else ''}: round trip {c['round_trip_ms']:.2f}, "
                                 f"scoring {c['score_ms']:.2f}, batch wait {c['batch_wait_ms']:.2f}, hop "
                                 f"{c['hop_ms']:.2f} ({c['hop_ms_per_request']:.2f} per request)"
                                 for n, c in report.hop.items()))
    return lines


def format_table(report: QpsReport) -> str:
    rows = [COLUMNS, *table_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    ratios = [RATIO_COLUMNS, *ratio_rows(report)]
    ratio_widths = [max(len(row[i]) for row in ratios) for i in range(len(RATIO_COLUMNS))]
    lines += [""] + ["  ".join(cell.ljust(w) for cell, w in zip(row, ratio_widths)) for row in ratios]
    lines += [""] + context_lines(report)
    lines += [""] + [f"goal {'MET' if g.met else 'MISSED'}: {g.name}: {g.measured}" for g in report.goals]
    return "\n".join(lines)


def format_markdown(report: QpsReport) -> str:
    env = report.environment
    lines = ["# Serving throughput (`make benchmark-qps`)", "",
             f"{env['started']}, {env['cpus']} CPUs (1/5/15-minute load averages at start "
             f"{env['load_average_at_start']}, at the end {env.get('load_average_at_end')}), "
             f"Ray {env['ray']}, throughput-optimized Serve: {env['throughput_optimized']}, "
             f"HAProxy in front: {env.get('haproxy', False)}, "
             f"{report.seconds:.0f} s in all.", ""]
    if report.models:
        lines += ["Models: " + "; ".join(f"{name} hidden {m['hidden']} ({m['path']})" for name, m in report.models.items()),
                  ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(report)]
    lines += ["", "| " + " | ".join(RATIO_COLUMNS) + " |", "|" + "|".join("---" for _ in RATIO_COLUMNS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in ratio_rows(report)]
    lines += [""] + [f"- {line}" for line in context_lines(report)]
    if report.goals:
        lines += ["", "| goal | met | measured |", "|---|---|---|"]
        lines += [f"| {g.name} | {'yes' if g.met else 'no'} | {g.measured} |" for g in report.goals]
    lines += ["", "Closed loop `c=N`: N requests in flight. Open loop `R/s open`: requests sent at R per second, "
              "latency measured from each request's intended send time.", ""]
    return "\n".join(lines)


def plot(report: QpsReport, path: Path) -> Path:
    """p99 latency against requests/s, one panel per request size, one line per variant's closed-loop sweep
    and one per its open-loop rates, each point labelled with its load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r.result.candidates for r in report.rows})
    figure, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.8), squeeze=False)
    for axis, candidates in zip(axes[0], sizes):
        for variant in dict.fromkeys(r.variant for r in report.rows):
            for mode, style in (("closed", "-o"), ("open", "--s")):
                # In load order (concurrency, rate): a sweep past saturation folds back to the left.
                results = sorted((r for r in report.results(variant, candidates, mode) if r.requests),
                                 key=lambda r: r.concurrency or r.offered_rps)
                if not results:
                    continue
                label = variant if mode == "closed" else f"{variant} (open loop)"
                (line,) = axis.plot([r.requests_per_s for r in results], [r.p99_ms for r in results], style,
                                    label=label, markersize=4)
                for r in results:
                    axis.annotate(f"c={r.concurrency}" if mode == "closed" else f"{r.offered_rps:g}/s",
                                  (r.requests_per_s, r.p99_ms), textcoords="offset points", xytext=(3, 3),
                                  fontsize=6, color=line.get_color())
        axis.set_yscale("log")
        axis.set_xlabel("requests/s")
        axis.set_ylabel("p99 latency (ms)")
        axis.set_title(f"{candidates} candidate{'s' if candidates != 1 else ''} per request")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(f"DIEN on Ray Serve, {report.environment['cpus']} CPUs")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_outputs(report: QpsReport, out: str | Path) -> dict[str, Path]:
    """``results.json``, ``results.md`` and ``latency_vs_throughput.png`` in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "latency_vs_throughput.png"}
    paths["json"].write_text(json.dumps(report.as_dict(), indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(format_markdown(report))
    plot(report, paths["plot"])
    return paths
