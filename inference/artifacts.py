"""Model artifacts from the console: download, verify while streaming, store by content.

`STATE_DIR/artifacts/<sha256>.onnx` holds each artifact under its own hash, so two model
names or versions with the same bytes share one file, and a file already there is reused
after its hash is checked again (a disk can rot; a hash that does not match is deleted and
downloaded again). A download streams into a temporary file in the same directory while the
hash is computed; only when the hash (and the size, when the console gave one) matches is it
renamed into place (atomic on one file system) - bytes with a wrong hash never get a name the
loader would open. Files stay after their version is unloaded: they are the node's cache.

Disk writes and hashing run in a worker thread, so a large download does not stall the event
loop that serves requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from pathlib import Path

import httpx

from inference import protocol

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "artifacts"
_CHUNK = 1 << 20


class ArtifactError(Exception):
    """The artifact could not be fetched (network, HTTP status, size); retried later."""


class ArtifactMismatch(ArtifactError):
    """The bytes do not hash to what the console promised; they were deleted."""


class ArtifactStore:
    def __init__(
        self,
        directory: Path,
        console_url: str,
        credential: str,
        client: httpx.AsyncClient,
    ) -> None:
        self.directory = directory
        self.console_url = console_url.rstrip("/")
        self._headers = {"authorization": f"Bearer {credential}"}
        self.client = client

    def path_for(self, sha256: str) -> Path:
        return self.directory / f"{sha256}.onnx"

    async def fetch(self, desired: protocol.DesiredVersion) -> Path:
        """The local path of the artifact, downloading it if needed; raises ArtifactMismatch
        or ArtifactError."""
        path = self.path_for(desired.sha256)
        if path.is_file():
            digest = await asyncio.to_thread(file_sha256, path)
            if digest == desired.sha256:
                return path
            log.error(
                "cached artifact %s hashes to %s; deleting it and downloading again", path, digest
            )
            path.unlink(missing_ok=True)
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        url = self.console_url + desired.url
        temporary = self.directory / f".{desired.sha256}.{os.getpid()}.part"
        try:
            digest, size = await self._download(url, temporary, desired)
            if digest != desired.sha256:
                raise ArtifactMismatch(
                    f"sha256 mismatch: expected {desired.sha256}, got {digest} "
                    f"({size} bytes from {url})"
                )
            if desired.size_bytes and size != desired.size_bytes:
                # The bytes are the right ones (the hash says so); the announcement was wrong.
                log.warning(
                    "%s: the console announced %d bytes, the artifact has %d",
                    url,
                    desired.size_bytes,
                    size,
                )
            await asyncio.to_thread(_publish, temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        log.info("downloaded %s (%d bytes) to %s", url, size, path)
        return path

    async def _download(
        self, url: str, temporary: Path, desired: protocol.DesiredVersion
    ) -> tuple[str, int]:
        expected_size = desired.size_bytes
        digest = hashlib.sha256()
        size = 0
        try:
            async with self.client.stream("GET", url, headers=self._headers) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise ArtifactError(
                        f"download of {url} answered HTTP {response.status_code}: "
                        f"{response.text[:200] or 'no body'}"
                    )
                handle = await asyncio.to_thread(temporary.open, "wb")
                try:
                    async for chunk in response.aiter_bytes(_CHUNK):
                        size += len(chunk)
                        if expected_size and size > expected_size:
                            # Stop reading: these cannot be the announced bytes.
                            raise ArtifactMismatch(
                                f"sha256 mismatch: expected {desired.sha256}, got other bytes "
                                f"(more than the {expected_size} announced, from {url})"
                            )
                        await asyncio.to_thread(_write, handle, digest, chunk)
                    await asyncio.to_thread(_sync, handle)
                finally:
                    handle.close()
        except httpx.HTTPError as exc:
            raise ArtifactError(f"download of {url} failed: {type(exc).__name__}: {exc}") from exc
        return digest.hexdigest(), size


def file_sha256(path: Path) -> str:
    # Not inference.models.file_sha256: this module is imported before onnxruntime is
    # (inference/agent.py, by the CLI's early checks).
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _write(handle, digest, chunk: bytes) -> None:
    digest.update(chunk)
    handle.write(chunk)


def _sync(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _publish(temporary: Path, path: Path) -> None:
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
