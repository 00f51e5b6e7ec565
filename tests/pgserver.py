"""A throwaway PostgreSQL 15 cluster for the test session.

PostgreSQL refuses to run as root, so when we are root the cluster belongs to
an unprivileged system user (``postgres``).  Local roles log in with trust on
a private socket directory (mode 0700); TCP on 127.0.0.1 uses SCRAM so the
password path is testable too.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SUPERUSER = "postgres"


def _bindir() -> Path:
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(os.path.realpath(pg_ctl)).parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    raise RuntimeError("PostgreSQL server binaries (pg_ctl, initdb) not found on PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    datadir: Path
    sockdir: Path
    port: int
    bindir: Path
    os_user: str | None

    @property
    def host(self) -> str:
        return str(self.sockdir)

    def dsn(self, dbname: str = "postgres", user: str = SUPERUSER) -> str:
        return f"host={self.sockdir} port={self.port} dbname={dbname} user={user}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.os_user:
            cmd = ["runuser", "-u", self.os_user, "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True)

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.datadir / "server.log"), "-w", "-t", "60",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.datadir / "server.log"), "-m", "fast",
                  "-w", "restart")


def start_server() -> PgServer:
    bindir = _bindir()
    os_user = None
    if os.geteuid() == 0:
        os_user = "postgres"
        try:
            pwd.getpwnam(os_user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", os_user],
                           check=True)
    base = Path(tempfile.mkdtemp(prefix="durable-pg-"))
    datadir, sockdir = base / "data", base / "sock"
    sockdir.mkdir()
    os.chmod(base, 0o755)
    os.chmod(sockdir, 0o700)
    if os_user:
        uid = pwd.getpwnam(os_user).pw_uid
        gid = pwd.getpwnam(os_user).pw_gid
        for p in (base, sockdir):
            os.chown(p, uid, gid)
    server = PgServer(datadir=datadir, sockdir=sockdir, port=_free_port(), bindir=bindir, os_user=os_user)
    server._run("initdb", "-D", str(datadir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-locale")
    with open(datadir / "postgresql.conf", "a") as conf:
        conf.write(
            f"port = {server.port}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{sockdir}'\n"
            "unix_socket_permissions = 0700\n"
            "max_connections = 300\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            "shared_buffers = 128MB\n"
            "password_encryption = 'scram-sha-256'\n"
            "log_min_messages = warning\n"
        )
    (datadir / "pg_hba.conf").write_text(
        "local all all trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    server.start()
    deadline = time.time() + 30
    while not (sockdir / f".s.PGSQL.{server.port}").exists():
        if time.time() > deadline:
            raise RuntimeError("PostgreSQL did not open its socket")
        time.sleep(0.1)
    return server


def destroy(server: PgServer) -> None:
    try:
        server.stop("immediate")
    except subprocess.CalledProcessError:
        pass
    shutil.rmtree(server.datadir.parent, ignore_errors=True)
