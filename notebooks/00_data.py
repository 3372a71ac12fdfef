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
# # 00 · AV-Digits: audio-visual scenes, spectrograms and ground truth
#
# **Paper.** Mo & Morgado, *Unveiling the Power of Audio-Visual Early Fusion Transformers with Dense
# Interactions through Masked Modeling* (DeepAVFusion), CVPR 2024,
# [arXiv:2312.01017](https://arxiv.org/abs/2312.01017), official code
# [stoneMo/DeepAVFusion](https://github.com/stoneMo/DeepAVFusion).
#
# The paper pre-trains on VGGSound / AudioSet video and evaluates four tasks: classification,
# sound source localization, segmentation and separation. Those datasets are hundreds of GB and their
# ground truth is partial. This kit uses **AV-Digits** instead: a small, fully controlled
# stand-in with the same structure. Each scene is a grid of MNIST digits, and one of them "speaks"
# (an FSDD recording of that digit). Because we compose every scene ourselves, we know the exact
# ground truth for all four tasks.
#
# **Learning goals**
# 1. Know what one scene holds (image, waveform, log-mel) and the ground truth each task reads
#    (`label`, `loc_map`, `box`, `seg_mask`; for separation, a mixture that is the sum of its sources).
# 2. Understand the audio front end of the official code (mirror pad, gain, mel, `log10`) and how the
#    profiles scale it down.
# 3. Know the splits (FSDD takes 0-4 are test; MNIST train/test) and why the scenes are deterministic.
#
# **Expected runtime** (2-core machine, no GPU): smoke ≈ 15 s · cpu ≈ 15 s · paper ≈ 1.5 min. At the paper
# profile, AV-Digits is shown at the paper's front end (224 px, 16 kHz, 3 s). The FSDD clips are
# resampled once, and the loader benchmark starts the paper's 8 workers.

# %%
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from IPython.display import display
from matplotlib.figure import Figure

from avlib import nb, viz, widgets
from avlib.audio import AudioFrontEnd, mirror_pad
from avlib.config import make_config
from avlib.data import MixtureDataset, SceneDataset, loader_throughput
from avlib.data.loaders import SCENE_DATASETS
from avlib.data.scenes import SHAPE_NAMES

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | cpu | paper
seed: int = 0  # composes every scene (same seed gives the same scenes)
device: str = "auto"  # auto | cpu | cuda (nothing here needs a GPU)
out_dir: str = ""  # metrics and figures; empty means reports/<profile>/00_data/
run_dir: str = ""  # unused here (no training); empty means runs/<profile>/00_data/
overrides: dict = {}  # config overrides as dotted keys, e.g. {"data.grid": 3}
explorers: bool = True  # show the ipywidgets explorer (papermill may hang on it, so the runner passes False)
dataset: str = "avdigits"  # avdigits (MNIST + FSDD) | synthetic (procedural shapes and tones, no files)

# %%
device = nb.setup(seed, device)
cfg = make_config(profile, overrides={"data.dataset": dataset, **nb.parse_overrides(overrides)}, seed=seed)
if cfg.data.dataset not in SCENE_DATASETS:       # e.g. the paper profile's VGGSound: this notebook is about the scenes
    print(f"note: data.dataset={cfg.data.dataset!r} is a benchmark; this notebook shows the {dataset!r} scenes")
    cfg = make_config(profile, overrides={**nb.parse_overrides(overrides), "data.dataset": dataset}, seed=seed)
paths = nb.paths_for("00_data", profile, out_dir, run_dir)
sr, hop = cfg.data.sample_rate, cfg.data.hop_length
cfg.data

# %% [markdown]
# ## 1. What a scene is
#
# A scene is a `grid × grid` image. Each cell holds a **different** class (an MNIST digit with random
# colours and position inside its cell), and a 1 s clip (3 s at the paper profile) in which **one** cell
# speaks: an FSDD recording of that digit, placed at a random time in an otherwise silent clip.
# The pre-training task in notebook 02 sees only image + audio. The downstream tasks (03-06) also
# read the ground truth.
#
# `SceneDataset(cfg, split)` composes scene `i` on the fly from `numpy.random.default_rng([seed, split, i, epoch])`
# (section 6). `describe(i)` shows what went into it.

