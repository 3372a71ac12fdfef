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
# # 07 · Ablations: which parts of the fusion design matter?
#
# **Paper:** Mo & Morgado, *Unveiling the Power of Audio-Visual Early Fusion Transformers with Dense
# Interactions through Masked Modeling*, CVPR 2024 (arXiv:2312.01017), ablation studies of the fusion
# design: fusion architecture, number of fusion tokens, masking ratio. The official blocks behind each
# variant: [docs/official_implementation.md §1.3-1.5](../docs/official_implementation.md#13-fusion-tokens-and-fusion-blocks).
#
# **What you will learn**
# 1. How an ablation is run. Every variant is a set of config overrides; each one is **pre-trained from
#    scratch** and then judged with the same downstream probe.
# 2. What the four fusion architectures (`none`, `token`, `dense`, `factorized`) change, and what notebook
#    01's exact separable evaluation of pair attention implies for *dense* vs *factorized*.
# 3. How the number of fusion tokens and the masking ratio affect the learned features.
# 4. How to read a small-budget ablation honestly. The budget here is tiny, so differences of a few points
#    can be noise.
#
# **Expected runtime** (2-core laptop CPU): `smoke` under 1 min · `cpu` about 2 min with the manifest's
# budget (6 short pre-trainings, each followed by a linear probe) · `paper` is many GPU-days: every variant
# is a full pre-training.
#
# **Budget parameters.** `ablation_overrides` is merged into the config of every variant to shrink
# pre-training (the manifest sets one per profile), and `sweeps` picks which sweeps run. `pretrain_ckpt`
# (from 02) is only used as a reference row, probed the same way: DeepAVFusion as 02 hands it over. At
# profiles with a model zoo that is the zoo's `deepavfusion` entry, pre-trained with the kit's staged recipe
# (unimodal MAEs first, then the audio-visual stage from them, with the paper's mask ratios;
# docs/pretraining.md), not one of the variants below trained longer.
# The manifest's `cpu` budget also shortens the probe: 8 epochs on the cached features of 1,024 scenes
# (about 130 steps) at lr 0.01 (`linprobe.train.lr`), about 3× the profile's probe lr of $3 \cdot 10^{-3}$,
# which in part makes up for the few steps.

# %%
from avlib import nb

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | cpu | paper (see avlib.config.PROFILES)
seed: int = 0  # seeds python, numpy and torch (also the config seed)
device: str = "auto"  # auto | cpu | cuda | mps
out_dir: str = ""  # metrics.json and figures; empty means reports/<profile>/07_ablations/
run_dir: str = ""  # one folder per variant; empty means runs/<profile>/07_ablations/
pretrain_ckpt: str = ""  # DeepAVFusion from 02 (the zoo's at profiles with a zoo), probed as a reference row; empty skips it
recipe: str = "supplement"  # supplement | official (the probe's recipe)
overrides: dict = {}  # config overrides for every variant, applied after ablation_overrides
ablation_overrides: dict = {}  # budget for every variant, e.g. {"pretrain.epochs": 2, "data.train_size": 512}
sweeps: list = ["fusion", "tokens", "mask_ratio"]  # which sweeps run: fusion | tokens | mask_ratio
probe: str = "linprobe"  # downstream protocol that judges each variant (a key of avlib.protocols.PROTOCOLS)

# %%
import pandas as pd
from avlib import tasks, viz
from avlib.config import make_config
from avlib.protocols import PROTOCOLS

device = nb.setup(seed, device)
budget = {**nb.parse_overrides(ablation_overrides), **nb.parse_overrides(overrides)}
cfg = make_config(profile, recipe=recipe, overrides=budget, seed=seed)
paths = nb.paths_for("07_ablations", profile, out_dir, run_dir)
metric = f"{probe}_{PROTOCOLS[probe].main_metric}"          # the column each variant is judged by
budget, cfg.pretrain, cfg.model

