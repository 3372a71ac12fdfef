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
# # 03 · Classification: linear probe and fine-tuning from three initializations
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
# 4. What each stage of pre-training buys. The same protocols run from three initializations at the same
#    budget: a random encoder (`scratch`), the unimodal MAEs (`unimodal`: the two ViTs that DeepAVFusion's
#    audio-visual stage starts from, with a fresh fusion stream) and DeepAVFusion (`deepavfusion`: the whole
#    encoder after audio-visual masked modeling). The paper's claim is the gap **DeepAVFusion − unimodal**:
#    what audio-visual early fusion adds to its unimodal starting point.
#
# **Expected runtime** (2-core laptop CPU): one linear probe and one fine-tuning per initialization (three
# of each, plus one per comparison method in `methods`), and the feature-subset probes on cached features
# for each of `subset_inits`. `smoke` takes seconds per run; the runner's `summary.md` lists the wall time
# of every notebook at every profile. `paper` needs GPUs and VGGSound.
#
# **Inputs:** `pretrain_ckpt` and `unimodal_ckpt`, the checkpoints handed over by `02_pretraining` (at
# profiles with a model zoo, the zoo's `deepavfusion` and `unimodal` entries). Left empty, the zoo's entries
# are used, or at a profile without a zoo (`paper`) DeepAVFusion is pre-trained here first (cached in
# `run_dir`) and the unimodal row is left out unless `unimodal_ckpt` is given. `methods` adds comparison
# methods from the zoo (docs/baselines.md), each one's encoder through the same protocols.

# %%
from avlib import nb

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | cpu | paper (see avlib.config.PROFILES)
seed: int = 0  # seeds python, numpy and torch (also the config seed)
device: str = "auto"  # auto | cpu | cuda | mps
out_dir: str = ""  # metrics.json and figures; empty means reports/<profile>/03_classification/
run_dir: str = ""  # checkpoints and histories; empty means runs/<profile>/03_classification/
pretrain_ckpt: str = ""  # DeepAVFusion checkpoint from 02 (or an official one); empty: the zoo's, or pre-train here
unimodal_ckpt: str = ""  # the unimodal MAEs' checkpoint from 02; empty: the zoo's (no unimodal row without a zoo)
methods: list = []  # comparison methods (zoo entries), e.g. ["ezvsl", "slavc"]; the main job runs none
recipe: str = "supplement"  # supplement (seed supplement A.1) | official (LARS probe, BN heads, averaged logits)
overrides: dict = {}  # config overrides, e.g. {"linprobe.train.epochs": 20}
subset_inits: list = ["deepavfusion", "unimodal", "scratch"]  # initializations probed per feature subset (section 4)

# %%
import math

import pandas as pd

from avlib import heads, tasks, viz, zoo
from avlib.config import apply_overrides, make_config
from avlib.reproduce import ordered_inits

device = nb.setup(seed, device)
cfg = make_config(profile, recipe=recipe, overrides=nb.parse_overrides(overrides), seed=seed)
paths = nb.paths_for("03_classification", profile, out_dir, run_dir)
cfg.linprobe, cfg.finetune

# %% [markdown]
# The initializations. `zoo.compared_inits` returns what `tasks.compare_inits` runs, `{name: (init,
# checkpoint, config overrides)}`: `scratch` builds a random encoder; `unimodal` loads only the two modality
# ViTs of the unimodal checkpoint (`init="warm_start"`; the fusion stream starts random, exactly as the
# audio-visual stage starts); `deepavfusion` loads the whole encoder (`init="pretrained"`); a comparison
# method loads its whole two-stream encoder, with the late-fusion architecture as its config overrides.
# Checkpoints handed over by 02 are used as given. The zoo's files are verified against their sha256
# first, and an entry missing from the zoo is pre-trained here (the `smoke` profile has no zoo files, so
# its stages take seconds).

# %%
inits = zoo.compared_inits(profile, pretrain_ckpt=pretrain_ckpt, unimodal_ckpt=unimodal_ckpt,
                           names=("scratch", "unimodal", "deepavfusion", *methods), run_dir=paths.run_dir,
                           cfg=cfg, device=device)
