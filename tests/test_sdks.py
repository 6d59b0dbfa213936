"""
The official C{openai} and C{anthropic} Python SDKs, unmodified, against a
real C{twistd shellm} on a loopback port, with every provider behind it: the
fake claude, gemini and codex CLIs and a fake Cerebras API.

The SDKs block, so each call runs in a thread (C{deferToThread}) while the
reactor keeps serving the fake Cerebras and reading the daemon.
"""

from __future__ import annotations

import json
import uuid

import pytest

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

import pytest_twisted  # noqa: E402
import treq  # noqa: E402
from twisted.internet.threads import deferToThread  # noqa: E402

from shellm.http.dialects.conversation import Turn, render  # noqa: E402
from shellm.models import DEFAULT_MODELS  # noqa: E402
from tests.conftest import fake_cli, processes_with_marker, wait_for_no_processes  # noqa: E402
from tests.daemon import Daemon, eventually, health_of  # noqa: E402
from tests.fakes.fake_openai_server import start_fake_openai  # noqa: E402

pytestmark = pytest.mark.slow  # real processes and daemons (the second stage of .ci/run)

PROVIDERS = ("claude", "gemini", "codex", "cerebras")
CLI_PROVIDERS = ("claude", "gemini", "codex")
KEY = "sk-shellm-sdk-test-0123456789"
LIMITED_KEY = "sk-shellm-sdk-limited-0123456789"
CEREBRAS_ONLY_KEY = "sk-shellm-sdk-cerebras-0123456789"
PROMPT = "Say hello in one short sentence."
SYSTEM = "You are terse."
TIMEOUT = 30.0

#: Both SDKs' clients retry 429 and 5xx by default; a test wants the first answer.
CLIENT_OPTIONS = {"max_retries": 0, "timeout": TIMEOUT}


def cli_env(name: str, marker: str, record, **fake) -> dict:
    """
    Make C{tests/fakes/fake_<name>.py} the daemon's C{name}, with a key in
    its own environment so the health check counts it as logged in.
    """
    key_variable = {"claude": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY", "codex": "OPENAI_API_KEY"}[name]
    env = {
        key_variable: "fake",
        "SHELLM_TEST_MARKER": marker,
        "FAKE_RECORD": str(record),
        **{f"FAKE_{k.upper()}": str(v) for k, v in fake.items()},
    }
    upper = name.upper()
    return {f"SHELLM_{upper}_BIN": fake_cli(name), f"SHELLM_{upper}_ENV": json.dumps(env)}


class Gateway:
    """
    A daemon with a fake Cerebras in this process, and SDK clients for it.
    """

    def __init__(
        self,
        tmp_path,
        marker: str,
        fake_mode: str = "echo",
        clis=CLI_PROVIDERS,
        cerebras: bool = True,
        clients: dict | None = None,
        **env,
    ):
        self.tmp_path = tmp_path
        self.marker = marker
        self.records = {name: tmp_path / f"{name}.jsonl" for name in CLI_PROVIDERS}
        from twisted.internet import reactor

        self.cerebras, self._cerebras_port = start_fake_openai(reactor)
        self.cerebras.text = PROMPT  # as the echoing CLIs answer a single-message PROMPT
        settings = {
            "SHELLM_GLOBAL_RPM": "100000",
            "SHELLM_DB": str(tmp_path / "shellm.db"),
            "SHELLM_MAX_CONCURRENT": "4",
            "SHELLM_KILL_GRACE": "0.5",
        }
        for name in clis:
            settings.update(cli_env(name, marker, self.records[name], mode=fake_mode))
        if cerebras:
            settings.update(SHELLM_CEREBRAS_BASE_URL=self.cerebras.base_url, CEREBRAS_API_KEY="csk-fake-0123456789")
        if clients is not None:
            settings["SHELLM_CLIENTS"] = json.dumps(clients)
        settings.update(env)
        self.daemon = Daemon(settings, marker, str(tmp_path))
        self.url = self.daemon.url

    async def start(self) -> Gateway:
        await self.daemon.started()
        return self

    async def stop(self) -> None:
        try:
            await self.daemon.stop()
        finally:
            await self.cerebras.stop()
        assert await wait_for_no_processes(self.marker) == []

    def openai(self, key: str = KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, **CLIENT_OPTIONS)

    def anthropic(self, key: str = KEY):
        return anthropic.Anthropic(base_url=self.url, api_key=key, **CLIENT_OPTIONS)

    def last_record(self, provider: str) -> dict:
        return json.loads(self.records[provider].read_text().splitlines()[-1])


def in_thread(f, *args, **kwargs):
    """
    Run a blocking SDK call off the reactor thread.
    """
    return deferToThread(f, *args, **kwargs)


async def raised(exception_class, f, *args, **kwargs):
    """
    The exception that C{f(*args, **kwargs)}, run in a thread, raised; it must
    be an instance of C{exception_class}.
    """

    def call():
        try:
            result = f(*args, **kwargs)
            if isinstance(result, (openai.Stream, anthropic.Stream)):
                list(result)  # a stream's errors come while reading it
        except Exception as e:
            return e
        return None

    error = await in_thread(call)
    assert isinstance(error, exception_class), f"expected {exception_class.__name__}, got {error!r}"
    return error


CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
]
RENDERED = render([Turn(m["role"], m["content"]) for m in CONVERSATION])[1]


