"""Where plan records live outside Kubernetes: one JSON file per fingerprint, replaced atomically."""

import json
import logging
import os
import tempfile
from pathlib import Path

from service.memory.plan import PlanRecord

log = logging.getLogger(__name__)


def default_plan_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kvmemo" / "plans"


class FilePlanStore:
    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory) if directory else default_plan_dir()

    def path(self, fp: str) -> Path:
        return self.directory / f"{fp[:12]}.json"

    def load(self, fp: str) -> PlanRecord | None:
        """The record for fp, or None; a corrupted or foreign file is ignored with a warning."""
        path = self.path(fp)
        if not path.exists():
            return None
        try:
            record = PlanRecord.from_json(json.loads(path.read_text()))
        except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
            log.warning("ignoring plan file %s: %s", path, e)
            return None
        if record.fingerprint != fp:
            log.warning("ignoring plan file %s: it belongs to fingerprint %s, not %s", path,
                        record.fingerprint[:12], fp[:12])
            return None
        return record

    def save(self, record: PlanRecord) -> Path:
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
