# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · The report: paper tables and figures from the recorded metrics
#
# **Paper.** Mo & Morgado, *Unveiling the Power of Audio-Visual Early Fusion Transformers with Dense
# Interactions through Masked Modeling*, CVPR 2024 ([arXiv:2312.01017](https://arxiv.org/abs/2312.01017)). The experiments
# are in Sec. 4 of the paper, the downstream protocols in supplement A.1-A.3, and the qualitative
# figures in supplement B (Figures 1-3).
#
# Every notebook ends by writing its numbers to `reports/<profile>/<notebook>/metrics.json` and its figures
# to `figures/`. This notebook trains nothing. It reads those files and puts together the paper's
# story, in the paper's terms:
#
# 1. **Does masked audio-visual pre-training help?** For each task, the pre-trained encoder
#    (notebook 02) is compared with the same model trained from scratch, on the task's main metric
#    (`main_metric` of each protocol in `avlib.protocols.PROTOCOLS`).
# 2. **What matters in the fusion design?** The ablation tables of notebook 07.
# 3. **What do the predictions look like?** Supplement Figures 1-3, rebuilt on AV-Digits by notebooks 04-06.
#
# It works with whatever is there. A notebook that has not run (e.g. `--only 08`) is reported as
# missing, and the rest is still shown.
#
# **Expected runtime:** about 10 s at every profile (it only reads files).

# %%
import json
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

from avlib import nb, viz
from avlib.config import make_config
from avlib.paths import ROOT
from avlib.reproduce import comparisons, headline_references, load_manifest
from avlib.protocols import PROTOCOLS

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | cpu | paper (whose reports are collected)
seed: int = 0  # recorded with the report (nothing random happens here)
device: str = "auto"  # unused (no model runs here)
out_dir: str = ""  # this report's metrics and figures; empty means reports/<profile>/08_report/
run_dir: str = ""  # unused (no training); empty means runs/<profile>/08_report/
overrides: dict = {}  # config overrides, recorded for provenance only
reports_dir: str = ""  # folder with the notebooks' outputs; empty means the folder above out_dir (reports/<profile>/)

# %%
device = nb.setup(seed, device)
cfg = make_config(profile, overrides=nb.parse_overrides(overrides), seed=seed)
paths = nb.paths_for("08_report", profile, out_dir, run_dir)
root = Path(reports_dir) if reports_dir else paths.out_dir.parent     # the runner's --out, where 03-07 wrote
root = root if root.is_absolute() else ROOT / root
print(f"collecting {root}")

# %% [markdown]
# ## 1. What ran
#
# The manifest lists the notebooks. The runner's `state.json` holds each one's status and wall time,
# and its `metrics.json` holds the numbers.

# %%
steps = [s for s in load_manifest(check_files=False).steps if s.name != "08_report"]
state_file = root / "state.json"
state = json.loads(state_file.read_text()).get("notebooks", {}) if state_file.exists() else {}
metrics = {s.name: json.loads((root / s.name / "metrics.json").read_text())
           for s in steps if (root / s.name / "metrics.json").exists()}
missing = [s.name for s in steps if s.name not in metrics]
pd.DataFrame([{"notebook": s.name, "title": s.title, "status": state.get(s.name, {}).get("status", "not run"),
               "wall time (s)": state.get(s.name, {}).get("duration_s"), "metrics.json": s.name in metrics}
              for s in steps]).set_index("notebook")

# %%
if missing:
    print(f"missing metrics for {len(missing)} notebook(s): {', '.join(missing)}. Their tables and figures are "
          f"left out below. Run them with `python -m avlib.reproduce --profile {profile}`.")
else:
    print("every notebook has recorded its metrics")

# %% [markdown]
# All metrics stored under `<task>/<init>/<metric>` keys (e.g. `localization/pretrained/auc`) become rows
# of one long table. This is the same rule the runner uses for `summary.md`.

# %%
rows = pd.DataFrame([dict(r, notebook=name) for name, mt in metrics.items() for r in comparisons(mt)],
                    columns=["task", "init", "metric", "value", "notebook"])
print(f"{len(rows)} comparison rows from {rows['notebook'].nunique()} notebook(s)")

