"""DeepAVFusion, all of it in this single file: the encoder, its fusion blocks and the AVMAE pre-training.

Mo & Morgado, "Unveiling the Power of Audio-Visual Early Fusion Transformers with Dense Interactions
through Masked Modeling", CVPR 2024 (arXiv:2312.01017). Official code: github.com/stoneMo/DeepAVFusion
(commit 2768e7f). This is a clean-room re-implementation built from timm pieces, so that every
state_dict key and shape equals the official one and every output reproduces the official golden
fixtures within 1e-5 (the tests check both: docs/official_implementation.md §8). "§x.y" below are
sections of docs/official_implementation.md (§4: the numerical details a re-implementation must match).
Built on: MAE (He et al. 2022, facebookresearch/mae) and timm's ViT ``Block``.

Reading order, top to bottom:
  1. helpers: 2-D sin-cos tables, multi-head split/merge, softmax attention, a timm ViT block that
     can return its attention weights;
  2. ``ModalityViT`` (image or audio ViT, no cls token, frozen sin-cos pos-embed);
  3. fusion blocks: ``CrossAttention``, ``pair_attention`` (exact separable evaluation), and the
     ``token`` / ``dense`` / ``factorized`` blocks with the official quirks;
  4. ``DeepAVFusion`` (the encoder);
  5. ``random_masking`` and ``AVMAE`` (masked modeling of both modalities);
  6. ``build_encoder`` / ``build_avmae``.

Shape legend:
  B batch, C channels, H x W image, F x T mel bins x frames (audio "image", frequency on rows),
  Nv, Na visual / audio patch tokens (kept tokens when masking), Nf fusion-stream tokens
  = nf fusion | nv visual-aggregation | na audio-aggregation, D embed dim, h heads, d per-head width,
  Dd decoder width, P patch vector length (p * p * C), L depth.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from avlib.config import ModelConfig

__all__ = [
    "sincos_pos_embed_2d", "attend", "pair_attention", "ModalityViT", "CrossAttention",
    "FusionBlock", "TokenFusionBlock", "DenseFusionBlock", "FactorizedFusionBlock", "FactorizedAttention",
    "EncoderOutput", "DeepAVFusion", "random_masking", "AVMAEOutput", "AVMAE", "build_encoder", "build_avmae",
    "inpainting_noise",
]

VIT_EPS = 1e-6        # image/audio ViT blocks and their final norms (§4.8)
FUSION_EPS = 1e-5     # fusion blocks, fusion_norm and decoders use the nn.LayerNorm default (§4.8)
IN_CHANS = {"image": 3, "audio": 1}


# ----------------------------------------------------------------------------------------------
# 1. Helpers
# ----------------------------------------------------------------------------------------------
def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim) = [sin(pos * w_k) | cos(pos * w_k)], w_k = 10000^(-k / (dim/2))."""
    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000 ** omega                               # (dim/2,)
    out = np.einsum("m,d->md", pos.reshape(-1), omega)         # (M, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, dim)


def sincos_pos_embed_2d(embed_dim: int, grid: tuple[int, int]) -> torch.Tensor:
    """MAE 2-D sin-cos table for a (rows, cols) token grid, tokens row-major (§4.2).

    The first D/2 channels encode the column index, the last D/2 the row index. Computed in float32
    numpy exactly as the official ``get_2d_sincos_pos_embed`` (bit-exact on the fixtures).

    Returns:
        (rows * cols, D) float32.
    """
    assert embed_dim % 4 == 0, "sin-cos embedding needs embed_dim divisible by 4"
    rows, cols = grid
    col_idx, row_idx = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    table = np.concatenate([_sincos_1d(embed_dim // 2, col_idx), _sincos_1d(embed_dim // 2, row_idx)], axis=1)
    return torch.from_numpy(table)


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, h*d) -> (B, h, N, d); head-major channels (head k owns channels k*d ... (k+1)*d - 1)."""
    B, N, C = x.shape
    return x.view(B, N, num_heads, C // num_heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, h, N, d) -> (B, N, h*d), the inverse of ``split_heads``."""
    B, h, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, h * d)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
           return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q k^T * scale) v, through SDPA unless the weights are asked for.

    Args:
        q: (B, h, Nq, dk); k: (B, h, Nk, dk); v: (B, h, Nk, dv). dk and dv may differ.
        scale: explicit logit scale (the fusion blocks do not all use dk^-1/2, §4.5).
        return_attn: compute explicit softmax weights and return them.

    Returns:
        (B, h, Nq, dv) and the weights (B, h, Nq, Nk) or None.
    """
    if not return_attn:
        return F.scaled_dot_product_attention(q, k, v, scale=scale), None
    attn = (q @ k.transpose(-2, -1) * scale).softmax(dim=-1)  # (B, h, Nq, Nk)
    return attn @ v, attn


def vit_block(block: Block, x: torch.Tensor, return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a timm ViT ``Block`` on x (B, N, D); with ``return_attn`` the same computation with an
    explicit softmax, returning the weights (B, h, N, N). The explicit path skips attention/projection
    dropout (it is meant for figures; every config here has dropout 0)."""
    if not return_attn:
        return block(x), None
    attn = block.attn
    B, N, _ = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(B, N, 3, attn.num_heads, attn.head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)            # 3 x (B, h, N, d)
    y, weights = attend(attn.q_norm(q), attn.k_norm(k), v, attn.scale, return_attn=True)
    y = attn.proj(attn.norm(merge_heads(y)))                  # (B, N, D)
    x = x + block.drop_path1(block.ls1(y))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, weights


def gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), ids (B, K) -> (B, K, D), the tokens at ids in ids order."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _maybe_checkpoint(enabled: bool, fn, *args):
    """fn(*args), with activation checkpointing (recompute in backward) when enabled."""
    return checkpoint(fn, *args, use_reentrant=False) if enabled else fn(*args)


@torch.no_grad()
def _init_linear_and_norm(m: nn.Module) -> None:
    """Official (MAE) init: xavier-uniform Linear weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# ----------------------------------------------------------------------------------------------
# 2. Modality encoders
# ----------------------------------------------------------------------------------------------
class ModalityViT(nn.Module):
    """A ViT for one modality (official ``vits.ViT`` without cls token): patch_embed, frozen sin-cos
    pos_embed, ``depth`` timm Blocks (LayerNorm eps 1e-6) and a final norm. The blocks are driven by
    ``DeepAVFusion``, which interleaves them with the fusion stream."""

    def __init__(self, cfg: ModelConfig, in_chans: int, input_size: tuple[int, int]):
        super().__init__()
        D = cfg.embed_dim
        self.patch_embed = PatchEmbed(img_size=input_size, patch_size=cfg.patch_size, in_chans=in_chans, embed_dim=D)
        # frozen, but a parameter (and in the state_dict) as in the official code; filled in DeepAVFusion init
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, D), requires_grad=False)
        self.blocks = nn.ModuleList([
            Block(D, cfg.num_heads, mlp_ratio=cfg.mlp_ratio, qkv_bias=True, drop_path=cfg.drop_path,
                  norm_layer=partial(nn.LayerNorm, eps=VIT_EPS))
            for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(D, eps=VIT_EPS)

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.patch_embed.grid_size)

    def embed(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> patch tokens + pos-embed (B, N, D); with ids_keep (B, K) only those, in that order."""
        x = self.patch_embed(x) + self.pos_embed  # (B, N, D), row-major grid order
        return x if ids_keep is None else gather_tokens(x, ids_keep)


# ----------------------------------------------------------------------------------------------
# 3. Fusion blocks (§4.5)
# ----------------------------------------------------------------------------------------------
class CrossAttention(nn.Module):
    """Multi-head attention of queries x over a context: q: D -> inner, kv: Dc -> 2*inner (first half
    of the output is K, second half V, each head-major), proj: inner -> D."""

    def __init__(self, dim: int, inner_dim: int, num_heads: int, scale: float, context_dim: int | None = None):
        super().__init__()
        self.num_heads, self.scale = num_heads, scale
        self.q = nn.Linear(dim, inner_dim)
        self.kv = nn.Linear(context_dim or dim, 2 * inner_dim)
        self.proj = nn.Linear(inner_dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, Nq, D), context (B, Nk, Dc) -> (B, Nq, D) and weights (B, h, Nq, Nk) or None."""
        h = self.num_heads
        k, v = self.kv(context).chunk(2, dim=-1)                  # (B, Nk, inner) each
        y, attn = attend(split_heads(self.q(x), h), split_heads(k, h), split_heads(v, h), self.scale, return_attn)
        return self.proj(merge_heads(y)), attn


def pair_attention(q: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor,
                   w_k: torch.Tensor, b_k: torch.Tensor, w_v: torch.Tensor, b_v: torch.Tensor,
                   scale: float, mode: str = "separable",
                   return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of queries over all N1*N2 concatenated pairs P(i, j) = [x1_i ‖ x2_j] (index i*N2 + j).

    Keys and values are linear maps of the pair, k_ij = Wk1 x1_i + Wk2 x2_j + bk (same for v), so
    with s_i = q.Wk1 x1_i and t_j = q.Wk2 x2_j the logits are scale * (s_i + t_j + q.bk) and

        softmax_ij = softmax_i(scale * s) * softmax_j(scale * t)      (q.bk is a constant per query)
        out = sum_ij p_i p_j (Wv1 x1_i + Wv2 x2_j + bv) = sum_i p_i Wv1 x1_i + sum_j p_j Wv2 x2_j + bv

    i.e. two ordinary cross-attentions, one per side, with both biases on side 1 (the key bias
    cancels in the softmax, the value bias passes through because the weights sum to 1). That is the
    "separable" mode: O(N1 + N2) instead of O(N1 * N2), no pair tensor, same outputs and gradients
    up to float rounding. The identity needs the pair weights to stay a product, so it would break
    with attention dropout (none of these blocks has any). "explicit" materializes every pair (the
    official computation, kept as reference).

    Args:
        q: (B, h, Nq, dk/h) projected, head-split queries.
        x1, x2: (B, N1, E1), (B, N2, E2) the two sides of the pair feature.
        w_k, b_k: (dk, E1+E2), (dk,) key projection; w_v, b_v: (dv, E1+E2), (dv,) value projection.
        scale: logit scale; mode: "separable" | "explicit".

    Returns:
        (B, h, Nq, dv/h) and the pair weights (B, h, Nq, N1, N2) or None.
    """
    h, E1 = q.shape[1], x1.shape[-1]
    if mode == "explicit":
        B, N1, _ = x1.shape
        N2 = x2.shape[1]
        pairs = torch.cat([x1.unsqueeze(2).expand(-1, -1, N2, -1), x2.unsqueeze(1).expand(-1, N1, -1, -1)], dim=-1)
        pairs = pairs.flatten(1, 2)                               # (B, N1*N2, E1+E2), i-major
        k, v = F.linear(pairs, w_k, b_k), F.linear(pairs, w_v, b_v)
        y, attn = attend(q, split_heads(k, h), split_heads(v, h), scale, return_attn)
        return y, None if attn is None else attn.unflatten(-1, (N1, N2))
    if mode != "separable":
        raise ValueError(f"pair attention mode {mode!r}: 'separable' or 'explicit'")
    k1, v1 = F.linear(x1, w_k[:, :E1], b_k), F.linear(x1, w_v[:, :E1], b_v)   # (B, N1, dk), (B, N1, dv)
    k2, v2 = F.linear(x2, w_k[:, E1:]), F.linear(x2, w_v[:, E1:])               # (B, N2, dk), (B, N2, dv)
    y1, attn1 = attend(q, split_heads(k1, h), split_heads(v1, h), scale, return_attn)  # (B, h, Nq, dv/h)
    y2, attn2 = attend(q, split_heads(k2, h), split_heads(v2, h), scale, return_attn)
    attn = None if attn1 is None else attn1.unsqueeze(-1) * attn2.unsqueeze(-2)    # (B, h, Nq, N1, N2)
    return y1 + y2, attn


