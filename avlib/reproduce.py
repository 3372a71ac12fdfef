"""Run the notebook sequence with papermill, in manifest order, and summarize the results.

    python -m avlib.reproduce --profile cpu                      # everything (up-to-date notebooks skipped)
    python -m avlib.reproduce --profile cpu --only 03            # re-run one notebook (upstream from state.json)
    python -m avlib.reproduce --profile cpu --from 04_localization --force
    python -m avlib.reproduce --profile cpu --dry-run            # validate parameters, print the plan, run nothing
    python -m avlib.reproduce --profile paper --set data.num_workers=16   # config overrides for every notebook
    python -m avlib.reproduce --check-notebooks                  # CI: committed notebooks are clean and paired

What it does, per notebook of ``notebooks/manifest.yaml`` (the format is documented in that file):

1. Before any kernel starts, every selected notebook's parameters are checked against its
   ``parameters`` cell (``papermill.inspect_notebook``): an unknown name is an error naming the notebook
   and the closest valid names (papermill itself only warns), and ``overrides`` go through
   ``make_config`` so config typos fail here too.
2. The kernel gets a reproducible environment (``KERNEL_ENV``; ``MPLBACKEND`` removed so the inline
   backend is used) and runs with ``cwd=notebooks/``, as in JupyterLab.
3. Parameters: ``profile, seed, device, out_dir, run_dir`` from the runner, the manifest's per-profile
   values, and upstream outputs (e.g. ``pretrain_ckpt``, which 02 records in its ``metrics.json``);
   ``--set key=value`` goes into every notebook's ``overrides`` (after the manifest's, so it wins).
4. The executed copy goes to ``reports/<profile>/<name>.ipynb`` (papermill never writes into
   ``notebooks/``); the notebook's ``metrics.json`` and ``figures/`` live in ``reports/<profile>/<name>/``.
5. The first failure stops the run with the notebook, the cell and the exception; exit status 1. Ctrl-C
   (SIGINT) or SIGTERM stops it too: recorded as ``interrupted`` with what finished, one line, exit 130.
6. ``reports/<profile>/state.json`` records each notebook's parameters, outputs and a fingerprint
   (notebook source + parameters + upstream fingerprints + ``avlib`` sources) so ``--only`` can re-use
   upstream outputs and unchanged notebooks are skipped; ``summary.md`` / ``summary.json`` are rewritten
   after every notebook. Its ``run`` record (and the summary's ``status``) says running | ok | failed |
   interrupted, with the notebooks finished and not run.
7. One runner per output folder: the run holds a lock on ``--out`` (``utils.folder_lock``); a second one
   is refused with the holder's pid, and a lock left by a killed runner is taken over.

Notebook files: each notebook is committed as a pair, ``notebooks/NN_name.py`` (jupytext percent: the
reviewed, diffable source) and ``notebooks/NN_name.ipynb`` (what students open in JupyterLab), both
without outputs; ``[tool.jupytext] formats = "ipynb,py:percent"`` keeps them in sync on save.
``verify_notebooks_clean`` (``--check-notebooks``) is the CI gate. A lone ``.py`` still runs (converted
in memory), and the runner refuses a pair whose cells differ.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import difflib
import hashlib
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .paths import REPORTS, ROOT, RUNS
from .utils import atomic_write, markdown_table, stable_hash

__all__ = [
    "MANIFEST", "KERNEL_ENV", "RUNNER_PARAMS", "ReproduceError", "NotebookFailed", "RunInterrupted", "Step", "Manifest",
    "load_manifest", "load_notebook", "notebook_parameters", "reproduce", "comparisons", "headline_references",
    "INIT_ORDER", "DELTAS", "ZERO_SHOT", "delta_label", "comparison_groups", "ordered_inits", "headline",
    "methods_table", "render_summary", "verify_notebooks_clean", "main",
]

MANIFEST: Path = Path(os.environ.get("AVLIB_MANIFEST", ROOT / "notebooks" / "manifest.yaml"))

# Set before the kernel starts: the kernel cannot set these for itself (too late once Python runs).
KERNEL_ENV = {
    "PYTHONHASHSEED": "0",                     # hash-randomized set/dict orders become reproducible
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",      # needed by torch.use_deterministic_algorithms on CUDA
    # no progress-bar widgets in executed copies (static viewers show them as stale labels or "0%"): the
    # training loop's plain log lines ("[finetune (scratch)] step 40/138 | ...") are the progress record
    "TQDM_DISABLE": "1",
    "PYDEVD_DISABLE_FILE_VALIDATION": "1",     # silences ipykernel's "frozen modules" debugger warning
}
KERNEL_ENV_UNSET = ("MPLBACKEND",)             # a user's MPLBACKEND=Agg would hide every inline figure
KERNEL_ARGS = ["--IPKernelApp.log_level=CRITICAL"]  # the kernel app's own log lines, not cell output

# Parameters the runner always passes; every notebook's parameters cell must define them.
RUNNER_PARAMS = ("profile", "seed", "device", "out_dir", "run_dir")
# Keys nb.record adds to metrics.json next to the metrics.
META_KEYS = ("profile", "seed", "git_sha", "config_hash", "notebook")


class ReproduceError(RuntimeError):
    """A problem found before or between notebooks (manifest, parameters, missing state): exit 2."""


class RunInterrupted(RuntimeError):
    """SIGINT / SIGTERM stopped the run; state.json and summary.json say so (exit 130)."""


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the exception: exit 1."""

    def __init__(self, message: str, *, notebook: str, cell_index: int | None = None):
        super().__init__(message)
        self.notebook = notebook
        self.cell_index = cell_index


# ----------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    """One notebook of the sequence, as declared in the manifest."""

    name: str                                   # "03_classification"
    notebooks_dir: Path
    title: str = ""
    inputs: dict[str, tuple[str, str]] = field(default_factory=dict)   # param -> (producer notebook, key)
    outputs: tuple[str, ...] = ()               # metrics.json keys that later notebooks consume
    params: dict[str, dict[str, Any]] = field(default_factory=dict)    # profile or "*" -> {param: value}
    timeout: float | None = None                # per-cell execution timeout (seconds)

    @property
    def ipynb(self) -> Path:
        return self.notebooks_dir / f"{self.name}.ipynb"

    @property
    def py(self) -> Path:
        return self.notebooks_dir / f"{self.name}.py"

    @property
    def source(self) -> Path:
        """The file the runner executes: the .ipynb, else the jupytext .py (converted in memory)."""
        return self.ipynb if self.ipynb.exists() else self.py

    def params_for(self, profile: str) -> dict[str, Any]:
        return {**self.params.get("*", {}), **self.params.get(profile, {})}


