"""Faults that tests inject into a real `kvmemo serve`, all in one place: KVMEMO_FAULTS="name=value,..." in
the process's environment, read once at import. Production never sets it; an unknown name fails the boot.

- step_delay_seconds=S: sleep S before every engine step, so that a test can hold a request mid-stream for
  as long as it needs (a deadline, a cancel, a drain) whatever the machine's speed.
- oom_in_warm_up=1: the boot's warm-up batch runs out of device memory, as on a GPU whose plan was too large.
- boot_gate=PATH: the server listens (health NOT_SERVING) and waits for PATH to exist before it boots the
  engine, so that a test can watch the state before the engine is warm however fast the machine boots.
- step_failure_gate=PATH: once PATH exists, every engine step raises, as on a GPU with a persistent CUDA error
  (the test creates PATH after the boot's warm-up, so the server first reaches SERVING).
- step_hold=PATH: while PATH exists, every engine step waits for it to go, so that a test can keep a request in
  flight (a pod deleted mid-stream) for as long as it needs and then let it finish; the log says when a
  step is held."""

import logging
import os
import time

from service.errors import ConfigError

KNOWN = {"step_delay_seconds": float, "oom_in_warm_up": int, "boot_gate": str, "step_failure_gate": str,
         "step_hold": str}


def parse(text: str) -> dict[str, float | int | str]:
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in KNOWN:
            raise ConfigError(f"KVMEMO_FAULTS: unknown fault {name!r}; known: {', '.join(KNOWN)}")
        try:
            faults[name] = KNOWN[name](value)
        except ValueError:
            raise ConfigError(f"KVMEMO_FAULTS: {name}={value!r} is not a valid {KNOWN[name].__name__}") from None
    return faults


log = logging.getLogger(__name__)
ACTIVE = parse(os.environ.get("KVMEMO_FAULTS", ""))


def oom_in_warm_up() -> bool:
    return bool(ACTIVE.get("oom_in_warm_up"))


def before_boot() -> None:
    gate = ACTIVE.get("boot_gate")
    while gate and not os.path.exists(gate):
        time.sleep(0.05)


def before_step() -> None:
    delay = ACTIVE.get("step_delay_seconds")
    if delay:
        time.sleep(delay)
    hold = ACTIVE.get("step_hold")
    if hold and os.path.exists(hold):
        log.warning("engine step held while %s exists (KVMEMO_FAULTS step_hold)", hold)
        while os.path.exists(hold):
            time.sleep(0.05)
    gate = ACTIVE.get("step_failure_gate")
    if gate and os.path.exists(gate):
        raise RuntimeError("injected step failure (KVMEMO_FAULTS step_failure_gate)")
