"""
Async jobs and their webhooks, on both store engines: the HTTP API through
StubTreq against the real Klein resource, the runner on a L{Clock}, the
store on real SQLite / PostgreSQL, and a real loopback receiver that checks
signatures with the C{standardwebhooks} library.
"""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web import resource, server

from shellm.http.jobs_api import JobsAPI, interactive_waiting
from shellm.http.webhooks import AllowList, WebhookSender
from shellm.routing.job_runner import JobRunner
from shellm.state.jobs import JobStore
from shellm.state.store import Store
from tests.daemon import eventually
from tests.test_api import Gateway, has_result, make_gateway

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
LOOPBACK = AllowList.parse("127.0.0.1/32")

pytestmark = pytest.mark.timeout(60)


class Receiver(resource.Resource):
    """
    A webhook receiver on loopback: answers with the next of C{codes}
    (the last one from then on) and keeps every request.
    """

    isLeaf = True

    def __init__(self, codes: list[int]):
        super().__init__()
        self.codes = list(codes)
        self.got: list[tuple[dict, bytes]] = []

    def render_POST(self, request):
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        self.got.append((headers, request.content.read()))
        code = self.codes.pop(0) if len(self.codes) > 1 else self.codes[0]
        request.setResponseCode(code)
        return b"ok"


@pytest.fixture
def receiver():
    made = {}

    def listen(codes):
        made["resource"] = Receiver(codes)
        made["port"] = reactor.listenTCP(0, server.Site(made["resource"]), interface="127.0.0.1")
        return made["resource"], f"http://127.0.0.1:{made['port'].getHost().port}/hook"

    yield listen
    if "port" in made:
        made["port"].stopListening()


class Setup:
    def __init__(self, gw: Gateway, jobs: JobsAPI, runner: JobRunner, store: Store):
        self.gw, self.jobs, self.runner, self.store = gw, jobs, runner, store

    async def call(self, d: Deferred):
        """
        The response, once the handler (which waits on the store's threads)
        has answered.
        """

        def answered():
            self.gw.stub.flush()
            return has_result(d)

        assert await eventually(answered, timeout=10)
        return await d

    async def post(self, path: str, body, headers: dict | None = None):
        return await self.call(
            self.gw.post(path, body, headers={"content-type": "application/json", **(headers or {})})
        )

    async def get(self, path: str):
        response = await self.call(self.gw.get(path))
        return response.code, await response.json()

    async def job(self, job_id: str) -> dict:
        code, body = await self.get(f"/jobs/{job_id}")
        assert code == 200
        return body

    async def job_reaches(self, job_id: str, check) -> dict:
        async def reached():
            return check(await self.job(job_id))

        assert await eventually(reached, timeout=10)
        return await self.job(job_id)


async def make_setup(db_setting, allow=LOOPBACK, resolve=None, gateway=None, **runner_options) -> Setup:
    gw = make_gateway(**(gateway or {}))
    store = Store.from_setting(db_setting, reactor)
    await store.open()
    holder: list[JobsAPI] = []

    async def execute(job):
        return await holder[0].execute(job)

    runner = JobRunner(
        gw.clock,
        JobStore(store),
        execute,
        WebhookSender(reactor, SECRET, allow, resolve=resolve),
        registry=gw.api.metrics.registry,
        jitter=lambda: 0.5,
        busy=lambda: interactive_waiting(gw.api),
        **runner_options,
    )
    jobs = JobsAPI(gw.api, runner, webhooks=True)
    holder.append(jobs)
    gw.api.jobs = jobs
    await runner.start()
    return Setup(gw, jobs, runner, store)


@pytest_twisted.async_yield_fixture
async def setup(db_setting):
    made = await make_setup(db_setting)
    yield made
    made.runner.stop()
    await made.store.close()


async def started(setup: Setup, provider: str = "claude", count: int = 1):
    fake = setup.gw.providers[provider]
    assert await eventually(lambda: len(fake.runs) >= count, timeout=10)
    return fake.runs[count - 1]


