"""The JWKS source: fetches the key sets RequestAuthentications point at, keeps them
fresh, and hands them to the model as data (a `JwksView`).

istiod resolves a `jwksUri` itself and inlines the key set into every proxy's jwt_authn
filter (pilot/pkg/model/jwks_resolver.go, read not copied); meshd does the same:
- it is told which key sets the current RequestAuthentications need (`want`, after each
  snapshot), fetches new ones at once and drops those no longer needed;
- a rule with neither `jwks` nor `jwksUri` is resolved through the issuer's OpenID
  discovery document (`<issuer>/.well-known/openid-configuration`, its `jwks_uri`),
  again at every refresh;
- each key set is fetched again every `refresh_interval` (istiod's
  PILOT_JWT_PUB_KEY_REFRESH_INTERVAL, 20 min); a failed fetch is retried after
  `retry_interval` (1 min), doubling up to an hour, as istiod's refresher;
- a key set that cannot be fetched is reported (a log event naming the rules that use
  it, the /debug/jwksz page, `meshd_jwks_fetch_failures_total{uri}`); while meshd has none
  for it, the generators inline one that verifies no token, so tokens of that issuer are
  refused (generators/authn.py); once fetched, a key set stays in use through failed
  refreshes (reported), until `max_stale` (istiod: 7 days) without a success;
- anything fetched that is not a usable JWKS counts as a failure: Envoy would reject the
  whole listener over one bad key set.

Fetches run off the event loop (a small thread pool, a deadline per fetch), so a server
that never answers costs a thread for at most the timeout, never the loop. Every change
of the key sets meshd trusts calls `on_change(view)` on the loop (a push follows).
"""
from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from ..model.request_authentication import JwksView, KeySetNeed, KeySetRef, jwks_problem

REFRESH_INTERVAL = 20 * 60.0  # istiod's PILOT_JWT_PUB_KEY_REFRESH_INTERVAL
RETRY_INTERVAL = 60.0  # istiod's JwtPubKeyRefreshIntervalOnFailure
RETRY_MAX = 60 * 60.0  # ... and its reset threshold
MAX_STALE = 7 * 24 * 3600.0  # istiod's JwtPubKeyEvictionDuration
MAX_BODY = 2 << 20  # a JWKS is a few KB; more is not a key set
DISCOVERY_SUFFIX = "/.well-known/openid-configuration"

Fetch = Callable[[str, float], Awaitable[bytes]]  # (url, timeout seconds) -> body; raises FetchError


class FetchError(Exception):
    """A fetch that did not give a usable key set (the message says why)."""


class HttpFetcher:
    """GET with a deadline, in threads of its own (urllib; system CAs for https)."""

    def __init__(self, workers: int = 4):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="meshd-jwks")

    async def __call__(self, url: str, timeout: float) -> bytes:
        if not url.lower().startswith(("http://", "https://")):
            raise FetchError(f"{url}: only http and https URIs can be fetched")
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(self._pool, _get, url, timeout), timeout)
        except TimeoutError:
            raise FetchError(f"GET {url}: no answer within {timeout:g}s") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _get(url: str, timeout: float) -> bytes:
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "meshd-jwks"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # http(s) only, checked above
            body = resp.read(MAX_BODY + 1)
    except urllib.error.HTTPError as e:
        detail = e.read(200).decode("utf-8", "replace").strip()
        raise FetchError(f"GET {url}: HTTP {e.code}" + (f": {detail}" if detail else "")) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, TimeoutError):  # the socket's deadline, the same as the caller's
            raise FetchError(f"GET {url}: no answer within {timeout:g}s") from None
        raise FetchError(f"GET {url}: {reason}") from None
    if len(body) > MAX_BODY:
        raise FetchError(f"GET {url}: answer larger than {MAX_BODY} bytes")
    return body


