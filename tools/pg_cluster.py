"""A throwaway Postgres cluster for the store and queue suites and bench/bench_pg_wakeup.py.

Debian's postgresql package (the Makefile installs it) provides initdb and pg_ctl. pg_ctl refuses to
run as root, and CI runs as root, so as root the cluster runs as an unprivileged system user (the
package's `postgres` user, else one created here). It listens on 127.0.0.1 only, on a free port,
with fsync off (a throwaway cluster: speed over durability), in a temp dir removed at stop().

    cluster = PgCluster.start()
    url = cluster.create_database()      # a fresh, empty database (schema) per test
    ...
    cluster.stop()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "modelmill"
FALLBACK_OS_USER = "modelmill-pg"


class PgUnavailable(RuntimeError):
    """Postgres could not be started here; the message says why."""


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise PgUnavailable("initdb not found: install Debian's postgresql package (make install does when root)")


def _os_user() -> str | None:
    """The user the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", FALLBACK_OS_USER):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            pass
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_OS_USER],
                   check=True, capture_output=True)
    return FALLBACK_OS_USER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgCluster:
    dir: Path
    port: int
    bindir: Path
    os_user: str | None

    @property
    def admin_url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    @classmethod
    def start(cls) -> "PgCluster":
        bindir, user = _bindir(), _os_user()
        root = Path(tempfile.mkdtemp(prefix="modelmill-pg-"))
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        cluster = cls(root, _free_port(), bindir, user)
        try:
            cluster._run("initdb", "-D", str(root / "data"), "-U", SUPERUSER, "-A", "trust", "--no-sync",
                         "-E", "UTF8", "--locale=C")
            opts = (f"-c listen_addresses=127.0.0.1 -p {cluster.port} -c unix_socket_directories={root}"
                    " -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
            cluster._run("pg_ctl", "-D", str(root / "data"), "-l", str(root / "log"), "-o", opts, "-w", "-t", "60",
                         "start")
        except PgUnavailable:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cluster

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.os_user is not None:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir)
        if r.returncode != 0:
            log = (self.dir / "log").read_text(errors="replace")[-2000:] if (self.dir / "log").exists() else ""
            raise PgUnavailable(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-2000:]}\n{log}")

    def create_database(self) -> str:
        """The URL of a new, empty database: a schema of its own in the cluster's `postgres` database,
        named by the URL's search_path (CREATE DATABASE takes about a second here, a schema nothing)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.admin_url}?options=-csearch_path%3D{name}"

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("%3D", 1)[1]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
