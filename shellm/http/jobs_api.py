"""
The jobs API, mounted at C{/jobs}: accept a C{/completions} body to run
later (202), look at it, list, cancel, and send its webhook again.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from attrs import evolve
from klein import Klein
from twisted.python.failure import Failure
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from shellm.errors import InvalidRequest, NotFound, ShellmError
from shellm.http.dialects import seed
from shellm.http.headers import header
from shellm.http.template_use import expand_seed
from shellm.http.webhooks import AllowList, WebhookSender, check_url
from shellm.routing.auth import ANONYMOUS, Client, ModelNotAllowed
from shellm.routing.job_runner import JobRunner
from shellm.state.jobs import STATUSES, Job, JobStore
from shellm.state.store import Store

if TYPE_CHECKING:
    from shellm.config import Config
    from shellm.http.api import ShellmAPI

_JOB_FIELDS = {"callback_url", "metadata"}
#: Where a stored job body keeps the template version that made its prompt
#: (the template fields themselves are rendered away when it is accepted).
TEMPLATE_LABEL = "_template"
MAX_LIST = 100


class NothingToRedeliver(ShellmError):
    status = 409
    code = "no_delivery"


class JobsAPI:
    app = Klein()

    def __init__(self, api: ShellmAPI, runner: JobRunner, webhooks: bool):
        """
        @param webhooks: whether callbacks can be signed (a secret is set).
        """
        self._api = api
        self._runner = runner
        self._jobs = runner.jobs
        self._webhooks = webhooks

    @property
    def runner(self) -> JobRunner:
        return self._runner

    @property
    def jobs_store(self) -> JobStore:
        return self._jobs

    def resource(self) -> Any:
        return self.app.resource()

    # -- running a job (called by the runner)

    def _client_named(self, name: str) -> Client:
        if not self._api.authenticator.enabled:
            return ANONYMOUS
        for client in self._api.authenticator.clients:
            if client.name == name:
                return client
        raise ModelNotAllowed(f"client {name} no longer exists")

    async def execute(self, job: Job) -> dict[str, Any]:
        """
        Run a job's body as C{POST /completions} would (its rate limit was
        counted when it was accepted).
        """
        client = self._client_named(job.client)
        api = self._api
        body = dict(job.body)
        label = body.pop(TEMPLATE_LABEL, None)
        request = seed.parse_completion_request(body, api._router.models, api._max_prompt_chars, job.id)
        if label is not None:
            request = evolve(request, template=label)  # for the request log
        if not client.may_use(request.model, request.entry.provider):
            raise ModelNotAllowed(f"client {client.name} may not use {request.model}")
        admission = api._router.admit(request, api._permits(client))
        completion = await api._serve(client, request, admission, lambda event: None)
        return seed.completion_json(completion)

    # -- accepting

    async def accept(self, request: Any, client: Client, body: dict[str, Any]) -> bytes:
        """
        Validate, count against the client's rate, store, answer 202 (or
        the job an Idempotency-Key already names).
        """
        request.dialect = seed
        url = body.get("callback_url")
        if url is not None:
            try:
                check_url(url)
            except ValueError as e:
                raise InvalidRequest(str(e))
            if not self._webhooks:
                raise InvalidRequest("callbacks need SHELLM_WEBHOOK_SECRET to be set on the server")
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or len(json.dumps(metadata)) > 4096):
            raise InvalidRequest('field "metadata" must be a JSON object of at most 4 KiB')
        if "session_id" in body:
            raise InvalidRequest('field "session_id" is not supported in jobs yet')
        completion = {k: v for k, v in body.items() if k not in _JOB_FIELDS}
        # A template is rendered now: the job keeps (and later runs) the
        # text the version of today made, and a bad variable is a 400 now.
        rendered = await expand_seed(self._api.templates, completion)
        if rendered is not None:
            request.setHeader(b"x-shellm-template", rendered.label.encode("ascii"))
        parsed = seed.parse_completion_request(
            completion, self._api._router.models, self._api._max_prompt_chars, request.request_id
        )
        if not client.may_use(parsed.model, parsed.entry.provider):
            raise ModelNotAllowed(f"client {client.name} may not use {parsed.model}")
        if rendered is not None:
            completion[TEMPLATE_LABEL] = rendered.label
        key = header(request, b"idempotency-key")
        if key is not None and not (1 <= len(key) <= 255 and all("!" <= c <= "~" for c in key)):
            raise InvalidRequest("Idempotency-Key must be 1 to 255 printable ASCII characters without spaces")
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()
        if self._api._limiter is not None:
            await self._api._limiter.admit(client)
        job, replayed = await self._jobs.submit(
            client.name, completion, digest, key, url, metadata, self._api._clock.seconds()
        )
        if replayed:
            request.setHeader(b"idempotent-replayed", b"true")
        else:
            self._runner.kick()
        request.setHeader(b"location", f"/jobs/{job.id}".encode())
        return self._api._respond(
            request,
            200 if replayed else 202,
            {"id": job.id, "object": "job", "status": job.status, "status_url": f"/jobs/{job.id}"},
        )

    # -- errors: the same JSON as every other route

    @app.handle_errors(ShellmError)
    def shellm_error(self, request: Any, failure: Failure) -> Any:
        return self._api.shellm_error(request, failure)

    @app.handle_errors(WerkzeugNotFound)
    def not_found(self, request: Any, failure: Failure) -> Any:
        if request.path.rstrip(b"/") == b"/jobs":
            # werkzeug matches the bare mount point only for a method it
            # serves, and calls any other one unknown: it is a 405.
            refused = Failure(WerkzeugMethodNotAllowed(valid_methods=["GET", "POST"]))
            return self._api.method_not_allowed(request, refused)
        return self._api.not_found(request, failure)

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def method_not_allowed(self, request: Any, failure: Failure) -> Any:
        return self._api.method_not_allowed(request, failure)

    @app.handle_errors(Exception)
    def unexpected(self, request: Any, failure: Failure) -> Any:
        return self._api.unexpected(request, failure)

    # -- routes

    def _scope(self, client: Client) -> str | None:
        return client.name if self._api.authenticator.enabled else None

    async def _job(self, request: Any, job_id: str) -> tuple[Client, Job]:
        request.dialect = seed
        client = self._api._authenticate(request)
        job = await self._jobs.get(job_id, self._scope(client))
        if job is None:
            raise NotFound(f"no such job: {job_id[:100]}")
        return client, job

    async def _shown(self, job: Job) -> dict[str, Any]:
        return {**job.to_json(), "deliveries": await self._jobs.deliveries(job.id)}

    @app.route("/", methods=["POST"], strict_slashes=False)
    async def submit(self, request: Any) -> bytes:
        request.dialect = seed
        client = self._api._authenticate(request)
        return await self.accept(request, client, self._api._read_json(request))

    @app.route("/", methods=["GET"], strict_slashes=False)
    async def listing(self, request: Any) -> bytes:
        request.dialect = seed
        client = self._api._authenticate(request)

        def arg(name: bytes) -> str | None:
            values = request.args.get(name)
            return values[0].decode("utf-8", "replace") if values else None

        status = arg(b"status")
        if status is not None and status not in STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}")
        given = arg(b"limit")
        try:
            limit = 20 if given is None else int(given)
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIST:
            raise InvalidRequest(f"limit must be an integer between 1 and {MAX_LIST}")
        jobs = await self._jobs.list_jobs(self._scope(client), status, limit + 1, arg(b"cursor"))
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return self._api._respond(
            request,
            200,
            {
                "object": "list",
                "data": [job.to_json() for job in jobs],
                "next_cursor": jobs[-1].id if more else None,
            },
        )

    @app.route("/<job_id>", methods=["GET"])
    async def show(self, request: Any, job_id: str) -> bytes:
        _, job = await self._job(request, job_id)
        return self._api._respond(request, 200, await self._shown(job))

    @app.route("/<job_id>", methods=["DELETE"])
    async def cancel(self, request: Any, job_id: str) -> bytes:
        client, _ = await self._job(request, job_id)
        job = await self.cancel_job(job_id, self._scope(client))
        return self._api._respond(request, 200, await self._shown(job))

    async def cancel_job(self, job_id: str, scope: str | None) -> Job:
        """
        Cancel C{job_id} (of C{scope}'s, or anyone's for L{None}).

        @raise NotFound: there is no such job.
        """
        job, was = await self._jobs.cancel(job_id, scope, self._api._clock.seconds())
        if job is None:
            raise NotFound(f"no such job: {job_id[:100]}")
        if was is not None:
            self._runner.jobs_total.labels("cancelled").inc()
            self._runner.stop_run(job_id)  # other nodes see it at their next poll
        return job

    @app.route("/<job_id>/redeliver", methods=["POST"])
    async def redeliver(self, request: Any, job_id: str) -> bytes:
        _, job = await self._job(request, job_id)
        await self.redeliver_job(job.id)
        return self._api._respond(request, 202, await self._shown(job))

    async def redeliver_job(self, job_id: str) -> None:
        """
        Queue C{job_id}'s webhook to be sent again.

        @raise NothingToRedeliver: it has none to send.
        """
        if not await self._jobs.redeliver(job_id, self._api._clock.seconds()):
            raise NothingToRedeliver("this job has no webhook to send again (no callback_url, or not finished)")
        self._runner.kick()


def interactive_waiting(api: ShellmAPI) -> bool:
    """
    Whether a job must not start now: a queue has no free slot (or a line).
    A job only ever takes a slot that is free, never a place in a line, so
    an interactive request never waits behind a job that is waiting.
    """
    return any(queue.pending or queue.active >= queue.max_concurrent for queue in api._router.queues.values())


def build_jobs(reactor: Any, api: ShellmAPI, store: Store, config: Config) -> JobsAPI:
    """
    The jobs API and its runner, as the daemon has them.
    """
    sender = None
    if config.webhook_secret is not None:
        sender = WebhookSender(reactor, config.webhook_secret, AllowList.parse(config.webhook_allow))
    holder: list[JobsAPI] = []

    async def execute(job: Job) -> dict[str, Any]:
        return await holder[0].execute(job)

    runner = JobRunner(
        reactor,
        JobStore(store),
        execute,
        sender,
        registry=api.metrics.registry,
        max_concurrent=config.jobs_max_concurrent,
        lease=config.jobs_lease,
        retry_window=config.webhook_retry_window,
        first_retry=config.webhook_first_retry,
        busy=lambda: interactive_waiting(api),
    )
    holder.append(JobsAPI(api, runner, webhooks=sender is not None))
    return holder[0]
