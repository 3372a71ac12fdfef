"""The analytic cost model of DeepAVFusion: matmul FLOPs and the memory of the explicit pair attention.

    avmae_flops(cfg.model, batch=64)["train"]        # one pre-training step (3 x forward), model FLOPs
    encoder_flops(cfg.model, batch=8)                 # the encoder's forward, unmasked
    fusion_block_flops(cfg.model, nv=196, na=96, mode="explicit")
    explicit_pair_bytes(batch=8, **pair_shapes(cfg.model, nv, na))

FLOPs count 2 per multiply-add of every matmul (norms, softmax and activations are not counted): the
convention of model FLOPs utilization (MFU). Used by notebook 01 (why "dense" needs the separable form)
and by the benchmark (``avlib.bench``: achieved GFLOP/s, which explicit paths fit in memory).
"""
from __future__ import annotations

import math

from avlib.config import ModelConfig

__all__ = ["fusion_block_flops", "encoder_flops", "avmae_flops", "explicit_pair_bytes", "pair_shapes",
           "model_explicit_bytes"]


def _vit_block_flops(n: int, dim: int, mlp_ratio: float) -> int:
    """One timm ViT block on n tokens: qkv 2n·D·3D, scores + weighted sum 2·2n²·D (summed over heads),
    proj 2n·D², MLP 2·2n·D·int(rD)."""
    return 2 * n * dim * 3 * dim + 4 * n * n * dim + 2 * n * dim * dim + 4 * n * dim * int(dim * mlp_ratio)


def _attn_flops(nq: int, nk: int, dk: int, dv: int) -> int:
    """Attention of nq queries over nk keys: scores 2·nq·nk·dk, weighted sum 2·nq·nk·dv (heads summed)."""
    return 2 * nq * nk * (dk + dv)


def _pair_flops(nq: int, n1: int, n2: int, e1: int, e2: int, dk: int, dv: int, mode: str) -> int:
    """Pair attention (``avlib.model.pair_attention``) without the query projection.

    explicit: K, V of all n1·n2 pairs 2·n1n2·(e1+e2)·(dk+dv), then attention over n1n2 keys;
    separable: K, V of each side 2·(n1·e1 + n2·e2)·(dk+dv), then two attentions over n1 and n2 keys."""
    if mode == "explicit":
        return 2 * n1 * n2 * (e1 + e2) * (dk + dv) + _attn_flops(nq, n1 * n2, dk, dv)
    return (2 * (n1 * e1 + n2 * e2) * (dk + dv) + _attn_flops(nq, n1, dk, dv)
            + _attn_flops(nq, n2, dk, dv))


def fusion_block_flops(cfg: ModelConfig, nv: int, na: int, mode: str | None = None) -> int:
    """One fusion block (per sample) on nv visual and na audio tokens; MLP 2·2·Nf·D·int(r·D)."""
    mode = mode or cfg.pair_attention
    D, nf_all = cfg.embed_dim, cfg.num_fusion_total
    d = int(D * cfg.fusion_attn_ratio)
    mlp = 4 * nf_all * D * int(D * cfg.fusion_mlp_ratio)
    if cfg.fusion_arch == "token":        # q D->d, kv D->2d over [a; v], proj d->D
        attn = 2 * nf_all * D * d + 2 * (na + nv) * D * 2 * d + _attn_flops(nf_all, na + nv, d, d) \
            + 2 * nf_all * d * D
    elif cfg.fusion_arch == "dense":      # q D->d, pairs [a_i ‖ v_j] -> K, V of width d, proj d->D
        attn = 2 * nf_all * D * d + _pair_flops(nf_all, na, nv, D, D, d, d, mode) + 2 * nf_all * d * D
    elif cfg.fusion_arch == "factorized":
        nf, nva, naa = cfg.num_fusion_tokens, cfg.num_aggr_image_tokens, cfg.num_aggr_audio_tokens

        def aggregation(nq, nk):           # CrossAttention D -> D: q, kv, attention, proj
            return 2 * nq * D * D + 2 * nk * D * 2 * D + _attn_flops(nq, nk, D, D) + 2 * nq * D * D
        attn = (aggregation(nva, nv) + aggregation(naa, na) + 2 * nf * D * d
                + _pair_flops(nf, nva, naa, D, D, d, D, mode) + 2 * nf * D * D)   # pairs: K width d, V width D
    else:
        return 0
    return attn + mlp


