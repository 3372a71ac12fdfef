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
# # 01 · The DeepAVFusion encoder, stage by stage
#
# **Paper.** Mo & Morgado, *Unveiling the Power of Audio-Visual Early Fusion Transformers with Dense
# Interactions through Masked Modeling*, CVPR 2024 ([arXiv:2312.01017](https://arxiv.org/abs/2312.01017)).
# The method is in Sec. 3 of the paper. Here we follow the official implementation
# ([stoneMo/DeepAVFusion](https://github.com/stoneMo/DeepAVFusion)) as documented in
# [docs/official_implementation.md §1](../docs/official_implementation.md#1-architecture). `avlib.model` matches it key for key and reproduces its
# golden outputs to 1e-5.
#
# DeepAVFusion is an *early-fusion* encoder. An image ViT and an audio ViT run side by side, and at
# **every** layer a small set of fusion tokens reads both modalities and writes back into both.
#
# **Learning goals**
# 1. Turn an image and a spectrogram into token grids (patchify), and mask them the MAE way.
# 2. Follow one layer exactly. The fusion tokens `[fusion | visual-aggregation | audio-aggregation]` are
#    distributed through the shared self-attention, and the factorized fusion block (aggregation
#    cross-attentions → 8×8 pairs → pair attention) updates them. Two official quirks are included.
# 3. Read attention maps, and count the parameters of the paper configuration without allocating it.
# 4. See why "dense" pair attention is exactly two ordinary cross-attentions (a linear-cost
#    shortcut), and what that means for the paper's dense-vs-factorized ablation.
#
# **Expected runtime** (2-core machine, no GPU): smoke ≈ 15 s · cpu ≈ 15 s · paper ≈ 2 min (ViT-B-sized
# encoders are built for the exactness check). The timing cell always uses one paper-sized fusion block.

# %%
from dataclasses import replace

import pandas as pd
import torch
from IPython.display import display

from avlib import flops, nb, viz
from avlib.timing import measure_interleaved
from avlib.config import make_config
from avlib.data import make_loaders
from avlib.model import (DeepAVFusion, FactorizedFusionBlock, FUSION_BLOCKS, build_avmae, build_encoder, merge_heads,
                         pair_attention, random_masking, split_heads, vit_block)

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | cpu | paper
seed: int = 0  # weight init, data and masks
device: str = "auto"  # auto | cpu | cuda
out_dir: str = ""  # metrics and figures; empty means reports/<profile>/01_model/
run_dir: str = ""  # unused here (no training); empty means runs/<profile>/01_model/
overrides: dict = {}  # config overrides as dotted keys, e.g. {"model.fusion_arch": "dense"}
num_scenes: int = 2  # test scenes pushed through the encoder in the demos
timing_repeats: int = 3  # timed calls per path in the explicit-vs-separable timing (0 skips it)

# %%
device = nb.setup(seed, device)
cfg = make_config(profile, overrides=nb.parse_overrides(overrides), seed=seed)
paths = nb.paths_for("01_model", profile, out_dir, run_dir)
m = cfg.model
m

# %% [markdown]
# We build the full masked-modeling model (`AVMAE`: encoder plus the two decoders of notebook 02) with a
# fixed seed, and take its encoder. The inputs are a few test scenes from notebook 00. At the paper
# profile, whose dataset is VGGSound, they are AV-Digits scenes at the paper's sizes (224 px, 3 s at
# 16 kHz).

# %%
torch.manual_seed(seed)
avmae = build_avmae(m).to(device).eval()
enc: DeepAVFusion = avmae.encoder
scene_cfg = cfg if cfg.data.dataset in ("avdigits", "synthetic") else replace(cfg, data=replace(cfg.data, dataset="avdigits"))
batch = next(iter(make_loaders(scene_cfg, batch_size=num_scenes, num_workers=0)[1]))
image, audio = batch["image"].to(device), batch["audio"].to(device)
B, D, p = image.shape[0], m.embed_dim, m.patch_size
print(f"image {tuple(image.shape)} | audio {tuple(audio.shape)} | embed_dim D={D} | patch {p}x{p}")