class FusionBlock(nn.Module):
    """Skeleton shared by the three fusion blocks (§4.5): all LayerNorms eps 1e-5,

        Z = norm1_mm(X_f);  V, A = normalized modality tokens
        X_mid = Z + mix(Z, V, A)          # quirk: the residual goes onto the NORMALIZED stream
        X_f'  = X_mid + MLP(norm2(X_mid))

    Subclasses build ``attn`` and define ``mix``. Key order: norm1_mm, norm1_aud, norm1_img, attn, norm2, mlp.
    """

    def __init__(self, cfg: ModelConfig, attn: nn.Module):
        super().__init__()
        D = cfg.embed_dim
        self.num_heads, self.pair_mode = cfg.fusion_num_heads, cfg.pair_attention
        self.norm1_mm = nn.LayerNorm(D, eps=FUSION_EPS)
        self.norm1_aud = nn.LayerNorm(D, eps=FUSION_EPS)
        self.norm1_img = nn.LayerNorm(D, eps=FUSION_EPS)
        self.attn = attn
        self.drop_path1 = DropPath(cfg.drop_path) if cfg.drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(D, eps=FUSION_EPS)
        self.mlp = Mlp(D, hidden_features=int(D * cfg.fusion_mlp_ratio))   # exact GELU
        self.drop_path2 = DropPath(cfg.drop_path) if cfg.drop_path > 0 else nn.Identity()

    def normalize_modalities(self, xv: torch.Tensor, xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.norm1_img(xv), self.norm1_aud(xa)

    def mix(self, z: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
            return_attn: bool) -> tuple[torch.Tensor, dict]:
        """z (B, Nf, D), v (B, Nv, D), a (B, Na, D) -> update (B, Nf, D), {name: weights}."""
        raise NotImplementedError

    def forward(self, xf: torch.Tensor, xv: torch.Tensor, xa: torch.Tensor,
                return_attn: bool = False) -> tuple[torch.Tensor, dict]:
        """xf (B, Nf, D), xv (B, Nv, D), xa (B, Na, D) (layer inputs) -> new xf (B, Nf, D), {name: weights}."""
        z = self.norm1_mm(xf)
        update, attn = self.mix(z, *self.normalize_modalities(xv, xa), return_attn)
        x = z + self.drop_path1(update)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x, attn


class TokenFusionBlock(FusionBlock):
    """``token`` (official FusionBlock_LocalAVTokens): all Nf tokens cross-attend to [audio ; image]
    tokens. q: D -> d, kv: D -> 2d, proj: d -> D with d = int(D * r); scale (d // h)^-1/2 (no quirk)."""

    def __init__(self, cfg: ModelConfig):
        d, h = int(cfg.embed_dim * cfg.fusion_attn_ratio), cfg.fusion_num_heads
        super().__init__(cfg, CrossAttention(cfg.embed_dim, d, h, scale=(d // h) ** -0.5))

    def normalize_modalities(self, xv, xa):
        # quirk (§4.5): norm1_aud's parameters normalize the IMAGE tokens, norm1_img's the AUDIO tokens
        return self.norm1_aud(xv), self.norm1_img(xa)

    def mix(self, z, v, a, return_attn):
        y, attn = self.attn(z, torch.cat([a, v], dim=1), return_attn)   # context (B, Na+Nv, D)
        return y, {"attn": attn}


class DenseFusionBlock(FusionBlock):
    """``dense`` (official FusionBlock_DenseAVInteractions): all Nf tokens attend to the Na*Nv pairs
    [audio_i ‖ image_j] (audio first, quirk). q: D -> d, kv: 2D -> 2d (first half K), proj: d -> D;
    scale (D // h)^-1/2 whatever r (quirk)."""

    def __init__(self, cfg: ModelConfig):
        D, h = cfg.embed_dim, cfg.fusion_num_heads
        super().__init__(cfg, CrossAttention(D, int(D * cfg.fusion_attn_ratio), h, scale=(D // h) ** -0.5,
                                             context_dim=2 * D))

    def mix(self, z, v, a, return_attn):
        at, d = self.attn, self.attn.q.out_features
        q = split_heads(at.q(z), self.num_heads)                  # (B, h, Nf, d/h)
        w, b = at.kv.weight, at.kv.bias                           # (2d, 2D), (2d,): rows [K | V]
        y, attn = pair_attention(q, a, v, w[:d], b[:d], w[d:], b[d:], at.scale, self.pair_mode, return_attn)
        return at.proj(merge_heads(y)), {"pair": attn}           # pair weights (B, h, Nf, Na, Nv)


class FactorizedAttention(nn.Module):
    """Parameters of the factorized block's attention, official names: aggregation cross-attentions
    attn_v / attn_a (D -> D, normal scale) and the pair attention q: D -> d, k: 2D -> d, v: 2D -> D,
    proj: D -> D, with d = int(D * r) and scale (D // h)^-1/2 whatever r (quirk)."""

    def __init__(self, dim: int, num_heads: int, attn_ratio: float):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.attn_v = CrossAttention(dim, dim, num_heads, scale=self.scale)
        self.attn_a = CrossAttention(dim, dim, num_heads, scale=self.scale)
        d = int(dim * attn_ratio)
        self.q = nn.Linear(dim, d)
        self.k = nn.Linear(2 * dim, d)
        self.v = nn.Linear(2 * dim, dim)
        self.proj = nn.Linear(dim, dim)


class FactorizedFusionBlock(FusionBlock):
    """``factorized`` (official FusionBlock_FactorizedAVInteractions, the paper's method):
      1. split Z into [F | V_aggr | A_aggr];
      2. aggregation: V' = attn_v(V_aggr -> image tokens), A' = attn_a(A_aggr -> audio tokens);
      3. F' = proj(attention of F over the nv*na pairs [V'_i ‖ A'_j], visual first, i-major);
      4. update = [F' ; V' ; A'].
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, FactorizedAttention(cfg.embed_dim, cfg.fusion_num_heads, cfg.fusion_attn_ratio))
        self.splits = (cfg.num_fusion_tokens, cfg.num_aggr_image_tokens, cfg.num_aggr_audio_tokens)

    def mix(self, z, v, a, return_attn):
        at = self.attn
        f, v_aggr, a_aggr = z.split(self.splits, dim=1)           # (B, nf, D), (B, nv, D), (B, na, D)
        v_aggr, attn_v = at.attn_v(v_aggr, v, return_attn)        # (B, nv, D)
        a_aggr, attn_a = at.attn_a(a_aggr, a, return_attn)        # (B, na, D)
        q = split_heads(at.q(f), self.num_heads)                  # (B, h, nf, d/h)
        y, attn_pair = pair_attention(q, v_aggr, a_aggr, at.k.weight, at.k.bias, at.v.weight, at.v.bias,
                                      at.scale, self.pair_mode, return_attn)   # (B, h, nf, D/h)
        update = torch.cat([at.proj(merge_heads(y)), v_aggr, a_aggr], dim=1)   # (B, Nf, D)
        return update, {"attn_v": attn_v, "attn_a": attn_a, "pair": attn_pair}


FUSION_BLOCKS = {"token": TokenFusionBlock, "dense": DenseFusionBlock, "factorized": FactorizedFusionBlock}


# ----------------------------------------------------------------------------------------------
# 4. The encoder (§4.4)
# ----------------------------------------------------------------------------------------------
@dataclass
class EncoderOutput:
    """See ARCHITECTURE.md. Masked runs hold the kept tokens in ids_keep order."""
    image: torch.Tensor                               # (B, Nv, D) after image.norm
    audio: torch.Tensor                               # (B, Na, D) after audio.norm
    fusion: torch.Tensor                              # (B, Nf, D) after fusion_norm
    embs_image: tuple[torch.Tensor, ...] | None = None   # L x (B, Nv, D) before the final norms
    embs_audio: tuple[torch.Tensor, ...] | None = None   # L x (B, Na, D)
    embs_fusion: tuple[torch.Tensor, ...] | None = None  # L x (B, Nf, D)
    attn: dict[str, torch.Tensor] | None = None       # name -> (B, h, Nq, ...) softmax weights


class DeepAVFusion(nn.Module):
    """Two ViTs plus a fusion stream. At each layer l with a fusion block (inputs X_v, X_a, X_f):

        X_v' = ViT_v([X_f ; X_v])[Nf:]     (distribution: fusion tokens join the self-attention,
        X_a' = ViT_a([X_f ; X_a])[Nf:]      their outputs are discarded)
        X_f' = FusionBlock_l(X_f, X_v, X_a) (from the layer INPUTS: parallel, not sequential)

    Layers without a fusion block run the ViT blocks alone and pass X_f through. Fusion tokens are
    ``[fusion | visual-aggregation | audio-aggregation]``.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.fusion_tokens = nn.Parameter(torch.zeros(1, cfg.num_fusion_total, cfg.embed_dim))
        self.image = ModalityViT(cfg, IN_CHANS["image"], cfg.image_size)
        self.audio = ModalityViT(cfg, IN_CHANS["audio"], cfg.audio_size)
        fusion_ids = set(cfg.fusion_layer_ids)
        # one slot per layer, None where a layer has no fusion block (keys keep the layer index)
        self.fusion_blocks = nn.ModuleList([FUSION_BLOCKS[cfg.fusion_arch](cfg) if l in fusion_ids else None
                                            for l in range(cfg.depth)])
        self.fusion_norm = nn.LayerNorm(cfg.embed_dim, eps=FUSION_EPS)
        self.initialize_weights()

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Official init: sin-cos pos-embeds, patch-embed conv xavier-uniform on its (D, C*p*p) view
        (as MAE), xavier Linear / zero bias / LayerNorm (1, 0) everywhere, fusion tokens N(0, 0.02^2)."""
        for vit in (self.image, self.audio):
            vit.pos_embed.copy_(sincos_pos_embed_2d(self.embed_dim, vit.grid).unsqueeze(0))
            w = vit.patch_embed.proj.weight
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))        # the conv bias keeps its default init
        nn.init.normal_(self.fusion_tokens, std=0.02)
        self.apply(_init_linear_and_norm)

    @property
    def image_grid(self) -> tuple[int, int]:
        return self.image.grid

    @property
    def audio_grid(self) -> tuple[int, int]:
        return self.audio.grid

    @property
    def num_layers(self) -> int:
        return self.cfg.depth

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def no_weight_decay(self) -> set[str]:
        """Parameter names (relative to the encoder) that take no weight decay."""
        return {"fusion_tokens", "image.pos_embed", "audio.pos_embed"}

    def layer_id(self, name: str) -> int:
        """Layer index for layer-wise lr decay: embeddings and fusion tokens 0, ViT / fusion block i
        -> i + 1, everything after the last block (final norms, fusion_norm, heads) depth + 1.
        ``name`` is relative to the encoder (a leading ``encoder.`` is ignored)."""
        name = name.removeprefix("encoder.")
        parts = name.split(".")
        if name == "fusion_tokens" or parts[-1] == "pos_embed" or "patch_embed" in parts:
            return 0
        if parts[0] in ("image", "audio") and parts[1] == "blocks":
            return int(parts[2]) + 1
        if parts[0] == "fusion_blocks":
            return int(parts[1]) + 1
        return self.num_layers + 1

    def forward_layer(self, l: int, xv: torch.Tensor, xa: torch.Tensor, xf: torch.Tensor,
                      return_attn: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """One layer: (B, Nv, D), (B, Na, D), (B, Nf, D) -> the same three, {name: weights}."""
        fusion = self.fusion_blocks[l]
        blk_v, blk_a = self.image.blocks[l], self.audio.blocks[l]
        if fusion is None:
            (xv, attn_v), (xa, attn_a) = vit_block(blk_v, xv, return_attn), vit_block(blk_a, xa, return_attn)
            return xv, xa, xf, {f"image.blocks.{l}": attn_v, f"audio.blocks.{l}": attn_a}
        nf = xf.shape[1]
        xf_new, attn_f = fusion(xf, xv, xa, return_attn)           # reads the layer inputs
        yv, attn_v = vit_block(blk_v, torch.cat([xf, xv], dim=1), return_attn)   # (B, Nf+Nv, D)
        ya, attn_a = vit_block(blk_a, torch.cat([xf, xa], dim=1), return_attn)   # (B, Nf+Na, D)
        attn = {f"image.blocks.{l}": attn_v, f"audio.blocks.{l}": attn_a}
        attn.update({f"fusion_blocks.{l}.{k}": w for k, w in attn_f.items()})
        return yv[:, nf:], ya[:, nf:], xf_new, attn

    def forward(self, image: torch.Tensor, audio: torch.Tensor,
                image_ids_keep: torch.Tensor | None = None, audio_ids_keep: torch.Tensor | None = None,
                return_embs: bool = False, return_attn: bool = False) -> EncoderOutput:
        """Encode an image (B, 3, H, W) and a log-mel (B, 1, F, T).

        Args:
            image_ids_keep, audio_ids_keep: (B, K) indices of the patches to keep (``random_masking``).
            return_embs: also return each stream after every layer (before the final norms).
            return_attn: also return every attention's softmax weights (computed explicitly).
        """
        xv = self.image.embed(image, image_ids_keep)              # (B, Nv, D)
        xa = self.audio.embed(audio, audio_ids_keep)              # (B, Na, D)
        xf = self.fusion_tokens.expand(xv.shape[0], -1, -1)       # (B, Nf, D)
        use_ckpt = self.cfg.grad_checkpointing and self.training and not return_attn
        embs, attn = [], {}
        for l in range(self.num_layers):
            xv, xa, xf, layer_attn = _maybe_checkpoint(use_ckpt, self.forward_layer, l, xv, xa, xf, return_attn)
            attn.update(layer_attn)
            if return_embs:
                embs.append((xv, xa, xf))
        embs_v, embs_a, embs_f = zip(*embs) if return_embs else (None, None, None)
        return EncoderOutput(image=self.image.norm(xv), audio=self.audio.norm(xa), fusion=self.fusion_norm(xf),
                             embs_image=embs_v, embs_audio=embs_a, embs_fusion=embs_f,
                             attn=attn if return_attn else None)


# ----------------------------------------------------------------------------------------------
# 5. Masked modeling (§4.3, §4.6, §4.7)
# ----------------------------------------------------------------------------------------------
def random_masking(B: int, L: int, ratio: float, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, device=None):
    """Per-sample uniform random masking (MAE / official ``AVMAE.random_masking``).

    Args:
        B, L: batch size and number of patches; ratio: fraction removed.
        noise: (B, L) uniform noise to use; otherwise drawn with ``torch.rand`` (from ``generator``
            when given, so a figure's mask does not depend on earlier RNG draws).

    Returns:
        ids_keep (B, K) kept patches in ascending-noise order (the smallest noise is kept),
        mask (B, L) float in patch order, 1 = removed, 0 = kept,
        ids_restore (B, L) with ids_shuffle[ids_restore] = arange(L).
        K = int(L * (1 - ratio)) in Python float arithmetic.
    """
    if noise is None:
        gen_device = generator.device if generator is not None else device
        noise = torch.rand(B, L, generator=generator, device=gen_device)
    noise = noise.to(device) if device is not None else noise
    len_keep = int(L * (1 - ratio))
    ids_shuffle = torch.argsort(noise, dim=1)                     # ascend: small is keep, large is remove
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(B, L, device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)                     # back to patch order
    return ids_keep, mask, ids_restore


@dataclass
class AVMAEOutput:
    loss: torch.Tensor              # () loss_image + loss_audio
    loss_image: torch.Tensor        # () MSE over masked image patches
    loss_audio: torch.Tensor        # ()
    pred_image: torch.Tensor        # (B, Nv, p*p*3) every patch, original order (normalized pixels if norm_pix_loss)
    pred_audio: torch.Tensor        # (B, Na, p*p)
    mask_image: torch.Tensor        # (B, Nv) 1 = masked
    mask_audio: torch.Tensor        # (B, Na)
    ids_keep_image: torch.Tensor    # (B, Kv)
    ids_keep_audio: torch.Tensor    # (B, Ka)


def _patch_stats(target: torch.Tensor, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """target (B, N, P) -> per-patch mean and sqrt(unbiased var + 1e-6) (norm_pix_loss), each (B, N, 1);
    with ``channels`` C > 1 per colour channel of a patch ((p, q, c) order: ``ModelConfig.image_target_norm
    = "channel"``), each broadcast back to (B, N, P)."""
    if channels == 1:
        return target.mean(dim=-1, keepdim=True), (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5
    B, N, P = target.shape
    t = target.view(B, N, P // channels, channels)                # (B, N, p*q, C)
    mean = t.mean(dim=2, keepdim=True).expand_as(t).reshape(B, N, P)
    std = ((t.var(dim=2, keepdim=True) + 1e-6) ** 0.5).expand_as(t).reshape(B, N, P)
    return mean, std


def inpainting_noise(sounding: torch.Tensor, image_grid: tuple[int, int], audio: torch.Tensor, patch: int,
                     p_a2v: float, p_v2a: float, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Masking noise for ``ModelConfig.masking = "inpainting"`` (kit deviation, same mask ratios).

    ``random_masking`` keeps the tokens of smallest noise. Per sample, with probability ``p_a2v`` the
    sounding cell's image tokens get noise + 2 (masked first: audio -> image), with ``p_v2a`` they get
    noise - 2 (kept first) and the audio tokens are ranked by loudness so the quietest are kept (image ->
    audio); otherwise uniform noise (the official masking).

    Args:
        sounding: (B, cells) one-hot (or multi-hot) sounding cells of a ``grid x grid`` scene.
        image_grid: (gh, gw) image tokens; audio: (B, 1, F, T) log-mels; patch: the patch size.
    Returns:
        noise_image (B, gh*gw), noise_audio (B, Na).
    """
    B, cells = sounding.shape
    gh, gw = image_grid
    g = int(round(cells ** 0.5))
    row = torch.arange(gh, device=audio.device).repeat_interleave(gw) * g // gh
    col = torch.arange(gw, device=audio.device).repeat(gh) * g // gw
    cell_of_token = row * g + col                                 # (Nv,) row-major cell of each token
    in_cell = sounding.to(audio.device)[:, cell_of_token] > 0      # (B, Nv) tokens of a sounding cell
    u = torch.rand(B, 1, generator=generator, device=audio.device)
    a2v, v2a = u < p_a2v, (u >= p_a2v) & (u < p_a2v + p_v2a)       # (B, 1) each
    nv = torch.rand(B, gh * gw, generator=generator, device=audio.device)
    nv = torch.where(a2v & in_cell, nv + 2.0, torch.where(v2a & in_cell, nv - 2.0, nv))
    energy = F.avg_pool2d(audio, patch).flatten(1)                 # (B, Na) mean log-mel per token, row-major
    quiet = energy.argsort(1).argsort(1).float() / energy.shape[1]   # rank in [0, 1): quietest smallest
    na = torch.where(v2a, quiet, torch.rand(energy.shape, generator=generator, device=audio.device))
    return nv, na


class AVMAE(nn.Module):
    """Masked modeling of both modalities around a ``DeepAVFusion`` encoder (official ``AVMAE``).

    Per modality m (image, audio), official flat names ``{m}_decoder_{embed, mask_token, pos_embed
    (trainable, sin-cos init), blocks, norm, pred}``: kept encoder tokens are embedded, mask tokens
    appended, un-shuffled, pos-embedded; the Nf normalized fusion tokens go through the same
    ``{m}_decoder_embed`` and are prepended; timm Blocks (LayerNorm eps 1e-5); the fusion positions
    are dropped; norm -> pred (B, N, P).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = DeepAVFusion(cfg)
        D, Dd, p = cfg.embed_dim, cfg.decoder_embed_dim, cfg.patch_size
        # audio before image: fixes the official key order (the four bare parameters come first)
        for m in ("audio", "image"):
            grid = getattr(cfg, f"{m}_grid")
            setattr(self, f"{m}_decoder_embed", nn.Linear(D, Dd))
            setattr(self, f"{m}_decoder_mask_token", nn.Parameter(torch.zeros(1, 1, Dd)))
            setattr(self, f"{m}_decoder_pos_embed", nn.Parameter(torch.zeros(1, grid[0] * grid[1], Dd)))
            setattr(self, f"{m}_decoder_blocks", nn.ModuleList([
                Block(Dd, cfg.decoder_num_heads, mlp_ratio=cfg.decoder_mlp_ratio, qkv_bias=True,
                      norm_layer=partial(nn.LayerNorm, eps=FUSION_EPS))
                for _ in range(cfg.decoder_depth)]))
            setattr(self, f"{m}_decoder_norm", nn.LayerNorm(Dd, eps=FUSION_EPS))
            setattr(self, f"{m}_decoder_pred", nn.Linear(Dd, p * p * IN_CHANS[m]))
        self.initialize_weights()

    def _decoder(self, modality: str, part: str):
        return getattr(self, f"{modality}_decoder_{part}")

    def _grid(self, modality: str) -> tuple[int, int]:
        return getattr(self.encoder, f"{modality}_grid")

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """Decoders as the official AVMAE init (the encoder initializes itself): sin-cos pos-embeds,
        mask tokens N(0, 0.02^2), xavier Linear / zero bias / LayerNorm (1, 0)."""
        for m in ("audio", "image"):
            table = sincos_pos_embed_2d(self.cfg.decoder_embed_dim, self._grid(m))
            self._decoder(m, "pos_embed").copy_(table.unsqueeze(0))
            nn.init.normal_(self._decoder(m, "mask_token"), std=0.02)
            for part in ("embed", "blocks", "norm", "pred"):
                self._decoder(m, part).apply(_init_linear_and_norm)

    # -- patches -------------------------------------------------------------------------------
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, gh*gw, p*p*C): patches row-major, (p, q, c) order inside a patch."""
        p = self.cfg.patch_size
        B, C, H, W = x.shape
        x = x.reshape(B, C, H // p, p, W // p, p)                 # (B, C, gh, p, gw, q)
        x = torch.einsum("nchpwq->nhwpqc", x)                     # (B, gh, gw, p, q, C)
        return x.reshape(B, (H // p) * (W // p), p * p * C)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int], chans: int) -> torch.Tensor:
        """(B, gh*gw, p*p*C) -> (B, C, gh*p, gw*p), the inverse of ``patchify``."""
        p, (gh, gw) = self.cfg.patch_size, grid
        x = x.reshape(x.shape[0], gh, gw, p, p, chans)            # (B, gh, gw, p, q, C)
        x = torch.einsum("nhwpqc->nchpwq", x)                     # (B, C, gh, p, gw, q)
        return x.reshape(x.shape[0], chans, gh * p, gw * p)

    def unpatchify_image(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Nv, p*p*3) -> (B, 3, H, W)."""
        return self.unpatchify(x, self._grid("image"), IN_CHANS["image"])

    def unpatchify_audio(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Na, p*p) -> (B, 1, F, T)."""
        return self.unpatchify(x, self._grid("audio"), IN_CHANS["audio"])

    # -- stages --------------------------------------------------------------------------------
    def forward_decoder(self, modality: str, x: torch.Tensor, x_fusion: torch.Tensor,
                        ids_restore: torch.Tensor) -> torch.Tensor:
        """Kept tokens x (B, K, D) (ids_keep order), fusion tokens (B, Nf, D), ids_restore (B, N)
        -> predictions (B, N, P) for every patch in patch order."""
        embed = self._decoder(modality, "embed")
        x = embed(x)                                              # (B, K, Dd)
        B, K, Dd = x.shape
        N = ids_restore.shape[1]
        x = torch.cat([x, self._decoder(modality, "mask_token").expand(B, N - K, -1)], dim=1)   # (B, N, Dd)
        x = gather_tokens(x, ids_restore) + self._decoder(modality, "pos_embed")               # un-shuffle
        nf = x_fusion.shape[1]
        x = torch.cat([embed(x_fusion), x], dim=1)                # (B, Nf+N, Dd), fusion tokens first
        use_ckpt = self.cfg.grad_checkpointing and self.training
        for blk in self._decoder(modality, "blocks"):
            x = _maybe_checkpoint(use_ckpt, blk, x)
        return self._decoder(modality, "pred")(self._decoder(modality, "norm")(x[:, nf:]))

    def _target_channels(self, modality: str) -> int:
        """Colour channels standardized separately in a target patch (``image_target_norm``): 1 = jointly."""
        return IN_CHANS["image"] if modality == "image" and self.cfg.image_target_norm == "channel" else 1

    def forward_loss(self, target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
                     norm_pix_loss: bool | None = None, channels: int = 1) -> torch.Tensor:
        """Mean over masked patches of the per-patch MSE. target, pred (B, N, P); mask (B, N) 1 = masked.
        With norm_pix_loss (default: cfg) each target patch is standardized (unbiased var, +1e-6), over
        all its values or, with ``channels`` > 1, per colour channel."""
        if self.cfg.norm_pix_loss if norm_pix_loss is None else norm_pix_loss:
            mean, std = _patch_stats(target, channels)
            target = (target - mean) / std
        loss = ((pred - target) ** 2).mean(dim=-1)                # (B, N) mean loss per patch
        return (loss * mask).sum() / mask.sum()                   # masked patches only, whole batch

    def forward(self, image: torch.Tensor, audio: torch.Tensor,
                noise_image: torch.Tensor | None = None, noise_audio: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> AVMAEOutput:
        """Mask (image noise drawn first, then audio), encode the kept tokens, decode both, and score.

        Args:
            image: (B, 3, H, W); audio: (B, 1, F, T).
            noise_image, noise_audio: (B, Nv), (B, Na) masking noise to replay (else drawn).
            generator: RNG for the masking noise.
        """
        B, cfg = image.shape[0], self.cfg
        Nv, Na = (g[0] * g[1] for g in (self._grid("image"), self._grid("audio")))
        keep_v, mask_v, restore_v = random_masking(B, Nv, cfg.image_mask_ratio, noise_image, generator, image.device)
        keep_a, mask_a, restore_a = random_masking(B, Na, cfg.audio_mask_ratio, noise_audio, generator, audio.device)
        enc = self.encoder(image, audio, keep_v, keep_a)
        pred_v = self.forward_decoder("image", enc.image, enc.fusion, restore_v)
        pred_a = self.forward_decoder("audio", enc.audio, enc.fusion, restore_a)
        loss_v = self.forward_loss(self.patchify(image), pred_v, mask_v, channels=self._target_channels("image"))
        loss_a = self.forward_loss(self.patchify(audio), pred_a, mask_a)
        return AVMAEOutput(loss=loss_v + loss_a, loss_image=loss_v, loss_audio=loss_a,
                           pred_image=pred_v, pred_audio=pred_a, mask_image=mask_v, mask_audio=mask_a,
                           ids_keep_image=keep_v, ids_keep_audio=keep_a)

    @torch.no_grad()
    def reconstruct(self, image: torch.Tensor, audio: torch.Tensor,
                    out: AVMAEOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """For figures: the inputs with their masked patches replaced by the predictions (de-normalized
        with each target patch's own mean / std when norm_pix_loss). Returns (B, 3, H, W), (B, 1, F, T)."""
        recs = []
        for m, x, pred, mask in (("image", image, out.pred_image, out.mask_image),
                                 ("audio", audio, out.pred_audio, out.mask_audio)):
            target = self.patchify(x)                             # (B, N, P)
            if self.cfg.norm_pix_loss:
                mean, std = _patch_stats(target, self._target_channels(m))
                pred = pred * std + mean
            pasted = torch.where(mask.unsqueeze(-1).bool(), pred, target)
            recs.append(self.unpatchify(pasted, self._grid(m), IN_CHANS[m]))
        return recs[0], recs[1]


# ----------------------------------------------------------------------------------------------
# 6. Builders
# ----------------------------------------------------------------------------------------------
def build_encoder(model_cfg: ModelConfig) -> DeepAVFusion:
    """The encoder alone (downstream tasks)."""
    return DeepAVFusion(model_cfg)


def build_avmae(model_cfg: ModelConfig) -> AVMAE:
    """Encoder + both MAE decoders (pre-training)."""
    return AVMAE(model_cfg)