@dataclass
class KeySetState:
    """What meshd knows of one key set (the /debug/jwksz row)."""

    ref: KeySetRef
    need: KeySetNeed
    text: str | None = None  # the key set in use (last good)
    jwks_uri: str = ""  # where it was fetched from (the discovered one for an issuer)
    fetched_at: float | None = None  # wall clock of the last success
    attempted_at: float | None = None
    error: str = ""  # the last failure ("" after a success)
    failures: int = 0  # consecutive
    next_at: float | None = None  # wall clock of the next attempt

    def row(self) -> dict:
        state = "pending" if self.attempted_at is None else ("ok" if not self.error else
                                                            ("stale" if self.text is not None else "unavailable"))
        keys = len(json.loads(self.text).get("keys") or ()) if self.text else 0
        return {
            "keySet": str(self.ref), "issuer": self.ref.issuer or None, "jwksUri": self.jwks_uri or self.ref.jwks_uri,
            "state": state, "keys": keys, "usedBy": list(self.need.used_by),
            "lastSuccess": _rfc3339(self.fetched_at), "lastAttempt": _rfc3339(self.attempted_at),
            "nextAttempt": _rfc3339(self.next_at), "consecutiveFailures": self.failures, "lastError": self.error or None,
            "effect": ("tokens verified with this key set" if self.text is not None
                       else "tokens of this issuer are refused (no key set)"),
        }