pd.DataFrame([{"initialization": name, "init": init, "checkpoint": str(ckpt or "–"), "config overrides": arch or ""}
              for name, (init, ckpt, arch) in inits.items()]).set_index("initialization")

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
# (supplement A.1: Adam, lr $10^{-4}$, batch 128, 50 epochs). The small profiles fine-tune with Adam for a
# few epochs at lr $10^{-3}$ with a warm-up and a cosine decay, chosen on the validation split
# ([docs/pretraining.md](../docs/pretraining.md#downstream-budgets-chosen-on-validation)). Their linear probe caches features instead
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
# `tasks.compare_inits` runs the same protocol from every initialization, with the same recipe and budget.
# A linear probe on a *random* frozen encoder is a useful floor: random features of a ViT are not useless,
# and pre-training has to beat them. The unimodal encoder is the stricter reference: it already knows each
# modality, and only the audio-visual stage separates it from DeepAVFusion. Finished runs are cached in
# `run_dir/<protocol>/<initialization>/`; delete that folder after you change a checkpoint.

# %%
linprobe = tasks.compare_inits("linprobe", cfg, paths.run_dir / "linprobe", inits, device=device)
{name: r.metrics for name, r in linprobe.items()}

# %% [markdown]
# ## 3. Fine-tuning: is it a good initialization?

# %%
finetune = tasks.compare_inits("finetune", cfg, paths.run_dir / "finetune", inits, device=device)
{name: r.metrics for name, r in finetune.items()}

# %% [markdown]
# Both protocols from every initialization, with chance (dashed). The sentence below the chart reads the two
# gaps off this run: DeepAVFusion − unimodal (what the audio-visual stage adds, the paper's claim) and
# DeepAVFusion − scratch (what the whole staged pre-training adds). A gap means something only when it is
# larger than the seed-to-seed spread: `python -m avlib.reproduce --profile cpu --seeds 0 1 2` runs the
# notebooks with three seeds and writes the spread of every number to `reports/cpu/seeds.md`.

# %%
chance = tasks.chance_top1(cfg, "linprobe")                          # 100 / number of classes
top1 = {protocol: {name: r.metrics["top1"] for name, r in runs.items()}
        for protocol, runs in [("linear probe", linprobe), ("fine-tuning", finetune)]}
fig = viz.compare_bars(top1, ylabel="top-1 (%)", title="classification from each initialization", sharey=True,
                       references={f"chance ({chance:.0f} %)": chance})
nb.save_fig(fig, paths.out_dir, "initializations")
fig

# %%
def gap(values, a, b):
    """'+2.1 points' for values[a] - values[b], or 'not measured' when one of them is missing."""
    return f"{values[a] - values[b]:+.1f} points" if a in values and b in values else "not measured"


def reading(values):
    return "; ".join(f"{viz.method_name(k)} {values[k]:.1f} %" for k in ordered_inits([values]))


nb.narrate("""In this run (`{profile}`), top-1 of the linear probe: {lp}; of fine-tuning: {ft}.
           DeepAVFusion − unimodal (the paper's claim): {lp_du} with the probe, {ft_du} with fine-tuning.
           DeepAVFusion − scratch: {lp_ds} and {ft_ds}.""", profile=profile,
           lp=reading(top1["linear probe"]), ft=reading(top1["fine-tuning"]),
           lp_du=gap(top1["linear probe"], "deepavfusion", "unimodal"),
           ft_du=gap(top1["fine-tuning"], "deepavfusion", "unimodal"),
           lp_ds=gap(top1["linear probe"], "deepavfusion", "scratch"),
           ft_ds=gap(top1["fine-tuning"], "deepavfusion", "scratch"))

# %% [markdown]
# Training curves: the cross-entropy of each run, logged every `log_every` steps. The dashed line is the
# loss of a uniform guess over 10 classes, $\ln 10 \approx 2.30$. A run whose loss stays near it has
# learned almost nothing. The standardizing `BatchNorm` in the head matters here. Mean-pooled tokens vary
# little from clip to clip, and a raw linear layer on them moves so slowly that a short probe can sit at
# chance for *every* initialization, which would say nothing about the features.