def assert_reached_provider(gateway: Gateway, provider: str, answer: str) -> None:
    """
    The rendered conversation, and the system prompt, reached the provider
    as SheLLM renders them: the echoing CLIs answer with their stdin, the
    fake Cerebras records the request.
    """
    assert RENDERED.startswith("<conversation_history>\n")
    assert RENDERED.endswith("<latest_user_message>\nAnd of Italy?\n</latest_user_message>")
    if provider == "claude":
        assert answer == RENDERED  # the system prompt goes in a file of its own
        assert gateway.last_record("claude")["system_prompt_file_content"] == SYSTEM
    elif provider in CLI_PROVIDERS:
        # No system-prompt option: the instructions come first on stdin.
        assert RENDERED in answer and SYSTEM in answer
        assert answer.index(SYSTEM) < answer.index("<conversation_history>")
    else:
        messages = gateway.cerebras.requests[-1]["body"]["messages"]
        assert messages == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": RENDERED}]


@pytest_twisted.async_yield_fixture(scope="module")
async def gateway(tmp_path_factory):
    """
    One daemon for the module: every provider answers, the CLIs echo their
    stdin; three clients: one plain, one limited to one request a minute,
    one allowed only cerebras.
    """
    marker = f"shellm-test-{uuid.uuid4().hex}"
    gateway = Gateway(
        tmp_path_factory.mktemp("sdk-gateway"),
        marker,
        clients={
            "sdk": {"key": KEY, "rpm": 100000},
            "limited": {"key": LIMITED_KEY, "rpm": 1},
            "cerebras-only": {"key": CEREBRAS_ONLY_KEY, "rpm": 100000, "models": ["cerebras"]},
        },
    )
    try:
        await gateway.start()
        yield gateway
    finally:
        await gateway.stop()
        left = processes_with_marker(marker)
        assert not left, f"processes left running: {left}"


