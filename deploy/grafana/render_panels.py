"""Render the dashboard's Memory row from a running Prometheus into a PNG, the way Grafana would draw it.

    python deploy/grafana/render_panels.py --prometheus http://127.0.0.1:9090 --out docs/dashboard-memory.png \
        --namespace kvmemo --pod 'kvmemo-.*'
    python deploy/grafana/render_panels.py --scrapes DIR --out docs/dashboard-memory-h200.png

--scrapes: a directory from bench/dashboard_run.py (scrapes.jsonl); its pages are backfilled into a Prometheus
of their own (backfill.py) and the graphs cover their time range. An instant panel (table, bar gauge) there
shows what it showed at the end of each boot, the boots together: an instant query at the end alone would show
only the boot still running.

The tests run it against the Prometheus they start (tests/deploy/test_prometheus.py) and over the scrapes of
a CPU run (tests/deploy/test_dashboard_scrapes.py); with KVMEMO_RENDER_DOCS=1 the first writes
docs/dashboard-memory.png.
"""

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DASHBOARD = Path(__file__).with_name("kvmemo-dashboard.json")
UNITS = {"bytes": (2**30, "GiB"), "s": (1, "s"), "none": (1, ""), "short": (1, "")}


def memory_panels(dashboard: dict) -> list[dict]:
    panels, inside = [], False
    for p in dashboard["panels"]:
        if p["type"] == "row":
            inside = p["title"] == "Memory"
        elif inside:
            panels.append(p)
    return panels


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace("$" + name, variables[name])
    return expr


def prometheus(base: str, path: str, **params) -> list:
    with urllib.request.urlopen(f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=30) as r:
        answer = json.load(r)
    if answer["status"] != "success":
        raise RuntimeError(f"{params.get('query')}: {answer.get('error')}")
    return answer["data"]["result"]


