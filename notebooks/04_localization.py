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
# 2. How the supplement's supervised transfer protocol trains it (per-pixel BCE, Adam, lr 1e-4).
# 3. What **cIoU**, **AUC** and **cIoU mean** measure. The median threshold caps cIoU at twice the object's
#    area, which means that on AV-Digits only a perfect map can pass the 0.5 test.
# 4. Whether masked audio-visual pre-training (notebook 02) helps compared with a randomly initialized
#    encoder, in numbers and in a Figure 1 style comparison.
#
# **Expected runtime** (2-core laptop CPU): `smoke` under 1 min · `cpu` about 1.5 min (two trainings of
# 3 epochs on 3,000 scenes) · `paper` needs GPUs and the Flickr-SoundNet / VGG-SS data.
#
# **Inputs:** `pretrain_ckpt`, the checkpoint written by `02_pretraining` (or an official DeepAVFusion
# checkpoint of the same size). Leave it empty to pre-train here first; the result is cached in `run_dir`.

# %%
from avlib import nb

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | cpu | paper (see avlib.config.PROFILES)
seed: int = 0  # seeds python, numpy and torch (also the config seed)
device: str = "auto"  # auto | cpu | cuda | mps
out_dir: str = ""  # metrics.json and figures; empty means reports/<profile>/04_localization/
run_dir: str = ""  # checkpoints and histories; empty means runs/<profile>/04_localization/
pretrain_ckpt: str = ""  # avmae.pt from 02 (ours or an official one); empty means pre-train here first
recipe: str = "supplement"  # supplement (seed supplement A.2) | official (the released code's recipes)
explorers: bool = True  # show the ipywidgets explorers (papermill may hang on them, so the runner passes False)
overrides: dict = {}  # config overrides, e.g. {"localization.train.epochs": 10}

# %%
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import display

from avlib import heads, metrics, tasks, viz, widgets
from avlib.config import make_config
from avlib.data import make_loaders

device = nb.setup(seed, device)
cfg = make_config(profile, recipe=recipe, overrides=nb.parse_overrides(overrides), seed=seed)
paths = nb.paths_for("04_localization", profile, out_dir, run_dir)
cfg.localization, cfg.model.image_grid

# %% [markdown]
# The checkpoint comes from 02. When you run this notebook on its own with `pretrain_ckpt` empty, it is
# pre-trained here with the same profile; `tasks.pretrain` resumes from `run_dir/pretrain`, so this is
# paid only once.

# %%
ckpt = pretrain_ckpt or tasks.pretrain(cfg, paths.run_dir / "pretrain", device=device).checkpoint
ckpt

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
# epochs, batch 128 on Flickr-SoundNet; the small profiles keep Adam and lr $10^{-4}$ but train fewer
# epochs, 3 at `cpu`, see `config.py`). On AV-Digits, `loc_map` is 1 on the grid cell whose digit is speaking.
#
# The same protocol is run twice (`tasks.compare_inits`): once from the pre-trained encoder and once from
# a random one (`scratch`). Finished runs are cached in `run_dir/<init>/`, so re-running the cell is free.
# Delete that folder after you change `pretrain_ckpt`, because a finished run is not retrained.

# %%
runs = tasks.compare_inits("localization", cfg, paths.run_dir, checkpoint=ckpt, device=device)
{init: r.metrics for init, r in runs.items()}

# %% [markdown]
# The training loss of both runs. The dashed line is the loss of the best *constant* prediction: the fraction
# of sounding pixels, predicted everywhere. A model that stays on that line has learned *how much* of the
# image sounds but not *where*.

# %%
test_batch = next(iter(make_loaders(cfg, "localization")[1]))      # the first test scenes
fg = test_batch["loc_map"].mean()                                   # fraction of sounding pixels
constant = F.binary_cross_entropy(fg, fg).item()                    # the entropy of the prior
fig = viz.plot_history({init: r.history for init, r in runs.items()}, keys=["loss"],
                       title="localization: per-pixel BCE while training", references={"constant prediction": constant})
