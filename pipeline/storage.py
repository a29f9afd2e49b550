"""Filesystem resolution for job inputs and outputs: local paths and ``s3://`` URIs.

Every read and write of the pipeline goes through a ``pyarrow.fs.FileSystem``
returned by :func:`resolve_filesystem`, so Ray Data, Parquet and image cells
that hold paths all see the same configuration.

S3 follows the standard AWS configuration with no change to the job file
(https://docs.aws.amazon.com/sdkref/latest/guide/settings-reference.html):
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``,
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, ``AWS_PROFILE`` and the shared config and credentials
files. pyarrow 26's ``S3FileSystem`` (AWS SDK for C++) reads the credentials
(environment, profile, instance metadata) and the region *environment
variables* itself, but neither the endpoint variables nor the region or
endpoint of a profile in the config file; those are filled in here, with
botocore's own resolution order so that the result matches the AWS CLI.

A job may override any of it with ``storage_options`` (:class:`StorageOptions`).

(About 390 lines, over the project's ~350: the AWS resolution order, the filesystem it
configures and the error messages that describe that same configuration are one
contract, tested together against a real S3 server; split, each part would need the
others' private helpers.)

Credentials found in the driver's environment are passed to the filesystem
explicitly: the filesystem object is pickled into Ray workers, which then need
no AWS environment of their own (a Ray cluster started before the variables
were set, or remote nodes). Credentials never appear in logs, reprs or error
messages produced here; ``pipeline.redaction.redact`` them before recording options anywhere.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.redaction import redact, redact_url
from pipeline.retries import DEFAULT_ATTEMPTS

S3_SCHEMES = ("s3", "s3a")

# Environment variables that change how S3 is resolved: part of the cache key
# of resolved filesystems so that a changed environment is honoured.
_AWS_ENVIRONMENT_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


class StorageError(OSError):
    """A storage location could not be resolved or accessed; the message says why."""


class StorageOptions(BaseModel):
    """Per-job S3 overrides of the standard AWS configuration (all optional).

    ``access_key`` / ``secret_key`` / ``session_token`` are allowed but
    discouraged: job files get committed and shared; prefer the environment or
    a profile.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    anonymous: bool = False
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    # None: path-style for custom endpoints, virtual-hosted for AWS (pyarrow's default).
    force_path_style: bool | None = None
    # Calls to this location are retried through transient failures (pipeline.retries).
    max_attempts: int = Field(default=DEFAULT_ATTEMPTS, ge=1, le=100)

    @model_validator(mode="after")
    def _check_credentials(self) -> StorageOptions:
        if (self.access_key is None) != (self.secret_key is None):
            raise ValueError("storage_options: access_key and secret_key must be given together")
        if self.session_token is not None and self.access_key is None:
            raise ValueError("storage_options: session_token needs access_key and secret_key")
        if self.anonymous and (self.access_key is not None or self.profile is not None):
            raise ValueError("storage_options: anonymous excludes access_key/secret_key and profile")
        return self

    def __repr__(self) -> str:
        return f"StorageOptions({redact(self.model_dump(exclude_none=True))})"

    __str__ = __repr__


StorageOptionsLike = StorageOptions | Mapping[str, Any] | None


@dataclass(frozen=True)
class S3Settings:
    """The resolved S3 configuration; safe to print (secrets are excluded from repr)."""

    endpoint_url: str | None
    region: str | None
    credential_source: str
    force_path_style: bool | None
    anonymous: bool = False
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    # The AWS SDK inside pyarrow finds these credentials itself (the environment): they
    # are not handed to pyarrow, so a filesystem pickled into a task carries none.
    found_by_sdk: bool = False

    def describe(self) -> str:
        endpoint = redact_url(self.endpoint_url) if self.endpoint_url else "the AWS default"
        region = f"region {self.region}" if self.region else "no region set"
        return f"endpoint {endpoint}, {region}, credentials from {self.credential_source}"


# --------------------------------------------------------------------------- URIs


def is_s3(uri: str) -> bool:
    return urlsplit(str(uri)).scheme.lower() in S3_SCHEMES