# ---------------------------------------------------------------- OpenAI


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_openai_chat_completion(gateway, provider):
    """
    A plain chat completion comes back as the SDK's ChatCompletion, with
    the answer, the finish reason and the provider's exact token counts.
    """
    client = gateway.openai()
    completion = await in_thread(
        client.chat.completions.create,
        model=provider,
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == PROMPT
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        10,
        5,
        15,
    )
    assert isinstance(completion.created, int) and completion.model


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_openai_stream_with_usage(gateway, provider):
    """
    A stream with include_usage: the role chunk first, content chunks that
    add up to the answer, a chunk with finish_reason, then a last chunk with
    no choices and the exact usage; the SDK ends cleanly on [DONE].
    """
    client = gateway.openai()

    def collect():
        stream = client.chat.completions.create(
            model=provider,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        return list(stream)

    chunks = await in_thread(collect)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert not chunks[0].choices[0].delta.content
    with_choices = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == PROMPT
    assert [c.choices[0].finish_reason for c in with_choices][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (10, 5, 15)
    assert all(c.usage is None for c in chunks[:-1])


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_openai_multi_turn(gateway, provider):
    """
    A conversation reaches the provider rendered so that only the last user
    turn is to be answered, with the system message as the system prompt.
    """
    del gateway.cerebras.requests[:]
    client = gateway.openai()
    completion = await in_thread(
        client.chat.completions.create,
        model=provider,
        messages=[{"role": "system", "content": SYSTEM}, *CONVERSATION],
    )
    assert_reached_provider(gateway, provider, completion.choices[0].message.content)


@pytest_twisted.ensureDeferred
async def test_openai_models(gateway):
    """
    models.list gives every alias with its provider as owned_by;
    models.retrieve gives one, and an unknown one is the SDK's NotFoundError.
    """
    client = gateway.openai()
    listed = await in_thread(lambda: list(client.models.list()))
    assert {m.id: m.owned_by for m in listed} == {e.alias: e.provider for e in DEFAULT_MODELS}
    model = await in_thread(client.models.retrieve, "claude-haiku")
    assert (model.id, model.owned_by, model.object) == ("claude-haiku", "claude", "model")
    error = await raised(openai.NotFoundError, client.models.retrieve, "gpt-9")
    assert error.status_code == 404 and error.code == "model_not_found"


@pytest.mark.parametrize("stream", [False, True])
@pytest_twisted.ensureDeferred
async def test_openai_non_function_tools_are_a_bad_request(gateway, stream):
    """
    A tool that is not a client-side function is refused before anything
    runs: the SDK raises BadRequestError, whose param names the tool.
    """
    client = gateway.openai()
    error = await raised(
        openai.BadRequestError,
        client.chat.completions.create,
        model="claude",
        stream=stream,
        messages=[{"role": "user", "content": PROMPT}],
        tools=[{"type": "web_search"}],
    )
    assert error.status_code == 400
    assert error.param == "tools[0]" and error.type == "invalid_request_error"
    assert "only function tools" in error.message


@pytest_twisted.ensureDeferred
async def test_openai_image_part_is_a_bad_request(gateway):
    client = gateway.openai()
    error = await raised(
        openai.BadRequestError,
        client.chat.completions.create,
        model="claude",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            }
        ],
    )
    assert error.param == "messages[0].content[1].type" and "image_url" in error.message