# %% [markdown]
# ## 1. Patchify: from pixels and mel bins to token grids
#
# Each modality is cut into non-overlapping `p × p` patches (a strided convolution, timm `PatchEmbed`).
# The image gives an `(H/p) × (W/p)` grid. The log-mel, an "image" with frequency on rows and time on
# columns, gives an `(F/p) × (T/p)` grid: frequency bands × time steps. Tokens are numbered
# **row-major**. Each token gets a fixed 2-D sin-cos position embedding, which is frozen, as in MAE.
# There is no `[CLS]` token, and features are mean-pooled downstream.

# %%
Nv, Na = enc.image_grid[0] * enc.image_grid[1], enc.audio_grid[0] * enc.audio_grid[1]
print(f"image grid {enc.image_grid} -> Nv = {Nv} tokens | audio grid {enc.audio_grid} (freq x time) -> Na = {Na} tokens")
nb.check_shape(avmae.patchify(image), ("B", Nv, p * p * 3), "image patches", B=B)
nb.check_shape(avmae.patchify(audio), ("B", Na, p * p * 1), "audio patches", B=B)
xv, xa = enc.image.embed(image), enc.audio.embed(audio)          # patch_embed + pos_embed
nb.check_shape(xv, ("B", Nv, D), "image tokens")
nb.check_shape(xa, ("B", Na, D), "audio tokens")
print("pos_embed trainable:", enc.image.pos_embed.requires_grad)

# %% [markdown]
# ## 2. Masking (MAE): drop many tokens before the encoder
#
# During pre-training the encoder sees only a random subset of each modality. The paper keeps 25 %
# of the image tokens (mask ratio 0.75) and 20 % of the audio tokens (0.8). The small profiles keep
# half of each (0.5 / 0.5; see notebook 07), and the cells below use the profile's ratios. This is
# per-sample uniform masking (argsort of uniform noise, [official code §1.5](../docs/official_implementation.md#15-masked-modeling)). The masked tokens are
# **removed**, not replaced, so the encoder runs on short sequences. The decoders of notebook 02 must
# then fill in the gaps. The fusion tokens are never masked.
#
# `random_masking` takes a `generator`, so the mask in this figure does not depend on how many random
# numbers earlier cells drew.

# %%
nb.show_source(random_masking)

# %%
g = torch.Generator().manual_seed(seed)
keep_v, mask_v, restore_v = random_masking(B, Nv, m.image_mask_ratio, generator=g, device=device)
keep_a, mask_a, restore_a = random_masking(B, Na, m.audio_mask_ratio, generator=g, device=device)
Kv, Ka = int(Nv * (1 - m.image_mask_ratio)), int(Na * (1 - m.audio_mask_ratio))
nb.check_shape(keep_v, ("B", Kv), "ids_keep (image)")
assert (mask_v.sum(1) == Nv - Kv).all() and (mask_a.sum(1) == Na - Ka).all()       # 1 = masked
assert (mask_v.gather(1, keep_v) == 0).all()                                       # the kept ids are unmasked
print(f"image: keep {Kv} of {Nv} tokens | audio: keep {Ka} of {Na} tokens")

# %%
fig = viz.show_masking(image[0], mask_v[0], audio[0], mask_a[0], p,
                       sample_rate=cfg.data.sample_rate, hop_length=cfg.data.hop_length)
nb.save_fig(fig, paths.out_dir, "masking")
fig

# %%
with torch.no_grad():
    out_masked = enc(image, audio, image_ids_keep=keep_v, audio_ids_keep=keep_a)
nb.check_shape(out_masked.image, ("B", Kv, D), "encoder output (image, masked)")
nb.check_shape(out_masked.audio, ("B", Ka, D), "encoder output (audio, masked)")
nb.check_shape(out_masked.fusion, ("B", m.num_fusion_total, D), "encoder output (fusion)")
print(f"the encoder ran on {Kv} image + {Ka} audio tokens (+ {m.num_fusion_total} fusion tokens) instead of {Nv} + {Na}")

