"""
Conversations the gateway keeps, in the store: SheLLM sessions (one row, and
one row per completed exchange) and stored OpenAI Responses (one row each,
chained by C{previous_id}).  The history is text, so any provider can take
the next turn, on any node sharing the store.

Every row belongs to the client that made it: another client's id reads as
unknown.  Rows expire when idle (C{expires_at}); an expired row reads as
unknown at once, and L{Conversations.sweep} deletes it with its turns.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from shellm.errors import NotFound, ShellmError, StoreUnavailable
from shellm.state.store import Cursor, Store

#: How long a turn may hold its session before another may take it (a node
#: that died mid-turn leaves its lease behind).
LEASE_SECONDS = 3600.0
#: Seconds between sweeps of expired conversations.
SWEEP_INTERVAL = 600.0
#: How far C{previous_response_id} chains are followed, at most.
MAX_CHAIN = 1000


class SessionNotFound(NotFound):
    code = "session_not_found"
    param = "session_id"


class ResponseNotFound(NotFound):
    code = "response_not_found"

    def __init__(self, message: str, param: str):
        """
        @param param: the field that named it: C{previous_response_id} in a
            request body, C{response_id} in a path.
        """
        super().__init__(message)
        self.param = param


class SessionBusy(ShellmError):
    status = 409
    code = "session_busy"


class SessionFull(ShellmError):
    status = 409
    code = "session_full"


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


@frozen
class Exchange:
    """
    One completed turn: what the user said and what the model answered.
    """

    seq: int
    prompt: str
    answer: str
    model: str | None
    provider: str | None
    input_tokens: int | None
    output_tokens: int | None
    created_at: float

    def to_json(self) -> dict[str, Any]:
        usage = None
        if self.input_tokens is not None or self.output_tokens is not None:
            usage = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        return {
            "seq": self.seq,
            "prompt": self.prompt,
            "answer": self.answer,
            "model": self.model,
            "provider": self.provider,
            "usage": usage,
            "created_at": int(self.created_at),
        }


@frozen
class Session:
    id: str
    client: str
    model: str | None
    system: str | None
    metadata: dict[str, str]
    created_at: float
    updated_at: float
    expires_at: float
    turns: int
    chars: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "session",
            "model": self.model,
            "system": self.system,
            "metadata": self.metadata,
            "created_at": int(self.created_at),
            "updated_at": int(self.updated_at),
            "expires_at": int(self.expires_at),
            "turn_count": self.turns,
            "chars": self.chars,
        }


@frozen
class StoredResponse:
    """
    A stored Responses API answer.

    @ivar input: the request's input items, reduced to C{(role, text)}.
    """

    id: str
    client: str
    previous_id: str | None
    model: str
    instructions: str | None
    input: tuple[tuple[str, str], ...]
    output: str
    provider: str | None
    input_tokens: int | None
    output_tokens: int | None
    metadata: dict[str, str]
    created_at: float
    expires_at: float


_SESSION_COLUMNS = "id, client, model, system, metadata, created_at, updated_at, expires_at, turns, chars"
_RESPONSE_COLUMNS = (
    "id, client, previous_id, model, instructions, input, output, provider, input_tokens, output_tokens,"
    " metadata, created_at, expires_at"
)


def _session(row: Sequence[Any]) -> Session:
    return Session(
        id=row[0],
        client=row[1],
        model=row[2],
        system=row[3],
        metadata=json.loads(row[4]),
        created_at=float(row[5]),
        updated_at=float(row[6]),
        expires_at=float(row[7]),
        turns=int(row[8]),
        chars=int(row[9]),
    )


def _response(row: Sequence[Any]) -> StoredResponse:
    return StoredResponse(
        id=row[0],
        client=row[1],
        previous_id=row[2],
        model=row[3],
        instructions=row[4],
        input=tuple((item["role"], item["text"]) for item in json.loads(row[5])),
        output=row[6],
        provider=row[7],
        input_tokens=row[8],
        output_tokens=row[9],
        metadata=json.loads(row[10]),
        created_at=float(row[11]),
        expires_at=float(row[12]),
    )


class Conversations:
    """
    Sessions and stored responses on the store.

    @param ttl: seconds a conversation lives after its last use.
    @param max_turns: completed exchanges a session may hold.
    @param max_chars: characters of stored text a session may hold.
    """

    log = Logger()

    def __init__(self, store: Store, clock: IReactorTime, ttl: float, max_turns: int, max_chars: int):
        self.store = store
        self._clock = clock
        self.ttl = ttl
        self.max_turns = max_turns
        self.max_chars = max_chars

    def _now(self) -> float:
        return self._clock.seconds()

    # -- sessions

    def create_session(
        self, client: str, model: str | None, system: str | None, metadata: dict[str, str]
    ) -> Deferred[Session]:
        now = self._now()
        session = Session(new_id("sess_"), client, model, system, metadata, now, now, now + self.ttl, 0, 0)

        def insert(cursor: Cursor) -> Session:
            cursor.execute(
                f"INSERT INTO sessions ({_SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session.id,
                    client,
                    model,
                    system,
                    json.dumps(metadata),
                    now,
                    now,
                    session.expires_at,
                    0,
                    0,
                ),
            )
            return session

        return self.store.interact(insert)

    def get_session(self, client: str, session_id: str) -> Deferred[tuple[Session, list[Exchange]]]:
        """
        A live session of C{client} and its exchanges, oldest first.

        @raise SessionNotFound: (as a failure) unknown, expired or another's.
        """
        now = self._now()

        def read(cursor: Cursor) -> tuple[Session, list[Exchange]]:
            session = _live_session(cursor, client, session_id, now)
            return session, _turns(cursor, session_id)

        return self.store.interact(read)

    def list_sessions(self, client: str, limit: int, after: str | None) -> Deferred[tuple[list[Session], bool]]:
        """
        C{client}'s live sessions, oldest first, C{limit} at a time after
        the session C{after}; and whether more follow.
        """
        now = self._now()

        def read(cursor: Cursor) -> tuple[list[Session], bool]:
            since: tuple[float, str] = (-1.0, "")
            if after is not None:
                row = cursor.execute(
                    "SELECT created_at, id FROM sessions WHERE id = ? AND client = ?", (after, client)
                ).fetchone()
                if row is None:
                    raise SessionNotFound(f"no such session: {after[:100]}")
                since = (float(row[0]), row[1])
            rows = cursor.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE client = ? AND expires_at > ?"
                " AND (created_at > ? OR (created_at = ? AND id > ?)) ORDER BY created_at, id LIMIT ?",
                (client, now, since[0], since[0], since[1], limit + 1),
            ).fetchall()
            return [_session(row) for row in rows[:limit]], len(rows) > limit

        return self.store.interact(read)

    def list_all_sessions(self, limit: int, after: str | None) -> Deferred[tuple[list[Session], bool]]:
        """
        Every client's live sessions, for an administrator: newest first,
        C{limit} at a time after the session C{after}; and whether more follow.
        """
        now = self._now()

        def read(cursor: Cursor) -> tuple[list[Session], bool]:
            if after is None:
                rows = cursor.execute(
                    f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE expires_at > ?"
                    " ORDER BY created_at DESC, id DESC LIMIT ?",
                    (now, limit + 1),
                ).fetchall()
            else:
                mark = cursor.execute("SELECT created_at FROM sessions WHERE id = ?", (after,)).fetchone()
                if mark is None:
                    raise SessionNotFound(f"no such session: {after[:100]}")
                # Times are 8-byte floats on both engines (migration 0007):
                # the value read back is the value stored.
                rows = cursor.execute(
                    f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE expires_at > ?"
                    " AND (created_at < ? OR (created_at = ? AND id < ?))"
                    " ORDER BY created_at DESC, id DESC LIMIT ?",
                    (now, mark[0], mark[0], after, limit + 1),
                ).fetchall()
            return [_session(row) for row in rows[:limit]], len(rows) > limit

        return self.store.interact(read)

    def owner_of(self, session_id: str) -> Deferred[str | None]:
        """
        Whose session C{session_id} is (its client scope), or L{None}.
        """
        return self.store.query("SELECT client FROM sessions WHERE id = ?", (session_id,)).addCallback(
            lambda rows: str(rows[0][0]) if rows else None
        )

    def delete_session(self, client: str, session_id: str) -> Deferred[None]:
        """
        @raise SessionNotFound: (as a failure) unknown, expired or another's.
        """
        now = self._now()

        def delete(cursor: Cursor) -> None:
            _live_session(cursor, client, session_id, now)
            cursor.execute("DELETE FROM session_turns WHERE session_id = ?", (session_id,))
            cursor.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

        return self.store.interact(delete)

    def begin_turn(self, client: str, session_id: str) -> Deferred[tuple[Session, list[Exchange]]]:
        """
        Take the session for one turn: its lease, on every node sharing the
        store, until L{finish_turn} or L{release}.

        @raise SessionNotFound: unknown, expired or another's.
        @raise SessionBusy: a turn is already under way.
        @raise SessionFull: the session holds its most turns or text.
        """
        now = self._now()

        def claim(cursor: Cursor) -> tuple[Session, list[Exchange]]:
            session = _live_session(cursor, client, session_id, now)
            if session.turns >= self.max_turns or session.chars >= self.max_chars:
                raise SessionFull(
                    f"session {session_id} holds its most turns ({self.max_turns}) or characters"
                    f" ({self.max_chars}); start a new session"
                )
            taken = cursor.execute(
                "UPDATE sessions SET busy_until = ? WHERE id = ? AND (busy_until IS NULL OR busy_until < ?)"
                " RETURNING id",
                (now + LEASE_SECONDS, session_id, now),
            ).fetchall()
            if not taken:
                raise SessionBusy(f"session {session_id} is answering another turn; retry when it is done", 1)
            return session, _turns(cursor, session_id)

        return self.store.interact(claim)

    def finish_turn(
        self,
        session_id: str,
        prompt: str,
        answer: str,
        model: str | None,
        provider: str | None,
        input_tokens: int | None,
        output_tokens: int | None,
    ) -> Deferred[int]:
        """
        Append a completed exchange and give the lease back, in one
        transaction; fires with the exchange's number.
        """
        now = self._now()

        def append(cursor: Cursor) -> int:
            row = cursor.execute("SELECT turns FROM sessions WHERE id = ?", (session_id,)).fetchone()
            if row is None:
                raise SessionNotFound(f"session {session_id} was deleted during the turn")
            seq = int(row[0]) + 1
            cursor.execute(
                "INSERT INTO session_turns (session_id, seq, prompt, answer, model, provider, input_tokens,"
                " output_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (session_id, seq, prompt, answer, model, provider, input_tokens, output_tokens, now),
            )
            cursor.execute(
                "UPDATE sessions SET turns = ?, chars = chars + ?, updated_at = ?, expires_at = ?, busy_until = NULL"
                " WHERE id = ?",
                (seq, len(prompt) + len(answer), now, now + self.ttl, session_id),
            )
            return seq

        return self.store.interact(append)

    def release(self, session_id: str) -> Deferred[None]:
        """
        Give the lease back without storing anything (the turn failed).
        """

        def free(cursor: Cursor) -> None:
            cursor.execute("UPDATE sessions SET busy_until = NULL WHERE id = ?", (session_id,))

        return self.store.interact(free)

    # -- responses

    def save_response(self, response: StoredResponse) -> Deferred[None]:
        def insert(cursor: Cursor) -> None:
            cursor.execute(
                f"INSERT INTO responses ({_RESPONSE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    response.id,
                    response.client,
                    response.previous_id,
                    response.model,
                    response.instructions,
                    json.dumps([{"role": role, "text": text} for role, text in response.input]),
                    response.output,
                    response.provider,
                    response.input_tokens,
                    response.output_tokens,
                    json.dumps(response.metadata),
                    response.created_at,
                    response.expires_at,
                ),
            )
            if response.previous_id is not None:
                # Continuing a chain keeps all of it alive.
                _touch_chain(cursor, response.previous_id, response.expires_at)

        return self.store.interact(insert)

    def get_response(self, client: str, response_id: str) -> Deferred[StoredResponse]:
        """
        @raise ResponseNotFound: (as a failure) unknown, expired or another's.
        """
        now = self._now()
        return self.store.interact(lambda cursor: _live_response(cursor, client, response_id, now, "response_id"))

    def chain(self, client: str, response_id: str) -> Deferred[list[StoredResponse]]:
        """
        The stored responses from the first of the chain to C{response_id},
        oldest first.  A link that has expired or was deleted ends the chain
        there (the conversation before it is gone).

        @raise ResponseNotFound: (as a failure) C{response_id} itself is
            unknown, expired or another's.
        """
        now = self._now()

        def read(cursor: Cursor) -> list[StoredResponse]:
            found = [_live_response(cursor, client, response_id, now, "previous_response_id")]
            while found[-1].previous_id is not None and len(found) < MAX_CHAIN:
                row = cursor.execute(
                    f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE id = ? AND client = ? AND expires_at > ?",
                    (found[-1].previous_id, client, now),
                ).fetchone()
                if row is None:
                    break
                found.append(_response(row))
            return found[::-1]

        return self.store.interact(read)

    def delete_response(self, client: str, response_id: str) -> Deferred[None]:
        now = self._now()

        def delete(cursor: Cursor) -> None:
            _live_response(cursor, client, response_id, now, "response_id")
            cursor.execute("DELETE FROM responses WHERE id = ?", (response_id,))

        return self.store.interact(delete)

    # -- expiry

    def sweep(self) -> Deferred[int]:
        """
        Delete every expired session (with its turns) and response; fires
        with how many conversations went.
        """
        now = self._now()

        def delete(cursor: Cursor) -> int:
            cursor.execute(
                "DELETE FROM session_turns WHERE session_id IN (SELECT id FROM sessions WHERE expires_at <= ?)",
                (now,),
            )
            gone = len(cursor.execute("DELETE FROM sessions WHERE expires_at <= ? RETURNING id", (now,)).fetchall())
            gone += len(cursor.execute("DELETE FROM responses WHERE expires_at <= ? RETURNING id", (now,)).fetchall())
            return gone

        return self.store.interact(delete)

    def sweep_quietly(self) -> Deferred[None]:
        """
        L{sweep}, logged; a store that is down is tried at the next sweep.
        """

        def swept(gone: int) -> None:
            if gone:
                self.log.info("deleted {count} expired conversations", count=gone)

        def failed(failure: Failure) -> None:
            if failure.check(StoreUnavailable):
                return
            self.log.failure("sweeping expired conversations failed", failure)

        return self.sweep().addCallbacks(swept, failed)


def _live_session(cursor: Cursor, client: str, session_id: str, now: float) -> Session:
    row = cursor.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ? AND client = ? AND expires_at > ?",
        (session_id, client, now),
    ).fetchone()
    if row is None:
        raise SessionNotFound(f"no such session: {session_id[:100]}")
    return _session(row)


def _turns(cursor: Cursor, session_id: str) -> list[Exchange]:
    rows = cursor.execute(
        "SELECT seq, prompt, answer, model, provider, input_tokens, output_tokens, created_at"
        " FROM session_turns WHERE session_id = ? ORDER BY seq",
        (session_id,),
    ).fetchall()
    return [Exchange(*row) for row in rows]


def _live_response(cursor: Cursor, client: str, response_id: str, now: float, param: str) -> StoredResponse:
    row = cursor.execute(
        f"SELECT {_RESPONSE_COLUMNS} FROM responses WHERE id = ? AND client = ? AND expires_at > ?",
        (response_id, client, now),
    ).fetchone()
    if row is None:
        raise ResponseNotFound(f"no such response: {response_id[:100]}", param)
    return _response(row)


def _touch_chain(cursor: Cursor, response_id: str, expires_at: float) -> None:
    seen = 0
    current: str | None = response_id
    while current is not None and seen < MAX_CHAIN:
        row = cursor.execute("SELECT previous_id FROM responses WHERE id = ?", (current,)).fetchone()
        if row is None:
            return
        cursor.execute(
            "UPDATE responses SET expires_at = ? WHERE id = ? AND expires_at < ?", (expires_at, current, expires_at)
        )
        current, seen = row[0], seen + 1
