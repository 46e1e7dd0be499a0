"""The rejected values the controller has already seen, so that junk is parsed and warned about once.

A pod with report-write rights can fill its ConfigMap with thousands of bad annotations and rewrite them;
each write is a watch event and a reconcile of the whole ConfigMap. Remembering a digest of each rejected
value (not the value: it can be 200 KB) makes the next reconcile skip it at the cost of one hash."""

import hashlib
from collections import OrderedDict
from collections.abc import Callable

from service.contract.records import Rejected

# A ConfigMap's annotations share 256 KiB, and a report annotation takes at least ~20 bytes, so about
# 13,000 fit in one; 16,384 remembered rejections (a few hundred bytes each) hold a full ConfigMap.
MAX_REMEMBERED = 16384
MAX_MESSAGE = 300
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


class RejectionMemo:
    """(scope, key, digest of the value) -> the Rejected it raised, least recently seen forgotten beyond
    `limit`. Each Rejected that check() raises says whether this value was `first_seen`, so a value is
    warned about once however often it is reconciled."""

    def __init__(self, limit: int = MAX_REMEMBERED):
        self.limit = limit
        self._known: OrderedDict = OrderedDict()

    def check(self, scope: tuple, key: str, raw: str, parse: Callable):
        """parse(), unless this exact value of this key was rejected before: then its Rejected again."""
        entry = digest(scope, key, raw)
        known = self._known.get(entry)
        if known is not None:
            self._known.move_to_end(entry)
            if known[0] not in TIME_DEPENDENT:
                raise _rejected(known, first_seen=False)
        try:
            return parse()
        except Rejected as rejected:
            rejected.first_seen = known is None
            self._known[entry] = (rejected.reason, str(rejected)[:MAX_MESSAGE])
            if len(self._known) > self.limit:
                self._known.popitem(last=False)
            raise

    def __len__(self) -> int:
        return len(self._known)


def _rejected(known: tuple, first_seen: bool) -> Rejected:
    rejected = Rejected(*known)
    rejected.first_seen = first_seen
    return rejected
