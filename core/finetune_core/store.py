"""The artifact store: one interface, a local directory or an S3 bucket (MinIO).

Keys are '/'-separated paths relative to the store's root (`runs/ns/name/g1/config.json`).
The operator, the trainer, the benchmark and the local pipeline all use this module.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import json
import logging
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, ValidationError

log = logging.getLogger(__name__)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

STORE_ENV = "FINETUNE_STORE"
ENDPOINT_ENV = "FINETUNE_S3_ENDPOINT"
DEFAULT_LOCAL_STORE = ".finetune"
# Connections an S3 store keeps open for reuse: at least as many as threads use it at once
# (the operator's thread pool: finetune_operator.main).
S3_CONNECTIONS = 48


class NotFound(KeyError):
    """The key is not in the store."""


class StoreUnavailable(OSError):
    """The store could not be reached after every retry."""


class InvalidFile(ValueError):
    """A JSON file in the store is not what its model says (or not JSON at all).
    `non_finite`: what is wrong is a NaN or an infinity where a number belongs."""

    def __init__(self, message: str, non_finite: bool = False):
        super().__init__(message)
        self.non_finite = non_finite


class ArtifactStore(ABC):
    """What every stage needs from object storage."""

    @abstractmethod
    def uri(self, key: str = "") -> str:
        """A URI for a key (s3://bucket/prefix/key or an absolute path)."""

    @abstractmethod
    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Write a whole object."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload a file (multipart for large files)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Read a whole object; NotFound if absent."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download an object to a file, streaming; NotFound if absent."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether the object exists."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[str]:
        """Every key under a prefix (recursive), sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; absent objects are not an error."""

    def put_json(self, key: str, value: Any) -> None:
        data = json.dumps(value, indent=2, sort_keys=False, default=str).encode()
        self.put_bytes(key, data, "application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_json_or_none(self, key: str) -> Any:
        try:
            return self.get_json(key)
        except NotFound:
            return None

    def etag(self, key: str) -> str | None:
        """The object store's ETag of an object; None where the store has none."""
        return None

    @abstractmethod
    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        """An object and its version (the ETag: changes whenever the object does); None
        when absent."""

    @abstractmethod
    def put_if(self, key: str, data: bytes, version: str | None) -> bool:
        """Write only if the object is still at `version` (None: only if it is absent);
        False, and nothing written, when another writer got there first."""

    def get_json_versioned(self, key: str) -> tuple[Any, str | None]:
        """(value, version); (None, None) when absent."""
        found = self.get_versioned(key)
        return (None, None) if found is None else (json.loads(found[0]), found[1])

    def put_json_if(self, key: str, value: Any, version: str | None) -> bool:
        return self.put_if(key, json.dumps(value, indent=2, default=str).encode(), version)

    def delete_prefix(self, prefix: str) -> None:
        for key in list(self.list(prefix)):
            self.delete(key)

    def copy(self, source: str, destination: str) -> None:
        """Copy one object within the store."""
        self.put_bytes(destination, self.get_bytes(source))

    def copy_prefix(self, source: str, destination: str) -> builtins.list[str]:
        """Copy every object under source/ to destination/; returns the new keys."""
        source = source.rstrip("/") + "/"
        destination = destination.rstrip("/") + "/"
        copied = []
        for key in self.list(source):
            target = destination + key[len(source) :]
            self.copy(key, target)
            copied.append(target)
        return copied

    def upload_dir(self, prefix: str, directory: Path) -> builtins.list[str]:
        """Upload every file below a directory under prefix/."""
        keys = []
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            key = f"{prefix.rstrip('/')}/{path.relative_to(directory).as_posix()}"
            self.put_file(key, path)
            keys.append(key)
        return keys

    def download_dir(self, prefix: str, directory: Path) -> builtins.list[Path]:
        """Download every object under prefix/ into a directory."""
        prefix = prefix.rstrip("/") + "/"
        paths = []
        for key in self.list(prefix):
            path = directory / key[len(prefix) :]
            path.parent.mkdir(parents=True, exist_ok=True)
            self.get_file(key, path)
            paths.append(path)
        return paths


class LocalStore(ArtifactStore):
    """A directory on disk: the embedded default for local runs."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if path != self.root and self.root not in path.parents:
            raise ValueError(f"key {key!r} escapes the store")
        return path

    def uri(self, key: str = "") -> str:
        return str(self._path(key)) if key else str(self.root)

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_bytes(data)
        os.replace(partial, path)  # readers never see half a file

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        shutil.copyfile(path, partial)
        os.replace(partial, target)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise NotFound(key) from None

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise NotFound(key)
        shutil.copyfile(source, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self.get_bytes(key)
        except NotFound:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def put_if(self, key: str, data: bytes, version: str | None) -> bool:
        """Compare and swap under an exclusive lock file beside the object; the write itself
        is an atomic rename, so readers never need the lock."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(path.with_name(path.name + ".lock")):
            found = self.get_versioned(key)
            if (found[1] if found else None) != version:
                return False
            self.put_bytes(key, data, "application/json")
        return True

    def list(self, prefix: str) -> Iterator[str]:
        base = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if base.is_file():
            yield prefix
            return
        if not base.is_dir():
            return
        for path in sorted(p for p in base.rglob("*") if p.is_file()):
            if not path.name.endswith(".partial"):
                yield path.relative_to(self.root).as_posix()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


LOCK_STALE_SECONDS = 30.0


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """An exclusive lock file (O_EXCL); one left by a writer that died is broken after
    LOCK_STALE_SECONDS."""
    deadline = time.monotonic() + 2 * LOCK_STALE_SECONDS
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime > LOCK_STALE_SECONDS:
                    lock.unlink(missing_ok=True)
                    continue
            except FileNotFoundError:
                continue
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"{lock} is held by another writer") from None
            time.sleep(0.05)
    try:
        yield
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


class S3Store(ArtifactStore):
    """A bucket (and optional prefix) on MinIO or any S3 server, through the minio client."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        retries: int = 5,
        backoff_seconds: float = 0.5,
    ):
        import certifi
        import urllib3
        from minio import Minio

        endpoint = endpoint or "https://s3.amazonaws.com"
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        # minio's own pool settings but the pool's size: it keeps 10 connections, and the
        # operator's threads (more than 10) would open and discard one per request beyond.
        http = urllib3.PoolManager(
            maxsize=S3_CONNECTIONS,
            timeout=urllib3.Timeout(connect=300, read=300),
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(
                total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self.client = Minio(
            parsed.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=parsed.scheme == "https",
            http_client=http,
        )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.retries = retries
        self.backoff_seconds = backoff_seconds

    def __repr__(self) -> str:  # never show credentials
        return f"S3Store({self.uri()!r})"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        delay = self.backoff_seconds
        for attempt in range(1, self.retries + 1):
            try:
                return call()
            except S3Error as error:
                if error.code in {"NoSuchKey", "NoSuchBucket", "NoSuchObject"}:
                    raise NotFound(what) from None
                if attempt == self.retries or error.code in {
                    "AccessDenied",
                    "InvalidAccessKeyId",
                    "SignatureDoesNotMatch",
                    "PreconditionFailed",  # a conditional write lost: the caller decides
                    "ConditionalRequestConflict",
                }:
                    raise
                reason = error.code
            except (HTTPError, OSError) as error:
                if attempt == self.retries:
                    raise StoreUnavailable(f"{what}: {error}") from error
                reason = type(error).__name__
            log.warning(
                "store: %s failed (%s), retry %d/%d in %.1fs",
                what,
                reason,
                attempt,
                self.retries - 1,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def ensure_bucket(self) -> None:
        if not self._retry("bucket", lambda: self.client.bucket_exists(self.bucket)):
            self._retry("make bucket", lambda: self.client.make_bucket(self.bucket))

    def uri(self, key: str = "") -> str:
        full = self._key(key) if key else self.prefix
        return f"s3://{self.bucket}/{full}".rstrip("/")

    def put_bytes(
        self, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        self._retry(
            key,
            lambda: self.client.put_object(
                self.bucket, self._key(key), io.BytesIO(data), len(data), content_type=content_type
            ),
        )

    def put_file(self, key: str, path: Path) -> None:
        # fput_object switches to multipart upload above 5 MiB.
        self._retry(key, lambda: self.client.fput_object(self.bucket, self._key(key), str(path)))

    def get_bytes(self, key: str) -> bytes:
        def read() -> bytes:
            response = self.client.get_object(self.bucket, self._key(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._retry(key, read)

    def get_file(self, key: str, path: Path) -> None:
        self._retry(key, lambda: self.client.fget_object(self.bucket, self._key(key), str(path)))

    def exists(self, key: str) -> bool:
        try:
            self._retry(key, lambda: self.client.stat_object(self.bucket, self._key(key)))
        except NotFound:
            return False
        return True

    def list(self, prefix: str) -> Iterator[str]:
        full = self._key(prefix)
        strip = len(self.prefix) + 1 if self.prefix else 0
        objects = self._retry(
            prefix, lambda: list(self.client.list_objects(self.bucket, prefix=full, recursive=True))
        )
        yield from sorted(o.object_name[strip:] for o in objects if o.object_name)

    def delete(self, key: str) -> None:
        self._retry(key, lambda: self.client.remove_object(self.bucket, self._key(key)))

    def etag(self, key: str) -> str | None:
        stat = self._retry(key, lambda: self.client.stat_object(self.bucket, self._key(key)))
        return (stat.etag or "").strip('"') or None

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        def read() -> tuple[bytes, str]:
            response = self.client.get_object(self.bucket, self._key(key))
            try:
                return response.read(), (response.headers.get("ETag") or "").strip('"')
            finally:
                response.close()
                response.release_conn()

        try:
            return self._retry(key, read)
        except NotFound:
            return None

    def put_if(self, key: str, data: bytes, version: str | None) -> bool:
        """S3 conditional write: If-Match on the ETag read, or If-None-Match: * to create.
        The minio client's public put_object turns unknown headers into user metadata, so
        the request goes through its PutObject call with the headers as given."""
        from minio.error import S3Error

        condition = ("If-None-Match", "*") if version is None else ("If-Match", f'"{version}"')
        headers: dict[str, str | list[str] | tuple[str]] = {
            "Content-Type": "application/json",
            condition[0]: condition[1],
        }
        try:
            self._retry(
                key, lambda: self.client._put_object(self.bucket, self._key(key), data, headers)
            )
        except S3Error as error:
            if error.code in {"PreconditionFailed", "ConditionalRequestConflict"}:
                return False
            raise
        except NotFound:  # If-Match on an object deleted meanwhile
            return False
        return True

    def copy(self, source: str, destination: str) -> None:
        from minio.commonconfig import CopySource

        self._retry(
            destination,
            lambda: self.client.copy_object(
                self.bucket, self._key(destination), CopySource(self.bucket, self._key(source))
            ),
        )


# The JSON files the stages exchange are a few KiB; a larger one is not one of them.
MAX_JSON_BYTES = 4 << 20


def read_model(store: ArtifactStore, key: str, model: type[M]) -> M | None:
    """A JSON file read as its model: None when absent, InvalidFile (naming the file and the
    problem) when unreadable or larger than MAX_JSON_BYTES. The one reader every stage and
    executor uses."""
    try:
        data = store.get_bytes(key)
    except NotFound:
        return None
    if len(data) > MAX_JSON_BYTES:
        raise InvalidFile(f"{store.uri(key)} is {len(data)} bytes, more than {MAX_JSON_BYTES}")
    try:
        raw = json.loads(data)
    except ValueError as error:  # not JSON, or not UTF-8
        raise InvalidFile(f"{store.uri(key)} is not JSON: {error}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or '(top)'}: {item['msg']}"
            for item in error.errors()
        )
        non_finite = any(item["type"] == "finite_number" for item in error.errors())
        message = f"{store.uri(key)} is not a valid {model.__name__}: {problems}"
        raise InvalidFile(message, non_finite) from None


def read_model_if_valid(store: ArtifactStore, key: str, model: type[M]) -> M | None:
    """read_model for files a stage may be half-way writing or a person may have edited: an
    invalid file is logged and treated as absent, and the caller decides what absence means."""
    try:
        return read_model(store, key, model)
    except InvalidFile as error:
        log.warning("%s; ignored", error)
        return None


def split_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b.jsonl` -> (`s3://bucket`, `a/b.jsonl`); `file:///d/b.jsonl` or
    `/d/b.jsonl` -> (`/d`, `b.jsonl`). ValueError names what is missing."""
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if not bucket or not key.strip("/"):
            raise ValueError(f"{uri!r} is not s3://bucket/key")
        return f"s3://{bucket}", key
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.name:
        raise ValueError(f"{uri!r} names no file")
    return str(path.parent), path.name


def open_object(uri: str, endpoint: str | None = None) -> tuple[ArtifactStore, str]:
    """The store holding one object (s3://, file:// or a path) and its key there."""
    location, key = split_uri(uri)
    return open_store(location, endpoint), key


def local_file_uri(uri: str, base: Path) -> str:
    """A file:// URI or a path (relative to `base`) as an absolute file:// URI; s3:// URIs
    are returned unchanged."""
    if uri.startswith("s3://"):
        return uri
    path = Path(uri.removeprefix("file://")).expanduser()
    return f"file://{path if path.is_absolute() else (base / path).resolve()}"


def open_store(location: str | None = None, endpoint: str | None = None) -> ArtifactStore:
    """A store from `s3://bucket[/prefix]` or a directory; defaults from the environment.

    Credentials come only from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (a Secret in a pod).
    """
    location = location or os.environ.get(STORE_ENV) or DEFAULT_LOCAL_STORE
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        return S3Store(
            bucket,
            prefix,
            endpoint=endpoint or os.environ.get(ENDPOINT_ENV),
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        )
    if location.startswith("file://"):
        location = location[len("file://") :]
    return LocalStore(Path(location))


def open_run(run_uri: str, endpoint: str | None = None) -> tuple[ArtifactStore, str]:
    """Split a run URI (`s3://bucket/p/runs/ns/name/g3` or `/dir/runs/ns/name/g3`) into the
    store at its root and the run's key prefix, so a stage can also reach `models/`."""
    root, sep, rest = run_uri.rstrip("/").rpartition("/runs/")
    if not sep:
        raise ValueError(f"{run_uri!r} is not a run URI (expected .../runs/<ns>/<name>/g<N>)")
    return open_store(root or "/", endpoint), f"runs/{rest}"
