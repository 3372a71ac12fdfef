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
# 1. **Does audio-visual pre-training help?** For each task, the same protocol runs from three
#    initializations at the same budget: a random encoder (`scratch`), the unimodal MAEs (`unimodal`: the
#    ViTs that DeepAVFusion's audio-visual stage starts from) and DeepAVFusion (`deepavfusion`), on the
#    task's main metric (`main_metric` of each protocol in `avlib.protocols.PROTOCOLS`). The paper's claim
#    is the gap DeepAVFusion − unimodal: what audio-visual early fusion adds to its unimodal starting point.
#    A compare job adds the supplement's comparison methods (docs/baselines.md) as more columns.
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
from avlib.reproduce import (DELTAS, comparison_groups, comparisons, delta_label, headline, headline_references,
                             load_manifest, methods_table, ordered_inits)
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
# All metrics stored under `<task>/<init>/<metric>` keys (e.g. `localization/deepavfusion/auc`) become rows
# of one long table. This is the same rule the runner uses for `summary.md`.

# %%
rows = pd.DataFrame([dict(r, notebook=name) for name, mt in metrics.items() for r in comparisons(mt)],
                    columns=["task", "init", "metric", "value", "notebook"])
print(f"{len(rows)} comparison rows from {rows['notebook'].nunique()} notebook(s)")

# %% [markdown]
# ## 2. Three initializations (the headline table)
#
# One row per downstream protocol, with its main metric, and one column per initialization: `scratch`,
# `unimodal`, `deepavfusion`, then any comparison method. Higher is better for all of them:
#
# | task | main metric | notebook |
# |---|---|---|
# | linear probe / fine-tuning | top-1 accuracy of the sounding digit (supplement A.1) | 03 |
# | localization | AUC of the cIoU curve (supplement A.2) | 04 |
# | segmentation | AVSBench mIoU (supplement A.2) | 05 |
# | separation | SDR in dB (supplement A.3) | 06 |
#
# Two Δ columns, both on the main metric. **deepavfusion − unimodal** is the paper's claim: what the
# audio-visual stage adds to the unimodal encoders it starts from. **deepavfusion − scratch** is what the
# whole staged pre-training adds to a random encoder. Positive means DeepAVFusion is ahead; the table
# reports the gaps as measured, whichever way they go. The chart draws the reference values the notebooks
# recorded next to their results: chance for the classifiers (03), the oracle's ceiling and the random
# map's floor for localization (04), and the unprocessed mixture's SDR for separation (06). A bar is read
# against its lines, not against the other bars, and a gap on a dense task means something only when that
# task left its trivial baseline: notebooks 04-06 say so for each run. At the **smoke** profile every run
# is a single epoch on a few scenes, so only the plumbing is being tested and the numbers mean nothing.
# Read the **cpu** profile for the AV-Digits story, and the **paper** profile for the benchmarks.

# %%
main_metric = {t: p.main_metric for t, p in PROTOCOLS.items()}       # protocol -> its headline metric
tasks_order = [t for t in main_metric if t in set(rows["task"])]
main = rows[rows["task"].isin(tasks_order) & (rows["metric"] == rows["task"].map(main_metric))]
groups = comparison_groups(rows.to_dict("records"))                 # {task: {metric: {init: value}}}
header, body = headline(groups)                                     # the runner's Main results table
main_table = pd.DataFrame(body, columns=header).set_index(["task", "metric"])
delta_cols = [c for c in main_table.columns if c in {delta_label(a, b) for a, b in DELTAS}]
init_cols = [c for c in main_table.columns if c not in delta_cols]
main_table.style.format("{:+.3f}", subset=delta_cols, na_rep="–").format("{:.3f}", subset=init_cols, na_rep="–") \
    if len(main_table) else print("no downstream results yet (03-06 missing)")

# %%
if len(main):
    fig = viz.compare_bars(main[["task", "init", "metric", "value"]],
                           title=f"each protocol from every initialization ({profile} profile)",
                           references=headline_references(rows.to_dict("records")))
    nb.save_fig(fig, paths.out_dir, "initializations")
    display(fig)

# %%
def gaps(column):
    values = main_table[column].dropna() if column in main_table else pd.Series(dtype=float)
    return ", ".join(f"{viz.readable(t)} {v:+.3g}" for (t, _), v in values.items()) or "not measured"


nb.narrate("""In this report (`{profile}`), DeepAVFusion − unimodal on each task's main metric (the paper's
           claim): {du}. DeepAVFusion − scratch: {ds}.""", profile=profile,
           du=gaps(delta_label("deepavfusion", "unimodal")), ds=gaps(delta_label("deepavfusion", "scratch")))