@dataclass(frozen=True)
class Manifest:
    path: Path
    notebooks_dir: Path
    steps: tuple[Step, ...]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def step(self, name: str) -> Step:
        return self.steps[self.names.index(self.resolve(name))]

    def resolve(self, name: str) -> str:
        """Exact name or a unique prefix (``03`` -> ``03_classification``)."""
        if name in self.names:
            return name
        hits = [n for n in self.names if n.startswith(name)]
        if len(hits) == 1:
            return hits[0]
        close = hits or difflib.get_close_matches(name, self.names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ReproduceError(f"no notebook {name!r} in {self.path}.{hint} Notebooks: {', '.join(self.names)}")


_STEP_KEYS = {"name", "title", "inputs", "outputs", "params", "timeout"}


def load_manifest(path: str | os.PathLike | None = None, *, check_files: bool = True) -> Manifest:
    """Read and validate the manifest (YAML or JSON); notebook paths are relative to its folder."""
    import yaml

    path = Path(path or os.environ.get("AVLIB_MANIFEST") or MANIFEST).resolve()
    if not path.exists():
        raise ReproduceError(f"manifest {path} not found (pass --manifest or set AVLIB_MANIFEST)")
    raw = yaml.safe_load(path.read_text()) or {}       # YAML is a superset of JSON
    if not isinstance(raw, dict) or not isinstance(raw.get("notebooks"), list):
        raise ReproduceError(f"{path}: expected a mapping with a 'notebooks:' list")
    nb_dir = (path.parent / raw.get("notebooks_dir", ".")).resolve()
    from .config import PROFILES

    steps: list[Step] = []
    produced: dict[str, str] = {}                       # output key -> latest producer so far
    for i, entry in enumerate(raw["notebooks"]):
        entry = {"name": entry} if isinstance(entry, str) else entry
        where = f"{path.name}: notebooks[{i}]"
        if not isinstance(entry, dict) or "name" not in entry:
            raise ReproduceError(f"{where}: each entry needs a 'name'")
        name = str(entry["name"])
        bad = set(entry) - _STEP_KEYS
        if bad:
            raise ReproduceError(f"{where} ({name}): unknown field(s) {sorted(bad)}; allowed: {sorted(_STEP_KEYS)}")
        if name in (s.name for s in steps):
            raise ReproduceError(f"{where}: duplicate notebook {name!r}")
        inputs = _parse_inputs(entry.get("inputs") or {}, produced, f"{where} ({name})")
        params = entry.get("params") or {}
        for prof, values in params.items():
            if prof != "*" and prof not in PROFILES:
                close = difflib.get_close_matches(prof, list(PROFILES), n=1)
                raise ReproduceError(f"{where} ({name}): params for unknown profile {prof!r}"
                                     + (f"; did you mean {close[0]!r}?" if close else f"; profiles: {sorted(PROFILES)}"))
            taken = set(values or {}) & set(RUNNER_PARAMS)
            if taken:
                raise ReproduceError(f"{where} ({name}): {sorted(taken)} are set by the runner "
                                     "(--profile/--seed/--device/--out/--runs), not by the manifest")
        step = Step(name=name, notebooks_dir=nb_dir, title=str(entry.get("title", "")), inputs=inputs,
                    outputs=tuple(entry.get("outputs") or ()),
                    params={k: dict(v or {}) for k, v in params.items()},
                    timeout=entry.get("timeout"))
        if check_files and not (step.ipynb.exists() or step.py.exists()):
            raise ReproduceError(f"{where}: neither {step.ipynb} nor {step.py} exists")
        produced.update({key: name for key in step.outputs})
        steps.append(step)
    return Manifest(path=path, notebooks_dir=nb_dir, steps=tuple(steps))


def _parse_inputs(spec, produced: Mapping[str, str], where: str) -> dict[str, tuple[str, str]]:
    """``[pretrain_ckpt]`` or ``{pretrain_ckpt: "02_pretraining.pretrain_ckpt"}`` -> {param: (nb, key)}."""
    items = {k: None for k in spec} if isinstance(spec, list) else dict(spec)
    out = {}
    for param, ref in items.items():
        if ref is None:
            if param not in produced:
                raise ReproduceError(f"{where}: input {param!r} is not an output of any earlier notebook "
                                     f"(outputs so far: {sorted(produced) or 'none'})")
            out[param] = (produced[param], param)
        else:
            producer, _, key = str(ref).partition(".")
            if producer not in set(produced.values()) or key not in produced or produced.get(key) != producer:
                raise ReproduceError(f"{where}: input {param}: {ref!r} is not '<earlier notebook>.<output>' "
                                     f"(known: {sorted(f'{v}.{k}' for k, v in produced.items())})")
            out[param] = (producer, key)
    return out


# ----------------------------------------------------------------------------------------------
# Notebooks and their parameters
# ----------------------------------------------------------------------------------------------
def load_notebook(path: str | os.PathLike):
    """A NotebookNode from ``.ipynb`` or a jupytext ``.py`` (percent format), with a kernelspec."""
    import jupytext
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4) if path.suffix == ".ipynb" else jupytext.read(path)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                          "language": "python"})
    nb.metadata.setdefault("language_info", {"name": "python"})
    return nb


def notebook_parameters(nb) -> dict[str, dict]:
    """``papermill.inspect_notebook`` for a path or an in-memory notebook: {name: {inferred_type_name,
    default, help}}."""
    import nbformat
    import papermill as pm

    if isinstance(nb, (str, os.PathLike)) and Path(nb).suffix == ".ipynb":
        return pm.inspect_notebook(str(nb))
    node = load_notebook(nb) if isinstance(nb, (str, os.PathLike)) else nb
    with tempfile.TemporaryDirectory() as tmp:          # inspect_notebook wants a file
        p = Path(tmp) / "nb.ipynb"
        nbformat.write(node, p)
        return pm.inspect_notebook(str(p))


_TYPES = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "dict": (dict,),
          "list": (list, tuple)}


def _check_params(step: Step, nb, declared: Mapping[str, dict], params: Mapping[str, Any],
                  origin: Mapping[str, str], profile: str) -> list[str]:
    """Problems with ``params`` for ``step`` (unknown names, wrong literal types, bad overrides)."""
    problems = []
    cell = _parameters_cell(nb)
    for key, value in params.items():
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            if cell is not None and re.search(rf"^{re.escape(key)}\s*[:=]", cell.source, re.M):
                hint = ("; it is in the parameters cell but papermill cannot parse its line "
                        "(a line may hold only one '=': no '=' in the help comment)")
            problems.append(f"{step.name}: unknown parameter {key!r} (from {origin.get(key, 'manifest')}){hint} "
                            f"Its parameters cell defines: {', '.join(declared) or 'nothing'}")
            continue
        typ = str(declared[key].get("inferred_type_name", "")).strip()
        ok = _TYPES.get(typ)
        if ok and value is not None and (not isinstance(value, ok) or (isinstance(value, bool) and typ != "bool")):
            problems.append(f"{step.name}: parameter {key!r} is declared {typ} but gets {value!r} "
                            f"({type(value).__name__}, from {origin.get(key, 'manifest')})")
    if params.get("overrides"):
        from .config import ConfigError, make_config
        try:
            make_config(profile, overrides=params["overrides"])
        except (ConfigError, TypeError) as e:
            problems.append(f"{step.name}: overrides {params['overrides']!r}: {e}")
    return problems


