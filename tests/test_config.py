"""
Configuration: where values come from, how bad ones stop start-up, the
C{.env} file, the model table override, and C{twistd shellm} options.
"""

from __future__ import annotations

import json

import pytest
from twisted.python import usage

from shellm.config import SETTINGS, ConfigError, load_config, read_env_file
from shellm.models import DEFAULT_MODELS, PROVIDERS, ModelEntry
from shellm.tap import Options


def load(environ=None, options=None, env_file=None):
    return load_config(options or {}, environ or {}, env_file)


def write_env(tmp_path, text: str, name: str = ".env") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def clean_environ(monkeypatch, tmp_path):
    """
    A process environment with none of the daemon's settings, and a working
    directory without a C{.env}, for the tests that go through L{Options}.
    """
    for setting in SETTINGS:
        monkeypatch.delenv(setting.env, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- defaults and precedence


def test_defaults():
    """
    With no options, environment or file, the documented defaults apply.
    """
    config = load()
    assert config.listen == "tcp:6100:interface=127.0.0.1"
    assert (config.max_concurrent, config.max_queue_depth) == (2, 10)
    assert (config.http_max_concurrent, config.http_max_queue_depth) == (32, 256)
    assert (config.timeout, config.kill_grace) == (120, 5)
    assert config.health_ttl == 30
    assert (config.max_prompt_chars, config.max_body_bytes) == (50000, 262144)
    assert (config.request_deadline, config.max_connections, config.max_connections_per_ip) == (30, 1024, 256)
    assert config.claude_env == {} and config.gemini_env == {} and config.codex_env == {}
    assert config.cerebras_api_key is None
    assert config.cerebras_base_url == "https://api.cerebras.ai/v1"
    assert config.models == DEFAULT_MODELS
    assert config.fallback_chain == ("claude", "gemini", "cerebras")
    assert (config.circuit_threshold, config.circuit_cooldown) == (3, 60)
    assert config.heartbeat == 15
    assert config.log_level == "info"


def test_precedence_options_environment_file_defaults(tmp_path):
    """
    Each source wins over the ones below it: options > environment >
    .env file > defaults, setting by setting.
    """
    env_file = write_env(
        tmp_path,
        "\n".join(
            [
                "SHELLM_MAX_CONCURRENT=4",
                "SHELLM_MAX_QUEUE_DEPTH=40",
                "SHELLM_TIMEOUT=44",
            ]
        ),
    )
    environ = {"SHELLM_MAX_CONCURRENT": "5", "SHELLM_MAX_QUEUE_DEPTH": "50"}
    options = {"max_concurrent": "6", "timeout": None}
    config = load_config(options, environ, env_file)
    assert config.max_concurrent == 6  # option over environment and file
    assert config.max_queue_depth == 50  # environment over file
    assert config.timeout == 44  # file over default (None option = not given)
    assert config.kill_grace == 5  # default


def test_missing_env_file_is_empty(tmp_path):
    """
    A .env file that does not exist is simply no settings.
    """
    assert load(env_file=str(tmp_path / "absent.env")).max_concurrent == 2


def test_secret_comes_from_environment_or_file_only(tmp_path):
    """
    The Cerebras key is read from the environment or the file, never from
    an option (an option would show in ps).
    """
    env_file = write_env(tmp_path, "CEREBRAS_API_KEY=from-file\n")
    assert load(env_file=env_file).cerebras_api_key == "from-file"
    assert load({"CEREBRAS_API_KEY": "from-env"}, env_file=env_file).cerebras_api_key == "from-env"
    config = load_config({"cerebras_api_key": "from-option"}, {}, None)
    assert config.cerebras_api_key is None


# -- bad values


BAD_VALUES = [
    ("SHELLM_MAX_CONCURRENT", "0"),
    ("SHELLM_MAX_CONCURRENT", "two"),
    ("SHELLM_MAX_CONCURRENT", "2.5"),
    ("SHELLM_MAX_QUEUE_DEPTH", "-1"),
    ("SHELLM_HTTP_MAX_CONCURRENT", ""),
    ("SHELLM_MAX_PROMPT_CHARS", "0"),
    ("SHELLM_MAX_BODY_BYTES", "lots"),
    ("SHELLM_CIRCUIT_THRESHOLD", "0"),
    ("SHELLM_TIMEOUT", "0"),
    ("SHELLM_TIMEOUT", "-3"),
    ("SHELLM_TIMEOUT", "nan"),
    ("SHELLM_TIMEOUT", "inf"),
    ("SHELLM_TIMEOUT", "2m"),
    ("SHELLM_KILL_GRACE", "-1"),
    ("SHELLM_HEALTH_TTL", "soon"),
    ("SHELLM_HEARTBEAT", "0"),
    ("SHELLM_CIRCUIT_COOLDOWN", "-60"),
    ("SHELLM_CLAUDE_ENV", "not json"),
    ("SHELLM_CLAUDE_ENV", '["A=1"]'),
    ("SHELLM_GEMINI_ENV", '{"A": 1}'),
    ("SHELLM_GEMINI_ENV", '{"A": null}'),
    ("SHELLM_CODEX_ENV", '{"A=B": "x"}'),
    ("SHELLM_CODEX_ENV", '{"": "x"}'),
    ("SHELLM_CODEX_ENV", '{"A": "x\\u0000y"}'),
    ("SHELLM_MODELS", "{"),
    ("SHELLM_MODELS", "[]"),
    ("SHELLM_MODELS", '"claude"'),
    ("SHELLM_MODELS", '{"fast": "cerebras"}'),
    ("SHELLM_MODELS", '{"fast": {"provider": "openai", "model": "gpt-4"}}'),
    ("SHELLM_MODELS", '{"fast": {"model": "gpt-4"}}'),
    ("SHELLM_MODELS", '{"fast": {"provider": "claude", "model": "--dangerously-skip-permissions"}}'),
    ("SHELLM_MODELS", '{"fast": {"provider": "claude", "model": 4}}'),
    ("SHELLM_MODELS", '{"fast": {"provider": "claude", "model": ""}}'),
    ("SHELLM_MODELS", '{"": {"provider": "claude"}}'),
    ("SHELLM_FALLBACK_CHAIN", "claude,openai"),
    ("SHELLM_FALLBACK_CHAIN", "claude;gemini"),
    ("SHELLM_CEREBRAS_BASE_URL", "api.cerebras.ai/v1"),
    ("SHELLM_CEREBRAS_BASE_URL", "ftp://api.cerebras.ai/v1"),
    ("LOG_LEVEL", "verbose"),
    ("LOG_LEVEL", ""),
]


@pytest.mark.parametrize("env, value", BAD_VALUES)
def test_bad_value_names_the_setting(env, value):
    """
    A value the daemon cannot run with stops start-up with a ConfigError
    whose message names the setting's environment variable.
    """
    with pytest.raises(ConfigError) as caught:
        load({env: value})
    assert str(caught.value).startswith(env)


def test_bad_value_in_env_file_names_setting_and_file(tmp_path):
    """
    A bad value from the .env file names the setting and the file.
    """
    env_file = write_env(tmp_path, "SHELLM_TIMEOUT=never\n")
    with pytest.raises(ConfigError) as caught:
        load(env_file=env_file)
    assert "SHELLM_TIMEOUT" in str(caught.value)
    assert env_file in str(caught.value)


def test_bad_option_names_the_option():
    """
    A bad value given as an option names the option.
    """
    with pytest.raises(ConfigError) as caught:
        load_config({"max_queue_depth": "many"}, {}, None)
    assert "--max-queue-depth" in str(caught.value)


def test_good_value_in_a_higher_source_hides_a_bad_one_below(tmp_path):
    """
    Only the value actually used is checked: a bad file value overridden by
    the environment does not stop start-up.
    """
    env_file = write_env(tmp_path, "SHELLM_MAX_CONCURRENT=zero\n")
    assert load({"SHELLM_MAX_CONCURRENT": "3"}, env_file=env_file).max_concurrent == 3


def test_bad_env_object_does_not_echo_its_values():
    """
    The message for a bad per-CLI environment does not repeat what was in
    it (it may hold a token).
    """
    with pytest.raises(ConfigError) as caught:
        load({"SHELLM_CLAUDE_ENV": '{"ANTHROPIC_API_KEY": "sk-ant-secret-1", "BAD=NAME": "x"}'})
    assert "sk-ant-secret-1" not in str(caught.value)
    with pytest.raises(ConfigError) as caught:
        load({"SHELLM_CLAUDE_ENV": '{"ANTHROPIC_API_KEY": "sk-ant-secret-1",}'})
    assert "sk-ant-secret-1" not in str(caught.value)


def test_values_are_parsed():
    """
    Good values become typed settings: integers, seconds as floats, JSON
    objects, lists, normalised URL and log level.
    """
    config = load(
        {
            "SHELLM_MAX_CONCURRENT": " 7 ",
            "SHELLM_TIMEOUT": "2.5",
            "SHELLM_KILL_GRACE": "0",
            "SHELLM_CLAUDE_ENV": '{"CLAUDE_CONFIG_DIR": "/srv/claude"}',
            "SHELLM_FALLBACK_CHAIN": " gemini , cerebras ",
            "SHELLM_CEREBRAS_BASE_URL": "http://127.0.0.1:9999/v1/",
            "LOG_LEVEL": "DEBUG",
        }
    )
    assert config.max_concurrent == 7
    assert config.timeout == 2.5 and config.kill_grace == 0
    assert config.claude_env == {"CLAUDE_CONFIG_DIR": "/srv/claude"}
    assert config.fallback_chain == ("gemini", "cerebras")
    assert config.cerebras_base_url == "http://127.0.0.1:9999/v1"
    assert config.log_level == "debug"


# -- the .env file


def test_env_file_syntax(tmp_path):
    """
    Comments, blank lines, a leading C{export}, spaces around C{=} and one
    pair of matching quotes are understood.
    """
    path = write_env(
        tmp_path,
        "\n".join(
            [
                "# a comment",
                "",
                "   # an indented comment",
                "export SHELLM_TIMEOUT=9",
                "SHELLM_LISTEN = tcp:7000:interface=127.0.0.1",
                'CEREBRAS_API_KEY="key with # hash"',
                "SHELLM_CLAUDE_BIN='/opt/claude bin/claude'",
                'SHELLM_GEMINI_BIN="unbalanced',
                "EMPTY=",
                "EQUALS=a=b=c",
            ]
        ),
    )
    values = read_env_file(path)
    assert values == {
        "SHELLM_TIMEOUT": "9",
        "SHELLM_LISTEN": "tcp:7000:interface=127.0.0.1",
        "CEREBRAS_API_KEY": "key with # hash",
        "SHELLM_CLAUDE_BIN": "/opt/claude bin/claude",
        "SHELLM_GEMINI_BIN": '"unbalanced',
        "EMPTY": "",
        "EQUALS": "a=b=c",
    }
    config = load(env_file=path)
    assert config.timeout == 9 and config.listen == "tcp:7000:interface=127.0.0.1"
    assert config.cerebras_api_key == "key with # hash"


@pytest.mark.parametrize("line", ["JUST_A_WORD", "=value", "export", "  = "])
def test_malformed_env_line_names_file_and_line(tmp_path, line):
    """
    A line that is not KEY=value stops start-up with a ConfigError naming
    the file and the line number.
    """
    path = write_env(tmp_path, "# ok\nSHELLM_TIMEOUT=5\n" + line + "\n")
    with pytest.raises(ConfigError) as caught:
        load(env_file=path)
    assert path in str(caught.value)
    assert "line 3" in str(caught.value)


# -- SHELLM_MODELS


def entries(config) -> dict[str, ModelEntry]:
    return {e.alias: e for e in config.models}


def test_models_adds_an_alias():
    """
    A new alias maps to its provider and the model passed on; the built-in
    entries stay.
    """
    config = load({"SHELLM_MODELS": json.dumps({"fast": {"provider": "cerebras", "model": "llama3.1-8b"}})})
    table = entries(config)
    assert table["fast"] == ModelEntry("fast", "cerebras", "llama3.1-8b")
    assert set(e.alias for e in DEFAULT_MODELS) <= set(table)


def test_models_replaces_an_alias():
    """
    An existing alias can be pointed at another model (or provider).
    """
    config = load(
        {
            "SHELLM_MODELS": json.dumps(
                {
                    "claude-opus": {"provider": "claude", "model": "claude-opus-4-5"},
                    "codex-mini": {"provider": "cerebras"},
                }
            )
        }
    )
    table = entries(config)
    assert table["claude-opus"] == ModelEntry("claude-opus", "claude", "claude-opus-4-5")
    assert table["codex-mini"] == ModelEntry("codex-mini", "cerebras", None)


def test_models_removes_an_alias():
    """
    C{null} removes an alias.
    """
    config = load({"SHELLM_MODELS": json.dumps({"claude-opus": None, "nonexistent": None})})
    table = entries(config)
    assert "claude-opus" not in table
    assert "claude-sonnet" in table


def test_provider_named_entries_always_remain():
    """
    Removing a provider-named entry does not remove it: fallback runs each
    provider under its own name, so that name always resolves to it.
    """
    config = load({"SHELLM_MODELS": json.dumps({name: None for name in PROVIDERS})})
    table = entries(config)
    for name in PROVIDERS:
        assert table[name].provider == name


def test_provider_named_entry_may_change_its_model():
    """
    A provider-named entry can be given another model of the same provider:
    that is the model fallback runs.
    """
    config = load({"SHELLM_MODELS": json.dumps({"gemini": {"provider": "gemini", "model": "gemini-2.5-pro"}})})
    assert entries(config)["gemini"] == ModelEntry("gemini", "gemini", "gemini-2.5-pro")


def test_provider_named_entry_cannot_point_at_another_provider():
    """
    A provider's own name must keep meaning that provider (fallback to
    "gemini" runs the entry named gemini): an override that points it at
    another provider is refused, naming SHELLM_MODELS, or does not take.
    """
    override = json.dumps({"gemini": {"provider": "claude", "model": "opus"}})
    try:
        config = load({"SHELLM_MODELS": override})
    except ConfigError as e:
        assert "SHELLM_MODELS" in str(e)
    else:
        assert entries(config)["gemini"].provider == "gemini"


# -- secrets


def test_secrets_are_not_in_repr():
    """
    repr(Config) (which may reach a log) shows neither the API key nor the
    per-CLI environments nor the inherited environment.
    """
    config = load(
        {
            "CEREBRAS_API_KEY": "csk-topsecret-123",
            "SHELLM_CLAUDE_ENV": '{"ANTHROPIC_API_KEY": "sk-ant-hidden-456"}',
            "SHELLM_GEMINI_ENV": '{"GEMINI_API_KEY": "gm-hidden-789"}',
            "SHELLM_CODEX_ENV": '{"OPENAI_API_KEY": "sk-oai-hidden-000"}',
            "HOME": "/home/svc-hidden-home",
        }
    )
    text = repr(config)
    for secret in ("csk-topsecret-123", "sk-ant-hidden-456", "gm-hidden-789", "sk-oai-hidden-000", "svc-hidden-home"):
        assert secret not in text
    assert config.cerebras_api_key == "csk-topsecret-123"
    assert config.claude_env == {"ANTHROPIC_API_KEY": "sk-ant-hidden-456"}


def test_inherited_environment_is_an_allow_list():
    """
    Only the allow-listed variables of the daemon's environment reach the
    CLIs' base environment; other secrets stay out.
    """
    config = load(
        {
            "PATH": "/usr/bin",
            "HOME": "/home/svc",
            "AWS_SECRET_ACCESS_KEY": "x",
            "CEREBRAS_API_KEY": "y",
            "LANG": "C.UTF-8",
        }
    )
    assert config.base_env == {"PATH": "/usr/bin", "HOME": "/home/svc", "LANG": "C.UTF-8"}


# -- twistd shellm options


def test_options_build_the_config(clean_environ):
    """
    C{twistd shellm} options become C{options["config"]}, a Config built
    from them.
    """
    options = Options()
    options.parseOptions(
        ["--max-concurrent", "3", "--listen", "tcp:0:interface=127.0.0.1", "--fallback-chain", "gemini"]
    )
    config = options["config"]
    assert config.max_concurrent == 3
    assert config.listen == "tcp:0:interface=127.0.0.1"
    assert config.fallback_chain == ("gemini",)
    assert config.timeout == 120


def test_options_win_over_environment_and_file(clean_environ, monkeypatch):
    """
    Through Options, too: option > environment > .env in the working
    directory > default.
    """
    write_env(clean_environ, "SHELLM_MAX_CONCURRENT=4\nSHELLM_MAX_QUEUE_DEPTH=40\nSHELLM_TIMEOUT=44\n")
    monkeypatch.setenv("SHELLM_MAX_CONCURRENT", "5")
    monkeypatch.setenv("SHELLM_MAX_QUEUE_DEPTH", "50")
    options = Options()
    options.parseOptions(["--max-concurrent", "6"])
    config = options["config"]
    assert (config.max_concurrent, config.max_queue_depth, config.timeout) == (6, 50, 44)


def test_env_file_option(clean_environ, tmp_path):
    """
    --env-file names another file of settings.
    """
    path = write_env(tmp_path, "SHELLM_HEALTH_TTL=12\n", name="shellm.env")
    options = Options()
    options.parseOptions(["--env-file", path])
    assert options["config"].health_ttl == 12


@pytest.mark.parametrize(
    "args, named",
    [
        (["--max-concurrent", "0"], "--max-concurrent"),
        (["--timeout", "forever"], "--timeout"),
        (["--fallback-chain", "claude,mystery"], "--fallback-chain"),
        (["--cerebras-base-url", "localhost:8080"], "--cerebras-base-url"),
        (["--log-level", "loud"], "--log-level"),
        (["--models", '{"x": {"provider": "nobody"}}'], "--models"),
    ],
)
def test_bad_option_is_a_usage_error_naming_it(clean_environ, args, named):
    """
    A bad option value is a UsageError (twistd prints it with the usage)
    naming the setting.
    """
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(args)
    assert named in str(caught.value)


def test_bad_environment_is_a_usage_error_naming_it(clean_environ, monkeypatch):
    """
    A bad value from the environment also stops start-up as a UsageError
    naming the variable.
    """
    monkeypatch.setenv("SHELLM_CLAUDE_ENV", "{broken")
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions([])
    assert "SHELLM_CLAUDE_ENV" in str(caught.value)


@pytest.mark.parametrize("listen", ["bogus:1234", "tcp:notaport", "", "tcp:6100:interfac"])
def test_invalid_listen_is_a_usage_error(clean_environ, listen):
    """
    A listen endpoint that cannot be parsed is a UsageError at option time,
    naming the setting, not a traceback at start.
    """
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions(["--listen", listen])
    assert "listen" in str(caught.value).lower()


def test_secret_is_not_an_option(clean_environ):
    """
    The API key cannot be given on the command line (ps would show it).
    """
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--cerebras-api-key", "csk-x"])


def test_every_option_is_documented(clean_environ):
    """
    C{twistd shellm --help} lists every non-secret setting, with its
    environment variable.
    """
    text = str(Options())
    for setting in SETTINGS:
        if setting.option:
            assert "--" + setting.name.replace("_", "-") in text
            assert setting.env in text


def test_readme_documents_every_setting():
    """
    Every setting the daemon reads is in the README's configuration table.
    """
    import os

    from shellm.config import SETTINGS

    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")).read()
    missing = [s.env for s in SETTINGS if f"`{s.env}`" not in readme]
    assert missing == []


# -- settings files that cannot be read


DEEP = "[" * 100000 + "]" * 100000


def test_env_file_that_is_not_utf8_names_the_file(tmp_path):
    """
    A settings file that is not UTF-8 is a ConfigError naming the file, the
    line and the reason, not a UnicodeDecodeError.
    """
    path = tmp_path / ".env"
    path.write_bytes(b"SHELLM_MAX_CONCURRENT=4\nSHELLM_CLIENTS='\xff\xfe'\n")
    with pytest.raises(ConfigError, match=r"\.env, line 2: not UTF-8 text$"):
        read_env_file(str(path))


def test_env_file_that_cannot_be_read_names_the_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        read_env_file(str(tmp_path))  # a directory


@pytest.mark.parametrize("env", ["SHELLM_CLIENTS", "SHELLM_MODELS", "SHELLM_CLAUDE_ENV"])
def test_json_nested_too_deeply_names_the_setting(env):
    """
    JSON nested past the parser's depth is a ConfigError naming the setting,
    not a RecursionError.
    """
    with pytest.raises(ConfigError, match=f"^{env}: is nested too deeply$"):
        load({env: DEEP})


def test_unreadable_env_file_stops_start_up_with_a_usage_error(clean_environ):
    """
    Through the twistd options, a non-UTF-8 settings file is a usage error
    that names the file, not a traceback nor a complaint about SHELLM_LISTEN.
    """
    (clean_environ / ".env").write_bytes(b"SHELLM_CLIENTS=\xff\n")
    with pytest.raises(usage.UsageError) as caught:
        Options().parseOptions([])
    assert "not UTF-8" in str(caught.value) and ".env" in str(caught.value)
    assert "SHELLM_LISTEN" not in str(caught.value)


def test_deep_json_stops_start_up_with_a_usage_error(clean_environ, monkeypatch):
    monkeypatch.setenv("SHELLM_MODELS", DEEP)
    with pytest.raises(usage.UsageError, match="SHELLM_MODELS: is nested too deeply"):
        Options().parseOptions([])
