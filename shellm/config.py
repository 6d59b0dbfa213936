"""
The daemon's configuration: one frozen value, built once at start-up.

Sources, highest first: ``twistd shellm`` options, the process environment, a
``.env`` file in the working directory, built-in defaults.  Every setting is
described once, in L{SETTINGS}; the command-line options, the README table and
the validation all come from that list.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Mapping
from typing import Any

from attrs import field, frozen

from shellm.models import DEFAULT_MODELS, PROVIDERS, ModelEntry, merge_models
from shellm.routing.auth import Client, parse_clients


class ConfigError(Exception):
    """
    A setting has a value the daemon cannot run with.  The message names the
    setting.
    """


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip())
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ValueError(f"must be an integer {bound}")
        return value

    return parse


def _seconds(low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text.strip())
        if not value >= low or value == float("inf"):
            raise ValueError(f"must be a number of seconds >= {low:g}")
        return value

    return parse


def _share(text: str) -> float:
    value = float(text.strip())
    if not 0 < value <= 1:
        raise ValueError("must be a share between 0 (excluded) and 1")
    return value


def _text(text: str) -> str:
    return text.strip()


def _optional_text(text: str) -> str | None:
    return text.strip() or None


def _env_object(text: str) -> Mapping[str, str]:
    """
    A JSON object of extra environment variables for one CLI.
    """
    value = json.loads(text or "{}")
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError('must be a JSON object of strings, e.g. {"NAME": "value"}')
    if any("=" in k or "\0" in k or "\0" in v or not k for k, v in value.items()):
        raise ValueError("has an invalid variable name")
    return dict(value)


def _models(text: str) -> tuple[ModelEntry, ...]:
    return merge_models(DEFAULT_MODELS, json.loads(text) if text.strip() else {})


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in ("debug", "info", "warn", "error", "critical"):
        raise ValueError("must be one of debug, info, warn, error, critical")
    return level


def _provider_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in PROVIDERS]
    if unknown:
        raise ValueError(f"names unknown providers: {', '.join(unknown)}")
    return names


def _db(text: str) -> str:
    from shellm.state.store import StoreTarget

    StoreTarget.parse(text)  # raises ValueError with the reason
    return text.strip()


def _folder(text: str) -> str | None:
    import os

    text = text.strip()
    if not text:
        return None
    path = os.path.abspath(os.path.expanduser(text))
    if not os.path.isdir(path):
        raise ValueError(f"{path} is not a folder")
    return path


def _webhook_secret(text: str) -> str | None:
    import base64
    import binascii

    text = text.strip()
    if not text:
        return None
    try:
        raw = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except binascii.Error:
        raise ValueError("must be whsec_ followed by base64 (e.g. whsec_$(openssl rand -base64 32))") from None
    if len(raw) < 24:
        raise ValueError("must hold at least 24 random bytes")
    return text


def _webhook_allow(text: str) -> str:
    from shellm.http.webhooks import AllowList

    AllowList.parse(text)
    return text.strip()


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be 1 or 0")


def _url(text: str) -> str:
    url = text.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return url


@frozen
class Setting:
    """
    One configuration setting: where it comes from and how it is checked.
    """

    name: str  # attribute of Config, and the option name with - for _
    env: str
    default: str
    parse: Callable[[str], Any]
    help: str
    option: bool = True  # secrets are never command-line options (ps shows argv)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "listen", "SHELLM_LISTEN", "tcp:6100:interface=127.0.0.1", _text, "listen endpoint, a strports description"
    ),
    Setting("max_concurrent", "SHELLM_MAX_CONCURRENT", "2", _int(1, 1024), "CLI runs at once"),
    Setting(
        "max_queue_depth", "SHELLM_MAX_QUEUE_DEPTH", "10", _int(0, 100000), "CLI requests waiting for a slot, at most"
    ),
    Setting("http_max_concurrent", "SHELLM_HTTP_MAX_CONCURRENT", "32", _int(1, 100000), "HTTP-provider calls at once"),
    Setting(
        "http_max_queue_depth",
        "SHELLM_HTTP_MAX_QUEUE_DEPTH",
        "256",
        _int(0, 1000000),
        "HTTP-provider requests waiting for a slot, at most",
    ),
    Setting("timeout", "SHELLM_TIMEOUT", "120", _seconds(0.001), "seconds a provider call may take in all"),
    Setting(
        "kill_grace", "SHELLM_KILL_GRACE", "5", _seconds(0), "seconds between TERM and KILL for a CLI's process group"
    ),
    Setting(
        "drain_timeout",
        "SHELLM_DRAIN_TIMEOUT",
        "30",
        _seconds(0),
        "seconds in-flight requests may run on after SIGTERM",
    ),
    Setting("health_ttl", "SHELLM_HEALTH_TTL", "30", _seconds(0), "seconds a provider health check stays cached"),
    Setting(
        "heartbeat", "SHELLM_HEARTBEAT", "15", _seconds(0.01), "seconds of silence before an SSE keepalive comment"
    ),
    Setting("max_prompt_chars", "SHELLM_MAX_PROMPT_CHARS", "50000", _int(1), "longest prompt accepted, in characters"),
    Setting("max_body_bytes", "SHELLM_MAX_BODY_BYTES", "262144", _int(1), "largest request body accepted, in bytes"),
    Setting(
        "session_ttl", "SHELLM_SESSION_TTL", "604800", _seconds(1), "seconds a session or stored response lives idle"
    ),
    Setting("session_max_turns", "SHELLM_SESSION_MAX_TURNS", "200", _int(1), "completed turns a session may hold"),
    Setting(
        "session_max_chars", "SHELLM_SESSION_MAX_CHARS", "1048576", _int(1), "characters of text a session may hold"
    ),
    Setting(
        "cache_ttl",
        "SHELLM_CACHE_TTL",
        "0",
        _seconds(0),
        "seconds an answer stays in the response cache, at most (0: answers are not cached)",
    ),
    Setting(
        "cache_shared", "SHELLM_CACHE_SHARED", "0", _flag, "1 lets a cached answer serve every key, not only its own"
    ),
    Setting(
        "cache_max_bytes", "SHELLM_CACHE_MAX_BYTES", "67108864", _int(1), "bytes the response cache holds, at most"
    ),
    Setting(
        "request_deadline",
        "SHELLM_REQUEST_DEADLINE",
        "30",
        _seconds(0),
        "seconds a client has to send a whole request (0: no limit)",
    ),
    Setting("max_connections", "SHELLM_MAX_CONNECTIONS", "1024", _int(1), "client connections open at once, at most"),
    Setting(
        "max_connections_per_ip",
        "SHELLM_MAX_CONNECTIONS_PER_IP",
        "256",
        _int(1),
        "client connections from one non-loopback address, at most",
    ),
    Setting(
        "claude_bin", "SHELLM_CLAUDE_BIN", "claude", _text, "claude executable: a path, or a name looked up on PATH"
    ),
    Setting(
        "gemini_bin", "SHELLM_GEMINI_BIN", "gemini", _text, "gemini executable: a path, or a name looked up on PATH"
    ),
    Setting("codex_bin", "SHELLM_CODEX_BIN", "codex", _text, "codex executable: a path, or a name looked up on PATH"),
    Setting("claude_env", "SHELLM_CLAUDE_ENV", "{}", _env_object, "extra environment for claude (JSON object)"),
    Setting("gemini_env", "SHELLM_GEMINI_ENV", "{}", _env_object, "extra environment for gemini (JSON object)"),
    Setting("codex_env", "SHELLM_CODEX_ENV", "{}", _env_object, "extra environment for codex (JSON object)"),
    Setting(
        "cerebras_api_key",
        "CEREBRAS_API_KEY",
        "",
        _optional_text,
        "Cerebras API key (environment or .env only)",
        option=False,
    ),
    Setting(
        "cerebras_base_url",
        "SHELLM_CEREBRAS_BASE_URL",
        "https://api.cerebras.ai/v1",
        _url,
        "Cerebras (OpenAI-compatible) API base URL",
    ),
    Setting("models", "SHELLM_MODELS", "", _models, "model table additions or replacements (JSON object)"),
    Setting(
        "fallback_chain",
        "SHELLM_FALLBACK_CHAIN",
        "claude,gemini,cerebras",
        _provider_list,
        "providers tried, in order, when one fails",
    ),
    Setting(
        "circuit_threshold",
        "SHELLM_CIRCUIT_THRESHOLD",
        "3",
        _int(1),
        "consecutive provider failures that open its circuit",
    ),
    Setting(
        "circuit_cooldown",
        "SHELLM_CIRCUIT_COOLDOWN",
        "60",
        _seconds(0),
        "seconds an open circuit waits before one probe",
    ),
    Setting(
        "quota_threshold",
        "SHELLM_QUOTA_THRESHOLD",
        "0.95",
        _share,
        "used share of a subscription window at which its provider is skipped until the reset",
    ),
    Setting(
        "codex_quota_interval",
        "SHELLM_CODEX_QUOTA_INTERVAL",
        "300",
        _seconds(0),
        "seconds between codex app-server rate-limit reads while codex is used (0: never)",
    ),
    Setting(
        "clients",
        "SHELLM_CLIENTS",
        "",
        parse_clients,
        "clients and their keys, JSON (environment or .env only)",
        option=False,
    ),
    Setting("allow_open", "SHELLM_ALLOW_OPEN", "0", _flag, "1 allows a non-loopback listener without client keys"),
    Setting(
        "metrics_public",
        "SHELLM_METRICS_PUBLIC",
        "0",
        _flag,
        "1 serves /metrics without a key when auth is on",
    ),
    Setting("global_rpm", "SHELLM_GLOBAL_RPM", "30", _int(1), "completion requests per minute for the whole gateway"),
    Setting(
        "db",
        "SHELLM_DB",
        "~/.shellm/shellm.db",
        _db,
        "state store: a SQLite file, or a postgresql:// URL shared by nodes",
    ),
    Setting(
        "admin_key",
        "SHELLM_ADMIN_KEY",
        "",
        _optional_text,
        "the key of /admin/ (environment or .env only; none: /admin/ is off unless an admin key was made)",
        option=False,
    ),
    Setting(
        "key_secret",
        "SHELLM_KEY_SECRET",
        "",
        _optional_text,
        "secret stored keys are hashed with (else read from, or made in, ~/.shellm/key_secret)",
        option=False,
    ),
    Setting(
        "log_bodies",
        "SHELLM_LOG_BODIES",
        "0",
        _flag,
        "1 keeps prompts and answers (first 4096 characters) in the request log",
    ),
    Setting(
        "dashboard_secure_cookie",
        "SHELLM_DASHBOARD_SECURE_COOKIE",
        "0",
        _flag,
        "1 marks the /dashboard login cookie Secure over plain HTTP (TLS ended by a proxy); it always is under TLS",
    ),
    Setting("retention_days", "SHELLM_RETENTION_DAYS", "90", _int(1), "days the request log is kept"),
    Setting(
        "templates_dir",
        "SHELLM_TEMPLATES_DIR",
        "",
        _folder,
        "folder of read-only prompt templates (name.md files), read at start and on SIGHUP",
    ),
    Setting(
        "jobs_max_concurrent",
        "SHELLM_JOBS_MAX_CONCURRENT",
        "1",
        _int(0, 1024),
        "async jobs run at once on this node, after interactive requests (0: this node runs none)",
    ),
    Setting(
        "jobs_lease",
        "SHELLM_JOBS_LEASE",
        "30",
        _seconds(2),
        "seconds before a running job whose node stopped renewing its claim is run again (shared stores)",
    ),
    Setting(
        "webhook_secret",
        "SHELLM_WEBHOOK_SECRET",
        "",
        _webhook_secret,
        "Standard Webhooks signing secret (whsec_<base64>) for job callbacks (environment or .env only)",
        option=False,
    ),
    Setting(
        "webhook_allow",
        "SHELLM_WEBHOOK_ALLOW",
        "",
        _webhook_allow,
        "hosts or CIDR networks job callbacks may reach although not public, space-separated",
    ),
    Setting(
        "webhook_retry_window",
        "SHELLM_WEBHOOK_RETRY_WINDOW",
        "86400",
        _seconds(0),
        "seconds a failing webhook delivery is retried for (backoff with jitter)",
    ),
    Setting(
        "webhook_first_retry",
        "SHELLM_WEBHOOK_FIRST_RETRY",
        "5",
        _seconds(0.001),
        "seconds before the first retry of a failed webhook delivery (then four times longer each time)",
    ),
    Setting("log_level", "LOG_LEVEL", "info", _log_level, "debug, info, warn, error or critical"),
)


@frozen
class Config:
    listen: str
    max_concurrent: int
    max_queue_depth: int
    http_max_concurrent: int
    http_max_queue_depth: int
    timeout: float
    kill_grace: float
    drain_timeout: float
    health_ttl: float
    heartbeat: float
    max_prompt_chars: int
    max_body_bytes: int
    session_ttl: float
    session_max_turns: int
    session_max_chars: int
    cache_ttl: float
    cache_shared: bool
    cache_max_bytes: int
    request_deadline: float
    max_connections: int
    max_connections_per_ip: int
    claude_bin: str
    gemini_bin: str
    codex_bin: str
    claude_env: Mapping[str, str] = field(repr=False)
    gemini_env: Mapping[str, str] = field(repr=False)
    codex_env: Mapping[str, str] = field(repr=False)
    cerebras_api_key: str | None = field(repr=False)
    cerebras_base_url: str
    models: tuple[ModelEntry, ...]
    fallback_chain: tuple[str, ...]
    circuit_threshold: int
    circuit_cooldown: float
    quota_threshold: float
    codex_quota_interval: float
    clients: tuple[Client, ...] = field(repr=False)
    allow_open: bool
    metrics_public: bool
    global_rpm: int
    db: str
    admin_key: str | None = field(repr=False)
    key_secret: str | None = field(repr=False)
    log_bodies: bool
    dashboard_secure_cookie: bool
    retention_days: int
    templates_dir: str | None
    log_level: str
    jobs_max_concurrent: int
    jobs_lease: float
    webhook_secret: str | None = field(repr=False)
    webhook_allow: str
    webhook_retry_window: float
    webhook_first_retry: float
    # What the CLIs inherit from the daemon: where to find programs and
    # the service user's home, which holds their logins.
    base_env: Mapping[str, str] = field(repr=False, factory=dict)


def read_env_file(path: str) -> dict[str, str]:
    """
    Read C{KEY=value} lines; C{#} comments, blank lines and a leading
    C{export} are allowed, and one pair of surrounding quotes is removed.
    A missing file is an empty one.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        lines = data.decode("utf-8").splitlines()
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as e:
        number = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}, line {number}: not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    values = {}
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"{path}, line {number}: expected KEY=value")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


