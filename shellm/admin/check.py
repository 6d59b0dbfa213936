"""
C{shellm check}: whether each provider is installed and logged in, and how
to fix it, from the providers' own health checks.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from shellm.admin.common import ERROR, OK, CommandError, Paths, run_on_reactor, say, table, yes_no
from shellm.config import Config, ConfigError, load_config

if TYPE_CHECKING:
    from shellm.completion import ProviderHealth
    from shellm.providers.base import Provider
    from shellm.providers.cli import CliProvider


def build_providers(reactor: Any, config: Config) -> dict[str, Provider]:
    """
    The providers as the daemon builds them (the same registry), for their
    health checks.  Imported here: the other sub-commands never load them.
    """
    from shellm.providers import registry
    from shellm.providers.http_client import upstream_client
    from shellm.providers.process import CliRunner
    from shellm.providers.spawner import SessionSpawner, find_launcher

    runner = CliRunner(reactor, SessionSpawner(reactor, find_launcher()), config.timeout, config.kill_grace)
    http, _ = upstream_client(reactor, persistent=False)
    return registry.build_providers(registry.Wiring(reactor, runner, http, config))


def run_health_checks(config: Config) -> tuple[dict[str, Provider], dict[str, ProviderHealth]]:
    """
    Every provider's own C{check_health} (no tokens spent), on a reactor
    run just for this.  Returns the providers and their L{ProviderHealth}.
    """
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, gatherResults
    from twisted.python.failure import Failure

    providers = build_providers(reactor, config)
    names = list(providers)

    def check_all() -> Deferred[dict[str, ProviderHealth]]:
        d = gatherResults([providers[n].check_health() for n in names], consumeErrors=True)
        return d.addCallback(lambda results: dict(zip(names, results)))

    healths = run_on_reactor(check_all)
    if isinstance(healths, Failure):
        raise CommandError(f"the checks failed: {healths.getErrorMessage()}")
    return providers, healths


def judge_cli(name: str, provider: CliProvider, health: ProviderHealth, config: Config) -> dict:
    from shellm.providers.registry import NPM_PACKAGES

    env = provider.environment(None)
    executable = provider.resolve_executable()
    logged_in = provider.has_credentials(env)
    setting_name = f"SHELLM_{name.upper()}_BIN"
    if executable is None or not health.installed:
        state = "not installed"
        fix = (
            f"install it as the service user (`npm install -g --prefix ~/.npm-global "
            f"{NPM_PACKAGES[name]}`) with that bin directory on PATH, "
            f"or set {setting_name} to its full path"
        )
    elif not health.usable and health.error and not health.error.startswith("not logged in"):
        state = "broken"
        fix = (
            f"`{executable} --version` failed ({health.error}); run it by hand as the "
            "service user to see why, or reinstall it"
        )
    elif not logged_in:
        state = "not logged in"
        fix = provider.login_hint
    else:
        state = "ready"
        fix = None
    return {
        "kind": "cli",
        "state": state,
        "usable": state == "ready",
        "configured": getattr(config, f"{name}_bin"),
        "executable": executable,
        "installed": state != "not installed",
        "version": health.version,
        "logged_in": logged_in,
        "error": health.error,
        "fix": fix,
    }


def judge_http(name: str, health: ProviderHealth, config: Config, env_file: str | None) -> dict:
    key_set = bool(config.cerebras_api_key)
    where = env_file or "the service's environment file (/etc/shellm/shellm.env)"
    if not key_set:
        state, fix = "no key", f"set CEREBRAS_API_KEY in {where}"
    elif health.usable:
        state, fix = "ready", None
    elif "refused" in (health.error or ""):
        state, fix = "key refused", f"CEREBRAS_API_KEY was refused: put a valid key in {where}"
    else:
        state, fix = (
            "unreachable",
            (
                f"{config.cerebras_base_url} could not be reached from "
                "this machine: check its network and SHELLM_CEREBRAS_BASE_URL"
            ),
        )
    return {
        "kind": "http",
        "state": state,
        "usable": state == "ready",
        "base_url": config.cerebras_base_url,
        "key_set": key_set,
        "error": health.error,
        "fix": fix,
    }


def cmd_check(args: argparse.Namespace, environ: Mapping[str, str], paths: Paths) -> int:
    try:
        config = load_config({}, environ, args.env_file_path)
    except ConfigError as e:
        raise CommandError(f"the configuration is not valid: {e}")
    providers, healths = run_health_checks(config)
    results = {}
    for name, provider in providers.items():
        if getattr(provider, "kind", None) == "cli":
            results[name] = judge_cli(name, cast("CliProvider", provider), healths[name], config)
        else:
            results[name] = judge_http(name, healths[name], config, args.env_file_path)
    usable = [name for name, r in results.items() if r["usable"]]
    code = OK if usable else ERROR
    user = getpass.getuser()
    home = config.base_env.get("HOME", "")
    if args.json:
        say(
            json.dumps(
                {
                    "ok": bool(usable),
                    "usable": usable,
                    "user": user,
                    "home": home,
                    "env_file": args.env_file_path,
                    "providers": results,
                },
                indent=2,
            )
        )
        return code
    source = args.env_file_path or "the environment only (no settings file found)"
    say(f"Checked as user {user} (HOME={home}); settings from {source}")
    say()
    rows = [("provider", "state", "logged in", "version", "executable or API")]
    for name, r in results.items():
        if r["kind"] == "cli":
            where = r["executable"] or f"{r['configured']} (not found on PATH)"
            rows.append((name, r["state"], yes_no(r["logged_in"]), r["version"] or "-", where))
        else:
            key = "key set" if r["key_set"] else "CEREBRAS_API_KEY not set"
            rows.append((name, r["state"], yes_no(r["key_set"]), "-", f"{r['base_url']} ({key})"))
    say(table(rows))
    fixes = [(name, r["fix"]) for name, r in results.items() if r["fix"]]
    if fixes:
        say()
        for name, fix in fixes:
            say(f"{name}: {fix}")
    say()
    if usable:
        say(f"{len(usable)} of {len(results)} providers can serve requests: {', '.join(usable)}")
    else:
        say("No provider can serve requests.")
    return code
