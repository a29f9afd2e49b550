"""How the Ray workers reach the job's input: by resolving its credentials themselves,
or, only where they cannot, with the driver's.

Credentials that workers resolve themselves (their environment, a profile, an instance
or pod role) are never pickled into tasks, and stay refreshable: the AWS SDK renews
role and web-identity credentials, and a profile is read again every
``storage.PROFILE_REFRESH_SECONDS``. A cluster whose workers lack what the driver has
(the driver's shell exported keys, the nodes got none) still works: the driver's
credentials travel with the tasks, frozen for the job, and the run says so.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from pipeline.storage import (
    S3Settings,
    is_s3,
    resolve_filesystem,
    resolve_s3_settings,
    s3_filesystem_for,
)


@dataclass(frozen=True)
class StorageAccess:
    """Picklable: a location and its options, plus the driver's credentials only when
    the workers cannot find their own (`shipped`)."""

    uri: str
    storage_options: dict[str, Any] | None = None
    shipped: S3Settings | None = field(default=None, repr=False)

    def filesystem(self) -> pafs.FileSystem:
        """The location's filesystem, resolved in this process (cached by ``storage``)."""
        if self.shipped is not None:
            return _shipped_filesystem(self.shipped)
        return resolve_filesystem(self.uri, self.storage_options)[0]


_SHIPPED: dict[S3Settings, pafs.FileSystem] = {}


def _shipped_filesystem(settings: S3Settings) -> pafs.FileSystem:
    if settings not in _SHIPPED:
        _SHIPPED[settings] = s3_filesystem_for(settings)
    return _SHIPPED[settings]


def _described(storage_options: dict[str, Any] | None) -> str:
    """Endpoint, region and where the credentials come from (no secret in it)."""
    return resolve_s3_settings(storage_options).describe()


def storage_access(uri: str, storage_options: dict[str, Any] | None,
                   joined_cluster: bool) -> StorageAccess:
    """How the workers reach `uri`: see the module docstring.

    A private local Ray (`joined_cluster` false) runs its workers with this process's
    environment and home folder, so they find what the driver finds. On a joined cluster
    one worker is asked where its credentials come from.
    """
    if not is_s3(uri):
        return StorageAccess(uri, storage_options)
    settings = resolve_s3_settings(storage_options)
    # Keys the job gives travel in its options anyway; with none (anonymous, or the SDK's
    # own chain on both sides) there is nothing to send.
    given_by_job = bool(storage_options) and storage_options.get("access_key") is not None
    if settings.access_key is None or given_by_job or not joined_cluster:
        return StorageAccess(uri, storage_options)
    import ray

    worker_view = ray.get(ray.remote(num_cpus=0)(_described).remote(storage_options))
    if worker_view == settings.describe():
        return StorageAccess(uri, storage_options)
    print(f"[zipvl-batch] warning: the Ray workers do not reach {uri} as the driver does "
          f"(they would use {worker_view}); the driver's settings, "
          f"{settings.describe()}, are sent with the tasks and cannot be refreshed "
          "during the job. Give the nodes their own (an instance or pod role, or the "
          "environment) to avoid this.", file=sys.stderr)
    shipped = dataclasses.replace(settings, found_by_sdk=False)
    return StorageAccess(uri, storage_options, shipped)