def _split_local(uri: str) -> str:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"file:// URIs with a host are not supported: {uri!r}")
        return os.path.abspath(parts.path)
    return os.path.abspath(os.path.expanduser(uri))


def _split_s3(uri: str) -> str:
    """``s3://bucket/key`` -> ``bucket/key`` (the form pyarrow's S3FileSystem expects)."""
    parts = urlsplit(uri)
    if not parts.netloc:
        raise StorageError(f"S3 URI without a bucket: {uri!r} (expected s3://bucket/key)")
    key = parts.path.lstrip("/")
    return f"{parts.netloc}/{key}".rstrip("/") if key else parts.netloc


def _check_scheme(uri: str) -> str:
    scheme = urlsplit(uri).scheme.lower()
    # A one-letter scheme is a Windows drive ("C:\\data"), i.e. a local path.
    if scheme and len(scheme) > 1 and scheme not in S3_SCHEMES and scheme != "file":
        raise StorageError(
            f"unsupported storage scheme {scheme!r} in {uri!r}: use a local path, file:// or s3://"
        )
    return scheme


# ---------------------------------------------------------- S3 configuration


def _as_options(storage_options: StorageOptionsLike) -> StorageOptions:
    if storage_options is None:
        return StorageOptions()
    if isinstance(storage_options, StorageOptions):
        return storage_options
    try:
        return StorageOptions.model_validate(dict(storage_options))
    except Exception as error:  # pydantic's message names the field; keep it, drop values
        raise ValueError(f"invalid storage_options: {_safe_validation_message(error)}") from None


def _safe_validation_message(error: Exception) -> str:
    errors = getattr(error, "errors", None)
    if errors is None:
        return type(error).__name__
    messages = []
    for item in errors(include_input=False):
        location = ".".join(str(part) for part in item.get("loc", ())) or "storage_options"
        messages.append(f"{location}: {item.get('msg')}")
    return "; ".join(messages)


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def _profile_config(profile: str | None) -> tuple[dict, dict, Any]:
    """(full config, profile's scoped config, botocore session) from the shared files."""
    try:
        import botocore.exceptions
        import botocore.session
    except ImportError:  # botocore comes with s3fs; without it only env variables count
        if profile:
            raise StorageError("storage_options.profile needs botocore (pip install s3fs)") from None
        return {}, {}, None
    session = botocore.session.Session(profile=profile)
    try:
        return session.full_config, session.get_scoped_config(), session
    except botocore.exceptions.ProfileNotFound:
        if profile:
            raise StorageError(f"AWS profile {profile!r} not found in the shared config files") from None
        return {}, {}, None


def _configured_endpoint(full_config: dict, scoped_config: dict) -> str | None:
    ignore = _env("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS") or str(
        scoped_config.get("ignore_configured_endpoint_urls", "")
    )
    if ignore.lower() == "true":
        return None
    try:
        from botocore.configprovider import ConfiguredEndpointProvider
    except ImportError:
        return _env("AWS_ENDPOINT_URL_S3") or _env("AWS_ENDPOINT_URL")
    provider = ConfiguredEndpointProvider(full_config, scoped_config, client_name="s3")
    return provider.provide()


