"""
Prompt templates through a real C{twistd shellm} whose fake CLIs echo their
stdin: the official C{openai} SDK's C{responses.create(prompt=...)} and
C{responses.stream}, C{/completions} over HTTP, and the templates folder
read again on SIGHUP.
"""

from __future__ import annotations

import json
import uuid

import pytest
import pytest_twisted
import treq

from tests.conftest import processes_with_marker
from tests.daemon import eventually
from tests.test_sdks import KEY, Gateway, in_thread, openai

pytestmark = pytest.mark.slow  # a real daemon and CLIs

ADMIN = "admin-key-0123456789abcdef"


@pytest_twisted.async_yield_fixture(scope="module")
async def gateway(tmp_path_factory):
    marker = f"shellm-test-{uuid.uuid4().hex}"
    tmp_path = tmp_path_factory.mktemp("templates")
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "review.md").write_text("---\nsystem: You review {{ language }}.\n---\nReview:\n{{ code }}\n")
    gateway = Gateway(
        tmp_path,
        marker,
        clients={"sdk": {"key": KEY, "rpm": 100000}},
        SHELLM_ADMIN_KEY=ADMIN,
        SHELLM_TEMPLATES_DIR=str(folder),
    )
    gateway.folder = folder
    try:
        await gateway.start()
        response = await treq.post(
            gateway.url + "/admin/templates",
            json.dumps({"name": "greet", "template": "Say hello to {{ who }}.", "system": "Be {{ tone }}."}).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {ADMIN}"},
        )
        assert response.code == 201, await response.text()
        yield gateway
    finally:
        await gateway.stop()
        assert not processes_with_marker(marker)


@pytest_twisted.ensureDeferred
async def test_openai_sdk_responses_with_a_prompt_template(gateway):
    """
    responses.create(prompt={id, version, variables}) runs the rendered
    template: the CLI receives its text (and its system prompt), and the
    response repeats the prompt with the version used; responses.stream
    takes it too (with input after the template's text); a missing variable is a 400 the SDK reads, naming it.
    """
    client = gateway.openai()
    response = await in_thread(
        client.responses.create,
        model="claude",
        prompt={"id": "greet", "version": "1", "variables": {"who": "{{ tone }}", "tone": "warm"}},
    )
    assert response.output_text == "Say hello to {{ tone }}."  # the echoing CLI; the value stays verbatim
    assert response.prompt.id == "greet" and response.prompt.version == "1"
    assert gateway.last_record("claude")["system_prompt_file_content"] == "Be warm."

    def stream():
        with client.responses.stream(
            # The SDK's stream() asks for input: it follows the template's text.
            model="claude",
            prompt={"id": "greet", "variables": {"who": "Ada", "tone": "brief"}},
            input="In French.",
        ) as events:
            return [event.type for event in events], events.get_final_response()

    kinds, final = await in_thread(stream)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "Say hello to Ada.\n\nIn French."

    with pytest.raises(openai.BadRequestError) as raised:
        await in_thread(client.responses.create, model="claude", prompt={"id": "greet", "variables": {"who": "A"}})
    error = raised.value.body
    assert error["code"] == "missing_template_variables" and error["param"] == "prompt.variables.tone"
    assert "tone" in error["message"]
    with pytest.raises(openai.NotFoundError):
        await in_thread(client.responses.create, model="claude", prompt={"id": "nope"})


async def _complete(gateway, body: dict):
    response = await treq.post(
        gateway.url + "/completions",
        json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {KEY}"},
    )
    return response, await response.json()


@pytest_twisted.ensureDeferred
async def test_folder_template_and_sighup_reload(gateway):
    """
    A folder's template answers /completions; after its file changes, a
    SIGHUP makes the new text the one used, with no restart.
    """
    body = {"model": "claude", "template": "review", "variables": {"language": "Go", "code": "x := 1"}}
    response, answer = await _complete(gateway, body)
    assert response.code == 200 and answer["content"] == "Review:\nx := 1"
    assert response.headers.getRawHeaders("x-shellm-template") == ["review@1"]
    assert gateway.last_record("claude")["system_prompt_file_content"] == "You review Go."
    (gateway.folder / "review.md").write_text("Check this {{ language }}:\n{{ code }}")
    gateway.daemon.transport.signalProcess("HUP")

    async def reloaded():
        return (await _complete(gateway, body))[1].get("content") == "Check this Go:\nx := 1"

    assert await eventually(reloaded)
