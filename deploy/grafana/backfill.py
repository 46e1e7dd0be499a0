"""A real Prometheus over saved /metrics scrapes (bench/dashboard_run.py's scrapes.jsonl): the pages become
OpenMetrics with their timestamps, `promtool tsdb create-blocks-from openmetrics` backfills them into a TSDB
of its own, and a Prometheus on loopback serves queries over it.

Two things differ from a Prometheus that scraped the processes itself, and both are made up for here:
- a backfilled series has no staleness marker when its process stops, so Prometheus runs with a lookback
  (--query.lookback-delta) just above the largest gap between two scrapes: a stopped boot's series end
  that long after its last scrape, instead of 5 minutes;
- each boot gets a pod label of its own (kvmemo-cold, kvmemo-warm), so that the two boots' series never
  meet in one join (a restarted container keeps its pod name; the staleness markers keep the two apart).
"""

import contextlib
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deploy.grafana.local_prometheus import free_port, start_prometheus, stop  # noqa: E402

NAMESPACE = "kvmemo"


@dataclass
class Scrapes:
    """The samples of a scrape directory: OpenMetrics text, and when each boot's scrapes began and ended."""
    openmetrics: str
    boots: dict[str, tuple[float, float]]  # boot name -> (first scrape, last scrape), wall-clock seconds
    largest_gap_s: float  # between two scrapes of one boot
    unreadable_lines: int  # part of a line a failed write left (bench/dashboard_run.py's ScrapeLog)

    @property
    def start(self) -> float:
        return min(first for first, _ in self.boots.values())

    @property
    def end(self) -> float:
        return max(last for _, last in self.boots.values())


def pod_of(boot: str) -> str:
    return f"kvmemo-{boot}"


def label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def read_scrapes(directory: Path) -> Scrapes:
    """Every sample of every page, grouped by sample name, each group declared `unknown` (PromQL needs no
    types); the pod and namespace labels stand in for what a ServiceMonitor adds."""
    lines: dict[str, list[str]] = {}
    times: dict[str, list[float]] = {}
    unreadable = 0
    for row in (directory / "scrapes.jsonl").read_text().splitlines():
        try:
            page = json.loads(row)
        except json.JSONDecodeError:
            unreadable += 1
            continue
        times.setdefault(page["boot"], []).append(page["t"])
        extra = {"namespace": NAMESPACE, "pod": pod_of(page["boot"]), "job": "kvmemo"}
        for family in text_string_to_metric_families(page["text"]):
            for sample in family.samples:
                labels = ",".join(f'{k}="{label_value(v)}"' for k, v in sorted({**sample.labels, **extra}.items()))
                lines.setdefault(sample.name, []).append(f"{sample.name}{{{labels}}} {number(sample.value)} {page['t']:.3f}")
    if not times:
        raise ValueError(f"{directory / 'scrapes.jsonl'} holds no scrapes")
    text = "".join(f"# TYPE {name} unknown\n" + "\n".join(samples) + "\n" for name, samples in lines.items())
    gaps = [b - a for ts in times.values() for a, b in zip(ts, ts[1:])]
    return Scrapes(text + "# EOF\n", {boot: (min(ts), max(ts)) for boot, ts in times.items()}, max(gaps, default=1.0),
                   unreadable)


@contextlib.contextmanager
def prometheus_over(scrapes: Scrapes, prometheus: str = "prometheus", promtool: str = "promtool"):
    """Yields the base URL of a Prometheus on loopback whose TSDB holds the scrapes (and nothing else)."""
    with tempfile.TemporaryDirectory(prefix="kvmemo-backfill-") as work:
        work = Path(work)
        (work / "scrapes.om").write_text(scrapes.openmetrics)
        done = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(work / "scrapes.om"),
                               str(work / "data")], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"promtool could not backfill the scrapes: {done.stderr.strip()[-2000:]}")
        port = free_port()
        lookback_ms = math.ceil((scrapes.largest_gap_s + 0.25) * 1000)
        proc = start_prometheus(prometheus, {"global": {}}, work, port,  # nothing to scrape
                                "--storage.tsdb.retention.time=100y", f"--query.lookback-delta={lookback_ms}ms")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop(proc)
