"""The outputs of `imgzoo bench serve`: the markdown tables, the targets of issue 7, the plot.

Everything here reads the JSON-ready report dictionary that `service.bench.serve` builds (and
writes as `bench-serve.json`), so the tables and the figure always agree with the JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

SERVER_LABELS = {
    "imgzoo": "imgzoo",
    "ort-naive": "FastAPI + ORT per request",
    "torch-naive": "FastAPI + PyTorch eager per request",
}
SERVER_COLORS = {"imgzoo": "tab:blue", "ort-naive": "tab:orange", "torch-naive": "tab:red"}
REFERENCE_KIND = "single"  # the issue's method: one PNG per request as multipart `file`

# Issue 7's table: measured on the project's 2-core CPU with `hey` as the client, one 32x32 PNG
# per request as multipart `file`, 2 ORT / torch threads, median of 3 x 10 s. Requests per
# second (one image each). Reference only: not measured by this benchmark.
ISSUE_7_METHOD = (
    "one 32x32 PNG per request as multipart `file`, `hey` as the client on the same 2-core "
    "machine, 2 ORT / torch threads, median of 3 x 10 s"
)
ISSUE_7: dict[str, list[dict[str, Any]]] = {
    "fastnet": [
        {"server": "in-process ORT, decode + run, batch 64 (ceiling)", "c1": None, "c32": 807},
        {"server": "FastAPI + PyTorch eager per request", "c1": 111, "c32": 164},
        {"server": "FastAPI + ORT per request", "c1": 417, "c1_p50_ms": 2.3, "c32": 401},
        {"server": "FastAPI + a simple 2 ms-window batcher", "c1": 204, "c32": 545},
        {"server": "BentoML 1.4 adaptive batching", "c1": 206, "c1_after_burst": 22, "c32": 334},
    ],
    "resnet18": [
        {"server": "in-process ORT, decode + run, batch 64 (ceiling)", "c1": None, "c32": 194},
        {"server": "FastAPI + PyTorch eager per request", "c1": 51, "c32": 63},
        {"server": "FastAPI + ORT per request", "c1": 116, "c1_p50_ms": 8.5, "c32": 138},
        {"server": "FastAPI + a simple 2 ms-window batcher", "c1": 88, "c32": 164},
        {"server": "BentoML 1.4 adaptive batching", "c1": 92, "c1_after_burst": 9, "c32": 136},
    ],
}
BENTOML_C32 = {"fastnet": 334.0, "resnet18": 136.0}


# --------------------------------------------------------------------------- lookups


def point(
    report: dict[str, Any], server: str, model: str, kind: str, c: int
) -> dict[str, Any] | None:
    """The median figures of one server / model / kind at concurrency `c`, if measured."""
    for entry in report["servers"]:
        if entry["name"] != server:
            continue
        points = entry["models"].get(model, {}).get("kinds", {}).get(kind, {}).get("points", [])
        return next((p for p in points if p["concurrency"] == c), None)
    return None


def _figure(p: dict[str, Any] | None, name: str) -> float | None:
    if p is None:
        return None
    value = p.get(name)
    return float(value) if isinstance(value, int | float) else None


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per model and concurrency: imgzoo against the ceiling and the naive servers (img/s)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for model in report["models"]:
        key = model["key"]
        ceiling = report["ceiling"].get(key, {}).get("decode_and_run_images_per_s")
        rows = []
        for c in report["settings"]["concurrency"]:
            ours = _figure(point(report, "imgzoo", key, REFERENCE_KIND, c), "images_per_s")
            torch = _figure(point(report, "torch-naive", key, REFERENCE_KIND, c), "images_per_s")
            ort = _figure(point(report, "ort-naive", key, REFERENCE_KIND, c), "images_per_s")
            rows.append(
                {
                    "concurrency": c,
                    "imgzoo": ours,
                    "ceiling": ceiling,
                    "torch_naive": torch,
                    "ort_naive": ort,
                    "imgzoo_over_ceiling": _div(ours, ceiling),
                    "imgzoo_over_torch_naive": _div(ours, torch),
                    "imgzoo_over_ort_naive": _div(ours, ort),
                    "imgzoo_over_bentoml_issue_7": _div(
                        ours, BENTOML_C32.get(model["architecture"])
                    )
                    if c == 32
                    else None,
                }
            )
        out[key] = rows
    return out


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 7's targets, checked on this run's figures where it measured what they need."""
    rows: list[dict[str, Any]] = []

    def add(model: str, target: str, value: float | None, goal: float, higher: bool) -> None:
        if value is None:
            return
        met = value >= goal if higher else value <= goal
        rows.append({"model": model, "target": target, "value": value, "goal": goal, "met": met})

    for model in report["models"]:
        key, fast = model["key"], model["architecture"] == "fastnet"
        c32 = point(report, "imgzoo", key, REFERENCE_KIND, 32)
        ceiling = report["ceiling"].get(key, {}).get("decode_and_run_images_per_s")
        share = 0.85 if fast else 0.95
        add(
            key,
            f"c=32 img/s >= {share:.0%} of the ceiling",
            _div(_figure(c32, "images_per_s"), ceiling),
            share,
            True,
        )
        c1 = point(report, "imgzoo", key, REFERENCE_KIND, 1)
        ort_c1 = point(report, "ort-naive", key, REFERENCE_KIND, 1)
        ort_p50 = _figure(ort_c1, "p50_ms")
        if ort_p50 is not None:
            add(
                key,
                f"c=1 p50 <= FastAPI + ORT per request ({ort_p50:.2f} ms)",
                _figure(c1, "p50_ms"),
                ort_p50,
                False,
            )
        burst = _burst(report, "imgzoo", key)
        if burst is not None:
            add(key, "c=1 after a burst >= 90% of fresh", burst.get("after_over_fresh"), 0.9, True)
        if fast:
            torch_c32 = point(report, "torch-naive", key, REFERENCE_KIND, 32)
            add(
                key,
                "c=32 >= 3.5x FastAPI + PyTorch eager",
                _div(_figure(c32, "images_per_s"), _figure(torch_c32, "images_per_s")),
                3.5,
                True,
            )
            add(
                key,
                "c=32 >= 2x BentoML (334 img/s, from issue 7)",
                _div(_figure(c32, "images_per_s"), BENTOML_C32["fastnet"]),
                2.0,
                True,
            )
    return rows


