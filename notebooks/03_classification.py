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
# # 03 · Classification: linear probe and fine-tuning, pretrained vs scratch
#
# **Paper:** Mo & Morgado, *Unveiling the Power of Audio-Visual Early Fusion Transformers with Dense
# Interactions through Masked Modeling*, CVPR 2024 (arXiv:2312.01017), classification results and
# supplement **A.1** (protocol and the feature-subset analysis). The official code's recipes:
# [docs/official_implementation.md §3.2-3.3](../docs/official_implementation.md#32-linear-probe). Metric: [docs/metrics.md](../docs/metrics.md#top-1-accuracy).
#
# **What you will learn**
# 1. The two standard ways to judge a pre-trained encoder. The **linear probe** trains a linear layer on
#    frozen features and so measures the features themselves. **Fine-tuning** trains everything and so
#    measures the encoder as an initialization.
# 2. How a clip becomes one vector: average-pool the audio tokens, the visual tokens and the fusion tokens,
#    then feed a subset of the three to the classifier.
# 3. Which of these features carry the class on AV-Digits, and what the fusion tokens add (supplement A.1's
#    subset analysis).
# 4. What pre-training buys compared with the same protocol from a random encoder.
#
# **Expected runtime** (2-core laptop CPU): `smoke` under 1 min · `cpu` about 2 min (4 trainings and
# 14 small probes on cached features) · `paper` needs GPUs and VGGSound.
#
# **Inputs:** `pretrain_ckpt`, the checkpoint written by `02_pretraining` (or an official DeepAVFusion
# checkpoint of the same size). Leave it empty to pre-train here first; the result is cached in `run_dir`.

# %%
from avlib import nb

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | cpu | paper (see avlib.config.PROFILES)
seed: int = 0  # seeds python, numpy and torch (also the config seed)
device: str = "auto"  # auto | cpu | cuda | mps
out_dir: str = ""  # metrics.json and figures; empty means reports/<profile>/03_classification/
run_dir: str = ""  # checkpoints and histories; empty means runs/<profile>/03_classification/
pretrain_ckpt: str = ""  # avmae.pt from 02 (ours or an official one); empty means pre-train here first
recipe: str = "supplement"  # supplement (seed supplement A.1) | official (LARS probe, BN heads, averaged logits)
overrides: dict = {}  # config overrides, e.g. {"linprobe.train.epochs": 20}
subsets_scratch: bool = True  # also run the feature-subset probes on a random encoder (cheap)

# %%
import math

import pandas as pd

from avlib import heads, tasks, viz
from avlib.config import make_config

device = nb.setup(seed, device)
cfg = make_config(profile, recipe=recipe, overrides=nb.parse_overrides(overrides), seed=seed)
paths = nb.paths_for("03_classification", profile, out_dir, run_dir)
cfg.linprobe, cfg.finetune

# %% [markdown]
# The checkpoint comes from 02. When you run this notebook on its own with `pretrain_ckpt` empty, it is
# pre-trained here with the same profile; `tasks.pretrain` resumes from `run_dir/pretrain`, so this is
# paid only once.

# %%
ckpt = pretrain_ckpt or tasks.pretrain(cfg, paths.run_dir / "pretrain", device=device).checkpoint
ckpt

# %% [markdown]
# ## 1. From tokens to one vector per clip
#
# Supplement A.1: "we (average) pool audio representations from all time-frequency patches into a single
# global audio representation, visual representations from all spatial patches into a global image
# representation, and the representations obtained for the fusion tokens into a global audio-visual
# representation. The input to the linear classifier is a subset of these three global features."
# The main paper uses **audio + visual** (the `paper` profile's `cfg.linprobe.features`). The small
# profiles probe **all three** streams, as the official linear probe does: at this scale the fusion tokens
# are where pre-training shows (section 4 has every subset, so you can see the difference yourself).
#
# Both protocols use the same head: the concatenated pooled features are standardized by a parameter-free
# `BatchNorm1d` (the MAE and official linear-probe convention; at test time it is a fixed affine map, so the
# classifier stays linear) and fed to one linear layer. The protocols differ only in what trains
# (supplement A.1: Adam, lr $10^{-4}$, batch 128, 50 epochs). The small profiles fine-tune with the same
# Adam lr for fewer epochs (3 at `cpu`). Their linear probe caches features instead
# (`cfg.linprobe.cache_features`): the frozen encoder pools every training and test clip **once**, and the
# linear layer then trains for 30 epochs on those vectors in seconds, with lr $3 \cdot 10^{-3}$. A probe must
# be trained to convergence to grade the features and not the optimizer: with 5 epochs of the non-cached
# probe at lr $10^{-3}$ the random encoder scored about twenty points below its converged accuracy.
#
# | protocol | encoder | what it measures |
# |---|---|---|
# | linear probe (`linprobe`) | frozen (eval mode, no gradients) | how linearly separable the classes are in the pre-trained features |
# | fine-tuning (`finetune`) | trained with the head | how good the weights are as a starting point |
#
# **Metric:** top-1 accuracy in %, micro-averaged over the test clips (`timm.utils.accuracy`, as the
# reference code). AV-Digits has 10 balanced classes, the digit that speaks, so chance is 10%.

