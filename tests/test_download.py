"""The download step end to end against a loopback HTTP server (never the real URLs)."""
from __future__ import annotations

import gzip
import http.server
import io
import json
import struct
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import avlib.data.download as dl
from avlib.data.sources import clear_caches, fsdd_index, load_fsdd, load_mnist
from avlib.paths import data_root

TOP = "free-spoken-digit-dataset-1.0.10"
WAVS = ["0_george_0.wav", "0_george_7.wav", "3_theo_2.wav", "3_theo_30.wav", "9_lucas_1.wav", "9_lucas_12.wav"]


def _idx(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08}[arr.dtype.type]
    return bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A served folder with a small FSDD archive and MNIST files, plus their manifest (the 'trusted copy')."""
    base = tmp_path_factory.mktemp("site")
    trusted = tmp_path_factory.mktemp("trusted")
    rng = np.random.default_rng(0)
    (trusted / "fsdd" / "recordings").mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i, name in enumerate(WAVS):
            wav = io.BytesIO()
            sf.write(wav, (0.3 * rng.standard_normal(800 + 100 * i)).astype(np.float32), 8000, subtype="PCM_16",
                     format="WAV")
            data = wav.getvalue()
            (trusted / "fsdd" / "recordings" / name).write_bytes(data)
            _tar_add(tar, f"{TOP}/recordings/{name}", data)
        _tar_add(tar, f"{TOP}/metadata.py", b'"""speakers"""\n\nmetadata = {\n    "george": {"gender": "male"},\n'
                                             b'    "theo": {"gender": "male"}\n}\nimport os  # never executed\n')
        _tar_add(tar, f"{TOP}/README.md", b"# FSDD\n")
        _tar_add(tar, f"{TOP}/utils/spectrogramer.py", b"print('not extracted')\n")
        _tar_add(tar, f"{TOP}/recordings/../../evil.wav", b"x")              # path trick: ignored
        link = tarfile.TarInfo(f"{TOP}/recordings/link.wav")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (base / dl.FSDD_ARCHIVE_NAME).write_bytes(buf.getvalue())
    (base / "mnist").mkdir()
    (trusted / "mnist").mkdir()
    for split, n in (("train", 12), ("t10k", 5)):
        imgs = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labs = (np.arange(n) % 10).astype(np.uint8)
        for kind, arr in (("images-idx3", imgs), ("labels-idx1", labs)):
            name = f"{split}-{kind}-ubyte.gz"
            gz = gzip.compress(_idx(arr), mtime=0)
            (base / "mnist" / name).write_bytes(gz)
            (trusted / "mnist" / name).write_bytes(gzip.compress(_idx(arr), compresslevel=1, mtime=0))
    manifest = dl.build_manifest(trusted)
    assert manifest["fsdd"]["count"] == len(WAVS)
    return base, manifest


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files with Range support; records every request."""

    log: list = []

    def log_message(self, *a):
        pass

    def do_GET(self):
        _Handler.log.append((self.path, self.headers.get("Range")))
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server(site):
    base, _ = site

    def handler(*a, **kw):
        return _Handler(*a, directory=str(base), **kw)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    _Handler.log = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}", base
    httpd.shutdown()
    httpd.server_close()


def test_end_to_end_then_skip(site, server, tmp_path):
    _, manifest = site
    url, _ = server
    dest = tmp_path / "cache"
    out = dl.download(dest, base_url=url, manifest=manifest, progress=False)
    assert out == dest
    recs = sorted(p.name for p in (dest / "fsdd" / "recordings").iterdir())
    assert recs == sorted(WAVS)                                        # no link, no path trick, nothing else
    assert not (tmp_path / "evil.wav").exists() and not (dest / "evil.wav").exists()
    assert json.loads((dest / "fsdd" / "speakers.json").read_text()) == {"george": {"gender": "male"},
                                                                          "theo": {"gender": "male"}}
    assert (dest / "fsdd" / "README.md").exists() and not (dest / "fsdd" / "utils").exists()
    assert sorted(p.name for p in (dest / "mnist").iterdir()) == sorted(manifest["mnist"])
    assert not list(dest.rglob("*.part")) and not (dest / ".downloads").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".fsdd-")]
    # the result is a valid data root for the loaders
    clear_caches()
    try:
        assert data_root(dest, require=("fsdd", "mnist")) == dest.resolve()
        images, labels = load_mnist(dest, "test")
        assert images.shape == (5, 28, 28) and labels.tolist() == [0, 1, 2, 3, 4]
        assert len(fsdd_index(dest)) == len(WAVS)
        assert load_fsdd(dest, split="test").takes.max() <= 4
    finally:
        clear_caches()
    # everything present and valid: a second run asks the server for nothing
    n = len(_Handler.log)
    dl.download(dest, base_url=url, manifest=manifest, progress=False)
    assert len(_Handler.log) == n