nb.save_fig(fig, paths.out_dir, "training_loss")
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
# ## 4. Pretrained vs scratch
#
# The test-set numbers of both encoders after the same training, between the oracle's ceiling (dashed) and
# the random map's floor (dotted). A `ciou` of 0.8 would mean that four test maps in five rank the *whole*
# sounding cell above their median. Bars on the dotted line mean that the model has not learned where the
# sound is. Check the loss curves above: if both runs sit on the constant-prediction line, the profile's
# training budget was too short for this task, whatever the initialization. That is what happens at `cpu`:
# neither init learns the audio-visual match, the loss stays at the entropy of the prior, the AUC sits
# next to the random map's, far below the oracle's, and the cell accuracy is chance. The sentence below the
# chart reads this run's numbers.

# %%
pairs = [("ciou", "cIoU (success @0.5)"), ("auc", "AUC"), ("ciou_mean", "cIoU mean"), ("cell_acc", "cell accuracy")]
pairs = [(key, label) for key, label in pairs if key in runs["pretrained"].metrics]   # cell_acc: AV-Digits only
bars = {label: {init: r.metrics[key] for init, r in runs.items()} for key, label in pairs}
fig = viz.compare_bars(bars, ylabel="score", title="localization: pretrained vs scratch",
                       references={label: {"oracle": bounds["oracle"][key], "random map": bounds["random_map"][key]}
                                   for key, label in pairs})
nb.save_fig(fig, paths.out_dir, "pretrained_vs_scratch")
fig

# %%
res = {init: r.metrics for init, r in runs.items()}
loss = {init: r.history.steps[-1]["loss"] for init, r in runs.items()}
cells = ("" if "cell_acc" not in res["pretrained"] else
         nb.narrate("; the cell accuracy is {p:.2f} vs {s:.2f}, with chance at {c:.2f}", p=res["pretrained"]["cell_acc"],
                    s=res["scratch"]["cell_acc"], c=1 / cfg.data.grid ** 2))
nb.narrate("""In this run (`{profile}`) the final training loss is {lp:.3f} (pretrained) and {ls:.3f} (scratch),
           against {const:.3f} for the constant prediction of the {fg:.0%} prior. The AUC is {ap:.3f} vs
           {as_:.3f}, between the random map's {ar:.3f} and the oracle's {ao:.3f}{cells}.""",
           profile=profile, lp=loss["pretrained"], ls=loss["scratch"], const=constant, fg=fg.item(),
           ap=res["pretrained"]["auc"], as_=res["scratch"]["auc"], ar=bounds["random_map"]["auc"],
           ao=bounds["oracle"]["auc"], cells=cells)

# %% [markdown]
# ### What the frozen tokens already know
#
# The map is read off two things the encoder must already separate: *which digit is spoken* (the global
# audio token) and *which digit is drawn in each cell* (the cell's visual tokens). If pre-training had put
# digit identity into those tokens, the localizer would start from it. `tasks.token_probe` checks this
# before any localization training: a logistic regression on the **frozen** tokens of 1,500 training scenes,
# scored on 500 test scenes (top-1 %, chance 10 %), for the pre-trained and the random encoder.
#
# At `cpu` the two are level (this run's numbers are below the table), and 30 epochs of pre-training
# instead of 10 do not change that, although the audio reconstruction loss halves. The probe does see
# knowledge when it is there: the encoder of 03's fine-tuned classifier reads about twenty points more on
# audio (its cells stay where they were: classifying the spoken digit never asked it to read the glyphs,
# which is why localization does not start faster from it either). Masked modeling at this scale does not make the
# audio and visual tokens more *linearly* informative than random ones (03's small linear-probe gain sits
# in the fusion tokens, which the map does not read). This is the MAE paper's own observation (He et al.,
# CVPR 2022: masked-modeling features are far weaker under linear probing than after fine-tuning).
# Pre-training pays off here as an initialization for fine-tuning, which is what classification shows in 03.
# The dense heads read the tokens directly and start from the same point with either init.