# %% [markdown]
# ## 1. The variants
#
# Every sweep compares a few variants with the **default** model of this profile (`factorized` fusion as
# in the paper, the profile's number of fusion tokens and the profile's mask ratios: 0.75 image / 0.8 audio
# in the paper, 0.5 / 0.5 at the small profiles). The default is shared by all sweeps, so it is pre-trained once. `tasks.ablation` pre-trains each variant
# (`run_dir/<variant>/pretrain`), probes it (`run_dir/<variant>/<probe>`) and returns one row per variant.
# The probe's metrics appear as `<probe>_*` and the final pre-training losses and 1-NN accuracies as
# `pretrain_*`. Finished variants are cached, so adding a sweep later only pays for the new variants.
#
# **Fusion architecture** ([official code §1.3-1.4](../docs/official_implementation.md#13-fusion-tokens-and-fusion-blocks)). In every variant, the fusion tokens take part in both
# modality ViTs' self-attention at every layer. What updates them differs:
#
# | variant | fusion tokens are updated by | cost per layer |
# |---|---|---|
# | `none` | nothing: no fusion blocks, no audio-visual exchange | 0 |
# | `token` | one cross-attention over the concatenated [audio ; visual] tokens (one joint softmax) | $O(N_f (N_a + N_v))$ |
# | `dense` | attention over **all** $N_a N_v$ audio-visual token pairs $[a_i \,\|\, v_j]$ | $O(N_f N_a N_v)$ as written |
# | `factorized` (paper) | aggregation tokens summarize each modality ($n_v$, $n_a$ tokens); the fusion tokens attend over the $n_v n_a$ pairs of *aggregated* tokens | $O(N_f n_v n_a)$ |
#
# **What 01 showed about "dense".** A pair's key and value are *linear* in the concatenation $[a_i \| v_j]$.
# So the attention logit splits into $s_i + t_j$, the softmax over all pairs factorizes into
# $\text{softmax}(s)_i\,\text{softmax}(t)_j$, and the output is the **sum of two ordinary cross-attentions**,
# one over the audio tokens and one over the visual tokens. The kit evaluates it that way
# (`cfg.model.pair_attention="separable"`, exact up to float rounding, $O(N_a + N_v)$). As implemented,
# the "dense interactions" therefore contain no multiplicative audio×visual term. `dense` differs from
# `token` only in using two softmaxes instead of one joint softmax. `factorized` differs from `dense`
# mainly by its **aggregation tokens** (a learned per-modality summary, carried across layers), since its
# pair attention is separable too. Expect `dense` and `token` to be close. Whatever advantage
# `factorized` shows comes from the aggregation stream, not from pairs.

# %%
default = f"default ({cfg.model.fusion_arch})"
SWEEPS = {
    "fusion": {"none": {"model.fusion_arch": "none"}, "token": {"model.fusion_arch": "token"},
               "dense": {"model.fusion_arch": "dense"}, default: {}},
    "tokens": {"1 fusion token": {"model.num_fusion_tokens": 1}, default: {}},
    # the paper masks 0.75 / 0.8; the small profiles pre-train at 0.5 / 0.5 (see below), so each compares with the other
    "mask_ratio": ({"mask 0.5": {"model.image_mask_ratio": 0.5, "model.audio_mask_ratio": 0.5}, default: {}}
                   if cfg.model.image_mask_ratio != 0.5 else
                   {"mask 0.75 / 0.8 (paper)": {"model.image_mask_ratio": 0.75, "model.audio_mask_ratio": 0.8},
                    default: {}}),
}
variants = {name: v for s in sweeps for name, v in SWEEPS[s].items()}      # the default runs once
{"default model": {k: getattr(cfg.model, k) for k in ("fusion_arch", "num_fusion_tokens", "image_mask_ratio",
                                                        "audio_mask_ratio")}, "variants": variants}

# %% [markdown]
# **Number of fusion tokens.** The fusion tokens are the only channel between the two ViTs. Fewer tokens
# means a narrower bottleneck. The paper's default is 16; the `cpu` profile uses 4 and `smoke` 2.
#
# **Masking ratio.** The paper masks 75% of the image patches and 80% of the audio patches (MAE,
# AudioMAE), and the literature consistently finds that high ratios learn better features, on grids of
# 14 x 14 image and 8 x 12 audio patches. The small profiles have 4 x 4 grids, where those ratios leave 4
# image and 3 audio tokens visible. There the encoder drifted to low-level reconstruction (its pooled
# audio features ended *worse* than a random encoder's in the 1-NN probe) and fine-tuning from it lost to
# scratch, so the small profiles pre-train at 0.5 / 0.5 (`avlib.config._small`). This sweep
# puts the paper's ratios back. (The zoo's staged recipe, the reference row, uses the paper's ratios,
# starting from the unimodal MAEs with per-channel image targets and inpainting masks;
# [docs/pretraining.md](../docs/pretraining.md) shows how that recipe was chosen on the validation split.)
#
# ## 2. Run the sweeps

# %%
rows = pd.DataFrame(tasks.ablation(cfg, variants, paths.run_dir, probe=probe, device=device))
rows = rows.set_index("variant")
rows.T.round(2)

# %% [markdown]
# The reference: DeepAVFusion from 02 (at profiles with a zoo, the zoo's `deepavfusion`: the staged recipe,
# its own mask ratios and budget), judged by the same probe.

# %%
reference = {}
if pretrain_ckpt:
    reference = tasks.run_task(probe, cfg, paths.run_dir / "reference" / probe, checkpoint=pretrain_ckpt,
                               device=device).metrics
reference

