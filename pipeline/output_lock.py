"""One run at a time per output folder: a lease object with a heartbeat.

Two drivers on one output (a supervisor restarting a job while the old driver
lives, a user starting it twice) would both redo the same ids and write them
twice, and the second would delete the first's temporary files. So a run first
takes ``<output>/.zipvl/lock.json`` with a conditional create: ``O_CREAT|O_EXCL``
locally, ``PutObject`` with ``If-None-Match: *`` on S3 (SeaweedFS and AWS S3
honour it; a store that ignores it would let two creators both win, which the
heartbeat then detects). The lease names its holder (run id, host, pid) and is
rewritten every ``ttl / 4`` seconds (on S3 with ``If-Match`` on the ETag it
read, so a taken-over lease is never overwritten). A lease is stale when its
heartbeat is older than ``output.lock_ttl_seconds``, or at once when its holder
ran on this host and that process is gone; a stale lease is taken over, so a
crashed run never blocks the rerun for longer than the TTL. A run that finds its
lease taken over stops (``LockLost``) before it writes another shard.
"""

from __future__ import annotations

import json
import os
import posixpath
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.errors import JobError

LOCK_NAME = ".zipvl/lock.json"
# Run ids whose lease this process holds now: a lease naming this process but none of
# these was left by an earlier run in it whose release failed (storage down), so it is stale.
_HELD_HERE: set[str] = set()


class OutputLocked(JobError):
    """Another live run holds the output folder."""


class LockLost(JobError):
    """This run's lease was taken over (its heartbeat stalled past the TTL)."""


@dataclass(frozen=True)
class Lease:
    run_id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    ttl_seconds: float

    def is_stale(self, now: float) -> bool:
        if now - self.heartbeat_at > self.ttl_seconds:
            return True
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return self.run_id not in _HELD_HERE
        return not _process_alive(self.pid)

    def describe(self) -> str:
        age = time.time() - self.heartbeat_at
        return (f"run {self.run_id} (host {self.host}, pid {self.pid}, last heartbeat "
                f"{age:.0f} s ago; it lapses {self.ttl_seconds:.0f} s after its last heartbeat)")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class LocalLeaseStore:
    """The lease as a local file; the token is the content last read or written."""

    def __init__(self, path: str) -> None:
        self.path = path

    def create(self, data: bytes) -> Any | None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return data

    def read(self) -> tuple[bytes, Any] | None:
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return data, data

    def replace(self, data: bytes, token: Any) -> Any | None:
        current = self.read()
        if current is None or current[1] != token:
            return None
        temp = f"{self.path}.{secrets.token_hex(4)}.tmp"
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.path)
        return data

    def delete(self, token: Any) -> None:
        current = self.read()
        if current is not None and current[1] == token:
            os.remove(self.path)


class S3LeaseStore:
    """The lease as an S3 object, created with If-None-Match and rewritten with If-Match."""

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self.client, self.bucket, self.key = client, bucket, key

    def _put(self, data: bytes, **condition: str) -> Any | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data,
                                              **condition)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
                return None
            raise
        return response["ETag"]

    def create(self, data: bytes) -> Any | None:
        return self._put(data, IfNoneMatch="*")

    def read(self) -> tuple[bytes, Any] | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return response["Body"].read(), response["ETag"]

    def replace(self, data: bytes, token: Any) -> Any | None:
        return self._put(data, IfMatch=token)

    def delete(self, token: Any) -> None:
        current = self.read()
        if current is not None and current[1] == token:
            self.client.delete_object(Bucket=self.bucket, Key=self.key)


class OutputLock:
    """This run's hold on an output folder: ``acquire``, ``check`` after each batch, ``release``."""

    def __init__(self, store: Any, run_id: str, ttl_seconds: float, where: str) -> None:
        self.store, self.run_id, self.ttl_seconds, self.where = store, run_id, ttl_seconds, where
        self._token: Any = None
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _lease_bytes(self, started_at: float) -> bytes:
        lease = Lease(self.run_id, socket.gethostname(), os.getpid(), started_at, time.time(),
                      self.ttl_seconds)
        return json.dumps(asdict(lease)).encode()

    def acquire(self) -> None:
        started_at = time.time()
        for _ in range(3):  # a lease may vanish or change between our read and our write
            token = self.store.create(self._lease_bytes(started_at))
            if token is not None:
                self._token = token
                break
            current = self.store.read()
            if current is None:
                continue
            held = parse_lease(current[0])
            if held is not None and not held.is_stale(time.time()):
                raise OutputLocked(
                    f"output.path: {self.where} is being written by another {held.describe()}. "
                    "Wait for it to finish, stop it, or choose another output.path; if that run is "
                    f"dead on another machine, its lock lapses by itself (or delete {LOCK_NAME} "
                    "in the output folder).")
            token = self.store.replace(self._lease_bytes(started_at), current[1])  # take over
            if token is not None:
                self._token = token
                break
        else:
            raise OutputLocked(f"output.path: could not take the lock on {self.where}: other runs "
                               "keep changing it")
        _HELD_HERE.add(self.run_id)
        self._thread = threading.Thread(target=self._beat, args=(started_at,), daemon=True,
                                        name="zipvl-output-lock")
        self._thread.start()

    def _beat(self, started_at: float) -> None:
        while not self._stop.wait(self.ttl_seconds / 4):
            try:
                token = self.store.replace(self._lease_bytes(started_at), self._token)
            except Exception:  # noqa: BLE001 (a failed heartbeat is retried next beat)
                continue
            if token is None:
                current = self.store.read()
                holder = parse_lease(current[0]) if current else None
                self._lost = (f"this run's lock on {self.where} was taken over by "
                              f"{holder.describe() if holder else 'another run'}: its heartbeat "
                              "stalled past output.lock_ttl_seconds. Stopping so that both runs "
                              "do not write the same rows; rerun to resume.")
                return
            self._token = token

    def check(self) -> None:
        """Raise ``LockLost`` if another run has taken the lease over."""
        if self._lost is not None:
            raise LockLost(self._lost)

    def release(self) -> None:
        _HELD_HERE.discard(self.run_id)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ttl_seconds)
        if self._lost is None and self._token is not None:
            try:
                self.store.delete(self._token)
            except Exception:  # noqa: BLE001, S110 (a leftover lease lapses by itself)
                pass


def parse_lease(data: bytes) -> Lease | None:
    """The lease in a lock file's bytes, or None when they are not one (treated as stale)."""
    try:
        return Lease(**json.loads(data))
    except (ValueError, TypeError):
        return None


def lock_for_output(output_uri: str, output_dir: str, storage_options: Any, run_id: str,
                    ttl_seconds: float) -> OutputLock:
    """The (not yet acquired) lock of an output folder; `output_dir` as ``filesystem_for`` gives it."""
    from pipeline.storage import is_s3, s3_client

    if is_s3(output_uri):
        bucket, _, prefix = output_dir.partition("/")
        store: Any = S3LeaseStore(s3_client(storage_options), bucket,
                                  posixpath.join(prefix, LOCK_NAME) if prefix else LOCK_NAME)
    else:
        store = LocalLeaseStore(os.path.join(output_dir, LOCK_NAME))
    return OutputLock(store, run_id, ttl_seconds, output_uri)
