"""pipeline.storage against the local disk and a real S3 server (SeaweedFS, tests/s3_server.py)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline import storage
from pipeline.redaction import redact

if TYPE_CHECKING:
    from tests.s3_server import S3Server

pytest_plugins = ["tests.s3_server"]


def _put(uri: str, data: bytes, storage_options=None) -> None:
    """Write one object through the filesystem the pipeline resolves."""
    filesystem, path = storage.resolve_filesystem(uri, storage_options)
    with filesystem.open_output_stream(path) as stream:
        stream.write(data)


def _list(directory_uri: str, suffix: str, storage_options=None) -> list[str]:
    """The files under a folder, as URIs, through the filesystem the pipeline resolves."""
    filesystem, path = storage.resolve_filesystem(directory_uri, storage_options)
    infos = filesystem.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True))
    return sorted(f"s3://{info.path}" for info in infos
                  if info.type == pafs.FileType.File and info.path.endswith(suffix))


def _sample_table(num_rows: int = 17) -> pa.Table:
    return pa.table(
        {
            "id": [f"row-{index:03d}" for index in range(num_rows)],
            "image": [bytes([index % 256]) * (index + 1) for index in range(num_rows)],
            "score": [index / 7 for index in range(num_rows)],
        }
    )


def _write_parquet(uri: str, table: pa.Table, storage_options=None) -> None:
    filesystem, path = storage.resolve_filesystem(uri, storage_options)
    pq.write_table(table, path, filesystem=filesystem)


def _read_parquet(uri: str, storage_options=None) -> pa.Table:
    filesystem, path = storage.resolve_filesystem(uri, storage_options)
    return pq.read_table(path, filesystem=filesystem)


# ---------------------------------------------------------------- local paths


def test_relative_local_path_resolves_to_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    filesystem, path = storage.resolve_filesystem("data/input.parquet")
    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert path == os.path.join(str(tmp_path), "data", "input.parquet")


def test_file_uri_and_plain_path_name_the_same_file(tmp_path):
    table = _sample_table()
    _write_parquet(str(tmp_path / "a.parquet"), table)
    _, path = storage.resolve_filesystem(f"file://{tmp_path}/a.parquet")
    assert path == str(tmp_path / "a.parquet")
    assert _read_parquet(f"file://{tmp_path}/a.parquet").equals(table)


def test_unsupported_scheme_is_a_clear_error():
    with pytest.raises(storage.StorageError, match="unsupported storage scheme 'gs'"):
        storage.resolve_filesystem("gs://bucket/key")


# ----------------------------------------------------------------- redaction


def test_redact_hides_every_secret_and_keeps_the_rest():
    options = {
        "endpoint_url": "http://user:hunter2@127.0.0.1:9000",
        "region": "eu-west-3",
        "access_key": "AKIAEXAMPLE",
        "secret_key": "value-of-secret",
        "session_token": "value-of-token",
        "nested": {"db_password": "value-of-pw", "AWS_SECRET_ACCESS_KEY": "value-2", "anonymous": False},
        "force_path_style": True,
    }
    redacted = redact(options)
    text = repr(redacted)
    for secret in ("AKIAEXAMPLE", "value-", "hunter2", "user:"):
        assert secret not in text
    assert redacted["region"] == "eu-west-3"
    assert redacted["force_path_style"] is True
    assert redacted["nested"]["anonymous"] is False
    assert redacted["endpoint_url"] == "http://***@127.0.0.1:9000"
    assert options["secret_key"] == "value-of-secret"  # the input is not modified


def test_storage_options_repr_and_validation_errors_hide_secrets():
    options = storage.StorageOptions(access_key="AKIAEXAMPLE", secret_key="s3cr3t")
    assert "s3cr3t" not in repr(options) and "AKIAEXAMPLE" not in str(options)
    with pytest.raises(ValueError, match="access_key and secret_key") as caught:
        storage.resolve_filesystem("s3://bucket/key", {"access_key": "AKIAEXAMPLE"})
    assert "AKIAEXAMPLE" not in str(caught.value)
    with pytest.raises(ValueError, match="secret_access_key"):
        storage.resolve_filesystem("s3://bucket/key", {"secret_access_key": "s3cr3t"})


# ------------------------------------------------------- S3 configuration


def test_endpoint_precedence_follows_the_aws_standard(aws_isolated, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert storage.resolve_s3_settings().endpoint_url == "http://127.0.0.1:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")
    assert storage.resolve_s3_settings().endpoint_url == "http://127.0.0.1:2"
    overridden = storage.resolve_s3_settings({"endpoint_url": "http://127.0.0.1:3"})
    assert overridden.endpoint_url == "http://127.0.0.1:3"
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert storage.resolve_s3_settings().endpoint_url is None


def test_region_precedence(aws_isolated, monkeypatch, tmp_path):
    config = tmp_path / "config"
    config.write_text("[default]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert storage.resolve_s3_settings().region == "ap-south-1"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert storage.resolve_s3_settings().region == "eu-central-1"
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    assert storage.resolve_s3_settings().region == "eu-west-3"
    assert storage.resolve_s3_settings({"region": "us-west-2"}).region == "us-west-2"


def _constructor_arguments(filesystem: pafs.S3FileSystem) -> dict:
    """What the filesystem was built with (what a Ray worker receives when it is pickled)."""
    return filesystem.__reduce__()[1][0]


def test_filesystem_arguments_follow_the_settings(aws_isolated, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id-from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    arguments = _constructor_arguments(storage.resolve_filesystem("s3://bucket/key")[0])
    assert (arguments["scheme"], arguments["endpoint_override"]) == ("http", "127.0.0.1:9000")
    # Found by the AWS SDK in the environment, where it stays refreshable: never frozen
    # into the filesystem (which a task would carry pickled).
    assert not arguments.get("access_key") and not arguments.get("secret_key")
    assert arguments["force_virtual_addressing"] is False  # path-style for a custom endpoint

    virtual = storage.resolve_filesystem("s3://bucket/key", {"force_path_style": False})[0]
    assert _constructor_arguments(virtual)["force_virtual_addressing"] is True

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    aws = _constructor_arguments(storage.resolve_filesystem("s3://b/k", {"region": "eu-west-3"})[0])
    assert aws["endpoint_override"] == "" and aws["region"] == "eu-west-3"
    path_style = storage.resolve_filesystem("s3://b/k", {"region": "eu-west-3", "force_path_style": True})
    assert _constructor_arguments(path_style[0])["endpoint_override"] == "s3.eu-west-3.amazonaws.com"

    anonymous = _constructor_arguments(storage.resolve_filesystem("s3://b/k", {"anonymous": True})[0])
    assert anonymous["anonymous"] is True and not anonymous["secret_key"]


def test_s3_uri_resolves_to_bucket_and_key(s3_env):
    filesystem, path = storage.resolve_filesystem("s3://my-bucket/some/prefix/file.parquet")
    assert isinstance(filesystem, pafs.S3FileSystem)
    assert path == "my-bucket/some/prefix/file.parquet"
    assert storage.resolve_filesystem("s3://my-bucket/")[1] == "my-bucket"
    with pytest.raises(storage.StorageError, match="without a bucket"):
        storage.resolve_filesystem("s3:///key")


# ------------------------------------------------- round trips through S3


def test_parquet_round_trip_through_s3(s3_server: S3Server, s3_bucket, aws_isolated):
    table = _sample_table()
    uri = f"s3://{s3_bucket}/round/trip.parquet"
    _write_parquet(uri, table, s3_server.storage_options())
    assert _read_parquet(uri, s3_server.storage_options()).equals(table)
    # Read back with a filesystem built without pipeline.storage: the object is on the server.
    independent = pq.read_table(f"{s3_bucket}/round/trip.parquet", filesystem=s3_server.filesystem())
    assert independent.equals(table)


def test_environment_and_storage_options_reach_the_same_data(
    s3_server: S3Server, s3_bucket, s3_env, monkeypatch
):
    table = _sample_table()
    uri = f"s3://{s3_bucket}/by-env/data.parquet"
    _write_parquet(uri, table)  # configured by AWS_ENDPOINT_URL and the key variables only
    from_env = (_read_parquet(uri), _list(f"s3://{s3_bucket}/", ".parquet"))

    for name in list(os.environ):
        if name.startswith("AWS_") and name not in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
            monkeypatch.delenv(name)
    options = s3_server.storage_options()
    from_options = (
        _read_parquet(uri, options),
        _list(f"s3://{s3_bucket}/", ".parquet", options),
    )
    assert from_env[0].equals(table) and from_options[0].equals(table)
    assert from_env[1] == from_options[1] == [uri]


def test_storage_options_override_a_wrong_environment(s3_server: S3Server, s3_bucket, s3_env, monkeypatch):
    _put(f"s3://{s3_bucket}/blob", b"abc")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert storage.read_bytes(f"s3://{s3_bucket}/blob", s3_server.storage_options()) == b"abc"


def test_profile_from_shared_files(s3_server: S3Server, s3_bucket, aws_isolated, monkeypatch, tmp_path):
    """pyarrow reads a profile's credentials but not its endpoint or region: storage fills them in."""
    _put(f"s3://{s3_bucket}/profiled", b"via profile", s3_server.storage_options())
    config, credentials = tmp_path / "aws-config", tmp_path / "aws-credentials"
    config.write_text(
        f"[profile seaweed]\nregion = {s3_server.region}\nendpoint_url = {s3_server.endpoint_url}\n"
    )
    credentials.write_text(
        f"[seaweed]\naws_access_key_id = {s3_server.access_key}\n"
        f"aws_secret_access_key = {s3_server.secret_key}\n"
    )
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    uri = f"s3://{s3_bucket}/profiled"
    assert storage.read_bytes(uri, {"profile": "seaweed"}) == b"via profile"
    monkeypatch.setenv("AWS_PROFILE", "seaweed")
    assert storage.read_bytes(uri) == b"via profile"
    with pytest.raises(storage.StorageError, match="profile 'absent' not found"):
        storage.resolve_filesystem(uri, {"profile": "absent"})


