"""Real servers on 127.0.0.1 for remote-store tests: nginx (HTTP with Range) and S3.

S3 is Ceph's radosgw on a one-OSD memstore cluster (Debian `ceph-mon`, `ceph-osd`, `radosgw`);
moto's ThreadedMotoServer stands in only where Ceph cannot be installed or started, and a
warning then says exactly why. Missing Debian packages are installed with apt-get when we are
root; a test skips only when that is impossible, naming the package and the apt error.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_apt_updated = False


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN_PATH)


def ensure_debian_packages(binaries: list[str], packages: list[str]) -> str | None:
    """Install `packages` unless every binary is already there; the reason when impossible."""
    if all(_which(b) for b in binaries):
        return None
    missing = [b for b in binaries if not _which(b)]
    if os.geteuid() != 0 or not _which("apt-get"):
        return (
            f"{', '.join(missing)} not installed and cannot be installed here "
            f"(needs root and apt-get: apt-get install {' '.join(packages)})"
        )
    global _apt_updated
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = ([] if _apt_updated else [["apt-get", "update", "-qq"]]) + [
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    ]
    for cmd in steps:
        r = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            return f"`{' '.join(cmd)}` failed (exit {r.returncode}): {' | '.join(tail)}"
        _apt_updated = _apt_updated or cmd[1] == "update"
    still = [b for b in binaries if not _which(b)]
    return f"installed {' '.join(packages)} but {', '.join(still)} still missing" if still else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    # Server processes must not outlive a killed pytest run.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )  # noqa: PLW1509 - only prctl
    proc.log = log
    return proc


def stop(procs: list[subprocess.Popen], grace: float = 5.0, sig=signal.SIGTERM) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _tail(path: Path, n: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-n:])
    except OSError:
        return f"(no {path.name})"


def _wait_http(
    url: str, procs: list[subprocess.Popen], log: Path, timeout: float, ca_file: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    context = ssl.create_default_context(cafile=ca_file) if ca_file else None
    while True:
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(
                    f"{Path(p.args[0]).name} exited with {p.returncode}: "
                    f"{_tail(p.log)} | {_tail(log)}"
                )
        try:
            with urllib.request.urlopen(url, timeout=2, context=context):
                return
        except urllib.error.HTTPError:
            return  # it answers: good enough
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{url} did not answer within {timeout:.0f} s: {_tail(log)}"
                ) from None
            time.sleep(0.2)


# ---------------------------------------------------------------- nginx

ACCESS_LOG = re.compile(r'^(\S+) (\S+) (\d{3}) (\d+) "(.*)"$')


@dataclass
class NginxServer:
    root: Path
    url: str  # http(s)://127.0.0.1:PORT (serves `root` at /)
    access_log: Path
    process: subprocess.Popen
    ca_file: Path | None = None  # with tls: the self-signed certificate clients must trust

    def requests(self) -> list[dict]:
        """Every request so far: method, uri, status, bytes (body), range (header or "-")."""
        rows = []
        for line in self.access_log.read_text().splitlines():
            m = ACCESS_LOG.match(line)
            if m:
                rows.append(
                    dict(
                        zip(("method", "uri", "status", "bytes", "range"), m.groups(), strict=False)
                    )
                )
                rows[-1]["status"], rows[-1]["bytes"] = int(m[3]), int(m[4])
        return rows


def _nginx_conf(work: Path, root: Path, port: int, autoindex: bool, tls: bool) -> str:
    temps = "\n".join(
        f"  {k}_temp_path {work / k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root the workers would drop to `nobody`, who cannot enter pytest's 0700 tmp dirs.
    user = "user root root;" if os.geteuid() == 0 else ""
    return f"""
{user}
daemon off;
worker_processes 1;
pid {work / "nginx.pid"};
error_log {work / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
{temps}
  types {{ application/json json; }}
  default_type application/octet-stream;
  log_format ranges '$request_method $uri $status $body_bytes_sent "$http_range"';
  access_log {work / "access.log"} ranges;
  server {{
    listen 127.0.0.1:{port}{" ssl" if tls else ""};
    {f"ssl_certificate {work / 'cert.pem'}; ssl_certificate_key {work / 'key.pem'};" if tls else ""}
    root {root};
    autoindex {"on" if autoindex else "off"};
  }}
}}
"""


def start_nginx(root: Path, work: Path, autoindex: bool = False, tls: bool = False) -> NginxServer:
    """nginx serving `root`; directory listings only with `autoindex` (most static hosts: none);
    https with a fresh self-signed certificate for 127.0.0.1 with `tls`."""
    reason = ensure_debian_packages(["nginx"] + ["openssl"] * tls, ["nginx"] + ["openssl"] * tls)
    if reason:
        pytest.skip(f"nginx unavailable: {reason}")
    work.mkdir(parents=True, exist_ok=True)
    if tls:
        _run(
            [
                _which("openssl"),
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-keyout",
                str(work / "key.pem"),
                "-out",
                str(work / "cert.pem"),
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
            work,
        )
    scheme = "https" if tls else "http"
    for attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(_nginx_conf(work, Path(root).resolve(), port, autoindex, tls))
        cmd = [_which("nginx"), "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
        proc = spawn(cmd, work / "nginx.out", work)
        try:
            _wait_http(
                f"{scheme}://127.0.0.1:{port}/.ready-probe",
                [proc],
                work / "error.log",
                timeout=20,
                ca_file=work / "cert.pem" if tls else None,
            )
        except RuntimeError as e:
            stop([proc])
            if "Address already in use" in str(e) and attempt < 2:
                continue
            raise
        return NginxServer(
            Path(root),
            f"{scheme}://127.0.0.1:{port}",
            work / "access.log",
            proc,
            work / "cert.pem" if tls else None,
        )


@pytest.fixture
def nginx_server(tmp_path_factory):
    """Factory: `nginx_server(root_dir, autoindex=False, tls=False) -> NginxServer`; all stop
    at teardown."""
    started: list[NginxServer] = []

    def start(root, autoindex: bool = False, tls: bool = False) -> NginxServer:
        server = start_nginx(Path(root), tmp_path_factory.mktemp("nginx"), autoindex, tls)
        started.append(server)
        return server

    yield start
    stop([s.process for s in started])


# ---------------------------------------------------------------- S3

CEPH_PACKAGES = ["ceph-mon", "ceph-osd", "radosgw", "ceph-common"]
CEPH_BINARIES = ["ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph"]


@dataclass
class S3Server:
    endpoint_url: str
    key: str
    secret: str
    bucket: str
    kind: str  # "ceph-radosgw" | "moto"
    note: str = ""  # why moto, when it is moto
    _stop: list = field(default_factory=list, repr=False)

    @property
    def storage_options(self) -> dict:
        return {"key": self.key, "secret": self.secret, "endpoint_url": self.endpoint_url}


def _ceph_conf(work: Path, fsid: str, mon_port: int, rgw_port: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
# daemons default to "secure", which no-auth cannot provide
ms mon client mode = crc
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail crit = 0
mon max pg per osd = 1000
# commit cluster maps at once, not every second: radosgw starts in ~2 s instead of ~11 s
paxos propose interval = 0.05
paxos min wait = 0.01
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = {2 << 30}
run dir = {work}/run
admin socket = {work}/run/$name.asok
pid file = {work}/run/$name.pid
log file = {work}/log/$name.log
mon data = {work}/mon/$name
osd data = {work}/osd/$name
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {work}/rgw
"""


