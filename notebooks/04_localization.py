# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
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
# # 04 · Sound source localization: which part of the frame is making the sound?
#
# **Paper:** Mo & Morgado, *Unveiling the Power of Audio-Visual Early Fusion Transformers with Dense
# Interactions through Masked Modeling*, CVPR 2024 (arXiv:2312.01017), supplement **A.2** (protocol) and
# **Figure 1** (qualitative maps). Metric definitions: [docs/metrics.md](../docs/metrics.md#localization).
# How the official code handles this task: [docs/official_implementation.md §3.4](../docs/official_implementation.md#34-localization).
#
# **What you will learn**
# 1. How a localization map is read directly off the encoder: the cosine similarity between the *global*
#    audio representation and each *local* visual token.
# 2. How the supplement's supervised transfer protocol trains it (per-pixel BCE, Adam).
# 3. What **cIoU**, **AUC** and **cIoU mean** measure. The median threshold caps cIoU at twice the object's
#    area, which means that on AV-Digits only a perfect map can pass the 0.5 test.
# 4. What each stage of pre-training buys, at the same budget: a random encoder (`scratch`), the unimodal
#    MAEs (`unimodal`: the ViTs that DeepAVFusion's audio-visual stage starts from, with a fresh fusion
#    stream) and DeepAVFusion (`deepavfusion`). The paper's claim is the gap **DeepAVFusion − unimodal**:
#    what audio-visual early fusion adds to its unimodal starting point. In numbers and in a Figure 1 style
#    comparison, with the supplement's comparison methods when `methods` names them.
#
# **Expected runtime** (2-core laptop CPU): one localization training per initialization (three, plus one
# per comparison method in `methods`, with its zero-shot read-out) and a frozen-token probe per
# initialization. `smoke` takes seconds per run; the runner's `summary.md` lists the wall time of every
# notebook at every profile. `paper` needs GPUs and the Flickr-SoundNet / VGG-SS data.
#
# **Inputs:** `pretrain_ckpt` and `unimodal_ckpt`, the checkpoints handed over by `02_pretraining` (at
# profiles with a model zoo, the zoo's `deepavfusion` and `unimodal` entries). Left empty, the zoo's entries
# are used, or at a profile without a zoo (`paper`) DeepAVFusion is pre-trained here first (cached in
# `run_dir`) and the unimodal row is left out unless `unimodal_ckpt` is given. `methods` adds comparison
# methods from the zoo (docs/baselines.md).

# %%
from avlib import nb

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | cpu | paper (see avlib.config.PROFILES)
seed: int = 0  # seeds python, numpy and torch (also the config seed)
device: str = "auto"  # auto | cpu | cuda | mps
out_dir: str = ""  # metrics.json and figures; empty means reports/<profile>/04_localization/
run_dir: str = ""  # checkpoints and histories; empty means runs/<profile>/04_localization/
pretrain_ckpt: str = ""  # DeepAVFusion checkpoint from 02 (or an official one); empty: the zoo's, or pre-train here
unimodal_ckpt: str = ""  # the unimodal MAEs' checkpoint from 02; empty: the zoo's (no unimodal row without a zoo)
methods: list = []  # comparison methods (zoo entries), e.g. ["ezvsl", "slavc"]; the main job runs none
recipe: str = "supplement"  # supplement (seed supplement A.2) | official (the released code's recipes)
explorers: bool = True  # show the ipywidgets explorers (papermill may hang on them, so the runner passes False)
overrides: dict = {}  # config overrides, e.g. {"localization.train.epochs": 10}
num_examples: int = 6  # Figure 1 shows the first test scenes, this many

# %%
import math

import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import display

from avlib import baselines, budgets, heads, metrics, tasks, viz, widgets, zoo
from avlib.config import apply_overrides, make_config
from avlib.data import make_loaders
from avlib.reproduce import ordered_inits

device = nb.setup(seed, device)
cfg = make_config(profile, recipe=recipe, overrides=nb.parse_overrides(overrides), seed=seed)
paths = nb.paths_for("04_localization", profile, out_dir, run_dir)
cfg.localization, cfg.model.image_grid

