"""
The OpenAPI document describes the API, and a property-based run against a
live daemon finds nothing the document does not allow.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.utils import getProcessOutputAndValue

from tests.conftest import fake_cli, wait_for_no_processes
from tests.daemon import Daemon
from tests.fakes.fake_openai_server import start_fake_openai


def _all_providers_env(marker, cerebras_url="http://127.0.0.1:9/v1"):
    """
    Every provider present and working (fakes), so that any 5xx is a bug.
    """
    keys = {"claude": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY", "codex": "OPENAI_API_KEY"}
    env = {
        "SHELLM_MAX_QUEUE_DEPTH": "1000",
        "SHELLM_GLOBAL_RPM": "1000000",
        "SHELLM_MAX_CONCURRENT": "4",
        "CEREBRAS_API_KEY": "fake",
        "SHELLM_CEREBRAS_BASE_URL": cerebras_url,
    }
    for name, key in keys.items():
        env[f"SHELLM_{name.upper()}_BIN"] = fake_cli(name)
        env[f"SHELLM_{name.upper()}_ENV"] = json.dumps({key: "fake", "SHELLM_TEST_MARKER": marker})
    return env


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_document_is_valid_openapi_and_covers_every_route(tmp_path, marker):
    """
    /openapi.json is a valid OpenAPI 3.1 document naming every route the
    daemon serves.
    """
    validator = pytest.importorskip("openapi_spec_validator")
    daemon = Daemon(_all_providers_env(marker), marker, str(tmp_path))
    try:
        await daemon.started()
        response = await treq.get(daemon.url + "/openapi.json")
        document = json.loads(await response.content())
    finally:
        await daemon.stop()
    validator.validate(document)
    from shellm.http.api import ShellmAPI
    from shellm.http.responses_api import ResponsesAPI
    from shellm.http.sessions_api import SessionsAPI

    served = {rule.rule for rule in ShellmAPI.app.url_map.iter_rules() if "__rest__" not in rule.rule}
    for mount, sub in (("/sessions", SessionsAPI), ("/v1/responses", ResponsesAPI)):
        served |= {(mount + rule.rule).rstrip("/") for rule in sub.app.url_map.iter_rules()}
    served = {path.replace("<path:", "{").replace("<", "{").replace(">", "}") for path in served}
    assert served <= set(document["paths"])
    assert "claude-sonnet" in document["components"]["schemas"]["CompletionRequest"]["properties"]["model"]["enum"]


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_schemathesis_finds_no_undocumented_answer(tmp_path, marker):
    """
    A bounded schemathesis run (every check) against a live daemon with a
    fake provider finds no server error, undocumented status or response
    that breaks the schema.
    """
    pytest.importorskip("schemathesis")
    fake, port = start_fake_openai(reactor)
    daemon = Daemon(_all_providers_env(marker, fake.base_url), marker, str(tmp_path))
    try:
        await daemon.started()
        reports = []
        # SheLLM's own endpoints, every check.  The compatible ones accept
        # what the vendors' APIs accept, which a JSON schema cannot fully
        # say (a conversation must end with a user turn, content parts have
        # types), so for them schema-valid bodies may still be refused with
        # a 400: every other check applies.  The SDK tests prove them.
        for selection in (
            ["--exclude-path-regex", "^/v1/"],
            ["--include-path-regex", "^/v1/", "--exclude-checks", "positive_data_acceptance"],
        ):
            out, err, code = await getProcessOutputAndValue(
                sys.executable,
                [
                    "-m",
                    "schemathesis.cli",
                    "run",
                    daemon.url + "/openapi.json",
                    "--checks",
                    "all",
                    *selection,
                    "--max-examples",
                    "25",
                    "--request-timeout",
                    "20",
                    "--suppress-health-check",
                    "all",
                    "--seed",
                    "1",
                ],
                env=dict(os.environ),
                path=str(tmp_path),
                reactor=reactor,
            )
            reports.append((code, out.decode("utf-8", "replace") + err.decode("utf-8", "replace")))
    finally:
        await daemon.stop()
        await fake.stop()
    for code, report in reports:
        assert code == 0, report[-6000:]
    assert await wait_for_no_processes(marker) == []
