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
# # 05 · Audio-visual segmentation: which pixels are making the sound?
#
# **Paper:** Mo & Morgado, *Unveiling the Power of Audio-Visual Early Fusion Transformers with Dense
# Interactions through Masked Modeling*, CVPR 2024 (arXiv:2312.01017), supplement **A.2** (protocol) and
# **Figure 2** (qualitative masks). Metrics: [docs/metrics.md](../docs/metrics.md#segmentation). The official head
# and evaluator: [docs/official_implementation.md §3.5](../docs/official_implementation.md#35-segmentation).
#
# **What you will learn**
# 1. How the supplement turns the encoder into a segmenter. The global audio vector is fused with every
#    local visual token, and three up-convolution blocks upsample the result to a mask.
# 2. How it is trained (per-pixel BCE to the ground-truth mask) and scored with AVSBench's mIoU and F-score.
# 3. Why "mIoU" and "F" are not one number each. AVSBench and DeepAVFusion's own evaluator treat empty
#    masks, the background class and the F threshold differently, which is why the README numbers cannot be
#    compared with AVSBench tables.
# 4. Pretrained vs scratch, in numbers and in a Figure 2 style comparison.
#
# **Expected runtime** (2-core laptop CPU): `smoke` under 1 min · `cpu` about 1.5 min (two trainings of
# 3 epochs on 3,000 scenes) · `paper` needs GPUs and AVSBench.
#
# **Inputs:** `pretrain_ckpt`, the checkpoint written by `02_pretraining` (or an official DeepAVFusion
# checkpoint of the same size). Leave it empty to pre-train here first; the result is cached in `run_dir`.

# %%
from avlib import nb

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | cpu | paper (see avlib.config.PROFILES)
seed: int = 0  # seeds python, numpy and torch (also the config seed)
device: str = "auto"  # auto | cpu | cuda | mps
out_dir: str = ""  # metrics.json and figures; empty means reports/<profile>/05_segmentation/
run_dir: str = ""  # checkpoints and histories; empty means runs/<profile>/05_segmentation/
pretrain_ckpt: str = ""  # avmae.pt from 02 (ours or an official one); empty means pre-train here first
recipe: str = "supplement"  # supplement (seed supplement A.2) | official (AdamW, official U-Net head)
explorers: bool = True  # show the ipywidgets explorers (papermill may hang on them, so the runner passes False)
overrides: dict = {}  # config overrides, e.g. {"segmentation.head": "official_unet"}

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
paths = nb.paths_for("05_segmentation", profile, out_dir, run_dir)
cfg.segmentation

# %% [markdown]
# The checkpoint comes from 02. When you run this notebook on its own with `pretrain_ckpt` empty, it is
# pre-trained here with the same profile; `tasks.pretrain` resumes from `run_dir/pretrain`, so this is
# paid only once.

# %%
ckpt = pretrain_ckpt or tasks.pretrain(cfg, paths.run_dir / "pretrain", device=device).checkpoint
ckpt

# %% [markdown]
# ## 1. The head: fuse, then upsample
#
# Supplement A.2: "we fuse the global audio representation with the local visual representations, and
# upsample these localized audio-visual representations using an upsampling decoder with three sequential
# up-convolution blocks". In `AVSegmenter(head="upsample")`, the kit's default:
#
# 1. the global audio vector $\bar a$ (mean of the audio tokens, then a linear layer) is broadcast over the
#    visual token grid $v$ of shape $(D, g_h, g_w)$;
# 2. a 1×1 convolution mixes $[v,\ \bar a,\ v\odot\bar a]$. The product term is the same audio-visual
#    agreement that notebook 04's cosine map measures;
# 3. three blocks, each a 2× transposed convolution followed by conv-BN-ReLU, go from $g_h$ to $8g_h$ while
#    halving the channels;
# 4. a 1×1 classifier gives one logit per pixel, resized to the image. Its bias starts at the log-odds of
#    the training masks' foreground fraction (RetinaNet's prior init), so training starts at the
#    constant prediction instead of spending its first steps on learning the base rate.
#
# Training minimizes the BCE between these logits and the ground-truth mask (A.2: Adam, lr $10^{-4}$, 20
# epochs, batch 128; the small profiles keep Adam and lr $10^{-4}$ but train fewer epochs, 3 at `cpu`). On AV-Digits, `seg_mask` marks the speaking digit's stroke pixels, not its whole cell,
# so this task is finer than 04's.
#
# **The official head** is `overrides={"segmentation.head": "official_unet"}` ([§3.5](../docs/official_implementation.md#35-segmentation)): a
# U-Net over the visual tokens of four encoder layers, with the last layer's audio tokens projected and
# broadcast at every scale. It is also what `recipe="official"` selects, together with AdamW and layer-wise
# lr decay.