# %% [markdown]
# ## 2. Pre-trained vs from scratch (the headline table)
#
# One row per downstream protocol, with its main metric. Higher is better for all of them:
#
# | task | main metric | notebook |
# |---|---|---|
# | linear probe / fine-tuning | top-1 accuracy of the sounding digit (supplement A.1) | 03 |
# | localization | AUC of the cIoU curve (supplement A.2) | 04 |
# | segmentation | AVSBench mIoU (supplement A.2) | 05 |
# | separation | SDR in dB (supplement A.3) | 06 |
#
# Δ is pretrained − scratch: positive means pre-training helped. The chart draws the reference values the
# notebooks recorded next to their results: chance for the classifiers (03), the oracle's ceiling and the
# random map's floor for localization (04), and the unprocessed mixture's SDR for separation (06). A bar
# is read against its lines, not against the other bars. At the **smoke** profile every run is a
# single epoch on a few scenes, so only the plumbing is being tested and the numbers mean nothing. Read
# the **cpu** profile for the AV-Digits story, and the **paper** profile for the benchmarks.

# %%
main_metric = {t: p.main_metric for t, p in PROTOCOLS.items()}       # protocol -> its headline metric
tasks_order = [t for t in main_metric if t in set(rows["task"])]
main = rows[rows["task"].isin(tasks_order) & (rows["metric"] == rows["task"].map(main_metric))]
headline = (main.pivot_table(index=["task", "metric"], columns="init", values="value", aggfunc="first")
            .reindex(columns=["pretrained", "scratch"]))
headline["Δ (pretrained − scratch)"] = headline["pretrained"] - headline["scratch"]
headline = headline.reindex([(t, main_metric[t]) for t in tasks_order])
headline.style.format("{:+.3f}", subset=["Δ (pretrained − scratch)"], na_rep="–").format(
    "{:.3f}", subset=["pretrained", "scratch"], na_rep="–") if len(headline) else print("no downstream results yet (03-06 missing)")

# %%
if len(main):
    fig = viz.compare_bars(main[["task", "init", "metric", "value"]], title=f"pretrained vs scratch ({profile} profile)",
                           references=headline_references(rows.to_dict("records")))
    nb.save_fig(fig, paths.out_dir, "pretrained_vs_scratch")
    display(fig)

# %% [markdown]
# ### Every downstream metric
#
# The main metric is one number per task. The other metrics (cIoU at 0.5, F-score, SIR/SAR, the
# per-stream accuracies of the official classification head, ...) show *where* a difference comes from.

# %%
full = (rows[rows["task"].isin(tasks_order)]
        .pivot_table(index=["task", "metric"], columns="init", values="value", aggfunc="first")
        .reindex(columns=["pretrained", "scratch"]))
full.round(4) if len(full) else print("no downstream metrics yet")

# %% [markdown]
# **Which features does a linear probe need?** Supplement A.1 probes every subset of the pooled audio,
# visual and fusion features (notebook 03).

# %%
subsets = rows[rows["task"] == "feature_subsets"].pivot_table(index="metric", columns="init", values="value",
                                                               aggfunc="first")
subsets.round(2) if len(subsets) else print("no feature-subset probes recorded (03 missing)")

# %% [markdown]
# ## 3. Ablations (notebook 07)
#
# Each sweep varies one design choice: the fusion block (`none` / `token` / `dense` / `factorized`), the
# number of fusion tokens, or the mask ratios. Each variant is pre-trained on the ablation budget and
# judged by the same probe. Keys follow `ablation_<sweep>/<variant>/<metric>`. Remember notebook 01:
# `dense` and `factorized` are not "quadratic vs linear", because both evaluate exactly in linear time.

# %%
ablation_tasks = sorted((t for t in set(rows["task"]) if t.startswith("ablation")), key=lambda t: (t.endswith("reference"), t))
for t in ablation_tasks:
    table = rows[rows["task"] == t].pivot_table(index="init", columns="metric", values="value", aggfunc="first")
    display(Markdown(f"**{t}**"), table.rename_axis(index="variant").round(3))
if not ablation_tasks:
    print("no ablation results recorded (07 missing)")

# %%
ablation_png = root / "07_ablations" / "figures" / "ablations.png"
if ablation_png.exists():
    display(Image(filename=str(ablation_png)))
else:
    print(f"no ablation figure ({ablation_png.relative_to(root)} missing)")

