"""The cluster's own bridge and subnets, and the host state it must leave as it found it.

Pods live on a bridge and a /24 that this module creates (chosen so that they overlap no address or route
already on the machine); Service IPs come from a second /24 that exists only in kube-proxy's iptables
rules. Nothing here touches an interface, address or rule that the cluster did not create.
"""

import ipaddress
import json
import os
import random
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

NETNS_DIRS = (Path("/run/netns"), Path("/var/run/netns"))
IPTABLES = ("iptables", "ip6tables")


class NetworkError(RuntimeError):
    pass


def _run(*cmd: str) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise NetworkError(f"`{' '.join(cmd)}` failed ({result.returncode}): {result.stderr.strip()[:500]}")
    return result.stdout


@dataclass(frozen=True)
class Subnets:
    bridge: str
    pod_cidr: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        """The bridge's own address: the node IP, where kube-apiserver and the kubelet listen."""
        return str(self.pod_cidr[1])

    @property
    def kubernetes_service_ip(self) -> str:
        return str(self.service_cidr[1])


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    used = []
    for route in json.loads(_run("ip", "-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            used.append(ipaddress.ip_network(dst, strict=False))
    for link in json.loads(_run("ip", "-j", "-4", "addr") or "[]"):
        for addr in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return used


def choose_subnets() -> Subnets:
    """Two free /24s inside 10.200.0.0/13 and a bridge name no interface has."""
    used = _networks_in_use()
    rng = random.Random()
    for _ in range(200):
        base = ipaddress.ip_network(f"10.{rng.randrange(200, 208)}.{rng.randrange(0, 255, 2)}.0/23")
        if not any(base.overlaps(net) for net in used if net.prefixlen > 0):
            pods, services = base.subnets(new_prefix=24)
            return Subnets(f"kvm{rng.randrange(16**6):06x}", pods, services)
    raise NetworkError("no free /23 in 10.200.0.0/13 for the cluster's pod and Service subnets")


def create_bridge(subnets: Subnets) -> None:
    _run("ip", "link", "add", "name", subnets.bridge, "type", "bridge")
    _run("ip", "addr", "add", f"{subnets.gateway}/{subnets.pod_cidr.prefixlen}", "dev", subnets.bridge)
    _run("ip", "link", "set", subnets.bridge, "up")


def delete_bridge(subnets: Subnets) -> None:
    if Path(f"/sys/class/net/{subnets.bridge}").exists():
        _run("ip", "link", "delete", subnets.bridge)


@dataclass
class HostState:
    """What the machine had before the cluster started, so that stop() removes only what it added."""
    iptables: dict[str, str] = field(default_factory=dict)
    netns: set[str] = field(default_factory=set)
    pid_namespaces: set[str] = field(default_factory=set)


def _iptables_save(tool: str) -> str:
    try:
        return _run(f"{tool}-save")
    except (NetworkError, FileNotFoundError):
        return ""


def _netns_names() -> set[str]:
    return {p.name for d in NETNS_DIRS if d.is_dir() for p in d.iterdir()}


def _pid_namespaces() -> set[str]:
    found = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found.add(os.readlink(f"/proc/{pid}/ns/pid"))
            except OSError:
                pass
    return found


def snapshot() -> HostState:
    return HostState({tool: _iptables_save(tool) for tool in IPTABLES}, _netns_names(), _pid_namespaces())


def _rules(save: str) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(table, rule) and (table, user-defined chain) pairs of an iptables-save dump. Built-in chains are
    left out: with the nf_tables backend a table's first use creates them, empty and accepting, which is
    what an absent table does."""
    rules, chains, table = set(), set(), ""
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":") and line.split()[1] == "-":
            chains.add((table, line[1:].split()[0]))
        elif line.startswith("-A "):
            rules.add((table, line))
    return rules, chains


def new_iptables(before: HostState) -> list[str]:
    """Rules and chains present now that were not there before, as iptables-save lines."""
    found = []
    for tool in IPTABLES:
        old_rules, old_chains = _rules(before.iptables.get(tool, ""))
        rules, chains = _rules(_iptables_save(tool))
        found += [f"{tool} -t {t} {r}" for t, r in sorted(rules - old_rules)]
        found += [f"{tool} -t {t} chain {c}" for t, c in sorted(chains - old_chains)]
    return found


def restore_iptables(before: HostState) -> None:
    """Delete the rules, then the chains, that appeared since `before`; the machine's own stay."""
    for tool in IPTABLES:
        old_rules, old_chains = _rules(before.iptables.get(tool, ""))
        rules, chains = _rules(_iptables_save(tool))
        for table, rule in sorted(rules - old_rules):
            subprocess.run([tool, "-w", "-t", table, "-D", *shlex.split(rule)[1:]], capture_output=True)
        for table, chain in sorted(chains - old_chains):
            subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True)
        for table, chain in sorted(chains - old_chains):
            subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True)


def new_netns(before: HostState) -> set[str]:
    return _netns_names() - before.netns


def remove_netns(before: HostState) -> None:
    """containerd's CRI names its network namespaces cni-<uuid> under /var/run/netns."""
    for name in new_netns(before):
        if not name.startswith("cni-"):
            continue
        for directory in NETNS_DIRS:
            path = directory / name
            if path.exists():
                subprocess.run(["umount", "-l", str(path)], capture_output=True)
                path.unlink(missing_ok=True)


def new_pid_namespaces(before: HostState) -> set[str]:
    return _pid_namespaces() - before.pid_namespaces


def mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve())
    found = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def unmount_all_under(directory: Path) -> None:
    for point in sorted(mounts_under(directory), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
