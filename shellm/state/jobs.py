"""
Async jobs and their webhook deliveries, in the state store.

A job is accepted (a row, C{queued}) before the client hears 202, so it
is never lost.  A node I{claims} a job by setting it C{running} with a
lease it renews; a job whose lease ran out was interrupted (its node died)
and is claimed again, once, then failed.  Claims are a conditional
C{UPDATE} (the row must still be what was read), and PostgreSQL also skips
rows another node holds (C{FOR UPDATE SKIP LOCKED}), so no job runs twice
at once, whatever the number of nodes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred

from shellm.errors import ShellmError
from shellm.state.schema import POSTGRESQL
from shellm.state.store import Cursor, Store

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
#: An Idempotency-Key names the same job for this long.
IDEMPOTENCY_WINDOW = 24 * 3600.0
#: Runs of one job, at most: an interrupted run is retried once.
MAX_RUNS = 2

_JOB_COLUMNS = (
    "id, client, status, body, callback_url, metadata, result, error, attempts, created_at, started_at, finished_at"
)


class IdempotencyKeyReused(ShellmError):
    status = 422
    code = "idempotency_key_reused"


def new_id(prefix: str, now: float) -> str:
    """
    An id that sorts by creation time (milliseconds, then random bits), so
    listings page by id.
    """
    return f"{prefix}_{int(now * 1000):013x}{os.urandom(8).hex()}"


@frozen
class Job:
    id: str
    client: str
    status: str
    body: dict[str, Any]
    callback_url: str | None
    metadata: Any
    result: Any
    error: Any
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Job:
        (id, client, status, body, url, metadata, result, error, attempts, created, started, finished) = row
        return cls(
            id,
            client,
            status,
            json.loads(body),
            url,
            json.loads(metadata) if metadata is not None else None,
            json.loads(result) if result is not None else None,
            json.loads(error) if error is not None else None,
            int(attempts),
            float(created),
            None if started is None else float(started),
            None if finished is None else float(finished),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "job",
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "callback_url": self.callback_url,
            "metadata": self.metadata,
            "result": self.result,
            "error": self.error,
        }


@frozen
class Delivery:
    id: str
    job_id: str
    url: str
    payload: bytes
    attempts: int
    created_at: float


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _locking(cursor: Cursor) -> str:
    return " FOR UPDATE SKIP LOCKED" if cursor.engine == POSTGRESQL else ""


def _get(cursor: Cursor, job_id: str, client: str | None) -> Job | None:
    sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?"
    params: tuple[Any, ...] = (job_id,)
    if client is not None:
        sql += " AND client = ?"
        params += (client,)
    row = cursor.execute(sql, params).fetchone()
    return None if row is None else Job.from_row(row)


def _submit(
    cursor: Cursor,
    client: str,
    body: dict[str, Any],
    body_hash: str,
    key: str | None,
    url: str | None,
    metadata: Any,
    now: float,
) -> tuple[Job, bool]:
    if key is not None:
        row = cursor.execute(
            "SELECT id, body_hash, created_at FROM jobs WHERE client = ? AND idempotency_key = ?", (client, key)
        ).fetchone()
        if row is not None:
            if now - float(row[2]) < IDEMPOTENCY_WINDOW:
                if row[1] != body_hash:
                    raise IdempotencyKeyReused("this Idempotency-Key was used with another body in the last 24 hours")
                job = _get(cursor, row[0], client)
                assert job is not None
                return job, True
            # An expired key names nothing any more.
            cursor.execute("UPDATE jobs SET idempotency_key = NULL WHERE id = ?", (row[0],))
    job_id = new_id("job", now)
    cursor.execute(
        "INSERT INTO jobs (id, client, status, body, body_hash, idempotency_key, callback_url, metadata,"
        " attempts, created_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, 0, ?)",
        (job_id, client, _dumps(body), body_hash, key, url, None if metadata is None else _dumps(metadata), now),
    )
    job = _get(cursor, job_id, None)
    assert job is not None
    return job, False


def _claim(cursor: Cursor, node: str, now: float, lease: float) -> tuple[Job | None, list[Job]]:
    """
    The oldest runnable job, now C{running} on C{node}; and the
    interrupted jobs failed on the way (they had had their runs).
    """
    given_up: list[Job] = []
    while True:
        row = cursor.execute(
            "SELECT id, status, attempts FROM jobs"
            " WHERE status = 'queued' OR (status = 'running' AND lease_until < ?)"
            " ORDER BY created_at, id LIMIT 1" + _locking(cursor),
            (now,),
        ).fetchone()
        if row is None:
            return None, given_up
        job_id, status, attempts = row
        if status == "running" and attempts >= MAX_RUNS:
            error = {
                "error": "interrupted",
                "message": f"the job was interrupted {attempts} times (its node stopped while running it)",
            }
            cursor.execute(
                "UPDATE jobs SET status = 'failed', error = ?, finished_at = ?, lease_until = NULL"
                " WHERE id = ? AND status = 'running' AND attempts = ?",
                (_dumps(error), now, job_id, attempts),
            )
            if cursor.rowcount:
                job = _get(cursor, job_id, None)
                assert job is not None
                given_up.append(job)
            continue
        cursor.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, lease_until = ?, node = ?"
            " WHERE id = ? AND status = ? AND attempts = ?",
            (now, now + lease, node, job_id, status, attempts),
        )
        if not cursor.rowcount:
            return None, given_up  # another node took it first
        return _get(cursor, job_id, None), given_up


def _release(cursor: Cursor, job_id: str, node: str) -> None:
    cursor.execute(
        "UPDATE jobs SET status = 'queued', attempts = attempts - 1, started_at = NULL, lease_until = NULL,"
        " node = NULL WHERE id = ? AND node = ? AND status = 'running'",
        (job_id, node),
    )


def _finish(cursor: Cursor, job_id: str, node: str, status: str, outcome: Any, now: float) -> Job | None:
    column = "result" if status == "succeeded" else "error"
    cursor.execute(
        f"UPDATE jobs SET status = ?, {column} = ?, finished_at = ?, lease_until = NULL"
        " WHERE id = ? AND status = 'running' AND node = ?",
        (status, _dumps(outcome), now, job_id, node),
    )
    if not cursor.rowcount:
        return None  # cancelled meanwhile, or no longer ours
    return _get(cursor, job_id, None)


def _add_delivery(cursor: Cursor, job: Job, payload: bytes, now: float) -> None:
    cursor.execute(
        "INSERT INTO webhook_deliveries (id, job_id, url, payload, state, attempts, next_attempt_at, created_at)"
        " VALUES (?, ?, ?, ?, 'pending', 0, ?, ?)",
        (new_id("msg", now), job.id, job.callback_url, payload.decode("utf-8"), now, now),
    )


def _cancel(cursor: Cursor, job_id: str, client: str | None, now: float) -> tuple[Job | None, str | None]:
    job = _get(cursor, job_id, client)
    if job is None or job.status in TERMINAL:
        return job, None
    cursor.execute(
        "UPDATE jobs SET status = 'cancelled', finished_at = ?, lease_until = NULL,"
        " error = ? WHERE id = ? AND status = ?",
        (now, _dumps({"error": "cancelled", "message": "the job was cancelled"}), job_id, job.status),
    )
    if not cursor.rowcount:
        return _get(cursor, job_id, client), None
    return _get(cursor, job_id, client), job.status


def _list(cursor: Cursor, client: str | None, status: str | None, limit: int, after: str | None) -> list[Job]:
    clauses, params = [], []
    for column, value in (("client", client), ("status", status)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if after is not None:
        clauses.append("id < ?")
        params.append(after)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    rows = cursor.execute(
        f"SELECT {_JOB_COLUMNS} FROM jobs{where} ORDER BY id DESC LIMIT ?", (*params, limit)
    ).fetchall()
    return [Job.from_row(row) for row in rows]


def _claim_delivery(cursor: Cursor, now: float, lease: float) -> Delivery | None:
    row = cursor.execute(
        "SELECT id, job_id, url, payload, attempts, created_at FROM webhook_deliveries"
        " WHERE state = 'pending' AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
        " ORDER BY next_attempt_at LIMIT 1" + _locking(cursor),
        (now, now),
    ).fetchone()
    if row is None:
        return None
    cursor.execute(
        "UPDATE webhook_deliveries SET lease_until = ? WHERE id = ? AND attempts = ? AND state = 'pending'",
        (now + lease, row[0], row[4]),
    )
    if not cursor.rowcount:
        return None
    return Delivery(row[0], row[1], row[2], row[3].encode("utf-8"), int(row[4]), float(row[5]))


def _record_attempt(
    cursor: Cursor,
    delivery: Delivery,
    now: float,
    status_code: int | None,
    error: str | None,
    state: str,
    next_at: float,
) -> None:
    attempt = delivery.attempts + 1
    cursor.execute(
        "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error) VALUES (?, ?, ?, ?, ?)",
        (delivery.id, attempt, now, status_code, error),
    )
    cursor.execute(
        "UPDATE webhook_deliveries SET attempts = ?, state = ?, next_attempt_at = ?, lease_until = NULL WHERE id = ?",
        (attempt, state, next_at, delivery.id),
    )


def _deliveries(cursor: Cursor, job_id: str) -> list[dict[str, Any]]:
    found = []
    for delivery_id, url, state, next_at in cursor.execute(
        "SELECT id, url, state, next_attempt_at FROM webhook_deliveries WHERE job_id = ? ORDER BY id",
        (job_id,),
    ).fetchall():
        tries = cursor.execute(
            "SELECT attempt, at, status_code, error FROM webhook_attempts WHERE delivery_id = ? ORDER BY attempt",
            (delivery_id,),
        ).fetchall()
        found.append(
            {
                "id": delivery_id,
                "url": url,
                "state": state,
                "next_attempt_at": float(next_at) if state == "pending" else None,
                "attempts": [
                    {"attempt": a, "at": float(at), "status_code": code, "error": err} for a, at, code, err in tries
                ],
            }
        )
    return found


def _redeliver(cursor: Cursor, job_id: str, now: float) -> bool:
    row = cursor.execute(
        "SELECT id FROM webhook_deliveries WHERE job_id = ? ORDER BY id DESC LIMIT 1", (job_id,)
    ).fetchone()
    if row is None:
        return False
    cursor.execute(
        "UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = ?, lease_until = NULL WHERE id = ?",
        (now, row[0]),
    )
    return True


def _cancelled_among(cursor: Cursor, ids: list[str]) -> list[str]:
    if not ids:
        return []
    marks = ", ".join("?" for _ in ids)
    rows = cursor.execute(f"SELECT id FROM jobs WHERE status = 'cancelled' AND id IN ({marks})", ids).fetchall()
    return [row[0] for row in rows]


def _renew(cursor: Cursor, node: str, ids: list[str], until: float) -> None:
    for job_id in ids:
        cursor.execute(
            "UPDATE jobs SET lease_until = ? WHERE id = ? AND node = ? AND status = 'running'", (until, job_id, node)
        )


def _expire_leases(cursor: Cursor) -> None:
    cursor.execute("UPDATE jobs SET lease_until = 0 WHERE status = 'running'")
    cursor.execute("UPDATE webhook_deliveries SET lease_until = NULL WHERE state = 'pending'")


class JobStore:
    """
    The jobs and deliveries tables, through L{Store.interact}.
    """

    def __init__(self, store: Store):
        self.store = store

    def submit(
        self,
        client: str,
        body: dict[str, Any],
        body_hash: str,
        key: str | None,
        url: str | None,
        metadata: Any,
        now: float,
    ) -> Deferred[tuple[Job, bool]]:
        """
        Accept a job (or find the one C{key} already names): fires with it
        and whether it was already there.

        @raise IdempotencyKeyReused: (as a failure) C{key} names a job with
            another body.
        """
        return self.store.interact(_submit, client, body, body_hash, key, url, metadata, now)

    def get(self, job_id: str, client: str | None) -> Deferred[Job | None]:
        return self.store.interact(_get, job_id, client)

    def list_jobs(self, client: str | None, status: str | None, limit: int, after: str | None) -> Deferred[list[Job]]:
        return self.store.interact(_list, client, status, limit, after)

    def claim(self, node: str, now: float, lease: float) -> Deferred[tuple[Job | None, list[Job]]]:
        return self.store.interact(_claim, node, now, lease)

    def release(self, job_id: str, node: str) -> Deferred[None]:
        """
        Give back a job C{node} claimed but did not start: queued again, as
        if never claimed.
        """
        return self.store.interact(_release, job_id, node)

    def finish(self, job_id: str, node: str, status: str, outcome: Any, now: float) -> Deferred[Job | None]:
        return self.store.interact(_finish, job_id, node, status, outcome, now)

    def add_delivery(self, job: Job, payload: bytes, now: float) -> Deferred[None]:
        return self.store.interact(_add_delivery, job, payload, now)

    def cancel(self, job_id: str, client: str | None, now: float) -> Deferred[tuple[Job | None, str | None]]:
        """
        Fires with the job (none: no such job) and the status it was
        cancelled from (none: it had already ended).
        """
        return self.store.interact(_cancel, job_id, client, now)

    def renew(self, node: str, ids: list[str], until: float) -> Deferred[None]:
        return self.store.interact(_renew, node, ids, until)

    def cancelled_among(self, ids: list[str]) -> Deferred[list[str]]:
        return self.store.interact(_cancelled_among, ids)

    def expire_leases(self) -> Deferred[None]:
        """
        Treat every running job as interrupted: for a store no other node
        uses, at start-up, when whatever ran them is gone.
        """
        return self.store.interact(_expire_leases)

    def claim_delivery(self, now: float, lease: float) -> Deferred[Delivery | None]:
        return self.store.interact(_claim_delivery, now, lease)

    def record_attempt(
        self,
        delivery: Delivery,
        now: float,
        status_code: int | None,
        error: str | None,
        state: str,
        next_at: float,
    ) -> Deferred[None]:
        return self.store.interact(_record_attempt, delivery, now, status_code, error, state, next_at)

    def deliveries(self, job_id: str) -> Deferred[list[dict[str, Any]]]:
        return self.store.interact(_deliveries, job_id)

    def redeliver(self, job_id: str, now: float) -> Deferred[bool]:
        return self.store.interact(_redeliver, job_id, now)
