"""Checksummed downloads for raw data files.

`download(url, dest, sha256)` fetches an ``http://``, ``https://`` or ``file://`` URL with the standard
library (no extra dependency, works behind the same proxies urllib honours), streams it into a temporary
file next to `dest`, verifies the SHA-256 of what arrived, and only then renames it into place, so a
half-written or corrupted file never sits at `dest`. A `dest` that already has the expected checksum is
reused without touching the network: pipelines can call `download` on every run.

`fetch_to(raw_dir, options)` is what sources call: their options carry either a local ``path`` or a
``url`` plus ``sha256``; it returns the local file in both cases.
"""
from __future__ import annotations

import hashlib
import http.client
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Protocol

from tqdm import tqdm  # the plain text bar: tqdm.auto would ask papermill kernels for ipywidgets

from clsr.config import ConfigError
from clsr.data.sources import DataError, require_file, sha256_of
from clsr.data.store import atomic_path

SCHEMES = ("http", "https", "file")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(DataError):
    """A download failed (unreachable host, HTTP error, checksum mismatch); the message says what to do."""


def _check_sha256(sha256: str, where: str) -> str:
    s = (sha256 or "").strip().lower()
    if not _HEX64.match(s):
        raise ConfigError(
            f"{where}: {sha256!r} is not a SHA-256 digest (64 hex characters); compute it with "
            "`sha256sum FILE` on a copy you trust"
        )
    return s


def _by_hand(url: str, dest: Path, sha256: str) -> str:
    return (
        f"Download it by hand from {url} and put it at {dest.resolve()} "
        f"(expected sha256 {sha256}), then run again."
    )


def download(
    url: str,
    dest: str | Path,
    sha256: str,
    *,
    timeout: float = 60,
    chunk: int = 1 << 20,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `dest` and verify its SHA-256; return `dest`.

    - `dest` already present with the right checksum: returned as is, nothing is fetched.
    - `dest` present with another checksum: fetched again and replaced only once the new copy verifies.
    - The bytes go to a temporary file in dest's folder (same file system, so the final rename is
      atomic); a checksum mismatch deletes it and raises `DownloadError` naming the URL and both digests.
    - HTTP errors, unreachable hosts and timeouts raise `DownloadError` saying where to put a copy
      fetched by hand.
    `timeout` is per socket operation (seconds); `chunk` is the read size; `progress` shows a tqdm bar.
    """
    sha256 = _check_sha256(sha256, f"download({url})")
    dest = Path(dest)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"download: URL {url!r} has scheme {scheme!r}; supported schemes are {list(SCHEMES)}")
    if dest.is_file() and sha256_of(dest, chunk) == sha256:
        return dest
    with atomic_path(dest, suffix=".part") as tmp:
        h = hashlib.sha256()
        got = 0  # bytes received (a disabled tqdm bar does not count)
        with open(tmp, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except urllib.error.HTTPError as e:
                e.close()
                raise DownloadError(f"could not download {url}: HTTP {e.code} {e.reason}. {_by_hand(url, dest, sha256)}") from None
            except (urllib.error.URLError, OSError) as e:
                reason = getattr(e, "reason", e)
                raise DownloadError(f"could not download {url}: {reason}. {_by_hand(url, dest, sha256)}") from None
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with tqdm(
                    total=total, unit="B", unit_scale=True, unit_divisor=1024, mininterval=1,
                    desc=dest.name, disable=not progress,
                ) as bar:
                    while True:
                        try:
                            block = response.read(chunk)
                        except (OSError, http.client.HTTPException) as e:  # timeout, reset, short read
                            raise DownloadError(
                                f"download of {url} broke off after {got} bytes: {e}. {_by_hand(url, dest, sha256)}"
                            ) from None
                        if not block:
                            break
                        out.write(block)
                        h.update(block)
                        got += len(block)
                        bar.update(len(block))
            if total is not None and got != total:
                raise DownloadError(
                    f"download of {url} is truncated: got {got} of {total} bytes. {_by_hand(url, dest, sha256)}"
                )
        actual = h.hexdigest()
        if actual != sha256:
            raise DownloadError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual}. The file was not "
                "kept. If the file changed on purpose, update the expected sha256; otherwise "
                + _by_hand(url, dest, sha256)
            )
    return dest


class _HasLocation(Protocol):
    path: str | None
    url: str | None
    sha256: str | None


def fetch_to(
    raw_dir: str | Path,
    options: _HasLocation,
    *,
    filename: str | None = None,
    how_to_get: str = "",
    where: str = "source",
    progress: bool = True,
) -> Path:
    """Return the local raw file a source's options point at: ``path``, or ``url`` + ``sha256``.

    With ``path`` the file must exist (relative paths are taken from the working directory, i.e. the
    project root); `how_to_get` is appended to the not-found message. With ``url`` the file is
    downloaded (once; see `download`) to ``raw_dir/filename``, `filename` defaulting to the URL's last
    path segment. Setting both, or neither, is a ConfigError naming the keys under `where`.
    """
    path, url, sha = getattr(options, "path", None), getattr(options, "url", None), getattr(options, "sha256", None)
    if path and url:
        raise ConfigError(f"{where}: set either 'path' (a local file) or 'url' + 'sha256', not both")
    if path:
        return require_file(Path(path), how_to_get)
    if not url:
        raise ConfigError(f"{where}: set 'path' to the local file, or 'url' and 'sha256' to download it. {how_to_get}".strip())
    if not sha:
        raise ConfigError(
            f"{where}.sha256: a download needs the expected checksum of {url}; compute it with `sha256sum FILE` "
            "on a copy you trust"
        )
    name = filename or Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).name
    if not name:
        raise ConfigError(f"{where}.url: {url!r} does not end in a file name; pass the file name explicitly")
    return download(url, Path(raw_dir) / name, sha, progress=progress)