def test_checksum_mismatch_leaves_nothing(site, server, tmp_path):
    _, manifest = site
    url, _ = server
    bad = json.loads(json.dumps(manifest))
    name = "t10k-labels-idx1-ubyte.gz"
    bad["mnist"][name]["sha256_decompressed"] = "0" * 64
    dest = tmp_path / "cache"
    with pytest.raises(dl.ChecksumError, match="checksum mismatch") as e:
        dl.download(dest, base_url=url, manifest=bad, progress=False, only=("mnist",))
    assert name in str(e.value) and "--base-url" in str(e.value)
    assert not (dest / "mnist" / name).exists() and not list(dest.rglob("*.part"))
    # FSDD: wrong content digest -> no fsdd folder, no temp folders
    bad = json.loads(json.dumps(manifest))
    bad["fsdd"]["recordings_sha256"] = "f" * 64
    with pytest.raises(dl.ChecksumError, match="FSDD recordings checksum mismatch"):
        dl.download(dest, base_url=url, manifest=bad, progress=False, only=("fsdd",))
    assert not (dest / "fsdd").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".fsdd-")]
    assert not (dest / ".downloads" / dl.FSDD_ARCHIVE_NAME).exists()


def test_fallback_mirror_and_corrupt_local_file(site, server, tmp_path):
    _, manifest = site
    url, _ = server
    dest = tmp_path / "cache"
    (dest / "mnist").mkdir(parents=True)
    (dest / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(b"garbage")   # replaced, not trusted
    dl.download(dest, manifest=manifest, progress=False, only=("mnist",),
                mnist_mirrors=[f"{url}/missing/", f"{url}/mnist/"])
    assert any(p.startswith("/missing/") for p, _ in _Handler.log)
    dl.verify_mnist_file(dest / "mnist" / "train-labels-idx1-ubyte.gz",
                         manifest["mnist"]["train-labels-idx1-ubyte.gz"])


def test_resume_partial_download(site, server, tmp_path):
    _, manifest = site
    url, base = server
    dest = tmp_path / "cache"
    archive = (base / dl.FSDD_ARCHIVE_NAME).read_bytes()
    part = dest / ".downloads" / (dl.FSDD_ARCHIVE_NAME + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(archive[: len(archive) // 2])
    dl.download(dest, base_url=url, manifest=manifest, progress=False, only=("fsdd",))
    assert (f"/{dl.FSDD_ARCHIVE_NAME}", f"bytes={len(archive) // 2}-") in _Handler.log
    assert len(list((dest / "fsdd" / "recordings").iterdir())) == len(WAVS)
    # an existing but different fsdd folder is refused unless --force
    (dest / "fsdd" / "recordings" / WAVS[0]).write_bytes(b"tampered")
    with pytest.raises(dl.ChecksumError, match="--force"):
        dl.download(dest, base_url=url, manifest=manifest, progress=False, only=("fsdd",))
    dl.download(dest, base_url=url, manifest=manifest, progress=False, only=("fsdd",), force=True)
    dl.verify_fsdd(dest / "fsdd" / "recordings", manifest["fsdd"])


def test_cli_and_unreachable(site, server, tmp_path, monkeypatch, capsys):
    _, manifest = site
    url, _ = server
    monkeypatch.setattr(dl, "load_manifest", lambda path=None: manifest)
    assert dl.main(["--dest", str(tmp_path / "d"), "--base-url", url, "--quiet"]) == 0
    assert "AVLIB_DATA_ROOT" in capsys.readouterr().out
    # nothing listens on this port: a clear error, exit code 1
    with pytest.raises(dl.DownloadError, match="could not get"):
        dl.download(tmp_path / "e", base_url="http://127.0.0.1:9", manifest=manifest, progress=False,
                    timeout=5, only=("mnist",))
    assert dl.main(["--dest", str(tmp_path / "e"), "--base-url", "http://127.0.0.1:9", "--only", "mnist",
                    "--quiet", "--timeout", "5"]) == 1
    assert "error:" in capsys.readouterr().err


@pytest.mark.data
def test_shipped_manifest_matches_shared_data(data_root):
    """The shipped manifest is the content of the reference copy (../shared/data)."""
    shipped = dl.load_manifest()
    assert shipped["fsdd"]["count"] == 3000 and len(shipped["mnist"]) == 4
    for name, exp in shipped["mnist"].items():
        dl.verify_mnist_file(data_root / "mnist" / name, exp)
    dl.verify_fsdd(data_root / "fsdd" / "recordings", shipped["fsdd"])


def test_gz_with_zeroed_bytes_is_a_checksum_error_so_download_replaces_it(tmp_path):
    # 'garbage' fails gzip's magic check (an OSError); zeroed bytes inside the deflate stream raise zlib.error,
    # which the download used to let through (a crash instead of a re-fetch)
    raw = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    data = bytearray(gzip.compress(raw))
    data[len(data) // 2: len(data) // 2 + 4096] = bytes(4096)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(dl.ChecksumError, match="train-labels-idx1-ubyte.gz: not a valid gzip file"):
        dl.verify_mnist_file(path, {"sha256_decompressed": "0" * 64})
