"""Streaming downloads, vetted before they take their name, and atomic writes (private; see ``data``).

Nothing here is imported at package import time; ``urllib`` and ``tqdm`` are imported lazily.
Tests replace :data:`urlopen` (or point the URL tables at ``file://`` URLs) so that no test ever
touches the network.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Sequence
from typing import IO, Any

from .._files import atomic_file
from ._console import on_a_terminal
from ._datadir import CorruptData

CHUNK = 1 << 20


def _default_urlopen(url: str, timeout: float) -> Any:
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "gatedrnn-data/1"})
    return urllib.request.urlopen(request, timeout=timeout)


# Replaced by tests (monkeypatch) to simulate a network; signature: (url, timeout) -> binary file-like.
urlopen: Callable[[str, float], Any] = _default_urlopen


class DownloadError(OSError):
    """Every mirror failed on the network; ``data.DownloadFailed`` carries it to the caller."""


def _stream(url: str, handle: IO[bytes], desc: str, timeout: float) -> None:
    from tqdm import tqdm

    with contextlib.closing(urlopen(url, timeout)) as response:
        total: int | None = None
        headers = getattr(response, "headers", None)
        if headers is not None:
            length = headers.get("Content-Length")
            if length and str(length).isdigit():
                total = int(length)
        received = 0
        with tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not on_a_terminal()
        ) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                handle.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        if total is not None and received != total:
            raise DownloadError(f"{url}: connection closed after {received} of {total} bytes")


def download(
    urls: Sequence[str],
    dest: pathlib.Path,
    *,
    check: Callable[[pathlib.Path], object] | None = None,
    timeout: float = 60.0,
) -> pathlib.Path:
    """Fetch the first URL that works into ``dest`` (atomically); ``check`` vets the complete copy.

    Mirrors are tried in order. A network error or a copy that ``check`` refuses (by raising
    :class:`CorruptData`) moves on to the next mirror; when every mirror fails, the refusal (if
    any) is raised, naming the mirror, otherwise a :class:`DownloadError` listing each URL and its
    error. ``dest`` exists afterwards only if a complete copy that passed ``check`` was written.
    """
    import http.client

    errors: list[str] = []
    refused: CorruptData | None = None
    for url in urls:
        try:
            with atomic_file(dest, parents=True, check=check) as handle:
                _stream(url, handle, dest.name, timeout)
            return dest
        except CorruptData as exc:
            refused = CorruptData(f"{exc} (downloaded from {url}; not kept)")
            errors.append(str(refused))
        # URLError, HTTPError, socket and SSL errors, timeouts, bad URLs, a connection cut mid-body
        except (OSError, ValueError, http.client.HTTPException) as exc:
            errors.append(f"{url}: {type(exc).__name__}: {exc}")
    if refused is not None:
        raise refused
    raise DownloadError("could not download " + dest.name + ":\n  " + "\n  ".join(errors))
