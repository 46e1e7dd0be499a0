"""bench/dashboard_run.py's whole code path on CPU with `tiny`: a cold `kvmemo serve` that profiles and a warm
restart on its plan store, both loaded over gRPC and scraped into scrapes.jsonl. Then those scrapes backfilled
into a real Prometheus (Debian's package), and deploy/grafana/render_panels.py --scrapes drawing from it.
No timing assertions: the numbers are the bench's business."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.render import ROOT

RUN_FLAGS = ["--model", "tiny", "--device", "cpu", "--load-seconds", "4", "--warm-load-seconds", "3",
             "--idle-seconds", "1", "--scrape-interval", "0.5", "--concurrency", "4", "--prompt-min", "8",
             "--prompt-max", "64", "--max-tokens-min", "8", "--max-tokens-max", "32", "--max-model-len", "256",
             "--max-num-seqs", "8", "--max-num-batched-tokens", "256",
             # On CPU "device" memory is the host's, which the cold boot and whatever else runs here have just
             # used: widen the warm boot's free-memory gate, as tests/deploy/test_prometheus.py does.
             "--server-arg=--plan-free-tolerance-bytes=8589934592"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("dashboard-run")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "dashboard_run.py"), "--out-dir", str(out), *RUN_FLAGS],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


def scrapes(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "scrapes.jsonl").read_text().splitlines()]


def test_a_cold_boot_and_a_warm_restart_are_loaded_and_scraped(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["problems"] == [] and summary["errors"] == 0
    cold, warm = summary["boots"]
    assert (cold["name"], warm["name"]) == ("cold", "warm")
    assert not cold["skipped_profiling"] and warm["skipped_profiling"]
    for boot in (cold, warm):
        assert boot["exit_code"] == 0 and boot["failure"] is None
        assert boot["load"]["requests_done"] > 0 and boot["load"]["output_tokens"] > 0
        assert "serve" in boot["command"] and (run_dir / f"serve-{boot['name']}.log").stat().st_size > 0
    # The warm restart found the plan the cold boot wrote; that plan is copied out.
    assert summary["plans"] and all((run_dir / name).exists() for name in summary["plans"])
    assert len(list(run_dir.iterdir())) <= 8  # what comes back from a device run


def test_every_scrape_is_a_timestamped_metrics_page(run_dir):
    pages = scrapes(run_dir)
    times = [p["t"] for p in pages]
    assert times == sorted(times)
    for boot in ("cold", "warm"):
        mine = [p for p in pages if p["boot"] == boot]
        assert mine and all("# TYPE kvmemo_" in p["text"] for p in mine), boot
        # The last page comes after the load: the generated tokens are on it.
        last = [line for line in mine[-1]["text"].splitlines() if line.startswith("kvmemo_generation_tokens_total")]
        assert last and float(last[0].split()[-1]) > 0, boot


def load_backfill():
    spec = importlib.util.spec_from_file_location("grafana_backfill", ROOT / "deploy" / "grafana" / "backfill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def instant(base: str, expr: str, at: float) -> list[dict]:
    from tests.deploy.promstack import api

    port = int(base.rsplit(":", 1)[1])
    answer = api(port, "query", query=expr, time=at)
    assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
    return answer["data"]["result"]


def test_the_backfilled_prometheus_tells_the_boots_apart(run_dir, prometheus_bin, promtool):
    backfill = load_backfill()
    scrapes = backfill.read_scrapes(run_dir)
    (cold_first, cold_last), (warm_first, warm_last) = scrapes.boots["cold"], scrapes.boots["warm"]
    assert cold_last < warm_first
    with backfill.prometheus_over(scrapes, prometheus_bin, promtool) as base:
        sources = {at: {r["metric"]["pod"]: r["metric"]["source"] for r in instant(base, "kvmemo_kv_cache_plan_info", at)}
                   for at in (cold_last, warm_last)}
        # Each boot's series end with its scrapes: at the warm boot's end only the warm boot is there.
        assert sources == {cold_last: {"kvmemo-cold": "profile"}, warm_last: {"kvmemo-warm": "file"}}
        # Every sample of every page went in: the counters' last values are the last pages' values.
        tokens = instant(base, 'kvmemo_generation_tokens_total{pod="kvmemo-warm"}', warm_last)
        page = [line for line in scrapes_of(run_dir, "warm")[-1]["text"].splitlines()
                if line.startswith("kvmemo_generation_tokens_total")]
        assert [float(r["value"][1]) for r in tokens] == [float(page[0].split()[-1])]


def scrapes_of(run_dir, boot: str) -> list[dict]:
    return [p for p in scrapes(run_dir) if p["boot"] == boot]


def test_render_panels_draws_from_the_scrapes(run_dir, prometheus_bin, promtool, tmp_path):
    out = tmp_path / "memory.png"
    p = subprocess.run([sys.executable, str(ROOT / "deploy" / "grafana" / "render_panels.py"), "--scrapes", str(run_dir),
                        "--out", str(out), "--prometheus-bin", prometheus_bin, "--promtool", promtool],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_failed_write_costs_that_scrape_only(tmp_path):
    """/dev/full fails every write as a full disk does; the reader skips what such a write left behind."""
    from bench.dashboard_run import ScrapeLog

    log = ScrapeLog(Path("/dev/full"))
    assert not log.append({"t": 1.0, "boot": "cold", "text": "up 1\n"}) and log.write_errors == 1
    log.close()
    page = "# TYPE kvmemo_requests_running gauge\nkvmemo_requests_running{model_name=\"tiny\"} 3.0\n"
    good = [json.dumps({"t": 100.0 + i, "boot": "cold", "text": page}) for i in range(2)]
    (tmp_path / "scrapes.jsonl").write_text(good[0] + "\n" + good[1][:40] + "\n" + good[1] + "\n")
    scrapes = load_backfill().read_scrapes(tmp_path)
    assert scrapes.unreadable_lines == 1 and scrapes.boots == {"cold": (100.0, 101.0)}
    assert scrapes.openmetrics.count('kvmemo_requests_running{job="kvmemo",model_name="tiny",namespace="kvmemo",'
                                     'pod="kvmemo-cold"} 3.0') == 2
