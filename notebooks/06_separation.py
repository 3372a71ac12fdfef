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
# # 06 · Visually-guided source separation: mix and separate
#
# **Paper:** Mo & Morgado, *Unveiling the Power of Audio-Visual Early Fusion Transformers with Dense
# Interactions through Masked Modeling*, CVPR 2024 (arXiv:2312.01017), supplement **A.3** (protocol) and
# **Figure 3** (separated spectrograms). The official head and inference:
# [docs/official_implementation.md §3.6](../docs/official_implementation.md#36-separation). Metrics: [docs/metrics.md](../docs/metrics.md#separation).
#
# **What you will learn**
# 1. The *mix-and-separate* trick. Add two clips, then ask the model to pull one back out given the picture
#    of its source. The ground truth comes for free.
# 2. How the separation U-Net reads the mixture's audio tokens from every encoder layer, conditioned on the
#    target image, and predicts a time-frequency mask.
# 3. What the binary target "bins where the target is the most dominant component" means, and why the kit's
#    rule differs from the official code's.
# 4. How masks become waveforms (iSTFT with the mixture's phase), and what SDR, SIR, SAR and SDRi measure.
# 5. Pretrained vs scratch, in numbers, spectrograms (Figure 3) and sound.
#
# **Expected runtime** (2-core laptop CPU): `smoke` about 1 min · `cpu` about 2.5 min (two trainings of
# 1 epoch on 3,000 mixtures; BSS-Eval of the first 64 test mixtures, about 0.4 s per mixture, is a large
# part of it) · `paper` needs GPUs and VGGSound-Music.
#
# **Inputs:** `pretrain_ckpt`, the checkpoint written by `02_pretraining` (or an official DeepAVFusion
# checkpoint of the same size). Leave it empty to pre-train here first; the result is cached in `run_dir`.

# %%
from avlib import nb

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | cpu | paper (see avlib.config.PROFILES)
seed: int = 0  # seeds python, numpy and torch (also the config seed)
device: str = "auto"  # auto | cpu | cuda | mps
out_dir: str = ""  # metrics.json and figures; empty means reports/<profile>/06_separation/
run_dir: str = ""  # checkpoints and histories; empty means runs/<profile>/06_separation/
pretrain_ckpt: str = ""  # avmae.pt from 02 (ours or an official one); empty means pre-train here first
recipe: str = "supplement"  # supplement (seed supplement A.3) | official (ratio masks, weighted loss, AdamW)
explorers: bool = True  # show the ipywidgets explorers (papermill may hang on them, so the runner passes False)
overrides: dict = {}  # config overrides, e.g. {"separation.mask_rule": "official"}
num_examples: int = 4  # test mixtures kept for the figure, the explorer and the players
example: int = 0  # which of those mixtures the figure and the players show

# %%
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import display

from avlib import heads, tasks, viz, widgets
from avlib.audio import LOG_EPS
from avlib.config import make_config
from avlib.data import make_loaders

device = nb.setup(seed, device)
cfg = make_config(profile, recipe=recipe, overrides=nb.parse_overrides(overrides), seed=seed)
paths = nb.paths_for("06_separation", profile, out_dir, run_dir)
sr, hop = cfg.data.sample_rate, cfg.data.hop_length
cfg.separation

# %% [markdown]
# The checkpoint comes from 02. When you run this notebook on its own with `pretrain_ckpt` empty, it is
# pre-trained here with the same profile; `tasks.pretrain` resumes from `run_dir/pretrain`, so this is
# paid only once.

# %%
ckpt = pretrain_ckpt or tasks.pretrain(cfg, paths.run_dir / "pretrain", device=device).checkpoint
ckpt