# %%
nb.show_source(heads.AVSegmenter._forward_upsample)

# %% [markdown]
# ## 2. Pretrained vs scratch
#
# `tasks.compare_inits` runs the protocol twice, from the pre-trained encoder and from a random one. Finished
# runs are cached in `run_dir/<init>/`; delete that folder after you change `pretrain_ckpt`.

# %%
runs = tasks.compare_inits("segmentation", cfg, paths.run_dir, checkpoint=ckpt, device=device)
pd.DataFrame({init: r.metrics for init, r in runs.items()}).round(4)

# %% [markdown]
# The training loss of both runs. The dashed line is the loss of the best *constant* prediction: the fraction
# of sounding pixels, predicted everywhere. A model that stays on that line has learned *how much* of the
# image sounds but not *where*.

# %%
fg = next(iter(make_loaders(cfg, "segmentation")[1]))["seg_mask"].mean()        # fraction of sounding pixels
fig = viz.plot_history({init: r.history for init, r in runs.items()}, keys=["loss"],
                       title="segmentation: per-pixel BCE while training",
                       references={"constant prediction": F.binary_cross_entropy(fg, fg).item()})
nb.save_fig(fig, paths.out_dir, "training_loss")
fig

# %% [markdown]
# ## 3. One name, several metrics
#
# Each test frame has a predicted probability map $p$ and a binary mask $g$. The evaluation (`tasks.evaluate`)
# reports two families.
#
# **AVSBench protocol** (`avsbench_*`, OpenNLPLab's `utility.py`; the standard for AVSBench tables):
#
# - *mIoU (Jaccard)*: binarize $p > 0.5$, take IoU $= \sum p g / \sum \max(p, g)$ per frame, average over the
#   frames of an evaluation batch, then average the batch means. Here an evaluation batch is one test-loader
#   batch (`cfg.segmentation.train.batch_size` frames). **Empty-GT frames** (nothing sounds) score the
#   fraction of correctly empty pixels instead of $0/0$.
# - *F-score*: $F_\beta = \frac{(1+\beta^2)PR}{\beta^2 P + R}$ with $\beta^2 = 0.3$, which weights precision
#   more than recall. It is computed at 255 thresholds. The F curves of a batch's frames are *averaged*, the
#   **maximum over thresholds** of that average is the batch's score, and batches are averaged. So one
#   threshold is chosen per batch, and the value depends on the batch size (COMBO-AVS issue #7). Empty-GT
#   frames are left out of F but not of mIoU (AVSBench issue #22).
#
# **DeepAVFusion's own evaluator** (`davf_*`, `eval_avsegm.py`), behind the README's "S4 mIoU 89.94 / F 92.34":
#
# - frames whose GT is empty are **skipped**;
# - the binary task is scored as two classes {background, foreground}. `davf_miou` **averages the background
#   IoU with the foreground IoU**, and because background is large and easy it inflates the number.
#   `davf_miou_nobg` is foreground only;
# - `davf_f` takes the best threshold **per frame**, then averages over frames. This is optimistic, but it
#   does not depend on batching.
#
# Together with evaluation on AVSBench's `val` split, this is why DeepAVFusion's README numbers cannot be put
# in the same table as AVSBench-protocol results ([docs/metrics.md](../docs/metrics.md#deepavfusion-evaluator)). On AV-Digits every test frame
# has a speaking digit, so the empty-GT rules never fire. The toy frame below shows what they do on an
# empty frame that is predicted empty:

