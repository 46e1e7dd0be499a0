"""Debian's containerd, started for the image tests with its own root, state and socket (no CRI plugin),
and containers run from it with `ctr run`, as the kubelet would run them: podman run fails on these
machines (crun cannot raise RLIMIT_NPROC without CAP_SYS_RESOURCE)."""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.images import ImageArchive
from tests.progress import TERMINAL, run_with_progress

NAMESPACE = "k8s.io"
START_TIMEOUT_S = 60.0
IMPORT_TIMEOUT_S = 1800.0


class ContainerdError(RuntimeError):
    pass


@dataclass(frozen=True)
class Tmpfs:
    path: str


@dataclass(frozen=True)
class Bind:
    source: Path
    path: str


class Containerd:
    """`with Containerd() as containerd:` starts one under a fresh folder and removes all of it on exit."""

    def __init__(self):
        self.workdir = Path(tempfile.mkdtemp(prefix="kvmemo-containerd-", dir="/var/tmp"))
        self.socket = self.workdir / "containerd.sock"
        self.log = self.workdir / "containerd.log"
        self.process: subprocess.Popen | None = None
        self._names = 0

    def __enter__(self) -> "Containerd":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        config = self.workdir / "config.toml"
        config.write_text(f"""version = 2
root = "{self.workdir / 'root'}"
state = "{self.workdir / 'state'}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.workdir / 'opt'}"
""")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.ctr("version", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ContainerdError(f"containerd did not answer on {self.socket} (exit {self.process.poll()}):\n"
                                      f"{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def ctr(self, *args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess:
        command = ["ctr", "--address", str(self.socket), "-n", NAMESPACE, *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise ContainerdError(f"`ctr {' '.join(args)}` failed ({result.returncode}): {result.stderr[-2000:]}")
        return result

    def import_archive(self, archive: ImageArchive, log=TERMINAL) -> None:
        command = ["ctr", "--address", str(self.socket), "-n", NAMESPACE, "images", "import", str(archive.path)]
        code, output = run_with_progress(command, f"tests: ctr images import {archive.path.name}", log=log,
                                         timeout=IMPORT_TIMEOUT_S)
        if code != 0:
            raise ContainerdError(f"ctr images import {archive.path} failed ({code}):\n{output}")
        listed = self.ctr("images", "ls", "-q").stdout.split()
        if archive.ref not in listed:
            raise ContainerdError(f"{archive.path} imported, but containerd lists {listed}, not {archive.ref}")

    def run(self, ref: str, *argv: str, read_only: bool = False, mounts: tuple[Tmpfs | Bind, ...] = (),
            env: dict[str, str] | None = None, timeout: float = 600.0) -> subprocess.CompletedProcess:
        """`ctr run --rm` of `argv`, which replaces the image's entrypoint and command (as ctr does)."""
        self._names += 1
        options = ["--read-only"] if read_only else []
        for mount in mounts:
            if isinstance(mount, Tmpfs):
                options.append(f"--mount=type=tmpfs,src=tmpfs,dst={mount.path},options=rw:nosuid:nodev")
            else:
                options.append(f"--mount=type=bind,src={mount.source},dst={mount.path},options=rbind:ro")
        options += [f"--env={key}={value}" for key, value in (env or {}).items()]
        command = ["run", "--rm", *options, ref, f"kvmemo-test-{os.getpid()}-{self._names}", *argv]
        return self.ctr(*command, check=False, timeout=timeout)

    def stop(self) -> None:
        """Kills what still runs, stops containerd and its shims, unmounts and removes the folder."""
        if self.process is not None and self.process.poll() is None:
            for task in self.ctr("tasks", "ls", "-q", check=False).stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
                self.ctr("tasks", "delete", "-f", task, check=False)
            for container in self.ctr("containers", "ls", "-q", check=False).stdout.split():
                self.ctr("containers", "delete", container, check=False)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in self._shims():
            os.kill(pid, signal.SIGKILL)
        remove_mounted_tree(self.workdir)

    def _shims(self) -> list[int]:
        """Shim processes that serve this containerd (their command line names its socket)."""
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and str(self.socket).encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return [pid for pid in pids if pid != os.getpid()]


def remove_mounted_tree(folder: Path) -> None:
    """Unmounts what is mounted under `folder` (snapshots, overlay storage made private), then removes it."""
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1] for line in mounts]
    for point in sorted((p for p in points if p == str(folder) or p.startswith(f"{folder}/")), reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True)
    shutil.rmtree(folder, ignore_errors=True)