# %% [markdown]
# The initializations, as `tasks.compare_inits` runs them (`{name: (init, checkpoint, config overrides)}`,
# from `zoo.compared_inits`): `scratch` is a random encoder; `unimodal` loads only the two modality ViTs of
# the unimodal checkpoint (`init="warm_start"`, a fresh fusion stream, exactly as the audio-visual stage
# starts); `deepavfusion` loads the whole encoder; a comparison method loads its whole two-stream encoder
# (late fusion, its config overrides). Checkpoints from 02 are used as given; the zoo's files are verified
# against their sha256, and an entry missing from the zoo is pre-trained here (seconds at `smoke`).

# %%
inits = zoo.compared_inits(profile, pretrain_ckpt=pretrain_ckpt, unimodal_ckpt=unimodal_ckpt,
                           names=("scratch", "unimodal", "deepavfusion", *methods), run_dir=paths.run_dir,
                           cfg=cfg, device=device)
pd.DataFrame([{"initialization": name, "init": init, "checkpoint": str(ckpt or "–"), "config overrides": arch or ""}
              for name, (init, ckpt, arch) in inits.items()]).set_index("initialization")

# %% [markdown]
# ## 1. A localization map is a similarity map
#
# DeepAVFusion has no dedicated localization module. Supplement A.2 defines the prediction map $\hat y$ as
# "the cosine similarity between the global audio representation and the local visual representations":
#
# $$\hat y_{ij} = \cos\big(\bar a,\; v_{ij}\big), \qquad \bar a = \tfrac{1}{N_a}\textstyle\sum_n a_n,$$
#
# where $a_n$ are the encoder's audio tokens (after its final norm) and $v_{ij}$ is the visual token of
# patch $(i, j)$. The map lives on the patch grid (`cfg.model.image_grid`), so it is coarse: 2×2 at
# `smoke`, 4×4 at `cpu`, 14×14 at `paper`. Both streams come out of the *fused* encoder, so every visual
# token has already exchanged information with the audio through the fusion tokens (notebook 01).
#
# `AVLocalizer` adds only two scalars: logits $= s\cdot\hat y + b$, upsampled to the image size. The official
# repository has no localization code ([§3.4](../docs/official_implementation.md#34-localization)), so this head is the kit's reading of A.2; its
# docstring explains the initial values of $s$ and $b$.

# %%
nb.show_source(heads.AVLocalizer._similarity)

# %% [markdown]
# ## 2. Training: per-pixel BCE to the ground-truth map
#
# The *full* model (encoder and the two scalars) is trained to minimize the average per-pixel binary cross
# entropy between $\sigma(s\hat y + b)$ and the ground-truth map $y$ (supplement A.2: Adam, lr $10^{-4}$, 30
# epochs, batch 128 on Flickr-SoundNet; the small profiles keep Adam but train a few epochs at lr $10^{-3}$
# with a warm-up and a cosine decay, chosen on the validation split: see `config.py` and
# [docs/pretraining.md](../docs/pretraining.md#downstream-budgets-chosen-on-validation)). On AV-Digits, `loc_map` is 1 on the grid cell whose digit is speaking.
#
# The same protocol runs once per initialization (`tasks.compare_inits`), with the same recipe and budget.
# Finished runs are cached in `run_dir/<initialization>/`, so re-running the cell is free. Delete that
# folder after you change a checkpoint, because a finished run is not retrained.

# %%
runs = tasks.compare_inits("localization", cfg, paths.run_dir, inits, device=device)
{name: r.metrics for name, r in runs.items()}

# %% [markdown]
# The learning curves of every run. Left: the training loss, with the loss of the best *constant*
# prediction dashed (the fraction of sounding pixels, predicted everywhere). A model that stays on that line
# has learned *how much* of the image sounds but not *where*. Right: the test metric at each evaluation of
# the run (`localization.train.eval_every` epochs apart; the small profiles evaluate once, at the end), with
# its trivial value dashed. On AV-Digits that metric is the cell accuracy (section 3), whose trivial value
# is chance, one cell in four; on a benchmark it is the AUC, whose floor (a random map's) section 3 measures.