@pytest_twisted.ensureDeferred
async def test_openai_unknown_model_is_not_found(gateway):
    """
    As with OpenAI: a model that does not exist is a 404 model_not_found.
    """
    client = gateway.openai()
    error = await raised(
        openai.NotFoundError,
        client.chat.completions.create,
        model="gpt-9",
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert error.code == "model_not_found" and error.param == "model"


@pytest_twisted.ensureDeferred
async def test_openai_wrong_key_is_an_authentication_error(gateway):
    client = gateway.openai(key="sk-not-a-key-of-this-gateway")
    error = await raised(
        openai.AuthenticationError,
        client.chat.completions.create,
        model="claude",
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert error.status_code == 401 and error.type == "authentication_error"


@pytest_twisted.ensureDeferred
async def test_openai_model_not_allowed_is_permission_denied(gateway):
    client = gateway.openai(key=CEREBRAS_ONLY_KEY)
    error = await raised(
        openai.PermissionDeniedError,
        client.chat.completions.create,
        model="claude",
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert error.status_code == 403 and error.type == "permission_error"


@pytest_twisted.ensureDeferred
async def test_client_rate_limit_is_a_rate_limit_error_for_both_sdks(gateway):
    """
    A client over its requests-per-minute gets 429 in each SDK's envelope,
    raised as that SDK's RateLimitError.
    """
    first = await in_thread(
        gateway.openai(key=LIMITED_KEY).chat.completions.create,
        model="cerebras",
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert first.choices[0].message.content == PROMPT
    error = await raised(
        openai.RateLimitError,
        gateway.openai(key=LIMITED_KEY).chat.completions.create,
        model="cerebras",
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert error.status_code == 429 and error.type == "rate_limit_error"
    assert error.response.headers.get("retry-after")
    error = await raised(
        anthropic.RateLimitError,
        gateway.anthropic(key=LIMITED_KEY).messages.create,
        model="cerebras",
        max_tokens=100,
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert error.body["error"]["type"] == "rate_limit_error"


@pytest_twisted.ensureDeferred
async def test_openai_fallback_is_invisible_to_the_sdk(gateway):
    """
    When Cerebras fails on its side before any text, another provider
    answers and the SDK sees an ordinary completion.
    """
    gateway.cerebras.fail_status = 500
    try:
        completion = await in_thread(
            gateway.openai().chat.completions.create,
            model="cerebras",
            messages=[{"role": "user", "content": PROMPT}],
        )
    finally:
        gateway.cerebras.fail_status = None
    assert gateway.cerebras.requests, "cerebras was tried first"
    assert completion.choices[0].message.content == PROMPT
    assert completion.model != "gpt-oss-120b"  # the answer is not Cerebras's


# ---------------------------------------------------------------- Anthropic


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_anthropic_message(gateway, provider):
    """
    A plain message comes back as the SDK's Message, with the answer, the
    stop reason and exact usage; the SDK authenticated with x-api-key.
    """
    message = await in_thread(
        gateway.anthropic().messages.create,
        model=provider,
        max_tokens=256,
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == PROMPT
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 5)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_anthropic_stream(gateway, provider):
    """
    The SDK's stream helper reads SheLLM's events into the whole message,
    with exact usage from message_delta; the raw events come in Anthropic's
    order.
    """
    client = gateway.anthropic()

    def collect():
        with client.messages.stream(
            model=provider,
            max_tokens=256,
            system=SYSTEM,
            messages=[{"role": "user", "content": PROMPT}],
        ) as stream:
            texts = list(stream.text_stream)
            return texts, stream.get_final_message()

    texts, message = await in_thread(collect)
    assert PROMPT in "".join(texts)
    assert message.content[0].text == "".join(texts)
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (10, 5)

    events = await in_thread(
        lambda: [
            e.type
            for e in client.messages.create(
                model=provider,
                max_tokens=256,
                stream=True,
                messages=[{"role": "user", "content": PROMPT}],
            )
        ]
    )
    assert events[:2] == ["message_start", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[2:-3]) == {"content_block_delta"}


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_anthropic_multi_turn(gateway, provider):
    del gateway.cerebras.requests[:]
    message = await in_thread(
        gateway.anthropic().messages.create,
        model=provider,
        max_tokens=256,
        system=[{"type": "text", "text": SYSTEM}],
        messages=CONVERSATION,
    )
    assert_reached_provider(gateway, provider, message.content[0].text)


@pytest_twisted.ensureDeferred
async def test_anthropic_image_block_is_a_bad_request(gateway):
    """
    An image block is refused with 400 naming the block type, raised as
    the SDK's BadRequestError.
    """
    error = await raised(
        anthropic.BadRequestError,
        gateway.anthropic().messages.create,
        model="claude",
        max_tokens=100,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                ],
            }
        ],
    )
    assert error.status_code == 400
    assert error.body["type"] == "error" and error.body["error"]["type"] == "invalid_request_error"
    assert '"image"' in error.body["error"]["message"]


@pytest_twisted.ensureDeferred
async def test_anthropic_request_id_is_the_sdks_request_id(gateway):
    """
    The SDK reads the request id from request-id: a message's _request_id,
    a stream's request_id and an error's request_id are SheLLM's
    X-Request-Id.
    """
    client = gateway.anthropic()
    raw = await in_thread(
        client.messages.with_raw_response.create,
        model="claude",
        max_tokens=64,
        messages=[{"role": "user", "content": PROMPT}],
    )
    message = raw.parse()
    assert message._request_id and message._request_id == raw.headers["x-request-id"]

    def streamed():
        with client.messages.stream(
            model="claude", max_tokens=64, messages=[{"role": "user", "content": PROMPT}]
        ) as stream:
            stream.get_final_message()
            return stream.request_id, stream.response.headers["x-request-id"]

    stream_id, header_id = await in_thread(streamed)
    assert stream_id and stream_id == header_id

    error = await raised(
        anthropic.BadRequestError,
        client.messages.create,
        model="claude",
        max_tokens=0,
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert error.request_id and error.request_id == error.response.headers["x-request-id"]


@pytest_twisted.ensureDeferred
async def test_anthropic_wrong_key_is_an_authentication_error(gateway):
    error = await raised(
        anthropic.AuthenticationError,
        gateway.anthropic(key="sk-ant-not-a-key-here").messages.create,
        model="claude",
        max_tokens=100,
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert error.body["error"]["type"] == "authentication_error"


@pytest_twisted.ensureDeferred
async def test_anthropic_unknown_model_is_not_found(gateway):
    error = await raised(
        anthropic.NotFoundError,
        gateway.anthropic().messages.create,
        model="claude-9",
        max_tokens=100,
        messages=[{"role": "user", "content": PROMPT}],
    )
    assert error.body["error"]["type"] == "not_found_error"


@pytest_twisted.ensureDeferred
async def test_anthropic_models(gateway):
    """
    An Anthropic client (it sends anthropic-version) gets the listing in
    Anthropic's shape.
    """
    listed = await in_thread(lambda: list(gateway.anthropic().models.list()))
    assert [m.id for m in listed] == [e.alias for e in DEFAULT_MODELS]
    assert all(m.type == "model" for m in listed)


# ---------------------------------------------------------------- errors from the providers


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_upstream_rate_limit_is_a_rate_limit_error(tmp_path, marker, provider):
    """
    Every provider's upstream 429 reaches both SDKs as their RateLimitError,
    streaming or not.
    """
    gateway = Gateway(tmp_path, marker, fake_mode="upstream_429")
    gateway.cerebras.fail_status = 429
    await gateway.start()
    try:
        body = {"model": provider, "messages": [{"role": "user", "content": PROMPT}]}
        error = await raised(openai.RateLimitError, gateway.openai().chat.completions.create, **body)
        assert error.type == "rate_limit_error" and error.code == "rate_limited"
        # Refused after the stream opened (the provider ran): an error chunk,
        # which the SDK raises as an APIError carrying the type.
        error = await raised(openai.APIError, gateway.openai().chat.completions.create, stream=True, **body)
        assert error.type == "rate_limit_error" and error.code == "rate_limited"
        error = await raised(anthropic.RateLimitError, gateway.anthropic().messages.create, max_tokens=100, **body)
        assert error.body["error"]["type"] == "rate_limit_error"
    finally:
        await gateway.stop()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest_twisted.ensureDeferred
async def test_unusable_provider_is_503(tmp_path, marker, provider):
    """
    With no usable provider (no CLI installed, no Cerebras key) a request is
    refused at once with 503, streaming or not: APIStatusError with status
    503 in the OpenAI SDK, ServiceUnavailableError (overloaded_error) in
    Anthropic's.  Auth is off on this gateway: the SDKs' keys are ignored.
    """
    gateway = Gateway(tmp_path, marker, clis=(), cerebras=False)
    await gateway.start()
    try:
        body = {"model": provider, "messages": [{"role": "user", "content": PROMPT}]}
        for stream in (False, True):
            error = await raised(openai.APIStatusError, gateway.openai().chat.completions.create, stream=stream, **body)
            assert error.status_code == 503 and error.type == "server_error"
            assert error.code == "provider_unavailable"
            error = await raised(
                anthropic.APIStatusError, gateway.anthropic().messages.create, stream=stream, max_tokens=100, **body
            )
            assert error.status_code == 503
            assert error.body["error"]["type"] == "overloaded_error"
    finally:
        await gateway.stop()


@pytest_twisted.ensureDeferred
async def test_queue_full_is_a_rate_limit_error(tmp_path, marker):
    """
    With the only slot taken and no room to wait, a request is refused at
    once with 429 and Retry-After, streaming or not, raised as each SDK's
    RateLimitError.
    """
    gate = tmp_path / "gate"
    # The only claude run holds the only slot until the gate file exists.
    gateway = Gateway(
        tmp_path,
        marker,
        clis=(),
        cerebras=False,
        SHELLM_MAX_CONCURRENT="1",
        SHELLM_MAX_QUEUE_DEPTH="0",
        **cli_env("claude", marker, tmp_path / "claude.jsonl", mode="ok", gate=gate),
    )
    await gateway.start()
    holding = None
    try:
        holding = treq.post(
            gateway.url + "/v1/chat/completions",
            json={
                "model": "claude",
                "messages": [{"role": "user", "content": "hold the slot"}],
            },
            timeout=TIMEOUT,
        )

        async def slot_taken():
            return (await health_of(gateway.url))["queue"]["active"] == 1

        assert await eventually(slot_taken)
        body = {"model": "claude", "messages": [{"role": "user", "content": PROMPT}]}
        for stream in (False, True):
            error = await raised(openai.RateLimitError, gateway.openai().chat.completions.create, stream=stream, **body)
            assert error.code == "queue_full" and error.type == "rate_limit_error"
            assert int(error.response.headers["retry-after"]) >= 1
            error = await raised(
                anthropic.RateLimitError, gateway.anthropic().messages.create, stream=stream, max_tokens=100, **body
            )
            assert error.body["error"]["type"] == "rate_limit_error"
        gate.write_text("go")
        response = await holding
        answer = json.loads(await response.content())
        assert response.code == 200
        assert answer["choices"][0]["message"]["content"] == "Hi! I am a fake model."
    finally:
        gate.write_text("go")
        if holding is not None:
            holding.addErrback(lambda failure: None)  # already checked above, unless that failed
        await gateway.stop()


@pytest_twisted.ensureDeferred
async def test_failure_mid_stream_raises_in_both_sdks(tmp_path, marker):
    """
    A CLI that times out after its first delta ends the stream with an
    error (OpenAI: an error chunk then [DONE]; Anthropic: an error event):
    each SDK raises instead of returning a cut answer as a whole one.
    """
    never = tmp_path / "never"  # the fake waits for this file after its first delta
    gateway = Gateway(
        tmp_path,
        marker,
        clis=(),
        cerebras=False,
        SHELLM_TIMEOUT="1",
        SHELLM_KILL_GRACE="0.2",
        **cli_env("claude", marker, tmp_path / "claude.jsonl", mode="ok", gate=never),
    )
    await gateway.start()
    try:
        body = {"model": "claude", "messages": [{"role": "user", "content": PROMPT}]}
        client = gateway.openai()
        seen = []

        def read_stream():
            for chunk in client.chat.completions.create(stream=True, **body):
                seen.append(chunk)

        error = await raised(openai.APIError, read_stream)
        assert error.code == "timeout" and error.type == "server_error"
        assert seen and seen[-1].choices[0].delta.content  # the first delta arrived
        assert all(c.choices[0].finish_reason is None for c in seen)
        error = await raised(
            anthropic.APIStatusError, gateway.anthropic().messages.create, stream=True, max_tokens=100, **body
        )
        assert error.body["error"]["type"] == "timeout_error"
    finally:
        await gateway.stop()


@pytest_twisted.ensureDeferred
async def test_sdk_retries_do_not_multiply_failures(tmp_path, marker):
    """
    Both SDKs, with their default two retries: a request that failed after
    SheLLM's own fallback says x-should-retry: false, so one create() is
    one HTTP attempt and two CLI runs (the provider and its fallback), not
    three attempts and six runs.
    """
    gateway = Gateway(tmp_path, marker, fake_mode="exit_nonzero", clis=("claude", "gemini"), cerebras=False)
    await gateway.start()
    try:
        body = {"model": "claude", "messages": [{"role": "user", "content": PROMPT}]}
        client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, timeout=TIMEOUT, max_retries=2)
        error = await raised(openai.APIStatusError, client.chat.completions.create, **body)
        assert error.status_code == 502
        runs = {name: len(gateway.records[name].read_text().splitlines()) for name in ("claude", "gemini")}
        assert runs == {"claude": 1, "gemini": 1}
        client = anthropic.Anthropic(base_url=gateway.url, api_key=KEY, timeout=TIMEOUT, max_retries=2)
        error = await raised(anthropic.APIStatusError, client.messages.create, max_tokens=100, **body)
        assert error.status_code == 502
        runs = {name: len(gateway.records[name].read_text().splitlines()) for name in ("claude", "gemini")}
        assert runs == {"claude": 2, "gemini": 2}
    finally:
        await gateway.stop()
