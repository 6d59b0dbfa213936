"""
The job runner: claims queued jobs from the store (at most
C{SHELLM_JOBS_MAX_CONCURRENT} at once on this node, and only while no
interactive request waits for a queue slot), runs them, records the
outcome, and sends the webhook deliveries that are due, retrying with
exponential backoff and jitter until one is delivered, the receiver says
410, or the retry window has passed.
"""

from __future__ import annotations

import os
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from shellm.errors import ShellmError, StoreUnavailable
from shellm.state.jobs import Delivery, Job, JobStore

#: Seconds a node's claim on a running job lasts unless renewed.
LEASE = 30.0
#: The first retry of a failed delivery, then four times longer each time.
FIRST_RETRY = 5.0
MAX_RETRY = 4 * 3600.0


class Attempt(Protocol):
    """
    What one delivery attempt got (L{shellm.http.webhooks.Outcome}).
    """

    @property
    def status_code(self) -> int | None: ...
    @property
    def error(self) -> str | None: ...
    @property
    def delivered(self) -> bool: ...
    @property
    def gone(self) -> bool: ...
    @property
    def refused(self) -> bool: ...


class Sender(Protocol):
    """
    Sends one signed webhook (L{shellm.http.webhooks.WebhookSender}).
    """

    def send(self, url: str, message_id: str, payload: bytes) -> Awaitable[Attempt]: ...