# %%
test_batch = next(iter(make_loaders(cfg, "localization")[1]))      # the first test scenes
fg = test_batch["loc_map"].mean()                                   # fraction of sounding pixels
constant = F.binary_cross_entropy(fg, fg).item()                    # the entropy of the prior
avdigits = "cell_acc" in runs["deepavfusion"].metrics               # per-cell scoring: AV-Digits scenes
curve_key = "cell_acc" if avdigits else "auc"                       # benchmarks: the AUC (its floor: section 3)
fig = viz.plot_history({name: r.history for name, r in runs.items()}, keys=["loss", curve_key],
                       title="localization: learning curves",
                       references={"loss": {"constant prediction": constant},
                                   **({"cell_acc": {"chance": 1 / cfg.data.grid ** 2}} if avdigits else {})})
nb.save_fig(fig, paths.out_dir, "learning_curves")
fig

# %% [markdown]
# ## 3. The metrics: cIoU, AUC, cIoU mean
#
# The kit follows the Senocak/LVS protocol as implemented by EZ-VSL (`avlib.metrics.ciou_per_sample`). For
# each test image:
#
# 1. upsample the similarity map to the image size and min-max normalize it to $[0, 1]$;
# 2. **binarize at the image's own median**: $B = [\hat y \ge \text{median}]$, so at least half the image is
#    always predicted "sounding";
# 3. with a (possibly soft) ground truth $G$,
#    $$\text{cIoU} = \frac{\sum B\,G}{\sum G + \sum B\,[G = 0]}.$$
#    The soft $G$ weights the intersection. On Flickr-SoundNet a pixel inside one annotator's box counts 0.5
#    and a pixel inside the boxes of two or more annotators counts 1 (the "consensus"). The "union" is the GT
#    mass plus the false positives on background.
#
# What the tables report:
#
# - **cIoU** = the *success rate*: the fraction of test images with cIoU ≥ 0.5 (`ciou`, EZ-VSL's
#   `finalize_AP50`). It is not a mean, even though tables write "cIoU".
# - **AUC** = the area under the success-rate curve $t \mapsto \text{mean}(\text{cIoU}_i \ge t)$ over the 21
#   thresholds $t = 0, 0.05, \dots, 1$ (trapezoid rule).
# - **cIoU mean** = the plain average (`ciou_mean`). It is printed by the reference code but rarely reported.
# - **cell accuracy** (`cell_acc`, a kit diagnostic for AV-Digits, not a benchmark metric): the fraction of
#   scenes whose highest-scoring grid cell (mean map value over the cell, `metrics.cell_hits`) is the
#   sounding one. Chance is 1/4. It asks only *which object sounds*, which the cIoU below cannot always tell.
#
# **Why the median threshold favours large objects.** $B$ covers at least half of the image. If the object
# takes a fraction $a < \tfrac12$ of the image, the best possible $B$ contains the whole object plus
# $\tfrac12 - a$ of background. Then
# $\text{cIoU} \le a / (a + \tfrac12 - a) = 2a$. A small object can never reach 0.5, while an object that
# fills half the frame can reach 1. On AV-Digits (2×2 grid) the sounding cell is exactly a quarter of the
# image, so **the maximum cIoU is exactly 0.5**. An image passes the cIoU ≥ 0.5 test only when the top half
# of its map contains the *entire* cell. The AUC can then be at most about 0.5 + 0.025.
#
# The floor is a *random* map. Its top half is a random half of the image, which holds half of the object on
# average, so its cIoU is about $\frac{a/2}{a + (1-a)/2} = \frac{a}{1+a}$, i.e. 0.2 for a quarter-image cell.
#
# The cell below scores three reference maps on the first test scenes:
#
# - `oracle`: the ground truth plus a tiny ramp so that the median splits the pixels cleanly. This is the
#   ceiling;
# - `binary_gt`: the binary ground truth itself, which shows a second trap. Three quarters of its pixels are 0, so the
#   median is 0, every pixel passes $\ge$, $B$ covers the whole image and the "perfect" map scores only
#   $a = 0.25$;
# - `random_map`: uniform noise, the floor.

# %%
gt = test_batch["loc_map"]                                          # (B, H, W), 1 on the sounding cell
ramp = torch.linspace(0, 1e-3, gt[0].numel()).reshape(gt.shape[1:])   # breaks ties, keeps the ranking
noise = torch.rand(gt.shape, generator=torch.Generator().manual_seed(seed))
reference_maps = {"oracle": gt + ramp, "binary_gt": gt, "random_map": noise}
bounds = {name: metrics.localization_metrics(metrics.ciou_batch(m, gt)) for name, m in reference_maps.items()}
for name, m in reference_maps.items():                             # AV-Digits: is the brightest cell the sounding one?
    if "sounding" in test_batch:
        bounds[name]["cell_acc"] = metrics.cell_hits(m, test_batch["sounding"], cfg.data.grid).float().mean().item()
