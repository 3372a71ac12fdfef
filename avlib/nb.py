"""Notebook helpers: the few lines every notebook shares, so that no notebook defines them.

    from avlib import nb
    dev = nb.setup(seed, device)                                   # theme, formats, seeds, versions
    paths = nb.paths_for("03_classification", profile, out_dir, run_dir)
    cfg = make_config(profile, overrides=nb.parse_overrides(overrides), seed=seed)
    nb.check_shape(out.image, ("B", "Nv", cfg.model.embed_dim))    # d2l-style executable shape check
    nb.show_source(avlib.model.random_masking)                    # teach the package's code, don't copy it
    nb.save_fig(fig, paths.out_dir, "masking"); fig
    nb.record({"classification/pretrained/top1": acc}, paths.out_dir, cfg=cfg)
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

from .paths import REPORTS, ROOT, RUNS
from .utils import atomic_write, resolve_device, seed_everything

__all__ = ["setup", "resolve_device", "paths_for", "NotebookPaths", "record", "narrate", "check_shape", "show_source",
           "save_fig", "audio_player", "parse_overrides", "git_sha"]


# ----------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------
def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def setup(seed: int = 0, device: str = "auto", *, quiet: bool = False):
    """The first code cell of every notebook. Sets the seaborn theme and PNG inline figures (SVG is
    heavy for images and spectrograms), seeds python/numpy/torch deterministically, prints versions,
    torch threads and the device. Returns the resolved ``torch.device``."""
    import matplotlib
    import numpy as np
    import seaborn as sns
    import torch

    sns.set_theme(context="notebook", style="whitegrid")
    matplotlib.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150})
    if _in_ipython():
        from matplotlib_inline.backend_inline import set_matplotlib_formats
        set_matplotlib_formats("png")
    seed_everything(seed)                                 # python, numpy, torch; deterministic kernels
    dev = resolve_device(device)
    if not quiet:
        hashseed = os.environ.get("PYTHONHASHSEED", "unset (the runner sets 0)")
        print(f"python {platform.python_version()} | torch {torch.__version__} | numpy {np.__version__} | "
              f"matplotlib {matplotlib.__version__}")
        print(f"device {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
              + f" | torch threads {torch.get_num_threads()} | seed {seed} | PYTHONHASHSEED {hashseed}")
    return dev


# ----------------------------------------------------------------------------------------------
# Paths and config
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NotebookPaths:
    out_dir: Path        # metrics.json, figures/ (reports/<profile>/<notebook>/ by default)
    run_dir: Path        # checkpoints, history.json (runs/<profile>/<notebook>/ by default)

    @property
    def figures(self) -> Path:
        return self.out_dir / "figures"


def paths_for(notebook_name: str, profile: str, out_dir: str | os.PathLike = "",
              run_dir: str | os.PathLike = "") -> NotebookPaths:
    """Resolve a notebook's folders (the ``out_dir`` / ``run_dir`` parameters; "" means the default)
    and create them. Relative paths are taken from the repository root, not the kernel's cwd."""
    def resolve(p, default: Path) -> Path:
        p = Path(p) if p else default
        return (p if p.is_absolute() else ROOT / p).resolve()

    paths = NotebookPaths(out_dir=resolve(out_dir, REPORTS / profile / notebook_name),
                          run_dir=resolve(run_dir, RUNS / profile / notebook_name))
    for d in (paths.out_dir, paths.run_dir, paths.figures):
        d.mkdir(parents=True, exist_ok=True)
    return paths


def parse_overrides(overrides: Mapping[str, Any] | str | None) -> dict[str, Any]:
    """The ``overrides`` parameter as a plain dict for ``make_config(profile, overrides=...)``.

    Accepts a dict (dotted ``{"model.depth": 2}`` or nested ``{"model": {"depth": 2}}``) or a JSON/YAML
    string (``papermill -p overrides '{"model.depth": 2}'``). Unknown keys are rejected by
    ``make_config`` (with the closest valid key), not here."""
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, str):
        import yaml                                       # YAML is a superset of JSON
        overrides = yaml.safe_load(overrides)
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a dict of config keys, got {type(overrides).__name__}: {overrides!r}")
    return dict(overrides)