# %%
nb.show_source(heads.AVClassifier.pooled)

# %% [markdown]
# **The official recipe** (`recipe="official"`, [official code §3.2](../docs/official_implementation.md#32-linear-probe)) differs in three ways. The probe is
# trained with LARS (base lr 0.3, cosine schedule). Each stream gets its own `BatchNorm1d(affine=False)` and
# linear head. The prediction is the **average of the three heads' logits**, and per-head accuracies are
# reported too (`top1_audio`, `top1_visual`, and `top1_fusion` when the fusion stream is among
# `cfg.linprobe.features`). Fine-tuning uses AdamW with layer-wise lr decay 0.75. Re-run this notebook with
# `recipe="official"` to compare; the metric keys stay the same.

# %% [markdown]
# ## 2. Linear probe: are the pre-trained features linearly separable?
#
# `tasks.compare_inits` runs the same protocol from the pre-trained checkpoint and from a randomly
# initialized encoder (`scratch`). A linear probe on a *random* frozen encoder is a useful floor: random
# features of a ViT are not useless, and pre-training has to beat them. Finished runs are cached in
# `run_dir/<protocol>/<init>/`; delete that folder after you change `pretrain_ckpt`.

# %%
linprobe = tasks.compare_inits("linprobe", cfg, paths.run_dir / "linprobe", checkpoint=ckpt, device=device)
{init: r.metrics for init, r in linprobe.items()}

# %% [markdown]
# ## 3. Fine-tuning: is it a good initialization?

# %%
finetune = tasks.compare_inits("finetune", cfg, paths.run_dir / "finetune", checkpoint=ckpt, device=device)
{init: r.metrics for init, r in finetune.items()}

# %%
chance = tasks.chance_top1(cfg, "linprobe")                          # 100 / number of classes
fig = viz.compare_bars({protocol: {init: r.metrics["top1"] for init, r in runs.items()}
                        for protocol, runs in [("linear probe", linprobe), ("fine-tuning", finetune)]},
                       ylabel="top-1 (%)", title="classification: pretrained vs scratch", sharey=True,
                       references={f"chance ({chance:.0f} %)": chance})
nb.save_fig(fig, paths.out_dir, "pretrained_vs_scratch")
fig

# %% [markdown]
# Training curves: the cross-entropy of each run, logged every `log_every` steps. The dashed line is the
# loss of a uniform guess over 10 classes, $\ln 10 \approx 2.30$. A run whose loss stays near it has
# learned almost nothing. The standardizing `BatchNorm` in the head matters here. Mean-pooled tokens vary
# little from clip to clip, and a raw linear layer on them moves so slowly that a short probe can sit at
# chance for *both* inits, which would say nothing about the features.

# %%
curves = {f"{protocol} / {init}": r.history
          for protocol, runs in [("linprobe", linprobe), ("finetune", finetune)] for init, r in runs.items()}
fig = viz.plot_history(curves, keys=["loss"], title="classification: training loss",
                       references={"uniform guess (ln 10)": math.log(10)})
nb.save_fig(fig, paths.out_dir, "training_loss")
fig

# %% [markdown]
# ## 4. Which features carry the class? (supplement A.1)
#
# The supplement analyses linear probes on every subset of {audio, visual, fusion}. `tasks.feature_subsets`
# runs the frozen encoder once over the train and test splits, caches the three pooled features, and trains
# the same head (parameter-free BatchNorm, then one linear layer) per subset: 7 subsets, each as cheap as a
# logistic regression. This is the same machinery as section 2's probe at the small profiles
# (`cache_features`), so the `audio+visual+fusion` rows repeat section 2's numbers (to within a test clip:
# section 2 evaluates through the full model, this table from the cached features).
#
# What to expect on AV-Digits. The label is the digit that *speaks*. The audio alone names it (a spoken
# digit), but the picture shows four digits, and vision can only tell which one speaks by looking at the
# audio. So `visual` alone should be weak, and `audio` should carry most of the signal. The fusion tokens
# are the only place where the two modalities meet inside the encoder, so compare `fusion` with
# `audio+visual`.
#
# What to look out for. A random encoder is a strong baseline for frozen features: a random ViT is a random
# projection of its input and keeps much of its information. Masked modeling does not promise linearly
# separable features either. MAE reports a large gap between linear probing and fine-tuning, because its
# features become good after some non-linear adaptation. Where the `scratch` column beats the `pretrained`
# one, this pre-training has not learned features that are *linearly* better than random, even if it still
# gives fine-tuning a head start (section 3).
#
# What the `cpu` run shows. Pre-training wins every subset that includes the fusion tokens, and scratch
# wins audio alone and visual alone. So at this scale the per-modality features are not linearly better
# than random ones; what pre-training adds sits in the fusion tokens. Fine-tuning shows a larger gap. The
# `paper` profile is where the comparison is meant to be made. The sentence below the figure reads this
# run's own table.

