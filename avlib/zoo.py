"""The model zoo: small pre-trained checkpoints the kit trains itself, committed with a manifest.

    python -m avlib.zoo build --profile cpu                   # every entry of the profile, in stage order
    python -m avlib.zoo build --profile cpu --only deepavfusion
    python -m avlib.zoo verify                                # every file against its manifest sha256
    python -m avlib.zoo list
    path = zoo.checkpoint("cpu", "deepavfusion")              # a verified path for run_task / notebooks

Teaching kits ship trained models so that a notebook shows a learned model in minutes (the UvA DL
notebooks fetch theirs; ours are in the repository). Each entry is one pre-training stage of a
``Recipe``: the objective, the config overrides on the profile, and the entry whose modality ViTs it
starts from (``warm_start``, the official staged recipe). ``zoo/manifest.json`` records, per entry, the
file's sha256 and size, the command that rebuilds it, the full config, the seed, the git commit, the
wall time, the machine and the final monitors. Files hold the state dict in half precision (loading
converts to float32; ``checkpoint.load_pretrained`` does it for every checkpoint) plus the config and
the objective's name, and are verified by sha256 whenever a notebook or a task asks for them.

A zoo file is committed only once its recipe is settled: every rebuilt file adds its size to the
repository's history for good.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .checkpoint import extract_state_dict, load_checkpoint, save_checkpoint
from .config import config_to_dict, make_config
from .paths import ROOT, RUNS
from .utils import sha256_file

__all__ = ["ZOO", "Recipe", "RECIPES", "staged_recipe", "ZooError", "checkpoint", "ensure", "initializations",
           "compared_inits", "stages", "BASELINES", "BASELINE_DATA", "baseline_recipes", "curated_control", "build",
           "verify", "manifest", "main"]

ZOO: Path = Path(os.environ.get("AVLIB_ZOO", ROOT / "zoo"))


class ZooError(RuntimeError):
    """A zoo entry that is missing, unknown or does not match its manifest."""


@dataclass(frozen=True)
class Recipe:
    """One zoo entry: a pre-training stage on top of a profile.

    Attributes:
        name: the entry's name (``zoo/<profile>/<name>.pt``).
        description: what it is, in one line (shown by ``list`` and in notebooks).
        objective: the registered pre-training objective (``avlib.objectives``).
        overrides: config overrides on the profile (dotted keys).
        warm_start: the entry whose modality ViTs this stage starts from (``tasks.load_branches``).
        downstream: how a downstream run starts from it: ``"pretrained"`` (its whole encoder, with its
            recipe's architecture) or ``"warm_start"`` (its two ViTs in the profile's own architecture,
            a fresh fusion stream: the unimodal stage, what the audio-visual stage starts from).
        warm_start_decoders: also start the MAE decoders from ``warm_start``'s (``tasks.load_decoders``).
    """
    name: str
    description: str
    objective: str = "deepavfusion"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    warm_start: str | None = None
    downstream: str = "pretrained"
    warm_start_decoders: bool = False


def staged_recipe(unimodal: Mapping[str, Any] | None = None, audiovisual: Mapping[str, Any] | None = None
                  ) -> list[Recipe]:
    """The official staged recipe at small scale (docs/pretraining.md#the-staged-recipe-at-small-scale):

    1. ``unimodal``: masked modeling of each modality alone: the two ViTs and their decoders with no fusion
       stream (``model.fusion_arch="none"``: the image MAE and the audio MAE train side by side, neither
       sees the other modality), the paper's mask ratios 0.75 / 0.8. What the official pre-training starts
       from (ImageNet MAE, AudioMAE); a downstream run takes its ViTs and a fresh fusion stream.
    2. ``deepavfusion``: audio-visual masked modeling through the early-fusion encoder, its ViTs warm-started
       from stage 1 and brought in by the official half-cosine lr ramp (``pretrain.pretrained_lr_ramp``).

    Both stages standardize image targets per colour channel and the audio-visual stage masks for
    inpainting (``ModelConfig.image_target_norm`` / ``masking``: named deviations, explained there). The
    audio-visual stage also starts its two MAE decoders from stage 1's (``Recipe.warm_start_decoders``; the
    official stage starts them from random): with fresh decoders its first steps pushed the ViTs away from
    what stage 1 taught them (frozen-token probe on val, spoken digit / digit per cell: 50.2 / 77.2 % after
    the stage, from 52.2 / 81.0 %; 53.2 / 81.3 % with the decoders warm-started).
    ``unimodal`` / ``audiovisual``: each stage's budget overrides (a small profile shrinks budgets only).
    """
    common = {"model.image_mask_ratio": 0.75, "model.audio_mask_ratio": 0.8, "model.image_target_norm": "channel"}
    return [
        Recipe("unimodal", "image MAE and audio MAE, each ViT alone (the warm start of the audio-visual stage)",
               overrides={**common, "model.fusion_arch": "none", **(unimodal or {})}, downstream="warm_start"),
        Recipe("deepavfusion", "DeepAVFusion: audio-visual masked modeling with factorized early fusion, "
               "from the unimodal ViTs", warm_start="unimodal", warm_start_decoders=True,
               overrides={**common, "model.masking": "inpainting", "pretrain.pretrained_lr_ramp": True,
                          **(audiovisual or {})}),
    ]


# the comparison methods of the supplement's figures (docs/baselines.md), in the figures' order
BASELINES = {"ezvsl": "EZ-VSL: audio-visual contrastive localization (multiple-instance InfoNCE)",
             "slavc": "SLAVC: EZ-VSL with momentum targets, dropout and silence / off-screen awareness",
             "mix_and_localize": "Mix-and-Localize: localizing several sounds in mixed scenes",
             "sound_of_pixels": "Sound-of-Pixels: mix-and-separate, masks conditioned on image features",
             "ccol": "CCoL: cyclic co-learning of sounding-object grounding and separation",
             "oneavm": "OneAVM-style (reconstructed): localization, alignment and separation in one model"}


# The one tiny-scale change the comparison methods' pre-training makes (docs/baselines.md, "The curated
# corpus"): their pre-training scenes show the sounding digit alone (``data.pretrain_distractors=0``), the
# analog of the curated corpora they were published on (VGGSound keeps clips whose source is visible). On the
# task scenes (four digits, one sounding) none of them left chance in 782 steps at its published lr, and
# EZ-VSL's InfoNCE stayed at 2 ln 64 in shorter runs at lr 1e-3 (200 steps), at tau 0.07 (540 steps) and from
# scratch (200 steps), although the same model memorizes one fixed batch in 50 steps. With the sounding digit
# alone it leaves the plateau after ~250 steps (validation split, docs/baselines.md). The downstream protocols
# still train and test on task scenes.
BASELINE_DATA: dict[str, Any] = {"data.pretrain_distractors": 0}


def baseline_recipes(budget: Mapping[str, Any] | None = None) -> list[Recipe]:
    """The six comparison methods (``avlib.baselines``, docs/baselines.md) as zoo entries: each objective on
    the two-stream backbone (``model.fusion_arch="none"``), its ViTs warm-started from the ``unimodal``
    entry like DeepAVFusion's audio-visual stage, its published optimizer recipe
    (``objective.config_overrides()``), the curated pre-training scenes (``BASELINE_DATA``) and the same
    number of steps as that stage (``budget``)."""
    from .objectives import OBJECTIVES

    return [Recipe(name, f"{what} (two-stream backbone, from the unimodal ViTs, curated scenes)", objective=name,
                   overrides={**OBJECTIVES[name].config_overrides(), **BASELINE_DATA, **(budget or {})},
                   warm_start="unimodal")
            for name, what in BASELINES.items()]


def curated_control(audiovisual: Recipe) -> Recipe:
    """The data control of the comparison: DeepAVFusion's audio-visual stage (``audiovisual``) on the
    comparison methods' curated pre-training scenes (``BASELINE_DATA``), everything else unchanged, so that
    a difference between DeepAVFusion and a method can be told apart from the difference in their data."""
    return replace(audiovisual, name=f"{audiovisual.name}_curated",
                   description=f"{audiovisual.description}, on the comparison methods' curated scenes (data control)",
                   overrides={**audiovisual.overrides, **BASELINE_DATA})


def _profile_recipes(staged: list[Recipe], budget: Mapping[str, Any] | None = None) -> list[Recipe]:
    """A profile's entries: the staged recipe, DeepAVFusion's data control, the comparison methods."""
    return [*staged, curated_control(staged[1]), *baseline_recipes(budget)]


# The profiles' recipes, in build order (a stage comes after the entry it warm-starts from). Budgets:
# ``cpu``: batch 64 of 3,000 training scenes = 47 steps per epoch; 64 epochs (~3,000 steps) of unimodal
# masked modeling and 17 (~800 steps) of audio-visual, lr 1e-3 with 10% warm-up, chosen with frozen-token
# probes on the validation split (docs/pretraining.md). ``smoke``: the same stages at the profile's budget.
RECIPES: dict[str, list[Recipe]] = {
    "cpu": _profile_recipes(staged_recipe(
        unimodal={"pretrain.epochs": 64, "pretrain.warmup_epochs": 6, "pretrain.lr": 1e-3, "pretrain.eval_every": 16},
        audiovisual={"pretrain.epochs": 17, "pretrain.warmup_epochs": 2, "pretrain.lr": 1e-3, "pretrain.eval_every": 4}),
        {"pretrain.epochs": 17, "pretrain.eval_every": 4}),
    "smoke": _profile_recipes(staged_recipe()),
}


def ensure(profile: str, name: str, *, runs: Path | None = None, zoo: Path | None = None, device: str = "auto") -> Path:
    """The checkpoint of entry ``name``: the zoo's file when the zoo has it (sha256 verified), else the
    recipe trained here into ``runs/<name>`` (and the entries it warm-starts from, first). Notebooks call
    this, so a profile without a committed zoo (``smoke``) pre-trains its stages live, in seconds."""
    from .tasks import pretrain

    found = checkpoint(profile, name, zoo=zoo, required=False)
    if found is not None:
        return found
    r = _recipe(profile, name)
    runs = Path(runs or RUNS / "zoo" / profile)             # the runs build() makes: a finished one is reused
    warm = ensure(profile, r.warm_start, runs=runs, zoo=zoo, device=device) if r.warm_start else None
    return pretrain(recipe_config(profile, name), runs / name, objective=r.objective, warm_start=warm,
                    warm_start_decoders=r.warm_start_decoders, device=device, label=f"{profile}/{name}").checkpoint


def initializations(profile: str, names: Sequence[str] = ("scratch", "unimodal", "deepavfusion"), *,
                    runs: Path | None = None, zoo: Path | None = None, device: str = "auto") -> dict[str, tuple]:
    """The initializations the downstream notebooks compare, in ``tasks.compare_inits``'s form
    ``{name: (init, checkpoint, overrides)}``: ``scratch`` (random), ``unimodal`` (the zoo's unimodal ViTs,
    a fresh fusion stream: what the paper's audio-visual stage starts from) and any other entry's whole
    encoder, with its architecture's config overrides (a baseline's late-fusion backbone, an ablation's
    fusion). Missing entries are trained here (``ensure``)."""
    from .tasks import ENCODER_FIELDS

    out: dict[str, tuple] = {"scratch": ("scratch", None, {})} if "scratch" in names else {}
    for name in names:
        if name in out:
            continue
        r = _recipe(profile, name)
        ckpt = ensure(profile, name, runs=runs, zoo=zoo, device=device)
        arch = {k: v for k, v in r.overrides.items() if k.startswith("model.") and k[len("model."):] in ENCODER_FIELDS}
        out[name] = (r.downstream, ckpt, arch if r.downstream == "pretrained" else {})
    return {name: out[name] for name in names}


def compared_inits(profile: str, *, pretrain_ckpt: str | Path | None = None, unimodal_ckpt: str | Path | None = None,
                   names: Sequence[str] = ("scratch", "unimodal", "deepavfusion"), run_dir: Path | None = None,
                   cfg=None, device: str = "auto") -> dict[str, tuple]:
    """The initializations a downstream notebook compares (``tasks.compare_inits``'s mapping): random
    (``scratch``), the unimodal warm start (``unimodal``: its two ViTs, a fresh fusion stream) and
    DeepAVFusion's audio-visual pre-training (``deepavfusion``: the whole encoder), at the same budget.

    Checkpoints handed over by 02 (``pretrain_ckpt``, ``unimodal_ckpt``) are used as given; otherwise the
    profile's zoo entries (``ensure``: the committed file, or the recipe trained here). A profile without
    zoo recipes (``paper``) pre-trains DeepAVFusion into ``run_dir/pretrain`` with its own recipe
    (``cfg``) and has a unimodal row only when ``unimodal_ckpt`` is given (the official recipe starts from
    ImageNet MAE / AudioMAE checkpoints, which the kit does not ship).
    """
    from .tasks import pretrain

    zoo_profile = profile in RECIPES
    out: dict[str, tuple] = {}
    for name in names:
        if name == "scratch":
            out[name] = ("scratch", None, {})
        elif name == "unimodal":
            ckpt = unimodal_ckpt or (ensure(profile, "unimodal", device=device) if zoo_profile else None)
            if ckpt:
                out[name] = ("warm_start", Path(ckpt), {})
        elif name == "deepavfusion":
            ckpt = pretrain_ckpt
            if not ckpt and zoo_profile:
                ckpt = ensure(profile, "deepavfusion", device=device)
            if not ckpt:
                if cfg is None or run_dir is None:
                    raise ZooError(f"profile {profile!r} has no zoo: pass pretrain_ckpt, or cfg and run_dir to "
                                   "pre-train here")
                ckpt = pretrain(cfg, Path(run_dir) / "pretrain", device=device).checkpoint
            out[name] = ("pretrained", Path(ckpt), {})
        else:
            out.update(initializations(profile, (name,), device=device))
    return out


def stages(profile: str, checkpoints: Mapping[str, str | Path], *, zoo: Path | None = None
           ) -> tuple[list[dict], dict[str, dict]]:
    """What each stage in ``checkpoints`` (``{entry: path}``) is and how it trained, for notebooks: one row
    per entry (steps, wall time, final monitors, where the file came from) and its training curve
    (``{"steps": [...], "evals": [...]}``). A committed entry reads both from the manifest; a stage
    trained here (no zoo, or a rebuild) from the ``history.json`` beside its checkpoint."""
    entries = manifest(zoo)
    rows, curves = [], {}
    for name, path in checkpoints.items():
        path, e = Path(path), entries.get(f"{profile}/{name}")
        from_zoo = e is not None and (zoo or ZOO) / e["file"] == path
        if from_zoo:
            hist, wall, source = e["history"], e["wall_s"], f"zoo ({e['sha256'][:12]}..., {e['machine']})"
        else:
            h = json.loads((path.parent / "history.json").read_text()) if (path.parent / "history.json").exists() else {}
            hist, wall, source = {"steps": h.get("steps", []), "evals": h.get("evals", [])}, None, f"trained here ({path})"
        last = hist["evals"][-1] if hist["evals"] else {}
        rows.append({"stage": name, "description": _recipe(profile, name).description,
                     "steps": last.get("step"), "minutes": None if wall is None else round(wall / 60, 1),
                     **{k: v for k, v in last.items() if k not in ("epoch", "step")}, "source": source})
        curves[name] = hist
    return rows, curves


def _recipe(profile: str, name: str) -> Recipe:
    for r in RECIPES.get(profile, []):
        if r.name == name:
            return r
    known = ", ".join(r.name for r in RECIPES.get(profile, [])) or "none"
    raise ZooError(f"no zoo entry {name!r} for profile {profile!r} (entries: {known})")


def recipe_config(profile: str, name: str, **overrides):
    """The config an entry was (or will be) trained with: the profile plus the recipe's overrides."""
    r = _recipe(profile, name)
    return make_config(profile, overrides={**r.overrides, **overrides})


# ----------------------------------------------------------------------------------------------
# The manifest
# ----------------------------------------------------------------------------------------------
def manifest(zoo: Path | None = None) -> dict[str, dict]:
    """``{"<profile>/<name>": entry}`` from ``zoo/manifest.json`` (empty when there is none)."""
    path = (zoo or ZOO) / "manifest.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())["entries"]


def _write_manifest(entries: Mapping[str, dict], zoo: Path) -> None:
    zoo.mkdir(parents=True, exist_ok=True)
    tmp = zoo / "manifest.json.tmp"
    tmp.write_text(json.dumps({"entries": dict(sorted(entries.items()))}, indent=1) + "\n")
    os.replace(tmp, zoo / "manifest.json")


def checkpoint(profile: str, name: str, *, zoo: Path | None = None, required: bool = True) -> Path | None:
    """The verified path of entry ``<profile>/<name>``: its sha256 must equal the manifest's.

    Returns ``None`` when the profile has no such entry and ``required`` is False (e.g. ``smoke``, whose
    notebooks pre-train for themselves); raises ``ZooError`` otherwise, saying how to rebuild.
    """
    zoo = zoo or ZOO
    key = f"{profile}/{name}"
    entry = manifest(zoo).get(key)
    if entry is None:
        if not required:
            return None
        raise ZooError(f"the zoo has no entry {key!r} (zoo/manifest.json lists {sorted(manifest(zoo)) or 'none'}); "
                       f"build it with: python -m avlib.zoo build --profile {profile} --only {name}")
    path = zoo / entry["file"]
    if not path.is_file():
        raise ZooError(f"{path} is listed in the zoo manifest but missing; rebuild it with: {entry['command']}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise ZooError(f"{path} does not match the zoo manifest (sha256 {digest[:16]}... != "
                       f"{entry['sha256'][:16]}...): the file was changed or corrupted. Restore it from git "
                       f"(git checkout -- {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}) "
                       f"or rebuild it with: {entry['command']}")
    return path


def verify(zoo: Path | None = None) -> list[str]:
    """Problems with any entry (missing file, sha256 mismatch); empty when every file matches."""
    problems = []
    for key in manifest(zoo):
        profile, name = key.split("/", 1)
        try:
            checkpoint(profile, name, zoo=zoo)
        except ZooError as e:
            problems.append(str(e))
    return problems


# ----------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------
def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}"


def _half(state: Mapping[str, Any]) -> dict:
    """The zoo's file: the state dict in half precision (float tensors only), config and objective."""
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in extract_state_dict(state).items()}
    return {"state_dict": sd, "config": state["config"], "objective": state.get("objective", "deepavfusion"),
            "epoch": state.get("epoch")}