# %% [markdown]
# ## 1. Mix and separate
#
# Supplement A.3 follows Sound-of-Pixels (Zhao et al., 2018). Take two scenes, each with one speaking digit
# of a different class, and **add their waveforms**: $x_\text{mix} = x_1 + x_2$. The model sees the
# mixture's log-mel spectrogram and the image of scene $k$, and must recover $x_k$. Both sources are known,
# so every mixture is labelled for free. Each mixture gives two training examples, one per image.
#
# **The model** (`AVSeparator`, the official `AVSrcSep`): the encoder runs on (target image, mixture audio)
# together, so the audio tokens are fused with that image from the first layer. A U-Net decoder then reads
# the mixture's audio tokens from several encoder layers (the deepest layer feeds the finest resolution)
# and is conditioned at every scale on the pooled target-image tokens. Transposed convolutions bring it
# back to the mel grid, where it outputs one mask logit per time-frequency bin.
#
# **The target.** Supplement A.3: the binary target marks "the time-frequency bins where the target source
# is the most dominant component in the mixture", trained with BCE (Adam, lr $10^{-4}$, 20 epochs). With
# power spectrograms $S$ and two sources, "dominant" means
# $S_\text{src} > S_\text{other} \approx S_\text{mix} - S_\text{src}$. That is the kit's default,
# `mask_rule="dominant"`. The official code's binary rule is $S_\text{src} > S_\text{mix}$. Since the mixture
# is a *sum*, $S_\text{mix} \approx S_\text{src} + S_\text{other}$, and that rule only holds where the other
# source happens to cancel the target's energy, so it marks far fewer bins (`config.py` and
# `heads.separation_targets` give the measurements). The cell below checks both rules on 16 test mixtures
# against true dominance, $S_\text{src} > S_\text{other}$. It counts only bins where the mixture is not
# silent. About a third of the bins are pure silence (each digit is shorter than the clip), where neither
# source dominates, the dominant rule marks both, and masking changes nothing. The docstring's numbers
# (the fraction of bins each rule marks) are over *all* bins of 100 random digit pairs, silent bins
# included; the table below counts only the non-silent bins of 16 test mixtures, so its fractions differ.
# (The official *README* recipe uses soft ratio masks instead: `recipe="official"`.)

# %%
nb.show_source(heads.separation_targets)

# %%
batch = next(iter(make_loaders(cfg, "separation", batch_size=16, test_size=16)[1]))   # 16 test mixtures
src_power = 10 ** batch["source_audio"]                       # (B, K, 1, F, T) power mels of the sources
truth = src_power > src_power.flip(1)                         # where the target is louder than the other
active = (10 ** batch["mix_audio"][:, None] > 2 * LOG_EPS).expand_as(truth)   # the mixture is not silent
marks = {f'mask_rule="{r}"': heads.separation_targets(batch["source_audio"], batch["mix_audio"][:, None],
                                                      rule=r) for r in ("dominant", "official")}
pd.DataFrame({name: {"marked": m.bool()[active].float().mean().item(),            # fraction of active bins
                     "agreement": (m.bool() == truth)[active].float().mean().item()}   # with true dominance
              for name, m in {"true dominance": truth, **marks}.items()}).T.round(3)

# %% [markdown]
# ## 2. From a mask back to sound
#
# At test time the soft mask $\sigma(\text{logits})$ lives on the mel grid. The official `SpectrogramMasking`
# maps it to linear frequency with the mel filterbank, multiplies it with the **complex STFT of the
# mixture**, keeping the mixture's phase, and inverts with the iSTFT. The model never predicts a phase: the
# separated source inherits the mixture's. This is one reason why separation quality saturates even with
# a perfect magnitude mask.
#
# ## 3. Training, pretrained vs scratch
#
# `tasks.compare_inits` trains the encoder and the U-Net twice, from the pre-trained checkpoint and from a
# random encoder. Finished runs are cached in `run_dir/<init>/`; delete that folder after you change
# `pretrain_ckpt`.

# %%
runs = tasks.compare_inits("separation", cfg, paths.run_dir, checkpoint=ckpt, device=device)
pd.DataFrame({init: r.metrics for init, r in runs.items()}).round(3)

# %% [markdown]
# The training loss of both runs. The dashed line is the loss of a *trivial* mask that only knows whether the
# mixture is silent: one value on the silent bins and one on all the others, each the mean target there
# (measured on section 1's mixtures, unweighted). A model near that line has learned where the silence is,
# not which source is which, and its SDRi will stay near 0 dB.

# %%
targets = heads.separation_targets(batch["source_audio"], batch["mix_audio"][:, None],
                                   binary=cfg.separation.binary_mask, rule=cfg.separation.mask_rule)
trivial = torch.where(active, targets[active].mean(), targets[~active].mean())   # silent / not silent
fig = viz.plot_history({init: r.history for init, r in runs.items()}, keys=["loss"],
                       title="separation: mask BCE while training",
                       references={"trivial mask": F.binary_cross_entropy(trivial, targets).item()})
nb.save_fig(fig, paths.out_dir, "training_loss")
fig

