"""Where things live. No hard-coded absolute paths: everything hangs off the repository root
(found by walking up to ``pyproject.toml``) or an explicit argument / environment variable."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ROOT", "REPORTS", "RUNS", "data_root", "DataNotFoundError"]


def _find_root() -> Path:
    here = Path(__file__).resolve().parent
    for p in (here, *here.parents):
        if (p / "pyproject.toml").exists() and (p / "avlib").is_dir():
            return p
    return Path.cwd()


ROOT: Path = _find_root()
REPORTS: Path = ROOT / "reports"          # executed notebooks, metrics, figures (per profile)
RUNS: Path = ROOT / "runs"                # checkpoints and training logs (gitignored)
CACHE: Path = Path(os.environ.get("AVLIB_CACHE", ROOT / "data" / "cache"))  # the download step's target


class DataNotFoundError(FileNotFoundError):
    """The real recordings are not where we looked; the message says how to get them."""


def data_root(root: str | os.PathLike | None = None, *, require: tuple[str, ...] = ()) -> Path:
    """Resolve the data root: explicit ``root``, then ``$AVLIB_DATA_ROOT``, then the local cache
    (``data/cache``, filled by ``python -m avlib.data.download``).

    ``require`` lists sub-folders that must exist (e.g. ``("fsdd", "mnist")``).
    """
    tried = []
    for cand, why in ((root, "argument"), (os.environ.get("AVLIB_DATA_ROOT"), "$AVLIB_DATA_ROOT"), (CACHE, "cache")):
        if not cand:
            continue
        p = Path(cand).expanduser().resolve()
        tried.append(f"{p} ({why})")
        if p.is_dir() and all((p / r).exists() for r in require):
            return p
        if why != "cache":   # an explicit choice that is wrong is an error, not a fallthrough
            missing = [r for r in require if not (p / r).exists()]
            raise DataNotFoundError(f"data root {p} (from {why}) is missing {missing or 'the folder itself'}.\n"
                                    + _HOW_TO_FIX)
    raise DataNotFoundError("no data found; looked in: " + ", ".join(tried or ["(nothing set)"]) + "\n" + _HOW_TO_FIX)


_HOW_TO_FIX = (
    "Fix: run `python -m avlib.data.download` (or `make data`) to fetch FSDD and MNIST into data/cache,\n"
    "     or point AVLIB_DATA_ROOT at a folder holding fsdd/ and mnist/,\n"
    "     or use the offline synthetic scenes: make_config(..., **{'data.dataset': 'synthetic'}).")