pd.DataFrame(bounds).T.round(3)

# %% [markdown]
# ## 4. Three initializations
#
# The test-set numbers of every encoder after the same training, between the oracle's ceiling (dashed) and
# the random map's floor (dotted). A `ciou` of 0.8 would mean that four test maps in five rank the *whole*
# sounding cell above their median. Bars on the dotted line mean that the model has not learned where the
# sound is.
#
# Before reading a gap, check that the task left its trivial baseline (the learning curves of section 2):
# on AV-Digits, a cell accuracy clearly above chance. If no initialization leaves it, the profile's training
# budget was too short for this task, whatever the initialization, and the bars compare noise. The sentences
# below the chart read this run's numbers and say which case this is. The gap to read first is DeepAVFusion
# − unimodal, the paper's claim; DeepAVFusion − scratch adds what the unimodal stage contributes.

# %%
pairs = [("ciou", "cIoU (success @0.5)"), ("auc", "AUC"), ("ciou_mean", "cIoU mean"), ("cell_acc", "cell accuracy")]
pairs = [(key, label) for key, label in pairs if key in runs["deepavfusion"].metrics]   # cell_acc: AV-Digits only
bars = {label: {name: r.metrics[key] for name, r in runs.items()} for key, label in pairs}
fig = viz.compare_bars(bars, ylabel="score", title="localization from each initialization",
                       references={label: {"oracle": bounds["oracle"][key], "random map": bounds["random_map"][key]}
                                   for key, label in pairs})
nb.save_fig(fig, paths.out_dir, "initializations")
fig

# %%
res = {name: r.metrics for name, r in runs.items()}
loss = {name: r.history.steps[-1]["loss"] for name, r in runs.items()}
# "left the trivial baseline": on AV-Digits a cell accuracy above chance by more than two standard errors of
# a chance guess on the scored scenes; on a benchmark an AUC above the random map's
trivial = 1 / cfg.data.grid ** 2 if avdigits else bounds["random_map"]["auc"]
margin = 2 * math.sqrt(trivial * (1 - trivial) / res["deepavfusion"]["n"]) if avdigits else 0.0
left = [name for name in runs if res[name][curve_key] > trivial + margin]


def listing(values, fmt):
    return ", ".join(f"{viz.method_name(k)} {values[k]:{fmt}}" for k in ordered_inits([values]))


def gap(key, a, b):
    return f"{res[a][key] - res[b][key]:+.3f}" if a in res and b in res else "not measured"


display(nb.narrate("""In this run (`{profile}`) the final training loss is {losses}, against {const:.3f} for the
           constant prediction of the {fg:.0%} prior. The AUC is {aucs}, between the random map's {ar:.3f} and
           the oracle's {ao:.3f}. DeepAVFusion − unimodal (the paper's claim): {du} AUC; DeepAVFusion − scratch:
           {ds}.""", profile=profile, losses=listing(loss, ".3f"), const=constant, fg=fg.item(),
           aucs=listing({k: v["auc"] for k, v in res.items()}, ".3f"), ar=bounds["random_map"]["auc"],
           ao=bounds["oracle"]["auc"], du=gap("auc", "deepavfusion", "unimodal"), ds=gap("auc", "deepavfusion", "scratch")))
nb.narrate("""{what} is {values}, against {trivial_name} {trivial:.3f}. {verdict}""",
           what="The cell accuracy" if avdigits else "The AUC", values=listing({k: v[curve_key] for k, v in res.items()}, ".3f"),
           trivial_name="chance at" if avdigits else "the random map's", trivial=trivial,
           verdict=(nb.narrate("Above it{by}: {names}, so these runs learned where the sound is, and their gaps "
                               "can be read.", names=", ".join(map(viz.method_name, left)),
                               by=nb.narrate(" by more than {m:.3f} (two standard errors of a chance guess on {n} "
                                             "scenes)", m=margin, n=int(res["deepavfusion"]["n"])) if avdigits else "")
                    if left else
                    "**No initialization left the trivial baseline**: at this budget localization is not learned "
                    "from any of them, the bars differ by noise, and this comparison says nothing about "
                    "pre-training yet. The learning curves of section 2 show it. How long each initialization "
                    "needs is measured on the validation split by `python -m avlib.budgets` (curves in "
                    f"`reports/{profile}/budgets/`), and [docs/pretraining.md](../docs/pretraining.md"
                    "#downstream-budgets-chosen-on-validation) explains how the budgets were chosen."))

