"""
The response cache: complete answers kept in memory for a while, so the same
question asked again by the same key costs no provider run, and a burst of
it costs one.

What it owns:

  - the key: SHA-256 over canonical JSON of the normalised request (the
    client's key id unless the cache is shared, the provider, upstream model
    and alias, system prompt, prompt with its history, C{max_tokens},
    sampling controls, structured output and tools), never the raw body:
    two dialects asking the same thing share an entry, and C{stream} is not
    in it (one stored answer is written as JSON or as events alike);
  - the entries: a C{cachetools.TLRUCache} on the reactor's clock, each
    with its own expiry, bounded by bytes and evicting the least recently
    used;
  - coalescing: the first of several identical requests runs (it leads),
    the others wait for it, each for at most C{max_wait} seconds, and then
    read its answer; a waiter that leaves takes nobody's run with it, and
    when the leader ends without a storable answer the next waiter leads;
  - what a request may ask (L{read_control}): its C{cache} field and its
    C{Cache-Control} header.

Only complete (C{finish_reason} C{stop}), successful answers of the
provider asked for (no fallback) are stored.  Requests whose history lives
on the server (a session turn, a C{previous_response_id}) are never cached.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from attrs import asdict, define, evolve, frozen
from cachetools import TLRUCache
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from shellm.completion import CacheControl, Completion, CompletionRequest, EventSink, TextDelta
from shellm.errors import InvalidField
from shellm.models import ModelEntry

HIT, MISS, BYPASS = "hit", "miss", "bypass"

#: The longest C{cache.ttl} a request may name (it is further bounded by
#: the operator's C{SHELLM_CACHE_TTL}).
MAX_REQUEST_TTL = 365 * 86400

#: What every entry costs beyond its text: the completion's other fields,
#: the key, the cache's own bookkeeping (an estimate, on purpose generous).
ENTRY_OVERHEAD = 512

#: Controls for a request the cache must not touch.
UNCACHED = CacheControl(no_cache=True, no_store=True)

_CONTROL_FIELDS = ("ttl", "no_cache", "no_store")


def read_control(body: Mapping[str, Any], cache_control: str | None) -> CacheControl:
    """
    A request's cache controls: the body's C{cache} object (C{ttl},
    C{no_cache}, C{no_store}) and the C{no-cache} / C{no-store} directives
    of its C{Cache-Control} header (other directives are ignored, as RFC
    9111 says of unknown ones).

    @raise InvalidField: naming the wrong field (C{cache}, C{cache.ttl}, ...).
    """
    value = body.get("cache")
    ttl, no_cache, no_store = None, False, False
    if value is not None:
        if not isinstance(value, dict):
            raise InvalidField('"cache" must be an object: {"ttl", "no_cache", "no_store"}', "cache")
        unknown = sorted(set(value) - set(_CONTROL_FIELDS))
        if unknown:
            name = str(unknown[0])[:100]
            raise InvalidField(f'unknown field: "cache.{name}"', f"cache.{name}")
        ttl = value.get("ttl")
        if isinstance(ttl, float) and ttl.is_integer():
            ttl = int(ttl)  # 60.0 is an integer to JSON
        if "ttl" in value and (not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_REQUEST_TTL):
            raise InvalidField(f'"cache.ttl" must be an integer from 0 to {MAX_REQUEST_TTL} (seconds)', "cache.ttl")
        for name in ("no_cache", "no_store"):
            if name in value and not isinstance(value[name], bool):
                raise InvalidField(f'"cache.{name}" must be true or false', f"cache.{name}")
        no_cache = value.get("no_cache") is True
        no_store = value.get("no_store") is True
    directives = {part.split("=", 1)[0].strip().lower() for part in (cache_control or "").split(",")}
    return CacheControl(
        ttl=ttl,
        no_cache=no_cache or "no-cache" in directives,
        no_store=no_store or "no-store" in directives,
    )


def cache_key(scope: str | None, request: CompletionRequest) -> str:
    """
    The key of C{request}'s answer for the key id C{scope} (L{None}: shared
    by every key), as 64 hex digits.
    """
    fields = {
        "key": scope,
        "provider": request.entry.provider,
        "upstream": request.entry.upstream,
        "alias": request.entry.alias,
        "system": request.system,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": list(request.stop),
        "output": asdict(request.output) if request.output is not None else None,
    }
    # ASCII escapes: a lone surrogate (which JSON lets a client send in a
    # stop sequence) has no UTF-8 form.
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


@frozen
class CachedAnswer:
    """
    One stored answer.

    @ivar deltas: the text as the client's stream received it, replayed in
        order on a streamed hit.
    @ivar stored_at: reactor seconds.
    """

    completion: Completion
    deltas: tuple[str, ...]
    stored_at: float
    expires_at: float
    nbytes: int


@define
class Ticket:
    """
    What the cache decided for one request: read by L{ResponseCache.serve},
    which answers from it or runs the request and settles it.

    @ivar status: C{hit}, C{miss} or C{bypass} (the cache was not read).
    @ivar answer: the stored answer, on a hit.
    @ivar store_for: seconds the answer will be kept; 0: it will not be.
    @ivar leading: the waiters this request's run answers, when it leads.
    """

    status: str
    key: str
    answer: CachedAnswer | None = None
    store_for: float = 0
    leading: _Flight | None = None


class _Flight:
    """
    A leader's run under way, and the requests waiting for it.
    """

    def __init__(self) -> None:
        self._waiters: list[Deferred[None]] = []

    def wait(self, clock: IReactorTime, seconds: float) -> Deferred[None]:
        """
        Fires when the leader ends, or after C{seconds}; cancelling it only
        stops this waiter.
        """
        waiter: Deferred[None] = Deferred(self._leave)
        self._waiters.append(waiter)
        # Given up waiting: the waiter left (cancelled), and goes on as if
        # the leader had ended.
        return waiter.addTimeout(seconds, clock, onTimeoutCancel=lambda result, timeout: None)

    def _leave(self, waiter: Deferred[None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def land(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _size(answer_text: str, deltas: tuple[str, ...], key: str) -> int:
    return len(answer_text.encode("utf-8")) + sum(len(d.encode("utf-8")) for d in deltas) + len(key) + ENTRY_OVERHEAD


class ResponseCache:
    """
    The daemon's response cache (one per node).

    @ivar hits: requests answered from the cache.
    @ivar misses: requests that read the cache, found nothing, and ran.
    @ivar bypasses: requests that did not read it (an opt-out, or a
        request it does not take).
    """

    def __init__(
        self,
        clock: IReactorTime,
        ttl: float,
        max_bytes: int,
        shared: bool = False,
        max_wait: float = 120.0,
    ):
        """
        @param ttl: how long an answer is kept, at most; 0 turns caching off.
        @param max_bytes: the bound on what all entries hold, roughly in
            bytes (their texts and an overhead each).
        @param shared: answers serve every key, not only the key that asked.
        @param max_wait: how long a request waits for an identical one
            under way before it runs on its own.
        """
        self._clock = clock
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.shared = shared
        self.max_wait = max_wait
        self._entries: TLRUCache[str, CachedAnswer] = TLRUCache(
            maxsize=max_bytes,
            ttu=lambda key, answer, now: answer.expires_at,
            timer=clock.seconds,
            getsizeof=lambda answer: answer.nbytes,
        )
        self._flights: dict[str, _Flight] = {}
        self.hits = self.misses = self.bypasses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def stats(self) -> dict[str, Any]:
        """
        C{entries}, C{bytes}, C{hits}, C{misses}, C{bypasses} and
        C{hit_ratio} (hits over requests that read the cache; L{None}
        before the first), for C{GET /admin/cache} and C{/metrics}.
        """
        self._entries.expire()
        read = self.hits + self.misses
        return {
            "enabled": self.enabled,
            "entries": len(self._entries),
            "bytes": int(self._entries.currsize),
            "max_bytes": self.max_bytes,
            "ttl": self.ttl,
            "shared": self.shared,
            "hits": self.hits,
            "misses": self.misses,
            "bypasses": self.bypasses,
            "hit_ratio": round(self.hits / read, 4) if read else None,
        }

    def clear(self) -> int:
        """
        Forget every entry; returns how many there were.  Runs under way
        still answer their waiters, and store what they find.
        """
        self._entries.expire()
        count = len(self._entries)
        self._entries.clear()
        return count

    async def consult(self, scope: str, request: CompletionRequest) -> Ticket:
        """
        Look C{request} up for the key id C{scope}, waiting (bounded) for an
        identical request under way; the L{Ticket} says what to do.  A
        ticket that leads must reach L{serve} or L{abandon}.
        """
        control = request.cache
        ttl = self.ttl if control.ttl is None else min(control.ttl, self.ttl)
        store_for = 0 if control.no_store else ttl
        if control.no_cache and not store_for:
            # Neither read nor written (a session's turn, say): no key to
            # hash over a history that may be a megabyte long.
            self.bypasses += 1
            return Ticket(BYPASS, "")
        key = cache_key(None if self.shared else scope, request)
        if control.no_cache:
            self.bypasses += 1
            return Ticket(BYPASS, key, store_for=store_for)
        deadline = self._clock.seconds() + self.max_wait
        while True:
            answer = self._entries.get(key)
            if answer is not None:
                self.hits += 1
                return Ticket(HIT, key, answer=answer)
            flight = self._flights.get(key)
            left = deadline - self._clock.seconds()
            if flight is None or left <= 0:
                self.misses += 1
                if flight is None and store_for > 0:
                    flight = self._flights[key] = _Flight()
                    return Ticket(MISS, key, store_for=store_for, leading=flight)
                return Ticket(MISS, key, store_for=store_for)
            await flight.wait(self._clock, left)

    async def serve(
        self,
        ticket: Ticket,
        request: CompletionRequest,
        run: Callable[[EventSink], Awaitable[Completion]],
        sink: EventSink,
    ) -> Completion:
        """
        Answer C{request}: replay a hit into C{sink} at once, or C{run} it
        (handing C{run} the sink to use) and store what it answers when it
        may be stored.
        """
        if ticket.answer is not None:
            for text in ticket.answer.deltas:
                sink(TextDelta(text))
            return evolve(ticket.answer.completion, request_id=request.request_id, duration_ms=0, queued_ms=0)
        deltas: list[str] = []

        def recording(event: TextDelta) -> None:
            deltas.append(event.text)
            sink(event)

        completion = None
        try:
            completion = await run(recording)
            return completion
        finally:
            self._settle(ticket, request, completion, deltas)

    def abandon(self, ticket: Ticket) -> None:
        """
        The request of C{ticket} will not run (it was refused): whoever
        waits for it reads the cache again, and one of them leads.
        """
        self._settle(ticket, None, None, [])

    def _settle(
        self, ticket: Ticket, request: CompletionRequest | None, completion: Completion | None, deltas: list[str]
    ) -> None:
        if completion is not None and request is not None and ticket.store_for > 0 and _storable(completion):
            self._store(ticket, request, completion, deltas)
        flight = ticket.leading
        if flight is not None:
            ticket.leading = None
            if self._flights.get(ticket.key) is flight:
                del self._flights[ticket.key]
            flight.land()

    def _store(self, ticket: Ticket, request: CompletionRequest, completion: Completion, deltas: list[str]) -> None:
        # The stream of a hit is what a live stream would have carried: the
        # text as it came, or (when the leader's client did not stream it)
        # the answer in one piece.  Tool calls are written by the dialect
        # from the validated answer, never as text.
        if request.output is not None and request.output.kind == "tools":
            replay: tuple[str, ...] = ()
        elif "".join(deltas) == completion.content:
            replay = tuple(deltas)
        else:
            replay = (completion.content,) if completion.content else ()
        now = self._clock.seconds()
        answer = CachedAnswer(
            completion=completion,
            deltas=replay,
            stored_at=now,
            expires_at=now + ticket.store_for,
            nbytes=_size(completion.content, replay, ticket.key),
        )
        try:
            self._entries[ticket.key] = answer
        except ValueError:
            pass  # larger than the whole cache: not kept


def _storable(completion: Completion) -> bool:
    return completion.fallback is None and completion.finish_reason == "stop"


@define
class CacheHit:
    """
    A request the cache answers: admitted without a queue place, a provider
    or its quota (see L{shellm.routing.router.Admission}, whose part it
    plays).
    """

    entry: ModelEntry
    admitted_at: float
    cache: Ticket
    fallback: None = None

    def withdraw(self) -> None:
        """
        Nothing was taken.
        """