# %% [markdown]
# ## 4. The metrics: SDR, SIR, SAR and SDRi
#
# BSS-Eval v3 (`mir_eval.separation.bss_eval_sources`, the call of both DeepAVFusion and Sound-of-Pixels)
# splits each estimate into $\hat s = s_\text{target} + e_\text{interf} + e_\text{artif}$ by projecting onto
# the true sources, and reports in dB:
#
# - **SDR** $= 10\log_{10} \frac{\|s_\text{target}\|^2}{\|e_\text{interf} + e_\text{artif}\|^2}$: overall
#   quality (the number papers lead with);
# - **SIR** $= 10\log_{10} \frac{\|s_\text{target}\|^2}{\|e_\text{interf}\|^2}$: how much of the *other*
#   source leaks through;
# - **SAR** $= 10\log_{10} \frac{\|s_\text{target} + e_\text{interf}\|^2}{\|e_\text{artif}\|^2}$: artifacts
#   such as musical noise from the mask and the borrowed phase.
#
# The estimates are matched to the references by position, with no permutation search, since the image
# says which source is wanted. A mixture is skipped if any reference or estimate is silent
# ($\sum x^2 < 10^{-5}$, DeepAVFusion's rule; `n_skipped`). **SDRi** = SDR minus the SDR of the unprocessed
# mixture used as the estimate (`sdr_mix`). It is the improvement the model brings and is easier to compare
# across datasets than SDR. For two equally loud sources, `sdr_mix` is about 0 dB. One pattern to recognize:
# SDRi near 0 dB with a very high SAR and SIR equal to `sdr_mix` means the mask is close to all ones. The
# "separated" source is then the mixture itself, so the model has not started separating. At the `cpu`
# profile (1 epoch) both inits show this pattern (this run's numbers are below the chart).
#
# The dashed lines mark the unprocessed mixture: its SDR (`sdr_mix`) in the SDR panel, and 0 dB in the
# SDRi panel, where the axis is symmetric about 0 and spans at least ±1 dB, so that a few hundredths
# of a dB are not drawn as a big difference.

# %%
bars = {label: {init: r.metrics[key] for init, r in runs.items()}
        for key, label in [("sdr", "SDR (dB)"), ("sir", "SIR (dB)"), ("sar", "SAR (dB)"),
                           ("sdri", "SDRi (dB)")]}
sdr_mix = runs["pretrained"].metrics["sdr_mix"]              # the same test mixtures for both inits
fig = viz.compare_bars(bars, ylabel="dB", title="separation: pretrained vs scratch",
                       references={"SDR (dB)": {"mixture": sdr_mix}, "SDRi (dB)": {"mixture": 0.0}})
nb.save_fig(fig, paths.out_dir, "pretrained_vs_scratch")
fig

# %%
res = {init: r.metrics for init, r in runs.items()}
nb.narrate("""In this run (`{profile}`) SDRi is {ip:+.2f} dB (pretrained) and {is_:+.2f} dB (scratch); SAR
           {ap:.1f} vs {as_:.1f} dB; SIR {sp:.2f} vs {ss:.2f} dB, next to the mixture's SDR of {mix:.2f} dB.""",
           profile=profile, ip=res["pretrained"]["sdri"], is_=res["scratch"]["sdri"], ap=res["pretrained"]["sar"],
           as_=res["scratch"]["sar"], sp=res["pretrained"]["sir"], ss=res["scratch"]["sir"], mix=sdr_mix)

# %% [markdown]
# ## 5. Separated spectrograms (supplement Figure 3)
#
# Figure 3 of the supplement compares the spectrograms separated by Sound-of-Pixels, CCoL, OneAVM and
# DeepAVFusion with the ground truth. Here: one test mixture, its two ground-truth sources, and what each
# encoder's separator recovers for each source (log-mel of the re-synthesized waveform, one colour scale).
# At the `cpu` profile both separators return roughly the mixture, at about half its amplitude, for both
# sources: the mask stays near one half wherever the mixture has energy, so the two estimates look alike.

# %%
examples = {init: tasks.predict_examples("separation", r.model, cfg, n=num_examples, device=device)
            for init, r in runs.items()}
ex = examples["pretrained"]
fig = viz.separation_figure(ex["mix_audio"][example], ex["gt_audio"][example],
                            {"scratch": examples["scratch"]["pred_audio"][example],
                             "DeepAVFusion (pretrained)": ex["pred_audio"][example]},
                            sample_rate=sr, hop_length=hop)
nb.save_fig(fig, paths.out_dir, "figure3_separation")
fig

