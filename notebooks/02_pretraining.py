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
# # 02 · Masked audio-visual pre-training
#
# **Paper.** Mo & Morgado, *Unveiling the Power of Audio-Visual Early Fusion Transformers with Dense
# Interactions through Masked Modeling*, CVPR 2024 ([arXiv:2312.01017](https://arxiv.org/abs/2312.01017)), Sec. 3.
# Official recipe: [docs/official_implementation.md](../docs/official_implementation.md) §1.5 (decoders and loss) and §3.1 (schedule).
#
# An early-fusion encoder has many more interactions to learn than two separate encoders. The paper's
# answer is to train it without labels by **masked reconstruction of both modalities**, as MAE and
# AudioMAE do for one modality. Many patches of the image and the spectrogram are hidden (half at the
# small profiles, 75 % / 80 % in the paper), and the model must fill them in from what is left of
# *both* inputs.
#
# **Learning goals**
# 1. Know the AVMAE objective: what is masked, what the two decoders see (including the fusion tokens),
#    and the normalized-pixel loss on masked patches only.
# 2. Pre-train the model of notebook 01 on AV-Digits and read the loss curves.
# 3. Read the official pre-training monitor, the 1-nearest-neighbour probe of the image, audio and
#    fusion tokens.
# 4. Look at, and listen to, reconstructions of masked images and spectrograms.
# 5. Compare the attention maps of notebook 01 before and after pre-training.
#
# **Expected runtime** (2-core machine, no GPU): smoke and cpu about a minute for the live run below (cpu:
# 4 epochs of 3,000 scenes at batch 64; the zoo's stages, which 03-07 start from, are loaded, not trained) ·
# paper: not a notebook job (ViT-B on VGGSound, 200 epochs on 8 GPUs; see section 9).
# A finished run in `run_dir` is **reused**, so re-running this notebook takes seconds.

# %%
import pandas as pd
import torch
from IPython.display import display

from avlib import nb, probes, tasks, viz, widgets, zoo
from avlib.config import make_config
from avlib.data import make_loaders
from avlib.model import AVMAE, build_avmae

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | cpu | paper
seed: int = 0  # weight init, data order, masks
device: str = "auto"  # auto | cpu | cuda
out_dir: str = ""  # metrics and figures; empty means reports/<profile>/02_pretraining/
run_dir: str = ""  # checkpoints and history.json; empty means runs/<profile>/02_pretraining/
overrides: dict = {}  # config overrides as dotted keys, e.g. {"pretrain.epochs": 2}
eval_every: int = 2  # epochs between evaluations (test losses and 1-NN probe); 0 means only at the end
use_zoo: bool = True  # hand the zoo's staged checkpoints to 03-07 (profiles with a zoo); False: this notebook's run
rebuild_zoo: bool = False  # train the zoo's stages here (run_dir/zoo) instead of loading the committed files

# %%
device = nb.setup(seed, device)
cfg = make_config(profile, overrides={"pretrain.eval_every": eval_every, **nb.parse_overrides(overrides)}, seed=seed)
paths = nb.paths_for("02_pretraining", profile, out_dir, run_dir)
m, p = cfg.model, cfg.model.patch_size
print(f"mask ratios: image {m.image_mask_ratio}, audio {m.audio_mask_ratio} | decoders: width {m.decoder_embed_dim}, "
      f"depth {m.decoder_depth} | norm_pix_loss {m.norm_pix_loss} | run_dir {paths.run_dir}")
cfg.pretrain

