"""Report-to-plan latency of `kvmemo controller` on a real apiserver (tests/envtest), the reconciles a
burst of reports costs, and the annotation size of 100 fingerprints. Writes
bench/results/controller-<date>.json.

    python -m bench.controller [--reports 200] [--pods 50] [--fingerprints 10] [--burst 100]

Each report is merged by a simulated pod (its own service-account token, the service's ConfigMapStore)
and lowers its fingerprint's minimum suggestion, so every report must change a plan; the latency is from
the report write returning to a watch seeing the plan at or below that report's suggestion. The burst:
10 pods write `--burst` reports as fast as they can; the number is how many reconciles (every outcome of
kvmemo_controller_reconcile_total) the controller ran until the plans were right and it went quiet, the
median of `--bursts` runs (it varies with how the pods' writes interleave). The flood (issue 14 item 8):
`--flood` junk report annotations (`{}`, then rewritten as `[]`, 50 per write, two writers, over and over)
in the ConfigMap while `--flood-reports` real reports are written one after another; the latency is from
each real report's write returning to a watch seeing its plan, with the ReportRejected Events posted, the
controller's resident memory and mean reconcile computation, and what one PATCH of the flooded ConfigMap
costs the apiserver alone once the flood is over (the floor under any plan write). The admins' client writes all of it: the admission policy keeps
the pods' own token to 128 report annotations (tests/k8s/test_controller.py floods with that token).
"""

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as `python bench/controller.py` too

import tests.envtest as envtest  # noqa: E402
from service.contract.keys import MAX_PODS_PER_REPORT, PLAN_PREFIX, plan_key  # noqa: E402
from service.publish import ConfigMapStore, PublishError  # noqa: E402
from tests.envtest.clients import admin_client, token_client, token_kubeconfig  # noqa: E402
from tests.k8s.kube import get_configmap, new_namespace, ready, scrape, start_controller, wait_for  # noqa: E402
from tests.k8s.reports import GiB, record, report  # noqa: E402
from tests.ports import free_port  # noqa: E402