def _run(cmd: list[str], work: Path, timeout: float = 60) -> str:
    r = subprocess.run(cmd, check=False, cwd=work, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        raise RuntimeError(
            f"`{Path(cmd[0]).name} {' '.join(cmd[1:])}` exited {r.returncode}: {tail}"
        )
    return r.stdout


def start_ceph(work: Path, bucket: str) -> S3Server:
    """A one-node Ceph (mon + memstore OSD + radosgw) on free 127.0.0.1 ports, with a user and
    bucket."""
    for d in ("run", "log", "mon", "osd/osd.0", "rgw"):
        (work / d).mkdir(parents=True, exist_ok=True)
    fsid, osd_uuid = str(uuid.uuid4()), str(uuid.uuid4())
    mon_port, rgw_port = free_port(), free_port()
    conf = work / "ceph.conf"
    conf.write_text(_ceph_conf(work, fsid, mon_port, rgw_port))
    c = ["-c", str(conf)]
    procs: list[subprocess.Popen] = []
    try:
        _run(
            [
                _which("monmaptool"),
                "--create",
                "--addv",
                "a",
                f"[v2:127.0.0.1:{mon_port}]",
                "--fsid",
                fsid,
                str(work / "monmap"),
            ],
            work,
        )
        _run([_which("ceph-mon"), *c, "--mkfs", "-i", "a", "--monmap", str(work / "monmap")], work)
        procs.append(spawn([_which("ceph-mon"), *c, "-i", "a", "-f"], work / "log/mon.out", work))
        osd_id = _run(
            [_which("ceph"), *c, "--connect-timeout", "30", "osd", "new", osd_uuid], work
        ).strip()
        _run([_which("ceph-osd"), *c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid], work)
        procs.append(
            spawn([_which("ceph-osd"), *c, "-i", osd_id, "-f"], work / "log/osd.out", work)
        )
        procs.append(
            spawn([_which("radosgw"), *c, "-n", "client.rgw", "-f"], work / "log/rgw.out", work)
        )
        endpoint = f"http://127.0.0.1:{rgw_port}"
        _wait_http(endpoint + "/", procs, work / "log/client.rgw.log", timeout=90)
        key, secret = "ETHOPRISMTESTKEY", "ethoprism-test-secret"
        _run(
            [
                _which("radosgw-admin"),
                *c,
                "user",
                "create",
                "--uid=ethoprism",
                "--display-name=ethoprism",
                f"--access-key={key}",
                f"--secret={secret}",
            ],
            work,
        )
        server = S3Server(
            endpoint,
            key,
            secret,
            bucket,
            "ceph-radosgw",
            _stop=[lambda: stop(procs, sig=signal.SIGKILL)],
        )  # all in memory: nothing to save
        _make_bucket(server)
        return server
    except BaseException:
        stop(procs, sig=signal.SIGKILL)
        raise


def start_moto(bucket: str, note: str) -> S3Server:
    from moto.server import ThreadedMotoServer

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    server = S3Server(
        f"http://127.0.0.1:{port}",
        "testing",
        "testing",
        bucket,
        "moto",
        note=note,
        _stop=[moto.stop],
    )
    _make_bucket(server)
    return server


def _make_bucket(server: S3Server) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(
        key=server.key,
        secret=server.secret,
        skip_instance_cache=True,
        client_kwargs={"endpoint_url": server.endpoint_url},
    )
    fs.mkdir(server.bucket)
    if server.bucket not in [p.rstrip("/") for p in fs.ls("")]:
        raise RuntimeError(f"bucket {server.bucket} not listed after creation")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 endpoint on 127.0.0.1 with an empty bucket `ethoprism`, for the whole session."""
    reason = ensure_debian_packages(CEPH_BINARIES, CEPH_PACKAGES)
    server = None
    if reason is None:
        try:
            server = start_ceph(tmp_path_factory.mktemp("ceph"), "ethoprism")
        except Exception as e:  # noqa: BLE001 - any failure means: fall back, saying why
            reason = f"Ceph radosgw did not start: {e}"
    if server is None:
        try:
            server = start_moto("ethoprism", note=reason)
        except ImportError as e:
            pytest.skip(f"no S3 server: {reason}; moto[server] not importable either: {e}")
        warnings.warn(f"S3 tests run against moto, not Ceph: {reason}", stacklevel=1)
    yield server
    for f in server._stop:
        f()