# %% [markdown]
# ## 1. The objective (AVMAE)
#
# One pre-training step (official `models/avmae.py::AVMAE`, [§1.5](../docs/official_implementation.md#15-masked-modeling)):
#
# 1. **Mask** each modality independently and per sample. The paper removes 75 % of the image tokens
#    and 80 % of the audio tokens; the small profiles remove 50 % of each (`random_masking`, notebook 01).
#    The fusion tokens are never masked.
#
#    The small profiles deviate on purpose. At patch 16 their image and spectrogram are 4 × 4 token
#    grids, so 0.75 / 0.8 would leave only 4 / 3 visible tokens. In a cpu run with those ratios (and
#    lr 1e-3) the pooled audio features ended worse than a random encoder's in the 1-NN probe, and
#    fine-tuning from that checkpoint lost to training from scratch. Notebook 07 measures the two settings
#    side by side.
# 2. **Encode** only the kept tokens with the DeepAVFusion encoder. The fusion tokens mix the two
#    modalities at every layer.
# 3. **Decode** each modality with its own small ViT. The kept tokens are embedded, a learned mask
#    token fills each removed position, everything is un-shuffled back to patch order and gets a
#    (trainable) position embedding. The **normalized fusion tokens**, passed through the same
#    decoder embedding, are *prepended*. The decoder therefore sees what the encoder learned about
#    the *other* modality, and its fusion positions are dropped before the prediction head.
# 4. **Score** the masked patches only. The target is each patch standardized by its own mean and
#    (unbiased) std (`norm_pix_loss`), the error is the MSE over the patch's values, averaged over masked
#    patches, and the total loss is **image + audio** (weights 1:1).
#
# Because the targets are standardized, a decoder that predicts zeros scores about 1 on every patch
# with some structure. A constant patch scores 0 (silence in a spectrogram is constant at the -7
# floor, and its standardized target is all zeros). "About 1, less where there is silence" is the
# number to beat.

# %%
display(nb.show_source(AVMAE.forward_decoder), nb.show_source(AVMAE.forward_loss))

# %% [markdown]
# Before training, one forward pass of a freshly initialized model on a few test scenes (the masks come
# from a seeded generator):

# %%
batch = next(iter(make_loaders(cfg, batch_size=4)[1]))
image, audio = batch["image"].to(device), batch["audio"].to(device)
torch.manual_seed(seed)
avmae0 = build_avmae(m).to(device).eval()
with torch.no_grad():
    out0 = avmae0(image, audio, generator=torch.Generator().manual_seed(seed))
Nv, Na = m.image_grid[0] * m.image_grid[1], m.audio_grid[0] * m.audio_grid[1]
nb.check_shape(out0.pred_image, ("B", Nv, p * p * 3), "image predictions (every patch)")
nb.check_shape(out0.pred_audio, ("B", Na, p * p), "audio predictions")
print(f"loss at init: {out0.loss:.3f} = image {out0.loss_image:.3f} + audio {out0.loss_audio:.3f} | "
      f"masked: image {out0.mask_image.mean():.0%}, audio {out0.mask_audio.mean():.0%}")

# %% [markdown]
# ## 2. Pre-train
#
# `tasks.pretrain` wires the AVMAE loss to the kit's single training loop (`avlib.train.fit`), which follows the
# official recipe: AdamW (β = 0.9, 0.95, weight decay 0.05, none on norms and biases), linear warm-up,
# then a cosine schedule, all per step. The small profiles set the lr directly (3e-4) instead of
# scaling a base lr with the batch size. Every `eval_every` epochs it evaluates two things on the test split:
# * the masked-reconstruction losses with **fixed** masks, so successive evaluations are comparable;
# * the official 1-NN probe (section 4).
#
# The loop writes `run_dir/checkpoint_last.pt` after every epoch and resumes from it. A **finished**
# run is simply loaded, so re-running the notebook does not retrain. The result, `avmae.pt`, uses the
# official checkpoint layout, and notebooks 03-07 start from it.

# %%
pre = tasks.pretrain(cfg, paths.run_dir, device=device)
meta = pre.history.meta
print(f"{meta['total_steps']} steps ({meta['steps_per_epoch']} per epoch) at batch {meta['eff_batch']}, lr {meta['lr']:.1e} | "
      f"this call took {pre.seconds:.0f} s | checkpoint {pre.checkpoint}")

# %% [markdown]
# ## 3. Loss curves
#
# The training losses (averaged over the steps since the previous log line) and the test losses (fixed
# masks) for each modality. The two curves should agree, since the test scenes are new compositions of
# held-out recordings and images. At the `cpu` profile the audio loss falls further than the image loss
# (this run's numbers are below the figure). A plausible reason is that a spoken digit is a few
# smooth harmonic bands that continue across patch borders, while a masked image patch holds part of a
# digit stroke that no visible patch reveals. The model learns the average "blob" (section 5).

# %%
val = [{"step": e["step"], "loss": e["val_loss"], "loss_image": e["val_loss_image"], "loss_audio": e["val_loss_audio"]}
       for e in pre.history.evals]