def _burst(report: dict[str, Any], server: str, model: str) -> dict[str, Any] | None:
    for entry in report["servers"]:
        if entry["name"] == server:
            burst: dict[str, Any] | None = entry["models"].get(model, {}).get("burst")
            return burst
    return None


# --------------------------------------------------------------------------- markdown


def _n(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> Iterator[str]:
    yield "| " + " | ".join(header) + " |"
    yield "|" + "|".join("---" for _ in header) + "|"
    for row in rows:
        yield "| " + " | ".join(row) + " |"


def markdown(report: dict[str, Any]) -> str:
    """The whole report as markdown: context, every table, ratios, targets, references."""
    machine, versions, settings = report["machine"], report["versions"], report["settings"]
    lines = [
        f"# imgzoo bench serve, {report['date']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, affinity "
        f"{machine['affinity']}, {machine['available_cpus']} available to the service; "
        f"load average {machine['loadavg_before']} before, {machine['loadavg_after']} after.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        f"Method: closed-loop keep-alive HTTP/1.1 clients in a separate process "
        f"({settings['client']}), concurrency {settings['concurrency']}, "
        f"{settings['warmup_s']:g} s warm-up then {settings['duration_s']:g} s measured per point, "
        f"median of {settings['repeats']} repeat(s); latencies of 2xx answers, client side. "
        f"Images: {settings['images']['source']}, {settings['images']['count']} in the set. "
        f"{report['weights_note']}",
        "",
        "## Ceiling: in-process ONNX Runtime, no HTTP",
        "",
    ]
    rows = [
        [
            key,
            str(c["batch_size"]),
            str(c["threads"]),
            _n(c["decode_and_run_images_per_s"]),
            _n(c["run_only_images_per_s"]),
        ]
        for key, c in report["ceiling"].items()
    ]
    header = ["model", "batch", "threads", "decode + run img/s", "run only img/s"]
    lines += [*_table(header, rows), ""]

    for model in report["models"]:
        key = model["key"]
        kinds = [k for k in settings["kinds"] if _measured(report, key, k)]
        for kind in kinds:
            per_request = _images_per_request(report, key, kind)
            lines += [
                f"## {key} ({model['architecture']}): {kind}, {per_request} image(s) per request",
                "",
            ]
            rows = []
            for entry in report["servers"]:
                data = entry["models"].get(key, {}).get("kinds", {}).get(kind)
                if data is None:
                    continue
                for p in data["points"]:
                    rows.append(
                        [
                            SERVER_LABELS[entry["name"]],
                            str(p["concurrency"]),
                            _n(p["images_per_s"]),
                            _n(p["requests_per_s"]),
                            _n(p["p50_ms"], 2),
                            _n(p["p95_ms"], 2),
                            _n(p["p99_ms"], 2),
                            _errors(p),
                        ]
                    )
            header = ["server", "c", "img/s", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"]
            lines += [*_table(header, rows), ""]

    lines += ["## Ratios: single-image multipart, img/s", ""]
    rows = [
        [
            key,
            str(r["concurrency"]),
            _n(r["imgzoo"]),
            _x(r["imgzoo_over_ceiling"]),
            _x(r["imgzoo_over_torch_naive"]),
            _x(r["imgzoo_over_ort_naive"]),
            _x(r["imgzoo_over_bentoml_issue_7"]),
        ]
        for key, rs in report["ratios"].items()
        for r in rs
    ]
    header = [
        "model",
        "c",
        "imgzoo img/s",
        "/ ceiling",
        "/ PyTorch naive",
        "/ ORT naive",
        "/ BentoML (issue 7)",
    ]
    lines += [*_table(header, rows), ""]

    bursts = [
        (entry["name"], key, data["burst"])
        for entry in report["servers"]
        for key, data in entry["models"].items()
        if data.get("burst")
    ]
    if bursts:
        c = settings["burst"]["concurrency"]
        lines += [
            f"## Burst check: c=1 fresh, {settings['burst']['seconds']:g} s at c={c}, c=1 again",
            "",
        ]
        rows = [
            [
                SERVER_LABELS[name],
                key,
                _n(b["fresh"]["requests_per_s"]),
                _n(b["fresh"]["p50_ms"], 2),
                _n(b["burst"]["requests_per_s"]),
                _n(b["after"]["requests_per_s"]),
                _n(b["after"]["p50_ms"], 2),
                _x(b["after_over_fresh"]),
            ]
            for name, key, b in bursts
        ]
        header = [
            "server",
            "model",
            "fresh req/s",
            "fresh p50 ms",
            f"c={c} req/s",
            "after req/s",
            "after p50 ms",
            "after / fresh",
        ]
        lines += [*_table(header, rows), ""]

    if report["targets_issue_7"]:
        lines += ["## Targets of issue 7 (on this run's figures)", ""]
        rows = [
            [t["model"], t["target"], f"{t['value']:.3g}", "yes" if t["met"] else "**no**"]
            for t in report["targets_issue_7"]
        ]
        lines += [*_table(["model", "target", "this run", "met"], rows), ""]

    lines += [
        "## Reference figures from issue 7 (not measured by this run)",
        "",
        f"From issue 7: {ISSUE_7_METHOD}; requests per second.",
        "",
    ]
    rows = [
        [
            arch,
            r["server"],
            _n(r.get("c1"), 0)
            + (f" (p50 {r['c1_p50_ms']} ms)" if "c1_p50_ms" in r else "")
            + (f", {r['c1_after_burst']} after a burst" if "c1_after_burst" in r else ""),
            _n(r.get("c32"), 0),
        ]
        for arch, table in ISSUE_7.items()
        for r in table
    ]
    lines += [*_table(["network", "server (from issue 7)", "c=1", "c=32"], rows), ""]
    return "\n".join(lines)


def _measured(report: dict[str, Any], key: str, kind: str) -> bool:
    return any(kind in e["models"].get(key, {}).get("kinds", {}) for e in report["servers"])


def _images_per_request(report: dict[str, Any], key: str, kind: str) -> int:
    for entry in report["servers"]:
        data = entry["models"].get(key, {}).get("kinds", {}).get(kind)
        if data is not None:
            return int(data["images_per_request"])
    return 1


def _errors(p: dict[str, Any]) -> str:
    if not p["errors"]:
        return "0"
    kinds = ", ".join(f"{k} {v}" for k, v in p["error_kinds"].items())
    return f"{p['errors']} ({kinds})"


# --------------------------------------------------------------------------- plot


# imgzoo's other request kinds: one line style and marker each, in imgzoo's colour.
_KIND_STYLES = {
    "single": ("-", "o"),
    "multi": ("--", "s"),
    "raw": ("-.", "^"),
    "v2-uint8": (":", "D"),
    "v2-bytes": ((0, (5, 1, 1, 1)), "v"),
}


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput and p50 / p99 latency against concurrency: one row per model, a line per
    server (single-image multipart), imgzoo's other request kinds in its colour with their
    own line styles, the ceiling dotted black; one legend for the figure, below it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    figure, axes = plt.subplots(
        len(models), 2, figsize=(12, 1.2 + 3.8 * len(models)), squeeze=False, layout="constrained"
    )
    concurrency = report["settings"]["concurrency"]
    legend: dict[str, Any] = {}
    for row, model in enumerate(models):
        key = model["key"]
        throughput, latency = axes[row]
        for entry in report["servers"]:
            name = entry["name"]
            color = SERVER_COLORS[name]
            for kind, data in entry["models"].get(key, {}).get("kinds", {}).items():
                xs = [p["concurrency"] for p in data["points"]]
                ys = [p["images_per_s"] for p in data["points"]]
                style, marker = _KIND_STYLES[kind]
                label = SERVER_LABELS[name] + ("" if kind == REFERENCE_KIND else f", {kind}")
                (line,) = throughput.plot(
                    xs, ys, linestyle=style, marker=marker, color=color, label=label
                )
                legend.setdefault(f"img/s: {label}", line)
                if kind != REFERENCE_KIND:
                    continue
                for figure_name, linestyle, mark in (("p50", "-", "o"), ("p99", ":", "^")):
                    values = [p[f"{figure_name}_ms"] for p in data["points"]]
                    (line,) = latency.plot(
                        xs, values, linestyle=linestyle, marker=mark, color=color
                    )
                    legend.setdefault(f"{figure_name}: {SERVER_LABELS[name]}", line)
        ceiling = report["ceiling"].get(key, {}).get("decode_and_run_images_per_s")
        if ceiling:
            line = throughput.axhline(ceiling, color="black", linestyle=":")
            legend.setdefault("img/s: in-process ORT ceiling (decode + run, batch 64)", line)
        for ax in (throughput, latency):
            ax.set_xscale("log", base=2)
            ax.set_xticks(concurrency, [str(c) for c in concurrency])
            ax.set_xlabel("concurrent connections")
            ax.grid(True, alpha=0.3)
        throughput.set_ylabel("images / s")
        throughput.set_ylim(bottom=0)
        throughput.set_title(f"{key} ({model['architecture']}): throughput")
        latency.set_yscale("log")
        latency.set_ylabel("ms, single-image requests")
        latency.set_title(f"{key}: p50 (solid) and p99 (dotted) latency")
    figure.legend(
        list(legend.values()), list(legend), loc="outside lower center", ncols=3, fontsize=7
    )
    figure.suptitle(f"imgzoo bench serve, {report['machine']['cpu_model']}, {report['date']}")
    figure.savefig(path, dpi=110)
    plt.close(figure)