# %% [markdown]
# ## 4. The foundations: data, model, pre-training
#
# These are the numbers the downstream results rest on. They are the dataset facts (00), the
# parameter counts against the official ones and the separable-vs-explicit check (01), and the final
# pre-training losses and 1-NN probe accuracies (02).

# %%
groups = {"00_data": ("data",), "01_model": ("params", "pair_attention"), "02_pretraining": ("pretrain",)}
for name, prefixes in groups.items():
    values = {k: v for k, v in metrics.get(name, {}).items() if k.split("/")[0] in prefixes}
    display(Markdown(f"**{name}**"), pd.Series(values, dtype=object).to_frame("value") if values else "not recorded")

# %% [markdown]
# ## 5. Qualitative results: supplement Figures 1-3 on AV-Digits
#
# The supplement compares DeepAVFusion with earlier methods qualitatively. Here the comparison is
# pre-trained vs from scratch on the same test scenes, re-displayed from the PNGs that notebooks 04-06
# saved.
#
# * **Figure 1, localization:** each method's map of where the sound comes from, over the frame.
#   The ground truth is the sounding cell.
# * **Figure 2, segmentation:** the predicted mask of the sounding digit's pixels.
# * **Figure 3, separation:** the spectrogram each method recovers for each source of a two-digit mixture.

# %%
figures = [("04_localization", "figure1_localization", "Figure 1 · sound source localization"),
           ("05_segmentation", "figure2_segmentation", "Figure 2 · audio-visual segmentation"),
           ("06_separation", "figure3_separation", "Figure 3 · sound source separation")]
shown = 0
for name, stem, caption in figures:
    png = root / name / "figures" / f"{stem}.png"
    if png.exists():
        display(Markdown(f"**{caption}** (`{png.relative_to(root)}`)"), Image(filename=str(png)))
        shown += 1
    else:
        print(f"{caption}: not available ({name} has not saved {png.name})")

# %% [markdown]
# ## Results
#
# The report's own record: what it found, and the pretrained − scratch gap on each task's main metric.

# %%
deltas = {f"delta/{t}": headline.loc[(t, main_metric[t]), "Δ (pretrained − scratch)"] for t in tasks_order}
record = {"report/notebooks_with_metrics": len(metrics), "report/notebooks_missing": ", ".join(missing) or "none",
          "report/comparison_rows": len(rows), "report/figures_shown": shown, **deltas}
nb.record(record, paths.out_dir, cfg=cfg)

# %% [markdown]
# ## Summary
#
# * The headline table answers the paper's main question on this data: does masked audio-visual
#   pre-training of an early-fusion encoder improve a downstream task over the same model trained from
#   scratch? At the `cpu` profile only classification shows a gap (linear probe +4 points, fine-tuning
#   +8). Localization, segmentation and separation stay at their trivial baselines for both inits, so
#   their deltas say nothing yet. The `paper` profile is where the full claim is tested.
# * The ablations show which parts of the fusion design carry that gain. Read them with notebook 01's
#   identity in mind: "dense" pair attention is exactly two cross-attentions.
# * Everything here was read from files. `reports/<profile>/summary.md` (written by the runner) has
#   the same comparisons plus every notebook's full metrics and figures.
#
# ## Exercises
#
# 1. Compare the cpu and smoke reports (`reports_dir="reports/smoke"` vs `"reports/cpu"`). Which deltas
#    keep their sign?
# 2. Re-run 03-06 with another `seed` into another reports folder (`--out`) and point this notebook at it.
#    Which deltas are larger than the seed-to-seed spread?
# 3. Which ablation variant is closest to the 02 checkpoint's reference row in 07, and what does the gap
#    say about the ablation budget?
#
# ## References
#
# * Mo & Morgado, DeepAVFusion, CVPR 2024 (Sec. 4) and supplementary material (A.1-A.3 protocols, B Figures 1-3).
# * Metric definitions: [docs/metrics.md](../docs/metrics.md); protocols: [docs/protocols.md](../docs/protocols.md); the official repository's
#   numbers: [docs/official_implementation.md §6](../docs/official_implementation.md#6-numbers-the-official-repository-reports); peers'
#   numbers: [docs/peers.md](../docs/peers.md#published-numbers).
