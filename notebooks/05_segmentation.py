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
# 4. What each stage of pre-training buys, at the same budget: a random encoder (`scratch`), the unimodal
#    MAEs (`unimodal`: the ViTs that DeepAVFusion's audio-visual stage starts from, with a fresh fusion
#    stream) and DeepAVFusion (`deepavfusion`). The paper's claim is the gap **DeepAVFusion − unimodal**:
#    what audio-visual early fusion adds to its unimodal starting point. In numbers and in a Figure 2 style
#    comparison, with the supplement's comparison methods when `methods` names them.
#
# **Expected runtime** (2-core laptop CPU): one segmentation training per initialization (three, plus one
# per comparison method in `methods`). `smoke` takes seconds per run; the runner's `summary.md` lists the
# wall time of every notebook at every profile. `paper` needs GPUs and AVSBench.
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
out_dir: str = ""  # metrics.json and figures; empty means reports/<profile>/05_segmentation/
run_dir: str = ""  # checkpoints and histories; empty means runs/<profile>/05_segmentation/
pretrain_ckpt: str = ""  # DeepAVFusion checkpoint from 02 (or an official one); empty: the zoo's, or pre-train here
unimodal_ckpt: str = ""  # the unimodal MAEs' checkpoint from 02; empty: the zoo's (no unimodal row without a zoo)
methods: list = []  # comparison methods (zoo entries), e.g. ["ezvsl", "slavc"]; the main job runs none
recipe: str = "supplement"  # supplement (seed supplement A.2) | official (AdamW, official U-Net head)
explorers: bool = True  # show the ipywidgets explorers (papermill may hang on them, so the runner passes False)
overrides: dict = {}  # config overrides, e.g. {"segmentation.head": "official_unet"}
num_examples: int = 6  # Figure 2 shows the first test scenes, this many

# %%
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import display

from avlib import budgets, heads, metrics, tasks, viz, widgets, zoo
from avlib.config import make_config
from avlib.data import make_loaders
from avlib.reproduce import ordered_inits

device = nb.setup(seed, device)
cfg = make_config(profile, recipe=recipe, overrides=nb.parse_overrides(overrides), seed=seed)
paths = nb.paths_for("05_segmentation", profile, out_dir, run_dir)
cfg.segmentation

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
# epochs, batch 128; the small profiles keep Adam but train a few epochs at lr $10^{-3}$ with a cosine decay,
# chosen on the validation split). On AV-Digits, `seg_mask` marks the speaking digit's stroke pixels, not its whole cell,
# so this task is finer than 04's.
#
# **The official head** is `overrides={"segmentation.head": "official_unet"}` ([§3.5](../docs/official_implementation.md#35-segmentation)): a
# U-Net over the visual tokens of four encoder layers, with the last layer's audio tokens projected and
# broadcast at every scale. It is also what `recipe="official"` selects, together with AdamW and layer-wise
# lr decay.

# %%
nb.show_source(heads.AVSegmenter._forward_upsample)

# %% [markdown]
# ## 2. Three initializations
#
# `tasks.compare_inits` runs the protocol once per initialization, with the same recipe and budget.
# Finished runs are cached in `run_dir/<initialization>/`; delete that folder after you change a checkpoint.

# %%
runs = tasks.compare_inits("segmentation", cfg, paths.run_dir, inits, device=device)
pd.DataFrame({name: r.metrics for name, r in runs.items()}).round(4)

# %% [markdown]
# The learning curves of every run. Left: the training loss, with the loss of the best *constant*
# prediction dashed (the fraction of sounding pixels, predicted everywhere). A model that stays on that line
# has learned *how much* of the image sounds but not *where*. Right: the AVSBench mIoU at each evaluation
# of the run (`segmentation.train.eval_every` epochs apart; the small profiles evaluate once, at the end).
# Its trivial value is the better of two trivial masks: an empty mask scores an IoU of 0, and a mask
# marking every pixel scores the fraction of sounding pixels (dashed).

# %%
fg = next(iter(make_loaders(cfg, "segmentation")[1]))["seg_mask"].mean()        # fraction of sounding pixels
trivial = fg.item()                                  # the IoU of a mask marking every pixel
fig = viz.plot_history({name: r.history for name, r in runs.items()}, keys=["loss", "avsbench_miou"],
                       title="segmentation: learning curves",
                       references={"loss": {"constant prediction": F.binary_cross_entropy(fg, fg).item()},
                                   "avsbench_miou": {"every pixel foreground": trivial}})