# %%
probes = {}
if "cell_classes" in test_batch:                    # scenes with per-cell classes (AV-Digits / synthetic)
    probes = {init: tasks.token_probe(cfg, init=init, checkpoint=ckpt, device=device) for init in runs}
    table = pd.DataFrame(probes).T[["audio", "visual_cell"]].round(1)
    display(table.rename(columns={"audio": "spoken digit from the audio token (%)",
                                  "visual_cell": "digit in each cell from its visual tokens (%)"}))
    display(nb.narrate("In this run: audio {ap:.1f} vs {as_:.1f} %, cells {vp:.1f} vs {vs:.1f} % (pretrained vs "
                       "scratch).", ap=probes["pretrained"]["audio"], as_=probes["scratch"]["audio"],
                       vp=probes["pretrained"]["visual_cell"], vs=probes["scratch"]["visual_cell"]))

# %% [markdown]
# ## 5. Qualitative comparison (supplement Figure 1)
#
# Figure 1 of the supplement compares DeepAVFusion's maps with SLAVC and Mix-and-Localize. Here we compare the
# same encoder with and without pre-training on the first test scenes. Each overlay is the predicted sounding
# probability, min-max scaled per image, and the green outline is the ground truth, the speaking digit's
# cell (the same outline marks the ground truth in every figure of notebooks 00-05). Good maps light up
# the outlined cell and nothing else.
# At the `cpu` profile the maps are noise at floor level: each map is min-max scaled for display, so tiny
# differences around the constant prediction fill the whole colour range and noise looks confident.

# %%
examples = {init: tasks.predict_examples("localization", r.model, cfg, n=6, device=device)
            for init, r in runs.items()}
labels = examples["pretrained"].get("label")     # the sounding digit (AV-Digits; benchmarks have none)
titles = None if labels is None else [f"digit {int(d)} speaks" for d in labels]
fig = viz.localization_figure(examples["pretrained"]["image"],
                              {"scratch": examples["scratch"]["pred"],
                               "DeepAVFusion (pretrained)": examples["pretrained"]["pred"]},
                              examples["pretrained"]["gt"], titles=titles)
nb.save_fig(fig, paths.out_dir, "figure1_localization")
fig

# %% [markdown]
# ### Explore
#
# Browse the samples and move the threshold to see which pixels an absolute threshold would keep (the
# metric itself uses each image's median). The explorer needs JupyterLab with ipywidgets. Batch runs pass
# `explorers=False`, because papermill can hang on widget output; executed copies then show a static
# gallery of the same views (the first samples of each method at threshold 0.5).

# %%
preds = {"DeepAVFusion (pretrained)": examples["pretrained"]["pred"], "scratch": examples["scratch"]["pred"]}
# the runner passes explorers=False: a static gallery of the same views
widgets.overlay_explorer(examples["pretrained"]["image"], preds, examples["pretrained"]["gt"], static=not explorers)

# %% [markdown]
# ## 6. Results
#
# Every metric of both initializations, under the `localization/<init>/<metric>` keys. The runner builds
# its pretrained-vs-scratch table from these. `localization_bounds/<map>/*` are the reference maps of
# section 3 (`oracle`, `binary_gt`, `random_map`) on the first test scenes.
# `localization_token_probe/<init>/*` are the frozen-token read-outs of section 4 (scenes with per-cell
# classes only).

# %%
results = {"localization": {init: r.metrics for init, r in runs.items()},
           "localization_bounds": {name: {k: v for k, v in b.items() if k != "n"} for name, b in bounds.items()},
           "localization_token_probe": probes,
           "seconds": {f"localization_{init}": r.seconds for init, r in runs.items()}}
nb.record(results, paths.out_dir, cfg=cfg, pretrain_ckpt=str(ckpt))

