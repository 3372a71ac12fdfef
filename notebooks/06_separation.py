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
# 5. What each stage of pre-training buys, at the same budget: a random encoder (`scratch`), the unimodal
#    MAEs (`unimodal`: the ViTs that DeepAVFusion's audio-visual stage starts from, with a fresh fusion
#    stream) and DeepAVFusion (`deepavfusion`). The paper's claim is the gap **DeepAVFusion − unimodal**:
#    what audio-visual early fusion adds to its unimodal starting point. In numbers, spectrograms
#    (Figure 3) and sound, with the supplement's comparison methods when `methods` names them.
#
# **Expected runtime** (2-core laptop CPU): one separation training per initialization (three, plus one per
# comparison method in `methods`, with its zero-shot read-out where it has one). BSS-Eval of the scored test
# mixtures (`separation.eval_mixtures`) is a large part of each run. `smoke` takes seconds per run; the
# runner's `summary.md` lists the wall time of every notebook at every profile. `paper` needs GPUs and
# VGGSound-Music.
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
out_dir: str = ""  # metrics.json and figures; empty means reports/<profile>/06_separation/
run_dir: str = ""  # checkpoints and histories; empty means runs/<profile>/06_separation/
pretrain_ckpt: str = ""  # DeepAVFusion checkpoint from 02 (or an official one); empty: the zoo's, or pre-train here
unimodal_ckpt: str = ""  # the unimodal MAEs' checkpoint from 02; empty: the zoo's (no unimodal row without a zoo)
methods: list = []  # comparison methods (zoo entries), e.g. ["sound_of_pixels", "ccol"]; the main job runs none
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

from avlib import baselines, budgets, heads, tasks, viz, widgets, zoo
from avlib.audio import LOG_EPS
from avlib.config import make_config
from avlib.data import make_loaders
from avlib.reproduce import ordered_inits

device = nb.setup(seed, device)
cfg = make_config(profile, recipe=recipe, overrides=nb.parse_overrides(overrides), seed=seed)
paths = nb.paths_for("06_separation", profile, out_dir, run_dir)
sr, hop = cfg.data.sample_rate, cfg.data.hop_length
cfg.separation

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
# ## 3. Training from three initializations
#
# `tasks.compare_inits` trains the encoder and the U-Net once per initialization, with the same recipe and
# budget. Finished runs are cached in `run_dir/<initialization>/`; delete that folder after you change a
# checkpoint.

# %%
runs = tasks.compare_inits("separation", cfg, paths.run_dir, inits, device=device)
pd.DataFrame({name: r.metrics for name, r in runs.items()}).round(3)

# %% [markdown]
# The learning curves of every run. Left: the training loss, with the loss of a *trivial* mask dashed: a
# mask that only knows whether the mixture is silent, one value on the silent bins and one on all the
# others, each the mean target there (measured on section 1's mixtures, unweighted). A model near that line
# has learned where the silence is, not which source is which, and its SDRi will stay near 0 dB. Right: the
# SDRi at each evaluation of the run (`separation.train.eval_every` epochs apart; the small profiles
# evaluate once, at the end), with the unprocessed mixture's 0 dB dashed.

# %%
targets = heads.separation_targets(batch["source_audio"], batch["mix_audio"][:, None],
                                   binary=cfg.separation.binary_mask, rule=cfg.separation.mask_rule)
trivial_mask = torch.where(active, targets[active].mean(), targets[~active].mean())   # silent / not silent
fig = viz.plot_history({name: r.history for name, r in runs.items()}, keys=["loss", "sdri"],
                       title="separation: learning curves",
                       references={"loss": {"trivial mask": F.binary_cross_entropy(trivial_mask, targets).item()},
                                   "sdri": {"mixture": 0.0}})
nb.save_fig(fig, paths.out_dir, "learning_curves")
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
# "separated" source is then the mixture itself, so the model has not started separating. The sentences
# below the chart say whether this run shows the pattern.
#
# The dashed lines mark the unprocessed mixture: its SDR (`sdr_mix`) in the SDR panel, and 0 dB in the
# SDRi panel, where the axis is symmetric about 0 and spans at least ±1 dB, so that a few hundredths
# of a dB are not drawn as a big difference.

# %%
bars = {label: {name: r.metrics[key] for name, r in runs.items()}
        for key, label in [("sdr", "SDR (dB)"), ("sir", "SIR (dB)"), ("sar", "SAR (dB)"),
                           ("sdri", "SDRi (dB)")]}
sdr_mix = runs["deepavfusion"].metrics["sdr_mix"]            # the same test mixtures for every init
fig = viz.compare_bars(bars, ylabel="dB", title="separation from each initialization",
                       references={"SDR (dB)": {"mixture": sdr_mix}, "SDRi (dB)": {"mixture": 0.0}})
nb.save_fig(fig, paths.out_dir, "initializations")
fig