@pytest_twisted.ensureDeferred
async def test_job_runs_and_its_result_is_the_completions_answer(setup):
    """
    POST /jobs answers 202 with the id, status queued and a status URL; the
    job runs, and GET /jobs/{id} shows it succeeded with the /completions
    answer as its result.
    """
    response = await setup.post("/jobs", {"model": "claude", "prompt": "hi", "metadata": {"ticket": 7}})
    assert response.code == 202
    accepted = await response.json()
    assert accepted["status"] == "queued"
    assert accepted["status_url"] == f"/jobs/{accepted['id']}"
    run = await started(setup)
    run.emit("hello").succeed()
    job = await setup.job_reaches(accepted["id"], lambda j: j["status"] == "succeeded")
    assert job["result"]["content"] == "hello"
    assert job["result"]["provider"] == "claude"
    assert job["metadata"] == {"ticket": 7}
    assert job["attempts"] == 1 and job["finished_at"] >= job["started_at"] >= job["created_at"]
    assert b'shellm_jobs_total{status="succeeded"} 1.0' in setup.gw.api.metrics.render()


@pytest_twisted.ensureDeferred
async def test_a_provider_error_fails_the_job_with_its_reason(setup):
    """
    A run that fails ends the job failed, with the error the sync endpoint
    would have answered.
    """
    from shellm.errors import ProviderFailed

    response = await setup.post("/jobs", {"model": "claude", "prompt": "hi", "fallback": False})
    job_id = (await response.json())["id"]
    (await started(setup)).fail(ProviderFailed("claude exited with status 1"))
    job = await setup.job_reaches(job_id, lambda j: j["status"] == "failed")
    assert job["error"]["error"] == "cli_failed"
    assert "exited" in job["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_bad_bodies_are_refused_and_nothing_is_stored(setup):
    """
    An invalid body, callback URL or metadata is a 400 JSON error, and no
    job is created.
    """
    for body, words in [
        ({"model": "claude"}, "prompt"),
        ({"model": "claude", "prompt": "x", "callback_url": "ftp://example.com/"}, "http or https"),
        ({"model": "claude", "prompt": "x", "callback_url": "https://u:p@example.com/"}, "credentials"),
        ({"model": "claude", "prompt": "x", "metadata": [1]}, "metadata"),
        ({"model": "claude", "prompt": "x", "session_id": "s"}, "session_id"),
    ]:
        response = await setup.post("/jobs", body)
        assert response.code == 400, body
        error = await response.json()
        assert error["error"] == "invalid_request" and words in error["message"]
    code, listing = await setup.get("/jobs")
    assert code == 200 and listing["data"] == []


@pytest_twisted.ensureDeferred
async def test_completions_with_a_callback_url_becomes_a_job(setup, receiver):
    """
    POST /completions with callback_url answers 202 like POST /jobs.
    """
    _, url = receiver([204])
    response = await setup.post("/completions", {"model": "claude", "prompt": "hi", "callback_url": url})
    assert response.code == 202
    assert (await response.json())["id"].startswith("job_")


@pytest_twisted.ensureDeferred
async def test_idempotency_key_returns_the_same_job_and_refuses_another_body(setup):
    """
    The same Idempotency-Key and body answer the same job (200, replayed);
    the same key with another body is a 422; another key is a new job.
    """
    body = {"model": "claude", "prompt": "hi"}
    first = await setup.post("/jobs", body, {"idempotency-key": "k1"})
    again = await setup.post("/jobs", body, {"idempotency-key": "k1"})
    assert first.code == 202 and again.code == 200
    assert again.headers.getRawHeaders(b"idempotent-replayed") == [b"true"]
    assert (await first.json())["id"] == (await again.json())["id"]
    other = await setup.post("/jobs", {**body, "prompt": "bye"}, {"idempotency-key": "k1"})
    assert other.code == 422
    assert (await other.json())["error"] == "idempotency_key_reused"
    fresh = await setup.post("/jobs", body, {"idempotency-key": "k2"})
    assert fresh.code == 202 and (await fresh.json())["id"] != (await first.json())["id"]


@pytest_twisted.ensureDeferred
async def test_cancel_stops_a_running_cli(setup):
    """
    DELETE /jobs/{id} on a running job cancels its run (as a client
    disconnect would) and the job stays cancelled.
    """
    job_id = (await (await setup.post("/jobs", {"model": "claude", "prompt": "hi"})).json())["id"]
    run = await started(setup)
    response = await setup.call(setup.gw.stub.delete(f"http://shellm.test/jobs/{job_id}"))
    assert response.code == 200
    assert (await response.json())["status"] == "cancelled"
    assert run.cancelled
    run.reap()
    job = await setup.job(job_id)
    assert job["status"] == "cancelled"
    assert b'shellm_jobs_total{status="cancelled"} 1.0' in setup.gw.api.metrics.render()


@pytest_twisted.ensureDeferred
async def test_listing_pages_by_cursor_and_filters_by_status(setup):
    """
    GET /jobs lists newest first, limit at a time, with a cursor to the
    next page, and filters by status; unknown jobs are 404.
    """
    ids = []
    for n in range(3):
        response = await setup.post("/jobs", {"model": "claude", "prompt": f"p{n}"})
        ids.append((await response.json())["id"])
        setup.gw.clock.advance(1)
    code, page = await setup.get("/jobs?limit=2")
    assert code == 200 and [j["id"] for j in page["data"]] == ids[::-1][:2]
    code, rest = await setup.get(f"/jobs?limit=2&cursor={page['next_cursor']}")
    assert [j["id"] for j in rest["data"]] == [ids[0]] and rest["next_cursor"] is None
    code, running = await setup.get("/jobs?status=running")
    assert [j["id"] for j in running["data"]] == [ids[0]]
    code, bad = await setup.get("/jobs?status=nope")
    assert code == 400
    code, missing = await setup.get("/jobs/job_missing")
    assert code == 404 and missing["error"] == "not_found"


@pytest_twisted.ensureDeferred
async def test_webhook_is_signed_and_verifies_with_the_library(setup, receiver):
    """
    A finished job is POSTed to its callback_url as job.succeeded, signed
    in the Standard Webhooks format; the library verifies it with the
    secret, and the delivery is recorded on the job.
    """
    hook, url = receiver([200])
    job_id = (await (await setup.post("/jobs", {"model": "claude", "prompt": "hi", "callback_url": url})).json())["id"]
    (await started(setup)).emit("done").succeed()
    assert await eventually(lambda: hook.got, timeout=10)
    headers, body = hook.got[0]
    event = Webhook(SECRET).verify(body, headers)
    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == job_id and event["data"]["result"]["content"] == "done"
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"x" * 32).decode()).verify(body, headers)
    job = await setup.job_reaches(job_id, lambda j: j["deliveries"] and j["deliveries"][0]["state"] == "delivered")
    assert job["deliveries"][0]["attempts"][0]["status_code"] == 200