def _cells_signature(nb) -> list[tuple[str, str, tuple[str, ...]]]:
    """What must agree between paired .py and .ipynb: cell types, sources, tags."""
    return [(c.cell_type, c.source.strip(), tuple(sorted(c.get("metadata", {}).get("tags", []))))
            for c in nb.cells]


def _parameters_cell(nb):
    return next((c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])), None)


# ----------------------------------------------------------------------------------------------
# CI check: committed notebooks are clean
# ----------------------------------------------------------------------------------------------
def verify_notebooks_clean(paths: Iterable[str | os.PathLike], *, require_pair: bool = True,
                           required_params: Sequence[str] = RUNNER_PARAMS + ("overrides",)) -> list[str]:
    """Check committed notebooks; returns a list of problems (empty = clean).

    ``paths`` are notebooks (``.ipynb`` or ``.py``) or folders (every ``*.ipynb`` / ``*.py`` in them).
    The convention checked: each notebook is committed twice, ``NN_name.py`` (jupytext percent, the
    reviewable source) and ``NN_name.ipynb`` (what students open), with

    - no outputs, no execution counts, no papermill run metadata, no ``injected-parameters`` cell,
      no saved widget state in the ``.ipynb``;
    - exactly one cell tagged ``parameters``, holding only ``name: type = literal  # help`` lines (one
      ``=`` per line: papermill silently skips lines with more), and
      defining ``required_params``;
    - the ``.py`` and ``.ipynb`` in sync (same cell types, sources and tags), when ``require_pair``.
    """
    import ast

    import jupytext
    import nbformat

    stems: set[Path] = set()
    for p in map(Path, paths):
        files = (sorted(p.glob("*.ipynb")) + sorted(p.glob("*.py"))) if p.is_dir() else [p]
        stems.update(f.with_suffix("") for f in files
                     if f.suffix in (".ipynb", ".py") and not f.name.startswith("_"))
    problems: list[str] = []
    for stem in sorted(stems):
        ipynb, py = stem.with_suffix(".ipynb"), stem.with_suffix(".py")
        has_ipynb, has_py = ipynb.exists(), py.exists()
        if require_pair and not (has_ipynb and has_py):
            missing, present = (py, ipynb) if has_ipynb else (ipynb, py)
            problems.append(f"{missing}: missing; pair it with `jupytext --sync {present}`")
        nbs = {}
        try:
            if has_ipynb:
                nbs["ipynb"] = nbformat.read(ipynb, as_version=4)
            if has_py:
                nbs["py"] = jupytext.read(py)
        except Exception as e:  # noqa: BLE001 - unreadable notebook is a finding, not a crash
            problems.append(f"{stem}: cannot read ({type(e).__name__}: {e})")
            continue
        if "ipynb" in nbs:
            problems += _ipynb_problems(ipynb, nbs["ipynb"])
        main_nb, main_path = (nbs["py"], py) if "py" in nbs else (nbs["ipynb"], ipynb)
        problems += _parameters_problems(main_path, main_nb, required_params, ast)
        if len(nbs) == 2 and _cells_signature(nbs["py"]) != _cells_signature(nbs["ipynb"]):
            a, b = _cells_signature(nbs["py"]), _cells_signature(nbs["ipynb"])
            where = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            problems.append(f"{stem}.py and .ipynb differ (first at cell {where}; {len(a)} vs {len(b)} cells); "
                            f"run `jupytext --sync {py}` (the newer file wins) and commit both")
    return problems


def _ipynb_problems(path: Path, nb) -> list[str]:
    out = []
    if "papermill" in nb.metadata:
        out.append(f"{path}: has papermill run metadata (an executed copy? those belong in reports/)")
    if "widgets" in nb.metadata:
        out.append(f"{path}: has saved widget state (metadata.widgets); strip it")
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code":
            continue
        if c.get("outputs"):
            out.append(f"{path}: cell {i} has outputs; strip them (nbstripout, or Edit > Clear Outputs)")
        if c.get("execution_count") is not None:
            out.append(f"{path}: cell {i} has execution_count {c.execution_count}; strip it")
        if "papermill" in c.get("metadata", {}):
            out.append(f"{path}: cell {i} has papermill metadata")
        if "injected-parameters" in c.get("metadata", {}).get("tags", []):
            out.append(f"{path}: cell {i} is a papermill 'injected-parameters' cell")
    return out


def _parameters_problems(path: Path, nb, required: Sequence[str], ast) -> list[str]:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        return [f"{path}: expected exactly one cell tagged 'parameters', found {len(tagged)}"]
    src = nb.cells[tagged[0]].source
    out, names = [], []
    try:
        tree = ast.parse(src)
    except SyntaxError as e:
        return [f"{path}: parameters cell does not parse: {e}"]
    lines = src.splitlines()
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None)
        if not isinstance(target, ast.Name) or node.value is None:
            out.append(f"{path}: parameters cell line {node.lineno}: only `name: type = literal  # help` lines")
            continue
        names.append(target.id)
        try:
            ast.literal_eval(node.value)
        except ValueError:
            out.append(f"{path}: parameter {target.id!r} is not a literal (derive it in the next cell; "
                       "papermill's injected values would not reach it)")
        if not isinstance(node, ast.AnnAssign):
            out.append(f"{path}: parameter {target.id!r} has no type annotation")
        line = lines[node.end_lineno - 1]
        if "#" not in line.split("=", 1)[-1]:
            out.append(f"{path}: parameter {target.id!r} has no trailing `# help` comment")
        elif line.count("=") > 1:
            out.append(f"{path}: parameter {target.id!r}: papermill skips lines with more than one '=' "
                       "(reword the help comment)")
    missing = [r for r in required if r not in names]
    if missing:
        out.append(f"{path}: parameters cell lacks {missing} (the runner always passes {list(required)})")
    return out


# ----------------------------------------------------------------------------------------------
# State, fingerprints, environment
# ----------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_text(path: Path, text: str) -> None:
    """Old or new file, never half of one."""
    atomic_write(path, text, mode="w")


def _write_json(path: Path, obj) -> None:
    _write_text(path, json.dumps(obj, indent=2, default=str, allow_nan=False) + "\n")


def _avlib_digest() -> str:
    h = hashlib.sha256()
    for p in sorted((ROOT / "avlib").rglob("*.py")):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _notebook_key(nb, params: Mapping, upstream: Iterable[str], avlib_digest: str) -> str:
    """What decides a notebook's outputs (its cells, parameters, upstream results and the package code):
    an unchanged key lets ``--resume`` skip a notebook that already ran."""
    return stable_hash({"cells": _cells_signature(nb), "params": params, "upstream": sorted(upstream),
                        "avlib": avlib_digest})


@contextlib.contextmanager
def _kernel_env():
    """Set ``KERNEL_ENV`` (and make ``avlib`` importable) for kernels started inside the block."""
    saved = dict(os.environ)
    os.environ.update(KERNEL_ENV)
    for k in KERNEL_ENV_UNSET:
        os.environ.pop(k, None)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved.get("PYTHONPATH")]))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