# ----------------------------------------------------------------------------------------------
# Recording results
# ----------------------------------------------------------------------------------------------
def git_sha(root: Path = ROOT) -> str | None:
    """The checked-out commit, read from ``.git`` files (no git binary needed); None outside a repo."""
    git = root / ".git"
    try:
        if git.is_file():                                 # a worktree: ".git" holds "gitdir: <path>"
            git = (root / git.read_text().split(":", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref:"):
            return head[:12]                              # detached HEAD
        ref = head.split(" ", 1)[1]
        if (git / ref).exists():
            return (git / ref).read_text().strip()[:12]
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0][:12]
    except OSError:
        pass
    return None


def _scalar(key: str, value: Any):
    """A JSON-able scalar: numbers (numpy/torch 0-d included) become float/int, paths become strings."""
    if hasattr(value, "item") and not isinstance(value, (bool, int, float, str)):
        n = value.numel() if hasattr(value, "numel") else getattr(value, "size", None)
        if n == 1:
            value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            print(f"warning: metric {key!r} is {value}; recorded as null")
            return None
        return value
    raise TypeError(f"metric {key!r} must be a number or a string, got {type(value).__name__}; "
                    "metrics.json is a flat table (save arrays next to it with np.save)")


SLASH = "\u2215"            # '∕' (division slash) stands for a '/' inside a name: '/' separates the levels


def _flatten(d: Mapping[str, Any]) -> dict[str, Any]:
    """Nested metrics -> ``<task>/<init>/<metric>`` keys with JSON-able scalar values. A '/' inside a
    nested name (e.g. the variant ``"mask 0.75 / 0.8"``) becomes ``SLASH``, so every name stays one level."""
    from .config import flatten

    def escape(x):
        if not isinstance(x, Mapping):
            return x
        return {(str(k).replace("/", SLASH)): escape(v) for k, v in x.items()}
    return {k: _scalar(k, v) for k, v in flatten({k: escape(v) for k, v in d.items()}, "/").items()}


def record(metrics: Mapping[str, Any], out_dir: str | os.PathLike, *, cfg=None, show: bool = True,
           **extra: Any) -> None:
    """Write ``out_dir/metrics.json`` atomically and display it as a table (returns nothing, so a
    notebook's last line shows the table only).

    ``metrics`` is flattened (nested dicts become ``a/b/c`` keys, the summary's
    ``<task>/<init>/<metric>`` convention, e.g. ``classification/pretrained/top1``). Added next to it:
    ``extra`` (e.g. ``pretrain_ckpt=path``, an output later notebooks consume), ``profile`` and ``seed``
    and ``config_hash`` from ``cfg`` when given, and the git SHA when there is a repository.
    """
    data = _flatten(metrics)
    meta: dict[str, Any] = {}
    if cfg is not None:
        from .config import config_hash
        meta.update(profile=cfg.profile, seed=cfg.seed, config_hash=config_hash(cfg))
    meta.update(_flatten(extra))
    sha = git_sha()
    if sha:
        meta.setdefault("git_sha", sha)
    clash = set(data) & set(meta)
    if clash:
        raise ValueError(f"metric names {sorted(clash)} collide with recorded fields; rename them")
    data.update(meta)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "metrics.json"
    atomic_write(path, json.dumps(data, indent=2, allow_nan=False) + "\n", mode="w")   # never half a file
    if show:
        import pandas as pd
        from IPython.display import display

        table = pd.DataFrame({"value": pd.Series(data, dtype=object)})
        table.index.name = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}"
        display(table)


# ----------------------------------------------------------------------------------------------
# Teaching helpers
# ----------------------------------------------------------------------------------------------
def check_shape(t, expected: Sequence[int | str | None], name: str = "tensor", **sizes: int) -> dict[str, int]:
    """Assert ``t.shape`` matches ``expected`` (d2l's ``check_shape``, with names).

    Each entry is an int (exact), None (anything) or a name: a name must have the same size everywhere
    it appears, and the size given in ``sizes`` if any. Returns the sizes bound to names, e.g.
    ``check_shape(x, ("B", "Nv", 96), B=8)`` -> ``{"B": 8, "Nv": 64}``.
    """
    shape = tuple(int(s) for s in getattr(t, "shape", ()))
    want = tuple(expected)
    bound: dict[str, int] = dict(sizes)
    problems = []
    if len(shape) != len(want):
        problems.append(f"expected {len(want)} dims, got {len(shape)}")
    else:
        for i, (got, w) in enumerate(zip(shape, want)):
            if w is None:
                continue
            if isinstance(w, str):
                if w in bound and bound[w] != got:
                    problems.append(f"dim {i} ({w}) is {got}, expected {w}={bound[w]}")
                bound.setdefault(w, got)
            elif got != w:
                problems.append(f"dim {i} is {got}, expected {w}")
    if problems:
        def show(w):
            return "*" if w is None else (f"{w}={bound[w]}" if isinstance(w, str) and w in bound else str(w))
        raise AssertionError(f"{name} has shape {shape}, expected ({', '.join(show(w) for w in want)}): "
                             + "; ".join(problems))
    return {k: v for k, v in bound.items() if k in want}


class Narration(str):
    """Markdown text rendered from a run's own numbers (``narrate``); displays as Markdown."""

    def _repr_markdown_(self) -> str:
        return str(self)


def narrate(template: str, **values: Any) -> Narration:
    """The narrative around a result, with its numbers filled in from this run, never typed by hand:
    ``nb.narrate("Fine-tuning reaches {top1:.1f}% from the checkpoint.", top1=res.metrics["top1"])``.
    ``template`` is a ``str.format`` template of Markdown; a missing value is an error (a KeyError
    naming it), so text and numbers cannot drift apart. Shown as Markdown in notebooks and executed copies.
    The template may be indented like a docstring (continuation lines aligned under the call)."""
    return Narration(inspect.cleandoc(template).format(**values))     # a docstring's indentation rules


def show_source(obj):
    """The source of a function/class/module from ``avlib``, rendered with syntax highlighting."""
    from IPython.display import Code

    return Code(inspect.getsource(obj), language="python")


def save_fig(fig, out_dir: str | os.PathLike, name: str, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``out_dir/figures/<name>.png`` (the summary embeds these) and return the path."""
    path = Path(out_dir) / "figures" / f"{Path(name).stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def audio_player(waveform, sample_rate: int, *, scale: float | None = None):
    """An ``IPython.display.Audio`` player (normalized; saved inside executed notebooks, so they stay
    playable). ``waveform``: (S,) or (channels, S) array or tensor. With ``scale`` it plays
    ``waveform / scale`` unnormalized instead (``|waveform| <= scale``): clips given one common scale keep
    their relative loudness (``widgets.audio_players``)."""
    import numpy as np
    from IPython.display import Audio

    if hasattr(waveform, "detach"):
        waveform = waveform.detach().cpu().float().numpy()
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if scale is not None:
        return Audio(data=x / scale, rate=int(sample_rate), normalize=False)
    silent = not np.any(np.abs(x) > 0)                    # normalizing silence would divide by zero
    return Audio(data=x, rate=int(sample_rate), normalize=not silent)