def encoder_flops(cfg: ModelConfig, batch: int, masked: bool = False, mode: str | None = None) -> int:
    """Forward matmul FLOPs of ``DeepAVFusion`` (2 per multiply-add; norms, softmax, GELU not counted).

    Patch embeddings run on every patch (2·N·C·p²·D each); layer l runs the ViT blocks on [Nf; kept
    tokens] (or the kept tokens alone without a fusion block) plus the fusion block on the kept tokens.
    Kept tokens: int(N · (1 - mask_ratio)) when ``masked``."""
    p, D = cfg.patch_size, cfg.embed_dim
    Nv, Na = math.prod(cfg.image_grid), math.prod(cfg.audio_grid)
    nv = int(Nv * (1 - cfg.image_mask_ratio)) if masked else Nv
    na = int(Na * (1 - cfg.audio_mask_ratio)) if masked else Na
    total = 2 * Nv * 3 * p * p * D + 2 * Na * p * p * D
    fusion_ids, nf = set(cfg.fusion_layer_ids), cfg.num_fusion_total
    for layer in range(cfg.depth):
        extra = nf if layer in fusion_ids else 0
        total += _vit_block_flops(extra + nv, D, cfg.mlp_ratio) + _vit_block_flops(extra + na, D, cfg.mlp_ratio)
        if layer in fusion_ids:
            total += fusion_block_flops(cfg, nv, na, mode)
    return batch * total


def avmae_flops(cfg: ModelConfig, batch: int, mode: str | None = None) -> dict[str, int]:
    """Matmul FLOPs of one ``AVMAE`` pretraining step at the configured mask ratios.

    forward = masked encoder (``encoder_flops``) + per modality decoder: embed 2·(K + Nf)·D·Dd, depth
    timm blocks on Nf + N tokens at width Dd, prediction 2·N·Dd·P. train = 3 x forward (the backward
    of a matmul is two matmuls of the same size; the first conv's unneeded input gradient and
    activation checkpointing's recompute are ignored: this is *model* FLOPs, as MFU uses).
    ``mode`` (default cfg.pair_attention) picks the pair-attention formula; MFU uses "separable".
    """
    enc = encoder_flops(cfg, batch, masked=True, mode=mode)
    p, D, Dd, nf = cfg.patch_size, cfg.embed_dim, cfg.decoder_embed_dim, cfg.num_fusion_total
    dec = 0
    for grid, ratio, chans in ((cfg.image_grid, cfg.image_mask_ratio, 3), (cfg.audio_grid, cfg.audio_mask_ratio, 1)):
        N = math.prod(grid)
        K = int(N * (1 - ratio))
        dec += 2 * (K + nf) * D * Dd + cfg.decoder_depth * _vit_block_flops(nf + N, Dd, cfg.decoder_mlp_ratio) \
            + 2 * N * Dd * p * p * chans
    fwd = enc + batch * dec
    return {"encoder": enc, "decoders": batch * dec, "forward": fwd, "train": 3 * fwd}


def explicit_pair_bytes(batch: int, nq: int, n1: int, n2: int, e1: int, e2: int, dk: int, dv: int, heads: int,
                        backward: bool = False, itemsize: int = 4) -> int:
    """Upper estimate of what the explicit pair attention holds at once, in the official computation
    (manual softmax): the pair tensor (B, n1·n2, e1+e2), K (B, n1·n2, dk), V (B, n1·n2, dv), the logits
    and the softmax weights (B, h, nq, n1·n2) each. With ``backward`` their gradients too (x 2)."""
    pairs = batch * n1 * n2
    total = pairs * (e1 + e2 + dk + dv) + 2 * batch * heads * nq * n1 * n2
    return itemsize * total * (2 if backward else 1)


def pair_shapes(cfg: ModelConfig, nv: int, na: int) -> dict[str, int] | None:
    """The pair attention's sizes in one fusion block (None: the block has none)."""
    D, d, h = cfg.embed_dim, int(cfg.embed_dim * cfg.fusion_attn_ratio), cfg.fusion_num_heads
    if cfg.fusion_arch == "dense":
        return dict(nq=cfg.num_fusion_total, n1=na, n2=nv, e1=D, e2=D, dk=d, dv=d, heads=h)
    if cfg.fusion_arch == "factorized":
        return dict(nq=cfg.num_fusion_tokens, n1=cfg.num_aggr_image_tokens, n2=cfg.num_aggr_audio_tokens,
                    e1=D, e2=D, dk=d, dv=D, heads=h)
    return None


def model_explicit_bytes(cfg: ModelConfig, batch: int, train: bool) -> int:
    """Explicit-path estimate for a whole model: training keeps every fusion layer's tensors for the
    backward (plus one layer's gradients); inference holds one layer at a time."""
    Nv, Na = math.prod(cfg.image_grid), math.prod(cfg.audio_grid)
    nv = int(Nv * (1 - cfg.image_mask_ratio)) if train else Nv
    na = int(Na * (1 - cfg.audio_mask_ratio)) if train else Na
    shapes = pair_shapes(cfg, nv, na)
    if shapes is None or not cfg.fusion_layer_ids:
        return 0
    one = explicit_pair_bytes(batch, **shapes)
    return one * (len(cfg.fusion_layer_ids) + 1) if train else one
