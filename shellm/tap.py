"""
C{twistd shellm}: the options, and L{makeService}, the one place where the
daemon's parts are built and wired together.
"""

from __future__ import annotations

import gc
import os
import signal
import tempfile
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from twisted.application import strports
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import defer, endpoints
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.python import usage

from shellm import __version__, logs
from shellm.config import SETTINGS, Config, ConfigError, load_config
from shellm.http.admin_api import AdminAPI
from shellm.http.api import ShellmAPI
from shellm.http.jobs_api import build_jobs
from shellm.http.web import ShellmSite
from shellm.models import ModelTable
from shellm.providers.http_client import upstream_client
from shellm.providers.process import CliRunner
from shellm.providers.registry import Wiring, build_providers
from shellm.providers.spawner import SessionSpawner, find_launcher
from shellm.providers.watchdog import Watchdog
from shellm.reload import ClientReload
from shellm.routing.auth import Authenticator
from shellm.routing.cache import ResponseCache
from shellm.routing.circuit import Circuit
from shellm.routing.health import HealthMonitor
from shellm.routing.job_runner import JobService
from shellm.routing.queue import RequestQueue
from shellm.routing.quota import QuotaTracker
from shellm.routing.router import Router
from shellm.routing.shared_limits import rate_limiter
from shellm.state.conversations import SWEEP_INTERVAL, Conversations
from shellm.state.keys import KeyRing, KeyStore, had_client_keys, load_secret
from shellm.state.ledger import Ledger
from shellm.state.metrics import Metrics
from shellm.state.retention import Retention
from shellm.state.store import SchemaTooNew, Store, check_not_newer
from shellm.state.templates import TemplateFolder, TemplateStore

if TYPE_CHECKING:
    from klein import Klein

    from shellm.http.dashboard.pages import Dashboard


def _option(name: str) -> str:
    return name.replace("_", "-")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve the SheLLM HTTP API.  Every option can also be set in the "
        "environment or in a .env file (options win, then the environment, "
        "then the file)."
    )
    optParameters = [
        [_option(s.name), None, None, f"{s.help} [{s.env}, default: {s.default or 'none'}]"]
        for s in SETTINGS
        if s.option
    ] + [["env-file", None, ".env", "file of KEY=value settings read at start-up"]]

    def opt_version(self):
        """
        Print the SheLLM version and exit.
        """
        print(f"shellm {__version__}")
        raise SystemExit(0)

    def postOptions(self):
        given = {s.name: self[_option(s.name)] for s in SETTINGS if s.option}
        try:
            config = load_config(given, os.environ, self["env-file"] or None)
            # Parsed now so a typo stops start-up with a message, not a traceback.
            endpoints.serverFromString(None, config.listen)
            check_not_newer(config.db)
        except (ConfigError, SchemaTooNew) as e:
            raise usage.UsageError(str(e))
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"SHELLM_LISTEN: not a valid endpoint ({e})")
        self["config"] = config
        self["env-file-path"] = os.path.abspath(self["env-file"]) if self["env-file"] else None
        parent = getattr(self, "parent", None)
        if parent is not None:
            # Read by both JSON observers: stdout, and the file of `shellm start -d`.
            logs.daemon_level = config.log_level
        if parent is not None and not parent.get("logger") and not parent.get("logfile"):
            # JSON lines on stdout, for journald, unless told otherwise.
            parent["logger"] = "shellm.logs.daemon_observer"