# %%
empty_gt, predicted_empty = torch.zeros(1, 8, 8), torch.full((1, 8, 8), -10.0)   # GT, logits
davf = metrics.davf_segmentation(predicted_empty, empty_gt)
{"avsbench_miou": metrics.avsbench_miou(predicted_empty, empty_gt), "davf_miou": davf["davf_miou"],
 "davf frames skipped": davf["n_skipped"]}

# %% [markdown]
# The batch dependence of AVSBench's F, on the first test frames of the pretrained model: the same
# predictions scored as one batch, as batches of 2 frames and as single frames. The DeepAVFusion F is the
# same whatever the batching.

# %%
examples = {init: tasks.predict_examples("segmentation", r.model, cfg, n=6, device=device)
            for init, r in runs.items()}
p, g = examples["pretrained"]["pred"], examples["pretrained"]["gt"]   # (n, H, W) probabilities, masks
batching = {f"avsbench_f, {k or len(p)} frame(s) per batch":
            metrics.avsbench_fscore(p, g, batch_frames=k, from_logits=False) for k in (None, 2, 1)}
batching["davf_f (best threshold per frame)"] = metrics.davf_segmentation(p, g, from_logits=False)["davf_f"]
batching

# %%
bars = {label: {init: r.metrics[key] for init, r in runs.items()}
        for key, label in [("avsbench_miou", "AVSBench mIoU"), ("avsbench_f", "AVSBench F"),
                           ("davf_miou", "DeepAVFusion mIoU (bg+fg)"),
                           ("davf_miou_nobg", "DeepAVFusion mIoU (fg)"), ("davf_f", "DeepAVFusion F")]}
fig = viz.compare_bars(bars, ylabel="score", title="segmentation: pretrained vs scratch")
nb.save_fig(fig, paths.out_dir, "pretrained_vs_scratch")
fig

# %% [markdown]
# ## 4. Qualitative comparison (supplement Figure 2)
#
# Supplement Figure 2 compares DeepAVFusion's masks with SLAVC and Mix-and-Localize. Here the comparison is
# the same encoder with and without pre-training. The masks are thresholded at 0.5, the operating point of
# mIoU, and drawn in red; the green outline is the ground truth, the speaking digit's pixels (the same
# outline as in every figure of notebooks 00-05). A good mask fills the outline and leaves the three silent
# digits alone. At the `cpu` profile neither run predicts any pixel above 0.5, although the
# probability maps highlight the strokes of all four digits. Without the audio-visual match the model
# cannot tell which digit speaks, so a stroke pixel's best estimate is 1/4 < 0.5.

# %%
labels = examples["pretrained"].get("label")     # the sounding digit (AV-Digits; benchmarks have none)
titles = None if labels is None else [f"digit {int(d)} speaks" for d in labels]
fig = viz.segmentation_figure(examples["pretrained"]["image"],
                              {"scratch": examples["scratch"]["pred"],
                               "DeepAVFusion (pretrained)": examples["pretrained"]["pred"]},
                              g, titles=titles)
nb.save_fig(fig, paths.out_dir, "figure2_segmentation")
fig

# %%
above = {init: (ex["pred"] > 0.5).float().mean().item() for init, ex in examples.items()}
nb.narrate("""In this run (`{profile}`) {ap:.1%} of the pretrained model's pixels and {as_:.1%} of the scratch
           model's are above 0.5 on these scenes (the sounding digit covers {fg:.1%}); AVSBench mIoU
           {mp:.3f} vs {ms:.3f}.""", profile=profile, ap=above["pretrained"], as_=above["scratch"],
           fg=g.float().mean().item(), mp=runs["pretrained"].metrics["avsbench_miou"],
           ms=runs["scratch"].metrics["avsbench_miou"])

