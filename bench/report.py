"""The summary's verdicts against the targets, and the chart.

python -m bench.report [bench/results/latest.json] [--chart docs/bench/benchmark.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

TARGETS = {
    "drain_rate": 20_000,
    "drain_vs_bare_paho": 0.75,
    "steady_p99_ms": 500,
    "parking_rps": 1_500,
    "parking_p99_ms": 50,
    "containers_vs_sql": 0.7,
    "batched_rate": 100_000,
    "batched_vs_copy": 0.6,
}


def _verdict(name: str, measured: float | None, target: float, *, at_least: bool) -> dict[str, Any]:
    met = measured is not None and (measured >= target if at_least else measured < target)
    return {
        "target": name,
        "wanted": f"{'>=' if at_least else '<'} {target:g}",
        "measured": measured,
        "met": met,
    }


def verdicts(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with what was measured and whether it was met."""
    out = []
    drain = summary.get("drain")
    if drain:
        one = drain["citytel_1_worker"]
        out.append(
            _verdict(
                "drain readings/s (1 worker)", one["rate"], TARGETS["drain_rate"], at_least=True
            )
        )
        out.append(
            _verdict(
                "drain rate / bare paho rate",
                drain["ratios"]["citytel_vs_bare_paho"],
                TARGETS["drain_vs_bare_paho"],
                at_least=True,
            )
        )
    batched = summary.get("batched")
    if batched:
        out.append(
            _verdict(
                "batched readings/s (1 worker, 50-500 readings a message)",
                batched["citytel_1_worker"]["readings_rate"],
                TARGETS["batched_rate"],
                at_least=True,
            )
        )
        out.append(
            _verdict(
                "batched readings/s / COPY of the same rows",
                batched["ratios"]["citytel_vs_copy"],
                TARGETS["batched_vs_copy"],
                at_least=True,
            )
        )
    steady = summary.get("steady")
    if steady:
        p99 = steady["publish_to_committed"]["p99_ms"]
        kept_up = (
            steady["complete"]
            and steady["loadgen"]["achieved_rate"] >= 0.98 * steady["rate_target"]
        )
        verdict = _verdict(
            f"steady {steady['rate_target']:g}/s p99 publish->committed ms",
            p99,
            TARGETS["steady_p99_ms"],
            at_least=False,
        )
        verdict["met"] = verdict["met"] and kept_up
        out.append(verdict)
    api = summary.get("api")
    if api and "parking" in api:
        parking = api["parking"]["api_1_worker"]
        out.append(
            _verdict(
                "/v1/parking/free req/s", parking["rps"], TARGETS["parking_rps"], at_least=True
            )
        )
        out.append(
            _verdict(
                "/v1/parking/free p99 ms",
                parking["p99_ms"],
                TARGETS["parking_p99_ms"],
                at_least=False,
            )
        )
    containers = (api or {}).get("containers", {})
    if "ratio_api_vs_asyncpg_rps" in containers:
        out.append(
            _verdict(
                "/v1/containers?min_fill_pct req/s / its SQL via asyncpg (same run)",
                containers["ratio_api_vs_asyncpg_rps"],
                TARGETS["containers_vs_sql"],
                at_least=True,
            )
        )
    if "ratio_api_uncached_vs_asyncpg_rps" in containers:
        out.append(
            _verdict(
                "the same without its answer cache (CITYTEL_API_CONTAINERS_CACHE_S=0)",
                containers["ratio_api_uncached_vs_asyncpg_rps"],
                TARGETS["containers_vs_sql"],
                at_least=True,
            )
        )
    return out