fig = viz.plot_history({"train": pre.history.steps, "test (fixed masks)": val}, ["loss", "loss_image", "loss_audio"],
                       title="masked-reconstruction loss (image + audio)")
nb.save_fig(fig, paths.out_dir, "loss_curves")
fig

# %%
first, final = pre.history.steps[0], pre.history.steps[-1]
nb.narrate("""In this run (`{profile}`, {steps} steps) the training loss of the audio patches went from
           {a0:.2f} to {a1:.2f} ({da:.0%} lower) and that of the image patches from {i0:.2f} to {i1:.2f}
           ({di:.0%} lower).""", profile=profile, steps=final["step"], a0=first["loss_audio"],
           a1=final["loss_audio"], da=1 - final["loss_audio"] / first["loss_audio"], i0=first["loss_image"],
           i1=final["loss_image"], di=1 - final["loss_image"] / first["loss_image"])

# %% [markdown]
# ## 4. The 1-NN probe: do the pooled tokens group the scenes by class?
#
# The official code monitors pre-training with a leave-one-out 1-nearest-neighbour classifier
# (`util/knn_probe.py`, [docs/metrics.md](../docs/metrics.md#nearest-neighbour-probe)). Each test scene is represented by its mean-pooled,
# L2-normalized image tokens, audio tokens and fusion tokens. A scene is classified by the label of its
# most cosine-similar other scene, and "all" sums the three similarity matrices. No labels are used
# for training. Chance is 1/10.
#
# In AV-Digits the label is the **sounding** digit. The image alone cannot say which of its digits
# speaks, so image tokens should stay near chance. On VGGSound the official README shows the probe
# rising during pre-training, to about 37 % for fusion tokens, 22 % for audio and 9.5 % for image
# tokens after ~62k steps (309 classes, chance 0.3 %).
#
# As a reference point we also probe the **untrained** encoder (step 0 in the plot). Random
# projections of a spectrogram already group similar sounds.

# %%
_, test_loader = make_loaders(cfg)
nn_init = probes.knn_probe(avmae0.encoder, test_loader, device)
print("1-NN accuracy (%) of the untrained encoder:", {k: round(v, 1) for k, v in nn_init.items()})

# %%
nn_key = "1-NN accuracy (%)"
acc = {k: [{"step": 0, nn_key: nn_init[f"nn_{k}"]}] + [{"step": e["step"], nn_key: e[f"nn_{k}"]} for e in pre.history.evals]
       for k in ("image", "audio", "fusion", "all")}
chance = tasks.chance_top1(cfg)                                  # 1 / number of classes, in %
fig = viz.plot_history(acc, nn_key, title="1-NN probe on the test scenes (leave-one-out; step 0 = untrained)",
                       references={f"chance ({chance:.0f} %)": chance}, legend_title="tokens")
nb.save_fig(fig, paths.out_dir, "knn_probe")
fig

# %%
curve = {k: [r[nn_key] for r in v] for k, v in acc.items()}                # step 0 (untrained) first
best = {k: max(range(len(c)), key=c.__getitem__) for k, c in curve.items()}
nb.narrate("""In this run the fusion probe went from {f0:.0f} % (untrained) to a best of {fb:.0f} % at step
           {fs} and ended at {f1:.0f} %; the audio probe from {a0:.0f} % to {a1:.0f} % (best {ab:.0f} %);
           the image probe ended at {i1:.0f} %, with chance at {chance:.0f} %.""",
           f0=curve["fusion"][0], fb=curve["fusion"][best["fusion"]], fs=acc["fusion"][best["fusion"]]["step"],
           f1=curve["fusion"][-1], a0=curve["audio"][0], a1=curve["audio"][-1], ab=max(curve["audio"]),
           i1=curve["image"][-1], chance=chance)