def _rfc3339(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class JwksSource:
    def __init__(self, on_change: Callable[[JwksView], None] | None = None, *,
                 refresh_interval: float = REFRESH_INTERVAL, retry_interval: float = RETRY_INTERVAL,
                 retry_max: float = RETRY_MAX, max_stale: float = MAX_STALE, fetch: Fetch | None = None,
                 registry=None, logger=None):
        self.on_change = on_change
        self.refresh_interval = refresh_interval
        self.retry_interval = retry_interval
        self.retry_max = max(retry_max, retry_interval)
        self.max_stale = max_stale
        self._http: HttpFetcher | None = None
        if fetch is None:
            fetch = self._http = HttpFetcher()
        self._fetch: Fetch = fetch
        self._log = logger or structlog.get_logger("meshd.source.jwks")
        self._states: dict[KeySetRef, KeySetState] = {}
        self._tasks: dict[KeySetRef, asyncio.Task] = {}
        self._first: dict[KeySetRef, asyncio.Event] = {}  # set after the first attempt
        self._view = JwksView()
        self._failures = self._fetches = self._available = None
        if registry is not None:
            from prometheus_client import Counter, Gauge

            self._failures = Counter("meshd_jwks_fetch_failures", "Failed JWKS fetches (or discoveries) per key set.",
                                     ["uri"], registry=registry)
            self._fetches = Counter("meshd_jwks_fetches", "Successful JWKS fetches per key set.", ["uri"],
                                    registry=registry)
            self._available = Gauge("meshd_jwks_key_set_available",
                                    "1 while meshd has a key set to verify this issuer's tokens with, else 0 "
                                    "(tokens refused).", ["uri"], registry=registry)

    # --- reading --------------------------------------------------------------------
    def view(self) -> JwksView:
        """The key sets in use now."""
        return self._view

    def status(self) -> dict:
        rows = [self._states[r].row() for r in sorted(self._states)]
        return {"refreshInterval": self.refresh_interval, "keySets": rows}

    # --- what is needed -------------------------------------------------------------
    def want(self, needed: Mapping[KeySetRef, KeySetNeed]) -> None:
        """The key sets the RequestAuthentications need now: new ones are fetched at once
        (on the running loop, else when `run` starts), others are dropped."""
        gone = [r for r in self._states if r not in needed]
        for ref in gone:
            self._states.pop(ref)
            self._first.pop(ref, None)
            task = self._tasks.pop(ref, None)
            if task is not None:
                task.cancel()
            if self._available is not None:
                try:
                    self._available.remove(str(ref))
                except KeyError:  # never set
                    pass
        for ref, need in needed.items():
            state = self._states.get(ref)
            if state is None:
                self._states[ref] = KeySetState(ref, need)
                self._first[ref] = asyncio.Event()
                self._start(ref)
            else:
                state.need = need
        if gone:
            self._publish()

    async def prime(self, needed: Mapping[KeySetRef, KeySetNeed]) -> None:
        """`want`, then wait until each new key set was tried once (each fetch has its
        deadline): the first snapshot then carries what can be had."""
        self.want(needed)
        self._start_pending()
        waits = [self._first[r].wait() for r in needed if r in self._first]
        if waits:
            # Discovery and fetch each have their deadline; this one only guards against a
            # key set dropped meanwhile (its first attempt never comes).
            deadline = 2 * max(n.timeout for n in needed.values()) + 1
            try:
                await asyncio.wait_for(asyncio.gather(*waits), deadline)
            except TimeoutError:
                pass

    async def run(self, stop: asyncio.Event) -> None:
        """Keep the key sets fresh until `stop` (each has a task of its own)."""
        self._start_pending()
        try:
            await stop.wait()
        finally:
            self.close()

    def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        if self._http is not None:
            self._http.close()

    # --- fetching -------------------------------------------------------------------
    def _start(self, ref: KeySetRef) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet: run() starts it
        self._tasks[ref] = loop.create_task(self._keep(ref), name=f"jwks {ref}")

    def _start_pending(self) -> None:
        for ref in self._states:
            if ref not in self._tasks:
                self._start(ref)

    async def _keep(self, ref: KeySetRef) -> None:
        while ref in self._states:
            delay = await self._attempt(self._states[ref])
            first = self._first.get(ref)
            if first is not None:
                first.set()
            await asyncio.sleep(delay)

    async def _attempt(self, st: KeySetState) -> float:
        """One fetch (with discovery when needed); the delay until the next one."""
        st.attempted_at = time.time()
        uri = st.ref.jwks_uri
        try:
            if not uri:
                uri = await self._discover(st.ref.issuer, st.need.timeout)
            body = await self._fetch(uri, st.need.timeout)
            text = body.decode("utf-8").strip()
            problem = jwks_problem(text)
            if problem is not None:
                raise FetchError(f"GET {uri}: not a usable JWKS: {problem}")
        except FetchError as e:
            return self._failed(st, str(e))
        except UnicodeDecodeError:
            return self._failed(st, f"GET {uri}: not UTF-8 text")
        except Exception as e:  # a fetch bug must not end the refresher
            self._log.exception("jwks fetch crashed", key_set=str(st.ref))
            return self._failed(st, f"internal error: {e}")
        changed = st.text is None or _canonical(st.text) != _canonical(text)
        recovered = bool(st.error)
        st.text, st.jwks_uri, st.fetched_at, st.error, st.failures = text, uri, time.time(), "", 0
        st.next_at = time.time() + self.refresh_interval
        if self._fetches is not None:
            self._fetches.labels(str(st.ref)).inc()
        if changed or recovered:
            self._log.info("jwks fetched", key_set=str(st.ref), jwks_uri=uri, keys=len(json.loads(text)["keys"]),
                           changed=changed, used_by=list(st.need.used_by))
        if changed:
            self._publish()
        else:
            self._set_available(st)
        return self.refresh_interval

    async def _discover(self, issuer: str, timeout: float) -> str:
        url = issuer.rstrip("/") + DISCOVERY_SUFFIX
        body = await self._fetch(url, timeout)
        try:
            doc = json.loads(body)
        except ValueError as e:
            raise FetchError(f"GET {url}: OpenID discovery document is not JSON: {e}") from None
        uri = doc.get("jwks_uri") if isinstance(doc, dict) else None
        if not isinstance(uri, str) or not uri:
            raise FetchError(f"GET {url}: OpenID discovery document has no jwks_uri")
        return uri

    def _failed(self, st: KeySetState, error: str) -> float:
        st.failures += 1
        st.error = error
        delay = min(self.retry_max, self.retry_interval * 2 ** (st.failures - 1))
        st.next_at = time.time() + delay
        if self._failures is not None:
            self._failures.labels(str(st.ref)).inc()
        dropped = st.text is not None and st.fetched_at is not None and time.time() - st.fetched_at > self.max_stale
        if dropped:
            st.text = None
        self._log.warning(
            "jwks fetch failed", key_set=str(st.ref), error=error, consecutive_failures=st.failures,
            retry_in=round(delay, 3), used_by=list(st.need.used_by),
            effect=("keeps the last key set fetched" if st.text is not None
                    else "tokens of this issuer are refused until the key set can be fetched"),
        )
        if dropped:
            self._publish()
        else:
            self._set_available(st)
        return delay

    def _publish(self) -> None:
        view = JwksView({r: s.text for r, s in sorted(self._states.items()) if s.text is not None})
        for st in self._states.values():
            self._set_available(st)
        if view.key_sets == self._view.key_sets:
            return
        self._view = view
        if self.on_change is not None:
            self.on_change(view)

    def _set_available(self, st: KeySetState) -> None:
        if self._available is not None:
            self._available.labels(str(st.ref)).set(1 if st.text is not None else 0)


def _canonical(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