# %% [markdown]
# ## Summary
#
# - A localization map costs nothing extra: it is the cosine similarity between the mean audio token and
#   each visual token of the fused encoder. Training adds only a scale and a bias, plus fine-tuning of the
#   encoder with per-pixel BCE.
# - "cIoU" in papers is a success rate at 0.5 with a per-image *median* threshold. It is capped at twice the
#   object's area, so it rewards large objects and, on AV-Digits, counts only maps whose top half contains
#   the whole cell. Always read it next to AUC and the mean cIoU.
# - Read pretrained vs scratch between the floor (random map) and the ceiling (oracle), and only after checking
#   that training left the constant-prediction line and the cell accuracy left chance. With a short budget
#   neither encoder learns *where* the sound is. Both bars then sit on the floor, Figure 1's maps are noise, and the comparison says nothing
#   about pre-training (exercise 1).
#
# ## Exercises
#
# 1. Train longer and faster (`overrides={"localization.train.epochs": 30, "localization.train.lr": 1e-3,
#    "localization.train.eval_every": 5}`, a new `run_dir`; about 5 min per init). When do the two runs leave
#    the constant-prediction line, and which one leaves it first? (Our run: both after ~15-20 epochs, and
#    at epoch 30 the two are level in AUC and in cell accuracy, both far above chance: the match is
#    learned, from either init at about the same speed.) Then pre-train in 02 on a mixed corpus where half
#    the scenes show the sounding digit alone (`{"data.pretrain_distractors": 0,
#    "data.pretrain_distractors_p": 0.5}`, a curated-corpus analog) and repeat. (Ours: a higher AUC and
#    cell accuracy than either, ahead of scratch from epoch 10 on; but fine-tuning classification from it
#    gains less than from the default checkpoint, about six points less over 3 seeds, barely above scratch.)
# 2. Freeze the encoder (`{"localization.train.freeze_encoder": True}`): how much of the localization
#    ability is already in the pre-trained features, with only $s$ and $b$ trained?
# 3. Make the objects smaller with `{"data.grid": 3}` (each cell is a ninth of the image). Predict the cIoU
#    ceiling from the $2a$ bound before you run it, then check it with the oracle cell.
# 4. Add scenes where two digits speak (`{"data.p_two_sources": 0.5}`). What happens to the ceiling when
#    $a = 0.5$?
# 5. Show only one distractor (`{"data.distractors": 1}`: two digits, two empty cells) and re-run from
#    pre-training. The cIoU and AUC rise at once, yet the cell accuracy among the two digits stays near 1/2.
#    Why can a map that lights up *both* digits reach cIoU 0.5 here (section 3's $2a$ bound)? (Ours, 4
#    epochs at lr 1e-3: pretrained ahead of scratch in AUC and cIoU, and a cell accuracy near 1/2 for
#    both: both found the digits, neither found which one speaks.)
# 6. `metrics.ciou_per_sample` also accepts an absolute `threshold=0.5` (SLAVC without
#    `--relative_prediction`). Score the examples with it: which convention ranks the two encoders differently?
#
# ## References
#
# - Mo & Morgado, CVPR 2024, supplement A.2 and Figure 1 ([docs/protocols.md](../docs/protocols.md#a2-localization-and-segmentation)).
# - Senocak et al., *Learning to Localize Sound Source in Visual Scenes*, CVPR 2018 (cIoU, Flickr-SoundNet).
# - Mo & Morgado, *Localizing Visual Sounds the Easy Way* (EZ-VSL), ECCV 2022, and *A Closer Look at
#   Weakly-Supervised Audio-Visual Source Localization* (SLAVC), NeurIPS 2022: the evaluation code followed
#   here ([docs/metrics.md](../docs/metrics.md#ciou)).
# - `avlib.heads.AVLocalizer`, `avlib.metrics.ciou_per_sample`, `avlib.metrics.localization_metrics`.