class PlanWatch:
    """Records, per fingerprint, when each plan value was first seen."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.seen: dict[str, list[tuple[float, int]]] = {}
        self.cond = threading.Condition()
        self.api, self.namespace = api, namespace
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        resp = client.CoreV1Api(self.api).list_namespaced_config_map(
            self.namespace, watch=True, field_selector="metadata.name=kvmemo", _preload_content=False)
        try:
            self._consume(resp)
        except Exception:  # noqa: BLE001 - the apiserver stopping at the end of the run
            pass

    def _consume(self, resp):
        for line in iter_resp_lines(resp):
            now = time.perf_counter()
            data = json.loads(line)["object"].get("data") or {}
            with self.cond:
                for key, raw in data.items():
                    fp, kv = key.removeprefix(PLAN_PREFIX), json.loads(raw)["kv_cache_memory_bytes"]
                    values = self.seen.setdefault(fp, [])
                    if not values or values[-1][1] != kv:
                        values.append((now, kv))
                self.cond.notify_all()

    def wait_at_most(self, fp: str, kv: int, timeout: float = 30.0) -> float:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(v <= kv for _, v in self.seen.get(fp, [])), timeout)
            if not ok:
                raise TimeoutError(f"plan {fp} never reached {kv} within {timeout} s")
            return next(t for t, v in self.seen[fp] if v <= kv)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


@contextlib.contextmanager
def running_controller(plane, admin, tmp: Path, prefix: str):
    """A fresh namespace and a ready controller process on it: yields (namespace, metrics port)."""
    namespace = new_namespace(admin, prefix)
    kubeconfig = token_kubeconfig(plane, tmp / f"{prefix}.kubeconfig", namespace, "kvmemo-controller")
    port = free_port()
    controller = start_controller(kubeconfig, namespace, port, tmp / f"{prefix}.log")
    try:
        wait_for(lambda: ready(port), timeout=60, what="the controller ready")
        yield namespace, port
    finally:
        controller.terminate()
        controller.wait(10)


def latency(plane, admin, tmp: Path, reports: int, pods: int, fingerprints: int) -> list[float]:
    with running_controller(plane, admin, tmp, "bench") as (namespace, _):
        watch = PlanWatch(admin, namespace)
        stores = []
        for i in range(pods):
            api = token_client(plane, namespace, "kvmemo")
            stores.append(ConfigMapStore("kvmemo", namespace, f"kvmemo-{i:02d}", api))
        fps = [f"{i:012x}" for i in range(fingerprints)]
        samples = []
        for n in range(reports):
            fp = fps[n % fingerprints]
            rec = record(fp=fp, weights=10 * GiB + n * (1 << 20))  # heavier each time: a lower suggestion
            stores[n % pods].merge_report(rec)
            written = time.perf_counter()
            samples.append(watch.wait_at_most(fp, rec["suggestions"]["fit_requested_bytes"]) - written)
        return samples


RESULTS = ("written", "unchanged", "conflict", "error")


def reconciles(port: int) -> dict[str, int]:
    return {r: int(scrape(port, "kvmemo_controller_reconcile_total", {"result": r}) or 0) for r in RESULTS}


def burst(plane, admin, tmp: Path, reports: int, name: str = "burst", pods: int = 10, fingerprints: int = 10) -> dict:
    with running_controller(plane, admin, tmp, name) as (namespace, port):
        stores = [ConfigMapStore("kvmemo", namespace, f"kvmemo-{i:02d}", token_client(plane, namespace, "kvmemo"))
                  for i in range(pods)]
        fps = [f"{i:012x}" for i in range(fingerprints)]
        wait_for(lambda: reconciles(port)["unchanged"] >= 1, what="the controller's first list")
        before = reconciles(port)
        recs = [record(fp=fps[n % fingerprints], weights=10 * GiB + n * (1 << 20)) for n in range(reports)]
        lowest: dict[str, int] = {}
        for rec in recs:
            fp = rec["fingerprint"][:12]
            lowest[fp] = min(lowest.get(fp, 1 << 62), rec["suggestions"]["fit_requested_bytes"])
        def write(store: ConfigMapStore, rec: dict, attempts: int = 100) -> None:
            # As the Publisher does: 10 pods at once can run a store out of its 409 retries. Bounded, so that
            # a persistent error ends the bench instead of spinning.
            for attempt in range(attempts):
                try:
                    return store.merge_report(rec)
                except PublishError:
                    if attempt == attempts - 1:
                        raise

        threads = [threading.Thread(target=lambda i: [write(stores[i], r) for r in recs[i::pods]], args=(i,))
                   for i in range(pods)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        def settled() -> bool:
            data = get_configmap(admin, namespace).get("data") or {}
            return all(json.loads(data.get(plan_key(fp), '{"kv_cache_memory_bytes": -1}'))
                       ["kv_cache_memory_bytes"] == kv for fp, kv in lowest.items())
        wait_for(settled, timeout=60, what="the plans of the burst")
        converged = time.perf_counter() - started
        quiet, last = time.monotonic(), reconciles(port)
        while time.monotonic() - quiet < 2.0:  # its own last write's echo still counts
            time.sleep(0.2)
            if (now := reconciles(port)) != last:
                quiet, last = time.monotonic(), now
        delta = {r: last[r] - before[r] for r in RESULTS}
        return {"reports": reports, "pods": pods, "fingerprints": fingerprints,
                "reconciles": sum(delta.values()), "by_result": delta, "seconds_to_plans": round(converged, 2)}


def flood(plane, admin, tmp: Path, junk: int, reports: int) -> dict:
    with running_controller(plane, admin, tmp, "flood") as (namespace, port):
        watch = PlanWatch(admin, namespace)
        core = client.CoreV1Api(admin)
        keys = [f"kvmemo.io/report.{i:012x}" for i in range(1 << 40, (1 << 40) + junk)]
        stop, writes = threading.Event(), []

        def write_junk(part: list[str]):
            n = 0
            while not stop.is_set():
                value = "{}" if n % 2 == 0 else "[]"
                for i in range(0, len(part), 50):
                    core.patch_namespaced_config_map("kvmemo", namespace, {"metadata": {"annotations": {
                        k: value for k in part[i:i + 50]}}}, _content_type="application/merge-patch+json")
                    n += 1
            writes.append(n)

        writers = [threading.Thread(target=write_junk, args=(keys[i::2],)) for i in range(2)]
        for w in writers:
            w.start()
        try:
            wait_for(lambda: (scrape(port, "kvmemo_controller_reports_rejected_total", {"reason": "schema"}) or 0)
                     >= junk, timeout=300, what="every junk annotation rejected once")
            samples = []
            for n in range(reports):
                fp = f"{n:012x}"
                rec = report(fp=fp)
                core.patch_namespaced_config_map("kvmemo", namespace, {"metadata": {"annotations": {
                    f"kvmemo.io/report.{fp}": json.dumps(rec)}}}, _content_type="application/merge-patch+json")
                written = time.perf_counter()
                samples.append(watch.wait_at_most(fp, rec["suggestions"]["fit_requested_bytes"]) - written)
        finally:
            stop.set()
            for w in writers:
                w.join()
        # What one write of this ConfigMap costs the apiserver alone, the flood over: the floor under any plan.
        patch_seconds = []
        for n in range(9):
            started = time.perf_counter()
            core.patch_namespaced_config_map("kvmemo", namespace, {"data": {"bench-probe": str(n)}},
                                             _content_type="application/merge-patch+json")
            patch_seconds.append(time.perf_counter() - started)
        computed = [scrape(port, f"kvmemo_controller_reconcile_seconds_{s}") or 0 for s in ("sum", "count")]
        rejected = [e for e in core.list_namespaced_event(namespace).items if e.reason == "ReportRejected"]
        return {"junk_annotations": junk, "junk_writes": sum(writes), "reports": reports,
                "report_to_plan_p50_ms": round(percentile(samples, 50) * 1000, 1),
                "report_to_plan_max_ms": round(max(samples) * 1000, 1),
                "report_rejected_event_objects": len(rejected),
                "report_rejected_event_count": sum(e.count or 0 for e in rejected),
                "reconciles_by_result": reconciles(port),
                "controller_reconcile_mean_ms": round(computed[0] / max(1, computed[1]) * 1000, 1),
                "apiserver_patch_p50_ms_after_flood": round(percentile(patch_seconds, 50) * 1000, 1),
                "controller_rss_mib": round((scrape(port, "process_resident_memory_bytes") or 0) / 2 ** 20, 1),
                "target_max_ms": 1000}


def annotation_bytes(plane, admin, count: int = 100, pods_per_report: int = MAX_PODS_PER_REPORT) -> int:
    """Every report at its full pod list: the most 100 fingerprints can take with Deployment pod names."""
    namespace = new_namespace(admin, "size")
    stores = [ConfigMapStore("kvmemo", namespace, f"kvmemo-6f7d9c8b5-{i:05d}", token_client(plane, namespace, "kvmemo"))
              for i in range(pods_per_report)]
    for i in range(count):
        for s in stores:
            s.merge_report(record(fp=f"{i:012x}"))
    annotations = get_configmap(admin, namespace)["metadata"]["annotations"]
    return sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument("--pods", type=int, default=50)
    parser.add_argument("--fingerprints", type=int, default=10)
    parser.add_argument("--burst", type=int, default=100, help="reports in the burst")
    parser.add_argument("--bursts", type=int, default=5, help="bursts to run, each in a fresh namespace")
    parser.add_argument("--flood", type=int, default=7500, help="junk report annotations in the flood")
    parser.add_argument("--flood-reports", type=int, default=10, help="real reports timed during the flood")
    parser.add_argument("--only-flood", action="store_true", help="run the flood case alone")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / f"controller-{date.today()}.json")
    args = parser.parse_args()
    plane = envtest.start(log=sys.stderr)
    try:
        with admin_client(plane) as admin:
            flooded = flood(plane, admin, plane.workdir, args.flood, args.flood_reports)
            if not args.only_flood:
                samples = latency(plane, admin, plane.workdir, args.reports, args.pods, args.fingerprints)
                bursts = [burst(plane, admin, plane.workdir, args.burst, f"burst-{i}") for i in range(args.bursts)]
                size = annotation_bytes(plane, admin)
    finally:
        envtest.remove(plane)
    import kubernetes
    result = {"flood": flooded} if args.only_flood else {
        "report_to_plan_p50_ms": round(percentile(samples, 50) * 1000, 1),
        "report_to_plan_p99_ms": round(percentile(samples, 99) * 1000, 1),
        "report_to_plan_max_ms": round(max(samples) * 1000, 1),
        "reports": len(samples), "pods": args.pods, "fingerprints": args.fingerprints,
        "bursts": bursts, "reconciles_per_burst": percentile([b["reconciles"] for b in bursts], 50),
        "annotation_bytes_100_fingerprints": size, "pods_per_fingerprint": MAX_PODS_PER_REPORT,
        "annotation_limit_bytes": 256 * 1024,
        "target_p50_ms": 200, "flood": flooded,
    }
    result |= {
        "device": f"CPU only: {cpu_model()}, {os.cpu_count()} cores",
        "versions": {"kube-apiserver": plane.binaries.kubernetes_version, "etcd": plane.binaries.etcd_version,
                     "python": platform.python_version(), "kubernetes-client": kubernetes.__version__},
        "command": " ".join(["python -m bench.controller", *sys.argv[1:]]),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip() or "unknown",
        "date": str(date.today()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