# %% [markdown]
# ### The comparison methods
#
# When a compare job ran (`methods` set for 03-06 in the manifest), every comparison method's encoder went
# through the same downstream protocols, and notebooks 04 and 06 scored each method's own zero-shot
# read-out, where it has one (its localization map, its separation mask; docs/baselines.md). This table has
# one row per initialization and method and one column per task: the main metric after downstream training,
# then the zero-shot columns. It is empty in the main job.

# %%
methods = methods_table(groups)
pd.DataFrame(methods[1], columns=methods[0]).set_index("method").round(3) if methods else \
    print("no comparison methods recorded (the main job runs none; see `methods` in notebooks 03-06)")

# %% [markdown]
# ### Every downstream metric
#
# The main metric is one number per task. The other metrics (cIoU at 0.5, F-score, SIR/SAR, the
# per-stream accuracies of the official classification head, ...) show *where* a difference comes from.

# %%
full = (rows[rows["task"].isin(tasks_order)]
        .pivot_table(index=["task", "metric"], columns="init", values="value", aggfunc="first"))
full = full[ordered_inits([dict.fromkeys(full.columns)])]
full.round(4) if len(full) else print("no downstream metrics yet")

# %% [markdown]
# **Which features does a linear probe need?** Supplement A.1 probes every subset of the pooled audio,
# visual and fusion features (notebook 03).

# %%
subsets = rows[rows["task"] == "feature_subsets"].pivot_table(index="metric", columns="init", values="value",
                                                               aggfunc="first")
subsets[ordered_inits([dict.fromkeys(subsets.columns)])].round(2) if len(subsets) else \
    print("no feature-subset probes recorded (03 missing)")

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
# The supplement compares DeepAVFusion with earlier methods qualitatively. Here the columns are the three
# initializations on the same test scenes, or, after a compare job, DeepAVFusion and each comparison
# method, re-displayed from the PNGs that notebooks 04-06 saved (with the methods' zero-shot maps, when
# they were drawn).
#
# * **Figure 1, localization:** each method's map of where the sound comes from, over the frame.
#   The ground truth is the sounding cell.
# * **Figure 2, segmentation:** the predicted mask of the sounding digit's pixels.
# * **Figure 3, separation:** the spectrogram each method recovers for each source of a two-digit mixture.

# %%
figures = [("04_localization", "figure1_localization", "Figure 1 · sound source localization", True),
           ("04_localization", "figure1_zero_shot", "Figure 1 · the comparison methods' own maps (zero-shot)", False),
           ("05_segmentation", "figure2_segmentation", "Figure 2 · audio-visual segmentation", True),
           ("06_separation", "figure3_separation", "Figure 3 · sound source separation", True)]
shown = 0
for name, stem, caption, always in figures:       # the zero-shot maps exist after a compare job only
    png = root / name / "figures" / f"{stem}.png"
    if png.exists():
        display(Markdown(f"**{caption}** (`{png.relative_to(root)}`)"), Image(filename=str(png)))
        shown += 1
    elif always:
        print(f"{caption}: not available ({name} has not saved {png.name})")

# %% [markdown]
# ## Results
#
# The report's own record: what it found, and the two gaps on each task's main metric, under
# `delta/deepavfusion-unimodal/<task>` and `delta/deepavfusion-scratch/<task>` (a seeds job aggregates them
# like any other result).

# %%
deltas = {f"delta/{a}-{b}/{t}": v for a, b in DELTAS if delta_label(a, b) in main_table
          for (t, _), v in main_table[delta_label(a, b)].dropna().items()}
record = {"report/notebooks_with_metrics": len(metrics), "report/notebooks_missing": ", ".join(missing) or "none",
          "report/comparison_rows": len(rows), "report/figures_shown": shown, **deltas}
nb.record(record, paths.out_dir, cfg=cfg)

# %% [markdown]
# ## Summary
#
# * The headline table answers the paper's main question on this data: does audio-visual masked
#   pre-training of an early-fusion encoder improve a downstream task over its unimodal starting point
#   (DeepAVFusion − unimodal), and over a random encoder (DeepAVFusion − scratch)? Section 2 states both
#   gaps as this run measured them. A dense task that stayed at its trivial baseline from every
#   initialization (notebooks 04-06 say so) gives a gap that says nothing yet. The `paper` profile is where
#   the full claim is tested.
# * The ablations show which parts of the fusion design carry that gain. Read them with notebook 01's
#   identity in mind: "dense" pair attention is exactly two cross-attentions.
# * Everything here was read from files. `reports/<profile>/summary.md` (written by the runner) has
#   the same comparisons plus every notebook's full metrics and figures.
#
# ## Exercises
#
# 1. Compare the cpu and smoke reports (`reports_dir="reports/smoke"` vs `"reports/cpu"`). Which deltas
#    keep their sign? Which of the two gaps is larger, DeepAVFusion − unimodal or unimodal − scratch?
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
