"""Fault injection, all of it in this one place: KVMEMO_FAILPOINT names a point at which the controller
dies as a SIGKILL would (exit status 3, no cleanup), so tests can act out a crash between a read and a
write. Read once at import; unset, every point is a no-op."""

import logging
import os

ENV = "KVMEMO_FAILPOINT"
BEFORE_WRITE = "controller-before-write"  # after reconciling an object, before patching it
EXIT_STATUS = 3

log = logging.getLogger(__name__)
_ARMED = os.environ.get(ENV, "")


def point(name: str) -> None:
    if _ARMED == name:
        log.error("failpoint %s=%s: exiting with status %d", ENV, name, EXIT_STATUS)
        os._exit(EXIT_STATUS)
