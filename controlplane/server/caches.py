"""The memos one ADS server shares between its streams, owned by that server.

Thousands of streams ask for the same things: the 2,000 sidecars of a namespace name the
same 1,200 clusters, hold the same generated sets and are due the same responses. What
is worked out for one is kept here for the others; all of it is a cache (dropping an
entry costs only the sharing) and bounded. Each AdsServer has its own `ServerCaches`
(no module-level tables): two servers in one process, or two tests, share nothing.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..generators.resources import ResourceSet
from .subscription import Subscription


class BoundedBytes:
    """Values by key, at most `max_bytes` of them in all (each counted by the size given
    when put), the oldest dropped first; a value over `max_item` bytes is not kept."""

    def __init__(self, max_bytes: int, max_item: int):
        self.max_bytes, self.max_item = max_bytes, max_item
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    @property
    def size(self) -> int:
        """Bytes held."""
        return self._bytes

    def get(self, key: Any) -> Any:
        got = self._items.get(key)
        return got[0] if got is not None else None

    def put(self, key: Any, value: Any, size: int) -> None:
        replaced = self._items.pop(key, None)
        if replaced is not None:
            self._bytes -= replaced[1]
        if size > self.max_item:
            return
        self._items[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self._bytes -= old


class SharedResponses:
    """Whole responses made once and sent to many: proxies that share a generated set
    and have had as many responses of the type (equal nonce, made from the count) get
    byte-identical responses, so a sidecar's megabyte of CDS is joined once per group
    rather than once per proxy. Keyed by the set's identity (the set is kept with the
    bytes, so the identity cannot be reused while cached); bounded in bytes."""

    def __init__(self, max_bytes: int = 64 << 20):
        self._cache = BoundedBytes(max_bytes, max_bytes // 4)
        self.hits = self.misses = 0

    @property
    def size(self) -> int:
        """Bytes of responses held."""
        return self._cache.size

    def get(self, owner: Any, version: str, nonce: str, make: Callable[[], bytes]) -> bytes:
        key = (id(owner), version, nonce)
        got: tuple[Any, bytes] | None = self._cache.get(key)
        if got is not None and got[0] is owner:
            self.hits += 1
            return got[1]
        self.misses += 1
        data = make()
        self._cache.put(key, (owner, data), len(data))
        return data


class PerGroup:
    """Answers that depend only on what a subscription was sent, what it is due now,
    what it asks for and (SotW EDS) which of its clusters warm (`make(sub, rs)`),
    worked out once for every subscription in that state: the 2,000 sidecars of a push
    are a handful of such groups. Keyed by identity
    (sets are shared between proxies, name sets are canonical); the key objects are kept
    so their ids cannot be reused while cached. Answers are shared: read-only."""

    def __init__(self, make: Callable[[Subscription, ResourceSet], Any], max_items: int = 256):
        self._make = make
        self.max_items = max_items
        self._items: dict[tuple[int, int, int, bool, int], tuple[Any, ...]] = {}

    def get(self, sub: Subscription, rs: ResourceSet) -> Any:
        old, wanted, warming = sub.sent_set, sub.names, sub.warming or None
        key = (id(old), id(rs), id(wanted), sub.wildcard, id(warming))
        got = self._items.get(key)
        if got is not None and got[0] is old and got[1] is rs and got[2] is wanted and got[3] is warming:
            return got[4]
        out = self._make(sub, rs)
        if len(self._items) >= self.max_items:
            self._items.clear()  # a cache: dropping it costs only the sharing
        self._items[key] = (old, rs, wanted, warming, out)
        return out


class ServerCaches:
    """What an AdsServer's streams share (see the module docstring):

    - `responses`: whole SotW responses, joined once per group of proxies (SharedResponses);
    - `request_body`: one copy of each distinct SotW request body (a request without
      version, nonce and node): a sidecar's EDS request names every cluster (56 KB for
      1,200), and every subscription keeps its last one to recognise ACKs (acks.py);
    - `name_set`: one copy of each distinct set of subscribed names: 2,000 sidecars naming
      the same 1,200 clusters would otherwise hold 2,000 copies of 1,200 strings, and the
      memos compare name sets by identity (PerGroup, view.wanted_resources).
    """

    def __init__(self, *, response_bytes: int = 64 << 20, request_bytes: int = 32 << 20,
                 max_request: int = 4 << 20, max_name_sets: int = 4096):
        self.responses = SharedResponses(response_bytes)
        # Evicted bodies stay with the subscriptions holding them; they are just no
        # longer shared with new ones.
        self._bodies = BoundedBytes(request_bytes, max_request)
        self._name_sets: dict[frozenset[str], frozenset[str]] = {}
        self._max_name_sets = max_name_sets

    def request_body(self, body: bytes) -> bytes:
        """The shared copy of a request body equal to `body`."""
        got: bytes | None = self._bodies.get(body)
        if got is not None:
            return got
        self._bodies.put(body, body, len(body))
        return body

    def name_set(self, names: frozenset[str]) -> frozenset[str]:
        """The shared copy of a name set equal to `names`."""
        got = self._name_sets.get(names)
        if got is None:
            if len(self._name_sets) >= self._max_name_sets:
                self._name_sets.clear()  # a cache: dropping it costs only sharing
            got = self._name_sets[names] = names
        return got