def resolve_s3_settings(storage_options: StorageOptionsLike = None) -> S3Settings:
    """The effective S3 configuration: per-job options first, then the AWS standard chain."""
    options = _as_options(storage_options)
    full_config, scoped_config, session = _profile_config(options.profile)

    endpoint_url = options.endpoint_url or _configured_endpoint(full_config, scoped_config)
    region = (
        options.region
        or _env("AWS_REGION")
        or _env("AWS_DEFAULT_REGION")
        or scoped_config.get("region")
        or None
    )
    force_path_style = options.force_path_style
    if force_path_style is None:
        addressing_style = (scoped_config.get("s3") or {}).get("addressing_style")
        if addressing_style in ("path", "virtual"):
            force_path_style = addressing_style == "path"

    if options.anonymous:
        return S3Settings(endpoint_url, region, "anonymous access", force_path_style, anonymous=True)
    if options.access_key is not None:
        return S3Settings(
            endpoint_url, region, "storage_options (access_key/secret_key)", force_path_style,
            access_key=options.access_key, secret_key=options.secret_key,
            session_token=options.session_token,
        )
    if options.profile is not None:
        credentials = session.get_credentials() if session is not None else None
        if credentials is None:
            raise StorageError(f"AWS profile {options.profile!r} has no credentials")
        frozen = credentials.get_frozen_credentials()
        return S3Settings(
            endpoint_url, region, f"AWS profile {options.profile!r}", force_path_style,
            access_key=frozen.access_key, secret_key=frozen.secret_key, session_token=frozen.token,
        )
    access_key, secret_key = _env("AWS_ACCESS_KEY_ID"), _env("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        return S3Settings(
            endpoint_url, region, "environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)",
            force_path_style, access_key=access_key, secret_key=secret_key,
            session_token=_env("AWS_SESSION_TOKEN"), found_by_sdk=True,
        )
    profile_name = _env("AWS_PROFILE") or _env("AWS_DEFAULT_PROFILE") or "default"
    return S3Settings(
        endpoint_url, region,
        f"the AWS SDK default chain (profile {profile_name!r}, instance or container role)",
        force_path_style,
    )


def s3_filesystem_for(settings: S3Settings) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem with `settings` (keys only where the SDK would not find them)."""
    kwargs: dict[str, Any] = {}
    if settings.region:
        kwargs["region"] = settings.region
    if settings.endpoint_url:
        endpoint = urlsplit(settings.endpoint_url if "://" in settings.endpoint_url
                            else f"https://{settings.endpoint_url}")
        if endpoint.path not in ("", "/"):
            raise StorageError(f"S3 endpoint URLs with a path are not supported: {endpoint.path!r}")
        kwargs["scheme"] = endpoint.scheme
        kwargs["endpoint_override"] = endpoint.netloc
    if settings.force_path_style is False:
        kwargs["force_virtual_addressing"] = True
    elif settings.force_path_style and not settings.endpoint_url:
        # pyarrow uses path-style exactly when an endpoint is overridden.
        region = settings.region or "us-east-1"
        kwargs["endpoint_override"] = f"s3.{region}.amazonaws.com"
    kwargs.update(_credential_fields(settings))
    return pafs.S3FileSystem(**kwargs)


def max_attempts(storage_options: StorageOptionsLike = None) -> int:
    """How many times a call to this location is tried (``storage_options.max_attempts``)."""
    return _as_options(storage_options).max_attempts


def s3_client(storage_options: StorageOptionsLike = None) -> Any:
    """A botocore S3 client with the same resolved settings as the job's filesystem.

    For what pyarrow cannot do: conditional writes (``pipeline.output_lock``). Without
    explicit keys it uses botocore's own credential chain, which refreshes expiring ones.
    """
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config

    settings = resolve_s3_settings(storage_options)
    path_style = settings.force_path_style if settings.force_path_style is not None \
        else bool(settings.endpoint_url)
    config = Config(s3={"addressing_style": "path" if path_style else "virtual"},
                    retries={"max_attempts": 5, "mode": "standard"},
                    **({"signature_version": UNSIGNED} if settings.anonymous else {}))
    kwargs: dict[str, Any] = {"region_name": settings.region or "us-east-1", "config": config}
    if settings.endpoint_url:
        kwargs["endpoint_url"] = (settings.endpoint_url if "://" in settings.endpoint_url
                                  else f"https://{settings.endpoint_url}")
    if settings.access_key is not None:
        kwargs.update(aws_access_key_id=settings.access_key,
                      aws_secret_access_key=settings.secret_key,
                      aws_session_token=settings.session_token)
    session = botocore.session.Session(profile=_as_options(storage_options).profile)
    return session.create_client("s3", **kwargs)


def _credential_fields(settings: S3Settings) -> dict[str, Any]:
    """Anonymous access or explicit keys, named as pyarrow's S3FileSystem takes them."""
    if settings.anonymous:
        return {"anonymous": True}
    if settings.access_key is None or settings.found_by_sdk:
        return {}
    fields = {"access_key": settings.access_key, "secret_key": settings.secret_key}
    if settings.session_token:
        fields["session_token"] = settings.session_token
    return fields


