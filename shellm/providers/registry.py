"""
The provider registry: every provider SheLLM knows, how it is built from the
settings, and what it needs installed.  C{makeService}, C{shellm check} and
the tests build providers through L{build_providers} and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import frozen

from shellm.models import PROVIDERS
from shellm.providers.base import Provider
from shellm.providers.cerebras import CerebrasProvider
from shellm.providers.claude import ClaudeProvider
from shellm.providers.codex import CodexProvider
from shellm.providers.codex_quota import CodexQuotaProbe
from shellm.providers.gemini import GeminiProvider
from shellm.providers.process import CliRunner


@frozen
class Wiring:
    """
    What providers are built from: the reactor, the CLI runner, the treq
    client for HTTP providers, the settings (a L{shellm.config.Config}), and
    the subscription windows that out-of-band probes report to (a
    L{shellm.routing.quota.QuotaTracker}; none: no probes).
    """

    reactor: Any
    runner: CliRunner
    http: Any
    config: Any
    quota: Any = None


@frozen
class ProviderSpec:
    """
    One provider: its name (as in L{shellm.models.PROVIDERS}), the npm package
    that installs it (CLIs only) and its factory.
    """

    name: str
    npm_package: str | None
    build: Callable[[Wiring], Provider]


def _cli(cls: type, name: str) -> Callable[[Wiring], Provider]:
    def build(w: Wiring) -> Provider:
        config = w.config
        return cls(w.reactor, w.runner, getattr(config, f"{name}_bin"), config.base_env, getattr(config, f"{name}_env"))

    return build


def _codex(w: Wiring) -> Provider:
    codex = CodexProvider(w.reactor, w.runner, w.config.codex_bin, w.config.base_env, w.config.codex_env)
    if w.quota is not None and w.config.codex_quota_interval > 0:
        codex.quota_probe = CodexQuotaProbe(
            w.reactor, codex, lambda windows: w.quota.observe("codex", windows), w.config.codex_quota_interval
        )
    return codex


def _cerebras(w: Wiring) -> Provider:
    config = w.config
    return CerebrasProvider(w.reactor, w.http, config.cerebras_api_key, config.cerebras_base_url, config.timeout)


REGISTRY: tuple[ProviderSpec, ...] = (
    ProviderSpec("claude", "@anthropic-ai/claude-code", _cli(ClaudeProvider, "claude")),
    ProviderSpec("gemini", "@google/gemini-cli", _cli(GeminiProvider, "gemini")),
    ProviderSpec("codex", "@openai/codex", _codex),
    ProviderSpec("cerebras", None, _cerebras),
)

# The names are written once, in the model table's module (the lowest floor
# that needs them); the registry must cover exactly those.
if tuple(spec.name for spec in REGISTRY) != PROVIDERS:
    raise ImportError("shellm.models.PROVIDERS and the provider registry disagree")

#: The npm package of each CLI, for the fix when it is not installed.
NPM_PACKAGES = {spec.name: spec.npm_package for spec in REGISTRY if spec.npm_package}


def build_providers(wiring: Wiring) -> dict[str, Provider]:
    """
    Every provider, by name, in the registry's order.
    """
    return {spec.name: spec.build(wiring) for spec in REGISTRY}
