"""
Prompt templates: the C{{{ name }}} syntax (strict variables, values
inserted verbatim), versions in the store on both engines, the admin API,
use from C{/completions}, jobs and C{/v1/responses}, the read-only folder
and its reload; through StubTreq against the real Klein resource, with the
store's real pool threads.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock

from shellm import rendering
from shellm.errors import InvalidField
from shellm.http.admin_api import AdminAPI
from shellm.http.api import ShellmAPI
from shellm.http.web import ShellmSite
from shellm.routing.auth import Authenticator, Client
from shellm.state.conversations import Conversations
from shellm.state.keys import KeyRing, KeyStore
from shellm.state.ledger import Ledger
from shellm.state.store import Store
from shellm.state.templates import TemplateFolder, TemplateStore, draft, parse_file
from tests.daemon import eventually
from tests.fake_providers import fake_providers, make_router
from tests.test_api import MAX_BODY, Gateway, admin_call, stub_treq

ADMIN = "admin-key-0123456789abcdef"
CLIENT = "client-key-0123456789abcdef"
MAX_PROMPT = 1000

pytestmark = pytest.mark.timeout(60)


# -- the syntax


def test_placeholders_and_what_is_plain_text():
    """
    {{ name }} with or without spaces is a placeholder; JSON braces, $ and
    a lone }} are text; {{{{ writes a literal {{.
    """
    text = 'Hi {{ name }}, {{name}} again. JSON {"a": {"b": [1]}} costs $100 }} {{{{ name }}'
    assert rendering.check(text, "template") == ("name",)
    assert rendering.fill(text, {"name": "Ada"}) == 'Hi Ada, Ada again. JSON {"a": {"b": [1]}} costs $100 }} {{ name }}'


def test_values_are_inserted_verbatim_and_never_expanded():
    """
    A value holding placeholder syntax, braces or $ is inserted as it is:
    it is not scanned again, so it cannot reach another variable.
    """
    text = "A: {{ a }} / B: {{ b }}"
    assert rendering.fill(text, {"a": "{{ b }} ${x} {{{{", "b": "secret"}) == "A: {{ b }} ${x} {{{{ / B: secret"


@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40),
)
def test_no_value_changes_the_text_around_it(a, b):
    """
    Whatever the values, the text around each placeholder stays exactly
    the template's.
    """
    rendered = rendering.fill("<{{ a }}|{{ b }}>", {"a": a, "b": b})
    assert rendered == f"<{a}|{b}>"


@pytest.mark.parametrize(
    "text, where",
    [
        ("{{ user-name }}", "line 1, column 1"),
        ("ok\nthen {{{ x }}}", "line 2, column 6"),
        ("{{ x }} and {{", "line 1, column 13"),
        ("{{ 1x }}", "line 1, column 1"),
    ],
)
def test_a_malformed_placeholder_is_refused_with_its_place(text, where):
    """
    A {{ that opens no placeholder is refused where it is, not sent on.
    """
    with pytest.raises(InvalidField) as raised:
        rendering.check(text, "template")
    assert raised.value.code == "invalid_template"
    assert where in raised.value.message and raised.value.message.startswith("template:")


@pytest.mark.parametrize(
    "given, code, named",
    [
        ({"a": "1"}, "missing_template_variables", "b"),
        ({}, "missing_template_variables", "a, b"),
        ({"a": "1", "b": "2", "c": "3"}, "unknown_template_variables", "'c'"),
        ({"a": "1", "b": None}, "invalid_template_variable", "variables.b: must be a string or a number, not null"),
        ({"a": True, "b": "2"}, "invalid_template_variable", "variables.a"),
        ({"a": {"x": 1}, "b": "2"}, "invalid_template_variable", "an object"),
        ({"a": [1], "b": "2"}, "invalid_template_variable", "an array"),
        ("a=1", "invalid_template_variable", "variables must be an object"),
    ],
)
def test_strict_variables_name_the_variable(given, code, named):
    """
    A missing variable, an unknown one, or a value that is not a string or
    a number is refused, naming it.
    """
    with pytest.raises(InvalidField) as raised:
        rendering.check_values(("a", "b"), given, "variables")
    assert raised.value.code == code and raised.value.status == 400
    assert named in raised.value.message


def test_a_version_holds_at_most_64_kib_and_100_variables():
    """
    Template and system together hold at most 64 KiB, and 100 variables.
    """
    with pytest.raises(InvalidField, match="at most 65536"):
        draft("x" * 65000, "y" * 600, None, None)
    with pytest.raises(InvalidField, match="uses 101 variables; at most 100"):
        draft(" ".join(f"{{{{ v{i} }}}}" for i in range(101)), None, None, None)
    assert len(draft(" ".join(f"{{{{ v{i} }}}}" for i in range(100)), None, None, None).variables) == 100


def test_numbers_are_written_as_text():
    """
    A number is a valid value, written as Python writes it.
    """
    assert rendering.check_values(("n", "x"), {"n": 3, "x": 0.5}, "variables") == {"n": "3", "x": "0.5"}


# -- the folder's files


def test_front_matter_gives_system_variables_and_description():
    """
    YAML front matter between --- lines gives system, declared variables
    and description; the rest, without the blank lines around it, is the
    template.
    """
    text = (
        "---\nsystem: |\n  You review {{ language }} code.\nvariables: [language, code]\n"
        "description: Code review\n---\n\nReview this:\n{{ code }}\n\n"
    )
    template = parse_file("review", text, 5.0)
    assert template.template == "Review this:\n{{ code }}"
    assert template.system == "You review {{ language }} code."
    assert template.variables == ("code", "language")
    assert template.description == "Code review" and template.read_only and template.version == 1
    assert parse_file("plain", "Just {{ x }}\n", 5.0).variables == ("x",)


@pytest.mark.parametrize(
    "text, why",
    [
        ("---\nsystem: x\n", "never closed"),
        ("---\nsytem: x\n---\nHi", "unknown key 'sytem'"),
        ("---\nvariables: [a]\n---\nHi {{ b }}", "'a' is declared but the template does not use it"),
        ("---\n[a\n---\nHi", "not valid YAML"),
        ("---\nsystem: 3\n---\nHi", "system: must be text"),
        ("Hi {{ bad name }}", "line 1, column 4"),
        ("\n\n", "template: must be non-empty"),
    ],
)
def test_a_bad_file_says_why(text, why):
    """
    A folder file that cannot be taken says why, for the log and the list.
    """
    with pytest.raises(ValueError, match=why):
        parse_file("x", text, 0.0)


# -- the store, the admin API and use, on both engines


def build(store: Store, folder: TemplateFolder | None = None) -> Gateway:
    clock = Clock()
    clock.advance(1_800_000_000)
    keys = KeyStore(store, b"test-secret-0123456789abcdef", clock)
    authenticator = Authenticator((Client("app", CLIENT, rpm=1000),), KeyRing(keys, clock), ADMIN)
    providers = fake_providers()
    for provider in providers.values():
        # The answer is what the provider was given.
        provider.on_start = lambda run: run.emit(f"[{run.request.system}] {run.request.prompt}").succeed()
    router = make_router(clock, providers)
    ledger = Ledger(store, clock)
    ledger._open = True
    templates = TemplateStore(store, clock, folder)
    conversations = Conversations(store, clock, 3600, 10, 100000)
    api = ShellmAPI(
        clock,
        router,
        max_prompt_chars=MAX_PROMPT,
        heartbeat=15,
        authenticator=authenticator,
        ledger=ledger,
        admin=AdminAPI(clock, authenticator, keys, router.models, templates=templates, max_prompt_chars=MAX_PROMPT),
        templates=templates,
        conversations=conversations,
    )
    site = ShellmSite(api.resource(), clock, MAX_BODY)
    return Gateway(clock, providers, router, site, stub_treq(site), api)


@pytest.fixture
def gw(store) -> Gateway:
    return build(store)


async def call(gw: Gateway, method: str, path: str, body=None, key: str | None = ADMIN):
    return await admin_call(gw, method, path, body, key)


async def save(gw: Gateway, name: str = "greet", **fields) -> dict:
    fields.setdefault("template", "Say hello to {{ who }}.")
    code, body, _ = await call(gw, "POST", "/admin/templates", {"name": name, **fields})
    assert code == 201, body
    return body


@pytest_twisted.ensureDeferred
async def test_versions_are_numbered_immutable_and_never_reused(gw):
    """
    Saving a name again makes its next version and leaves the earlier
    ones as they were; a deleted version's number is never given again,
    even once every version is gone.
    """
    first = await save(gw, description="v1")
    assert (first["name"], first["version"], first["variables"], first["source"]) == ("greet", 1, ["who"], "store")
    assert first["created_by"] == "admin" and first["read_only"] is False
    second = await save(gw, template="Greet {{ who }} in {{ language }}.", system="Be {{ tone }}.")
    assert second["version"] == 2 and second["variables"] == ["who", "language", "tone"]
    code, one, _ = await call(gw, "GET", "/admin/templates/greet?version=1")
    assert code == 200 and one["template"] == "Say hello to {{ who }}." and one["description"] == "v1"
    code, latest, _ = await call(gw, "GET", "/admin/templates/greet")
    assert latest["version"] == 2 and [v["version"] for v in latest["versions"]] == [1, 2]
    code, listing, _ = await call(gw, "GET", "/admin/templates")
    assert [(t["name"], t["latest_version"], t["versions"]) for t in listing["templates"]] == [("greet", 2, 2)]

    code, body, _ = await call(gw, "DELETE", "/admin/templates/greet?version=2")
    assert code == 200 and body == {"name": "greet", "deleted_versions": [2]}
    assert (await call(gw, "GET", "/admin/templates/greet"))[1]["version"] == 1
    assert (await save(gw))["version"] == 3
    code, body, _ = await call(gw, "GET", "/admin/templates/greet?version=2")
    assert code == 404 and body["error"] == "template_version_not_found"
    code, body, _ = await call(gw, "DELETE", "/admin/templates/greet")
    assert code == 200 and body["deleted_versions"] == [1, 3]
    code, body, _ = await call(gw, "GET", "/admin/templates/greet")
    assert code == 404 and body["error"] == "template_not_found"
    assert (await save(gw))["version"] == 4


@pytest_twisted.ensureDeferred
async def test_saves_at_once_get_distinct_versions(store, db_setting):
    """
    Saves of one name at once, from two stores on one database (two
    nodes), each get their own number.
    """
    other = Store.from_setting(db_setting, reactor)
    await other.open()
    try:
        clock = Clock()
        one, two = TemplateStore(store, clock), TemplateStore(other, clock)
        text = draft("Hi {{ who }}", None, None, None)
        made = await gatherResults([(one if i % 2 else two).create("a", "greet", text) for i in range(8)])
        assert sorted(t.version for t in made) == list(range(1, 9))
    finally:
        await other.close()


@pytest_twisted.ensureDeferred
async def test_a_full_template_refuses_a_version_and_keeps_its_numbers(store, monkeypatch):
    """
    A name holding its most versions refuses the next (409 template_full)
    without using a number: once an old version is deleted, the next save
    takes the number after the last one made.
    """
    from shellm.state import templates

    monkeypatch.setattr(templates, "MAX_VERSIONS", 2)
    saved = TemplateStore(store, Clock())
    text = draft("Hi {{ who }}", None, None, None)
    assert [(await saved.create("a", "greet", text)).version for _ in range(2)] == [1, 2]
    with pytest.raises(templates.TemplateFull) as refused:
        await saved.create("a", "greet", text)
    assert refused.value.status == 409
    await saved.delete("greet", 1)
    assert (await saved.create("a", "greet", text)).version == 3


@pytest_twisted.ensureDeferred
async def test_render_returns_the_text_without_running_anything(gw):
    """
    POST /admin/templates/{name}/render fills the latest (or a given)
    version; no provider is called; variables are strict, each error
    naming the variable.
    """
    await save(gw, system="You speak {{ language }}.")
    await save(gw, template="Bonjour {{ who }}", system="Tu parles {{ language }}.")
    code, body, _ = await call(
        gw, "POST", "/admin/templates/greet/render", {"variables": {"who": "Ada", "language": "French"}}
    )
    assert code == 200
    assert body == {"name": "greet", "version": 2, "prompt": "Bonjour Ada", "system": "Tu parles French."}
    code, body, _ = await call(
        gw, "POST", "/admin/templates/greet/render", {"version": 1, "variables": {"who": 7, "language": "Go"}}
    )
    assert body["prompt"] == "Say hello to 7." and body["system"] == "You speak Go."
    assert all(not provider.runs for provider in gw.providers.values())
    for variables, code_, named in (
        ({"who": "Ada"}, "missing_template_variables", "language"),
        ({"who": "Ada", "language": "Go", "whom": "x"}, "unknown_template_variables", "whom"),
        ({"who": None, "language": "Go"}, "invalid_template_variable", "variables.who"),
    ):
        code, body, _ = await call(gw, "POST", "/admin/templates/greet/render", {"variables": variables})
        assert code == 400 and body["error"] == code_ and named in body["message"], body
    code, body, _ = await call(
        gw, "POST", "/admin/templates/greet/render", {"variables": {"who": "x" * MAX_PROMPT, "language": "Go"}}
    )
    assert code == 400 and "maximum length of 1000" in body["message"]


@pytest.mark.parametrize(
    "fields, named",
    [
        ({"name": "Greet"}, "name:"),
        ({"name": "a/b"}, "name:"),
        ({"template": ""}, "template:"),
        ({"template": "Hi {{ who"}, "template: line 1, column 4"),
        ({"system": "Be {{ }}"}, "system: line 1, column 4"),
        ({"variables": ["who", "extra"]}, "'extra' is declared"),
        ({"variables": []}, "uses 'who', which is not declared"),
        ({"colour": "red"}, "colour: unknown field"),
        # Past the body cap: a 413, not a body read as empty.
        ({"template": "x" * 70000}, "request body is larger than 4096 bytes"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_input_names_the_field(gw, fields, named):
    """
    A bad name, text, placeholder, declaration or field is refused, the
    message starting with the field's name (and a bad placeholder's place).
    """
    body = {"name": "greet", "template": "Hi {{ who }}", **fields}
    code, answer, _ = await call(gw, "POST", "/admin/templates", body)
    assert code in (400, 413) and named in answer["message"], answer


@pytest_twisted.ensureDeferred
async def test_admin_only(gw):
    """
    The routes take an admin key: none is a 401, a client key a 403.
    """
    code, body, _ = await call(gw, "GET", "/admin/templates", key=None)
    assert code == 401 and body["error"] == "auth_required"
    code, body, _ = await call(gw, "POST", "/admin/templates", {"name": "x", "template": "y"}, key=CLIENT)
    assert code == 403 and body["error"] == "admin_only"
    code, body, _ = await call(gw, "GET", "/admin/templates/x/nothing-here", key=None)
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_completions_with_a_template(gw, store):
    """
    /completions takes template, template_version and variables instead of
    a prompt: the provider gets the rendered text, the template's system
    first and the request's own after it; the answer says which version
    made the prompt, and so does the request log.
    """
    await save(gw, template="Summarise: {{ text }}", system="Answer in {{ language }}.")
    await save(gw, template="Translate: {{ text }}", system="Answer in {{ language }}.")
    body = {
        "model": "claude",
        "template": "greet",
        "template_version": 1,
        "variables": {"text": '{"json": "{{ language }}"}', "language": "Welsh"},
        "system": "Be brief.",
    }
    code, answer, response = await call(gw, "POST", "/completions", body, key=CLIENT)
    assert code == 200, answer
    assert answer["content"] == '[Answer in Welsh.\n\nBe brief.] Summarise: {"json": "{{ language }}"}'
    assert response.headers.getRawHeaders("x-shellm-template") == ["greet@1"]
    code, answer, response = await call(
        gw, "POST", "/completions", {**body, "template_version": None, "system": None}, key=CLIENT
    )
    assert code == 200 and answer["content"].startswith("[Answer in Welsh.] Translate:")
    assert response.headers.getRawHeaders("x-shellm-template") == ["greet@2"]

    async def logged():
        rows = await store.query("SELECT template FROM usage ORDER BY id")
        return [row[0] for row in rows] == ["greet@1", "greet@2"]

    gw.clock.advance(1)  # the ledger's batch
    assert await eventually(logged)
    code, page, _ = await call(gw, "GET", "/admin/requests")
    assert [row["template"] for row in page["requests"]] == ["greet@2", "greet@1"]


@pytest_twisted.ensureDeferred
async def test_a_session_turn_from_a_template(gw):
    """
    A session turn may be a template: its rendered text is the turn stored.
    """
    await save(gw)
    code, session, _ = await call(gw, "POST", "/sessions", {"model": "claude"}, key=CLIENT)
    assert code == 201
    body = {"session_id": session["id"], "template": "greet", "variables": {"who": "Ada"}}
    code, answer, _ = await call(gw, "POST", "/completions", body, key=CLIENT)
    assert code == 200 and answer["turn"] == 1, answer
    code, shown, _ = await call(gw, "GET", f"/sessions/{session['id']}", key=CLIENT)
    assert [turn["prompt"] for turn in shown["turns"]] == ["Say hello to Ada."]


@pytest.mark.parametrize(
    "fields, status, code, named",
    [
        ({"template": "nope"}, 404, "template_not_found", "nope"),
        ({"template_version": 9}, 404, "template_version_not_found", "no version 9"),
        ({"template_version": 0}, 400, "invalid_request", "template_version"),
        ({"template_version": 10**21}, 400, "invalid_request", "template_version"),
        ({"template_version": 9.0}, 404, "template_version_not_found", "no version 9"),  # 9 to JSON
        ({"variables": {}}, 400, "missing_template_variables", "who"),
        ({"variables": {"who": "x", "whom": "y"}}, 400, "unknown_template_variables", "whom"),
        ({"variables": {"who": ["x"]}}, 400, "invalid_template_variable", "variables.who"),
        ({"prompt": "also"}, 400, "invalid_request", "not both"),
        ({"template": None, "variables": {"who": "x"}}, 400, "invalid_request", '"variables" goes with "template"'),
        # The rendered prompt obeys the prompt limit.
        ({"variables": {"who": "x" * MAX_PROMPT}}, 400, "invalid_request", "maximum length of 1000"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_completions_template_errors(gw, fields, status, code, named):
    """
    Each wrong use of a template is refused before any provider runs, with
    its own code and a message naming what is wrong.
    """
    await save(gw)
    body = {"model": "claude", "template": "greet", "variables": {"who": "Ada"}, **fields}
    body = {k: v for k, v in body.items() if v is not None}
    answer_code, answer, _ = await call(gw, "POST", "/completions", body, key=CLIENT)
    assert (answer_code, answer["error"]) == (status, code) and named in answer["message"], answer
    assert all(not provider.runs for provider in gw.providers.values())


@pytest_twisted.ensureDeferred
async def test_responses_prompt_object(gw):
    """
    /v1/responses takes OpenAI's prompt {id, version, variables} (version
    as a string, a variable as an input_text part); the template's text is
    the first user message, before any input, its system before the
    instructions; the response repeats the prompt with its version.
    """
    await save(gw, template="Tell me about {{ topic }}.", system="You are {{ role }}.")
    body = {
        "model": "claude",
        "prompt": {
            "id": "greet",
            "version": "1",
            "variables": {"topic": "owls", "role": {"type": "input_text", "text": "a guide"}},
        },
        "instructions": "Be brief.",
    }
    code, answer, response = await call(gw, "POST", "/v1/responses", body, key=CLIENT)
    assert code == 200, answer
    assert answer["output"][0]["content"][0]["text"] == "[You are a guide.\n\nBe brief.] Tell me about owls."
    assert answer["prompt"]["id"] == "greet" and answer["prompt"]["version"] == "1"
    assert response.headers.getRawHeaders("x-shellm-template") == ["greet@1"]
    code, answer, _ = await call(gw, "POST", "/v1/responses", {**body, "input": "And bats?"}, key=CLIENT)
    text = answer["output"][0]["content"][0]["text"]
    assert text.endswith("Tell me about owls.\n\nAnd bats?")  # two user messages in a row read as one
    for prompt, param in (
        ({"id": "greet", "variables": {"topic": "owls"}}, "prompt.variables.role"),
        (
            {"id": "greet", "variables": {"topic": {"type": "input_image", "image_url": "x"}, "role": "r"}},
            "prompt.variables.topic",
        ),
        ({"id": "nope"}, None),
        ({"id": "greet", "version": "x"}, "prompt.version"),
    ):
        code, answer, _ = await call(gw, "POST", "/v1/responses", {"model": "claude", "prompt": prompt}, key=CLIENT)
        assert code in (400, 404) and answer["error"]["param"] == param, answer


@pytest_twisted.ensureDeferred
async def test_a_job_with_a_template(db_setting):
    """
    POST /jobs takes the /completions body with a template: rendered when
    the job is accepted (a bad variable is a 400 at once), and the job runs
    that text, logged as made by that version.
    """
    from tests.test_jobs import make_setup

    setup = await make_setup(db_setting)
    try:
        setup.gw.api.templates = templates = TemplateStore(setup.store, setup.gw.clock)
        await templates.create("admin", "greet", draft("Hello {{ who }}", "Be {{ tone }}.", None, None))
        response = await setup.post(
            "/jobs", {"model": "claude", "template": "greet", "variables": {"who": "Ada", "tone": "kind"}}
        )
        assert response.code == 202
        job_id = (await response.json())["id"]
        run = setup.gw.providers["claude"]
        assert await eventually(lambda: len(run.runs) == 1, timeout=10)
        assert (run.runs[0].request.prompt, run.runs[0].request.system) == ("Hello Ada", "Be kind.")
        assert run.runs[0].request.template == "greet@1"  # what the request log records
        run.runs[0].emit("Hi").succeed()
        done = await setup.job_reaches(job_id, lambda job: job["status"] == "succeeded")
        assert done["result"]["content"] == "Hi"
        refused = await setup.post("/jobs", {"model": "claude", "template": "greet", "variables": {"who": "Ada"}})
        assert refused.code == 400 and "tone" in (await refused.json())["message"]
    finally:
        setup.runner.stop()
        await setup.store.close()


# -- the folder


def write(folder, name: str, text: str) -> None:
    (folder / name).write_text(text)


@pytest_twisted.ensureDeferred
async def test_folder_templates_are_listed_used_and_read_only(store, tmp_path, log_events):
    """
    The folder's name.md files are templates: listed as read-only (with
    the files refused and why), rendered and used like the others; saving
    or deleting their names is a 409.  A file's name hides stored versions.
    """
    folder_path = tmp_path / "templates"
    folder_path.mkdir()
    write(folder_path, "review.md", "---\nsystem: You review {{ language }}.\n---\nReview:\n{{ code }}\n")
    write(folder_path, "broken.md", "Hi {{ who")
    write(folder_path, "Bad Name.md", "Hi")
    write(folder_path, "notes.txt", "not a template")
    folder = TemplateFolder(str(folder_path))
    assert folder.load()
    gw = build(store, folder)
    await save(gw, name="greet")
    code, listing, _ = await call(gw, "GET", "/admin/templates")
    assert [(t["name"], t["source"], t["read_only"]) for t in listing["templates"]] == [
        ("review", "folder", True),
        ("greet", "store", False),
    ]
    assert set(listing["folder"]["errors"]) == {"broken.md", "Bad Name.md"}
    assert "line 1, column 4" in listing["folder"]["errors"]["broken.md"]
    assert any("template file" in e.get("log_format", "") and "broken.md" in e.get("file", "") for e in log_events)
    body = {"model": "claude", "template": "review", "variables": {"language": "Python", "code": "x = 1"}}
    code, answer, response = await call(gw, "POST", "/completions", body, key=CLIENT)
    assert code == 200 and answer["content"] == "[You review Python.] Review:\nx = 1"
    assert response.headers.getRawHeaders("x-shellm-template") == ["review@1"]
    code, answer, _ = await call(gw, "POST", "/admin/templates", {"name": "review", "template": "x"})
    assert code == 409 and answer["error"] == "template_read_only"
    code, answer, _ = await call(gw, "DELETE", "/admin/templates/review")
    assert code == 409 and answer["error"] == "template_read_only"
    code, answer, _ = await call(gw, "GET", "/admin/templates/review?version=2")
    assert code == 404 and answer["error"] == "template_version_not_found"


def test_folder_reload_keeps_a_good_reading_over_a_broken_file(tmp_path, log_events):
    """
    On a reload, a changed file is read again, a new one is added, a
    removed one goes, and a file now broken keeps its last good reading
    (with an error line); a folder that cannot be read changes nothing.
    """
    write(tmp_path, "a.md", "A {{ x }}")
    write(tmp_path, "b.md", "B {{ y }}")
    write(tmp_path, "c.md", "C")
    folder = TemplateFolder(str(tmp_path))
    assert folder.load() and set(folder.templates) == {"a", "b", "c"}
    first_digest = folder.digests["a"]
    write(tmp_path, "a.md", "A2 {{ x }}")
    write(tmp_path, "b.md", "B {{ y")
    os.remove(tmp_path / "c.md")
    write(tmp_path, "d.md", "D")
    assert folder.load()
    assert folder.templates["a"].template == "A2 {{ x }}" and folder.digests["a"] != first_digest
    assert folder.templates["b"].template == "B {{ y }}" and "b.md" in folder.errors
    assert set(folder.templates) == {"a", "b", "d"}
    assert any("its last good reading stays" in str(e.get("kept")) for e in log_events)
    os.rename(tmp_path, str(tmp_path) + "-gone")
    assert not folder.load() and set(folder.templates) == {"a", "b", "d"}