def test_shipped_access_works_in_a_process_without_aws_environment(
    s3_server: S3Server, s3_bucket, s3_env, tmp_path, ray_cluster
):
    """Workers of a joined cluster that lack the driver's environment get its keys shipped."""
    from pipeline.storage_access import storage_access

    _put(f"s3://{s3_bucket}/for-worker", b"worker bytes")
    access = storage_access(f"s3://{s3_bucket}/in", None, joined_cluster=True)
    assert access.shipped is not None  # the session cluster's workers have no AWS variables
    path = f"{s3_bucket}/for-worker"
    pickled = tmp_path / "access.pickle"
    pickled.write_bytes(pickle.dumps(access))
    script = textwrap.dedent(
        f"""
        import pickle, sys
        import pyarrow.fs  # registers FinalizeS3 at exit (unpickling alone does not)
        access = pickle.loads(open({str(pickled)!r}, "rb").read())
        with access.filesystem().open_input_stream({path!r}) as stream:
            sys.stdout.write(stream.read().decode())
        """
    )
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "worker bytes"


def test_wrong_secret_gives_a_clear_error_without_the_secret(
    s3_server: S3Server, s3_bucket, s3_env, monkeypatch
):
    _put(f"s3://{s3_bucket}/guarded", b"data")
    wrong_secret = "Wrong-Secret-0123456789"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    with pytest.raises(storage.StorageError) as caught:
        storage.read_bytes(f"s3://{s3_bucket}/guarded")
    message = str(caught.value)
    assert "rejected the credentials" in message
    assert "AWS_SECRET_ACCESS_KEY" in message and s3_server.endpoint_url in message
    assert wrong_secret not in message and s3_server.access_key not in message


