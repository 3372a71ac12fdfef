"""Fetch FSDD and MNIST into the data cache, verifying their *content* against a shipped manifest.

    python -m avlib.data.download                       # into data/cache (avlib.paths.CACHE)
    python -m avlib.data.download --dest ~/avdata       # anywhere; then export AVLIB_DATA_ROOT=~/avdata
    python -m avlib.data.download --base-url http://mirror.example/avlib   # one mirror for both

Layout written (the same as ``../shared/data``)::

    DEST/fsdd/recordings/{digit}_{speaker}_{take}.wav   DEST/fsdd/speakers.json   DEST/fsdd/README.md
    DEST/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz

Checks. An archive's own hash cannot be pinned offline (GitHub archives are re-generated), so the
manifest ``checksums.json`` pins the content: the sha256 of each *decompressed* MNIST file, and for FSDD the
number of recordings plus one sha256 over the sorted ``name<TAB>sha256(file)`` lines. Each download goes to
a ``.part`` file (resumed with an HTTP Range request when possible), is verified, and only then moved into
place atomically; files already present and valid are skipped. ``--base-url`` / ``--fsdd-url`` /
``--mnist-url`` replace the public homes (the tests serve a small fake set from 127.0.0.1).
``--write-manifest DIR`` recomputes the manifest from a trusted copy (maintainers).
"""
from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Iterable, Sequence

from ..utils import sha256_file

__all__ = ["download", "download_fsdd", "download_mnist", "build_manifest", "load_manifest", "verify_fsdd",
           "verify_mnist_file", "DownloadError", "ChecksumError", "FSDD_URLS", "MNIST_MIRRORS", "MANIFEST_PATH",
           "main"]

FSDD_TAG = "v1.0.10"
FSDD_URLS = (
    f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/{FSDD_TAG}.tar.gz",
    f"https://codeload.github.com/Jakobovski/free-spoken-digit-dataset/tar.gz/refs/tags/{FSDD_TAG}",
    # the commit the reference copy (and so the manifest) was taken from, in case the tag differs
    "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/26eb9aa.tar.gz",
)
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
FSDD_ARCHIVE_NAME = f"free-spoken-digit-dataset-{FSDD_TAG.lstrip('v')}.tar.gz"   # name under --base-url
MANIFEST_PATH = Path(__file__).with_name("checksums.json")
_CHUNK = 1 << 16
_USER_AGENT = "avlib-download/0.1 (+python urllib)"


class DownloadError(RuntimeError):
    """Every source for a file failed; the message lists what was tried."""


class ChecksumError(DownloadError):
    """Downloaded (or present) content does not match the manifest."""


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------
def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fsdd_digest(rec_dir: Path) -> tuple[int, str]:
    """``(count, sha256 over sorted 'name<TAB>sha256(file)' lines)`` of the wav files in ``rec_dir``."""
    names = sorted(p.name for p in Path(rec_dir).glob("*.wav"))
    h = hashlib.sha256()
    for n in names:
        h.update(f"{n}\t{sha256_file(Path(rec_dir) / n)}\n".encode())
    return len(names), h.hexdigest()


def build_manifest(root: str | os.PathLike) -> dict:
    """Manifest of a trusted copy at ``root`` (holding ``fsdd/recordings`` and ``mnist/*.gz``)."""
    root = Path(root)
    count, digest = fsdd_digest(root / "fsdd" / "recordings")
    mnist = {}
    for p in sorted((root / "mnist").glob("*.gz")):
        with gzip.open(p, "rb") as f:
            data = f.read()
        mnist[p.name] = {"sha256_decompressed": _sha256_bytes(data), "bytes_decompressed": len(data)}
    return {"format": 1,
            "fsdd": {"tag": FSDD_TAG, "count": count, "recordings_sha256": digest,
                     "rule": "sha256 over sorted lines 'name\\tsha256(file)\\n' of recordings/*.wav"},
            "mnist": mnist}


def load_manifest(path: str | os.PathLike | None = None) -> dict:
    path = Path(path) if path else MANIFEST_PATH
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as e:
        raise DownloadError(f"checksum manifest {path} is missing (reinstall avlib)") from e


# ----------------------------------------------------------------------------------------------
# HTTP with resume and progress
# ----------------------------------------------------------------------------------------------
def _progress(total: int | None, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not enabled, leave=False)


