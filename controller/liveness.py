"""What /healthz reports: each of the controller's loops beats as it goes round, and a loop that has not
beaten within its bound (stuck on a call that never returns) or whose thread has died fails the liveness
probe, so the kubelet restarts the pod. An apiserver that is down fails nothing here: the loops keep going
round while they back off (/readyz says so instead)."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# A watch read may wait watch timeout (<= 60 s) + 30 s for its first line; one reconcile makes up to five
# attempts of a few 10 s calls. The bounds are well past both.
WATCH_BOUND_SECONDS = 180.0
RECONCILE_BOUND_SECONDS = 300.0


@dataclass
class Heartbeats:
    bounds: dict[str, float]  # loop name -> the longest it may go without a beat
    clock: Callable[[], float] = time.monotonic
    threads: dict[str, threading.Thread] = field(default_factory=dict)  # name -> a thread that must be alive
    _last: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        now = self.clock()
        self._last = {name: now for name in self.bounds}

    def beater(self, name: str) -> Callable[[], None]:
        def beat():
            self._last[name] = self.clock()
        return beat

    def health(self) -> tuple[bool, str]:
        now = self.clock()
        problems = [f"the {name} loop has not gone round for {now - self._last[name]:.0f} s (bound {bound:.0f} s)"
                    for name, bound in self.bounds.items() if now - self._last[name] > bound]
        problems += [f"the {name} thread has stopped" for name, t in self.threads.items() if not t.is_alive()]
        return (not problems, "; ".join(problems) or "ok")