class ShellmService(MultiService):
    """
    Starts the health checks; on stop, after the listener has closed, lets
    in-flight work finish for up to the drain limit, then kills what is left
    and waits until every child is reaped.
    """

    log = Logger()

    def __init__(
        self,
        clock,
        runner: CliRunner,
        router: Router,
        api: ShellmAPI,
        pool,
        drain_timeout: float,
        authenticator: Authenticator,
        ledger: Ledger,
        env_file,
        site: ShellmSite,
        templates: TemplateStore | None = None,
    ):
        super().__init__()
        self._site = site
        self._api = api
        self._clock = clock
        self._runner = runner
        self._router = router
        self._pool = pool
        self._drain_timeout = drain_timeout
        self._authenticator = authenticator
        self._ledger = ledger
        self._env_file = env_file
        self._templates = templates

    def startService(self):
        self._ledger.open().addErrback(lambda f: self.log.failure("the usage ledger could not be opened", f))
        super().startService()
        self._router.health.refresh()
        if self._api.accounting.log_bodies:
            self.log.warn(
                "SHELLM_LOG_BODIES=1: prompts and answers are stored in the request log (first 4096 characters)"
            )
        if not self._authenticator.enabled:
            self.log.warn("SHELLM_CLIENTS is not set: auth is off, anyone who can connect may use the API")
        signal.signal(signal.SIGHUP, self._hangup)
        # What start-up built lives as long as the daemon: out of the cyclic
        # collector's sight, collections under load walk only what requests
        # made (about 6% of the reactor's time on the HTTP path before).
        gc.freeze()

    def _hangup(self, signum, frame):
        self._clock.callFromThread(self.reload)

    def reload(self) -> None:
        """
        SIGHUP: the client keys, and the templates folder if there is one.
        """
        self.reload_clients()
        folder = self._templates.folder if self._templates is not None else None
        if folder is not None:
            folder.load()

    def reload_clients(self) -> None:
        """
        Re-read SHELLM_CLIENTS (SIGHUP); requests in flight are unaffected.
        """
        ClientReload(self._authenticator, self._env_file, self._api.metrics).run(os.environ)

    @inlineCallbacks
    def stopService(self):
        # From now on new requests are refused and every response closes
        # its connection, so keep-alive clients go elsewhere.
        self._site.stopping = True
        self._router.close()
        yield super().stopService()  # the listener, added last, stops first
        if self._api.in_flight:
            self.log.info("draining {busy} requests", busy=self._api.in_flight)
        yield self._within(self._drain_timeout, self._api.idle())
        if self._api.in_flight:
            self.log.warn("stopping {count} requests still running", count=self._api.in_flight)
        # Every call still running (CLI or HTTP) ends with an error its
        # client is told about, and its usage is recorded.
        self._router.stop_all()
        yield self._runner.terminate_all()
        # Let the answers of what was stopped reach their clients before
        # the reactor stops (it would drop what is not yet sent).
        yield self._within(2.0, self._api.idle())
        yield self._within(2.0, self._site.close_connections())
        yield self._pool.closeCachedConnections()
        yield self._ledger.close()
        yield self._ledger.store.close()

    def _within(self, seconds: float, waiting: Deferred) -> Deferred:
        """
        C{waiting}, given up on (quietly) after C{seconds}.
        """
        waiting.addTimeout(seconds, self._clock)
        return waiting.addErrback(lambda failure: failure.trap(defer.TimeoutError))


class LazyDashboard:
    """
    The dashboard, built (and its modules imported) by the first request
    that reaches it: most daemons never serve a page, and its modules are
    about a tenth of SheLLM's start-up.
    """

    def __init__(self, build: Callable[[], Dashboard]):
        self._build = build
        self._dashboard: Dashboard | None = None

    @property
    def app(self) -> Klein:
        if self._dashboard is None:
            self._dashboard = self._build()
        return self._dashboard.app


def _dashboard(api: ShellmAPI, keys: KeyStore, config: Config, reactor) -> Dashboard:
    from shellm.http.dashboard.pages import Dashboard
    from shellm.http.dashboard.session import SessionSigner, derive_secret

    return Dashboard(
        api,
        keys,
        SessionSigner(lambda: derive_secret(keys.secret(), config.admin_key), reactor),
        config.dashboard_secure_cookie,
    )


