"""Plans outside Kubernetes: one JSON file per fingerprint (the whole MemoryProfile), replaced atomically."""

import json
import logging
import os
import tempfile
from pathlib import Path

from service.config import cache_root
from service.memory.memory_profile import MemoryProfile, format_bytes
from service.memory.report import BootReport
from service.plans.store import Lookup, StoredPlan

log = logging.getLogger(__name__)


def default_plan_dir() -> Path:
    return cache_root() / "plans"


class FilePlans:
    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory else default_plan_dir()

    def path(self, fp: str) -> Path:
        return self.directory / f"{fp[:12]}.json"

    def load(self, fp: str) -> MemoryProfile | None:
        """The record for fp, or None; a corrupted or foreign file is ignored with a warning."""
        path = self.path(fp)
        if not path.exists():
            return None
        try:
            record = MemoryProfile.from_json(json.loads(path.read_text()))
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
            log.warning("ignoring plan file %s: %s", path, e)
            return None
        if record.fingerprint != fp:
            log.warning("ignoring plan file %s: it belongs to fingerprint %s, not %s", path,
                        record.fingerprint[:12], fp[:12])
            return None
        return record

    def save(self, record: MemoryProfile) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(record.fingerprint)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record.to_json(), f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def lookup(self, fingerprint: str, policy: str) -> Lookup:
        record = self.load(fingerprint)
        if record is None:
            return Lookup(None, f"no plan file {self.path(fingerprint)}")
        if record.stale:
            return Lookup(None, f"plan file {self.path(fingerprint)} is marked stale (a boot measured more than it "
                                f"predicted, or ran out of memory)", earlier_ooms=record.ooms)
        plan = StoredPlan("file", record.suggestions.for_policy(policy), record.free_at_start_bytes, record)
        return Lookup(plan, f"plan file {self.path(fingerprint)}")

    def record_profile(self, record: MemoryProfile) -> None:
        log.info("plan record written to %s", self.save(record))

    def record_oom(self, report: BootReport) -> None:
        """The plan is marked stale (the next boot profiles again) and counts the OOM, so that the next profile
        doubles its safety margin."""
        if report.record is None:
            return
        report.record.ooms += 1
        report.record.stale = report.plan_stale = True
        log.warning("out of memory while serving with a %s KV cache: plan %s marked stale",
                    format_bytes(report.kv_cache_memory_bytes), self.save(report.record))

    def close(self) -> None:
        pass