# %%
curves = {f"{protocol} / {name}": r.history
          for protocol, runs in [("linprobe", linprobe), ("finetune", finetune)] for name, r in runs.items()}
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
# features become good after some non-linear adaptation. Where the `scratch` column beats another one, that
# pre-training has not learned features that are *linearly* better than random, even if it still gives
# fine-tuning a head start (section 3).
#
# The unimodal column separates the two stages. Its audio and visual features are the unimodal MAEs'; its
# fusion tokens come out of a random fusion stream that reads those features. So `audio` and `visual`
# compare DeepAVFusion's streams with what they started from (did the audio-visual stage keep or improve
# them?), and the subsets with `fusion` show what the trained fusion stream adds over a random one. The
# `paper` profile is where the comparison is meant to be made. The sentence below the figure reads this
# run's own table.

# %%
subset_rows = []
for name in ordered_inits([{n: None for n in subset_inits if n in inits}]):    # the reports' order and colours
    init, ckpt, arch = inits[name]
    rows = tasks.feature_subsets(apply_overrides(cfg, arch), paths.run_dir / "subsets" / name, init=init,
                                 checkpoint=ckpt, device=device)
    subset_rows += [dict(r, init=name) for r in rows]      # the row's init: the initialization's name
subsets = pd.DataFrame(subset_rows).pivot(index="features", columns="init", values="top1")
subsets = subsets[ordered_inits([dict.fromkeys(subsets.columns)])]     # scratch, unimodal, deepavfusion
subsets.sort_values(subsets.columns[-1], ascending=False).round(1)

# %%
fig = viz.ablation_plot(subset_rows, x="features", y="top1", hue="init", chance=chance,
                        title="linear probe top-1 per feature subset")
nb.save_fig(fig, paths.out_dir, "feature_subsets")
fig

# %%
def wins(other):
    """How many subsets DeepAVFusion's features win against `other`'s, and which (with both values)."""
    both = subsets[["deepavfusion", other]].dropna()
    won = both[both.deepavfusion > both[other]]
    listing = "; ".join(f"{f} {d:.1f} vs {o:.1f} %" for f, (d, o) in won.iterrows()) or "none"
    return f"{len(won)} of the {len(both)} subsets ({listing})"


pairs = [o for o in ("unimodal", "scratch") if {"deepavfusion", o} <= set(subsets.columns)]
nb.narrate("In this run (`{profile}`) " + "; ".join(f"DeepAVFusion's features beat {o}'s on {{{o}}}" for o in pairs)
           + ". Every other subset is a tie or a loss.", profile=profile, **{o: wins(o) for o in pairs}
           ) if pairs else "(DeepAVFusion and another initialization are needed: see `subset_inits`)"

# %% [markdown]
# ## 5. Results
#
# Every metric of every initialization under `<protocol>/<initialization>/<metric>` (e.g.
# `linprobe/deepavfusion/top1`, `finetune/unimodal/top1`, and one column per comparison method), each
# feature subset under `feature_subsets/<initialization>/top1_<subset>`, and chance under
# `classification_bounds/chance/top1`. The runner and notebook 08 build their tables from these keys.

# %%
results = {"linprobe": {name: r.metrics for name, r in linprobe.items()},
           "classification_bounds": {"chance": {"top1": chance}},      # the reference line of 08's chart
           "finetune": {name: r.metrics for name, r in finetune.items()},
           "feature_subsets": {name: col.add_prefix("top1_").to_dict() for name, col in subsets.items()},
           "seconds": {f"{p}_{name}": r.seconds for p, runs in [("linprobe", linprobe), ("finetune", finetune)]
                       for name, r in runs.items()}}
nb.record(results, paths.out_dir, cfg=cfg, pretrain_ckpt=str(inits["deepavfusion"][1]),
          unimodal_ckpt=str(inits["unimodal"][1]) if "unimodal" in inits else "")

# %% [markdown]
# ## Summary
#
# - Pool each token stream, concatenate a subset, add one linear layer. The linear probe freezes the encoder
#   and grades the features; fine-tuning trains everything and grades the initialization.
# - Compare the initializations under both protocols, and only with a probe that actually trains (loss
#   well below ln 10). Standardizing the pooled features is what makes a linear probe train quickly.
# - Read two gaps. DeepAVFusion − scratch is what the whole staged pre-training buys. DeepAVFusion − unimodal
#   is the paper's claim: what the audio-visual stage adds to the unimodal encoders it starts from. Report
#   them as measured, whichever way they go.
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
#    much of the DeepAVFusion − unimodal gap is left without the fusion tokens?
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
