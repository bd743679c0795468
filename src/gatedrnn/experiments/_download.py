"""Streaming downloads with checksum checks and atomic writes (private helper of ``data``).

Nothing here is imported at package import time; ``urllib`` and ``tqdm`` are imported lazily.
Tests replace :data:`urlopen` (or point the URL tables at ``file://`` URLs) so that no test ever
touches the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import pathlib
from collections.abc import Callable, Sequence
from typing import IO, Any

from .._files import atomic_file

CHUNK = 1 << 20


def _default_urlopen(url: str, timeout: float) -> Any:
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "gatedrnn-data/1"})
    return urllib.request.urlopen(request, timeout=timeout)


# Replaced by tests (monkeypatch) to simulate a network; signature: (url, timeout) -> binary file-like.
urlopen: Callable[[str, float], Any] = _default_urlopen


class DownloadError(OSError):
    """Base used by ``data.DownloadFailed``; kept here so this module stands alone."""


def file_digest(path: pathlib.Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ChecksumMismatch(ValueError):
    def __init__(self, url: str, algorithm: str, expected: str, got: str) -> None:
        super().__init__(f"{url}: {algorithm} expected {expected}, got {got}")
        self.url, self.algorithm, self.expected, self.got = url, algorithm, expected, got


def _stream(url: str, handle: IO[bytes], algorithm: str, desc: str, timeout: float) -> str:
    from tqdm import tqdm

    digest = hashlib.new(algorithm)
    with contextlib.closing(urlopen(url, timeout)) as response:
        total: int | None = None
        headers = getattr(response, "headers", None)
        if headers is not None:
            length = headers.get("Content-Length")
            if length and str(length).isdigit():
                total = int(length)
        received = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=None) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                handle.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received != total:
            raise DownloadError(f"{url}: connection closed after {received} of {total} bytes")
    return digest.hexdigest()


def download(
    urls: Sequence[str],
    dest: pathlib.Path,
    *,
    algorithm: str,
    expected: str | None,
    timeout: float = 60.0,
) -> pathlib.Path:
    """Fetch the first URL that works into ``dest`` (atomically), checking its ``algorithm`` digest.

    Mirrors are tried in order. A network error or a checksum mismatch moves on to the next
    mirror; when every mirror fails, the checksum mismatch (if any) is raised as
    :class:`ChecksumMismatch`, otherwise a :class:`DownloadError` listing each URL and its error.
    ``dest`` exists afterwards only if a complete, verified copy was written.
    """
    import http.client

    errors: list[str] = []
    mismatch: ChecksumMismatch | None = None
    for url in urls:
        try:
            with atomic_file(dest, parents=True) as handle:
                got = _stream(url, handle, algorithm, dest.name, timeout)
                if expected is not None and got != expected.lower():
                    raise ChecksumMismatch(url, algorithm, expected, got)
            return dest
        except ChecksumMismatch as exc:
            mismatch = exc
            errors.append(str(exc))
        # URLError, HTTPError, socket and SSL errors, timeouts, bad URLs, a connection cut mid-body
        except (OSError, ValueError, http.client.HTTPException) as exc:
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
    if mismatch is not None:
        raise mismatch
    raise DownloadError("could not download " + dest.name + ":\n  " + "\n  ".join(errors))