# %% [markdown]
# ### Explore
#
# Browse the samples and move the threshold. The IoU and F-score operating points (0.5 and the best
# threshold) are often far apart. The explorer needs JupyterLab with ipywidgets. Batch runs pass
# `explorers=False`, because papermill can hang on widget output; executed copies then show a static
# gallery of the same views (the first samples of each method at threshold 0.5).

# %%
preds = {"DeepAVFusion (pretrained)": examples["pretrained"]["pred"], "scratch": examples["scratch"]["pred"]}
# the runner passes explorers=False: a static gallery of the same views
widgets.overlay_explorer(examples["pretrained"]["image"], preds, g, static=not explorers)

# %% [markdown]
# ## 5. Results
#
# Every metric of both initializations under `segmentation/<init>/<metric>`. The runner's
# pretrained-vs-scratch table is built from these keys.

# %%
results = {"segmentation": {init: r.metrics for init, r in runs.items()},
           "seconds": {f"segmentation_{init}": r.seconds for init, r in runs.items()}}
nb.record(results, paths.out_dir, cfg=cfg, pretrain_ckpt=str(ckpt))

# %% [markdown]
# ## Summary
#
# - The segmenter is the localizer's idea at pixel level. Audio and local visual features are fused, three
#   up-convolutions upsample the result, and BCE trains it against the mask.
# - "mIoU" and "F" depend on the evaluator. AVSBench scores empty frames with a true-negative rule and picks
#   one F threshold per batch. DeepAVFusion skips empty frames, averages background into mIoU and picks one
#   F threshold per frame. Say which one you report, and compare `avsbench_*` numbers only with other
#   `avsbench_*` numbers.
# - Compare the initializations only after checking the loss curves and the masks. A run that predicts no
#   foreground (mIoU near 0, background-inclusive `davf_miou` near 0.5) or foreground everywhere (everything
#   near the foreground fraction) has not learned *where* the sound is. Its numbers then measure the
#   metric's quirks, not the features.
#
# ## Exercises
#
# 1. Train the official U-Net head (`overrides={"segmentation.head": "official_unet"}`). It reads four
#    encoder layers instead of one. Does it sharpen the strokes?
# 2. Add silent scenes (`{"data.p_offscreen": 0.3}`) so that empty-GT frames exist. How far do
#    `avsbench_miou` and `davf_miou_nobg` drift apart, and why?
# 3. Score the full test set with `metrics.avsbench_fscore(..., batch_frames=k)` for k = 1, 5, 20 (AVSBench
#    `test.sh` uses 20). How big is the spread compared with the pretrained-vs-scratch gap?
# 4. Freeze the encoder (`{"segmentation.train.freeze_encoder": True}`): a "linear probe" for segmentation.
# 5. Train longer, or with a 10× larger lr than the supplement's $10^{-4}$ that the small profiles keep
#    (`{"segmentation.train.epochs": 10}`, `{"segmentation.train.lr": 1e-3}`, each in a new `run_dir`).
#    Which of the two changes moves the pretrained run off the constant-prediction line, and does the
#    scratch run follow? (Ours: lr 1e-3 alone for 3 epochs barely moves mIoU off 0; lr 1e-3 for 10 epochs,
#    2 min per init, leaves the line from both inits, with the pretrained run's mIoU a little ahead.)
#
# ## References
#
# - Mo & Morgado, CVPR 2024, supplement A.2 and Figure 2 ([docs/protocols.md](../docs/protocols.md#a2-localization-and-segmentation)).
# - Zhou et al., *Audio-Visual Segmentation*, ECCV 2022 (AVSBench, its mIoU and F-score).
# - `avlib.heads.AVSegmenter`, `avlib.metrics.AVSBenchEvaluator`, `avlib.metrics.DeepAVFusionSegEvaluator`.