# %% [markdown]
# **Reading the probe.** Compare your run with the untrained point (the sentence above is this run's
# numbers). On AV-Digits at the `cpu` profile the picture is mixed. The fusion probe rises above its
# untrained level for the first few epochs, then falls back. The audio probe never beats what random
# features already reach and drifts down. The image probe stays near chance, as expected: the picture
# shows four digits and the label is the one that speaks.
# Meanwhile the reconstruction losses keep falling, so the probes peak early while the objective still
# improves. This is not a bug. Masked reconstruction rewards whatever helps fill in patches: where in the
# clip the word sits, the speaker's voice, the digits' colours and positions. Cosine
# distance between *mean-pooled* tokens weighs all of that, and the digit's identity is only a small
# part of it. MAE features are known to need a trained read-out: MAE's linear probe lags its
# fine-tuning. The probe is a cheap monitor, not the evaluation. Notebook 03 asks the real question with
# a trained linear probe and fine-tuning, against the same encoder trained from scratch (exercise 4).
#
# ## 5. Reconstructions
#
# The pre-trained model on the same test scenes with a seeded mask. Each panel shows the original,
# what the encoder saw (masked patches in grey), and the input with its masked patches replaced by the
# predictions. With `norm_pix_loss` the model predicts *standardized* patches. For display, each
# prediction is mapped back with its target patch's own mean and std (the usual MAE visualization),
# so the overall brightness of a patch comes from the target, and the structure inside it comes from
# the model.

# %%
model = pre.model.to(device).eval()
with torch.no_grad():
    out = model(image, audio, generator=torch.Generator().manual_seed(seed))
    rec_image, rec_audio = model.reconstruct(image, audio, out)
nb.check_shape(rec_image, tuple(image.shape), "reconstructed images")
nb.check_shape(rec_audio, tuple(audio.shape), "reconstructed spectrograms")
print(f"test loss on these {image.shape[0]} scenes: image {out.loss_image:.3f}, audio {out.loss_audio:.3f} "
      f"(at init: {out0.loss_image:.3f}, {out0.loss_audio:.3f})")

# %%
for i in range(2):
    fig_v = viz.show_reconstruction(image[i], None, rec_image[i], kind="image", mask=out.mask_image[i], patch_size=p)
    fig_a = viz.show_reconstruction(audio[i], None, rec_audio[i], kind="audio", mask=out.mask_audio[i], patch_size=p,
                                    sample_rate=cfg.data.sample_rate, hop_length=cfg.data.hop_length)
    nb.save_fig(fig_v, paths.out_dir, f"reconstruction_image_{i}")
    nb.save_fig(fig_a, paths.out_dir, f"reconstruction_audio_{i}")
    display(fig_v, fig_a)

# %% [markdown]
# **Listen.** The same spectrograms as sound: the recording, then the original log-mel, the masked input
# and the reconstruction, each turned back into a waveform the same way (`audio.mel_to_waveform`: undo the
# log, invert the mel filterbank, Griffin-Lim for a phase, since a log-mel has none). The inversion makes
# all three a little muffled and metallic, so compare them with each other rather than with the recording.
# The players share one loudness scale, so the masked input sounds quieter where its patches are silent.

# %%
players = widgets.reconstruction_players(audio[0], rec_audio[0], out.mask_audio[0], p, cfg.data,
                                         recording=batch.get("waveform", [None])[0])
for label, player in players.items():
    print(label)
    display(player)

# %% [markdown]
# ## 6. Attention after pre-training
#
# Notebook 01 drew two attention maps of a *freshly initialized* encoder and promised to come back to them
# here: the image ViT's first block (self-attention over `[fusion ; image tokens]`) and the last fusion
# block's visual-aggregation tokens reading the image. Below are the same maps for the same test scene,
# untrained (top row) and pre-trained (bottom row), on one colour scale. The untrained patterns come
# from random projections of the inputs and have nothing to do with the scene. What to look for: whether
# a head sends the image queries to the fusion tokens or to the patches (the blocks of each map), and
# whether all queries of a head read the same few keys (vertical stripes). At the `cpu` profile, after
# pre-training, the heads of the first image block split by token type (some read mostly the fusion
# tokens, others mostly the patches), and the aggregation tokens of the last fusion block read the image
# almost uniformly and all alike: a pooled summary, not a pointer to the sounding cell. Whether anything
# here is *about the scene*, such as the speaking digit's cell, is what the localization maps of
# notebook 04 test.

# %%
with torch.no_grad():
    attn = {name: mae.encoder(image, audio, return_attn=True).attn
            for name, mae in [("untrained", avmae0), ("pre-trained", model)]}
