"""`kvmemo controller`: turn the pods' reports into kv-cache plans in the kvmemo ConfigMaps."""

import argparse
import logging
import os
import signal
import socket
import threading

from controller.reconcile import Settings
from service.contract.keys import POLICIES
from service.contract.keys import PART_OF_LABEL

log = logging.getLogger("kvmemo.controller")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> float:
    """Seconds from `90`, `90s`, `15m`, `12h` or `7d`."""
    unit = text[-1:] if text[-1:] in DURATION_UNITS else "s"
    number = text[:-1] if text[-1:] in DURATION_UNITS else text
    try:
        seconds = float(number) * DURATION_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"duration {text!r} is not a number with an optional s/m/h/d") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
    return seconds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                        help="namespace to watch (default: $POD_NAMESPACE, else `default`)")
    parser.add_argument("--label-selector", default=PART_OF_LABEL,
                        help="which ConfigMaps hold kvmemo plans (default: %(default)s)")
    parser.add_argument("--policy", choices=POLICIES, default="fit-requested",
                        help="fit-requested: the utilization the pods asked for; full: all free memory "
                             "(default: %(default)s)")
    parser.add_argument("--headroom-percent", type=float, default=0.0,
                        help="keep this share of the suggestion free (default: %(default)s)")
    parser.add_argument("--oom-step-percent", type=float, default=10.0,
                        help="lower a plan by this much below the size that ran out of memory (default: %(default)s)")
    parser.add_argument("--plan-ttl", type=duration, default=duration("7d"),
                        help="prune plans and reports whose fingerprint was not reported for this long "
                             "(default: 7d)")
    parser.add_argument("--resync-period", type=duration, default=duration("5m"),
                        help="list everything again this often (pruning needs time to pass, not events) "
                             "(default: 5m)")
    parser.add_argument("--event-interval", type=duration, default=60.0,
                        help="Events of one reason on one ConfigMap are aggregated: the first at once, then "
                             "their count at most this often (default: 60s)")
    parser.add_argument("--lease-name", default="kvmemo-controller",
                        help="the Lease of leader election; only its holder writes plans (default: %(default)s)")
    parser.add_argument("--identity", default=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
                        help="this replica's name in the Lease (default: $POD_NAME, else host-pid)")
    parser.add_argument("--lease-duration", type=duration, default=15.0,
                        help="how long a leader's Lease lasts without renewal (default: 15s)")
    parser.add_argument("--renew-deadline", type=duration, default=10.0,
                        help="a leader that cannot renew within this steps down (default: 10s)")
    parser.add_argument("--retry-period", type=duration, default=2.0,
                        help="how often to try to acquire or renew the Lease (default: 2s)")
    parser.add_argument("--http-address", default="0.0.0.0",
                        help="address of the HTTP endpoints (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=8081,
                        help="port of /metrics, /healthz, /readyz (default: %(default)s)")
    parser.add_argument("--kubeconfig", default=None, help="default: in-cluster service account, else $KUBECONFIG")


def main(args: argparse.Namespace) -> int:
    from kubernetes import client

    from controller import http, metrics
    from controller.leader import LeaderElector
    from controller.liveness import RECONCILE_BOUND_SECONDS, WATCH_BOUND_SECONDS, Heartbeats
    from controller.loop import Reconciler
    from controller.watch import ConfigMapWatcher
    from service.contract.client import load_api_client

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings(args.policy, args.headroom_percent, args.oom_step_percent, args.plan_ttl)
        api = load_api_client(args.kubeconfig)
    except Exception as exc:  # noqa: BLE001 - a bad flag or kubeconfig is a usage error
        log.error("%s", exc)
        return 2
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()
        raise SystemExit(0)  # interrupts the blocking watch read in the main thread

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    elector = LeaderElector(client.CoordinationV1Api(api), args.namespace, args.lease_name, args.identity,
                            args.lease_duration, args.renew_deadline, args.retry_period,
                            on_change=lambda leading: metrics.IS_LEADER.set(1 if leading else 0))
    reconciler = Reconciler(client.CoreV1Api(api), settings, args.identity, elector.is_leader,
                            event_interval=args.event_interval)
    watcher = ConfigMapWatcher(client.CoreV1Api(api), args.namespace, args.label_selector, reconciler.enqueue,
                               resync_seconds=args.resync_period)

    def ready() -> tuple[bool, str]:
        if not elector.reachable.is_set():
            return False, "the apiserver did not answer the last lease request"
        if elector.is_leader() and not watcher.synced.is_set():
            return False, "leader, listing ConfigMaps"
        return True, "leader" if elector.is_leader() else "standby"

    leader_thread = threading.Thread(target=elector.run, args=(stop,), name="lease", daemon=True)
    reconcile_thread = threading.Thread(target=reconciler.run, args=(stop,), name="reconcile", daemon=True)
    beats = Heartbeats({"watch": WATCH_BOUND_SECONDS, "reconcile": RECONCILE_BOUND_SECONDS},
                       threads={"lease": leader_thread, "reconcile": reconcile_thread})
    watcher.beat, reconciler.beat = beats.beater("watch"), beats.beater("reconcile")
    server = http.serve(args.http_address, args.http_port, ready, beats.health)
    leader_thread.start()
    reconcile_thread.start()
    log.info("controller %s: namespace %s, selector %s, %s, metrics on :%d", args.identity, args.namespace,
             args.label_selector, settings, server.server_address[1])
    try:
        while not stop.is_set():
            if not elector.is_leader():
                watcher.beat()  # a standby's watch loop is this wait
                stop.wait(0.2)
                continue
            watcher.synced.clear()
            watcher.run(elector.is_leader, stop)
    finally:
        stop.set()
        leader_thread.join(timeout=10)  # releases the lease so a standby takes over at once
        server.shutdown()
    return 0
