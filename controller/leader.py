"""Leader election on a coordination.k8s.io Lease, as client-go does it: a lease is expired when its
record has not changed for lease_duration on *our* clock, so clocks need not agree between pods."""

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)


@dataclass
class LeaderElector:
    coordination: client.CoordinationV1Api
    namespace: str
    name: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    on_change: Callable[[bool], None] = lambda leading: None
    leading: threading.Event = field(default_factory=threading.Event)
    reachable: threading.Event = field(default_factory=threading.Event)
    _observed: tuple = ()
    _observed_at: float = 0.0
    _renewed_at: float = 0.0

    def __post_init__(self):
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(f"need retry period {self.retry_period} < renew deadline {self.renew_deadline} "
                             f"< lease duration {self.lease_duration} (seconds)")

    def is_leader(self) -> bool:
        # Also bounded by the last renewal, so a renewal call hanging past the deadline cannot leave us
        # writing while a standby takes over.
        return self.leading.is_set() and time.monotonic() - self._renewed_at <= self.renew_deadline

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                acquired = self.try_acquire_or_renew()
                self.reachable.set()
            except Exception as exc:  # noqa: BLE001 - apiserver away: keep trying, lose the lease on deadline
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
                self.reachable.clear()
                acquired = False
            now = time.monotonic()
            if acquired:
                self._renewed_at = now
                self._set(True)
            elif self.leading.is_set() and now - self._renewed_at > self.renew_deadline:
                self._set(False)
            stop.wait(self.retry_period)
        if self.leading.is_set():
            self.release()

    def _set(self, leading: bool) -> None:
        if leading != self.leading.is_set():
            (self.leading.set if leading else self.leading.clear)()
            log.info("%s %s the lease %s/%s", self.identity, "holds" if leading else "lost",
                     self.namespace, self.name)
            self.on_change(leading)

    def _spec(self, transitions: int, acquired: datetime | None) -> client.V1LeaseSpec:
        now = datetime.now(timezone.utc)
        return client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=int(self.lease_duration),
                                  acquire_time=acquired or now, renew_time=now, lease_transitions=transitions)

    def try_acquire_or_renew(self) -> bool:
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace, _request_timeout=5)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(metadata=client.V1ObjectMeta(name=self.name), spec=self._spec(0, None))
            try:
                self.coordination.create_namespaced_lease(self.namespace, body, _request_timeout=5)
                return True
            except ApiException as exc:
                if exc.status == 409:
                    return False
                raise
        spec = lease.spec
        record = (spec.holder_identity, spec.renew_time, lease.metadata.resource_version)
        now = time.monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        mine = spec.holder_identity == self.identity
        if spec.holder_identity and not mine and now - self._observed_at < self.lease_duration:
            return False
        transitions = (spec.lease_transitions or 0) + (0 if mine else 1)
        lease.spec = self._spec(transitions, spec.acquire_time if mine else None)
        try:
            # replace carries the resourceVersion we read: two candidates racing get one 409.
            self.coordination.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=5)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def release(self) -> None:
        """Hand the lease over at once on a clean stop instead of making the standby wait it out."""
        try:
            lease = self.coordination.read_namespaced_lease(self.name, self.namespace, _request_timeout=5)
            if lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                self.coordination.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=5)
        except Exception as exc:  # noqa: BLE001 - best effort; the lease expires anyway
            log.warning("could not release lease %s/%s: %s", self.namespace, self.name, exc)
        self._set(False)