Nf, last = m.num_fusion_total, m.depth - 1
groups = [("fusion", Nf), ("image", Nv)]
fig = viz.show_attention({name: a["image.blocks.0"][0] for name, a in attn.items()}, q_groups=groups,
                         k_groups=groups, max_heads=4, title="image ViT block 0: self-attention over [fusion ; image tokens]")
nb.save_fig(fig, paths.out_dir, "attention_image_block0")
fig

# %%
fig = viz.show_attention({name: a[f"fusion_blocks.{last}.attn_v"][0] for name, a in attn.items()},
                         k_groups=[("image tokens", Nv)], max_heads=4,
                         title=f"fusion block {last}: visual-aggregation tokens reading the image")
nb.save_fig(fig, paths.out_dir, "attention_aggregation")
fig

# %% [markdown]
# ## 7. The staged recipe: what notebooks 03-07 start from
#
# The run above is short and starts from random weights, so that you can watch the losses move. The
# official pre-training is staged ([docs/pretraining.md](../docs/pretraining.md#the-staged-recipe-at-small-scale)): both
# ViTs first learn their own modality by masked modeling (ImageNet MAE and AudioMAE in the paper), then
# the audio-visual stage trains the fusion stream on top of them, with an lr ramp that brings the
# pre-trained ViTs in gently (`pretrain.pretrained_lr_ramp`). The kit trains both stages itself at the small
# profiles and ships them in the **model zoo** (`zoo/`, built by `python -m avlib.zoo build --profile cpu`,
# verified by sha256 on every load):
#
# 1. `unimodal`: the same AVMAE with `model.fusion_arch="none"`, so the image MAE and the audio MAE train
#    side by side and neither decoder sees the other modality; the paper's mask ratios 0.75 / 0.8.
# 2. `deepavfusion`: DeepAVFusion's audio-visual masked modeling, its ViTs warm-started from stage 1.
#
# Two choices differ from the paper, each a named config field explained in `avlib/config.py` and in the
# docs: image targets standardized per colour channel (`model.image_target_norm`), and, in the audio-visual
# stage, masks chosen for cross-modal inpainting in part of the samples (`model.masking`).
#
# Notebooks 03-07 compare three starts at the same budget: `scratch` (random), `unimodal` (stage 1's ViTs
# with a fresh fusion stream: where the paper's audio-visual stage starts) and `deepavfusion` (stage 2).
# The gap between the last two is the paper's claim: what audio-visual early fusion adds. With
# `use_zoo=False` the runner hands them this notebook's live run instead; with `rebuild_zoo=True` the
# stages are trained here (`run_dir/zoo`) instead of loaded.

# %%
staged = {}
if use_zoo and profile in zoo.RECIPES:
    local = paths.run_dir / "zoo"
    kw = {"runs": local / "runs", **({"zoo": local / "empty"} if rebuild_zoo else {})}   # trained here: run_dir/zoo
    staged = {name: zoo.ensure(profile, name, device=device, **kw) for name in ("unimodal", "deepavfusion")}
    rows, curves = zoo.stages(profile, staged)
    display(pd.DataFrame(rows).set_index("stage"))
    fig = viz.plot_history({name: c["steps"] for name, c in curves.items()}, ["loss", "loss_image", "loss_audio"],
                           title="the two stages' training losses (image + audio)")
    nb.save_fig(fig, paths.out_dir, "staged_recipe")
    display(fig)
else:
    print(f"profile {profile!r}: no zoo recipe (or use_zoo=False); 03-07 start from this notebook's run")

# %% [markdown]
# ## 8. Results
#
# The final losses and 1-NN accuracies of this notebook's run, and the checkpoints handed on. They are this
# notebook's declared **outputs** (`notebooks/manifest.yaml`): the runner passes `pretrain_ckpt` (the
# DeepAVFusion checkpoint: the zoo's when there is one) and `unimodal_ckpt` (its unimodal warm start) to
# notebooks 03-07.

# %%
last = pre.history.last_eval or {}
metrics = {f"pretrain/{k}": v for k, v in last.items() if k not in ("epoch", "step")}
metrics.update({"pretrain/train_loss": pre.history.steps[-1]["loss"] if pre.history.steps else None,
                "pretrain/steps": meta["total_steps"], "pretrain/epochs": cfg.pretrain.epochs,
                "pretrain/init_loss": out0.loss.item()})