# The variables a CLI inherits from the daemon's own environment.  Everything
# else (other API keys, proxies the operator did not mean for it, ...) stays out.
INHERITED_ENV = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "NODE_EXTRA_CA_CERTS",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


def load_config(
    options: Mapping[str, str | None],
    environ: Mapping[str, str],
    env_file: str | None = ".env",
) -> Config:
    """
    Build the L{Config} from its sources.

    @param options: option values given on the command line, by setting
        name; L{None} means "not given".
    @raise ConfigError: naming the first bad setting.
    """
    from_file = read_env_file(env_file) if env_file else {}
    values = {}
    for setting in SETTINGS:
        given = options.get(setting.name) if setting.option else None
        if given is not None:
            raw, source = given, "--" + setting.name.replace("_", "-")
        elif setting.env in environ:
            raw, source = environ[setting.env], setting.env
        elif setting.env in from_file:
            raw, source = from_file[setting.env], f"{setting.env} (in {env_file})"
        else:
            raw, source = setting.default, setting.env
        try:
            values[setting.name] = setting.parse(raw)
        except (ValueError, TypeError, RecursionError) as e:
            raise ConfigError(f"{source}: {_reason(e)}") from None
    base_env = {k: environ[k] for k in INHERITED_ENV if k in environ}
    base_env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    config = Config(**values, base_env=base_env)
    if not config.clients and not config.allow_open and not listens_on_loopback(config.listen):
        raise ConfigError(
            f"SHELLM_LISTEN: {config.listen} can be reached from other machines, but "
            "SHELLM_CLIENTS is not set, so anyone could use it; set client keys, or "
            "SHELLM_ALLOW_OPEN=1 to serve without auth anyway"
        )
    return config


