"""
C{/dashboard/templates}: the prompt templates' pages, a Klein app of their
own mounted by L{shellm.http.dashboard.pages.Dashboard}, whose sessions,
CSRF checks, layout and error pages they share.  Rendering and deleting go
through the functions C{/admin/templates} uses
(L{shellm.http.templates_api}), so the checks are the same; a render only
fills the text in, it runs nothing.  Folder templates are shown and
rendered, never deleted.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.template import Tag, tags
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from shellm.errors import InvalidField, InvalidRequest
from shellm.http.dashboard import charts
from shellm.http.dashboard.forms import arg
from shellm.http.dashboard.layout import Page, brief, csrf_field, post_button, state, when
from shellm.http.dashboard.session import DashboardSession
from shellm.http.templates_api import delete_template, fill_in, version_number
from shellm.state.templates import PromptTemplate, Rendered, TemplateStore, check_name

if TYPE_CHECKING:
    from shellm.http.dashboard.pages import Dashboard

#: The render form's field holding the variables as one JSON object.
JSON_FIELD = "variables_json"
#: The prefix of the render form's field for one declared variable.
VARIABLE_FIELD = "var-"


class TemplatePages:
    """
    The templates' list, a version's page with its render form, and the
    delete buttons.
    """

    app = Klein()
    log = Logger()

    def __init__(self, dashboard: Dashboard):
        self._dashboard = dashboard

    def resource(self) -> Any:
        return self.app.resource()

    @app.handle_errors(Exception)
    def failed(self, request: IRequest, failure: Failure) -> Any:
        return self._dashboard.answer_failure(request, failure)

    @property
    def _templates(self) -> TemplateStore:
        templates = self._dashboard.api.templates
        if templates is None:
            raise WerkzeugNotFound()
        return templates

    # -- the list

    @app.route("/", methods=["GET"], strict_slashes=False)
    async def listing(self, request: IRequest) -> bytes:
        session = self._dashboard.session(request)
        templates = self._dashboard.api.templates
        if templates is None:
            off = tags.p("Prompt templates need the state store (SHELLM_DB).")
            return await self._dashboard.html(request, Page("Templates", off, "templates", session))
        rows = [
            [
                tags.a(href=_href(t["name"]))(t["name"]),
                str(t["latest_version"]),
                str(t["versions"]),
                ", ".join(t["variables"]) or "—",
                state("folder, read-only", None) if t["read_only"] else "store",
                brief(t["description"]),
                when(t["updated_at"]),
            ]
            for t in await templates.summaries()
        ]
        content: list[Tag] = [
            tags.div(class_="scroll")(
                charts.table(
                    ["name", "latest", "versions", "variables", "source", "description", "updated (UTC)"],
                    rows,
                    caption=f"{len(rows)} template{'' if len(rows) == 1 else 's'}",
                )
            ),
            tags.p(class_="muted")(
                "New versions are saved through the API (POST /admin/templates) or as files in the templates folder."
            ),
        ]
        folder = templates.folder
        if folder is not None and folder.errors:
            content += [
                tags.h2("Files not taken from the templates folder"),
                tags.div(class_="scroll")(
                    charts.table(["file", "why"], [[name, why] for name, why in sorted(folder.errors.items())])
                ),
            ]
        return await self._dashboard.html(request, Page("Templates", content, "templates", session))

    # -- one version

    @app.route("/<name>", methods=["GET"])
    async def detail(self, request: IRequest, name: str) -> bytes:
        session = self._dashboard.session(request)
        template = await self._templates.get(check_name(name), _version(arg(request, "version")))
        return await self._dashboard.html(request, await self._page(session, template))

    @app.route("/<name>/render", methods=["POST"])
    async def render(self, request: IRequest, name: str) -> bytes:
        session = self._dashboard.session_posting(request)
        version = _version(arg(request, "version"))
        template = await self._templates.get(check_name(name), version)
        try:
            variables = _variables(request, template)
            # The version on the page, not one saved since.
            rendered = fill_in(template, variables, self._dashboard.api.max_prompt_chars)
        except InvalidRequest as error:
            page = await self._page(session, template, request, notice=str(error))
            return await self._dashboard.html(request, page, 400)
        return await self._dashboard.html(request, await self._page(session, template, request, rendered))

    @app.route("/<name>/delete", methods=["POST"])
    async def delete(self, request: IRequest, name: str) -> bytes:
        session = self._dashboard.session_posting(request)
        version = _version(arg(request, "version"))
        gone = await delete_template(self._templates, name, version)
        self.log.info(
            "template {name} versions {versions} deleted from the dashboard by {who}",
            name=name,
            versions=gone,
            who=session.who,
        )
        if version is None or not await self._templates.versions(name):
            return self._dashboard.redirect(request, "/dashboard/templates")
        return self._dashboard.redirect(request, _href(name))

    async def _page(
        self,
        session: DashboardSession,
        template: PromptTemplate,
        request: IRequest | None = None,
        rendered: Rendered | None = None,
        notice: str | None = None,
    ) -> Page:
        versions = await self._templates.versions(template.name)
        facts = charts.table(
            ["", ""],
            [
                ["version", f"{template.version} of {len(versions)}"],
                ["source", "folder (read-only: edit its file)" if template.read_only else "store"],
                ["variables", ", ".join(template.variables) or "—"],
                ["description", brief(template.description)],
                ["created (UTC)", when(template.created_at)],
                ["created by", template.created_by or "—"],
            ],
        )
        content: list[Tag] = [
            tags.div(class_="scroll")(facts),
            tags.h2("Template"),
            tags.pre(class_="text")(template.template),
            tags.h2("System"),
            tags.pre(class_="text")(template.system) if template.system is not None else tags.p(class_="muted")("none"),
        ]
        if len(versions) > 1:
            content += [
                tags.h2("Versions"),
                tags.ul(class_="versions")(
                    *[
                        tags.li(
                            tags.a(href=_href(template.name, v["version"]))(f"version {v['version']}"),
                            f" · {when(v['created_at'])}",
                        )
                        for v in reversed(versions)
                    ]
                ),
            ]
        content += [tags.h2("Render"), self._render_form(session, template, request)]
        if rendered is not None:
            content += [
                tags.h2("Rendered prompt", id="rendered"),
                tags.pre(class_="text", id="rendered-prompt")(rendered.prompt),
                tags.h2("Rendered system"),
                tags.pre(class_="text", id="rendered-system")(rendered.system)
                if rendered.system is not None
                else tags.p(class_="muted")("none"),
            ]
        if not template.read_only:
            action = _href(template.name) + "/delete"
            number = template.version
            content += [
                tags.h2("Delete"),
                tags.p(
                    post_button(session, action, f"Delete version {number}", danger=True, version=str(number)),
                    " ",
                    post_button(
                        session,
                        action,
                        f"Delete all {len(versions)} versions" if len(versions) > 1 else "Delete the template",
                        danger=True,
                    ),
                ),
            ]
        title = f"Template {template.name} (version {template.version})"
        return Page(title, content, "templates", session, notice, notice is not None)

    def _render_form(self, session: DashboardSession, template: PromptTemplate, request: IRequest | None) -> Tag:
        def given(field: str) -> str:
            return (arg(request, field) or "") if request is not None else ""

        form = tags.form(method="post", action=_href(template.name) + "/render", class_="stack")(
            csrf_field(session), tags.input(type="hidden", name="version", value=str(template.version))
        )
        for variable in template.variables:
            field = VARIABLE_FIELD + variable
            form(tags.label(variable, tags.textarea(name=field, rows="2")(given(field))))
        form(
            tags.label(
                "Or all the variables as one JSON object (used when not empty)",
                tags.textarea(name=JSON_FIELD, rows="3", placeholder='{"name": "value"}')(given(JSON_FIELD)),
            ),
            tags.button(type="submit")("Render (runs nothing)"),
        )
        return form


def _href(name: str, version: int | None = None) -> str:
    href = "/dashboard/templates/" + quote(name, safe="")
    return href if version is None else f"{href}?version={version}"


def _version(value: str | None) -> int | None:
    """
    A version the page or form names, checked as the admin API checks it.
    """
    return version_number(value.strip()) if value and value.strip() else None


def _variables(request: IRequest, template: PromptTemplate) -> object:
    """
    The render form's variables: the JSON object when one was written, else
    one field per declared variable (what it holds is checked by the
    template, as the admin API's are).
    """
    written = (arg(request, JSON_FIELD) or "").strip()
    if written:
        try:
            return json.loads(written)
        except ValueError as error:
            raise InvalidField(f"variables: not valid JSON ({error})", "variables") from None
    return {variable: arg(request, VARIABLE_FIELD + variable) or "" for variable in template.variables}