# %% [markdown]
# ## 3. The fusion tokens
#
# A single learned tensor `fusion_tokens` of shape `(1, Nf, D)` is broadcast over the batch. Its three
# parts have different jobs ([official code §1.3](../docs/official_implementation.md#13-fusion-tokens-and-fusion-blocks)):
#
# | part | paper config | role |
# |---|---|---|
# | fusion `F` | 16 | the audio-visual representation: attends to the visual×audio **pairs** |
# | visual aggregation `V̄` | 8 | summarize the image tokens (cross-attention) |
# | audio aggregation `Ā` | 8 | summarize the audio tokens |
#
# All `Nf` tokens also join both ViTs' self-attention (the *distribution* step below), and both MAE
# decoders see them (notebook 02).

# %%
nf, nva, naa = m.num_fusion_tokens, m.num_aggr_image_tokens, m.num_aggr_audio_tokens
Nf = m.num_fusion_total
nb.check_shape(enc.fusion_tokens, (1, Nf, D), "fusion_tokens")
print(f"Nf = {Nf} = {nf} fusion + {nva} visual-aggregation + {naa} audio-aggregation tokens")

# %% [markdown]
# ## 4. One layer, exactly
#
# With the layer inputs $X^v, X^a, X^f$, layer $l$ computes two things **in parallel**
# ([official code §1.4](../docs/official_implementation.md#14-one-layer-of-early-fusion)):
#
# 1. **Distribution (fusion → modalities).** Each pretrained ViT block runs full self-attention over
#    `[fusion tokens ; its own tokens]`:
#    $[\,\cdot\,, X^v_l] = \Phi^v_l([X^f; X^v])$, and likewise for audio. The outputs at the fusion positions
#    are **discarded**, so the fusion tokens act as extra keys and values that every patch can read.
# 2. **Fusion block (modalities → fusion)**, from the same layer *inputs*. It normalizes,
#    $Z = \mathrm{LN}_{mm}(X^f)$, $V = \mathrm{LN}_{img}(X^v)$, $A = \mathrm{LN}_{aud}(X^a)$, and splits $Z = [F; \bar V; \bar A]$. Then:
#    * **aggregation**: $\bar V' = \mathrm{MHA}(\bar V \to V)$ and $\bar A' = \mathrm{MHA}(\bar A \to A)$, linear in $N_v, N_a$;
#    * **dense factorized interactions**: all $n_v \cdot n_a$ pairs $P_{ij} = [\bar V'_i \,\|\, \bar A'_j]$ (8 × 8 = 64 in the
#      paper), and $F' = \mathrm{proj}(\mathrm{softmax}(F W_q (P W_k)^\top s)\, P W_v)$;
#    * $X^f_{mid} = Z + [F'; \bar V'; \bar A']$, then $X^f_l = X^f_{mid} + \mathrm{MLP}(\mathrm{LN}_2(X^f_{mid}))$.
#
# Two **official quirks** are kept on purpose, because the released checkpoints were trained with
# them:
# * the residual is added to the **normalized** stream $Z$, not to $X^f$;
# * the pair-attention scale is $s = (D/h)^{-1/2}$ (1/8 at ViT-B) whatever the q/k width. With
#   `fusion_attn_ratio = 0.25`, the q/k head width is 16 while the scale stays 1/8.
#
# ### 4.1 Distribution through the shared self-attention

# %%
xf = enc.fusion_tokens.expand(B, -1, -1)                                      # (B, Nf, D)
with torch.no_grad():
    yv, _ = vit_block(enc.image.blocks[0], torch.cat([xf, xv], dim=1))       # (B, Nf+Nv, D)
    ya, _ = vit_block(enc.audio.blocks[0], torch.cat([xf, xa], dim=1))       # (B, Nf+Na, D)