# %%
subset_rows = tasks.feature_subsets(cfg, paths.run_dir / "subsets" / "pretrained", checkpoint=ckpt,
                                    device=device)
if subsets_scratch:
    subset_rows += tasks.feature_subsets(cfg, paths.run_dir / "subsets" / "scratch", init="scratch",
                                         device=device)
subsets = pd.DataFrame(subset_rows).pivot(index="features", columns="init", values="top1")
subsets.sort_values("pretrained", ascending=False).round(1)

# %%
fig = viz.ablation_plot(subset_rows, x="features", y="top1", hue="init", chance=chance,
                        title="linear probe top-1 per feature subset")
nb.save_fig(fig, paths.out_dir, "feature_subsets")
fig

# %%
def listing(rows):
    return "; ".join(f"{f} {p:.1f} vs {s:.1f} %" for f, (p, s) in rows.iterrows()) or "none"


gap = subsets.reindex(columns=["pretrained", "scratch"]).dropna()       # subsets probed from both inits
ft = {init: r.metrics["top1"] for init, r in finetune.items()}
nb.narrate("""In this run (`{profile}`, pretrained vs scratch) pre-training wins {won} of the {n} subsets
           ({wins}) and scratch wins or ties {lost} ({losses}). Fine-tuning: {ftp:.1f} vs {fts:.1f} %.""",
           profile=profile, n=len(gap), won=int((gap.pretrained > gap.scratch).sum()),
           lost=int((gap.pretrained <= gap.scratch).sum()), wins=listing(gap[gap.pretrained > gap.scratch]),
           losses=listing(gap[gap.pretrained <= gap.scratch]), ftp=ft["pretrained"], fts=ft["scratch"]
           ) if len(gap) else "(no scratch subsets: `subsets_scratch=False`)"

# %% [markdown]
# ## 5. Results
#
# Every metric of both initializations under `<protocol>/<init>/<metric>` (e.g. `linprobe/pretrained/top1`),
# each feature subset under `feature_subsets/<init>/top1_<subset>`, and chance under
# `classification_bounds/chance/top1`. The runner builds its
# pretrained-vs-scratch tables from these keys.

# %%
results = {"linprobe": {init: r.metrics for init, r in linprobe.items()},
           "classification_bounds": {"chance": {"top1": chance}},      # the reference line of 08's chart
           "finetune": {init: r.metrics for init, r in finetune.items()},
           "feature_subsets": {init: col.add_prefix("top1_").to_dict() for init, col in subsets.items()},
           "seconds": {f"{p}_{init}": r.seconds for p, runs in [("linprobe", linprobe), ("finetune", finetune)]
                       for init, r in runs.items()}}
nb.record(results, paths.out_dir, cfg=cfg, pretrain_ckpt=str(ckpt))

# %% [markdown]
# ## Summary
#
# - Pool each token stream, concatenate a subset, add one linear layer. The linear probe freezes the encoder
#   and grades the features; fine-tuning trains everything and grades the initialization.
# - Compare pretrained with scratch under both protocols, and only with a probe that actually trains (loss
#   well below ln 10). Standardizing the pooled features is what makes a linear probe train quickly.
# - Random frozen features are a strong baseline, and masked-modeling features are not guaranteed to beat
#   them linearly, especially after short pre-training. Fine-tuning measures something different: whether
#   the pre-trained weights are a better *starting point*.
# - The subset table shows where the class information lives. On AV-Digits it should be mostly in the
#   audio. The fusion tokens summarize both streams in a handful of tokens.
#
# ## Exercises
#
# 1. Re-run with `recipe="official"` (the official code's LARS probe, one head per stream). At the small
#    profiles the probe already sees all three streams; at `profile="paper"` add
#    `overrides={"linprobe.features": ["audio", "visual", "fusion"]}` to get the three heads. Is the
#    averaged-logits prediction better than the best single head (`top1_audio`, `top1_visual`, `top1_fusion`)?
#    At `cpu`, also probe `{"linprobe.features": ["audio", "visual"]}` only (the main paper's choice): how
#    much of the pretrained-vs-scratch gap is left?
# 2. Give the fine-tuning head all three pooled features
#    (`{"finetune.features": ["audio", "visual", "fusion"]}`). Does fine-tuning care which features the head
#    sees, now that the encoder can adapt?
# 3. Probe a checkpoint from an earlier pre-training epoch, or pre-train with fewer epochs. How fast does
#    the linear-probe accuracy grow with pre-training?
# 4. Why might `visual` alone be above chance at all on AV-Digits? (Hint: which tokens has the visual stream
#    attended to inside the fused encoder?)
#
# ## References
#
# - Mo & Morgado, CVPR 2024, supplement A.1 ([docs/protocols.md](../docs/protocols.md#a1-classification)).
# - He et al., *Masked Autoencoders Are Scalable Vision Learners*, CVPR 2022: the linear probe with
#   a non-affine BatchNorm and LARS that the official recipe follows.
# - `avlib.heads.AVClassifier`, `avlib.tasks.feature_subsets`, `avlib.metrics.top1`.
