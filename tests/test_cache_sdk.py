"""
The response cache seen by the official C{openai} and C{anthropic} SDKs,
unmodified, against a real C{twistd shellm} with a fake claude CLI.
"""

from __future__ import annotations

import uuid

import pytest

openai = pytest.importorskip("openai")
anthropic = pytest.importorskip("anthropic")

import pytest_twisted  # noqa: E402

from tests.test_sdks import KEY, PROMPT, Gateway, in_thread  # noqa: E402

pytestmark = pytest.mark.slow  # a real daemon and CLI processes


def _runs(gateway: Gateway) -> int:
    record = gateway.records["claude"]
    return len(record.read_text().splitlines()) if record.exists() else 0


@pytest_twisted.ensureDeferred
async def test_sdks_get_cache_hits(tmp_path):
    """
    With SHELLM_CACHE_TTL set, the OpenAI SDK asking the same question twice
    gets X-SheLLM-Cache miss then hit and the same answer from one CLI run;
    the Anthropic SDK's stream of that question (its own max_tokens, so its
    own entry) is replayed from the cache the second time; extra_body's
    cache.no_cache runs the CLI again.
    """
    gateway = Gateway(
        tmp_path,
        f"shellm-test-{uuid.uuid4().hex}",
        clis=("claude",),
        cerebras=False,
        clients={"sdk": {"key": KEY, "rpm": 100000}},
        SHELLM_CACHE_TTL="60",
    )
    await gateway.start()
    try:
        client = gateway.openai()
        messages = [{"role": "user", "content": PROMPT}]

        def ask(**extra):
            raw = client.chat.completions.with_raw_response.create(model="claude", messages=messages, **extra)
            return raw.headers.get("x-shellm-cache"), raw.parse().choices[0].message.content

        assert await in_thread(ask) == ("miss", PROMPT)
        assert await in_thread(ask) == ("hit", PROMPT)
        assert _runs(gateway) == 1
        assert await in_thread(ask, extra_body={"cache": {"no_cache": True}}) == ("bypass", PROMPT)
        assert _runs(gateway) == 2

        claude = gateway.anthropic()

        def stream():
            with claude.messages.with_streaming_response.create(
                model="claude", max_tokens=64, messages=messages, stream=True
            ) as response:
                events = list(response.parse())
            text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
            return response.headers.get("x-shellm-cache"), text, events[-1].type

        assert await in_thread(stream) == ("miss", PROMPT, "message_stop")
        assert await in_thread(stream) == ("hit", PROMPT, "message_stop")
        assert _runs(gateway) == 3
    finally:
        await gateway.stop()
