"""
C{/admin/templates}: prompt templates, for admin keys only.  Mounted by
L{shellm.http.admin_api.AdminAPI}, whose auth and JSON errors it shares.

Saving a name again makes its next version; versions never change.  A
template from the templates folder is listed and rendered like the others
but is read-only here: saving or deleting its name is a 409
C{template_read_only} (its file is what to edit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed
from werkzeug.exceptions import NotFound as WerkzeugNotFound

from shellm.errors import InternalError, InvalidField, InvalidRequest, MethodNotAllowed, NotFound, ShellmError
from shellm.state.templates import PromptTemplate, Rendered, TemplateStore, check_name, draft

if TYPE_CHECKING:
    from shellm.http.admin_api import AdminAPI

_CREATE_FIELDS = ("name", "template", "system", "variables", "description")
_RENDER_FIELDS = ("variables", "version")


def version_number(value: object, field: str = "version") -> int:
    """
    A version as a request gives it: a positive integer, or its digits (the
    OpenAI SDKs send C{version} as a string).
    """
    if isinstance(value, str) and value.isdigit() and len(value) <= 9:
        value = int(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)  # 3.0 is an integer to JSON
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 10**9:
        raise InvalidField(f"{field}: must be a version number (a positive integer)", field)
    return value


def check_rendered(rendered_prompt: str, rendered_system: str | None, max_chars: int) -> None:
    """
    The limits a request's own prompt and system have, on what a template made.
    """
    for field, text in (("prompt", rendered_prompt), ("system", rendered_system or "")):
        if len(text) > max_chars:
            raise InvalidField(
                f"the rendered {field} exceeds the maximum length of {max_chars} characters (got {len(text)})", field
            )


async def render_template(
    templates: TemplateStore, name: object, version: int | None, variables: object, max_prompt_chars: int
) -> Rendered:
    """
    A named template (its latest version, or C{version}) filled in with
    C{variables}, checked against the prompt limits; nothing runs: what
    C{POST /admin/templates/{name}/render} answers.

    @raise InvalidField: a bad name, or variables that do not fit.
    @raise TemplateNotFound: no such template (or version).
    """
    return fill_in(await templates.get(check_name(name), version), variables, max_prompt_chars)


def fill_in(template: PromptTemplate, variables: object, max_prompt_chars: int) -> Rendered:
    """
    C{template} filled in with C{variables}, checked against the prompt
    limits: L{render_template} for a template already read (the
    dashboard's render form renders the version its page shows).
    """
    rendered = template.render(variables)
    check_rendered(rendered.prompt, rendered.system, max_prompt_chars)
    return rendered


def delete_template(templates: TemplateStore, name: object, version: int | None) -> Deferred[list[int]]:
    """
    Delete one version of a named template, or all: what C{DELETE
    /admin/templates/{name}} and the dashboard's delete buttons do.

    @raise TemplateReadOnly: the name is a folder template's.
    """
    return templates.delete(check_name(name), version)


class TemplatesAdmin:
    app = Klein()
    log = Logger()

    def __init__(self, admin: AdminAPI, templates: TemplateStore, max_prompt_chars: int):
        self._admin = admin
        self._templates = templates
        self._max_prompt_chars = max_prompt_chars

    def resource(self) -> Any:
        return self.app.resource()

    # -- errors: the admin API's JSON

    @app.handle_errors(ShellmError)
    def shellm_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, ShellmError)
        return self._admin.fail(request, error)

    @app.handle_errors(WerkzeugNotFound)
    def not_found(self, request: IRequest, failure: Failure) -> bytes:
        try:
            self._admin.authorize(request)  # an unknown caller learns nothing of the routes
        except ShellmError as error:
            return self._admin.fail(request, error)
        return self._admin.fail(request, NotFound(f"no such endpoint: {request.path.decode('ascii', 'replace')[:200]}"))

    @app.handle_errors(WerkzeugMethodNotAllowed)
    def method_not_allowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = getattr(failure.value, "valid_methods", None) or []
        request.setHeader(b"allow", ", ".join(allowed).encode())
        return self._admin.fail(request, MethodNotAllowed(f"use {' or '.join(allowed)}"))

    @app.handle_errors(Exception)
    def unexpected(self, request: IRequest, failure: Failure) -> bytes:
        self.log.failure("unhandled error", failure)
        return self._admin.fail(request, InternalError("internal error"))

    # -- helpers

    @staticmethod
    def _version_arg(request: IRequest) -> int | None:
        values = request.args.get(b"version")
        if not values:
            return None
        return version_number(values[0].decode("utf-8", "replace"))

    async def _shown(self, template: PromptTemplate) -> dict[str, Any]:
        return {**template.to_json(), "versions": await self._templates.versions(template.name)}

    # -- routes

    @app.route("/", methods=["POST"], strict_slashes=False)
    async def create(self, request: IRequest) -> bytes:
        admin = self._admin.authorize(request)
        body = self._admin.read_body(request)
        unknown = sorted(set(body) - set(_CREATE_FIELDS))
        if unknown:
            raise InvalidRequest(f"{unknown[0][:100]}: unknown field")
        name = check_name(body.get("name"))
        fields = draft(body.get("template"), body.get("system"), body.get("variables"), body.get("description"))
        made = await self._templates.create(admin.id or admin.name, name, fields)
        self.log.info(
            "template {name} version {version} saved by {actor}", name=name, version=made.version, actor=admin.name
        )
        return self._admin.respond(request, 201, made.to_json())

    @app.route("/", methods=["GET"], strict_slashes=False)
    async def listing(self, request: IRequest) -> bytes:
        self._admin.authorize(request)
        body: dict[str, Any] = {"templates": await self._templates.summaries()}
        folder = self._templates.folder
        if folder is not None:
            body["folder"] = {"path": folder.path, "errors": dict(sorted(folder.errors.items()))}
        return self._admin.respond(request, 200, body)

    @app.route("/<name>", methods=["GET"])
    async def show(self, request: IRequest, name: str) -> bytes:
        self._admin.authorize(request)
        template = await self._templates.get(check_name(name), self._version_arg(request))
        return self._admin.respond(request, 200, await self._shown(template))

    @app.route("/<name>", methods=["DELETE"])
    async def delete(self, request: IRequest, name: str) -> bytes:
        admin = self._admin.authorize(request)
        version = self._version_arg(request)
        gone = await delete_template(self._templates, name, version)
        self.log.info(
            "template {name} versions {versions} deleted by {actor}", name=name, versions=gone, actor=admin.name
        )
        return self._admin.respond(request, 200, {"name": name, "deleted_versions": gone})

    @app.route("/<name>/render", methods=["POST"])
    async def render(self, request: IRequest, name: str) -> bytes:
        self._admin.authorize(request)
        body = self._admin.read_body(request)
        unknown = sorted(set(body) - set(_RENDER_FIELDS))
        if unknown:
            raise InvalidRequest(f"{unknown[0][:100]}: unknown field")
        version = version_number(body["version"]) if body.get("version") is not None else None
        rendered = await render_template(self._templates, name, version, body.get("variables"), self._max_prompt_chars)
        return self._admin.respond(request, 200, rendered.to_json())