@pytest_twisted.ensureDeferred
async def test_a_failing_receiver_is_retried_with_backoff_until_delivered(setup, receiver):
    """
    A receiver that fails 3 times then accepts gets the same event (same
    webhook-id) 4 times, the retries only once their backoff has passed,
    and it is delivered once; every attempt is recorded.
    """
    hook, url = receiver([500, 503, 302, 200])
    job_id = (await (await setup.post("/jobs", {"model": "claude", "prompt": "hi", "callback_url": url})).json())["id"]
    (await started(setup)).succeed()
    for expected, delay in [(1, 5.0), (2, 20.0), (3, 80.0)]:
        assert await eventually(lambda n=expected: len(hook.got) == n, timeout=10)
        job = await setup.job_reaches(
            job_id, lambda j, n=expected: j["deliveries"] and len(j["deliveries"][0]["attempts"]) == n
        )
        setup.gw.clock.advance(delay - 1)
        setup.runner.kick()
        assert len(hook.got) == expected  # not due yet
        setup.gw.clock.advance(1)
        setup.runner.kick()
    job = await setup.job_reaches(job_id, lambda j: j["deliveries"][0]["state"] == "delivered")
    assert [a["status_code"] for a in job["deliveries"][0]["attempts"]] == [500, 503, 302, 200]
    assert len({headers["webhook-id"] for headers, _ in hook.got}) == 1
    metrics = setup.gw.api.metrics.render()
    assert b'shellm_webhook_deliveries_total{outcome="retry"} 3.0' in metrics
    assert b'shellm_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics


@pytest_twisted.ensureDeferred
async def test_410_stops_and_redeliver_sends_again(setup, receiver):
    """
    A 410 stops the retries; POST /jobs/{id}/redeliver sends the event
    again.
    """
    hook, url = receiver([410, 200])
    job_id = (await (await setup.post("/jobs", {"model": "claude", "prompt": "hi", "callback_url": url})).json())["id"]
    (await started(setup)).succeed()
    await setup.job_reaches(job_id, lambda j: j["deliveries"] and j["deliveries"][0]["state"] == "gone")
    response = await setup.post(f"/jobs/{job_id}/redeliver", {})
    assert response.code == 202
    job = await setup.job_reaches(job_id, lambda j: j["deliveries"][0]["state"] == "delivered")
    assert [a["status_code"] for a in job["deliveries"][0]["attempts"]] == [410, 200]


@pytest_twisted.ensureDeferred
async def test_two_runners_on_one_store_never_run_a_job_twice(db_setting):
    """
    Two nodes on one database claim from the same queue: every job runs
    exactly once between them.
    """
    first = await make_setup(db_setting, max_concurrent=2)
    second = await make_setup(db_setting, max_concurrent=2)
    try:
        for n in range(4):
            await first.post("/jobs", {"model": "claude", "prompt": f"p{n}"})
        for _ in range(5):
            first.runner.kick()
            second.runner.kick()

        def runs():
            return [r for s in (first, second) for r in s.gw.providers["claude"].runs]

        assert await eventually(lambda: len(runs()) == 4, timeout=15)
        for _ in range(3):
            first.runner.kick()
            second.runner.kick()
        prompts = sorted(r.request.prompt for r in runs())
        assert prompts == [f"p{n}" for n in range(4)]
        assert len(first.gw.providers["claude"].runs) == len(second.gw.providers["claude"].runs) == 2
    finally:
        for made in (first, second):
            made.runner.stop()
            await made.store.close()


@pytest_twisted.ensureDeferred
async def test_an_interrupted_job_is_run_again_once_then_failed(db_setting):
    """
    A running job whose node stopped renewing its lease is claimed again
    (its second run); interrupted again, it is failed with the reason, not
    run a third time.
    """
    store = Store.from_setting(db_setting, reactor)
    await store.open()
    jobs = JobStore(store)
    try:
        job, _ = await jobs.submit("app", {"model": "claude", "prompt": "hi"}, "h", None, None, None, 100.0)
        first, _ = await jobs.claim("node-a", 101.0, 30.0)
        assert first.id == job.id and first.attempts == 1
        assert (await jobs.claim("node-b", 120.0, 30.0)) == (None, [])  # the lease holds
        second, _ = await jobs.claim("node-b", 132.0, 30.0)
        assert second.id == job.id and second.attempts == 2
        assert await jobs.finish(job.id, "node-a", "succeeded", {}, 133.0) is None  # no longer node a's
        nothing, given_up = await jobs.claim("node-c", 170.0, 30.0)
        assert nothing is None
        assert [(j.id, j.status, j.error["error"]) for j in given_up] == [(job.id, "failed", "interrupted")]
        assert (await jobs.get(job.id, "app")).status == "failed"
    finally:
        await store.close()