class _Prefixed:
    """File-like that prefixes each line of a notebook's streamed output (papermill ``stdout_file``)."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self._buf = stream, prefix, ""

    def write(self, text: str) -> int:
        self._buf += text.replace("\r\n", "\n").replace("\r", "\n")
        *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if line.strip():
                self.stream.write(f"{self.prefix}{line}\n")
        return len(text)

    def flush(self) -> None:
        if self._buf.strip():
            self.stream.write(f"{self.prefix}{self._buf}\n")
        self._buf = ""
        self.stream.flush()


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ----------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------
@dataclass
class _Planned:
    step: Step
    nb: Any                                  # NotebookNode
    params: dict[str, Any]                   # without upstream values (filled just before running)
    forced: bool                             # run even when up to date (--force, or named by --only)


def reproduce(profile: str, *, manifest: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
              runs: str | os.PathLike | None = None, only: Sequence[str] | None = None, start: str | None = None,
              force: bool = False, timeout: float | None = None, seed: int = 0, device: str = "auto",
              overrides: Mapping[str, Any] | None = None, log_output: bool = True, dry_run: bool = False,
              stream=None) -> dict:
    """Run the manifest's notebooks for ``profile``; returns the summary dict (also written to disk).

    ``overrides`` (config keys, e.g. from ``--set``) are added to every notebook's ``overrides``
    parameter, after the manifest's. The run holds a lock on ``out`` (``utils.folder_lock``): a second
    runner on the same folder is refused, naming the holder.

    Raises ``ReproduceError`` for problems found before a notebook runs (a held lock included),
    ``NotebookFailed`` when a notebook raises and ``RunInterrupted`` on SIGINT (state and summary
    record the failed / interrupted run first).
    """
    from .config import PROFILES
    from .utils import LockedError, folder_lock

    if profile not in PROFILES:
        close = difflib.get_close_matches(profile, list(PROFILES), n=1)
        raise ReproduceError(f"unknown profile {profile!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                             + f" Profiles: {', '.join(PROFILES)}")
    out = Path(out or REPORTS / profile).resolve()
    args = dict(manifest=manifest, runs=runs, only=only, start=start, force=force, timeout=timeout, seed=seed,
                device=device, overrides=overrides, log_output=log_output, stream=stream or sys.stdout)
    if dry_run:                                          # reads only: no lock
        return _reproduce(profile, out, dry_run=True, **args)
    try:
        with folder_lock(out):                           # held until the run ends, however it ends
            return _reproduce(profile, out, dry_run=False, **args)
    except LockedError as e:
        raise ReproduceError(f"{e}: another avlib.reproduce run is writing there; wait for it to finish "
                             f"or pass another --out") from None


def _reproduce(profile: str, out: Path, *, manifest, runs, only, start, force, timeout, seed, device, overrides,
               log_output, dry_run, stream) -> dict:
    """The body of ``reproduce`` (``out`` resolved, and locked unless ``dry_run``)."""
    import papermill as pm

    say = lambda msg: (stream.write(msg + "\n"), stream.flush())  # noqa: E731
    man = load_manifest(manifest)
    runs = Path(runs or RUNS / profile).resolve()
    state_path = out / "state.json"
    state = _read_json(state_path)
    if state and state.get("profile") not in (None, profile):
        raise ReproduceError(f"{state_path} belongs to profile {state.get('profile')!r}, not {profile!r}")
    state.setdefault("profile", profile)
    state.setdefault("notebooks", {})

    # --- which notebooks run
    if only and start:
        raise ReproduceError("use --only or --from, not both")
    names = man.names
    if only:
        chosen = {man.resolve(n) for n in only}
    elif start:
        chosen = set(names[names.index(man.resolve(start)):])
    else:
        chosen = set(names)
    forced_names = chosen if (force or only) else set()

    # --- validate everything before any kernel starts
    if overrides:                                        # once here, not once per notebook
        from .config import ConfigError, make_config
        try:
            make_config(profile, overrides=overrides)
        except ConfigError as e:
            raise ReproduceError(f"--set: {e}") from None
    plan: list[_Planned] = []
    problems: list[str] = []
    for step in man.steps:
        if step.name not in chosen:
            continue
        if step.ipynb.exists() and step.py.exists():
            a, b = load_notebook(step.ipynb), load_notebook(step.py)
            if _cells_signature(a) != _cells_signature(b):
                problems.append(f"{step.name}: {step.py.name} and {step.ipynb.name} differ; "
                                f"run `jupytext --sync {step.py}` first")
        try:
            nb = load_notebook(step.source)
            declared = notebook_parameters(nb)
        except Exception as e:  # noqa: BLE001 - an unreadable notebook is one more problem to list
            problems.append(f"{step.name}: cannot read {step.source}: {type(e).__name__}: {e}")
            continue
        params = {"profile": profile, "seed": seed, "device": device,
                  "out_dir": str(out / step.name), "run_dir": str(runs / step.name), **step.params_for(profile)}
        origin = {k: "the runner" for k in RUNNER_PARAMS}
        if overrides:
            from .nb import parse_overrides
            if "overrides" not in declared:
                problems.append(f"{step.name}: its parameters cell has no 'overrides', so --set cannot reach it")
            params["overrides"] = {**parse_overrides(params.get("overrides")), **overrides}   # --set wins
            origin["overrides"] = "the manifest's params and --set"
        for param, (producer, key) in step.inputs.items():
            params[param] = ""                               # placeholder: the real value comes later
            origin[param] = f"the manifest's inputs ({producer}.{key})"
            if producer not in chosen:
                rec = state["notebooks"].get(producer, {})
                if rec.get("status") != "ok" or key not in rec.get("outputs", {}):
                    problems.append(
                        f"{step.name} needs {param!r} from {producer}, which has no successful run recorded in "
                        f"{state_path}; run it first: python -m avlib.reproduce --profile {profile} "
                        f"--only {producer} {step.name}")
        problems += _check_params(step, nb, declared, params, origin, profile)
        plan.append(_Planned(step, nb, params, forced=step.name in forced_names))
    if problems:
        raise ReproduceError("not starting; fix these first:\n  - " + "\n  - ".join(problems))

    # --- run
    digest = _avlib_digest()
    t_start = time.time()
    total = len(plan)
    say(f"avlib.reproduce: profile={profile}, {total} notebook(s) -> {out}")
    # what this run does, kept in state.json / summary.json: running -> ok | failed | interrupted
    run = {"status": "running", "pid": os.getpid(), "started_at": _now(), "planned": [p.step.name for p in plan],
           "finished": []}
    if not dry_run:
        state["run"] = run
        _write_json(state_path, state)
    current = None                                       # the notebook whose kernel is running
    try:
        for i, p in enumerate(plan, 1):
            step, tag = p.step, f"[{i}/{total}] {p.step.name}"
            params = dict(p.params)
            upstream_fps = []
            for param, (producer, key) in step.inputs.items():
                rec = state["notebooks"].get(producer, {})
                if dry_run and key not in rec.get("outputs", {}):
                    params[param] = f"<{producer}.{key}>"        # produced earlier in this (dry) run
                    continue
                params[param] = rec["outputs"][key]
                upstream_fps.append(rec.get("fingerprint", ""))
            fp = _notebook_key(p.nb, params, upstream_fps, digest)
            rec = state["notebooks"].get(step.name, {})
            executed = out / f"{step.name}.ipynb"
            up_to_date = (rec.get("status") == "ok" and rec.get("fingerprint") == fp and executed.exists()
                          and (out / step.name / "metrics.json").exists())
            if dry_run:
                say(f"{tag}: would {'skip (up to date)' if up_to_date and not p.forced else 'run'} with "
                    + ", ".join(f"{k}={v!r}" for k, v in params.items()))
                continue
            if up_to_date and not p.forced:
                say(f"{tag}: up to date, skipped (--force to re-run)")
                run["finished"].append(step.name)
                continue
            say(f"{tag}: running ({_dt.datetime.now():%H:%M:%S})")
            (out / step.name).mkdir(parents=True, exist_ok=True)
            for stale in [out / step.name / "metrics.json", *(out / step.name / "figures").glob("*.png")]:
                stale.unlink(missing_ok=True)                    # never summarize a previous run's results
            t0 = time.time()
            prefixed = _Prefixed(stream, f"    {step.name} | ")
            base = {"fingerprint": fp, "params": params, "executed": str(executed), "out_dir": str(out / step.name)}
            current = step.name
            failure: NotebookFailed | None = None
            try:
                with _kernel_env():
                    done = pm.execute_notebook(
                        p.nb, str(executed), parameters=params, cwd=str(man.notebooks_dir), kernel_name="python3",
                        language="python", progress_bar=False, log_output=False, report_mode=False,
                        stdout_file=prefixed if log_output else None, stderr_file=prefixed if log_output else None,
                        execution_timeout=timeout or step.timeout, extra_arguments=KERNEL_ARGS)
                prefixed.flush()
                duration = float(done.metadata.get("papermill", {}).get("duration") or time.time() - t0)
                metrics = _read_metrics(out / step.name)
                missing = [k for k in step.outputs if k not in metrics]
                if missing:
                    raise NotebookFailed(
                        f"{step.name} finished but its metrics.json lacks the declared output(s) {missing}; record "
                        f"them with nb.record(metrics, out_dir, {missing[0]}=...)", notebook=step.name)
                if not metrics:
                    say(f"    (note: {step.name} wrote no metrics.json; end it with nb.record(metrics, out_dir))")
                state["notebooks"][step.name] = {
                    "status": "ok", **base, "duration_s": round(duration, 2),
                    "outputs": {k: metrics[k] for k in step.outputs}, "finished_at": _now()}
                current = None
                run["finished"].append(step.name)
                say(f"{tag}: ok in {_fmt_time(duration)} (elapsed {_fmt_time(time.time() - t_start)})")
            except Exception as e:  # noqa: BLE001 - any failure is reported the same way
                prefixed.flush()
                if getattr(e, "ename", None) == "KeyboardInterrupt":   # Ctrl-C reached the kernel first
                    raise KeyboardInterrupt from e
                failure = e if isinstance(e, NotebookFailed) else _describe_failure(e, step, p.nb, executed, profile)
                state["notebooks"][step.name] = {"status": "failed", **base, "error": str(failure),
                                                 "duration_s": round(time.time() - t0, 2), "finished_at": _now()}
                current = None
                run.update(status="failed", failed=step.name, ended_at=_now())
            _write_json(state_path, state)
            _write_summary(man, state, out, profile, wall_s=time.time() - t_start)   # readable mid-run too
            if failure is not None:
                say(f"{tag}: FAILED after {_fmt_time(time.time() - t0)}")
                raise failure
    except KeyboardInterrupt:                            # SIGINT (Ctrl-C), or SIGTERM under main()
        if dry_run:
            raise
        if current is not None:
            state["notebooks"][current] = {"status": "interrupted", **base, "duration_s": round(time.time() - t0, 2),
                                           "finished_at": _now()}
        run.update(status="interrupted", interrupted=current, ended_at=_now())
        _write_json(state_path, state)
        _write_summary(man, state, out, profile, wall_s=time.time() - t_start)
        raise RunInterrupted(
            f"interrupted{f' during {current}' if current else ''} after {_fmt_time(time.time() - t_start)}; "
            f"finished: {', '.join(run['finished']) or 'none'}; recorded in {state_path}. Run the same command "
            "again to continue (up-to-date notebooks are skipped)") from None
    if dry_run:
        return {}
    run.update(status="ok", ended_at=_now())
    _write_json(state_path, state)
    summary = _write_summary(man, state, out, profile, wall_s=time.time() - t_start)
    say(f"done: {total} notebook(s) in {_fmt_time(time.time() - t_start)} wall time; summary: {out / 'summary.md'}")
    return summary


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _read_metrics(out_dir: Path) -> dict:
    return _read_json(out_dir / "metrics.json")


def _describe_failure(e: Exception, step: Step, nb, executed: Path, profile: str) -> NotebookFailed:
    """Name the notebook, the cell (index + first line) and the exception line."""
    from papermill.exceptions import PapermillExecutionError

    src_nb = step.source.relative_to(step.notebooks_dir.parent) if step.source.is_relative_to(
        step.notebooks_dir.parent) else step.source
    if isinstance(e, PapermillExecutionError):
        # papermill's index counts its injected-parameters cell; map it back to the source notebook
        pcell = _parameters_cell(nb)
        pidx = nb.cells.index(pcell) if pcell is not None else -1
        index = e.cell_index - 1 if 0 <= pidx < e.cell_index else e.cell_index
        source, exc = e.source, f"{e.ename}: {e.evalue}"
        copy = "The executed copy, with the full traceback"
    else:
        index, source = _running_cell(executed, nb)
        exc = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        copy = "The executed copy, up to that cell"
    first = next((ln.strip() for ln in (source or "").splitlines() if ln.strip()), "<empty cell>")
    first = first if len(first) <= 100 else first[:97] + "..."
    where = f"cell {index} (counting from 0, markdown cells included)" if index is not None else "an unknown cell"
    msg = (f"notebook {step.name} failed in {where} of {src_nb}:\n"
           f"    {first}\n"
           f"  {exc}\n"
           f"{copy}: {executed}\n"
           f"After fixing it: python -m avlib.reproduce --profile {profile} --from {step.name}")
    return NotebookFailed(msg, notebook=step.name, cell_index=index)


def _running_cell(executed: Path, nb) -> tuple[int | None, str]:
    """For errors papermill does not attribute to a cell (timeouts, a dead kernel): the last cell that
    started, as an index into the source notebook (papermill's injected cell skipped)."""
    try:
        import nbformat
        done = nbformat.read(executed, as_version=4)
    except Exception:  # noqa: BLE001 - no executed copy: nothing more to say
        return None, ""
    added = {"injected-parameters", "papermill-error-cell-tag"}          # cells papermill inserts
    cells = [c for c in done.cells if not added & set(c.metadata.get("tags", []))]
    started = [i for i, c in enumerate(cells) if c.metadata.get("papermill", {}).get("start_time")]
    return (started[-1], cells[started[-1]].source) if started else (None, "")


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------
def comparisons(metrics: Mapping[str, Any]) -> list[dict]:
    """Rows ``{task, metric, init, value}`` for keys following ``<task>/<init>/<metric>``
    (e.g. ``linprobe/deepavfusion/top1``); other keys are ignored, and so are sample counts
    (metrics named ``n`` or ``n_*``: how many items were scored, not a result to compare)."""
    rows = []
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) == 3 and _is_number(value) and not _is_count(parts[2]):
            rows.append({"task": parts[0], "init": parts[1], "metric": parts[2], "value": float(value)})
    return rows