# %% [markdown]
# ## 3. Results per sweep
#
# Top row: the probe's main metric for each variant, with chance for a classification probe. The other
# line is DeepAVFusion from 02 (when given), the default architecture pre-trained with the zoo's staged
# recipe (unimodal MAEs, then the audio-visual stage) at its own, larger budget, and judged by the same
# probe. The gap between the default bar and that line is what the staged recipe and its budget buy over
# one short pre-training from scratch; it can be small or negative, so read it as measured. The probe here
# is short (about 130 steps) and not converged, so the same checkpoint scores lower here than with notebook
# 03's converged probe (30 epochs on 3,000 scenes). Compare the bars with each other and with that line,
# not with notebook 03's numbers. Bottom row: the
# 1-nearest-neighbour accuracy of the fusion tokens on the test scenes, again with chance. This is the
# official pre-training monitor (`probes.knn_probe`) and needs no training on labels. It shows directly
# what the fusion stream learned. With `none`, the fusion tokens
# are never updated by a fusion block, so they serve as a floor.

# %%
main = PROTOCOLS[probe].main_metric
panels = {metric: f"{viz.readable(probe)}: {viz.readable(main)}", "pretrain_nn_fusion": "1-NN accuracy, fusion tokens (%)"}
chance = {"pretrain_nn_fusion": tasks.chance_top1(cfg)}                  # 100 / number of classes
if main == "top1":
    chance[metric] = tasks.chance_top1(cfg, probe)
fig = viz.ablation_sweeps(rows, {s: list(SWEEPS[s]) for s in sweeps}, panels, chance=chance,
                          references={metric: {"DeepAVFusion from 02 (staged recipe)": reference[main]}} if reference else None)
nb.save_fig(fig, paths.out_dir, "ablations")
fig

# %% [markdown]
# The 1-NN accuracies of every token stream (`nn_all` sums the three similarity matrices). Reconstruction
# losses are left out on purpose. A variant with a lower mask ratio has an easier reconstruction task, so
# its loss is not comparable with the others'.

# %%
rows.filter(like="pretrain_nn_").round(1)

# %% [markdown]
# ## 4. Reading a small ablation
#
# - **Noise first.** At the `cpu` budget every variant pre-trains on about a thousand scenes, twice. Before
#   you believe a difference of a few points, re-run with another `seed` and see whether the ranking
#   survives (exercise 1). The paper's ablations pre-train for many epochs on VGGSound.
# - **Unconverged probes.** The probe stops after about 130 steps, before it converges, so a ranking from
#   it is indicative only: features that are slower to read out linearly rank lower here than they would
#   with a converged probe.
# - **`none` is the control.** Without fusion blocks the two ViTs exchange nothing. If `none` matches the
#   others, the probe does not need audio-visual interaction. Here the label, the digit that *speaks*,
#   needs the audio. The visual stream can only tell which of the four digits speaks through fusion.
# - **`dense` vs `factorized`.** The separable identity from 01 says that both reduce to sums of
#   per-modality attentions, so a gap between them comes from the aggregation tokens and the softmax
#   normalization, not from pairwise interactions.
#
# ## 5. Results
#
# Every metric of every variant under `ablation_<sweep>/<variant>/<metric>` (the runner's summary shows one
# table per sweep), and the reference under `ablation_reference/deepavfusion/<metric>` (the checkpoint from 02).

# %%
results = {f"ablation_{s}": rows.loc[list(SWEEPS[s])].to_dict("index") for s in sweeps}
results["ablation_reference"] = {"deepavfusion": {f"{probe}_{k}": v for k, v in reference.items()}}
nb.record(results, paths.out_dir, cfg=cfg, pretrain_ckpt=pretrain_ckpt)

# %% [markdown]
# ## Summary
#
# - An ablation is a dictionary of config overrides. Each variant is pre-trained from scratch and judged by
#   the same probe, and the budget applies to all of them.
# - Fusion architecture: `none` is the no-interaction control. Because pair attention with linear keys is
#   separable, `dense` and `factorized` both reduce to sums of per-modality attentions. `factorized`
#   additionally carries learned per-modality aggregation tokens.
# - Fusion tokens and mask ratio are cheap knobs with clear hypotheses: a narrower bottleneck, and an easier
#   pretext task.
#
# ## Exercises
#
# 1. Re-run with `seed=1` (a new `run_dir`, or the cache returns the old runs). Which differences survive?
# 2. Judge the variants with a different probe, e.g. `probe="localization"`. Does the ranking of the fusion
#    architectures change when the task needs *where* rather than *what*?
# 3. Add a sweep with more fusion tokens (`{"model.num_fusion_tokens": 16}`) or fusion only in the last
#    layers (`{"model.fusion_layers": [2, 3]}` at `cpu`). Write the variant dictionary first, then predict.
# 4. Time `dense` with `{"model.pair_attention": "explicit"}` (every pair materialized) against the default
#    separable evaluation. The outputs are equal; how do the seconds compare?
#
# ## References
#
# - Mo & Morgado, CVPR 2024, ablation studies; [docs/official_implementation.md §1.3-1.5](../docs/official_implementation.md#13-fusion-tokens-and-fusion-blocks).
# - He et al., *Masked Autoencoders Are Scalable Vision Learners*, CVPR 2022; Huang et al., *Masked
#   Autoencoders that Listen*, NeurIPS 2022 (masking ratios).
# - Notebook 01 and `avlib.model.pair_attention` (the separable identity); `avlib.tasks.ablation`.