# %% [markdown]
# The validation curves of `python -m avlib.budgets`, where they have been measured for this profile: the
# same protocol from each initialization, scored on the validation scenes after every epoch of a longer run,
# with the minutes of training on the top axis. They show how long each initialization needs before it
# leaves the trivial baseline.

# %%
budgets.task_figure(profile, "localization")

# %% [markdown]
# ### What the frozen tokens already know
#
# The map is read off two things the encoder must already separate: *which digit is spoken* (the global
# audio token) and *which digit is drawn in each cell* (the cell's visual tokens). If pre-training has put
# digit identity into those tokens, the localizer starts from it. `tasks.token_probe` checks this before
# any localization training: a logistic regression on the **frozen** tokens of 1,500 training scenes,
# scored on 500 test scenes (top-1 %, chance 10 %), for every initialization (fewer scenes at profiles with
# smaller splits).
#
# What to compare. Scratch against the others shows what masked modeling put into the tokens at all.
# Unimodal against DeepAVFusion shows what the audio-visual stage did to them: it starts from the unimodal
# ViTs, so it can keep, improve or wear down what they knew. Knowing the digits is necessary, not
# sufficient: localization also needs the *match* between the spoken digit and one of the four drawn ones,
# which a per-modality probe cannot see. Masked-modeling features are known to be weaker under linear
# probing than after fine-tuning (He et al., CVPR 2022), so read these numbers as a floor.

# %%
probes = {}
if "cell_classes" in test_batch:                    # scenes with per-cell classes (AV-Digits / synthetic)
    probes = {name: tasks.token_probe(apply_overrides(cfg, arch), init=init, checkpoint=ckpt, device=device)
              for name, (init, ckpt, arch) in inits.items()}
    table = pd.DataFrame(probes).T[["audio", "visual_cell"]].round(1)
    display(table.rename(columns={"audio": "spoken digit from the audio token (%)",
                                  "visual_cell": "digit in each cell from its visual tokens (%)"}))
    display(nb.narrate("In this run: the spoken digit from the audio token {audio}; the digit in each cell from "
                       "its visual tokens {cells} (top-1 %).",
                       audio=listing({k: v["audio"] for k, v in probes.items()}, ".1f"),
                       cells=listing({k: v["visual_cell"] for k, v in probes.items()}, ".1f")))

# %% [markdown]
# ## 5. Qualitative comparison (supplement Figure 1)
#
# Figure 1 of the supplement compares DeepAVFusion's maps with SLAVC's and Mix-and-Localize's. Here the rows
# are the first `num_examples` test scenes, always the same ones, and the columns are the image, the ground
# truth, then one map per model: the three initializations, or, when `methods` names comparison methods,
# DeepAVFusion and each method, as the supplement draws them. Every map comes from the same protocol (the
# localizer trained in section 2 on that model's encoder). Each overlay is the predicted sounding
# probability, min-max scaled per image, and the green outline is the ground truth, the speaking digit's
# cell (the same outline marks the ground truth in every figure of notebooks 00-05). Good maps light up the
# outlined cell and nothing else. A map from a run that did not leave the trivial baseline is noise: each
# map is min-max scaled for display, so tiny differences fill the whole colour range and noise looks
# confident (the range of the raw values is printed above each map).

# %%
shown = [n for n in (["deepavfusion", *methods] if methods else ["scratch", "unimodal", "deepavfusion"]) if n in runs]
examples = {name: tasks.predict_examples("localization", runs[name].model, cfg, n=num_examples, device=device)
            for name in shown}
first = examples[shown[0]]                       # the same scenes in every column
labels = first.get("label")                      # the sounding digit (AV-Digits; benchmarks have none)
titles = None if labels is None else [f"digit {int(d)} speaks" for d in labels]
fig = viz.localization_figure(first["image"], {viz.method_name(n): examples[n]["pred"] for n in shown},
                              first["gt"], titles=titles)
