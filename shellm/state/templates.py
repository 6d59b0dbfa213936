"""
Prompt templates: named, versioned texts with C{{{ name }}} placeholders
(L{shellm.rendering}), from two sources.

  - The store: each save of a name is its next version, never changed
    afterwards.  A version number is never given twice for one name, even
    after deletes, so C{name@3} in the request log always means one text.
  - A folder (C{SHELLM_TEMPLATES_DIR}) of C{name.md} files, for operators who
    keep prompts in git: read at start and on SIGHUP, read-only here, one
    version each (C{1}).  A file's name hides stored versions of that name.

A file may open with YAML front matter between two C{---} lines, with the
keys C{system}, C{variables} and C{description}; the rest (without the
blank lines around it) is the template.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from shellm import rendering
from shellm.errors import InvalidField, NotFound, ShellmError
from shellm.state.store import Cursor, Store

NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
#: Bytes of template and system text in one version, at most (UTF-8).
MAX_BYTES = 64 * 1024
MAX_VARIABLES = 100
MAX_VERSIONS = 1000
MAX_DESCRIPTION = 1000
#: Files read from a templates folder, at most.
MAX_FILES = 1000
STORE = "store"
FOLDER = "folder"


class TemplateNotFound(NotFound):
    code = "template_not_found"


class TemplateVersionNotFound(NotFound):
    code = "template_version_not_found"


class TemplateReadOnly(ShellmError):
    status = 409
    code = "template_read_only"


class TemplateFull(ShellmError):
    status = 409
    code = "template_full"


@frozen
class Rendered:
    """
    A template filled in: the prompt and system text a request gets.
    """

    name: str
    version: int
    prompt: str
    system: str | None

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "prompt": self.prompt, "system": self.system}


@frozen
class Draft:
    """
    A template's text, checked, before it is a version.
    """

    template: str
    system: str | None
    variables: tuple[str, ...]
    description: str | None


@frozen
class PromptTemplate:
    name: str
    version: int
    template: str
    system: str | None
    variables: tuple[str, ...]
    description: str | None
    created_at: float
    created_by: str | None
    source: str = STORE

    @property
    def read_only(self) -> bool:
        return self.source == FOLDER

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "template": self.template,
            "system": self.system,
            "variables": list(self.variables),
            "description": self.description,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "source": self.source,
            "read_only": self.read_only,
        }

    def render(self, given: object, where: str = "variables") -> Rendered:
        """
        @raise InvalidField: a variable is missing, unknown or not text.
        """
        values = rendering.check_values(self.variables, given, where)
        system = rendering.fill(self.system, values) if self.system is not None else None
        return Rendered(self.name, self.version, rendering.fill(self.template, values), system)


def check_name(name: object, field: str = "name") -> str:
    if not isinstance(name, str) or NAME.fullmatch(name) is None:
        raise InvalidField(
            f"{field}: a template name is 1 to 64 of a-z 0-9 _ . - and starts with a letter or digit", field
        )
    return name


def draft(template: object, system: object, variables: object, description: object) -> Draft:
    """
    Check a template's fields: the placeholders' syntax, the size, and the
    declared variables (when given, exactly those the texts use).

    @raise InvalidField: naming the field that is wrong.
    """
    if not isinstance(template, str) or not template.strip():
        raise InvalidField("template: must be non-empty text", "template")
    if system is not None and not isinstance(system, str):
        raise InvalidField("system: must be text, or null", "system")
    if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION):
        raise InvalidField(f"description: must be text of at most {MAX_DESCRIPTION} characters, or null", "description")
    size = len(template.encode("utf-8")) + len((system or "").encode("utf-8"))
    if size > MAX_BYTES:
        raise InvalidField(f"template: template and system hold {size} bytes; at most {MAX_BYTES}", "template")
    used = rendering.check(template, "template")
    if system is not None:
        used += tuple(name for name in rendering.check(system, "system") if name not in used)
    if len(used) > MAX_VARIABLES:
        raise InvalidField(f"template: uses {len(used)} variables; at most {MAX_VARIABLES}", "template")
    if variables is not None:
        if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables):
            raise InvalidField("variables: must be a list of variable names", "variables")
        for name in variables:
            if name not in used:
                raise InvalidField(
                    f"variables: {name[:100]!r} is declared but the template does not use it", "variables"
                )
        for name in used:
            if name not in variables:
                raise InvalidField(f"variables: the template uses {name!r}, which is not declared", "variables")
    return Draft(template, system, used, description)


_COLUMNS = "name, version, template, system, variables, description, created_at, created_by"


def _template(row: Sequence[Any]) -> PromptTemplate:
    return PromptTemplate(
        name=row[0],
        version=int(row[1]),
        template=row[2],
        system=row[3],
        variables=tuple(json.loads(row[4])),
        description=row[5],
        created_at=float(row[6]),
        created_by=row[7],
    )


class TemplateStore:
    """
    The templates of both sources: a folder's (read-only, first) and the
    store's.
    """

    def __init__(self, store: Store, clock: IReactorTime, folder: TemplateFolder | None = None):
        self.store = store
        self._clock = clock
        self.folder = folder

    def _writable(self, name: str) -> None:
        if self.folder is not None and name in self.folder.templates:
            raise TemplateReadOnly(
                f"template {name!r} comes from {self.folder.path} and is read-only here; edit its file and reload"
            )

    def create(self, actor: str | None, name: str, fields: Draft) -> Deferred[PromptTemplate]:
        """
        The next version of C{name} (1 for a new name).

        @raise TemplateReadOnly: C{name} is a folder's.
        @raise TemplateFull: C{name} has its most versions.
        """
        self._writable(name)
        now = self._clock.seconds()

        def insert(cursor: Cursor) -> PromptTemplate:
            # One statement takes the number, on both engines, even when two
            # nodes save the same name at once.
            version = cursor.execute(
                "INSERT INTO template_names (name, last_version, created_at) VALUES (?, 1, ?)"
                " ON CONFLICT (name) DO UPDATE SET last_version = template_names.last_version + 1"
                " RETURNING last_version",
                (name, now),
            ).fetchone()[0]
            held = cursor.execute("SELECT COUNT(*) FROM template_versions WHERE name = ?", (name,)).fetchone()[0]
            if held >= MAX_VERSIONS:
                raise TemplateFull(f"template {name!r} holds {MAX_VERSIONS} versions; delete old ones first")
            made = PromptTemplate(
                name, int(version), fields.template, fields.system, fields.variables, fields.description, now, actor
            )
            cursor.execute(
                f"INSERT INTO template_versions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    made.version,
                    made.template,
                    made.system,
                    json.dumps(list(made.variables)),
                    made.description,
                    now,
                    actor,
                ),
            )
            return made

        return self.store.interact(insert)

    async def get(self, name: str, version: int | None = None) -> PromptTemplate:
        """
        A version of C{name}, the latest by default.

        @raise TemplateNotFound: no template has that name.
        @raise TemplateVersionNotFound: it has no such version.
        """
        if self.folder is not None and name in self.folder.templates:
            found = self.folder.templates[name]
            if version is not None and version != found.version:
                raise TemplateVersionNotFound(f"template {name!r} (from a file) has only version {found.version}")
            return found

        def read(cursor: Cursor) -> list[Any]:
            if version is None:
                return cursor.execute(
                    f"SELECT {_COLUMNS} FROM template_versions WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
                ).fetchall()
            rows = cursor.execute(
                f"SELECT {_COLUMNS} FROM template_versions WHERE name = ? AND version = ?", (name, version)
            ).fetchall()
            if not rows and cursor.execute("SELECT 1 FROM template_versions WHERE name = ?", (name,)).fetchall():
                raise TemplateVersionNotFound(f"template {name!r} has no version {version}")
            return rows

        rows = await self.store.interact(read)
        if not rows:
            raise TemplateNotFound(f"no template {name[:100]!r}")
        return _template(rows[0])

    async def versions(self, name: str) -> list[dict[str, Any]]:
        """
        Every version of C{name}, oldest first: number, time and author.
        """
        if self.folder is not None and name in self.folder.templates:
            found = self.folder.templates[name]
            return [{"version": found.version, "created_at": found.created_at, "created_by": None}]
        rows = await self.store.query(
            "SELECT version, created_at, created_by FROM template_versions WHERE name = ? ORDER BY version", (name,)
        )
        return [{"version": int(v), "created_at": float(at), "created_by": by} for v, at, by in rows]

    async def summaries(self) -> list[dict[str, Any]]:
        """
        One line per template, the folder's first, each as its latest
        version stands.
        """
        listing = []
        shown = set()
        if self.folder is not None:
            for name in sorted(self.folder.templates):
                listing.append(_summary(self.folder.templates[name], 1, self.folder.digests.get(name)))
                shown.add(name)
        rows = await self.store.query(
            f"SELECT {', '.join('v.' + c.strip() for c in _COLUMNS.split(','))}, n.count"
            " FROM template_versions v JOIN"
            " (SELECT name, MAX(version) AS latest, COUNT(*) AS count FROM template_versions GROUP BY name) n"
            " ON v.name = n.name AND v.version = n.latest ORDER BY v.name"
        )
        for row in rows:
            if row[0] not in shown:
                listing.append(_summary(_template(row[:8]), int(row[8])))
        return listing

    def delete(self, name: str, version: int | None = None) -> Deferred[list[int]]:
        """
        Delete one version of C{name}, or all; fires with the versions gone.

        @raise TemplateReadOnly: C{name} is a folder's.
        @raise TemplateNotFound: (as a failure) no such template.
        @raise TemplateVersionNotFound: (as a failure) no such version.
        """
        self._writable(name)

        def delete(cursor: Cursor) -> list[int]:
            held = [
                int(row[0])
                for row in cursor.execute("SELECT version FROM template_versions WHERE name = ?", (name,)).fetchall()
            ]
            if not held:
                raise TemplateNotFound(f"no template {name[:100]!r}")
            if version is None:
                cursor.execute("DELETE FROM template_versions WHERE name = ?", (name,))
                return sorted(held)
            if version not in held:
                raise TemplateVersionNotFound(f"template {name!r} has no version {version}")
            cursor.execute("DELETE FROM template_versions WHERE name = ? AND version = ?", (name, version))
            return [version]

        return self.store.interact(delete)


def _summary(latest: PromptTemplate, versions: int, digest: str | None = None) -> dict[str, Any]:
    summary = {
        "name": latest.name,
        "latest_version": latest.version,
        "versions": versions,
        "variables": list(latest.variables),
        "description": latest.description,
        "updated_at": latest.created_at,
        "source": latest.source,
        "read_only": latest.read_only,
    }
    if digest is not None:
        summary["sha256"] = digest
    return summary


# -- the folder


def parse_file(name: str, text: str, modified: float) -> PromptTemplate:
    """
    A folder's file as a template.

    @raise ValueError: with what is wrong, for the log.
    """
    meta: Mapping[str, Any] = {}
    body = text
    lines = text.split("\n")
    if lines and lines[0].rstrip() == "---":
        try:
            end = next(i for i, line in enumerate(lines[1:], 1) if line.rstrip() == "---")
        except StopIteration:
            raise ValueError("the front matter opened by --- on line 1 is never closed by a --- line") from None
        # Imported here: only a templates folder has front matter to read.
        import yaml

        try:
            loaded = yaml.safe_load("\n".join(lines[1:end]))
        except yaml.YAMLError as e:
            raise ValueError(f"the front matter is not valid YAML ({str(e).splitlines()[0]})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError("the front matter must be YAML keys: system, variables, description")
        unknown = sorted(str(key) for key in loaded if key not in ("system", "variables", "description"))
        if unknown:
            raise ValueError(f"front matter: unknown key {unknown[0]!r} (known: system, variables, description)")
        meta = loaded
        body = "\n".join(lines[end + 1 :])
    try:
        checked = draft(body.strip("\n"), meta.get("system"), meta.get("variables"), meta.get("description"))
    except InvalidField as e:
        raise ValueError(e.message) from None
    system = checked.system.strip("\n") if checked.system is not None else None
    return PromptTemplate(
        name, 1, checked.template, system, checked.variables, checked.description, modified, None, FOLDER
    )


class TemplateFolder:
    """
    The C{name.md} files of one folder, read again on L{load}.

    @ivar templates: the templates read, by name.
    @ivar errors: why a file was not taken (or, on a reload, why its last
        good reading stays), by file name.
    @ivar digests: the SHA-256 of each file taken, to tell its readings apart.
    """

    log = Logger()

    def __init__(self, path: str):
        self.path = path
        self.templates: dict[str, PromptTemplate] = {}
        self.errors: dict[str, str] = {}
        self.digests: dict[str, str] = {}

    def load(self) -> bool:
        """
        Read the folder (a few small files: on the reactor thread, as the
        settings file is).  A file that cannot be taken is one error line;
        on a reload its last good reading stays.  A folder that cannot be
        read at all changes nothing.

        @return: whether the folder was read.
        """
        try:
            entries = sorted(os.scandir(self.path), key=lambda entry: entry.name)
        except OSError as e:
            self.log.error(
                "templates folder {path} not read, the {count} templates from it stay: {why}",
                path=self.path,
                count=len(self.templates),
                why=e.strerror,
            )
            return False
        templates: dict[str, PromptTemplate] = {}
        digests: dict[str, str] = {}
        errors: dict[str, str] = {}
        files = [entry for entry in entries if entry.name.endswith(".md") and entry.is_file()]
        for entry in files[:MAX_FILES]:
            name = entry.name[: -len(".md")]
            try:
                if NAME.fullmatch(name) is None:
                    raise ValueError("the file name is not a template name (a-z 0-9 _ . -, up to 64) followed by .md")
                with open(entry.path, "rb") as f:
                    raw = f.read(MAX_BYTES + 4096 + 1)
                if len(raw) > MAX_BYTES + 4096:
                    raise ValueError(f"larger than {MAX_BYTES} bytes of template and front matter")
                text = raw.decode("utf-8")
                templates[name] = parse_file(name, text.replace("\r\n", "\n"), entry.stat().st_mtime)
                digests[name] = hashlib.sha256(raw).hexdigest()
            except (OSError, ValueError) as e:
                why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                if isinstance(e, UnicodeDecodeError):
                    why = "not UTF-8 text"
                errors[entry.name] = why
                kept = self.templates.get(name)
                if kept is not None:
                    templates[name] = kept
                    digests[name] = self.digests[name]
                self.log.error(
                    "template file {file} not taken{kept}: {why}",
                    file=os.path.join(self.path, entry.name),
                    kept=", its last good reading stays" if kept is not None else "",
                    why=why,
                )
        for entry in files[MAX_FILES:]:
            errors[entry.name] = f"more than {MAX_FILES} template files; this one was not read"
        self.templates, self.digests, self.errors = templates, digests, errors
        self.log.info(
            "templates folder {path} read: {count} templates, {bad} files refused",
            path=self.path,
            count=len(templates),
            bad=len(errors),
        )
        return True