def legend(fmt: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip() or str(labels)


def unstacked(panel: dict, name: str) -> bool:
    """Grafana overrides that take a series out of the stack (the device total line)."""
    for o in panel["fieldConfig"].get("overrides", []):
        if o["matcher"]["id"] == "byRegexp" and re.fullmatch(o["matcher"]["options"], name):
            return any(p["id"] == "custom.stacking" and p["value"]["mode"] == "none" for p in o["properties"])
    return False


def draw_timeseries(ax, panel, base, variables, start, end, marks):
    scale, unit = UNITS.get(panel["fieldConfig"]["defaults"].get("unit"), (1, ""))
    stacked = panel["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {}).get("mode") == "normal"
    layers, lines = [], []
    for t in panel["targets"]:
        step = max(1, int((end - start) / 300))
        for series in prometheus(base, "query_range", query=substitute(t["expr"], variables),
                                 start=start, end=end, step=step):
            xs = [float(ts) - end for ts, _ in series["values"]]
            ys = [float(v) / scale for _, v in series["values"]]
            name = legend(t.get("legendFormat", ""), series["metric"])
            (lines if not stacked or unstacked(panel, name) else layers).append((name, xs, ys))
    if layers:
        # query_range evaluates every series at the same steps; a series missing at a step counts 0.
        xs = sorted({x for _, x, _ in layers for x in x})
        ys = [[dict(zip(x, y)).get(t, 0.0) for t in xs] for _, x, y in layers]
        ax.stackplot(xs, ys, labels=[n for n, _, _ in layers], alpha=0.7)
        top = max(map(sum, zip(*ys)))
        # On CPU the "device" is the host: its total would flatten the stack to a line at the bottom.
        off_scale = [(n, x, y) for n, x, y in lines if max(y) > 5 * top]
        lines = [line for line in lines if line not in off_scale]
        for i, (name, _, y) in enumerate(off_scale):
            ax.text(0.99, 0.95 - 0.08 * i, f"{name}: {y[-1]:.1f} {unit} (off scale)", ha="right", va="top",
                    transform=ax.transAxes, fontsize=8)
    for name, xs, ys in lines:
        ax.plot(xs, ys, "--" if stacked else "-", linewidth=2 if stacked else 1.2, label=name)
    for name, t in marks.items():
        ax.axvline(t - end, color="grey", linestyle=":", linewidth=1)
        ax.text(t - end, 0.0, f" {name}", transform=ax.get_xaxis_transform(), va="bottom", rotation=90, fontsize=7,
                color="grey")
    if not layers and not lines:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
    else:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if marks:  # over scrapes: the whole run on every graph, so that the two boots' panels line up
        ax.set_xlim(start - end, 0)
    ax.set_xlabel("seconds ago")
    ax.set_ylabel(unit)


def draw_instant(ax, panel, base, variables, instants):
    """A table (labels of each row) or a bar gauge (one bar per series), from an instant query at each of
    `instants`: the series of all of them, a later value replacing an earlier one of the same series."""
    found = {}
    for at in instants:
        for t in panel["targets"]:
            for series in prometheus(base, "query", query=substitute(t["expr"], variables), time=at):
                found[(t["refId"], tuple(sorted(series["metric"].items())))] = (
                    series["metric"], float(series["value"][1]), t.get("legendFormat", ""))
    rows = list(found.values())
    if not rows:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        ax.axis("off")
    elif panel["type"] == "table":
        columns = sorted({k for labels, _, _ in rows for k in labels})
        ax.axis("off")
        table = ax.table(cellText=[[labels.get(c, "") for c in columns] for labels, _, _ in rows],
                         colLabels=columns, loc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
    else:
        names = [legend(fmt, labels) for labels, _, fmt in rows]
        ax.barh(names, [v for _, v, _ in rows], color="tab:blue")
        ax.set_xlabel(UNITS.get(panel["fieldConfig"]["defaults"].get("unit"), (1, ""))[1])
        ax.tick_params(axis="y", labelsize=7)


def pods(base: str, variables: dict[str, str], start: float, end: float) -> list[str]:
    """The pods with series in the time range, as Grafana's label_values() lists them."""
    selector = substitute('kvmemo_kv_cache_memory_bytes{namespace=~"$namespace", model_name=~"$model", pod=~"$pod"}',
                          variables)
    return sorted(r["metric"]["pod"] for r in prometheus(
        base, "query", query=f"count by (pod) (count_over_time({selector}[{max(1, round(end - start))}s]))", time=end))


def render(base: str, out: Path, variables: dict[str, str], start: float, end: float,
           instants: list[float] | None = None, marks: dict[str, float] | None = None, title: str = "") -> None:
    """instants: when the instant panels are evaluated (default: at the end); marks: named moments drawn
    as vertical lines on the graphs."""
    # A panel that repeats by pod is drawn once per pod, as Grafana does.
    drawn = []
    for panel in memory_panels(json.loads(DASHBOARD.read_text())):
        for pod in pods(base, variables, start, end) if panel.get("repeat") == "pod" else [None]:
            drawn.append((panel, {**variables, "pod": pod} if pod else variables))
    fig, axes = plt.subplots(len(drawn), 1, figsize=(12, 3.4 * len(drawn)))
    for ax, (panel, values) in zip(axes, drawn):
        ax.set_title(substitute(panel["title"], values), loc="left", fontsize=11)
        if panel["type"] == "timeseries":
            draw_timeseries(ax, panel, base, values, start, end, marks or {})
        else:
            draw_instant(ax, panel, base, values, instants or [end])
    fig.suptitle(title or f"kvmemo — Memory (namespace {variables['namespace']}, model {variables['model']})",
                 fontsize=13)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)


def render_scrapes(directory: Path, out: Path, variables: dict[str, str], prometheus_bin: str, promtool: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from backfill import pod_of, prometheus_over, read_scrapes  # only for --scrapes: it needs promtool and Prometheus

    scrapes = read_scrapes(directory)
    if scrapes.unreadable_lines:
        print(f"{directory / 'scrapes.jsonl'}: {scrapes.unreadable_lines} unreadable lines skipped", file=sys.stderr)
    summary_file = directory / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    boots = sorted(scrapes.boots, key=lambda b: scrapes.boots[b][0])
    title = (f"kvmemo — Memory: {summary.get('model', variables['model'])} on {summary.get('device', 'an unnamed device')}, "
             + ", then ".join(f"{pod_of(b)}" for b in boots))
    marks = {f"{b} boot": scrapes.boots[b][0] for b in boots}
    for boot in summary.get("boots", []):  # bench/dashboard_run.py knows when each process started and served
        marks.pop(f"{boot['name']} boot", None)
        marks[f"{boot['name']} start"] = boot["started_at"]
        if boot["ready_s"] is not None:
            marks[f"{boot['name']} serving"] = boot["started_at"] + boot["ready_s"]
    with prometheus_over(scrapes, prometheus_bin, promtool) as base:
        render(base, out, variables, min(scrapes.start, *marks.values()), scrapes.end,
               instants=[scrapes.boots[b][1] for b in boots], marks=marks, title=title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", help="base URL, e.g. http://127.0.0.1:9090")
    source.add_argument("--scrapes", type=Path, help="a directory of bench/dashboard_run.py's scrapes")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--namespace", default=".*")
    parser.add_argument("--model", default=".*")
    parser.add_argument("--pod", default=".*")
    parser.add_argument("--minutes", type=float, default=5.0, help="time range of the graphs (with --prometheus)")
    parser.add_argument("--prometheus-bin", default="prometheus", help="with --scrapes: the Prometheus to start")
    parser.add_argument("--promtool", default="promtool", help="with --scrapes: the promtool that backfills")
    args = parser.parse_args()
    variables = {"namespace": args.namespace, "model": args.model, "pod": args.pod, "__rate_interval": "30s"}
    if args.scrapes:
        if not (args.scrapes / "scrapes.jsonl").is_file():
            parser.error(f"--scrapes {args.scrapes}: no scrapes.jsonl in it (bench/dashboard_run.py writes one)")
        try:
            render_scrapes(args.scrapes, args.out, variables, args.prometheus_bin, args.promtool)
        # A missing promtool, a failed backfill, no scrapes; AssertionError: Prometheus did not start (its log tail).
        except (OSError, RuntimeError, ValueError, AssertionError) as e:
            sys.exit(f"render_panels.py --scrapes {args.scrapes}: {e}")
    else:
        end = time.time()
        render(args.prometheus.rstrip("/"), args.out, variables, end - args.minutes * 60, end)


if __name__ == "__main__":
    main()