for name, ckpt in staged.items():
    row = next(r for r in rows if r["stage"] == name)
    metrics.update({f"pretrain_{name}/{k}": v for k, v in row.items() if isinstance(v, (int, float))})
nb.record(metrics, paths.out_dir, cfg=cfg, pretrain_ckpt=str(staged.get("deepavfusion", pre.checkpoint)),
          unimodal_ckpt=str(staged.get("unimodal", "")))

# %% [markdown]
# ## 9. The paper profile on GPUs
#
# `profile="paper"` is the official setting: two ViT-B/16 encoders, VGGSound, 200 epochs (40 warm-up),
# batch 64 per GPU × 8 GPUs, base lr 1.5e-4 (lr = 1.5e-4 × 512 / 256), fp16 autocast, and the
# pretrained-ViT lr ramp ([official code §3.1](../docs/official_implementation.md#31-pre-training)). That is days of multi-GPU time, so it is not
# something to run inside a kernel. Run the same `tasks.pretrain` from the command line instead, one
# process per GPU:
#
#     torchrun --nproc_per_node 8 -m avlib.pretrain --profile paper --run-dir runs/paper/02_pretraining \
#         --set data.root=/path/to/vggsound
#
# (see `avlib/pretrain.py` and the README). Under torchrun, `fit` wraps the model in
# `DistributedDataParallel`, the training loader shards the data with a `DistributedSampler`, and rank 0
# writes the checkpoints. `pretrain.batch_size` is per process. Then run this notebook with
# `profile="paper"`: `pretrain` finds the finished run in `run_dir`, loads it and goes straight to the
# figures. `eval_every` does not change the weights, so a finished run is reused whatever its value.
#
# ## Summary
#
# * AVMAE hides part of each modality's tokens: 75 % of the image and 80 % of the audio tokens in the
#   paper, 50 % of each at the small profiles. The early-fusion encoder sees the rest,
#   and two decoders, each also reading the fusion tokens, predict the standardized masked patches.
#   The loss is image + audio.
# * On AV-Digits both losses fall well below their starting level, the audio loss fastest. The 1-NN
#   probe of mean-pooled tokens is a weak monitor here. Random features already reach a high audio
#   accuracy and pre-training does not raise it; the fusion probe peaks early and then falls back.
#   Trained read-outs (notebook 03) are the real test.
# * Reconstructions can be heard as well as seen, and the attention maps of notebook 01 take shape.
# * The official recipe is staged: unimodal masked modeling first, then the audio-visual stage from it.
#   The zoo's two stages are the starting points of every downstream notebook (03-07), each of which
#   compares DeepAVFusion with its unimodal start and with the same model trained from scratch.
#
# ## Exercises
#
# 1. Set the paper's mask ratios (`overrides={"model.image_mask_ratio": 0.75, "model.audio_mask_ratio": 0.8}`,
#    with a new `run_dir`). How do the losses and the 1-NN accuracies change? How many tokens per
#    modality does the encoder still see at the small profiles?
# 2. Cross-modal evidence: in section 5, replace the audio of scene 0 with that of scene 1 and recompute
#    the image loss. Does the image reconstruction depend on the sound? Is that expected here?
# 3. Turn `norm_pix_loss` off. Why does the audio loss scale change so much (hint: log-mel values range
#    from -7 to about +2)?
# 4. Why is `nn_image` near chance here but ~9.5 % (vs 0.3 % chance for 309 classes) on VGGSound?
#    And why might the audio 1-NN fall while the audio loss improves? Probe the *last-layer tokens without
#    the mean-pool*, or time-align the utterances (hint: `SceneDataset.describe` lists their offsets),
#    and see which explanation survives.
#
# ## References
#
# * Mo & Morgado, DeepAVFusion, CVPR 2024; official code `models/avmae.py`, `train.py`, `util/knn_probe.py`.
# * He et al., *Masked Autoencoders Are Scalable Vision Learners*, CVPR 2022 (masking, `norm_pix_loss`, visualization).
# * Huang et al., *Masked Autoencoders that Listen* (AudioMAE), NeurIPS 2022.
# * [docs/official_implementation.md](../docs/official_implementation.md) [§1.5](../docs/official_implementation.md#15-masked-modeling), [§3.1](../docs/official_implementation.md#31-pre-training).