def build_router(clock, providers: Mapping, config: Config, quota: QuotaTracker | None = None) -> Router:
    """
    The router over C{providers} with its queues, circuits, health cache and
    subscription windows (C{quota}, made here unless the providers already
    report to one), as the daemon (and every test that needs a real router)
    has it.
    """
    queues = {
        # A CLI run takes seconds, an API call about one: the first
        # Retry-After, before any call is timed, comes from these.
        "cli": RequestQueue("cli", config.max_concurrent, config.max_queue_depth, expected_hold=10.0),
        "http": RequestQueue("http", config.http_max_concurrent, config.http_max_queue_depth, expected_hold=2.0),
    }
    return Router(
        clock,
        providers,
        ModelTable(config.models),
        queues=queues,
        health=HealthMonitor(clock, providers, config.health_ttl),
        circuits={name: Circuit(clock, config.circuit_threshold, config.circuit_cooldown) for name in providers},
        fallback_chain=config.fallback_chain,
        quota=quota if quota is not None else QuotaTracker(clock, config.quota_threshold),
    )


def makeService(options, reactor=None):
    if reactor is None:
        from twisted.internet import reactor
    config = options["config"]

    watchdog = Watchdog(reactor, tempfile.gettempdir())
    runner = CliRunner(reactor, SessionSpawner(reactor, find_launcher(), watchdog), config.timeout, config.kill_grace)
    http, pool = upstream_client(reactor, max_per_host=config.http_max_concurrent)

    quota = QuotaTracker(reactor, config.quota_threshold)
    providers = build_providers(Wiring(reactor, runner, http, config, quota))
    router = build_router(reactor, providers, config, quota)
    metrics = Metrics(router.queues, router.circuits, router.quota)
    router.on_call = metrics.count_call
    store = Store.from_setting(config.db, reactor)
    keys = KeyStore(store, lambda: load_secret(config.key_secret, "~/.shellm/key_secret"), reactor)
    ring = KeyRing(keys, reactor)
    ring.assume_client_keys = had_client_keys(store.target)
    authenticator = Authenticator(config.clients, ring, config.admin_key)
    ledger = Ledger(store, reactor)
    folder = TemplateFolder(config.templates_dir) if config.templates_dir else None
    if folder is not None:
        folder.load()
    templates = TemplateStore(store, reactor, folder)
    conversations = Conversations(
        store, reactor, config.session_ttl, config.session_max_turns, config.session_max_chars
    )
    cache = ResponseCache(
        reactor, config.cache_ttl, config.cache_max_bytes, shared=config.cache_shared, max_wait=config.timeout
    )
    api = ShellmAPI(
        reactor,
        router,
        config.max_prompt_chars,
        config.heartbeat,
        authenticator=authenticator,
        limiter=rate_limiter(reactor, store, config.global_rpm),
        ledger=ledger,
        metrics=metrics,
        metrics_public=config.metrics_public,
        admin=AdminAPI(
            reactor,
            authenticator,
            keys,
            router.models,
            templates=templates,
            max_prompt_chars=config.max_prompt_chars,
            cache=cache,
        ),
        conversations=conversations,
        templates=templates,
        cache=cache,
    )
    api.accounting.log_bodies = config.log_bodies
    api.dashboard = LazyDashboard(lambda: _dashboard(api, keys, config, reactor))
    jobs = build_jobs(reactor, api, store, config)
    api.jobs = jobs
    site = ShellmSite(
        api.resource(),
        reactor,
        config.max_body_bytes,
        request_deadline=config.request_deadline,
        max_connections=config.max_connections,
        max_connections_per_ip=config.max_connections_per_ip,
    )

    service = ShellmService(
        reactor,
        runner,
        router,
        api,
        pool,
        config.drain_timeout,
        authenticator,
        ledger,
        options.get("env-file-path"),
        site,
        templates,
    )
    # Started first; on stop it stays until the drain has reaped every run.
    watchdog.setServiceParent(service)
    Retention(reactor, ring, config.retention_days).setServiceParent(service)
    JobService(jobs.runner).setServiceParent(service)
    sweeper = TimerService(SWEEP_INTERVAL, conversations.sweep_quietly)
    sweeper.clock = reactor
    sweeper.setServiceParent(service)
    # Added last so it starts last and stops first; strports makes a failed
    # bind fail start-up.
    strports.service(config.listen, site, reactor=reactor).setServiceParent(service)
    return service
