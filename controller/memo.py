"""The rejected values the controller has already seen, so that junk is parsed and warned about once.

A pod with report-write rights can fill its ConfigMap with thousands of bad annotations and rewrite them;
each write is a watch event and a reconcile of the whole ConfigMap. Remembering a digest of each rejected
value (not the value: it can be 200 KB) makes the next reconcile skip it at the cost of one hash."""

import hashlib
from collections import OrderedDict
from collections.abc import Callable

from service.contract.records import Rejected

# A ConfigMap's annotations share 256 KiB, and a report annotation takes at least ~20 bytes, so about
# 13,000 fit in one; 16,384 remembered rejections (about 200 bytes each) hold a full ConfigMap.
MAX_REMEMBERED = 16384
# A report dated too far ahead becomes acceptable once the clock catches up: never remembered.
TIME_DEPENDENT = frozenset({"clock"})


class RecentSet:
    """A set that forgets its least recently seen members beyond `limit`."""

    def __init__(self, limit: int):
        self.limit = limit
        self._items: OrderedDict = OrderedDict()

    def add(self, item) -> bool:
        """True when `item` was not in the set."""
        if item in self._items:
            self._items.move_to_end(item)
            return False
        self._items[item] = None
        if len(self._items) > self.limit:
            self._items.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._items)


def digest(scope: tuple, key: str, raw: str) -> tuple:
    return (*scope, key, hashlib.blake2b(raw.encode(errors="surrogatepass"), digest_size=16).digest())


KNOWN = object()  # what check() returns for a value rejected before: nothing new to say about it


class RejectionMemo:
    """(scope, key, digest of the value) -> the reason it was rejected, least recently seen forgotten beyond
    `limit`. A value rejected before is not parsed again: check() returns KNOWN for it, so a flood of junk
    costs one hash per value and one warning per distinct value, however often it is reconciled."""

    def __init__(self, limit: int = MAX_REMEMBERED):
        self.limit = limit
        self._known: OrderedDict = OrderedDict()

    def check(self, scope: tuple, key: str, raw: str, parse: Callable):
        """parse()'s value, KNOWN for a value rejected before, or parse()'s Rejected, which says whether
        this value was `first_seen` (a report dated ahead is parsed each time: time may make it good)."""
        entry = digest(scope, key, raw)
        reason = self._known.get(entry)
        if reason is not None:
            self._known.move_to_end(entry)
            if reason not in TIME_DEPENDENT:
                return KNOWN
        try:
            return parse()
        except Rejected as rejected:
            rejected.first_seen = reason is None
            self._known[entry] = rejected.reason
            if len(self._known) > self.limit:
                self._known.popitem(last=False)
            raise

    def __len__(self) -> int:
        return len(self._known)
