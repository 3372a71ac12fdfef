"""Downstream budgets chosen on the validation split: learning curves of every protocol and initialization.

    python -m avlib.budgets --profile cpu                                  # every protocol, the three inits
    python -m avlib.budgets --profile cpu --tasks localization --epochs 12 --inits scratch deepavfusion

Each (protocol, initialization) trains once for ``--epochs`` epochs with the profile's recipe (optimizer,
lr, schedule) and is scored on the **validation** scenes (``<task>.test_data = "avdigits:val"``: FSDD takes
and MNIST images that neither the training nor the test scenes use) after every epoch. The test split is
never read. The curves show how long each protocol needs before the best initialization leaves its trivial
baseline, and how many minutes of this machine that costs (the training time per epoch is measured in the
same run). Written to ``reports/<profile>/budgets/``: ``curves.json`` (per task and init: epoch, step,
minutes of training, every validation metric; a later run of other protocols adds to it) and ``curves.png``.

A point at epoch e of an E-epoch run is not the result of an e-epoch run when the schedule decays (a cosine
schedule anneals over E); with the supplement's constant lr it is.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Mapping, Sequence

from .config import TASKS, apply_overrides, make_config
from .paths import REPORTS, RUNS
from .utils import atomic_write

__all__ = ["CURVE_METRIC", "curves_file", "load_record", "task_figure", "learning_curves", "plot_curves", "main"]

# The metric each protocol's curve shows and what a model that learned nothing scores on it (AV-Digits):
# chance top-1 of 10 digits, chance cell accuracy of a 2 x 2 grid, an empty mask, the mixture returned as
# the estimate. These are the metrics whose trivial value is known exactly (the protocols' summary metrics,
# PROTOCOLS[task].main_metric, e.g. localization AUC and separation SDR, have none that simple).
CURVE_METRIC = {"linprobe": ("top1", 10.0), "finetune": ("top1", 10.0), "localization": ("cell_acc", 0.25),
                "segmentation": ("avsbench_miou", 0.0), "separation": ("sdri", 0.0)}


def learning_curves(cfg, tasks: Sequence[str], inits: Mapping[str, tuple], epochs: int, run_root: Path, *,
                    device: str = "auto", split: str = "val") -> dict[str, dict[str, list[dict]]]:
    """``{task: {init: [{"epoch", "step", "minutes", <metrics>...}, ...]}}``: each protocol trained from each
    init (``tasks.compare_inits``'s mapping, e.g. ``zoo.initializations``) for ``epochs`` epochs and scored on
    ``split`` after every epoch. ``minutes``: training time up to that evaluation (evaluation excluded)."""
    from .tasks import run_task

    out: dict[str, dict[str, list[dict]]] = {}
    for task in tasks:
        out[task] = {}
        over = {f"{task}.train.epochs": epochs, f"{task}.train.eval_every": 1,
                f"{task}.test_data": f"{cfg.data.dataset}:{split}"}
        for name, (init, ckpt, *arch) in inits.items():
            icfg = apply_overrides(cfg, {**(arch[0] if arch else {}), **over})
            t0 = time.time()
            res = run_task(task, icfg, Path(run_root) / task / name, init=init, checkpoint=ckpt, device=device,
                           label=f"{name}, {split}")
            wall = time.time() - t0
            evals = res.history.evals
            eval_s = float(res.history.meta.get("eval_seconds", 0.0) or 0.0)
            train_min = max(wall - eval_s, 0.0) / 60.0
            total = max(e.get("step", 0) for e in evals) or 1
            out[task][name] = [{**e, "minutes": round(train_min * e.get("step", 0) / total, 3)} for e in evals]
    return out


def plot_curves(curves: Mapping[str, Mapping[str, list[dict]]], path: Path | None = None):
    """One panel per protocol: its main metric on the validation split against epochs, one line per init,
    the trivial baseline dashed; the top axis in minutes of training on the machine that ran it."""
    import matplotlib.pyplot as plt

    tasks = list(curves)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        key, trivial = CURVE_METRIC[task]
        for name, pts in curves[task].items():
            ax.plot([p["epoch"] for p in pts], [p.get(key, float("nan")) for p in pts], marker="o", ms=3, label=name)
        ax.axhline(trivial, color="grey", ls="--", lw=1, label="trivial")
        ax.set(title=task, xlabel="epoch", ylabel=f"{key} (validation)")
        pts = next(iter(curves[task].values()), [])
        if pts and pts[-1]["epoch"]:
            per_epoch = pts[-1]["minutes"] / pts[-1]["epoch"]
            top = ax.secondary_xaxis("top", functions=(lambda e, k=per_epoch: e * k,
                                                       lambda m, k=per_epoch: m / max(k, 1e-9)))
            top.set_xlabel("minutes of training (this machine)")
        ax.legend(fontsize=9)
    fig.tight_layout()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def curves_file(profile: str, out: Path | None = None) -> Path:
    """Where ``python -m avlib.budgets`` keeps a profile's curves: ``reports/<profile>/budgets/curves.json``."""
    return (out or REPORTS / profile / "budgets") / "curves.json"


def load_record(profile: str, out: Path | None = None) -> dict:
    """The profile's ``curves.json`` record (``profile, split, epochs, curves``); an empty one when none exists."""
    path = curves_file(profile, out)
    if path.exists():
        return json.loads(path.read_text())
    return {"profile": profile, "split": "val", "epochs": {}, "curves": {}}


def task_figure(profile: str, task: str):
    """For a notebook: the validation curves of ``task`` measured for ``profile`` (``plot_curves``, closed so
    that the notebook shows it once), or None after printing how to measure them."""
    import matplotlib.pyplot as plt

    curves = load_record(profile)["curves"]
    if task not in curves:
        print(f"no validation curves for {task} yet: python -m avlib.budgets --profile {profile} "
              f"--tasks {task} writes them to {curves_file(profile).parent}")
        return None
    fig = plot_curves({task: curves[task]})
    plt.close(fig)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    from . import zoo

    ap = argparse.ArgumentParser(prog="python -m avlib.budgets", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--tasks", nargs="+", default=[t for t in TASKS if t != "linprobe"], choices=TASKS)
    ap.add_argument("--inits", nargs="+", default=["scratch", "unimodal", "deepavfusion"],
                    help="zoo initializations (zoo.initializations)")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None, help="default: reports/<profile>/budgets")
    args = ap.parse_args(argv)
    if args.epochs < 1:
        ap.error("--epochs must be >= 1")
    cfg = make_config(args.profile)
    path = curves_file(args.profile, args.out)
    inits = zoo.initializations(args.profile, tuple(args.inits), device=args.device)
    curves = learning_curves(cfg, args.tasks, inits, args.epochs, RUNS / args.profile / "budgets",
                             device=args.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = load_record(args.profile, args.out)     # earlier runs of other protocols stay (one file per profile)
    record["curves"].update(curves)
    record["epochs"].update({task: args.epochs for task in curves})
    atomic_write(path, json.dumps(record, indent=1) + "\n", mode="w")
    plot_curves(record["curves"], path.parent / "curves.png")
    for task, by_init in curves.items():
        key = CURVE_METRIC[task][0]
        print(f"{task:13s} " + "  ".join(f"{n}: " + " ".join(f"{p.get(key, float('nan')):.3g}" for p in pts)
                                         for n, pts in by_init.items()))
    print(f"[budgets] {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
