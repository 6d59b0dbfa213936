"""
What SIGHUP changes: the client keys, read again from the settings file
(or the environment), under one rule start-up does not need: a reload may
change who holds a key, but never turns authentication off.  (SIGHUP also
reads the templates folder again: L{shellm.state.templates.TemplateFolder}.)

Serving without keys is decided at start-up only, where C{SHELLM_ALLOW_OPEN}
and the listener are checked (L{shellm.config.load_config}); a settings file
that lost its C{SHELLM_CLIENTS} (emptied, commented out, deleted) is far
more often a mistake than a decision, so the old clients stay.  Every
refused reload is one error line saying why, and shows in C{/metrics}.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from twisted.logger import Logger

from shellm.config import ConfigError, load_clients
from shellm.routing.auth import Authenticator
from shellm.state.metrics import Metrics


class ClientReload:
    """
    One reload of the client keys into an L{Authenticator}.
    """

    log = Logger()

    def __init__(self, authenticator: Authenticator, env_file: str | None, metrics: Metrics | None = None):
        """
        @param env_file: the settings file read at start-up, if any; it wins
            over the environment, as in L{load_clients}.
        @param metrics: where the outcome is counted, if anywhere.
        """
        self._authenticator = authenticator
        self._env_file = env_file
        self._metrics = metrics

    def _why_empty(self) -> str:
        if self._env_file and not os.path.exists(self._env_file):
            where = f"the settings file {self._env_file} is gone and the environment sets no SHELLM_CLIENTS"
        else:
            where = "SHELLM_CLIENTS is now empty or not set"
        return (
            f"{where}; a reload never turns auth off (restart the daemon to serve without keys, "
            "where SHELLM_ALLOW_OPEN applies)"
        )

    def run(self, environ: Mapping[str, str]) -> bool:
        """
        Replace the clients, or keep the current ones and say why.

        @return: whether the new clients are in place.
        """
        try:
            clients = load_clients(environ, self._env_file)
            if not clients and self._authenticator.enabled:
                raise ConfigError(self._why_empty())
        except ConfigError as e:
            self.log.error(
                "clients not reloaded, the {count} current clients stay: {why}",
                count=len(self._authenticator.clients),
                why=str(e),
            )
            if self._metrics is not None:
                self._metrics.reload_done(False)
            return False
        self._authenticator.replace(clients)
        if self._metrics is not None:
            self._metrics.reload_done(True)
        self.log.info("clients reloaded: {count} clients", count=len(clients))
        return True
