"""`hdkd data download medmnist`: against a local HTTP server only (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from hdkd.cli import main
from hdkd.data.download import MEDMNIST_MD5, download_medmnist, medmnist_filename
from hdkd.data.sources import read_medmnist
from hdkd.errors import ConfigError, DataError


class _Server:
    def __init__(self, folder: Path):
        self.requests: list[str] = []
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                server.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args):  # quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    """A small MedMNIST-format npz served as /files/toymnist.npz and /files/breastmnist.npz (not the real one)."""
    folder = tmp_path / "www" / "files"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None].astype(np.uint8)
    np.savez_compressed(folder / "toymnist.npz", **arrays)
    (folder / "breastmnist.npz").write_bytes((folder / "toymnist.npz").read_bytes())
    (folder / "toymnist_64.npz").write_bytes(b"not the 64 px file")
    md5 = hashlib.md5((folder / "toymnist.npz").read_bytes()).hexdigest()
    server = _Server(tmp_path / "www")
    yield server, md5
    server.close()


def test_download_verifies_caches_and_loads(served, tmp_path, capsys):
    server, md5 = served
    cache = tmp_path / "cache"
    code = main(
        ["data", "download", "medmnist", "toymnist", "--cache", str(cache), "--url-base", server.url, "--md5", md5]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    target = cache / "toymnist.npz"
    assert out.strip() == str(target) and "verified" in err
    assert hashlib.md5(target.read_bytes()).hexdigest() == md5
    assert sorted(p.name for p in cache.iterdir()) == ["toymnist.npz"]  # no temporary file left
    assert server.requests == ["/files/toymnist.npz?download=1"]
    source = read_medmnist(target)
    assert len(source.train) == 12 and len(source.test) == 6

    # present with the right checksum: not fetched again
    assert download_medmnist("toymnist", cache=cache, url_base=server.url, md5=md5) == target
    assert len(server.requests) == 1
    # a corrupted cached copy is replaced
    target.write_bytes(b"truncated")
    assert download_medmnist("toymnist", cache=cache, url_base=server.url, md5=md5) == target
    assert len(server.requests) == 2 and hashlib.md5(target.read_bytes()).hexdigest() == md5


def test_default_cache_folder_follows_hdkd_cache_dir(served, tmp_path, monkeypatch):
    server, md5 = served
    monkeypatch.setenv("HDKD_CACHE_DIR", str(tmp_path / "hdkd-cache"))
    path = download_medmnist("toymnist", url_base=server.url, md5=md5)
    assert path == tmp_path / "hdkd-cache" / "medmnist" / "toymnist.npz" and path.is_file()


def test_checksum_mismatch_deletes_the_download(served, tmp_path, capsys):
    server, md5 = served
    cache = tmp_path / "cache"
    wrong = "0" * 32
    with pytest.raises(DataError) as info:
        download_medmnist("toymnist", cache=cache, url_base=server.url, md5=wrong)
    message = str(info.value)
    assert "toymnist.npz" in message and wrong in message and md5 in message
    assert not cache.exists() or not any(cache.iterdir())  # neither the file nor a temporary file

    # no --md5: the published checksum is the one checked (the served file is not the official BreastMNIST)
    code = main(["data", "download", "medmnist", "breastmnist", "--cache", str(cache), "--url-base", server.url])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # one line, no traceback
    assert code == 2 and last.startswith("hdkd: error: breastmnist.npz: MD5 checksum mismatch")
    assert MEDMNIST_MD5[("breastmnist", 28)] in last
    assert not (cache / "breastmnist.npz").exists()


def test_unreachable_server_and_http_errors(served, tmp_path):
    server, md5 = served
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(
        DataError,
        match=r"cannot reach http://127\.0\.0\.1:\d+/toymnist\.npz.*download the file "
        r"by hand and pass it with --data",
    ):
        download_medmnist("toymnist", cache=tmp_path / "c", url_base=f"http://127.0.0.1:{port}", md5=md5, timeout=5)
    with pytest.raises(DataError, match="HTTP 404"):
        download_medmnist("missingmnist", cache=tmp_path / "c", url_base=server.url, md5=md5)
    assert not (tmp_path / "c" / "missingmnist.npz").exists()


def test_unknown_names_and_sizes_need_an_explicit_checksum(served, tmp_path, capsys):
    server, md5 = served
    with pytest.raises(ConfigError, match="toymnist.*--md5"):
        download_medmnist("toymnist", cache=tmp_path, url_base=server.url)
    with pytest.raises(ConfigError, match="chestmnist"):  # multi-label: not in the table
        download_medmnist("chestmnist", cache=tmp_path, url_base=server.url)
    with pytest.raises(ConfigError, match="--size 32"):
        download_medmnist("breastmnist", size=32, cache=tmp_path, url_base=server.url)
    with pytest.raises(ConfigError, match="not a dataset name"):
        download_medmnist("../etc", cache=tmp_path, url_base=server.url, md5=md5)
    assert server.requests == []  # refused before any request
    assert main(["data", "download", "medmnist", "toymnist", "--cache", str(tmp_path)]) == 2
    assert "--md5" in capsys.readouterr().err

    # size 64 uses the {name}_64.npz file name
    assert medmnist_filename("toymnist", 64) == "toymnist_64.npz" and medmnist_filename("toymnist") == "toymnist.npz"
    with pytest.raises(DataError, match="toymnist_64.npz: MD5 checksum mismatch"):
        download_medmnist("toymnist", size=64, cache=tmp_path, url_base=server.url, md5=md5)
    assert server.requests == ["/files/toymnist_64.npz?download=1"]


def test_published_table_has_the_required_checksums():
    for name in ("breastmnist", "dermamnist", "pneumoniamnist", "bloodmnist", "organamnist"):
        assert len(MEDMNIST_MD5[(name, 28)]) == 32
    assert MEDMNIST_MD5[("breastmnist", 28)] == "750601b1f35ba3300ea97c75c52ff8f6"
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "medmnist" / "breastmnist.npz"
    if shared.is_file():  # the official file the project holds has the published checksum
        assert hashlib.md5(shared.read_bytes()).hexdigest() == MEDMNIST_MD5[("breastmnist", 28)]