nb.save_fig(fig, paths.out_dir, "figure1_localization")
fig

# %% [markdown]
# Listen to each row: what every column had to find in the picture.

# %%
if "waveform" in first:                          # AV-Digits scenes carry their sound; benchmark items do not
    for i, w in enumerate(first["waveform"]):
        print(f"row {i + 1}" + (f": {titles[i]}" if titles else ""))
        display(nb.audio_player(w, cfg.data.sample_rate))

# %% [markdown]
# ### The comparison methods' own maps (zero-shot)
#
# Each comparison method was pre-trained to localize (or to separate) with its own objective, so it has a
# map of its own before any localization training: its zero-shot read-out (docs/baselines.md). One rule for
# every method: the method's own test-time inference with the trained weights, on the kit's inputs, with no
# prior, blending or calibration added. `baselines.zero_shot_localization` scores it on the whole test split
# exactly as a trained localizer is scored (min-max per image, median threshold). CCoL has no localization
# map (it scores objects, not locations). This runs only when `methods` names comparison methods.

# %%
zero_shot, zero_shot_maps = {}, {}
scenes = next(iter(make_loaders(cfg, "localization", batch_size=num_examples, test_size=num_examples)[1]))
for name in baselines.with_readout(methods, "localization_map"):
    objective, model, _ = baselines.load_objective_model(inits[name][1], device=device)
    zero_shot[name] = baselines.zero_shot_localization(objective, model, make_loaders(cfg, "localization")[1], cfg,
                                                       device=device)
    with torch.no_grad(), baselines.common.eval_mode(model):
        zero_shot_maps[name] = objective.localization_map(model, scenes["image"].to(device),
                                                          scenes["audio"].to(device)).float().cpu()
if zero_shot:
    keys = [k for k, _ in pairs]
    display(pd.DataFrame({f"{viz.method_name(n)}, {when}": {k: m[k] for k in keys}
                          for n in zero_shot for when, m in (("zero-shot", zero_shot[n]), ("trained", res[n]))}).T.round(3))
    display(nb.narrate("Zero-shot AUC: {zs}; after localization training: {trained} (DeepAVFusion {d:.3f}).",
                       zs=listing({n: m["auc"] for n, m in zero_shot.items()}, ".3f"),
                       trained=listing({n: res[n]["auc"] for n in zero_shot}, ".3f"), d=res["deepavfusion"]["auc"]))
    fig = viz.localization_figure(scenes["image"], {f"{viz.method_name(n)} (zero-shot)": m for n, m in zero_shot_maps.items()},
                                  scenes["loc_map"], titles=titles, value_name="score")
    nb.save_fig(fig, paths.out_dir, "figure1_zero_shot")
    display(fig)
else:
    print("no comparison method with a localization read-out in `methods`: nothing to score zero-shot")

# %% [markdown]
# ### Explore
#
# Browse the samples and move the threshold to see which pixels an absolute threshold would keep (the
# metric itself uses each image's median). The explorer needs JupyterLab with ipywidgets. Batch runs pass
# `explorers=False`, because papermill can hang on widget output; executed copies then show a static
# gallery of the same views (the first samples of each method at threshold 0.5).

# %%
preds = {viz.method_name(n): examples[n]["pred"] for n in shown}
# the runner passes explorers=False: a static gallery of the same views
widgets.overlay_explorer(first["image"], preds, first["gt"], static=not explorers)

# %% [markdown]
# ## 6. Results
#
# Every metric of every initialization under `localization/<initialization>/<metric>` (`scratch`,
# `unimodal`, `deepavfusion`, and each comparison method). The runner and notebook 08 build their tables
# from these. `localization_bounds/<map>/*` are the reference maps of section 3 (`oracle`, `binary_gt`,
# `random_map`) on the first test scenes. `localization_token_probe/<initialization>/*` are the
# frozen-token read-outs of section 4 (scenes with per-cell classes only), and
# `localization_zero_shot/<method>/*` the comparison methods' zero-shot scores (only with `methods`).

