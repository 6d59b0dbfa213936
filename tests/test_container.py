"""
The development container as a user runs it: the Dockerfile built with
podman, then run the way compose.yaml runs it (read-only root, tmpfs, named
volumes, the port on 127.0.0.1), with the fake claude bind-mounted as its
claude.

No image registry is needed: the Dockerfile's Debian base is made here with
mmdebstrap and imported, and kept (a tarball under C{$SHELLM_TEST_CACHE},
default C{~/.cache/shellm-tests}, and the imported image) for the next run.
Needs C{podman}, C{runc}, C{mmdebstrap} and C{debian-archive-keyring}
(Debian packages); without them the test is skipped, and fails under
C{CI=true}.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest
from ruamel.yaml import YAML

from tests.conftest import fake_cli
from tests.daemon import free_port, wait_until

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILE = os.path.join(ROOT, "Dockerfile")
COMPOSE = os.path.join(ROOT, "compose.yaml")
MIRROR = "http://deb.debian.org/debian"
#: Like Debian's slim images: no manuals, documentation or translations.
MMDEBSTRAP_OPTIONS = (
    "--variant=apt",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
)
#: Certificate authorities this machine adds to Debian's (a proxy of its
#: own, say): the image's pip must trust what this machine's pip trusts.
LOCAL_CAS = "/usr/local/share/ca-certificates"
CLIENT_KEY = "container-test-key-0123456789"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def cache_dir() -> str:
    path = os.environ.get("SHELLM_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "shellm-tests")
    os.makedirs(path, exist_ok=True)
    return path


def dockerfile_base() -> str:
    (base,) = re.findall(r"(?m)^ARG BASE=(\S+)$", open(DOCKERFILE, encoding="utf-8").read())
    return base


def keyring() -> list[str]:
    """
    Debian's archive keys, named outright where they are installed as a
    package (an Ubuntu host does not trust them for apt by default).
    """
    path = "/usr/share/keyrings/debian-archive-keyring.gpg"
    return [f"--keyring={path}"] if os.path.exists(path) else []


def local_cas() -> list[str]:
    if not os.path.isdir(LOCAL_CAS):
        return []
    return sorted(os.path.join(LOCAL_CAS, n) for n in os.listdir(LOCAL_CAS) if n.endswith(".crt"))


class Podman:
    """
    podman as this machine can run it: runc, no default ulimits, chroot
    isolation for builds.
    """

    def __init__(self, conf_dir):
        conf = os.path.join(conf_dir, "containers.conf")
        with open(conf, "w") as f:
            f.write("[containers]\ndefault_ulimits = []\n")
        self.env = {**os.environ, "CONTAINERS_CONF": conf}

    def __call__(self, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            ["podman", "--runtime", "runc", *args], capture_output=True, text=True, timeout=timeout, env=self.env
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: exit {result.returncode}\n{result.stderr[-3000:]}")
        return result


def base_image(podman: Podman) -> str:
    """
    A local image of the Dockerfile's default base (Debian, the suite its
    tag names), built once with mmdebstrap and cached.
    """
    suite = dockerfile_base().rsplit(":", 1)[1].removesuffix("-slim")
    key = hashlib.sha256("\n".join([suite, MIRROR, *MMDEBSTRAP_OPTIONS]).encode())
    for ca in local_cas():
        key.update(open(ca, "rb").read())
    name = f"localhost/shellm-test-base:{suite}-{key.hexdigest()[:12]}"
    cache = cache_dir()
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if podman("image", "exists", name, check=False).returncode == 0:
            return name
        tarball = os.path.join(cache, name.rsplit("/", 1)[1].replace(":", "-") + ".tar")
        if not os.path.exists(tarball):
            partial = tarball.removesuffix(".tar") + ".part.tar"  # mmdebstrap picks the format by extension
            copy_cas = f'mkdir -p "$1{LOCAL_CAS}"' + "".join(f' && cp {ca} "$1{LOCAL_CAS}/"' for ca in local_cas())
            result = subprocess.run(
                [
                    "mmdebstrap",
                    "--quiet",
                    *MMDEBSTRAP_OPTIONS,
                    f"--customize-hook={copy_cas}",
                    *keyring(),
                    suite,
                    partial,
                    MIRROR,
                ],
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
            os.rename(partial, tarball)
        podman("import", tarball, name, timeout=300)
    return name


def compose_service() -> dict:
    (service,) = YAML(typ="safe").load(open(COMPOSE, encoding="utf-8"))["services"].values()
    return service


def run_as_compose(podman: Podman, image: str, name: str, port: int, env_file: str, environment: dict) -> None:
    """
    Start the image with compose.yaml's settings, the port on C{port}, named
    volumes prefixed with C{name}, C{env_file} as its env file and
    C{environment} for its environment (in place of the file's).
    """
    service = compose_service()
    args = ["run", "--detach", "--name", name, "--env-file", env_file]
    if service.get("read_only"):
        # Only the tmpfs compose names, as with docker.
        args += ["--read-only", "--read-only-tmpfs=false"]
    for path in service.get("tmpfs", []):
        args += ["--tmpfs", path]
    for volume in service.get("volumes", []):
        source, target = volume.split(":", 1)
        args += ["--volume", f"{name}-{source}:{target}"]
    (published,) = service["ports"]
    interface, _, container_port = published.split(":")
    args += ["--publish", f"{interface}:{port}:{container_port}"]
    for key, value in environment.items():
        args += ["--env", f"{key}={value}"]
    # The fake claude runs on the engine beside it: the whole folder goes in.
    fakes = os.path.dirname(fake_cli("claude"))
    args += ["--volume", f"{fakes}:/opt/fakes:ro", image]
    podman(*args)


def wait_for_health(url: str, timeout: float = 60) -> dict:
    def health() -> dict | None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                return json.loads(response.read())
        except (OSError, urllib.error.URLError):
            return None

    return wait_until(health, timeout=timeout, what=f"{url}/health to answer")


def post(url: str, body: dict, key: str | None = None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture
def podman(tmp_path):
    missing = [tool for tool in ("podman", "runc", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        message = f"missing {', '.join(missing)} (apt-get install podman runc mmdebstrap)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return Podman(str(tmp_path))


@pytest.fixture
def image(podman):
    """
    The image built from this tree on the local base (its layers stay
    cached for the next run).
    """
    tag = "localhost/shellm-test:dev"
    podman(
        "build",
        "--isolation",
        "chroot",
        "--format",
        "docker",
        "--build-arg",
        f"BASE={base_image(podman)}",
        "--tag",
        tag,
        ROOT,
        timeout=900,
    )
    return tag


@pytest.fixture
def containers(podman):
    """
    Names for the test's containers; they and their volumes are removed after.
    """
    names: list[str] = []

    def new() -> str:
        names.append(f"shellm-test-{uuid.uuid4().hex[:12]}")
        return names[-1]

    yield new
    for name in names:
        podman("rm", "--force", "--time", "0", name, check=False)
        volumes = podman("volume", "ls", "--quiet", "--filter", f"name=^{name}-", check=False).stdout.split()
        if volumes:
            podman("volume", "rm", "--force", *volumes, check=False)


@pytest.mark.timeout(1500)
def test_image_serves_completions_as_compose_runs_it(podman, image, containers, tmp_path):
    """
    Run as compose.yaml runs it, the image answers /health on the published
    port, completes with the fake claude as a non-root user on a read-only
    root, keeps the usage database in its volume, and its HEALTHCHECK passes.
    Without client keys and without SHELLM_ALLOW_OPEN it refuses to start,
    saying why; with keys it asks for one.
    """
    env_file = tmp_path / "env"
    env_file.write_text(
        "SHELLM_CLAUDE_BIN=/opt/fakes/fake_claude.py\n"
        'SHELLM_CLAUDE_ENV={"ANTHROPIC_API_KEY": "fake", "FAKE_TEXT": "Hello from the container"}\n'
    )
    compose_env = {k: str(v) for k, v in compose_service()["environment"].items()}
    assert compose_env == {"SHELLM_ALLOW_OPEN": "1"}

    name, port = containers(), free_port()
    run_as_compose(podman, image, name, port, str(env_file), compose_env)
    url = f"http://127.0.0.1:{port}"
    health = wait_for_health(url)
    assert health["status"] in ("ok", "degraded")
    # Auth is off, so /health shows every detail.
    assert (health["providers"]["claude"]["installed"], health["providers"]["claude"]["authenticated"]) == (True, True)
    status, body = post(url + "/completions", {"model": "claude", "prompt": "Say hello"})
    assert (status, body["content"], body["provider"]) == (200, "Hello from the container", "claude")
    assert podman("healthcheck", "run", name, check=False).returncode == 0
    inside = podman("exec", name, "sh", "-c", "id -u; ls /home/shellm/.shellm; touch / 2>&1; touch ~/.cache/x").stdout
    uid, *rest = inside.splitlines()
    assert uid != "0"
    assert "shellm.db" in rest
    assert "Read-only file system" in inside
    started = time.monotonic()
    podman("stop", "--time", "45", name)
    assert time.monotonic() - started < 15  # SIGTERM reached twistd, which had nothing to drain

    # The image alone (no SHELLM_ALLOW_OPEN from compose, no keys) refuses to serve.
    refused = containers()
    run_as_compose(podman, image, refused, free_port(), str(env_file), {})
    exit_code = podman("wait", refused, timeout=60).stdout.strip()
    logs = podman("logs", refused).stderr + podman("logs", refused).stdout
    assert exit_code != "0"
    assert "SHELLM_CLIENTS is not set, so anyone could use it" in logs

    # With keys, no SHELLM_ALLOW_OPEN is needed, and requests need a key.
    clients = {"test": {"key": CLIENT_KEY}}
    keyed, port = containers(), free_port()
    run_as_compose(podman, image, keyed, port, str(env_file), {"SHELLM_CLIENTS": json.dumps(clients)})
    url = f"http://127.0.0.1:{port}"
    assert wait_for_health(url)["providers"]["claude"] == {"usable": True}  # the summary, without a key
    assert post(url + "/completions", {"model": "claude", "prompt": "Say hello"})[0] == 401
    status, body = post(url + "/completions", {"model": "claude", "prompt": "Say hello"}, key=CLIENT_KEY)
    assert (status, body["content"]) == (200, "Hello from the container")
