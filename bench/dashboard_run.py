"""Samples for the dashboard picture: a real `kvmemo serve` under load, its /metrics scraped every few seconds
from its start until it stops; a cold boot (empty plan store and kernel cache: it profiles), then a warm
restart on the same plan store and kernel cache (it must log "skipped profiling"), each loaded through the
streaming Generate RPC.

    PYTHONPATH=. python3 bench/dashboard_run.py --out-dir $OUT                      # Llama-3-8B shapes, CUDA
    PYTHONPATH=. python3 bench/dashboard_run.py --out-dir /tmp/d --model tiny --device cpu \\
        --load-seconds 5 --warm-load-seconds 3 --concurrency 4 ...                   # CPU, seconds

Writes under --out-dir (at most 8 files, none in a subfolder, so that all of it comes back from a device run):
scrapes.jsonl (one {"t": wall-clock seconds, "boot": "cold"|"warm", "text": the /metrics page} a line),
serve-cold.log, serve-warm.log, the plan file the cold boot wrote, and summary.json. Render the picture with
`python deploy/grafana/render_panels.py --scrapes DIR --out PNG`.
"""

import argparse
import asyncio
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import environment, write_json  # noqa: E402
from service.proto.kvmemo.v1 import kvmemo_pb2 as pb  # noqa: E402
from service.proto.kvmemo.v1 import kvmemo_pb2_grpc as pb_grpc  # noqa: E402
from tests.health import serving  # noqa: E402
from tests.ports import free_port  # noqa: E402

SKIPPED_PROFILING = "skipped profiling"


@dataclass
class Load:
    """What one load phase did. cut_at_end: requests still streaming when the phase ended (cancelled)."""
    seconds: float = 0.0
    requests_started: int = 0
    requests_done: int = 0
    cut_at_end: int = 0
    output_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class Boot:
    name: str
    command: list[str]
    grpc_port: int
    metrics_port: int
    log: str
    started_at: float = 0.0  # wall clock
    ready_s: float | None = None  # from the process' start to health SERVING
    stopped_s: float | None = None  # from SIGTERM to the process' exit
    exit_code: int | None = None
    failure: str | None = None  # why it never served, when it did not
    skipped_profiling: bool = False
    scrapes: int = 0
    scrape_failures: int = 0  # before its metrics port listened, mostly; or not saved (scrape_write_errors)
    load: Load = field(default_factory=Load)


def scrape_timeout(interval: float) -> float:
    """A server busy with a full batch may answer a scrape late; a scrape late past the next is still kept."""
    return max(5.0, 2 * interval)


class ScrapeLog:
    """scrapes.jsonl, one record a line, shared by the scrapers. A write that fails (a full disk) may leave
    part of its line behind: the next record then starts on a line of its own, and only that part is lost."""

    def __init__(self, path: Path):
        self.file = open(path, "wb", buffering=0)
        self.lock = threading.Lock()
        self.broken = False
        self.write_errors = 0

    def append(self, record: dict) -> bool:
        data = memoryview((json.dumps(record) + "\n").encode())
        with self.lock:
            try:
                if self.broken:
                    self.file.write(b"\n")
                while data:
                    data = data[self.file.write(data):]
                self.broken = False
                return True
            except OSError:
                self.broken, self.write_errors = True, self.write_errors + 1
                return False

    def close(self) -> None:
        self.file.close()


class Scraper(threading.Thread):
    """GETs /metrics every `interval` seconds until the process exits, appending each page to `log`."""

    def __init__(self, boot: Boot, proc: subprocess.Popen, interval: float, log: ScrapeLog):
        super().__init__(daemon=True)
        self.boot, self.proc, self.interval, self.log = boot, proc, interval, log
        self.scraped = threading.Condition()
        self.last_t = 0.0  # when the latest saved scrape began

    def wait_for_scrape_after(self, t: float, timeout: float) -> None:
        with self.scraped:
            self.scraped.wait_for(lambda: self.last_t > t or not self.is_alive(), timeout)

    def run(self) -> None:
        url = f"http://127.0.0.1:{self.boot.metrics_port}/metrics"
        next_at = time.monotonic()
        while self.proc.poll() is None:
            t = time.time()
            try:
                with urllib.request.urlopen(url, timeout=scrape_timeout(self.interval)) as r:
                    text = r.read().decode()
            except (OSError, http.client.HTTPException, UnicodeDecodeError):  # not up yet, or cut off by its exit
                self.boot.scrape_failures += 1
            else:
                if self.log.append({"t": t, "boot": self.boot.name, "text": text}):
                    self.boot.scrapes += 1
                    with self.scraped:
                        self.last_t = t
                        self.scraped.notify_all()
                else:
                    self.boot.scrape_failures += 1
            next_at = max(next_at + self.interval, time.monotonic())  # after a late scrape: no burst to catch up
            time.sleep(max(0.0, next_at - time.monotonic()))