# %%
results = {"localization": {name: r.metrics for name, r in runs.items()},
           "localization_bounds": {name: {k: v for k, v in b.items() if k != "n"} for name, b in bounds.items()},
           "localization_token_probe": probes,
           "localization_zero_shot": zero_shot,
           "seconds": {f"localization_{name}": r.seconds for name, r in runs.items()}}
nb.record(results, paths.out_dir, cfg=cfg, pretrain_ckpt=str(inits["deepavfusion"][1]),
          unimodal_ckpt=str(inits["unimodal"][1]) if "unimodal" in inits else "")

# %% [markdown]
# ## Summary
#
# - A localization map costs nothing extra: it is the cosine similarity between the mean audio token and
#   each visual token of the fused encoder. Training adds only a scale and a bias, plus fine-tuning of the
#   encoder with per-pixel BCE.
# - "cIoU" in papers is a success rate at 0.5 with a per-image *median* threshold. It is capped at twice the
#   object's area, so it rewards large objects and, on AV-Digits, counts only maps whose top half contains
#   the whole cell. Always read it next to AUC and the mean cIoU.
# - Read the initializations between the floor (random map) and the ceiling (oracle), and only after
#   checking that training left the constant-prediction line and the cell accuracy left chance. With a short
#   budget no encoder learns *where* the sound is. The bars then sit on the floor, Figure 1's maps are
#   noise, and the comparison says nothing about pre-training (exercise 1, `python -m avlib.budgets`).
# - The gap to read is DeepAVFusion − unimodal: what audio-visual pre-training adds to its unimodal start
#   (the paper's claim). Report it as measured, whichever way it goes.
#
# ## Exercises
#
# 1. Train longer and faster (`overrides={"localization.train.epochs": 30, "localization.train.lr": 1e-3,
#    "localization.train.eval_every": 5}`, a new `run_dir`). When do the runs leave the constant-prediction
#    line, and which initialization leaves it first? `python -m avlib.budgets --profile cpu --tasks
#    localization` draws the same curves on the validation split. Then pre-train on a mixed corpus where
#    half the scenes show the sounding digit alone (`{"data.pretrain_distractors": 0,
#    "data.pretrain_distractors_p": 0.5}`, a curated-corpus analog; `avlib/config.py` records what it did
#    to localization and to classification) and repeat.
# 2. Freeze the encoder (`{"localization.train.freeze_encoder": True}`): how much of the localization
#    ability is already in the pre-trained features, with only $s$ and $b$ trained?
# 3. Make the objects smaller with `{"data.grid": 3}` (each cell is a ninth of the image). Predict the cIoU
#    ceiling from the $2a$ bound before you run it, then check it with the oracle cell.
# 4. Add scenes where two digits speak (`{"data.p_two_sources": 0.5}`). What happens to the ceiling when
#    $a = 0.5$?
# 5. Show only one distractor (`{"data.distractors": 1}`: two digits, two empty cells) and re-run from
#    pre-training. The cIoU and AUC rise at once, yet the cell accuracy among the two digits stays near 1/2.
#    Why can a map that lights up *both* digits reach cIoU 0.5 here (section 3's $2a$ bound)? (Ours, 4
#    epochs at lr 1e-3, before the staged recipe: the pre-trained encoder ahead of scratch in AUC and cIoU,
#    and a cell accuracy near 1/2 for both: both found the digits, neither found which one speaks.)
# 6. `metrics.ciou_per_sample` also accepts an absolute `threshold=0.5` (SLAVC without
#    `--relative_prediction`). Score the examples with it: which convention ranks the encoders differently?
#
# ## References
#
# - Mo & Morgado, CVPR 2024, supplement A.2 and Figure 1 ([docs/protocols.md](../docs/protocols.md#a2-localization-and-segmentation)).
# - Senocak et al., *Learning to Localize Sound Source in Visual Scenes*, CVPR 2018 (cIoU, Flickr-SoundNet).
# - Mo & Morgado, *Localizing Visual Sounds the Easy Way* (EZ-VSL), ECCV 2022, and *A Closer Look at
#   Weakly-Supervised Audio-Visual Source Localization* (SLAVC), NeurIPS 2022: the evaluation code followed
#   here ([docs/metrics.md](../docs/metrics.md#ciou)).
# - `avlib.heads.AVLocalizer`, `avlib.metrics.ciou_per_sample`, `avlib.metrics.localization_metrics`.
