"""Install Debian packages the image and cluster tests need, once per machine.

CI runs as root on Debian with the package mirror reachable, as the envtest build reaches the Go module
proxy; a package already installed costs nothing. Tests call this from their fixtures, never at import.
"""

import fcntl
import shutil
import subprocess
from pathlib import Path

from tests.progress import TERMINAL, say

_LOCK = Path("/var/lock/kvmemo-apt.lock")


class PackageError(RuntimeError):
    pass


def installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return result.returncode == 0 and "install ok installed" in result.stdout


def ensure_packages(*packages: str) -> None:
    """apt-get install whatever of `packages` is missing; raise PackageError naming them if that fails."""
    missing = [p for p in packages if not installed(p)]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise PackageError(f"these Debian packages are missing and apt-get is not here: {' '.join(missing)}")
    with open(_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [p for p in packages if not installed(p)]
        if not missing:
            return
        say(TERMINAL, f"apt-get install {' '.join(missing)}")
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        for command in (["apt-get", "update", "-q"],
                        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]):
            result = subprocess.run(command, capture_output=True, text=True, env=env)
            if result.returncode != 0:
                raise PackageError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