def server_command(args, boot_name: str, grpc_port: int, metrics_port: int, work: Path) -> list[str]:
    policy = args.kv_cache_policy or ("fit-requested" if args.device == "cpu" else "full")
    return [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(grpc_port),
            "--metrics-port", str(metrics_port), "--model", args.model, "--device", args.device,
            "--weights-seed", "0", "--max-model-len", str(args.max_model_len), "--max-num-seqs", str(args.max_num_seqs),
            "--max-num-batched-tokens", str(args.max_num_batched_tokens), "--kv-cache-policy", policy,
            "--plan-store", "file", "--plan-dir", str(work / "plans"), "--kernel-cache-dir", str(work / "kernels"),
            # Room above --concurrency: a finished stream's slot may be freed a moment after its last message.
            "--max-concurrent-requests", str(args.concurrency + 64), "--max-waiting-requests", str(args.concurrency + 64),
            "--drain-grace-seconds", "2", *args.server_arg]


def server_env(work: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["XDG_CACHE_HOME"] = str(work / "xdg-cache")  # nothing of the machine's own caches
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class BootFailed(Exception):
    pass


def wait_ready(boot: Boot, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not serving(boot.grpc_port):
        if proc.poll() is not None:
            raise BootFailed(f"the server exited with {proc.returncode} before it served; see {boot.log}")
        if time.monotonic() > deadline:
            raise BootFailed(f"not SERVING within {timeout:.0f} s; see {boot.log}")
        time.sleep(0.2)
    boot.ready_s = time.time() - boot.started_at


async def drive(port: int, seconds: float, args, rng: random.Random) -> Load:
    """args.concurrency workers, each streaming one Generate after another (random prompt of token ids,
    ignore_eos) until `seconds` are up; whatever is still streaming then is cancelled."""
    load = Load()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.KvmemoServiceStub(channel)
        info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)
        start = time.monotonic()
        end = start + seconds

        async def worker() -> None:
            while time.monotonic() < end:
                max_tokens = rng.randint(args.max_tokens_min, args.max_tokens_max)
                length = min(rng.randint(args.prompt_min, args.prompt_max), info.max_model_len - max_tokens - 1)
                request = pb.GenerateRequest(token_ids=pb.TokenIds(ids=[rng.randrange(10, info.vocab_size)
                                                                        for _ in range(length)]),
                                             max_tokens=max_tokens, sampling=pb.SamplingParameters(temperature=1.0),
                                             stop=pb.StopConditions(ignore_eos=True))
                load.requests_started += 1
                try:
                    async for reply in stub.Generate(request, timeout=max(0.1, end - time.monotonic())):
                        load.output_tokens += len(reply.token_ids)
                    load.requests_done += 1
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                        load.cut_at_end += 1
                    else:
                        key = f"{e.code().name}: {e.details()[:120]}"
                        load.errors[key] = load.errors.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        load.seconds = time.monotonic() - start
    return load


def stop(boot: Boot, proc: subprocess.Popen) -> None:
    t = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        boot.exit_code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        boot.exit_code = proc.wait()
    boot.stopped_s = time.monotonic() - t


def run_boot(args, name: str, load_seconds: float, work: Path, scrapes: ScrapeLog, rng) -> Boot:
    grpc_port, metrics_port = free_port(), free_port()
    boot = Boot(name, server_command(args, name, grpc_port, metrics_port, work), grpc_port, metrics_port,
                str(args.out_dir / f"serve-{name}.log"))
    print(f"{name} boot: {' '.join(boot.command)}", flush=True)
    with open(boot.log, "wb") as log:
        boot.started_at = time.time()
        proc = subprocess.Popen(boot.command, cwd=ROOT, env=server_env(work), stdout=log, stderr=subprocess.STDOUT)
        scraper = Scraper(boot, proc, args.scrape_interval, scrapes)
        scraper.start()
        try:
            wait_ready(boot, proc, args.boot_timeout)
            print(f"{name} boot: SERVING after {boot.ready_s:.1f} s; load for {load_seconds:g} s", flush=True)
            boot.load = asyncio.run(drive(grpc_port, load_seconds, args, rng))
            # The idle server's pages too, at least one: the usage panels fall back to zero.
            scraper.wait_for_scrape_after(time.time(), timeout=args.scrape_interval + 30)
            time.sleep(args.idle_seconds)
        except BootFailed as e:
            boot.failure = str(e)
        finally:
            stop(boot, proc)
            scraper.join(timeout=scrape_timeout(args.scrape_interval) + 5)
    boot.skipped_profiling = SKIPPED_PROFILING in Path(boot.log).read_text(errors="replace")
    print(f"{name} boot: {boot.failure or asdict(boot.load)}, exit {boot.exit_code} after {boot.stopped_s:.1f} s",
          flush=True)
    return boot


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--model", default="llama-3-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--kv-cache-policy", default=None, help="default: full, or fit-requested on cpu")
    ap.add_argument("--max-model-len", type=int, default=4096)
    ap.add_argument("--max-num-seqs", type=int, default=256)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--server-arg", action="append", default=[], help="one more `kvmemo serve` argument (repeatable)")
    ap.add_argument("--scrape-interval", type=float, default=2.0, help="seconds between /metrics scrapes")
    ap.add_argument("--load-seconds", type=float, default=60.0, help="load on the cold boot")
    ap.add_argument("--warm-load-seconds", type=float, default=30.0, help="load on the warm restart")
    ap.add_argument("--idle-seconds", type=float, default=6.0, help="idle after each load, before SIGTERM")
    ap.add_argument("--concurrency", type=int, default=256, help="streams in flight at once")
    ap.add_argument("--prompt-min", type=int, default=128, help="prompt tokens, uniform in [min, max]")
    ap.add_argument("--prompt-max", type=int, default=3072)
    ap.add_argument("--max-tokens-min", type=int, default=200, help="output tokens, uniform in [min, max]")
    ap.add_argument("--max-tokens-max", type=int, default=500)
    ap.add_argument("--boot-timeout", type=float, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="plan store and kernel cache (default: a new temporary directory, removed at the end)")
    args = ap.parse_args(argv)
    for name in ("prompt", "max_tokens"):
        low, high = getattr(args, f"{name}_min"), getattr(args, f"{name}_max")
        if not 1 <= low <= high:
            ap.error(f"--{name.replace('_', '-')}-min {low} and -max {high}: need 1 <= min <= max")
    if args.max_tokens_max + args.prompt_min >= args.max_model_len:
        ap.error(f"--max-tokens-max {args.max_tokens_max} + --prompt-min {args.prompt_min} must stay below "
                 f"--max-model-len {args.max_model_len}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="kvmemo-dashboard-"))
    rng, began = random.Random(args.seed), time.time()
    boots = []
    scrapes = ScrapeLog(args.out_dir / "scrapes.jsonl")
    try:
        boots.append(run_boot(args, "cold", args.load_seconds, work, scrapes, rng))
        if boots[0].failure is None:
            boots.append(run_boot(args, "warm", args.warm_load_seconds, work, scrapes, rng))
        plans = sorted((work / "plans").glob("*.json"))
        for plan in plans:
            shutil.copy(plan, args.out_dir / f"plan-{plan.name}")
    finally:
        scrapes.close()
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    problems = [f"{b.name} boot: {b.failure}" for b in boots if b.failure]
    problems += [f"{b.name} boot exited with {b.exit_code}" for b in boots if b.exit_code != 0]
    if boots[0].skipped_profiling:
        problems.append("the cold boot skipped profiling: its plan store was not empty")
    if len(boots) == 2 and not boots[1].skipped_profiling:
        problems.append(f'the warm restart did not log "{SKIPPED_PROFILING}" (it profiled again)')
    problems += [f"{b.name} load: {n} x {error}" for b in boots for error, n in b.load.errors.items()]
    if scrapes.write_errors:
        problems.append(f"{scrapes.write_errors} scrapes could not be written to scrapes.jsonl (disk full?)")
    summary = {**environment(), "benchmark": "dashboard_run", "model": args.model, "device_flag": args.device,
               "began_at": began, "ended_at": time.time(), "wall_s": time.time() - began,
               "scrape_interval_s": args.scrape_interval, "settings": {k: str(v) for k, v in vars(args).items()},
               "plans": [f"plan-{p.name}" for p in plans], "boots": [asdict(b) for b in boots],
               "requests_done": sum(b.load.requests_done for b in boots),
               "errors": sum(sum(b.load.errors.values()) for b in boots), "scrape_write_errors": scrapes.write_errors,
               "problems": problems}
    write_json(args.out_dir / "summary.json", summary)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    ready = ", ".join(f"{b.name} ready {b.ready_s:.1f} s" for b in boots if b.ready_s is not None)
    print(f"{ready}; {summary['requests_done']} requests, {summary['errors']} errors, "
          f"{sum(b.scrapes for b in boots)} scrapes, {summary['wall_s']:.0f} s in all")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