def fetch(url: str, dest: Path, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part`` (resumed if present), then move it into place."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:                   # the .part is already complete
            os.replace(part, dest)
            return dest
        raise
    with resp:
        if have and resp.status != 206:              # server ignored the range: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = (int(length) + have) if length is not None else None
        with open(part, "ab" if have else "wb") as f, _progress(total, have, dest.name, progress) as bar:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise DownloadError(f"{url}: got {part.stat().st_size} of {total} bytes (connection dropped? run again "
                            "to resume)")
    os.replace(part, dest)
    return dest


def _try_sources(urls: Sequence[str], dest: Path, verify, *, progress: bool, timeout: float) -> Path:
    """Fetch from the first URL that gives verified content; a bad file is deleted before the next try."""
    errors, mismatch = [], False
    for url in urls:
        try:
            fetch(url, dest, progress=progress, timeout=timeout)
            verify(dest)
            return dest
        except ChecksumError as e:
            mismatch = True
            errors.append(f"{url}: {e}")
            for p in (dest, dest.with_name(dest.name + ".part")):
                p.unlink(missing_ok=True)
        except (urllib.error.URLError, OSError, DownloadError, tarfile.TarError, EOFError) as e:
            errors.append(f"{url}: {type(e).__name__}: {e}")
            dest.unlink(missing_ok=True)
    cls = ChecksumError if mismatch else DownloadError
    raise cls(f"could not get {dest.name}; tried:\n  " + "\n  ".join(errors)
              + "\nCheck the network / proxy, or pass another mirror with --base-url / --fsdd-url / --mnist-url.")


# ----------------------------------------------------------------------------------------------
# MNIST
# ----------------------------------------------------------------------------------------------
def verify_mnist_file(path: Path, expected: dict) -> None:
    try:
        got = sha256_file(path, gunzip=True)
    except (OSError, EOFError, zlib.error) as e:   # BadGzipFile is an OSError; zlib.error: damaged deflate data
        raise ChecksumError(f"{path.name}: not a valid gzip file ({type(e).__name__}: {e})") from e
    if got != expected["sha256_decompressed"]:
        raise ChecksumError(f"{path.name}: checksum mismatch (decompressed sha256 {got[:16]}..., "
                            f"expected {expected['sha256_decompressed'][:16]}...)")


def download_mnist(dest: Path, *, mirrors: Sequence[str] = MNIST_MIRRORS, manifest: dict | None = None,
                   progress: bool = True, timeout: float = 60.0, force: bool = False) -> Path:
    """The 4 MNIST gz files into ``dest/mnist`` (skips files already present and valid)."""
    manifest = manifest or load_manifest()
    out = Path(dest) / "mnist"
    out.mkdir(parents=True, exist_ok=True)
    for name, expected in manifest["mnist"].items():
        target = out / name
        if target.exists() and not force:
            try:
                verify_mnist_file(target, expected)
                continue
            except ChecksumError:
                target.unlink()                    # stale / corrupt: fetch again
        if force:
            target.unlink(missing_ok=True)
        urls = [m.rstrip("/") + "/" + name for m in mirrors]
        _try_sources(urls, target, lambda p, e=expected: verify_mnist_file(p, e), progress=progress,
                     timeout=timeout)
    return out


# ----------------------------------------------------------------------------------------------
# FSDD
# ----------------------------------------------------------------------------------------------
def verify_fsdd(rec_dir: Path, expected: dict) -> None:
    count, digest = fsdd_digest(rec_dir)
    if count != expected["count"] or digest != expected["recordings_sha256"]:
        raise ChecksumError(f"FSDD recordings checksum mismatch: {count} files, digest {digest[:16]}... "
                            f"(expected {expected['count']} files, {expected['recordings_sha256'][:16]}...)")


def _speakers_json(metadata_py: bytes) -> dict:
    """FSDD's ``metadata.py`` holds ``metadata = {...}``: read the literal without executing anything."""
    tree = ast.parse(metadata_py.decode("utf-8", "replace"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "metadata" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _extract_fsdd(archive: Path, into: Path) -> None:
    """Extract ``<top>/recordings/*.wav``, ``metadata.py`` -> ``speakers.json`` and ``README.md`` (nothing
    else, no links, no path tricks) into ``into``."""
    rec = into / "recordings"
    rec.mkdir(parents=True)
    n = 0
    with tarfile.open(archive, "r:*") as tar:
        for m in tar:
            parts = Path(m.name).parts
            if len(parts) < 2 or not m.isfile():
                continue
            rel = parts[1:]
            if len(rel) == 2 and rel[0] == "recordings" and rel[1].endswith(".wav") and "/" not in rel[1] \
                    and not rel[1].startswith("."):
                with tar.extractfile(m) as src, open(rec / rel[1], "wb") as dst:
                    shutil.copyfileobj(src, dst)
                n += 1
            elif rel == ("metadata.py",):
                with tar.extractfile(m) as src:
                    speakers = _speakers_json(src.read())
                (into / "speakers.json").write_text(json.dumps(speakers, indent=1) + "\n")
            elif rel == ("README.md",):
                with tar.extractfile(m) as src, open(into / "README.md", "wb") as dst:
                    shutil.copyfileobj(src, dst)
    if n == 0:
        raise DownloadError(f"{archive.name}: no recordings/*.wav inside (not the FSDD archive?)")


def download_fsdd(dest: Path, *, urls: Sequence[str] = FSDD_URLS, manifest: dict | None = None,
                  progress: bool = True, timeout: float = 120.0, force: bool = False,
                  keep_archive: bool = False) -> Path:
    """FSDD recordings into ``dest/fsdd`` (extract to a temp folder, verify, then one atomic rename)."""
    manifest = manifest or load_manifest()
    expected = manifest["fsdd"]
    dest = Path(dest)
    final = dest / "fsdd"
    if (final / "recordings").is_dir() and not force:
        try:
            verify_fsdd(final / "recordings", expected)
            return final
        except ChecksumError as e:
            raise ChecksumError(f"{final} exists but does not match the manifest ({e}); move it away or "
                                "run again with --force to replace it") from e
    downloads = dest / ".downloads"
    archive = downloads / FSDD_ARCHIVE_NAME

    def verify_archive(path: Path) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".fsdd-", dir=dest))
        try:
            try:
                _extract_fsdd(path, tmp / "fsdd")
            except (tarfile.TarError, EOFError, OSError) as e:
                raise ChecksumError(f"{path.name}: unreadable archive ({e})") from e
            verify_fsdd(tmp / "fsdd" / "recordings", expected)
            if final.exists():
                shutil.rmtree(final)               # only reached with force (or an incomplete folder)
            os.replace(tmp / "fsdd", final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    dest.mkdir(parents=True, exist_ok=True)
    done = False
    if archive.exists():                           # resumable: a previous run's complete archive
        try:
            verify_archive(archive)
            done = True
        except (ChecksumError, DownloadError):
            archive.unlink()
    if not done:
        _try_sources(list(urls), archive, verify_archive, progress=progress, timeout=timeout)
    if not keep_archive:
        archive.unlink(missing_ok=True)
        try:
            downloads.rmdir()
        except OSError:
            pass
    return final


# ----------------------------------------------------------------------------------------------
# Both
# ----------------------------------------------------------------------------------------------
def download(dest: str | os.PathLike | None = None, *, only: Iterable[str] = ("fsdd", "mnist"),
             base_url: str | None = None, fsdd_urls: Sequence[str] | None = None,
             mnist_mirrors: Sequence[str] | None = None, manifest: dict | None = None, progress: bool = True,
             force: bool = False, timeout: float = 120.0, keep_archive: bool = False) -> Path:
    """Fetch and verify FSDD and MNIST into ``dest`` (default: ``avlib.paths.CACHE``); returns ``dest``.

    ``base_url`` serves both: ``{base_url}/free-spoken-digit-dataset-1.0.10.tar.gz`` and
    ``{base_url}/mnist/<file>.gz``; ``fsdd_urls`` / ``mnist_mirrors`` override each (tried in order).
    """
    from avlib.paths import CACHE

    dest = Path(dest).expanduser() if dest else Path(CACHE)
    manifest = manifest or load_manifest()
    only = set(only)
    bad = only - {"fsdd", "mnist"}
    if bad:
        raise ValueError(f"only={sorted(bad)}: choose from fsdd, mnist")
    if base_url:
        b = base_url.rstrip("/")
        fsdd_urls = fsdd_urls or [f"{b}/{FSDD_ARCHIVE_NAME}"]
        mnist_mirrors = mnist_mirrors or [f"{b}/mnist/"]
    if "mnist" in only:
        download_mnist(dest, mirrors=mnist_mirrors or MNIST_MIRRORS, manifest=manifest, progress=progress,
                       timeout=timeout, force=force)
    if "fsdd" in only:
        download_fsdd(dest, urls=fsdd_urls or FSDD_URLS, manifest=manifest, progress=progress, timeout=timeout,
                      force=force, keep_archive=keep_archive)
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m avlib.data.download", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", help="target folder (default: data/cache; then set AVLIB_DATA_ROOT if elsewhere)")
    ap.add_argument("--base-url", help="one mirror for both: BASE/free-spoken-digit-dataset-1.0.10.tar.gz, BASE/mnist/")
    ap.add_argument("--fsdd-url", action="append", help="FSDD archive URL (repeat for fallbacks)")
    ap.add_argument("--mnist-url", action="append", help="MNIST mirror folder URL (repeat for fallbacks)")
    ap.add_argument("--only", choices=("fsdd", "mnist"), action="append", help="fetch only this one")
    ap.add_argument("--force", action="store_true", help="replace existing files even when they verify")
    ap.add_argument("--keep-archive", action="store_true", help="keep the FSDD tar.gz under DEST/.downloads")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--write-manifest", metavar="DIR",
                    help="maintainers: compute the checksum manifest from a trusted copy at DIR and print it")
    a = ap.parse_args(argv)
    if a.write_manifest:
        print(json.dumps(build_manifest(a.write_manifest), indent=1))
        return 0
    try:
        dest = download(a.dest, only=a.only or ("fsdd", "mnist"), base_url=a.base_url, fsdd_urls=a.fsdd_url,
                        mnist_mirrors=a.mnist_url, progress=not a.quiet, force=a.force, timeout=a.timeout,
                        keep_archive=a.keep_archive)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"data ready in {dest}")
    from avlib.paths import CACHE
    if Path(dest).resolve() != Path(CACHE).resolve():
        print(f"use it with: export AVLIB_DATA_ROOT={Path(dest).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
