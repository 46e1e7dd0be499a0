"""Debian's containerd, started for the image tests with its own state and socket (no CRI plugin), and
containers run from it with `ctr run`, as the kubelet would run them: podman run fails on these machines
(crun cannot raise RLIMIT_NPROC without CAP_SYS_RESOURCE). Its root is the one the cluster's containerd
keeps (tests/containerd.py's kept_root()), so an archive either of them imported is not imported again;
it holds the machine lock while it runs, as a cluster does. What it shares with the cluster's containerd
(config, import, cleanup) is in tests/containerd.py."""

import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.containerd import (ContainerdError, Ctr, config_toml, kept_root, machine_lock, remove_mounted_tree,
                              unmount_under)
from tests.images import ImageArchive
from tests.progress import TERMINAL

__all__ = ["Bind", "Containerd", "ContainerdError", "Tmpfs"]

START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Tmpfs:
    path: str


@dataclass(frozen=True)
class Bind:
    source: Path
    path: str


class Containerd:
    """`with Containerd() as containerd:` starts one with its state under a fresh folder, on the kept root;
    on exit it deletes every container, stops, and removes that folder (the root stays, with its images)."""

    def __init__(self):
        self.workdir = Path(tempfile.mkdtemp(prefix="kvmemo-containerd-", dir="/var/tmp"))
        self.socket = self.workdir / "containerd.sock"
        self.log = self.workdir / "containerd.log"
        self.ctr = Ctr(self.socket)
        self.process: subprocess.Popen | None = None
        self.lock = None
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
        self.lock = machine_lock("tests/images")
        config = self.workdir / "config.toml"
        config.write_text(config_toml(kept_root(), self.workdir / "state", self.socket,
                                      self.workdir / "opt", cri=False))
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ctr.answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise ContainerdError(f"containerd did not answer on {self.socket} (exit {self.process.poll()}):\n"
                                      f"{self.log.read_text()[-2000:]}")
            time.sleep(0.2)

    def import_archive(self, archive: ImageArchive, log=TERMINAL) -> None:
        self.ctr.import_archive(archive, log)

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
            self.ctr.remove_containers()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in self._shims():
            os.kill(pid, signal.SIGKILL)
        remove_mounted_tree(self.workdir)
        unmount_under(kept_root())  # an unpack's tmpmounts, if containerd died mid-import (the root stays)
        if self.lock is not None:
            self.lock.close()
            self.lock = None

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
