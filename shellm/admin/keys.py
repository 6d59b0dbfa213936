"""
C{shellm keys}: the stored client keys from the server's shell, on the
same store (and secret) as the daemon, for operators who never use the
admin API: C{create}, C{list}, C{show}, C{rotate}, C{revoke}.  A running
daemon applies the change within its refresh interval.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from shellm.admin.common import OK, CommandError, Paths, say, table
from shellm.admin.db import _with_store
from shellm.config import Config, ConfigError, load_config
from shellm.errors import ShellmError
from shellm.http.admin_api import MAX_GRACE, check_key_fields
from shellm.models import ModelTable
from shellm.state.keys import KeyStore, NameTaken, load_secret
from shellm.state.store import Store

#: Who the audit log says acted.
ACTOR = "shell"


def cmd_keys(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths) -> int:
    try:
        config = load_config({}, environ, args.env_file_path)
    except ConfigError as e:
        raise CommandError(f"the configuration is not valid: {e}")
    secret = load_secret(config.key_secret, "~/.shellm/key_secret")
    action = {"create": _create, "list": _list, "show": _show, "rotate": _rotate, "revoke": _revoke}[args.action]

    async def work(store: Store) -> Any:
        from twisted.internet import reactor

        await store.migrate()
        return await action(args, config, KeyStore(store, secret, reactor))

    try:
        result = _with_store(config, work, create=True)
    except ShellmError as e:
        raise CommandError(e.message)
    if args.json:
        say(json.dumps(result, indent=2))
    elif isinstance(result, list):
        rows = [("id", "name", "prefix", "status", "models", "rpm", "daily", "monthly", "created")]
        for key in result:
            rows.append(
                (
                    key["id"],
                    key["name"],
                    key["prefix"],
                    key["status"],
                    "all" if key["models"] is None else ",".join(key["models"]) or "none",
                    str(key["rpm"]),
                    str(key["daily_tokens"] or "-"),
                    str(key["monthly_tokens"] or "-"),
                    _when(key["created_at"]),
                )
            )
        say(table(rows))
    else:
        for name, value in result.items():
            say(f"{name + ':':22} {value if value is not None else '-'}")
        if "key" in result:
            say()
            say("The key is shown this once; store it now.")
    return OK


def _when(seconds: float | None) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M") if seconds else "-"


async def _create(args: argparse.Namespace, config: Config, keys: KeyStore) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.name}
    if args.models is not None:
        body["models"] = [m for m in args.models.split(",") if m]
    for name in ("rpm", "daily_tokens", "monthly_tokens", "expires_at", "note"):
        value = getattr(args, name)
        if value is not None:
            body[name] = value
    fields = check_key_fields(body, True, ModelTable(config.models), time.time())
    try:
        record, key = await keys.create(ACTOR, fields, admin=args.admin)
    except NameTaken:
        raise CommandError(f"a live key is already called {args.name!r}")
    return {**record.to_json(time.time()), "key": key}


async def _list(args: argparse.Namespace, config: Config, keys: KeyStore) -> list[dict[str, Any]]:
    used = await keys.last_used()
    return [record.to_json(time.time(), used.get(record.id)) for record in await keys.all()]


async def _show(args: argparse.Namespace, config: Config, keys: KeyStore) -> dict[str, Any]:
    record = await keys.get(args.id)
    if record is None:
        raise CommandError(f"no key {args.id}")
    used = await keys.last_used()
    return record.to_json(time.time(), used.get(record.id))


async def _rotate(args: argparse.Namespace, config: Config, keys: KeyStore) -> dict[str, Any]:
    if not 0 <= args.grace <= MAX_GRACE:
        raise CommandError(f"--grace must be from 0 to {MAX_GRACE} seconds")
    rotated = await keys.rotate(ACTOR, args.id, float(args.grace))
    if rotated is None:
        raise CommandError(f"no live key {args.id}")
    record, key = rotated
    return {**record.to_json(time.time()), "key": key}


async def _revoke(args: argparse.Namespace, config: Config, keys: KeyStore) -> dict[str, Any]:
    if not await keys.revoke(ACTOR, args.id):
        raise CommandError(f"no live key {args.id}")
    record = await keys.get(args.id)
    assert record is not None
    return record.to_json(time.time())


def add_parser(keys: argparse.ArgumentParser) -> None:
    """
    The actions of C{shellm keys}.
    """
    actions = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = actions.add_parser("create", help="make a key (printed once)")
    create.add_argument("name")
    create.add_argument("--models", metavar="A,B", help="allowed models or providers (default: all; '' for none)")
    create.add_argument("--rpm", type=int)
    create.add_argument("--daily-tokens", dest="daily_tokens", type=int)
    create.add_argument("--monthly-tokens", dest="monthly_tokens", type=int)
    create.add_argument("--expires-at", dest="expires_at", metavar="ISO8601", help="e.g. 2027-06-30T00:00:00Z")
    create.add_argument("--note")
    create.add_argument("--admin", action="store_true", help="an admin key: it may use /admin/")
    actions.add_parser("list", help="every stored key, without secrets")
    show = actions.add_parser("show", help="one key")
    show.add_argument("id")
    rotate = actions.add_parser("rotate", help="a new key for ID (printed once)")
    rotate.add_argument("id")
    rotate.add_argument("--grace", type=float, default=0, metavar="SECONDS", help="the old key works this long")
    revoke = actions.add_parser("revoke", help="revoke ID (the row stays for the request log)")
    revoke.add_argument("id")
    for action in (create, actions.choices["list"], show, rotate, revoke):
        action.add_argument("--json", action="store_true", help="print JSON")