nb.save_fig(fig, paths.out_dir, "learning_curves")
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
# The batch dependence of AVSBench's F, on the first test frames of the DeepAVFusion model: the same
# predictions scored as one batch, as batches of 2 frames and as single frames. The DeepAVFusion F is the
# same whatever the batching.

# %%
shown = [n for n in (["deepavfusion", *methods] if methods else ["scratch", "unimodal", "deepavfusion"]) if n in runs]
examples = {name: tasks.predict_examples("segmentation", runs[name].model, cfg, n=num_examples, device=device)
            for name in shown}
p, g = examples["deepavfusion"]["pred"], examples["deepavfusion"]["gt"]   # (n, H, W) probabilities, masks
batching = {f"avsbench_f, {k or len(p)} frame(s) per batch":
            metrics.avsbench_fscore(p, g, batch_frames=k, from_logits=False) for k in (None, 2, 1)}
batching["davf_f (best threshold per frame)"] = metrics.davf_segmentation(p, g, from_logits=False)["davf_f"]
batching

# %%
# %% [markdown]
# Every initialization on every metric. Before reading a gap, check that the task left its trivial
# baseline: an AVSBench mIoU above the IoU of a mask that marks every pixel (the learning curves of section
# 2). If no initialization leaves it, the profile's training budget was too short for this task, whatever
# the initialization, and the bars compare the metrics' quirks, not the features. The sentences below the
# chart read this run's numbers and say which case this is. The gap to read first is DeepAVFusion −
# unimodal, the paper's claim.

# %%
bars = {label: {name: r.metrics[key] for name, r in runs.items()}
        for key, label in [("avsbench_miou", "AVSBench mIoU"), ("avsbench_f", "AVSBench F"),
                           ("davf_miou", "DeepAVFusion mIoU (bg+fg)"),
                           ("davf_miou_nobg", "DeepAVFusion mIoU (fg)"), ("davf_f", "DeepAVFusion F")]}
fig = viz.compare_bars(bars, ylabel="score", title="segmentation from each initialization",
                       references={"AVSBench mIoU": {"every pixel foreground": trivial}})
nb.save_fig(fig, paths.out_dir, "initializations")
fig

# %%
res = {name: r.metrics for name, r in runs.items()}


def listing(values, fmt):
    return ", ".join(f"{viz.method_name(k)} {values[k]:{fmt}}" for k in ordered_inits([values]))


def gap(key, a, b):
    return f"{res[a][key] - res[b][key]:+.3f}" if a in res and b in res else "not measured"


left = [name for name in runs if res[name]["avsbench_miou"] > trivial]
nb.narrate("""In this run (`{profile}`) the AVSBench mIoU is {mious}, against {trivial:.3f} for a mask marking
           every pixel. DeepAVFusion − unimodal (the paper's claim): {du}; DeepAVFusion − scratch: {ds}.
           {verdict}""", profile=profile, mious=listing({k: v["avsbench_miou"] for k, v in res.items()}, ".3f"),
           trivial=trivial, du=gap("avsbench_miou", "deepavfusion", "unimodal"),
           ds=gap("avsbench_miou", "deepavfusion", "scratch"),
           verdict=(f"Above that trivial mask: {', '.join(map(viz.method_name, left))}, so these runs learned which "
                    "pixels sound, and their gaps can be read." if left else
                    "**No initialization left the trivial baseline**: at this budget segmentation is not learned from "
                    "any of them, and this comparison says nothing about pre-training yet. The learning curves of "
                    "section 2 show it. How long each initialization needs is measured on the validation split by "
                    f"`python -m avlib.budgets` (curves in `reports/{profile}/budgets/`), and "
                    "[docs/pretraining.md](../docs/pretraining.md#downstream-budgets-chosen-on-validation) explains "
                    "how the budgets were chosen."))

# %% [markdown]
# The validation curves of `python -m avlib.budgets`, where they have been measured for this profile: the
# same protocol from each initialization, scored on the validation scenes after every epoch of a longer run,
# with the minutes of training on the top axis.

# %%
budgets.task_figure(profile, "segmentation")