nb.check_shape(yv, ("B", Nf + Nv, D), "image block output")
xv1, xa1 = yv[:, Nf:], ya[:, Nf:]                                             # fusion positions discarded
nb.check_shape(xv1, ("B", Nv, D), "image tokens after layer 0")
print(f"image block 0 ran on {Nf} fusion + {Nv} image tokens; the {Nf} fusion outputs are dropped")

# %% [markdown]
# ### 4.2 The factorized fusion block, step by step
#
# We recompute fusion block 0 by hand, checking the shape at every step, and compare with the module.

# %%
blk = enc.fusion_blocks[0]
at = blk.attn
with torch.no_grad():
    z = blk.norm1_mm(xf)                                                      # (B, Nf, D)
    v, a = blk.normalize_modalities(xv, xa)                                   # (B, Nv, D), (B, Na, D)
    f, v_aggr, a_aggr = z.split((nf, nva, naa), dim=1)
    v_aggr, w_aggr_v = at.attn_v(v_aggr, v, return_attn=True)                 # aggregation: V̄ reads the image
    a_aggr, w_aggr_a = at.attn_a(a_aggr, a, return_attn=True)                 # Ā reads the audio
nb.check_shape(v_aggr, ("B", nva, D), "V̄'")
nb.check_shape(w_aggr_v, ("B", m.fusion_num_heads, nva, Nv), "aggregation weights (image)")
nb.check_shape(a_aggr, ("B", naa, D), "Ā'")
print(f"{nva} visual-aggregation tokens read {Nv} image tokens; {naa} audio-aggregation tokens read {Na} audio tokens")

# %% [markdown]
# The `nv × na` pair tokens are concatenations $[\bar V'_i \| \bar A'_j]$ of width $2D$, visual first and
# i-major. Keys and values are linear maps of the pairs: `k: 2D → r·D`, `v: 2D → D`.

# %%
with torch.no_grad():
    pairs = torch.cat([v_aggr.unsqueeze(2).expand(-1, -1, naa, -1),
                       a_aggr.unsqueeze(1).expand(-1, nva, -1, -1)], dim=-1).flatten(1, 2)
    h = blk.num_heads
    q = split_heads(at.q(f), h)                                               # (B, h, nf, r*D/h)
    k, vals = split_heads(at.k(pairs), h), split_heads(at.v(pairs), h)       # (B, h, nv*na, .)
