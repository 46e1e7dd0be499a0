"""What a cluster may leave on the machine: processes that name its workdir, and the full list after a stop."""

import os
import signal
from pathlib import Path

from tests.cluster import network
from tests.containerd import kept_root


def processes_mentioning(workdir: Path) -> list[tuple[int, str]]:
    needle = str(workdir.resolve()).encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            found.append((int(pid), cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]))
    return found


def kill_processes_mentioning(workdir: Path) -> None:
    for pid, _ in processes_mentioning(workdir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def leftovers(workdir: Path, bridge: str, before: network.HostState) -> list[str]:
    """What a stopped cluster left on the machine, measured against `before`; empty after a clean stop."""
    found = [f"process {pid}: {cmd}" for pid, cmd in processes_mentioning(workdir)]
    found += [f"mount {point}" for point in network.mounts_under(workdir) + network.mounts_under(kept_root())]
    found += [f"network namespace {name}" for name in network.new_netns(before)]
    found += [f"iptables: {rule}" for rule in network.new_iptables(before)]
    found += [f"pid namespace {ns} (a container's processes)" for ns in network.new_pid_namespaces(before)]
    if Path(f"/sys/class/net/{bridge}").exists():
        found.append(f"bridge {bridge}")
    return found
