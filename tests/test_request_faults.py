"""
Failures the request itself causes never count against a provider: a
prompt that is empty once cleaned is refused at the door, an upstream that
refuses the request (too long, malformed) or an answer over SheLLM's
output cap neither opens a circuit nor makes another provider run it.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from shellm.errors import ProviderFailed, UpstreamRejected
from shellm.providers.cli import OutputParser
from shellm.providers.process import CliExit
from tests.test_api import body_of, error_response, make_gateway

THRESHOLD = 3

#: What the CLIs relay when their upstream answers 400 (from the vendors'
#: recorded output: claude's result text, gemini's JSON error on stderr).
UPSTREAM_400 = [
    'API Error: 400 {"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long"}}',
    '{"session_id":"s-1","error":{"type":"Error","message":"{\\"error\\":{\\"code\\":400}}","code":400}}',
    "unexpected status 400 Bad Request: maximum context length exceeded",
]


@pytest.mark.parametrize("said", UPSTREAM_400)
def test_an_upstream_400_is_the_request_s_fault(said):
    """
    A CLI relaying its upstream's refusal of the request is a 400
    C{upstream_rejected}: neither a provider failure nor worth a fallback.
    """
    error = OutputParser("claude", lambda event: None).failed(CliExit(1, None, said, False, False, 0))
    assert isinstance(error, UpstreamRejected)
    assert error.status == 400 and not error.provider_side


@pytest.mark.parametrize(
    "path, body",
    [
        ("/completions", body_of("\u0000\u0000")),
        ("/completions", body_of(" \u0000\n\u0000 ")),
        ("/v1/chat/completions", {"model": "claude", "messages": [{"role": "user", "content": "\u0000"}]}),
        (
            "/v1/chat/completions",
            {
                "model": "claude",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": " \u0000 "},
                ],
            },
        ),
        ("/v1/messages", {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "\u0000"}]}),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_prompt_of_nuls_is_empty(path, body):
    """
    A message that is only NULs (and blanks) is empty once cleaned for the
    CLI: a 400 at once, and no provider ever runs it.
    """
    gw = make_gateway()
    response = await gw.answered(gw.post(path, body))
    assert response.code == 400
    assert all(not p.runs for p in gw.providers.values())


@pytest.mark.parametrize(
    "error",
    [
        UpstreamRejected("claude: the upstream refused this request (too long or malformed)"),
        ProviderFailed("claude printed more output than allowed", blames_provider=False),
    ],
    ids=["upstream_400", "output_cap"],
)
@pytest_twisted.ensureDeferred
async def test_request_caused_failures_leave_the_circuit_closed(error):
    """
    More such failures than the circuit threshold in a row: the circuit
    stays closed and counts nothing; an upstream refusal is not run again
    elsewhere.
    """
    gw = make_gateway(circuit_threshold=THRESHOLD)
    claude = gw.providers["claude"]
    for _ in range(THRESHOLD + 1):
        d = gw.post("/completions", body_of())
        claude.last.fail(error)
        if isinstance(error, UpstreamRejected):
            await error_response(gw, d, 400, "upstream_rejected")
            assert not gw.providers["gemini"].runs
        else:
            gw.providers["gemini"].last.succeed()
            assert (await gw.answered(d)).code == 200
    circuit = gw.router.circuits["claude"]
    assert circuit.state == "closed" and circuit.failures == 0
