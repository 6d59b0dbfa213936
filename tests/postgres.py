"""
Throwaway PostgreSQL clusters for the tests: C{initdb} in a temporary
directory as the unprivileged C{postgres} user, on a free loopback port,
removed afterwards.  Without PostgreSQL the tests that need it are
skipped, unless C{SHELLM_REQUIRE_POSTGRES=1} (CI) makes that a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid

import pytest

from tests.daemon import free_port

REQUIRED = os.environ.get("SHELLM_REQUIRE_POSTGRES") == "1"


def find_bin() -> str | None:
    """
    The newest PostgreSQL server binaries installed, or L{None}.
    """
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


def unavailable_reason() -> str | None:
    if find_bin() is None:
        return "PostgreSQL is not installed (apt-get install -y postgresql)"
    if shutil.which("runuser") is None:
        return "runuser is missing"
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        return "there is no postgres user to run the cluster as"
    if os.geteuid() != 0:
        return "starting a cluster as the postgres user needs root"
    return None


def require_postgres() -> None:
    """
    Skip (or, in CI, fail) when a cluster cannot be started here.
    """
    reason = unavailable_reason()
    if reason is None:
        return
    if REQUIRED:
        pytest.fail(f"SHELLM_REQUIRE_POSTGRES=1 but {reason}", pytrace=False)
    pytest.skip(reason)


class PostgresCluster:
    """
    One cluster: C{start}, C{stop} (to simulate an outage, then C{start}
    again on the same port), C{new_database}, C{remove}.
    """

    def __init__(self):
        self.bin = find_bin()
        # In memory where there is a tmpfs: creating and dropping hundreds of
        # databases on a busy disk made the cluster's removal alone take minutes.
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="shellm-pg-", dir=shm)
        os.chmod(self.dir, 0o700)
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        # Blocking on purpose: fixtures set up before the reactor runs the test.
        result = subprocess.run(
            ["runuser", "-u", "postgres", "--", os.path.join(self.bin, tool), *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.dir,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-o", options, "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """
        A fresh, empty database; its URL.
        """
        import psycopg

        name = f"shellm_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def drop_database(self, url: str) -> None:
        """
        Drop a database made by L{new_database}, whoever is still connected
        (a cluster stopped by its test is left as it is).
        """
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5) as connection:
                connection.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
        except psycopg.OperationalError:
            pass

    def remove(self) -> None:
        try:
            self.stop()
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def start_cluster() -> PostgresCluster:
    require_postgres()
    cluster = PostgresCluster()
    try:
        cluster.start()
    except Exception:
        cluster.remove()
        raise
    return cluster