# %% [markdown]
# Before reading a gap, check that the task left its trivial baseline, the unprocessed mixture (SDRi 0 dB).
# The kit reads an SDRi of at least `min_sdri` (below) as having left it. If no initialization does, the
# profile's training budget was too short for this task, whatever the initialization, and the bars compare
# noise around the mixture. The sentences below read this run's numbers and say which case this is. The gap
# to read first is DeepAVFusion − unimodal, the paper's claim.

# %%
res = {name: r.metrics for name, r in runs.items()}
min_sdri = 1.0          # dB: the kit's reading of "separates" (the least span of an SDRi axis, viz.SYMMETRIC_METRICS)


def listing(values, fmt):
    return ", ".join(f"{viz.method_name(k)} {values[k]:{fmt}}" for k in ordered_inits([values]))


def gap(key, a, b):
    return f"{res[a][key] - res[b][key]:+.2f} dB" if a in res and b in res else "not measured"


left = [name for name in runs if res[name]["sdri"] >= min_sdri]
nb.narrate("""In this run (`{profile}`) SDRi is {sdri}; SAR {sar}; SIR {sir}, next to the mixture's SDR of
           {mix:.2f} dB. DeepAVFusion − unimodal (the paper's claim): {du} SDR; DeepAVFusion − scratch: {ds}.
           {verdict}""", profile=profile, sdri=listing({k: v["sdri"] for k, v in res.items()}, "+.2f"),
           sar=listing({k: v["sar"] for k, v in res.items()}, ".1f"),
           sir=listing({k: v["sir"] for k, v in res.items()}, ".2f"), mix=sdr_mix,
           du=gap("sdr", "deepavfusion", "unimodal"), ds=gap("sdr", "deepavfusion", "scratch"),
           verdict=(nb.narrate("An SDRi of at least {m:.1f} dB: {names}, so these runs separate, and their gaps "
                               "can be read.", m=min_sdri, names=", ".join(map(viz.method_name, left))) if left else
                    nb.narrate("**No initialization left the trivial baseline** (an SDRi of at least {m:.1f} dB): "
                               "at this budget no separator improves on the unprocessed mixture, "
                               "from any initialization, and this comparison says nothing about pre-training yet. The "
                               "learning curves of section 3 show it. How long each initialization needs is "
                               "measured on the validation split by `python -m avlib.budgets` (curves in "
                               "`reports/{profile}/budgets/`), and [docs/pretraining.md](../docs/pretraining.md"
                               "#downstream-budgets-chosen-on-validation) explains how the budgets were chosen.",
                               m=min_sdri, profile=profile)))

# %% [markdown]
# The validation curves of `python -m avlib.budgets`, where they have been measured for this profile: the
# same protocol from each initialization, scored on the validation mixtures after every epoch of a longer
# run, with the minutes of training on the top axis.

# %%
budgets.task_figure(profile, "separation")

# %% [markdown]
# ### The comparison methods' own masks (zero-shot)
#
# Sound-of-Pixels, CCoL and OneAVM-style were pre-trained to separate: each predicts a mask for the mixture
# given an image before any separation training, its zero-shot read-out (docs/baselines.md). One rule for
# every method: the method's own test-time inference with the trained weights (thresholded where its test
# thresholds), on the kit's inputs, with nothing added. `baselines.zero_shot_separation` scores the masks
# through the downstream protocol's own path (mel mask, linear-frequency mask on the mixture's STFT, iSTFT,
# BSS-eval) on the same test mixtures. A silent estimate makes the evaluator skip the pair, so `n_skipped`
# goes with every number. This runs only when `methods` names comparison methods.

# %%
zero_shot = {}
for name in baselines.with_readout(methods, "separation_mask"):
    objective, model, _ = baselines.load_objective_model(inits[name][1], device=device)
    zero_shot[name] = baselines.zero_shot_separation(objective, model, cfg, device=device)
if zero_shot:
    display(pd.DataFrame({f"{viz.method_name(n)}, {when}": m for n in zero_shot
                          for when, m in (("zero-shot", zero_shot[n]), ("trained", res[n]))}).T.round(3))
    scored = {n: (f"{viz.method_name(n)} {m['sdri']:+.2f} dB ({m['n_skipped']:.0f} of "
                  f"{m['n_kept'] + m['n_skipped']:.0f} mixtures skipped)" if m["n_kept"] else
                  f"{viz.method_name(n)} not scored (every estimate silent)") for n, m in zero_shot.items()}
    display(nb.narrate("Zero-shot SDRi: {zs}. After separation training: {trained} (DeepAVFusion {d:+.2f} dB).",
                       zs="; ".join(scored.values()), trained=listing({n: res[n]["sdri"] for n in zero_shot}, "+.2f"),
                       d=res["deepavfusion"]["sdri"]))
else:
    print("no comparison method with a separation read-out in `methods`: nothing to score zero-shot")

