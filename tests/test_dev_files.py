"""
The files for developing on SheLLM, read as the tools that use them read
them: the Dockerfile and compose.yaml (against the daemon's own rules and the
compose schema), the pre-commit hooks (with pre-commit itself) and the CI
workflow (against the published workflow schema).  tests/test_container.py
builds and runs the image.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from ruamel.yaml import YAML

from shellm.config import SETTINGS, ConfigError, listens_on_loopback, load_config
from tests.e2e.conftest import PINS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_HOME = "/home/shellm"


def read(name: str) -> str:
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def load_yaml(name: str):
    return YAML(typ="safe").load(read(name))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """
    (INSTRUCTION, arguments) pairs, continuation lines joined, comments out.
    """
    text = re.sub(r"(?m)^\s*#.*\n", "", read("Dockerfile"))
    text = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in text.splitlines() if line.strip()]


def dockerfile(instruction: str) -> list[str]:
    return [args for name, args in dockerfile_instructions() if name == instruction]


def image_env() -> dict[str, str]:
    (env,) = dockerfile("ENV")
    return {k: v.strip("'") for k, v in re.findall(r"(\w+)=('[^']*'|\S+)", env)}


def default(env: str) -> str:
    return next(s.default for s in SETTINGS if s.env == env)


def check_jsonschema(schema: str, path: str) -> subprocess.CompletedProcess:
    tool = os.path.join(os.path.dirname(sys.executable), "check-jsonschema")
    return subprocess.run(
        [tool, "--builtin-schema", schema, os.path.join(ROOT, path)], capture_output=True, text=True, timeout=60
    )


# -- Dockerfile


def test_dockerfile_base_is_a_build_argument_defaulting_to_debian_slim():
    (base,) = [a for a in dockerfile("ARG") if a.startswith("BASE=")]
    assert re.fullmatch(r"BASE=docker\.io/library/debian:[a-z]+-slim", base)
    assert dockerfile("FROM") == ["${BASE}"]


def test_dockerfile_cli_pins_are_the_e2e_pins():
    """
    The CLIs the image installs (with C{--build-arg CLIS=1}) are the
    versions the e2e tests prove.
    """
    args = dict(a.split("=", 1) for a in dockerfile("ARG") if "=" in a)
    assert args["CLIS"] == "0"
    pinned = {args[name] for name in ("CLAUDE_CODE", "GEMINI_CLI", "CODEX")}
    assert pinned == {f"{package}@{version}" for package, version in PINS.values()}
    (install,) = [r for r in dockerfile("RUN") if "npm install" in r]
    assert '"$CLAUDE_CODE" "$GEMINI_CLI" "$CODEX"' in install


def test_image_runs_twistd_as_a_non_root_user_with_a_healthcheck():
    (user,) = dockerfile("USER")
    assert user not in ("root", "0")
    (health,) = dockerfile("HEALTHCHECK")
    assert "http://127.0.0.1:6100/health" in health
    assert dockerfile("CMD") == ['["twistd", "--nodaemon", "--pidfile=", "shellm"]']
    assert dockerfile("EXPOSE") == ["6100"]


def test_image_listens_on_all_interfaces_so_it_needs_keys():
    """
    The image's listener is reachable from outside the container, so the
    daemon refuses it without client keys, and the image does not allow
    that by itself (SHELLM_ALLOW_OPEN is not set in it).
    """
    env = image_env()
    assert env["SHELLM_LISTEN"] == "tcp:6100:interface=0.0.0.0"
    assert not listens_on_loopback(env["SHELLM_LISTEN"])
    assert not any("SHELLM_ALLOW_OPEN" in args for _, args in dockerfile_instructions())
    with pytest.raises(ConfigError, match="SHELLM_CLIENTS is not set"):
        load_config({}, {"SHELLM_LISTEN": env["SHELLM_LISTEN"]}, None)
    load_config({}, {"SHELLM_LISTEN": env["SHELLM_LISTEN"], "SHELLM_ALLOW_OPEN": "1"}, None)


def test_build_context_leaves_out_settings_keys_and_databases():
    ignored = read(".containerignore").split()
    for pattern in (".env", ".env.*", "*.db", "*.pem", "*.key", ".git", ".venv", "tests/e2e/.cache"):
        assert pattern in ignored, pattern
    assert os.path.realpath(os.path.join(ROOT, ".dockerignore")) == os.path.join(ROOT, ".containerignore")


# -- compose.yaml


def compose_service() -> dict:
    (service,) = load_yaml("compose.yaml")["services"].values()
    return service


def test_compose_file_matches_the_compose_schema():
    result = check_jsonschema("vendor.compose-spec", "compose.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_publishes_on_loopback_only():
    """
    Every published port is bound to 127.0.0.1, which is what makes the
    spelled-out SHELLM_ALLOW_OPEN=1 safe.
    """
    service = compose_service()
    assert service["ports"] == ["127.0.0.1:6100:6100"]
    assert service["environment"] == {"SHELLM_ALLOW_OPEN": "1"}
    assert service["env_file"] == ".env"


def test_compose_keeps_logins_and_database_in_named_volumes_on_a_read_only_root():
    service = compose_service()
    volumes = dict(v.split(":", 1)[::-1] for v in service["volumes"])
    database_dir = os.path.dirname(default("SHELLM_DB").replace("~", IMAGE_HOME))
    assert set(volumes) == {f"{IMAGE_HOME}/.claude", f"{IMAGE_HOME}/.gemini", f"{IMAGE_HOME}/.codex", database_dir}
    assert set(volumes.values()) == set(load_yaml("compose.yaml")["volumes"])
    # Claude's settings file goes into its volume, not the read-only home.
    # (for a login in the container, and for the daemon's runs).
    assert image_env()["CLAUDE_CONFIG_DIR"] == f"{IMAGE_HOME}/.claude"
    assert image_env()["SHELLM_CLAUDE_ENV"] == '{"CLAUDE_CONFIG_DIR": "/home/shellm/.claude"}'
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]


def test_compose_gives_the_drain_time_to_finish():
    (grace,) = re.fullmatch(r"(\d+)s", compose_service()["stop_grace_period"]).groups()
    assert int(grace) > float(default("SHELLM_DRAIN_TIMEOUT")) + float(default("SHELLM_KILL_GRACE"))


# -- .pre-commit-config.yaml


def hooks() -> dict[str, dict]:
    return {h["id"]: h for repo in load_yaml(".pre-commit-config.yaml")["repos"] for h in repo["hooks"]}


def test_pre_commit_config_is_valid():
    tool = shutil.which("pre-commit", path=os.path.dirname(sys.executable))
    if tool is None:
        pytest.skip("pre-commit is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [tool, "validate-config", os.path.join(ROOT, ".pre-commit-config.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_pre_commit_runs_ruff_and_the_fast_tests_before_a_push():
    found = hooks()
    assert found["ruff-check"]["entry"].startswith("ruff check")
    assert found["ruff-format"]["entry"].startswith("ruff format")
    tests = found["fast-tests"]
    assert tests["entry"] == 'python -m pytest -q -m "not slow and not e2e"'
    assert tests["stages"] == ["pre-push"] and tests["pass_filenames"] is False
    assert "pre-push" in load_yaml(".pre-commit-config.yaml")["default_install_hook_types"]


@pytest.mark.parametrize(
    "name",
    [
        ".env",
        "deploy/.env",
        ".env.local",
        "shellm.env",
        "shellm.db",
        "data/usage.sqlite3",
        "shellm.db-wal",
        "server.key",
        "tls/cert.pem",
        "id_ed25519",
    ],
)
def test_pre_commit_refuses_settings_key_and_database_files(name):
    hook = hooks()["no-secret-files"]
    assert hook["language"] == "fail"
    assert re.search(hook["files"], name) and not re.search(hook["exclude"], name)


def test_pre_commit_lets_every_file_of_the_tree_through():
    """
    No file in the repository trips the secret-file hook (the settings
    example, the keys module and the env-example generator included).
    """
    hook = hooks()["no-secret-files"]
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    assert "etc/shellm.env.example" in files
    refused = [f for f in files if re.search(hook["files"], f) and not re.search(hook["exclude"], f)]
    assert refused == []


def test_pre_commit_hook_stops_a_committed_env_file(tmp_path):
    """
    Run by pre-commit in a scratch repository, the hooks that need nothing
    installed fail on a staged C{.env} and a private key, and pass a clean file.
    """
    tool = shutil.which("pre-commit", path=os.path.dirname(sys.executable))
    if tool is None:
        pytest.skip("pre-commit is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"), "GIT_CONFIG_GLOBAL": os.devnull}
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(os.path.join(ROOT, ".pre-commit-config.yaml"), repo)

    def git(*args):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, timeout=60, env=env)

    def hook(name):
        return subprocess.run(
            [tool, "run", name], cwd=repo, capture_output=True, text=True, timeout=120, env=env
        ).returncode

    git("init", "-q")
    (repo / "notes.txt").write_text("nothing secret\n")
    git("add", "notes.txt", ".pre-commit-config.yaml")
    assert (hook("no-secret-files"), hook("no-private-keys")) == (0, 0)
    (repo / ".env").write_text("SHELLM_CLIENTS='{}'\n")
    (repo / "deploy.txt").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    git("add", ".env", "deploy.txt")
    assert (hook("no-secret-files"), hook("no-private-keys")) == (1, 1)


# -- .github/workflows/ci.yml


def test_ci_workflow_matches_the_workflow_schema():
    result = check_jsonschema("vendor.github-workflows", ".github/workflows/ci.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_workflow_runs_ci_run_as_root_on_ubuntu():
    """
    One job on a current Ubuntu runner runs .ci/run under sudo (it installs
    packages with apt-get), within CI's 90 minutes.
    """
    (job,) = load_yaml(".github/workflows/ci.yml")["jobs"].values()
    assert re.fullmatch(r"ubuntu-(latest|2[4-9]\.04)", job["runs-on"])
    assert job["timeout-minutes"] <= 90
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert runs == ["sudo --preserve-env=SHELLM_TEST_CACHE bash .ci/run"]
    assert os.access(os.path.join(ROOT, ".ci", "run"), os.X_OK)