def load_clients(environ: Mapping[str, str], env_file: str | None) -> tuple[Client, ...]:
    """
    C{SHELLM_CLIENTS} again, for a reload: from the settings file when it
    sets it (that file is what an operator edits before SIGHUP, even when
    systemd also loaded it into the environment), else the environment.

    @raise ConfigError: if it is no longer valid (the old clients stay).
    """
    from_file = read_env_file(env_file) if env_file else {}  # its ConfigError names the file
    raw = from_file.get("SHELLM_CLIENTS", environ.get("SHELLM_CLIENTS", ""))
    try:
        return parse_clients(raw)
    except (ValueError, TypeError, RecursionError) as e:
        raise ConfigError(f"SHELLM_CLIENTS: {_reason(e)}") from None


def _reason(error: Exception) -> str:
    # json.loads gives up on deep nesting with a RecursionError, which says nothing useful.
    return "is nested too deeply" if isinstance(error, RecursionError) else str(error)


def listens_on_loopback(description: str) -> bool:
    """
    Whether a strports description only accepts local connections: a
    loopback TCP interface or a UNIX socket.
    """
    from twisted.internet import endpoints

    try:
        endpoint = endpoints.serverFromString(None, description)
    except (ValueError, KeyError, TypeError):
        return True  # not an endpoint at all; reported as such elsewhere
    if isinstance(endpoint, endpoints.UNIXServerEndpoint):
        return True
    interface = getattr(endpoint, "_interface", None)
    if interface is None:
        return False
    if interface == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False