# Reference values the notebooks record next to their results, as ``<task>/<init>/<metric>`` rows:
# (row task, row init or None for any) -> (the task whose panel shows it, its label).
_REFERENCE_ROWS = {("localization_bounds", "oracle"): ("localization", "oracle"),
                   ("localization_bounds", "random_map"): ("localization", "random map"),
                   ("classification_bounds", "chance"): (("linprobe", "finetune"), "chance")}


# metrics a protocol records beside each init's own that are references on its main metric's scale: the
# unprocessed mixture's SDR (separation's sdr_mix, the same test mixtures for every init)
_REFERENCE_METRICS = {"sdr_mix": "mixture"}


def headline_references(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """The reference lines of the headline chart, ``{task: {label: value}}`` on each task's main metric,
    from the rows of ``comparisons``: the oracle and random maps of localization (04's
    ``localization_bounds``), chance for the classifiers (03's ``classification_bounds``) and the
    unprocessed mixture's SDR for separation (06's ``sdr_mix``, the same test mixtures for every init).
    Feed it to ``viz.compare_bars(..., references=...)``; tasks without a recorded reference are absent."""
    from .protocols import PROTOCOLS

    main = {t: p.main_metric for t, p in PROTOCOLS.items()}
    refs: dict[str, dict[str, float]] = {}
    recorded: dict[tuple[str, str], list[float]] = {}          # (task, label) -> the value of every init
    for r in rows:
        task, init, metric, value = r["task"], r["init"], r["metric"], float(r["value"])
        if metric in _REFERENCE_METRICS:                      # recorded beside each init's own metrics
            recorded.setdefault((task, _REFERENCE_METRICS[metric]), []).append(value)
            continue
        target = _REFERENCE_ROWS.get((task, init))
        if target is None:
            continue
        tasks, label = target
        for t in (tasks,) if isinstance(tasks, str) else tasks:
            if metric == main.get(t):
                refs.setdefault(t, {})[label] = value
    for (task, label), values in recorded.items():
        refs.setdefault(task, {})[label] = sum(values) / len(values)
    return refs


def _is_count(metric: str) -> bool:
    return metric == "n" or metric.startswith("n_")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "" if v is None else str(v).replace("|", "\\|")
    return f"{v:d}" if isinstance(v, int) else f"{v:.4g}"


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    return markdown_table(header, rows, _fmt) + [""]


# Column order of result tables: the from-scratch baseline, the unimodal warm start (what the paper's
# audio-visual stage starts from), DeepAVFusion, its data control on the comparison methods' curated scenes
# (``zoo.curated_control``), then the comparison methods in the order of ``zoo.BASELINES`` (the
# supplement's figures; tests/test_reproduce.py checks that the two agree). Any other initialization
# follows, in the order the notebooks recorded it.
INIT_ORDER = ("scratch", "unimodal", "deepavfusion", "deepavfusion_curated", "ezvsl", "slavc", "mix_and_localize",
              "sound_of_pixels", "ccol", "oneavm")
# The headline's differences on each protocol's main metric, {(minuend, subtrahend): what it measures}.
# DeepAVFusion − unimodal is the paper's claim: what audio-visual early fusion adds over its unimodal
# starting point; DeepAVFusion − scratch is what the whole staged pre-training adds.
DELTAS = {("deepavfusion", "unimodal"): "what audio-visual pre-training adds over its unimodal starting point "
                                        "(the paper's claim)",
          ("deepavfusion", "scratch"): "what the whole staged pre-training adds over a random encoder"}
# The comparison methods' zero-shot read-outs (notebooks 04, 06: ``<group>/<method>/<metric>``) and the
# protocol whose main metric each one reports.
ZERO_SHOT = {"localization_zero_shot": "localization", "separation_zero_shot": "separation"}


def delta_label(a: str, b: str) -> str:
    """The column name of a headline difference, e.g. ``"deepavfusion − unimodal"``."""
    return f"{a} − {b}"


def comparison_groups(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {metric: {init: value}}}`` from the rows of ``comparisons``."""
    groups: dict[str, dict[str, dict[str, float]]] = {}
    for row in rows:
        groups.setdefault(row["task"], {}).setdefault(row["metric"], {})[row["init"]] = float(row["value"])
    return groups


def _comparison_groups(records: Sequence[Mapping]) -> dict[str, dict[str, dict[str, float]]]:
    """``{task: {metric: {init: value}}}`` from every notebook's ``<task>/<init>/<metric>`` keys."""
    return comparison_groups(row for r in records for row in comparisons(r["metrics"]))


def ordered_inits(values: Iterable[Mapping[str, float]]) -> list[str]:
    """The initializations / methods found in ``values`` (``{init: value}`` mappings) in ``INIT_ORDER``,
    then any others in the order they were recorded."""
    seen = list(dict.fromkeys(k for v in values for k in v))
    return [k for k in INIT_ORDER if k in seen] + [k for k in seen if k not in INIT_ORDER]



def headline(groups: Mapping[str, Mapping[str, Mapping[str, float]]]) -> tuple[list[str], list[list]]:
    """The main results: ``(header, rows)``, one row per protocol (``PROTOCOLS`` order) with its main
    metric, one column per initialization / method (``ordered_inits``), then one column per difference of
    ``DELTAS`` whose two inits were recorded (``delta_label``; empty where a row lacks one of them).
    Missing values are ``None``."""
    from .protocols import PROTOCOLS

    main = {t: (PROTOCOLS[t].main_metric, groups[t][PROTOCOLS[t].main_metric]) for t in PROTOCOLS
            if t in groups and PROTOCOLS[t].main_metric in groups[t]}
    inits = ordered_inits(v for _, v in main.values())
    deltas = [(a, b) for a, b in DELTAS if a in inits and b in inits]
    rows = [[t, m, *[v.get(k) for k in inits],
             *[v[a] - v[b] if a in v and b in v else None for a, b in deltas]] for t, (m, v) in main.items()]
    return ["task", "metric", *inits, *[delta_label(a, b) for a, b in deltas]], rows


def methods_table(groups: Mapping[str, Mapping[str, Mapping[str, float]]]) -> tuple[list[str], list[list]] | None:
    """Initializations and comparison methods against tasks: ``(header, rows)`` with one row per init /
    method and one column per protocol's main metric (after downstream training), plus one column per
    zero-shot read-out (``ZERO_SHOT``: the method's own inference, no downstream training; empty for
    the inits and the methods without that read-out). ``None`` when no comparison method (an init outside
    scratch / unimodal / deepavfusion) and no zero-shot result was recorded."""
    from .protocols import PROTOCOLS

    cols = [(t, PROTOCOLS[t].main_metric, t) for t in PROTOCOLS
            if t in groups and PROTOCOLS[t].main_metric in groups[t]]
    cols += [(z, PROTOCOLS[t].main_metric, f"{t} zero-shot") for z, t in ZERO_SHOT.items()
             if z in groups and PROTOCOLS[t].main_metric in groups[z]]
    values = [groups[g][m] for g, m, _ in cols]
    inits = ordered_inits(values)
    if not any(g in ZERO_SHOT for g, _, _ in cols) and not set(inits) - set(INIT_ORDER[:3]):
        return None
    header = ["method", *[f"{label} ({m})" for _, m, label in cols]]
    return header, [[i, *[v.get(i) for v in values]] for i in inits]


def _fmt_delta(v) -> str:
    return "" if v is None else f"{v:+.4g}"


def _results_tables(groups: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    """The headline (each protocol's main metric, one column per initialization / method, and the
    ``DELTAS``), the comparison methods' table when there are any, and one table per task with all its
    metrics. Every init is kept, whatever its name."""
    lines = []
    header, rows = headline(groups)
    if rows:
        meaning = {delta_label(a, b): what for (a, b), what in DELTAS.items()}
        n_delta = sum(h in meaning for h in header)
        lines += ["## Main results", "", "Each protocol's main metric, by initialization (columns)."
                  + "".join(f" `{h}`: {meaning[h]}." for h in header if h in meaning), ""]
        k = len(header) - n_delta
        lines += markdown_table(header, [[*(_fmt(x) for x in r[:k]), *(_fmt_delta(x) for x in r[k:])] for r in rows],
                                str) + [""]
    table = methods_table(groups)
    if table is not None:
        lines += ["## Comparison methods", "",
                  "Each method's encoder through the same downstream protocols (main metric), and its zero-shot "
                  "read-out where it has one (no downstream training; docs/baselines.md).", ""]
        lines += _table(*table)
    lines += ["## All comparisons", ""]
    for t, metrics in groups.items():
        inits = ordered_inits(metrics.values())
        lines += [f"**{t}**", ""]
        lines += _table(["metric", *inits], [(m, *[v.get(k) for k in inits]) for m, v in metrics.items()])
    return lines


def _collect(man: Manifest, state: Mapping, out: Path) -> list[dict]:
    records = []
    for step in man.steps:
        rec = state.get("notebooks", {}).get(step.name)
        if rec is None:
            continue
        out_dir = Path(rec.get("out_dir", out / step.name))
        metrics = _read_metrics(out_dir) if rec.get("status") == "ok" else {}
        figures = sorted((out_dir / "figures").glob("*.png")) if (out_dir / "figures").is_dir() else []
        records.append({"name": step.name, "title": step.title, "status": rec.get("status"),
                        "duration_s": rec.get("duration_s"), "executed": rec.get("executed"),
                        "out_dir": str(out_dir), "metrics": metrics, "figures": [str(f) for f in figures],
                        "error": rec.get("error")})
    return records


def render_summary(records: Sequence[Mapping], profile: str, wall_s: float | None = None,
                   base: Path | None = None, run: Mapping | None = None) -> str:
    """Markdown: a status table, the ``<task>/<init>/<metric>`` comparisons (main results, then every
    metric per task), then each notebook's metrics and figures. Paths are written relative to ``base``; ``run`` (state.json's
    ``run`` record) adds a line when the run is not ``ok`` (running, failed, interrupted)."""
    rel = (lambda p: os.path.relpath(p, base)) if base else str
    lines = [f"# avlib reproduction: profile `{profile}`", ""]
    when = _dt.datetime.now().isoformat(timespec="seconds")
    lines += [f"Written {when}" + (f"; wall time {_fmt_time(wall_s)}" if wall_s is not None else "") + ".", ""]
    if run and run.get("status") != "ok":
        pending = [n for n in run.get("planned", []) if n not in run.get("finished", [])]
        where = run.get("interrupted") or run.get("failed")
        lines += [f"**Run {run.get('status')}**" + (f" in {where}" if where else "")
                  + f"; finished: {', '.join(run.get('finished', [])) or 'none'}"
                  + (f"; not run: {', '.join(pending)}" if pending else "") + ".", ""]
    lines += _table(["notebook", "status", "duration", "executed copy"],
                    [(r["name"], r["status"] or "", _fmt_time(r["duration_s"]) if r.get("duration_s") else "",
                      f"[{Path(r['executed']).name}]({rel(r['executed'])})" if r.get("executed") else "")
                     for r in records])
    for r in records:
        if r.get("error"):
            lines += [f"**{r['name']} failed:**", "", "```", r["error"], "```", ""]

    groups = _comparison_groups(records)
    if groups:
        lines += _results_tables(groups)

    lines += ["## Notebooks", ""]
    for r in records:
        lines += [f"### {r['name']}" + (f": {r['title']}" if r.get("title") else ""), ""]
        m = r["metrics"]
        meta = {k: m[k] for k in META_KEYS if k in m}
        body = {k: v for k, v in m.items() if k not in META_KEYS}
        if r.get("duration_s") is not None:
            body["duration_s"] = r["duration_s"]            # papermill's wall time for the notebook
        if meta:
            lines += [", ".join(f"{k} `{v}`" for k, v in meta.items()), ""]
        lines += _table(["key", "value"], body.items()) if body else ["(no metrics recorded)", ""]
        for f in r["figures"]:
            lines += [f"![{Path(f).stem}]({rel(f)})", ""]
    return "\n".join(lines)


def _write_summary(man: Manifest, state: Mapping, out: Path, profile: str, wall_s: float) -> dict:
    records = _collect(man, state, out)
    for r in records:
        if r.get("duration_s") is not None and r["status"] == "ok":
            r["metrics"] = {**r["metrics"], "duration_s": r["duration_s"]}
    failed = next((r["name"] for r in records if r["status"] == "failed"), None)
    run = state.get("run", {})
    status = run.get("status") or ("failed" if failed else "ok")
    summary = {"profile": profile, "status": status, "failed": failed, "interrupted": run.get("interrupted"),
               "finished": run.get("finished"),
               "pending": [n for n in run.get("planned", []) if n not in run.get("finished", [])],
               "wall_s": round(wall_s, 2), "written_at": _now(), "notebooks": records,
               "comparisons": [dict(row, notebook=r["name"]) for r in records for row in comparisons(r["metrics"])]}
    _write_json(out / "summary.json", summary)
    _write_text(out / "summary.md", render_summary(records, profile, wall_s, base=out, run=run))
    return summary


# ----------------------------------------------------------------------------------------------
# The seeds job
# ----------------------------------------------------------------------------------------------
def seeds_job(profile: str, seeds: Sequence[int], *, out: str | os.PathLike | None = None,
              runs: str | os.PathLike | None = None, **kwargs) -> dict:
    """Run the notebooks once per seed (``<out>/seed<N>``, ``<runs>/seed<N>``; pre-trained checkpoints from
    the zoo are shared, everything the notebooks train is re-seeded), then aggregate every
    ``<task>/<init>/<metric>`` over the seeds into ``<out>/seeds.json`` and ``<out>/seeds.md``: mean,
    standard deviation and range, with the per-seed values. Returns the aggregate."""
    out = Path(out or REPORTS / profile)
    runs = Path(runs or RUNS / profile)
    per_seed = {}
    for seed in seeds:
        summary = reproduce(profile, out=out / f"seed{seed}", runs=runs / f"seed{seed}", seed=seed, **kwargs)
        per_seed[seed] = summary
    if kwargs.get("dry_run"):
        return {}
    table = aggregate_seeds({s: sm.get("comparisons", []) for s, sm in per_seed.items()})
    _write_json(out / "seeds.json", {"profile": profile, "seeds": list(seeds), "rows": table})
    _write_text(out / "seeds.md", render_seeds(table, profile, list(seeds)))
    return {"profile": profile, "seeds": list(seeds), "rows": table}


def aggregate_seeds(comparisons_by_seed: Mapping[int, Sequence[Mapping]]) -> list[dict]:
    """``[{task, init, metric, mean, std, min, max, n, values: {seed: value}}]`` over the seeds (``std``:
    the sample standard deviation, 0 for one seed)."""
    import statistics
    cells: dict[tuple[str, str, str], dict[int, float]] = {}
    for seed, rows in comparisons_by_seed.items():
        for r in rows:
            cells.setdefault((r["task"], r["init"], r["metric"]), {})[seed] = float(r["value"])
    out = []
    for (task, init, metric), values in cells.items():
        v = list(values.values())
        out.append({"task": task, "init": init, "metric": metric, "mean": statistics.fmean(v),
                    "std": statistics.stdev(v) if len(v) > 1 else 0.0, "min": min(v), "max": max(v),
                    "n": len(v), "values": {str(k): x for k, x in values.items()}})
    return out


def render_seeds(rows: Sequence[Mapping], profile: str, seeds: Sequence[int]) -> str:
    """Markdown: per task, one row per metric and one column per init, ``mean ± std (min–max)``."""
    lines = [f"# avlib seeds job: profile `{profile}`, seeds {', '.join(map(str, seeds))}", "",
             "Each cell: mean ± sample standard deviation over the seeds (min–max).", ""]
    groups: dict[str, dict[str, dict[str, Mapping]]] = {}
    for r in rows:
        groups.setdefault(r["task"], {}).setdefault(r["metric"], {})[r["init"]] = r
    for task, metrics in groups.items():
        inits = ordered_inits(metrics.values())
        lines += [f"**{task}**", ""]
        body = [(m, *[(f"{c[k]['mean']:.4g} ± {c[k]['std']:.2g} ({c[k]['min']:.4g}–{c[k]['max']:.4g})"
                       if k in c else "") for k in inits]) for m, c in metrics.items()]
        lines += _table(["metric", *inits], body)
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m avlib.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu", help="config profile (smoke | cpu | paper | ...); default cpu")
    ap.add_argument("--out", help="reports folder for this run (default reports/<profile>)")
    ap.add_argument("--runs", help="checkpoint folder for this run (default runs/<profile>)")
    ap.add_argument("--manifest", help="manifest file (default notebooks/manifest.yaml or $AVLIB_MANIFEST)")
    ap.add_argument("--only", nargs="+", metavar="NB", help="run just these notebooks (name or unique prefix); "
                    "upstream outputs come from state.json of an earlier run")
    ap.add_argument("--from", dest="start", metavar="NB", help="run this notebook and every later one")
    ap.add_argument("--force", action="store_true", help="re-run notebooks even when up to date")
    ap.add_argument("--timeout", type=float, help="per-cell execution timeout in seconds")
    ap.add_argument("--seed", type=int, default=0, help="the seed parameter of every notebook (default 0)")
    ap.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                    help="the seeds job: the whole run once per seed (into <out>/seed<N>, <runs>/seed<N>), then "
                         "seeds.md / seeds.json in <out> with the mean and spread of every <task>/<init>/<metric>")
    ap.add_argument("--device", default="auto", help="the device parameter of every notebook (default auto)")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                    help="config overrides added to every notebook's `overrides` parameter, e.g. --set "
                         "data.num_workers=16 model.norm_pix_loss=false (parsed to each field's type and checked "
                         "before any notebook runs)")
    ap.add_argument("--quiet", action="store_true", help="don't stream the notebooks' printed output")
    ap.add_argument("--dry-run", action="store_true", help="validate and print the plan; run nothing")
    ap.add_argument("--check-notebooks", action="store_true",
                    help="CI check: the manifest's notebooks are clean (no outputs), paired and parameterized")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.check_notebooks:
            man = load_manifest(args.manifest, check_files=False)
            listed = {s.name for s in man.steps}
            extra = sorted(({p.stem for p in man.notebooks_dir.glob("[0-9]*.ipynb")}
                            | {p.stem for p in man.notebooks_dir.glob("[0-9]*.py")}) - listed)
            paths = [s.ipynb if s.ipynb.exists() else s.py for s in man.steps]
            problems = [f"{s.name}: neither {s.ipynb.name} nor {s.py.name} exists" for s in man.steps
                        if not (s.ipynb.exists() or s.py.exists())]
            problems += [f"{n}: in {man.notebooks_dir} but not in the manifest" for n in extra]
            problems += verify_notebooks_clean([p for p in paths if p.exists()])
            for msg in problems:
                print(msg, file=sys.stderr)
            print(f"{len(man.steps)} notebooks checked: {'clean' if not problems else f'{len(problems)} problem(s)'}")
            return 1 if problems else 0
        from .config import ConfigError, parse_assignments
        try:
            overrides = parse_assignments(args.set)
        except ConfigError as e:
            raise ReproduceError(f"--set: {e}") from None
        # SIGTERM (a scheduler, `kill`) stops the run like Ctrl-C: recorded as interrupted, not a raw kill
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            common = dict(manifest=args.manifest, only=args.only, start=args.start, force=args.force,
                          timeout=args.timeout, device=args.device, overrides=overrides,
                          log_output=not args.quiet, dry_run=args.dry_run)
            if args.seeds:
                seeds_job(args.profile, args.seeds, out=args.out, runs=args.runs, **common)
            else:
                reproduce(args.profile, out=args.out, runs=args.runs, seed=args.seed, **common)
        finally:
            signal.signal(signal.SIGTERM, previous)
        return 0
    except ReproduceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NotebookFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (RunInterrupted, KeyboardInterrupt) as e:     # KeyboardInterrupt: before the run started
        print(f"error: {e or 'interrupted before any notebook ran'}", file=sys.stderr)
        return 130                                       # 128 + SIGINT, the shell's convention


if __name__ == "__main__":
    sys.exit(main())