def _environment_snapshot() -> tuple[tuple[str, str | None], ...]:
    return tuple((name, os.environ.get(name)) for name in _AWS_ENVIRONMENT_VARIABLES)


# A profile's credentials may be temporary (SSO, assume-role, credential_process): a
# resolved filesystem is reused for this long, then the profile is read again.
PROFILE_REFRESH_SECONDS = 300


@functools.lru_cache(maxsize=32)
def _cached_s3_filesystem(
    options: StorageOptions, environment: tuple[tuple[str, str | None], ...], period: int
) -> tuple[pafs.S3FileSystem, S3Settings]:
    del environment, period  # part of the cache key only
    settings = resolve_s3_settings(options)
    return s3_filesystem_for(settings), settings


# ---------------------------------------------------------------- public API


def resolve_filesystem(
    uri: str, storage_options: StorageOptionsLike = None
) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path, ``file://`` URI or ``s3://bucket/key``.

    Local paths come back absolute; S3 paths as ``bucket/key`` (no scheme), the
    form pyarrow filesystems take. ``storage_options`` apply to S3 only.
    """
    uri = os.fspath(uri)
    scheme = _check_scheme(uri)
    if scheme in S3_SCHEMES:
        options = _as_options(storage_options)
        period = int(time.monotonic() // PROFILE_REFRESH_SECONDS) if options.profile else 0
        filesystem, _ = _cached_s3_filesystem(options, _environment_snapshot(), period)
        return filesystem, _split_s3(uri)
    return pafs.LocalFileSystem(), _split_local(uri)


def describe_location(uri: str, storage_options: StorageOptionsLike = None) -> str:
    """A one-line, secret-free description of where ``uri`` lives (for logs and errors)."""
    if not is_s3(uri):
        return f"local path {_split_local(uri)}"
    settings = resolve_s3_settings(storage_options)
    return f"{uri} ({settings.describe()})"


# pyarrow spells AWS error codes in upper snake case, botocore/s3fs in CamelCase.
_ACCESS_DENIED = re.compile(
    r"ACCESS_DENIED|AccessDenied|SIGNATURE_DOES_NOT_MATCH|SignatureDoesNotMatch"
    r"|INVALID_ACCESS_KEY_ID|InvalidAccessKeyId|\b403\b|Forbidden"
)
_NETWORK = re.compile(r"NETWORK_CONNECTION|Could not connect|Could not resolve|curlCode")
_NO_BUCKET = re.compile(r"NoSuchBucket|NO_SUCH_BUCKET|Bucket '[^']*' not found")


def explain_storage_error(
    action: str, uri: str, storage_options: StorageOptionsLike, error: Exception
) -> StorageError:
    """A :class:`StorageError` for a pyarrow/AWS ``error`` met while ``action``-ing ``uri``.

    The message names the location, endpoint, region and where the credentials
    came from (never their values) and what to check. Raise it ``from error``.
    """
    message = str(error)
    try:
        where = describe_location(uri, storage_options)
    except Exception:  # describing must never hide the original error
        where = uri
    if _ACCESS_DENIED.search(message):
        hint = ("the server rejected the credentials or they lack permission: check the access "
                "key and secret key (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the AWS profile, "
                "or storage_options)")
    elif _NETWORK.search(message):
        hint = "the S3 endpoint cannot be reached: check AWS_ENDPOINT_URL or storage_options.endpoint_url"
    elif _NO_BUCKET.search(message):
        hint = "the bucket does not exist"
    else:
        return StorageError(f"cannot {action} {where}: {message}")
    return StorageError(f"cannot {action} {where}: {hint} [{message}]")


def read_bytes(uri: str, storage_options: StorageOptionsLike = None) -> bytes:
    """The whole content of one file (e.g. an image cell that holds a path or URI)."""
    filesystem, path = resolve_filesystem(uri, storage_options)
    try:
        with filesystem.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError as error:
        raise StorageError(f"file not found: {describe_location(uri, storage_options)}") from error
    except OSError as error:
        raise explain_storage_error("read", uri, storage_options, error) from error