# %% [markdown]
# ## 4. Qualitative comparison (supplement Figure 2)
#
# Supplement Figure 2 compares DeepAVFusion's masks with SLAVC's and Mix-and-Localize's. Here the rows are
# the first `num_examples` test scenes, always the same ones, and the columns are the image, the ground
# truth, then one mask per model: the three initializations, or, when `methods` names comparison methods,
# DeepAVFusion and each method, as the supplement draws them. Every mask comes from the same protocol (the
# segmenter trained in section 2 on that model's encoder). The masks are thresholded at 0.5, the operating
# point of mIoU, and drawn in red; the green outline is the ground truth, the speaking digit's pixels (the
# same outline as in every figure of notebooks 00-05). A good mask fills the outline and leaves the three
# silent digits alone. A model without the audio-visual match cannot tell which digit speaks: its best
# estimate for a stroke pixel is then about one in four, below 0.5, so it marks nothing, although its
# probability map may highlight the strokes of all four digits.

# %%
first = examples[shown[0]]                       # the same scenes in every column
labels = first.get("label")                      # the sounding digit (AV-Digits; benchmarks have none)
titles = None if labels is None else [f"digit {int(d)} speaks" for d in labels]
fig = viz.segmentation_figure(first["image"], {viz.method_name(n): examples[n]["pred"] for n in shown},
                              first["gt"], titles=titles)
nb.save_fig(fig, paths.out_dir, "figure2_segmentation")
fig

# %%
first = next(iter(examples.values()))           # every row's sound (AV-Digits; benchmark items have none)
if "waveform" in first:
    for i, w in enumerate(first["waveform"]):
        print(f"row {i + 1}")
        display(nb.audio_player(w, cfg.data.sample_rate))

# %%
above = {name: (ex["pred"] > 0.5).float().mean().item() for name, ex in examples.items()}
nb.narrate("""In this run (`{profile}`) the share of pixels above 0.5 on these scenes is {above} (the sounding
           digit covers {fg:.1%}).""", profile=profile, above=listing(above, ".1%"), fg=g.float().mean().item())

# %% [markdown]
# ### Explore
#
# Browse the samples and move the threshold. The IoU and F-score operating points (0.5 and the best
# threshold) are often far apart. The explorer needs JupyterLab with ipywidgets. Batch runs pass
# `explorers=False`, because papermill can hang on widget output; executed copies then show a static
# gallery of the same views (the first samples of each method at threshold 0.5).

# %%
preds = {viz.method_name(n): examples[n]["pred"] for n in shown}
# the runner passes explorers=False: a static gallery of the same views
widgets.overlay_explorer(first["image"], preds, first["gt"], static=not explorers)

# %% [markdown]
# ## 5. Results
#
# Every metric of every initialization under `segmentation/<initialization>/<metric>` (`scratch`,
# `unimodal`, `deepavfusion`, and each comparison method). The runner and notebook 08 build their tables
# from these keys. Segmentation has no zero-shot read-out: no comparison method predicts pixel masks.

# %%
results = {"segmentation": {name: r.metrics for name, r in runs.items()},
           "seconds": {f"segmentation_{name}": r.seconds for name, r in runs.items()}}
nb.record(results, paths.out_dir, cfg=cfg, pretrain_ckpt=str(inits["deepavfusion"][1]),
          unimodal_ckpt=str(inits["unimodal"][1]) if "unimodal" in inits else "")

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
#    `test.sh` uses 20). How big is the spread compared with the gaps between initializations?
# 4. Freeze the encoder (`{"segmentation.train.freeze_encoder": True}`): a "linear probe" for segmentation.
# 5. Train longer, or with the supplement's constant lr $10^{-4}$ instead of the small profiles' cosine from
#    $10^{-3}$ (`{"segmentation.train.epochs": 10}`, `{"segmentation.train.lr": 1e-4, "segmentation.train.schedule":
#    "constant"}`, each in a new `run_dir`).
#    Which of the two changes moves a run off the constant-prediction line first, and from which
#    initialization? `python -m avlib.budgets --profile cpu --tasks segmentation` draws the same curves on
#    the validation split.
#
# ## References
#
# - Mo & Morgado, CVPR 2024, supplement A.2 and Figure 2 ([docs/protocols.md](../docs/protocols.md#a2-localization-and-segmentation)).
# - Zhou et al., *Audio-Visual Segmentation*, ECCV 2022 (AVSBench, its mIoU and F-score).
# - `avlib.heads.AVSegmenter`, `avlib.metrics.AVSBenchEvaluator`, `avlib.metrics.DeepAVFusionSegEvaluator`.