@pytest_twisted.ensureDeferred
async def test_interactive_requests_go_before_jobs(db_setting):
    """
    A job starts only in a free slot: while interactive requests hold or
    wait for every CLI slot it stays queued, so a request that arrives
    after the job still runs before it.
    """
    made = await make_setup(db_setting, gateway={"max_concurrent": 1})
    try:
        gw, claude = made.gw, made.gw.providers["claude"]
        first = gw.post("/completions", {"model": "claude", "prompt": "first"})
        await started(made, count=1)
        response = await made.post("/jobs", {"model": "claude", "prompt": "job"})
        assert response.code == 202
        job_id = (await response.json())["id"]
        for _ in range(3):
            made.runner.kick()
        assert (await made.job(job_id))["status"] == "queued"  # no free slot: not started
        second = gw.post("/completions", {"model": "claude", "prompt": "second"})
        gw.stub.flush()
        assert gw.router.queues["cli"].pending == 1
        claude.runs[0].succeed()
        assert (await made.call(first)).code == 200
        assert (await started(made, count=2)).request.prompt == "second"
        claude.runs[1].succeed()
        assert (await made.call(second)).code == 200
        made.gw.clock.advance(1)  # the runner's next poll
        assert (await started(made, count=3)).request.prompt == "job"
    finally:
        made.runner.stop()
        await made.store.close()


@pytest_twisted.ensureDeferred
async def test_a_job_claimed_as_an_interactive_request_arrives_is_given_back(db_setting):
    """
    The slot was free when the runner looked, but an interactive request
    arrived while its claim was on the way to the store: the job is given
    back (queued, its run not counted) instead of taking the place in line.
    """
    from twisted.internet.task import Clock

    store = Store.from_setting(db_setting, reactor)
    await store.open()
    jobs = JobStore(store)
    looks: list[bool] = []
    ran: list[str] = []

    def busy() -> bool:
        looks.append(True)
        return len(looks) > 1  # free before the claim, busy once it is made

    async def execute(job):
        ran.append(job.id)
        return {}

    runner = JobRunner(Clock(), jobs, execute, None, busy=busy)
    try:
        job, _ = await jobs.submit("app", {"model": "claude", "prompt": "hi"}, "h", None, None, None, 100.0)
        await runner.start()
        assert await eventually(lambda: not runner._ticking, timeout=10)
        assert ran == [] and len(looks) >= 2
        again = await jobs.get(job.id, "app")
        assert (again.status, again.attempts, again.started_at) == ("queued", 0, None)
    finally:
        runner.stop()
        await store.close()


@pytest_twisted.ensureDeferred
async def test_a_key_sees_only_its_own_jobs(db_setting):
    """
    With auth on, a job is the key's own: another key gets 404 for it and
    does not see it listed; no key at all is a 401.
    """
    from shellm.routing.auth import Authenticator, Client

    keys = Authenticator([Client("alice", "a" * 20), Client("bob", "b" * 20)])
    made = await make_setup(db_setting, gateway={"api_options": {"authenticator": keys}})
    try:
        response = await made.post("/jobs", {"model": "claude", "prompt": "hi"}, {"x-api-key": "a" * 20})
        assert response.code == 202
        job_id = (await response.json())["id"]

        async def get(path, key):
            answer = await made.call(made.gw.get(path, headers={"x-api-key": key} if key else {}))
            return answer.code, await answer.json()

        assert (await get(f"/jobs/{job_id}", "a" * 20))[0] == 200
        assert (await get(f"/jobs/{job_id}", "b" * 20))[0] == 404
        assert (await get("/jobs", "b" * 20))[1]["data"] == []
        assert [j["id"] for j in (await get("/jobs", "a" * 20))[1]["data"]] == [job_id]
        assert (await get("/jobs", None))[0] == 401
    finally:
        made.runner.stop()
        await made.store.close()