# %% [markdown]
# ## 6. Listen
#
# The waveforms of the same mixture: each source's ground truth (blue) with the pre-trained model's
# separation (orange) on top. Below them are players for the mixture, each ground truth and each
# separation, and then the scratch model's separations for comparison. At the `cpu` profile each orange
# trace is roughly the mixture at half amplitude, for both sources. The players normalize loudness, so a
# half-amplitude estimate sounds like the mixture itself.

# %%
fig, players = widgets.render_separation(ex["mix_waveform"], ex["pred_waveforms"], ex["gt_waveforms"], sr,
                                         index=example)
nb.save_fig(fig, paths.out_dir, "waveforms")
fig

# %%
for label, player in players.items():
    print(f"{label} (pretrained model)" if "separated" in label else label)
    display(player)
scratch = widgets.audio_players({f"source {k + 1}: separated (scratch model)": w
                                 for k, w in enumerate(examples["scratch"]["pred_waveforms"][example])},
                                sr, reference=ex["mix_waveform"][example])
for label, player in scratch.items():
    print(label)
    display(player)

# %% [markdown]
# ### Explore
#
# The same view with a slider over the kept test mixtures (JupyterLab with ipywidgets; batch runs pass
# `explorers=False`, because papermill can hang on widget output, and executed copies show a static gallery
# of the first examples instead). To hear the scratch model instead, pass
# `examples["scratch"]["pred_waveforms"]`.

# %%
# the runner passes explorers=False: a static gallery of the same views
widgets.separation_explorer(ex["mix_waveform"], ex["pred_waveforms"], ex["gt_waveforms"], sr, static=not explorers)

# %% [markdown]
# ## 7. Results
#
# Every metric of both initializations under `separation/<init>/<metric>` (`sdr`, `sir`, `sar`, `sdr_mix`,
# `sdri`, and the counts `n_kept` / `n_skipped`). The runner's pretrained-vs-scratch table is built from
# these keys.

# %%
results = {"separation": {init: r.metrics for init, r in runs.items()},
           "seconds": {f"separation_{init}": r.seconds for init, r in runs.items()}}
nb.record(results, paths.out_dir, cfg=cfg, pretrain_ckpt=str(ckpt))

# %% [markdown]
# ## Summary
#
# - Mix-and-separate turns any collection of single-source clips into a supervised separation task. The
#   image tells the model which source to keep.
# - The separator predicts a mel-grid mask from the mixture's multi-layer audio tokens, conditioned on the
#   target image. The waveform comes from masking the mixture's STFT and keeping its phase.
# - "Dominant" has to be defined. `S_src > S_mix - S_src` matches the supplement's wording. The official
#   binary rule `S_src > S_mix` marks only the bins where the sources cancel, and the README trains soft
#   ratio masks anyway.
# - Report SDRi next to SDR: it removes how hard the mixture was to begin with. Before comparing
#   initializations, check that training went below the trivial-mask loss. At a short budget both runs can
#   learn only where the silence is, and then SDRi stays near 0 dB for both.
#
# ## Exercises
#
# 1. Train with the official binary rule (`overrides={"separation.mask_rule": "official"}`). How do SDR and
#    SIR change, and does the agreement table above explain it?
# 2. Try the official README recipe (`recipe="official"`: ratio masks, weighted BCE, AdamW). Ratio masks
#    are soft targets; which of SIR or SAR do they help?
# 3. Give the U-Net the *wrong* image (the other source's). What should SIR do? (Hint: look at how
#    `protocols.separation_inputs` pairs images and sources.)
# 4. Freeze the encoder (`{"separation.train.freeze_encoder": True}`). How much of the separation comes
#    from the pre-trained features alone?
# 5. Train longer (`{"separation.train.epochs": 10}`, a new `run_dir`). When does the loss leave the
#    trivial-mask line, and does SDRi follow? (Ours: 3 epochs at lr 1e-3 are not enough, SDRi stays at
#    0 dB: the masks still pass the mixture through.)
#
# ## References
#
# - Mo & Morgado, CVPR 2024, supplement A.3 and Figure 3 ([docs/protocols.md](../docs/protocols.md#a3-separation)).
# - Zhao et al., *The Sound of Pixels*, ECCV 2018 (mix-and-separate, binary masks).
# - Vincent, Gribonval & Févotte, *Performance Measurement in Blind Audio Source Separation*, IEEE TASLP
#   2006 (SDR / SIR / SAR); Raffel et al., *mir_eval*, ISMIR 2014.
# - `avlib.heads.AVSeparator`, `avlib.audio.apply_mel_mask`, `avlib.metrics.SeparationEvaluator`.