def chart(summary: dict[str, Any], path: Path) -> Path:
    """Throughput and latency, each citytel figure beside its same-run baseline."""
    import matplotlib as mpl

    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    fig.suptitle("citytel benchmark (one run, 2-core machine; baselines measured in the same run)")

    def bars(
        ax: Any, labels: list[str], values: list[float], title: str, unit: str, line: float | None
    ) -> None:
        colours = ["#4c72b0" if lbl.startswith("citytel") else "#aaaaaa" for lbl in labels]
        ax.bar(labels, values, color=colours)
        for x, v in enumerate(values):
            ax.annotate(f"{v:,.0f}", (x, v), ha="center", va="bottom", fontsize=8)
        if line is not None:
            ax.axhline(
                line, color="#c44e52", linestyle="--", linewidth=1, label=f"target {line:,.0f}"
            )
            ax.legend(loc="upper left", fontsize=8)
        ax.set_ylim(0, max(values, default=1.0) * 1.15)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(unit)
        ax.tick_params(axis="x", labelsize=7)

    drain = summary.get("drain")
    if drain:
        bars(
            axes[0][0],
            [
                "bare paho\n(ack, discard)",
                "citytel\n1 worker",
                "citytel\n2 workers",
                "store_batch\n(no MQTT)",
                "asyncpg COPY",
            ],
            [
                drain["bare_paho"]["rate"],
                drain["citytel_1_worker"]["rate"],
                drain["citytel_2_workers"]["rate"],
                drain["direct"]["store_batch"]["rate"],
                drain["direct"]["copy"]["rate"],
            ],
            f"Drain of a {drain['messages']:,}-reading backlog",
            "readings / s",
            TARGETS["drain_rate"],
        )
    steady = summary.get("steady")
    if steady:
        c, r = steady["publish_to_committed"], steady["publish_to_received"]
        ax = axes[0][1]
        labels = ["p50", "p90", "p99", "max"]
        x = range(len(labels))
        ax.bar(
            [i - 0.2 for i in x],
            [r[f"{k}_ms"] for k in labels],
            0.4,
            color="#aaaaaa",
            label="publish -> received",
        )
        ax.bar(
            [i + 0.2 for i in x],
            [c[f"{k}_ms"] for k in labels],
            0.4,
            color="#4c72b0",
            label="publish -> committed",
        )
        ax.set_xticks(list(x), labels)
        ax.axhline(
            TARGETS["steady_p99_ms"],
            color="#c44e52",
            linestyle="--",
            linewidth=1,
            label="p99 target",
        )
        ax.set_yscale("log")
        ax.set_ylabel("ms (log)")
        ax.legend(fontsize=8)
        ax.set_title(
            f"Steady {steady['rate_target']:,.0f} msg/s for {steady['seconds']:g} s: latency",
            fontsize=10,
        )
    api = summary.get("api")
    if api:
        labels, rps, p50, p99 = [], [], [], []
        for query, short in (("parking", "free spots"), ("containers", "containers")):
            for key, name in (
                ("api_1_worker", "citytel"),
                ("api_2_worker", "citytel\n2 workers"),
                ("api_1_worker_database_view", "citytel\nno live view"),
                ("asyncpg", "asyncpg\nsame SQL"),
            ):
                if key in api.get(query, {}):
                    labels.append(f"{name}\n[{short}]")
                    rps.append(api[query][key]["rps"])
                    p50.append(api[query][key]["p50_ms"])
                    p99.append(api[query][key]["p99_ms"])
        bars(
            axes[1][0],
            labels,
            rps,
            f"API throughput, {api['concurrency']} concurrent",
            "requests / s",
            TARGETS["parking_rps"],
        )
        ax = axes[1][1]
        x = range(len(labels))
        ax.bar([i - 0.2 for i in x], p50, 0.4, color="#aaaaaa", label="p50")
        ax.bar([i + 0.2 for i in x], p99, 0.4, color="#4c72b0", label="p99")
        ax.axhline(
            TARGETS["parking_p99_ms"],
            color="#c44e52",
            linestyle="--",
            linewidth=1,
            label="p99 target (free spots)",
        )
        ax.set_xticks(list(x), labels, fontsize=7)
        ax.set_ylabel("ms")
        ax.legend(fontsize=8)
        ax.set_title("API latency", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Redraw the chart and print the verdicts of a saved summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("summary", nargs="?", default="bench/results/latest.json")
    parser.add_argument("--chart", default="bench/results/benchmark.png")
    args = parser.parse_args(argv)
    summary = json.loads(Path(args.summary).read_text())
    chart(summary, Path(args.chart))
    sys.stdout.write(json.dumps(verdicts(summary), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