# %% [markdown]
# ## 5. Separated spectrograms (supplement Figure 3)
#
# Figure 3 of the supplement compares the spectrograms separated by Sound-of-Pixels, CCoL, OneAVM and
# DeepAVFusion with the ground truth. Here: test mixture `example` of the first `num_examples` (always the
# same ones), its two ground-truth sources, and what each model's separator recovers for each source
# (log-mel of the re-synthesized waveform, one colour scale). The columns are the three initializations, or,
# when `methods` names comparison methods, DeepAVFusion and each method, as the supplement draws them; every
# separator comes from the same protocol (section 3, on that model's encoder). A separator that has not
# left the trivial baseline returns roughly the mixture for both sources (a mask near one half wherever the
# mixture has energy), so its two estimates look alike. Section 6 plays every spectrogram of the figure.

# %%
shown = [n for n in (["deepavfusion", *methods] if methods else ["scratch", "unimodal", "deepavfusion"]) if n in runs]
examples = {name: tasks.predict_examples("separation", runs[name].model, cfg, n=num_examples, device=device)
            for name in shown}
ex = examples["deepavfusion"]                    # the same mixtures in every column
fig = viz.separation_figure(ex["mix_audio"][example], ex["gt_audio"][example],
                            {viz.method_name(n): examples[n]["pred_audio"][example] for n in shown},
                            sample_rate=sr, hop_length=hop)
nb.save_fig(fig, paths.out_dir, "figure3_separation")
fig

# %% [markdown]
# ## 6. Listen
#
# The waveforms of the same mixture: each source's ground truth (blue) with DeepAVFusion's separation
# (orange) on top. Below them is one player for every spectrogram of Figure 3: the mixture, each source's
# ground truth, and each model's separation of each source. All players share one loudness scale, the
# mixture's peak, so a half-amplitude estimate sounds half as loud as the mixture.

# %%
fig, _ = widgets.render_separation(ex["mix_waveform"], ex["pred_waveforms"], ex["gt_waveforms"], sr, index=example)
nb.save_fig(fig, paths.out_dir, "waveforms")
fig

# %%
clips = {"mixture": ex["mix_waveform"][example]}
for k, wave in enumerate(ex["gt_waveforms"][example]):
    clips[f"source {k + 1}: ground truth"] = wave
    clips.update({f"source {k + 1}: {viz.method_name(n)}": examples[n]["pred_waveforms"][example][k] for n in shown})
for label, player in widgets.audio_players(clips, sr, reference=ex["mix_waveform"][example]).items():
    print(label)
    display(player)

# %% [markdown]
# ### Explore
#
# The same view with a slider over the kept test mixtures (JupyterLab with ipywidgets; batch runs pass
# `explorers=False`, because papermill can hang on widget output, and executed copies show a static gallery
# of the first examples instead). To hear another model, pass its `examples[name]["pred_waveforms"]`.

# %%
# the runner passes explorers=False: a static gallery of the same views
widgets.separation_explorer(ex["mix_waveform"], ex["pred_waveforms"], ex["gt_waveforms"], sr, static=not explorers)

# %% [markdown]
# ## 7. Results
#
# Every metric of every initialization under `separation/<initialization>/<metric>` (`sdr`, `sir`, `sar`,
# `sdr_mix`, `sdri`, and the counts `n_kept` / `n_skipped`) for `scratch`, `unimodal`, `deepavfusion` and
# each comparison method; the comparison methods' zero-shot scores under `separation_zero_shot/<method>/*`
# (only with `methods`). The runner and notebook 08 build their tables from these keys.

# %%
results = {"separation": {name: r.metrics for name, r in runs.items()},
           "separation_zero_shot": zero_shot,
           "seconds": {f"separation_{name}": r.seconds for name, r in runs.items()}}
nb.record(results, paths.out_dir, cfg=cfg, pretrain_ckpt=str(inits["deepavfusion"][1]),
          unimodal_ckpt=str(inits["unimodal"][1]) if "unimodal" in inits else "")

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
#   initializations, check that training went below the trivial-mask loss. At a short budget every run can
#   learn only where the silence is, and then SDRi stays near 0 dB for all of them.
# - The gap to read is DeepAVFusion − unimodal: what audio-visual pre-training adds to its unimodal start
#   (the paper's claim). Report it as measured, whichever way it goes.
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
#    trivial-mask line, and does SDRi follow? `python -m avlib.budgets --profile cpu --tasks separation`
#    draws the same curves on the validation split.
#
# ## References
#
# - Mo & Morgado, CVPR 2024, supplement A.3 and Figure 3 ([docs/protocols.md](../docs/protocols.md#a3-separation)).
# - Zhao et al., *The Sound of Pixels*, ECCV 2018 (mix-and-separate, binary masks).
# - Vincent, Gribonval & Févotte, *Performance Measurement in Blind Audio Source Separation*, IEEE TASLP
#   2006 (SDR / SIR / SAR); Raffel et al., *mir_eval*, ISMIR 2014.
# - `avlib.heads.AVSeparator`, `avlib.audio.apply_mel_mask`, `avlib.metrics.SeparationEvaluator`.
