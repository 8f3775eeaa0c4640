"""`clsr.data.download`: checksummed, atomic downloads from a local HTTP server and file:// URLs."""
from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from clsr.config import ConfigError
from clsr.data.download import DownloadError, download, fetch_to
from clsr.data.sources import DataError

PAYLOAD = b"1,2,3,pv,1511600000\n" * 5000  # 100 kB: several chunks with chunk=16 kB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def server(tmp_path):
    """An http.server on 127.0.0.1 (ephemeral port) serving tmp_path/www, in a thread."""
    www = tmp_path / "www"
    www.mkdir()
    (www / "data.csv").write_bytes(PAYLOAD)
    handler = type("Handler", (_Handler,), {"requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{httpd.server_address[1]}", www=www, requests=handler.requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part"))


def test_download_verifies_and_places_file(server, tmp_path):
    dest = tmp_path / "raw" / "data.csv"
    got = download(f"{server.url}/data.csv", dest, SHA, chunk=16 << 10, progress=False)
    assert got == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == []
    assert server.requests == ["/data.csv"]


def test_checksum_mismatch_raises_and_keeps_nothing(server, tmp_path):
    dest = tmp_path / "raw" / "data.csv"
    wrong = "0" * 64
    with pytest.raises(DownloadError) as e:
        download(f"{server.url}/data.csv", dest, wrong, progress=False)
    msg = str(e.value)
    assert f"{server.url}/data.csv" in msg and wrong in msg and SHA in msg
    assert isinstance(e.value, DataError)
    assert not dest.exists()
    assert leftovers(dest.parent) == []


def test_existing_good_file_is_reused_without_network(server, tmp_path):
    dest = tmp_path / "data.csv"
    dest.write_bytes(PAYLOAD)
    assert download(f"{server.url}/data.csv", dest, SHA, progress=False) == dest
    assert download("http://127.0.0.1:9/unreachable.csv", dest, SHA, progress=False) == dest
    assert server.requests == []


def test_existing_bad_file_is_replaced(server, tmp_path):
    dest = tmp_path / "data.csv"
    dest.write_bytes(b"truncated")
    download(f"{server.url}/data.csv", dest, SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_http_404_says_what_to_do(server, tmp_path):
    dest = tmp_path / "raw" / "missing.csv"
    with pytest.raises(DownloadError) as e:
        download(f"{server.url}/missing.csv", dest, SHA, progress=False)
    msg = str(e.value)
    assert "HTTP 404" in msg and "by hand" in msg and str(dest.resolve()) in msg and SHA in msg
    assert not dest.exists() and leftovers(dest.parent) == []


def test_unreachable_host_says_what_to_do(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: bind, note it, close
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "data.csv"
    with pytest.raises(DownloadError, match="by hand"):
        download(f"http://127.0.0.1:{port}/data.csv", dest, SHA, timeout=5, progress=False)
    assert not dest.exists() and leftovers(tmp_path) == []


def test_file_url(tmp_path):
    src = tmp_path / "src.csv"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "raw" / "copy.csv"
    assert download(src.as_uri(), dest, SHA, progress=False).read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="by hand"):
        download((tmp_path / "absent.csv").as_uri(), tmp_path / "raw" / "absent.csv", SHA, progress=False)


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="64 hex"):
        download("http://127.0.0.1/x.csv", tmp_path / "x.csv", "abc", progress=False)
    with pytest.raises(ConfigError, match="scheme 'ftp'"):
        download("ftp://example.org/x.csv", tmp_path / "x.csv", SHA, progress=False)


def test_fetch_to(server, tmp_path):
    raw = tmp_path / "raw"
    got = fetch_to(raw, SimpleNamespace(path=None, url=f"{server.url}/data.csv", sha256=SHA), progress=False)
    assert got == raw / "data.csv" and got.read_bytes() == PAYLOAD
    local = SimpleNamespace(path=str(got), url=None, sha256=None)
    assert fetch_to(raw, local) == got
    with pytest.raises(ConfigError, match="not both"):
        fetch_to(raw, SimpleNamespace(path=str(got), url=f"{server.url}/data.csv", sha256=SHA))
    with pytest.raises(ConfigError, match="sha256"):
        fetch_to(raw, SimpleNamespace(path=None, url=f"{server.url}/data.csv", sha256=None))
    with pytest.raises(ConfigError, match="'path'"):
        fetch_to(raw, SimpleNamespace(path=None, url=None, sha256=None), where="source(x)")
    with pytest.raises(FileNotFoundError, match="get it from here"):
        fetch_to(raw, SimpleNamespace(path=str(raw / "absent.csv"), url=None, sha256=None), how_to_get="get it from here")