def build(profile: str, only: Sequence[str] | None = None, *, zoo: Path | None = None, runs: Path | None = None,
          device: str = "auto") -> dict[str, dict]:
    """Train the profile's entries (``only``: these and nothing else; the entries they warm-start from
    must already be in the zoo) and record them in the manifest. Each stage resumes from its run
    directory (``runs/zoo/<profile>/<name>``), so an interrupted build continues where it stopped."""
    from .nb import git_sha
    from .tasks import pretrain

    zoo, runs = zoo or ZOO, runs or RUNS / "zoo"
    if profile not in RECIPES:
        raise ZooError(f"profile {profile!r} has no zoo recipes (profiles with a zoo: {sorted(RECIPES)})")
    todo = [r for r in RECIPES[profile] if only is None or r.name in only]
    unknown = set(only or ()) - {r.name for r in RECIPES[profile]}
    if unknown:
        raise ZooError(f"unknown zoo entries {sorted(unknown)} for {profile!r}: "
                       f"{[r.name for r in RECIPES[profile]]}")
    entries = manifest(zoo)
    commit = git_sha()              # the code the build started from (a later commit may land while it runs)
    for r in todo:
        cfg = recipe_config(profile, r.name)
        warm = checkpoint(profile, r.warm_start, zoo=zoo) if r.warm_start else None
        t0 = time.time()
        res = pretrain(cfg, runs / profile / r.name, objective=r.objective, warm_start=warm,
                       warm_start_decoders=r.warm_start_decoders, device=device, label=f"zoo {profile}/{r.name}")
        wall = time.time() - t0
        rel = Path(profile) / f"{r.name}.pt"
        save_checkpoint(zoo / rel, _half(load_checkpoint(res.checkpoint)))
        entries = manifest(zoo)            # re-read: another build may have recorded other entries meanwhile
        entries[f"{profile}/{r.name}"] = {
            "file": str(rel), "sha256": sha256_file(zoo / rel), "bytes": (zoo / rel).stat().st_size,
            "description": r.description, "objective": r.objective, "warm_start": r.warm_start,
            "warm_start_decoders": r.warm_start_decoders,
            "command": f"python -m avlib.zoo build --profile {profile} --only {r.name}",
            "overrides": dict(r.overrides), "config": config_to_dict(cfg), "seed": cfg.seed,
            "git_commit": commit, "wall_s": round(wall, 1), "steps": res.history.meta.get("total_steps"),
            "machine": _machine(), "built": time.strftime("%Y-%m-%d %H:%M:%S"),
            "final": {k: round(float(v), 5) for k, v in res.metrics.items() if isinstance(v, (int, float))},
            # the training curve, for notebooks (loss terms per log line, monitors per evaluation)
            "history": {"steps": [{k: v for k, v in s.items() if k != "samples_per_s"} for s in res.history.steps],
                        "evals": res.history.evals},
        }
        _write_manifest(entries, zoo)
        print(f"[zoo] {profile}/{r.name}: {entries[f'{profile}/{r.name}']['bytes'] / 2**20:.1f} MiB "
              f"in {wall / 60:.1f} min", flush=True)
    return {k: v for k, v in entries.items() if k.startswith(f"{profile}/")}


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m avlib.zoo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train the profile's entries and record them in zoo/manifest.json")
    b.add_argument("--profile", default="cpu")
    b.add_argument("--only", nargs="*", help="entry names (default: all, in stage order)")
    b.add_argument("--device", default="auto")
    sub.add_parser("verify", help="check every zoo file against its manifest sha256")
    sub.add_parser("list", help="the entries and what each is")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        t0 = time.time()
        build(args.profile, args.only, device=args.device)
        print(f"[zoo] built in {(time.time() - t0) / 60:.1f} min", flush=True)
        return 0
    if args.cmd == "verify":
        problems = verify()
        for p in problems:
            print(p, file=sys.stderr)
        print(f"{len(manifest()) - len(problems)} of {len(manifest())} zoo files match the manifest")
        return 1 if problems else 0
    for key, e in manifest().items():
        print(f"{key:32s} {e['bytes'] / 2**20:5.1f} MiB  {e['wall_s'] / 60:5.1f} min  {e['description']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
