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

ADMIN_KEY = "admin-key-0123456789abcdef"


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
        "SHELLM_ADMIN_KEY": ADMIN_KEY,
        "SHELLM_KEY_SECRET": "openapi-test-secret-0123456789",
        # Callbacks are accepted (jobs with a callback_url are schema-valid).
        "SHELLM_WEBHOOK_SECRET": "whsec_" + "A" * 44,
    }
    for name, key in keys.items():
        env[f"SHELLM_{name.upper()}_BIN"] = fake_cli(name)
        # Working fakes answer what is asked: JSON for a schema, else the prompt.
        env[f"SHELLM_{name.upper()}_ENV"] = json.dumps(
            {key: "fake", "SHELLM_TEST_MARKER": marker, "FAKE_MODE": "schema"}
        )
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
    from shellm.http.admin_api import AdminAPI
    from shellm.http.api import ShellmAPI
    from shellm.http.jobs_api import JobsAPI
    from shellm.http.responses_api import ResponsesAPI
    from shellm.http.sessions_api import SessionsAPI
    from shellm.http.templates_api import TemplatesAdmin

    # A mounted sub-app's catch-all stands for the sub-app's own routes.
    served = {rule.rule for rule in ShellmAPI.app.url_map.iter_rules() if "__rest__" not in rule.rule}
    served = {rule for rule in served if not rule.startswith("/admin/")}
    # The dashboard's pages are HTML for a browser with a login cookie, not
    # an API: left out of the document on purpose (tests/test_dashboard.py
    # covers them), and every one of them is under /dashboard.
    from shellm.http.dashboard.pages import Dashboard

    assert {rule for rule in served if rule.startswith("/dashboard")} == {"/dashboard", "/dashboard/"}
    assert all(not rule.rule.startswith("/dashboard") for rule in Dashboard.app.url_map.iter_rules())
    served = {rule for rule in served if not rule.startswith("/dashboard")}
    served |= {"/admin" + rule.rule for rule in AdminAPI.app.url_map.iter_rules() if "__rest__" not in rule.rule}
    mounted = (
        ("/jobs", JobsAPI),
        ("/sessions", SessionsAPI),
        ("/v1/responses", ResponsesAPI),
        ("/admin/templates", TemplatesAdmin),
    )
    for mount, sub in mounted:
        served |= {(mount + rule.rule).rstrip("/") for rule in sub.app.url_map.iter_rules()}
    served = {path.replace("<path:", "{").replace("<", "{").replace(">", "}") for path in served}
    assert served <= set(document["paths"])
    assert not [path for path in document["paths"] if path.startswith("/dashboard")]
    assert "claude-sonnet" in document["components"]["schemas"]["CompletionRequest"]["properties"]["model"]["enum"]
    # Every answer a template may make names it (X-SheLLM-Template), the cached ones their cache use.
    from shellm.http.openapi import TEMPLATED

    for route, status in TEMPLATED:
        assert "X-SheLLM-Template" in document["paths"][route]["post"]["responses"][status]["headers"], route
    assert "X-SheLLM-Cache" in document["paths"]["/completions"]["post"]["responses"]["200"]["headers"]


@pytest.mark.slow
@pytest.mark.timeout(500)  # bounded runs over every operation, the admin and jobs APIs' included
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
        # An Idempotency-Key reused with another body is a 422, by design
        # (schemathesis sends one key with several bodies).
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            '[[operations]]\ninclude-path = "/jobs"\ninclude-method = "POST"\n'
            'checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]\n'
        )
        # SheLLM's own endpoints, every check.  The compatible ones accept
        # what the vendors' APIs accept, which a JSON schema cannot fully
        # say (a conversation must end with a user turn, content parts have
        # types), so for them schema-valid bodies may still be refused with
        # a 400: every other check applies.  The SDK tests prove them.
        for selection in (
            # DELETE /jobs/{id} cancels: the job is still there to read, by design.
            ["--exclude-path-regex", "^/v1/", "--exclude-checks", "use_after_free"],
            # A response made with "store": false is, by design, not there to read or delete.
            [
                "--include-path-regex",
                "^/v1/",
                "--exclude-checks",
                "positive_data_acceptance,ensure_resource_availability",
            ],
            # Last: keys it makes turn auth on.  Schema-valid input may still
            # be refused (an expiry in the past, a key id that does not exist),
            # and a revoked key (DELETE) stays readable as "revoked", by design:
            # the per-operation switch for that check is not honoured by the
            # stateful phase, so it is off here (tests/test_templates.py checks
            # that a deleted template is gone).
            [
                "--include-path-regex",
                "^/admin/",
                "--exclude-checks",
                "positive_data_acceptance,use_after_free",
                "--header",
                f"Authorization: Bearer {ADMIN_KEY}",
            ],
        ):
            out, err, code = await getProcessOutputAndValue(
                sys.executable,
                [
                    "-m",
                    "schemathesis.cli",
                    "--config-file",
                    str(config),
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