nb.check_shape(pairs, ("B", nva * naa, 2 * D), "pairs")
nb.check_shape(q, ("B", h, nf, at.q.out_features // h), "queries")
nb.check_shape(k, ("B", h, nva * naa, at.k.out_features // h), "keys")
print(f"q/k head width {at.q.out_features // h}, v head width {at.v.out_features // h}, scale {at.scale:.4f} "
      f"= (D/h)^-1/2 = {(D // h) ** -0.5:.4f} (not (q/k width)^-1/2 = {(at.q.out_features // h) ** -0.5:.4f})")

# %%
with torch.no_grad():
    w_pair = (q @ k.transpose(-2, -1) * at.scale).softmax(-1)                # (B, h, nf, nv*na)
    f_new = at.proj(merge_heads(w_pair @ vals))                               # (B, nf, D)
    x_mid = z + torch.cat([f_new, v_aggr, a_aggr], dim=1)                     # quirk: residual onto Z
    xf1 = x_mid + blk.mlp(blk.norm2(x_mid))
    xf1_module, _ = blk(xf, xv, xa)
    xv1_enc, xa1_enc, xf1_enc, _ = enc.forward_layer(0, xv, xa, xf)
nb.check_shape(xf1, ("B", Nf, D), "fusion tokens after layer 0")
by_hand = max((xf1 - xf1_module).abs().max().item(), (xv1 - xv1_enc).abs().max().item(),
              (xa1 - xa1_enc).abs().max().item(), (xf1 - xf1_enc).abs().max().item())
print(f"by hand vs avlib (fusion block and the whole layer): max |diff| = {by_hand:.1e}")

# %% [markdown]
# The same computation as it lives in the package: the block's `mix` (steps 2-3 above) and the
# encoder's layer. Look for the residual onto `z` in `FusionBlock.forward`. It uses `pair_attention`,
# which section 7 explains.

# %%
display(nb.show_source(FactorizedFusionBlock.mix), nb.show_source(DeepAVFusion.forward_layer))

# %% [markdown]
# ## 5. Attention maps
#
# `enc(..., return_attn=True)` returns every attention's softmax weights in a dict. The weights are
# computed on an explicit (non-fused) path and never stored on the modules. Keys are per layer:
# `image.blocks.l` / `audio.blocks.l` for the ViT self-attention over `[fusion ; patches]`, and
# `fusion_blocks.l.{attn_v, attn_a, pair}` for the fusion block.
#
# This encoder is **freshly initialized**, so the maps have no relation to the scene yet: the
# weights come from random projections of the inputs. That is the baseline to compare with after
# pre-training (notebook 02) and in the localization maps of notebook 04.

# %%
with torch.no_grad():
    out = enc(image, audio, return_attn=True)
pd.DataFrame([(k, tuple(w.shape)) for k, w in out.attn.items() if k.endswith((".0", ".0.attn_v", ".0.attn_a", ".0.pair"))],
             columns=["attention (layer 0)", "shape (B, heads, queries, keys...)"])

# %%
groups = [("fusion", Nf), ("image", Nv)]
fig = viz.show_attention(out.attn["image.blocks.0"][0], q_groups=groups, k_groups=groups, max_heads=4,
                         title="image ViT block 0: self-attention over [fusion ; image tokens] (untrained)")
nb.save_fig(fig, paths.out_dir, "attention_image_block0")
fig

# %%
last = m.depth - 1
fig = viz.show_attention(out.attn[f"fusion_blocks.{last}.attn_v"][0], k_groups=[("image tokens", Nv)], max_heads=4,
                         title=f"fusion block {last}: visual-aggregation tokens reading the image (untrained)")
nb.save_fig(fig, paths.out_dir, "attention_aggregation")
fig

# %% [markdown]
# ## 6. Parameter counts: the paper configuration, without allocating it
#
# On `torch.device("meta")`, a module records shapes and no data. We can therefore build the ViT-B
# AVMAE (363 M parameters, 1.4 GB in fp32) instantly and count its state dict, then compare with
# the official numbers ([official code §1.6](../docs/official_implementation.md#16-parameter-counts), counted from the official code).

# %%
def count_params(profile_name: str) -> dict:
    """State-dict sizes of a profile's AVMAE, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        sd = build_avmae(make_config(profile_name).model).state_dict()
    size = lambda prefix: sum(t.numel() for key, t in sd.items() if key.startswith(prefix))  # noqa: E731
    return {"encoder": size("encoder."), "fusion blocks": size("encoder.fusion_blocks."),
            "decoders": size("image_decoder") + size("audio_decoder"), "AVMAE": size(""), "keys": len(sd)}


# %%
# docs/official_implementation.md §1.6: state_dict elements of the official models (yaml default, two releases)
official = {"paper": {"encoder": 311_155_200, "fusion blocks": 140_004_864, "decoders": 51_903_488, "AVMAE": 363_058_688},
            "vggsound_release": {"encoder": 268_660_224, "fusion blocks": 97_509_888, "AVMAE": 320_563_712},
            "as2m_release": {"encoder": 327_094_272, "fusion blocks": 155_943_936, "AVMAE": 378_997_760}}
counts = {name: count_params(name) for name in ("paper", "vggsound_release", "as2m_release", "cpu", "smoke")}
table = pd.DataFrame(counts).T
table["official AVMAE"] = [official.get(n, {}).get("AVMAE") for n in table.index]
table["matches official"] = [all(counts[n][k] == v for k, v in official[n].items()) if n in official else None
                             for n in table.index]
table.style.format({c: "{:,.0f}" for c in ("encoder", "fusion blocks", "decoders", "AVMAE", "official AVMAE")}, na_rep="")

# %% [markdown]
# The fusion blocks are a large share of the ViT-B encoder: 140 M of 311 M. In units of $D^2$, each
# of the 12 blocks has about 8 in its MLP (ratio 4; the VGGSound release uses ratio 1, hence its 98 M),
# 8 in the two aggregation cross-attentions ($4D^2$ each), and 3.75 in the pair attention
# (q 0.25, k 0.5, v 2, proj 1). The small profiles keep every structural piece (all layers fused, all
# three token groups, both decoders) and only shrink the sizes.

# %%
with torch.device("meta"):
    paper_blk = build_encoder(make_config("paper").model).fusion_blocks[0]
ph = paper_blk.num_heads
print(f"paper fusion block: q/k head width {paper_blk.attn.q.out_features // ph}, scale {paper_blk.attn.scale} (= 1/8), "
      f"{sum(t.numel() for t in paper_blk.parameters()):,} parameters")

# %% [markdown]
# ## 7. An exact shortcut: dense interactions at linear cost
#
# Look again at the pair attention. A pair is a concatenation, and keys and values are **linear** in it:
# $k_{ij} = W_k^{(1)} x^{(1)}_i + W_k^{(2)} x^{(2)}_j + b_k$ (and likewise for $v$). For one query $q$, the logit of pair $(i, j)$ is
#
# $$\ell_{ij} = s\, q^\top k_{ij} = \underbrace{s\, q^\top W_k^{(1)} x^{(1)}_i}_{s_i} + \underbrace{s\, q^\top W_k^{(2)} x^{(2)}_j}_{t_j} + \text{const},$$
#
# a sum of one term per side. The exponential of a sum is a product, so the softmax over all pairs
# **factorizes**:
#
# $$p_{ij} = \frac{e^{s_i} e^{t_j}}{\sum_{i'} e^{s_{i'}} \sum_{j'} e^{t_{j'}}} = p_i \, p_j ,$$
#
# and, because each of $p_i$ and $p_j$ sums to one,
#
# $$\sum_{ij} p_{ij}\, v_{ij} = \sum_i p_i\, W_v^{(1)} x^{(1)}_i + \sum_j p_j\, W_v^{(2)} x^{(2)}_j + b_v .$$
#
# **Pair attention is exactly the sum of two ordinary cross-attentions**, one over each side, sharing
# the query. It costs $O(N_1 + N_2)$ instead of $O(N_1 N_2)$, and the pair tensor is never built. This
# holds for the `dense` block (pairs of *all* audio × visual patches) and for the factorized block's
# 8 × 8 pairs. It needs only linear keys/values and no attention dropout, which is the case for
# every official block.
# `avlib` evaluates pair attention this way by default (`model.pair_attention="separable"`) and keeps the
# official computation as `"explicit"`:

# %%
nb.show_source(pair_attention)

# %% [markdown]
# **Numerically.** We build the encoder twice with the same weights, once per mode, for the
# `dense` block (pairs of every audio × visual token) and for the paper's `factorized` block, and
# compare all outputs. We also check that the explicit pair weights are the outer product $p_i p_j$.

# %%
diffs = {}
for arch in ("dense", "factorized"):
    torch.manual_seed(seed)
    sep = build_encoder(replace(m, fusion_arch=arch, pair_attention="separable")).to(device).eval()
    exp = build_encoder(replace(m, fusion_arch=arch, pair_attention="explicit")).to(device).eval()
    exp.load_state_dict(sep.state_dict())
    with torch.no_grad():
        o_sep, o_exp = sep(image, audio, return_attn=True), exp(image, audio, return_attn=True)
    diffs[arch] = {"max |diff| outputs": max((getattr(o_sep, s) - getattr(o_exp, s)).abs().max().item() for s in ("image", "audio", "fusion")),
                   "max |diff| pair weights": (o_sep.attn["fusion_blocks.0.pair"] - o_exp.attn["fusion_blocks.0.pair"]).abs().max().item(),
                   "pairs per fusion block": o_exp.attn["fusion_blocks.0.pair"][0, 0, 0].numel()}
pd.DataFrame(diffs).T.astype({"pairs per fusion block": int}).style.format(
    {"max |diff| outputs": "{:.1e}", "max |diff| pair weights": "{:.1e}"})

# %% [markdown]
# The differences are at float32 rounding level (~1e-7 relative). The two modes are the same function,
# and gradients agree too (exercise 2).
#
# **Cost.** The next cell times one paper-sized `dense` block (ViT-B width, all 196 × 96 = 18,816
# unmasked pairs, 32 fusion tokens, batch 1) in both modes, and computes the analytic FLOPs and the
# memory the explicit pair tensors would need for a training step at batch 64.

# %%
pm = replace(make_config("paper").model, fusion_arch="dense")
nv_paper, na_paper = (g0 * g1 for g0, g1 in (pm.image_grid, pm.audio_grid))
block_flops = {mode: flops.fusion_block_flops(pm, nv_paper, na_paper, mode) for mode in ("explicit", "separable")}
d_qk = int(pm.embed_dim * pm.fusion_attn_ratio)
gib = flops.explicit_pair_bytes(64, pm.num_fusion_total, na_paper, nv_paper, pm.embed_dim, pm.embed_dim, d_qk, d_qk,
                                pm.fusion_num_heads, backward=True) / 2 ** 30
print(f"forward FLOPs per sample: explicit {block_flops['explicit'] / 1e9:.1f} G vs separable "
      f"{block_flops['separable'] / 1e9:.2f} G ({block_flops['explicit'] / block_flops['separable']:.0f}x); explicit pair tensors at batch 64 (fwd+bwd): ~{gib:.0f} GiB per layer")

# %%
timing = {}
if timing_repeats > 0:
    blocks = {mode: FUSION_BLOCKS["dense"](replace(pm, pair_attention=mode)).to(device).eval() for mode in ("explicit", "separable")}
    blocks["separable"].load_state_dict(blocks["explicit"].state_dict())
    xs = [torch.randn(1, n, pm.embed_dim, device=device) for n in (pm.num_fusion_total, nv_paper, na_paper)]
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with torch.no_grad():
        t = measure_interleaved({mode: (lambda b=b: b(*xs)) for mode, b in blocks.items()},
                                      warmup=1, repeats=timing_repeats, sync=sync)
    timing = {mode: tm.median for mode, tm in t.items()}
    print(f"paper-sized dense block, batch 1, {device.type}: explicit {timing['explicit'] * 1e3:.0f} ms | "
          f"separable {timing['separable'] * 1e3:.0f} ms (medians of {timing_repeats})")

# %% [markdown]
# Wall-clock times depend on the machine and its load: on a busy 2-core machine they can vary
# tenfold, so the FLOP ratio is the machine-independent number. At batch 1 most of the separable
# block's time goes to the rest of the block (projections, MLP, norms). Its pair attention is now a
# small part of the cost.
#
# **What this means for the paper's dense-vs-factorized ablation.** The paper motivates the factorized
# block by cost: attending to all $N_v N_a$ patch pairs "can become computationally intractable as the
# number of local representations increases." That is true of the *explicit* evaluation, which is
# quadratic in time and memory. With concatenated pairs and linear keys/values, the exact same
# function costs linear time. So **dense is not inherently quadratic**, and the ablation compares two
# architectures, not a cheap approximation against an expensive exact one:
#
# * `dense` = fusion tokens doing two cross-attentions, over all visual patches and over all audio
#   patches, with one shared query and summed outputs;
# * `factorized` = the same pair attention over **learned summaries** (8 + 8 aggregation tokens,
#   themselves cross-attentions), plus the extra aggregation parameters and the aggregation tokens'
#   own outputs in the fusion stream.
#
# The identity also shows a limit of this parameterization. Because the logits are **additive** in
# the two sides, the pair weights carry no interaction beyond $p_i p_j$. A pair can be up-weighted only
# through its visual part or its audio part separately. A genuinely multiplicative interaction (an
# MLP on the pair, or $x^{(1)}_i \odot x^{(2)}_j$) would not separate. Notebook 07 runs the fusion ablations
# and can use either mode: the results are the same up to float rounding.

# %% [markdown]
# ## Results

# %%
metrics = {
    "params/paper_encoder": counts["paper"]["encoder"], "params/paper_avmae": counts["paper"]["AVMAE"],
    "params/paper_fusion_blocks": counts["paper"]["fusion blocks"],
    "params/paper_matches_official": bool(table.loc["paper", "matches official"]),
    "params/profile_encoder": sum(t.numel() for t in enc.state_dict().values()),
    "params/profile_avmae": sum(t.numel() for t in avmae.state_dict().values()),
    "layer_by_hand_max_abs_diff": by_hand,
    "pair_attention/dense_max_abs_diff": diffs["dense"]["max |diff| outputs"],
    "pair_attention/factorized_max_abs_diff": diffs["factorized"]["max |diff| outputs"],
    "pair_attention/paper_dense_flops_ratio": block_flops["explicit"] / block_flops["separable"],
    **{f"pair_attention/paper_dense_block_{k}_s": v for k, v in timing.items()},
}
nb.record(metrics, paths.out_dir, cfg=cfg)

# %% [markdown]
# ## Summary
#
# * Two ViTs (image patches, and audio patches on a frequency × time grid) run side by side. At every
#   layer, `Nf` fusion tokens `[fusion | visual-aggregation | audio-aggregation]` join both
#   self-attentions (distribution), and a fusion block updates them from the layer inputs: aggregation
#   cross-attentions, then the fusion tokens attend to all visual × audio aggregation pairs.
# * Official quirks that a faithful re-implementation must keep: the residual onto the normalized
#   stream, the fixed $(D/h)^{-1/2}$ pair-attention scale, masked tokens removed (not replaced), and
#   fusion tokens never masked.
# * `avlib`'s ViT-B model has exactly the official parameter counts (363,058,688 for the yaml-default AVMAE).
# * Pair attention over concatenated pairs is exactly two cross-attentions. "Dense" interactions cost
#   linear time, and their weights factorize as $p_i p_j$.
#
# **Next:** notebook 02 pre-trains this model by masked reconstruction of both modalities.
#
# ## Exercises
#
# 1. Run with `overrides={"model.fusion_arch": "token"}` and then `"none"`. Which attention maps
#    disappear, and how do the parameter counts change?
# 2. Check that gradients also agree: call `.sum().backward()` on the fusion output of `sep` and `exp`
#    (built with `requires_grad`), and compare the `.grad` of the pair-attention weights
#    (`fusion_blocks.0.attn.kv.weight` for dense).
# 3. Remove the residual quirk in your head: what would change if it were `X^f + update` instead of `Z + update`?
#    Which released checkpoints would then no longer reproduce?
# 4. Make the pair interaction genuinely multiplicative (e.g. keys from $\bar V'_i \odot \bar A'_j$). Why does the
#    separable identity fail? What is the cost then for the dense block at paper size?
#
# ## References
#
# * Mo & Morgado, DeepAVFusion, CVPR 2024 (Sec. 3, method); official code stoneMo/DeepAVFusion (commit 2768e7f).
# * [docs/official_implementation.md](../docs/official_implementation.md#1-architecture) §1.2-1.7 (architecture, per-layer computation, parameter
#   counts) and [§4](../docs/official_implementation.md#4-numerical-details-a-re-implementation-must-match) (the quirks a re-implementation must match).
# * He et al., *Masked Autoencoders Are Scalable Vision Learners*, CVPR 2022 (patchify, random masking, sin-cos embeddings).
# * Dosovitskiy et al., *An Image is Worth 16x16 Words*, ICLR 2021 (ViT); timm `Block` and `PatchEmbed`.