# %%
train_ds = SceneDataset(cfg, "train")
test_ds = SceneDataset(cfg, "test")
print(f"{len(train_ds)} training scenes per epoch (composed on the fly) | {len(test_ds)} fixed test scenes")
test_ds.describe(0)

# %% [markdown]
# Below is scene 0 of the test split. **Left:** the frame, with the box of the sounding cell. **Middle:**
# where the sound comes from (the localization map, with the segmentation mask outlined). **Right:** the
# log-mel spectrogram the audio encoder sees. Time is in seconds and frequency in mel bins, with low
# frequencies at the bottom. Press play to hear the spoken digit.

# %%
fig, player = widgets.render_scene(test_ds, 0)
nb.save_fig(fig, paths.out_dir, "scene_0")
display(fig, player)

# %% [markdown]
# ## 2. One item, every key
#
# Every task receives the same dictionary of tensors (ARCHITECTURE.md, "Batches"), so a loader for one
# task works for all of them. Images are ImageNet-normalized (the official pipeline,
# [official code §2.2](../docs/official_implementation.md#22-image-front-end)),
# and the audio is the log-mel `(1, F, T)` with frequency on rows.

# %%
item = test_ds[0]
pd.DataFrame([(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in item.items()],
             columns=["key", "shape", "dtype"]).set_index("key")

# %%
H, W = cfg.model.image_size
nb.check_shape(item["image"], (3, H, W), "image")
nb.check_shape(item["audio"], (1, cfg.data.n_mels, cfg.data.num_frames), "audio")
nb.check_shape(item["waveform"], (cfg.data.clip_samples,), "waveform")
print("model.audio_size (F, T) =", cfg.model.audio_size, "| image_size =", cfg.model.image_size)

# %% [markdown]
# ## 3. Ground truth for the four downstream tasks
#
# | task (notebook) | key | meaning |
# |---|---|---|
# | classification (03) | `label` | class of the sounding digit (`-1` if nothing on screen sounds; off by default) |
# | localization (04) | `loc_map (H, W)` | 1 on the sounding cell: *where the sound comes from* |
# | localization (04) | `box (4,)` | `x0, y0, x1, y1` of that cell in pixels (the VGG-SS / Flickr style box) |
# | segmentation (05) | `seg_mask (H, W)` | the sounding digit's own pixels (intensity > 0.5), a subset of `loc_map` |
# | separation (06) | `MixtureDataset` | two scenes, each with one sounding digit; `mix_waveform` = their sum |
#
# The localization map marks the whole cell, while the segmentation mask marks only the strokes of
# the digit. The figures draw every ground truth the same way, here and in notebooks 04-05: a green
# outline (`viz.draw_gt`), thick around the sounding cell and thin around the digit's pixels. Here are
# three more test scenes:

# %%
for i in (1, 2, 3):
    fig, player = widgets.render_scene(test_ds, i)
    display(fig, player)

# %%
print("label", int(item["label"]), "| multi-hot labels", item["labels"].int().tolist(), "| box", item["box"].tolist())
print("seg_mask inside loc_map:", bool((item["seg_mask"] <= item["loc_map"]).all()),
      f"| mask covers {item['seg_mask'].mean():.1%} of the image, the cell {item['loc_map'].mean():.1%}")

# %% [markdown]
# **Separation** uses *mix-and-separate* (Sound of Pixels; supplement A.3): two scenes, each with one
# sounding digit of a different class. Their waveforms are **added**, and the model must recover
# each source from the mixture, guided by that source's image. The mixture is a plain sum, so the
# ground truth is exact.

# %%
mix_ds = MixtureDataset(cfg, "test")
pair = mix_ds[0]
nb.check_shape(pair["images"], (2, 3, H, W), "images")
nb.check_shape(pair["source_waveforms"], (2, cfg.data.clip_samples), "source_waveforms")
mix_err = (pair["mix_waveform"] - pair["source_waveforms"].sum(0)).abs().max().item()
print(f"sources: digits {pair['labels'].tolist()} | max |mixture - sum of sources| = {mix_err:.1e}")

# %%
for k in range(2):
    display(viz.show_scene(pair["images"][k], pair["source_audio"][k], loc_map=pair["loc_maps"][k],
                           box=pair["boxes"][k], title=f"source {k + 1}: digit {int(pair['labels'][k])}",
                           sample_rate=sr, hop_length=hop),
            nb.audio_player(pair["source_waveforms"][k], sr))
fig = viz.show_spectrogram(pair["mix_audio"], sr, hop, title="the mixture (what the separator hears)")
nb.save_fig(fig, paths.out_dir, "mixture")
display(fig, nb.audio_player(pair["mix_waveform"], sr))

# %% [markdown]
# ## 4. The audio front end
#
# The official code turns a waveform into a log-mel spectrogram in five steps
# ([official code §2.1](../docs/official_implementation.md#21-audio-front-end)).
# `avlib.audio.AudioFrontEnd` reproduces them bit for bit at the paper profile:
#
# 1. **Mirror pad** to the clip length: while the clip is too short, append its time-reversed copy
#    (`[x, rev(x), x, ...]`), then crop.
# 2. **Random gain** of ±6 dB, then clamp to [-1, 1] (training only).
# 3. **Mel spectrogram** (`torchaudio.transforms.MelSpectrogram`): Hann window of `n_fft`, hop `hop_length`,
#    power 2, HTK mel scale from 0 Hz to Nyquist, no filterbank normalization.
# 4. **`log10(x + 1e-7)`**, with no mean/std normalization. Silence therefore sits at exactly -7.
# 5. **Drop the last frame**, so that `T = clip_samples // hop_length`. The paper gets `192 = 48000 // 250`,
#    that is 12 patches of 16.
#
# The small profiles keep the recipe but use FSDD's native 8 kHz, a 1 s clip, a 32 ms window and the
# paper's 15.6 ms hop (125 samples at 8 kHz, 250 at 16 kHz). This gives 64 frames, a grid divisible by
# the patch size, just as the paper's 3 s clip gives 192:

# %%
rows = {}
for p in ("smoke", "cpu", "paper"):
    d, m = make_config(p).data, make_config(p).model
    rows[p] = {"sample rate (Hz)": d.sample_rate, "clip (s)": d.clip_seconds, "window n_fft (ms)": 1000 * d.n_fft / d.sample_rate,
               "hop (ms)": 1000 * d.hop_length / d.sample_rate, "mel bins F": d.n_mels, "frames T": d.num_frames,
               "patch": m.patch_size, "audio token grid": m.audio_grid, "image size": m.image_size}
pd.DataFrame(rows)

# %%
nb.show_source(AudioFrontEnd.forward)

# %% [markdown]
# **Mirror pad, seen.** FSDD recordings are 0.3-0.8 s long. Mirror-padding one of them to the clip
# length repeats it backwards and forwards (orange). In AV-Digits this never happens, because the scene
# composer places each recording at a random offset inside a silent clip of exactly `clip_samples`,
# so the pad is a no-op there. With real videos shorter than the clip (VGGSound has some), it matters.

# %%
clip, _ = test_ds.content.sound(int(item["label"]), np.random.default_rng(seed))
padded = mirror_pad(torch.from_numpy(clip), cfg.data.clip_samples)
fig = Figure(figsize=(9, 2.6), layout="constrained")
ax = fig.subplots()
ax.plot(np.arange(len(padded)) / sr, padded.numpy(), lw=0.6, color="tab:orange", label="mirror-padded")
ax.plot(np.arange(len(clip)) / sr, clip, lw=0.6, color="tab:blue", label=f"recording ({len(clip) / sr:.2f} s)")
ax.set(xlabel="time (s)", ylabel="amplitude", title="mirror padding to the clip length")
fig.legend(loc="outside right upper")
nb.save_fig(fig, paths.out_dir, "mirror_pad")
fig

# %% [markdown]
# The dataset calls exactly this front end. For a test scene there is no random gain, so recomputing the
# spectrogram from the stored waveform gives the same tensor. Silent frames sit at the `log10(1e-7)`
# floor:

# %%
front = AudioFrontEnd(cfg.data)
print("front(waveform) == item['audio']:", torch.equal(front(item["waveform"]), item["audio"]))
print(f"log-mel range: {item['audio'].min():.2f} (silence floor {np.log10(1e-7):.0f}) to {item['audio'].max():.2f}")
fig = viz.show_spectrogram(item["audio"], sr, hop, title=f"scene 0: the spoken digit {int(item['label'])}")
nb.save_fig(fig, paths.out_dir, "spectrogram")
fig

# %% [markdown]
# ## 5. Splits: no recording and no digit image is shared between train and test
#
# * **FSDD** (6 speakers × 10 digits × 50 takes): the official split puts takes 0-4 in test and
#   takes 5-49 in train. With `data.holdout_speakers` you can instead test on unseen voices
#   (exercise 3).
# * **MNIST**: the training scenes draw digit images from the 60k training images, and the test scenes
#   from the 10k test images.
#
# The test scenes are fixed (the first `test_size` compositions). The training scenes are fresh
# compositions every epoch.

# %%
if dataset == "avdigits":
    banks = {"train": train_ds.content.bank, "test": test_ds.content.bank}
    split_facts = pd.DataFrame({s: {"FSDD recordings": len(b), "takes": f"{b.takes.min()}-{b.takes.max()}",
                                    "speakers": len(b.speakers), "MNIST images": len(ds.content.images)}
                                for (s, b), ds in zip(banks.items(), (train_ds, test_ds))})
    shared = {r.name for r in banks["train"].recordings} & {r.name for r in banks["test"].recordings}
    print("recordings in both splits:", len(shared))
    display(split_facts)
else:
    print("synthetic scenes: no files; train and test differ only by their composition seeds")

# %% [markdown]
# ## 6. Determinism: the same seed gives the same scene, bit for bit
#
# Scene `i` depends only on `(seed, split, i, epoch)`. It does not depend on the worker count,
# the batch order or anything that ran before, so a figure of "test scene 3" is the same on every
# machine. The next cell checks three things:
# * a **fresh** dataset object gives identical tensors;
# * another seed gives another scene;
# * another epoch gives another training scene.

# %%
fresh = SceneDataset(cfg, "test")[3]
same = all(torch.equal(fresh[k], test_ds[3][k]) for k in fresh)
other_seed = SceneDataset(replace(cfg, seed=seed + 1), "test")[3]      # the same config, another seed
other_epoch = SceneDataset(cfg, "train", epoch=1)[3]
print(f"same seed, fresh dataset: identical = {same}")
print(f"seed {seed + 1}: same image = {torch.equal(other_seed['image'], fresh['image'])}")
print(f"training scene 3, epoch 0 vs 1: same image = {torch.equal(train_ds[3]['image'], other_epoch['image'])}")

# %% [markdown]
# ## 7. Offline synthetic scenes
#
# `data.dataset="synthetic"` builds scenes with the same structure and no files at all. Each class is a
# shape (disk, square, triangle, ...) paired with a timbre: a harmonic stack with a class-specific
# pitch, spectral tilt and envelope. Use it on a machine without the recordings, or to check that a
# result does not depend on MNIST/FSDD specifics.

# %%
syn_cfg = make_config(profile, overrides={**nb.parse_overrides(overrides), "data.dataset": "synthetic"}, seed=seed)
syn_ds = SceneDataset(syn_cfg, "test")
fig, player = widgets.render_scene(syn_ds, 0)
nb.save_fig(fig, paths.out_dir, "synthetic_scene_0")
print("the sounding object is a", SHAPE_NAMES[int(syn_ds[0]["label"])])
display(fig, player)

# %% [markdown]
# ## 8. Explore
#
# Drag the slider to browse the test scenes, each with its ground truth and an audio player. This is the
# same `render_scene` call as above, wired to a slider. It needs JupyterLab with ipywidgets; batch runs
# pass `explorers=False` (papermill can hang on widget output) and show a static gallery of the first
# scenes instead.

# %%
widgets.scene_explorer(test_ds, static=not explorers)   # the runner passes explorers=False: a static gallery

# %% [markdown]
# ## 9. How fast can we make scenes?
#
# The scenes are composed on the CPU while the model trains. `loader_throughput` times a few batches of
# the pre-training loader (single process, `num_workers` from the config). If the model is faster than
# this, raise `data.num_workers`.

# %%
tp = loader_throughput(cfg, num_batches=5)
print(f"{tp['samples_per_s']:.0f} scenes/s ({tp['batches_per_s']:.1f} batches of {tp['batch_size']} per s, "
      f"{tp['num_workers']} workers); dataset setup {tp['setup_s']:.1f} s")

# %% [markdown]
# ## Results

# %%
metrics = {
    "data/dataset": cfg.data.dataset, "data/train_scenes_per_epoch": len(train_ds), "data/test_scenes": len(test_ds),
    "data/image_shape": str(tuple(item["image"].shape)), "data/audio_shape": str(tuple(item["audio"].shape)),
    "data/sample_rate": sr, "data/clip_samples": cfg.data.clip_samples, "data/grid": cfg.data.grid,
    "data/fsdd_train_recordings": len(train_ds.content.bank) if dataset == "avdigits" else 0,
    "data/fsdd_test_recordings": len(test_ds.content.bank) if dataset == "avdigits" else 0,
    "data/deterministic": same, "data/mixture_max_err": mix_err,
    "data/loader_samples_per_s": tp["samples_per_s"],
}
nb.record(metrics, paths.out_dir, cfg=cfg)

# %% [markdown]
# ## Summary
#
# * A scene has an image, a waveform and its log-mel, plus exact ground truth for every task:
#   `label` (classification), `loc_map` and `box` (localization), `seg_mask` (segmentation), and
#   mixtures that are plain sums of their sources (separation).
# * The audio front end is the official one (mirror pad, ±6 dB gain when training, mel power spectrogram,
#   `log10(x + 1e-7)`, last frame dropped), scaled to 8 kHz / 1 s in the small profiles.
# * Train and test share no FSDD recording (takes 0-4 are test) and no MNIST image. Scenes are
#   functions of `(seed, split, index, epoch)`, so every run and every figure is reproducible.
#
# **Next:** notebook 01 turns these two inputs into token grids and follows them through the
# DeepAVFusion encoder.
#
# ## Exercises
#
# 1. Set `overrides={"data.p_two_sources": 0.5}` and find a scene where two cells speak. What do `label`,
#    `labels` and `loc_map` hold then?
# 2. Set `overrides={"data.p_offscreen": 0.3}`. What do an off-screen scene's `label`, `box` and `loc_map`
#    look like, and why does localization (notebook 04) skip such scenes in cIoU?
# 3. Hold out a speaker (`overrides={"data.holdout_speakers": ["theo"]}`) and check which takes and speakers
#    each split now holds.
# 4. Run with `profile="paper"`. How many mel bins and frames does a 3 s clip give, and how many
#    audio tokens does that make with 16×16 patches?
#
# ## References
#
# * Mo & Morgado, DeepAVFusion, CVPR 2024, and its supplementary material (A.1-A.3: the downstream protocols).
# * Official front end and image pipeline: [docs/official_implementation.md §2.1-2.2](../docs/official_implementation.md#2-data-pipeline).
# * Free Spoken Digit Dataset (Jackson et al., github.com/Jakobovski/free-spoken-digit-dataset); MNIST (LeCun et al.).
# * Zhao et al., *The Sound of Pixels*, ECCV 2018 (mix-and-separate).