def test_unreachable_endpoint_gives_a_clear_error(aws_isolated, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with pytest.raises(storage.StorageError, match="cannot be reached"):
        storage.read_bytes("s3://bucket/key")


def test_workers_get_the_drivers_keys_only_where_they_cannot_find_their_own(
        aws_isolated, monkeypatch, ray_cluster):
    """The session cluster started before these variables were set: its workers lack them."""
    import pickle

    from pipeline.storage_access import storage_access

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id-from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    private = storage_access("s3://bucket/in", None, joined_cluster=False)
    assert private.shipped is None and b"secret-from-env" not in pickle.dumps(private)
    joined = storage_access("s3://bucket/in", None, joined_cluster=True)
    shipped = _constructor_arguments(joined.filesystem())
    assert (shipped["access_key"], shipped["secret_key"]) == ("id-from-env", "secret-from-env")
    assert "secret-from-env" not in repr(joined)


def test_a_profiles_credentials_are_read_again_after_the_refresh_period(aws_isolated, monkeypatch,
                                                                        tmp_path):
    """Temporary credentials rotated into a profile reach a long-running process."""
    config, credentials = tmp_path / "aws-config", tmp_path / "aws-credentials"
    config.write_text("[profile rotating]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))

    def keys_now() -> tuple[str, str]:
        arguments = _constructor_arguments(
            storage.resolve_filesystem("s3://bucket/key", {"profile": "rotating"})[0])
        return arguments["access_key"], arguments["session_token"]

    credentials.write_text("[rotating]\naws_access_key_id = first-id\n"
                           "aws_secret_access_key = first-secret\naws_session_token = first-token\n")
    assert keys_now() == ("first-id", "first-token")
    credentials.write_text("[rotating]\naws_access_key_id = second-id\n"
                           "aws_secret_access_key = second-secret\naws_session_token = second-token\n")
    assert keys_now() == ("first-id", "first-token")  # within the period: the cached filesystem
    monkeypatch.setattr(storage, "PROFILE_REFRESH_SECONDS", 1e-6)  # every call: a new period
    assert keys_now() == ("second-id", "second-token")