def payload(job: Job, now: float) -> bytes:
    """
    The webhook body for a finished job.
    """
    import json

    event = {
        "type": f"job.{job.status}",
        "timestamp": datetime.fromtimestamp(now, tz=UTC).isoformat().replace("+00:00", "Z"),
        "data": job.to_json(),
    }
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class JobRunner:
    log = Logger()

    def __init__(
        self,
        clock: Any,
        jobs: JobStore,
        execute: Callable[[Job], Awaitable[dict[str, Any]]],
        sender: Sender | None,
        registry: CollectorRegistry | None = None,
        max_concurrent: int = 1,
        poll: float = 1.0,
        retry_window: float = 86400.0,
        first_retry: float = FIRST_RETRY,
        busy: Callable[[], bool] = lambda: False,
        jitter: Callable[[], float] = random.random,
        lease: float = LEASE,
    ):
        """
        @param execute: runs a job's body, firing with the C{/completions}
            answer; cancelling it stops the run.
        @param busy: whether interactive requests are waiting (no job starts).
        """
        self._clock = clock
        self.jobs = jobs
        self._execute = execute
        self._sender = sender
        self._max = max_concurrent
        self._poll = poll
        self._retry_window = retry_window
        self._first_retry = first_retry
        self._busy = busy
        self._jitter = jitter
        self._lease = lease
        self.node = os.urandom(6).hex()
        self.running: dict[str, Deferred[None]] = {}
        self._sending = 0
        self._loop: LoopingCall | None = None
        self._active = False
        self._ticking = False
        self._again = False
        registry = registry or CollectorRegistry()
        self.jobs_total = Counter("shellm_jobs", "Jobs by the status they ended in", ["status"], registry=registry)
        self.deliveries_total = Counter(
            "shellm_webhook_deliveries", "Webhook delivery attempts by outcome", ["outcome"], registry=registry
        )

    def start(self) -> Deferred[None]:
        """
        Begin polling; on a store no other node shares, first treat every
        job left running as interrupted (whoever ran it is gone).
        """
        ready: Deferred[None] = ensureDeferred(self._prepare())
        return ready

    async def _prepare(self) -> None:
        await self.jobs.store.open()
        if not self.jobs.store.shared:
            await self.jobs.expire_leases()
        self._active = True
        self._loop = LoopingCall(self.kick)
        self._loop.clock = self._clock
        self._loop.start(self._poll, now=True)

    def stop(self) -> None:
        """
        Stop polling and stop the runs in progress: they stay C{running} in
        the store, to be retried by the next node to start.
        """
        self._active = False
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        for run in list(self.running.values()):
            run.cancel()

    def kick(self) -> None:
        """
        Look for work now (new jobs, due deliveries).
        """
        if self._ticking:
            self._again = True
            return
        self._ticking = True
        ticking = ensureDeferred(self._tick())
        # The store being down is logged by the store; the next poll retries.
        ticking.addErrback(lambda f: f.trap(StoreUnavailable))
        ticking.addErrback(lambda f: self.log.failure("job poll failed", f))

    async def _tick(self) -> None:
        try:
            while True:
                self._again = False
                await self._watch_running()
                while len(self.running) < self._max and not self._busy() and self._active:
                    job, given_up = await self.jobs.claim(self.node, self._clock.seconds(), self._lease)
                    for failed in given_up:
                        await self._ended(failed)
                    if job is None:
                        break
                    if self._busy() or not self._active:
                        # An interactive request came (or shutdown began)
                        # while the claim was on its way: it goes first.
                        await self.jobs.release(job.id, self.node)
                        break
                    self._start(job)
                while self._sender is not None and self._sending < 4 and self._active:
                    delivery = await self.jobs.claim_delivery(self._clock.seconds(), 60.0)
                    if delivery is None:
                        break
                    self._sending += 1
                    ensureDeferred(self._deliver(delivery))
                if not self._again:
                    return
        finally:
            self._ticking = False

    async def _watch_running(self) -> None:
        ids = list(self.running)
        if not ids:
            return
        await self.jobs.renew(self.node, ids, self._clock.seconds() + self._lease)
        for job_id in await self.jobs.cancelled_among(ids):
            self.stop_run(job_id)

    def stop_run(self, job_id: str) -> bool:
        """
        Stop the run of a job cancelled meanwhile, if this node runs it.
        """
        run = self.running.get(job_id)
        if run is None:
            return False
        run.cancel()
        return True

    def _start(self, job: Job) -> None:
        self.log.info("job {job} started (run {attempt})", job=job.id, attempt=job.attempts)
        run: Deferred[None] = ensureDeferred(self._run(job))
        self.running[job.id] = run
        run.addErrback(lambda f: f.trap(CancelledError))
        run.addErrback(lambda f: self.log.failure("job {job} failed unexpectedly", f, job=job.id))

        def done(_: object) -> None:
            self.running.pop(job.id, None)
            self.kick()

        run.addBoth(done)

    async def _run(self, job: Job) -> None:
        status: str
        outcome: Any
        try:
            outcome, status = await self._execute(job), "succeeded"
        except ShellmError as error:
            outcome, status = error.to_json(), "failed"
        except CancelledError:
            return  # cancelled by its client (already recorded), or a shutdown: retried later
        except Exception as error:
            self.log.failure("job {job} crashed", job=job.id)
            outcome, status = {"error": "internal_error", "message": type(error).__name__}, "failed"
        finished = await self.jobs.finish(job.id, self.node, status, outcome, self._clock.seconds())
        if finished is not None:
            await self._ended(finished)

    async def _ended(self, job: Job) -> None:
        self.jobs_total.labels(job.status).inc()
        self.log.info("job {job} {status}", job=job.id, status=job.status)
        if job.callback_url is not None and job.status in ("succeeded", "failed"):
            now = self._clock.seconds()
            await self.jobs.add_delivery(job, payload(job, now), now)

    def next_delay(self, attempts: int) -> float:
        """
        Seconds before the retry after C{attempts} failed ones: four times
        longer each time, capped, give or take 20%.
        """
        delay = min(self._first_retry * 4 ** (attempts - 1), MAX_RETRY)
        return float(delay * (0.8 + 0.4 * self._jitter()))

    async def _deliver(self, delivery: Delivery) -> None:
        assert self._sender is not None
        try:
            outcome = await self._sender.send(delivery.url, delivery.id, delivery.payload)
            now = self._clock.seconds()
            retry_at = now + self.next_delay(delivery.attempts + 1)
            if outcome.delivered:
                state, label = "delivered", "delivered"
            elif outcome.gone:
                state, label = "gone", "gone"
            elif outcome.refused:
                state, label = "failed", "refused"
            elif retry_at > delivery.created_at + self._retry_window:
                state, label = "failed", "failed"
            else:
                state, label = "pending", "retry"
            self.deliveries_total.labels(label).inc()
            if outcome.error:
                self.log.warn(
                    "webhook {delivery} for job {job}: {error}",
                    delivery=delivery.id,
                    job=delivery.job_id,
                    error=outcome.error,
                )
            await self.jobs.record_attempt(delivery, now, outcome.status_code, outcome.error, state, retry_at)
        except Exception:
            self.log.failure("webhook {delivery} could not be recorded", delivery=delivery.id)
        finally:
            self._sending -= 1


class JobService(Service):
    """
    Runs the runner while the daemon runs.  On stop, runs in progress are
    stopped and stay C{running} in the store: the next start retries them.
    """

    def __init__(self, runner: JobRunner):
        self.runner = runner

    def startService(self) -> None:
        super().startService()
        self.runner.start().addErrback(lambda f: JobRunner.log.failure("the job runner could not start", f))

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self.runner.stop()
        return None
