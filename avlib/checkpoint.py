"""Checkpoints in the official DeepAVFusion layout: atomic save, safe load, strict load with readable errors.

    save_checkpoint("run/checkpoint_last.pt", {"state_dict": model.state_dict(), "config": cfg_dict, "epoch": 3})
    state = load_checkpoint("run/checkpoint_last.pt")          # weights_only=True: tensors and plain containers
    model, model_cfg = load_pretrained("checkpoint_latest.pth") # an official pre-training checkpoint, or ours

An official pre-training checkpoint (``checkpoints/deepavfusion_vitb_*_ep200/checkpoints/checkpoint_latest.pth``,
docs/official_implementation.md §5) holds ``ckpt['state_dict']`` = the full ``AVMAE`` state dict (keys
``encoder.*`` and ``{image,audio}_decoder_*``). Ours use the same layout plus ``ckpt['config']``.
"""
from __future__ import annotations

import math
import mmap
import os
import pickle
import re
import struct
import zipfile
import zlib
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn as nn

from avlib.config import PROFILES, ConfigError, ModelConfig
from avlib.model import AVMAE, DeepAVFusion
from avlib.utils import atomic_write

__all__ = [
    "CheckpointError", "save_checkpoint", "load_checkpoint", "extract_state_dict", "check_state_dict",
    "infer_model_config", "load_pretrained", "model_config_from_fixture",
]

# the profiles of the official ViT-B configurations (yaml default and the two released checkpoints)
RELEASE_PROFILES = ("paper", "vggsound_release", "as2m_release")
_LIST_LIMIT = 8   # names shown per category in mismatch errors


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, is unsafe to read, or does not fit the model."""


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """``torch.save`` that never leaves a half-written file (``avlib.utils.atomic_write``: temp file in the
    same folder, fsync, ``os.replace``; permissions from the umask; orphaned temp files of killed
    writers cleaned up). ``torch.save`` records a CRC-32 per tensor, which ``load_checkpoint`` checks."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", *, verify: bool = True) -> Any:
    """``torch.load(..., weights_only=True)``: tensors and plain containers only. A file that would
    run code when unpickled is refused; a truncated, corrupted or non-checkpoint file gives a readable
    ``CheckpointError`` naming it.

    ``verify``: check every record's CRC-32 against the zip archive's directory first (``torch.load``
    does not, so flipped bytes inside a tensor would load as wrong weights). Costs one extra pass over
    the file; measured on a busy 2-core CPU for a 1.4 GB checkpoint (page cache warm, medians of 5):
    the CRC pass 1.0 s, ``torch.load`` 2.0 s, both 2.6 s.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    is_zip = _check_format(path)
    if verify and is_zip:
        _verify_crc(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise CheckpointError(_corrupted(path, e)) from e
        detail = [ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln]
        reason = "; ".join(detail) or "weights_only=True rejected it"
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled Python objects other than tensors and plain "
            f"containers, which could execute code when loaded ({reason}). "
            f"If you trust its source, re-save its tensors as a plain state dict.") from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(_corrupted(path, e)) from e


def _corrupted(path: Path, reason: Exception | str) -> str:
    """The message for a file that starts like a checkpoint but cannot be read whole."""
    if isinstance(reason, Exception):
        reason = "torch.load said: " + (str(reason).splitlines()[0].rstrip(".") if str(reason) else type(reason).__name__)
    return (f"cannot read {path} ({path.stat().st_size:,} bytes): not a complete PyTorch checkpoint (truncated "
            f"or corrupted download/save?); {reason}. Fix: download or copy it again, or use an earlier checkpoint")


# What a file that is no checkpoint at all most often is, by its first bytes
_NOT_CHECKPOINTS = ((b"version https://git-lfs", "a Git LFS pointer (run `git lfs pull` to fetch the real file)"),
                    (b"<", "an HTML / XML page (a failed download or a login page?)"),
                    (b"{", "a JSON file"))


def _check_format(path: Path) -> bool:
    """Whether ``path`` is a zip archive (``torch.save`` since 1.6). A legacy pickle (``torch.save``
    before 1.6, or ``_use_new_zipfile_serialization=False``) starts with the pickle protocol byte 0x80; a
    file that is neither, or a zip start without its directory, raises ``CheckpointError`` here, before
    any unpickling (a text file is "not a checkpoint", not a code-execution risk)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise CheckpointError(_corrupted(path, "the file is empty (0 bytes)"))
    if zipfile.is_zipfile(path):
        return True
    if head.startswith(b"PK\x03\x04"):   # a zip's first record without the directory at its end: cut short
        raise CheckpointError(_corrupted(path, "a zip archive without its central directory (cut short)"))
    if head[:1] == b"\x80":
        return False
    what = next((desc for sig, desc in _NOT_CHECKPOINTS if head.lstrip().startswith(sig)),
                "a text file" if _is_text(head) else "neither a zip archive nor a pickle")
    raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is {what}; it starts with {head[:40]!r}. "
                          "Fix: pass the checkpoint file itself (torch.save output, e.g. avmae.pt or "
                          "checkpoint_latest.pth)")


def _is_text(head: bytes) -> bool:
    """No NUL and no control bytes other than tab / newlines (UTF-8 multi-byte characters allowed)."""
    return all(b >= 32 or b in b"\t\r\n" for b in head)


def _verify_crc(path: Path) -> None:
    """Check each record's CRC-32 (stored by ``torch.save``) without copying: the file is memory-mapped and
    ``zlib.crc32`` reads each record's bytes in place. Records whose stored CRC is 0 are skipped: that is
    what ``torch.serialization.set_crc32_options(False)`` writes."""
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as z, \
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            for info in z.infolist():
                if info.CRC == 0:
                    continue
                h = info.header_offset      # local header: 30 bytes, then the name and the extra field
                if mm[h:h + 4] != b"PK\x03\x04":
                    raise CheckpointError(_corrupted(path, f"record {info.filename!r} has a damaged header"))
                name_len, extra_len = struct.unpack("<HH", mm[h + 26:h + 30])
                start = h + 30 + name_len + extra_len
                if info.compress_type != zipfile.ZIP_STORED or start + info.compress_size > len(mm):
                    raise CheckpointError(_corrupted(path, f"record {info.filename!r} is cut short or compressed"))
                with memoryview(mm)[start:start + info.compress_size] as data:
                    crc = zlib.crc32(data)
                if crc != info.CRC:
                    raise CheckpointError(_corrupted(
                        path, f"record {info.filename!r} ({info.file_size:,} bytes) fails its CRC-32 check "
                              f"(stored {info.CRC:08x}, computed {crc:08x}): its bytes changed after saving"))
    except (zipfile.BadZipFile, struct.error, ValueError, OSError) as e:
        raise CheckpointError(_corrupted(path, e)) from e


def extract_state_dict(ckpt: Any) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: ``ckpt['state_dict']``, ``ckpt['model']`` or a bare state dict."""
    if isinstance(ckpt, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(ckpt.get(key), Mapping):
                return dict(ckpt[key])
        if ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
            return dict(ckpt)
    keys = list(ckpt)[:10] if isinstance(ckpt, Mapping) else type(ckpt).__name__
    raise CheckpointError(f"no state dict found: expected ckpt['state_dict'], ckpt['model'] or a dict of "
                          f"tensors; got {keys}")


def _short(items: list[str]) -> str:
    more = f", ... and {len(items) - _LIST_LIMIT} more" if len(items) > _LIST_LIMIT else ""
    return ", ".join(items[:_LIST_LIMIT]) + more


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str = "checkpoint") -> None:
    """Raise a ``CheckpointError`` naming the missing, unexpected and wrongly shaped keys (if any)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(v.shape)})"
             for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        lines = [f"{what} does not match the {type(model).__name__} it describes:"]
        for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                lines.append(f"  {name} ({len(items)}): {_short(items)}")
        raise CheckpointError("\n".join(lines))


# ----------------------------------------------------------------------------------------------
# Configuration from tensor shapes
# ----------------------------------------------------------------------------------------------
def _split_encoder(sd: Mapping[str, torch.Tensor]) -> tuple[dict, bool]:
    """Encoder keys without their ``encoder.`` prefix, and whether decoder keys are present."""
    has_decoder = any(k.startswith(("image_decoder_", "audio_decoder_")) for k in sd)
    if any(k.startswith("encoder.") for k in sd):
        return {k.removeprefix("encoder."): v for k, v in sd.items() if k.startswith("encoder.")}, has_decoder
    return dict(sd), has_decoder


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise CheckpointError(f"cannot infer the model configuration: key {key!r} is missing "
                              f"(is this a DeepAVFusion checkpoint?)")
    return tuple(sd[key].shape)


def _first_match(sd: Mapping, pattern: str) -> str | None:
    rx = re.compile(pattern)
    return next((k for k in sd if rx.fullmatch(k)), None)


def _indices(sd: Mapping, prefix: str) -> list[int]:
    """Sorted distinct integers N of keys ``{prefix}N.*``."""
    return sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})


def infer_model_config(state_dict: Mapping[str, torch.Tensor], profile: str | None = None,
                       **overrides: Any) -> ModelConfig:
    """The ``ModelConfig`` an (official-layout) AVMAE or encoder state dict was built with.

    Read from shapes and key names: embed dim, depth, patch size, ViT MLP ratio, fusion arch and
    layers (``attn.attn_v`` -> factorized; ``attn.kv`` over 2D -> dense, over D -> token; no
    ``fusion_blocks`` -> none), fusion attn ratio (``attn.q``) and MLP ratio (``mlp.fc1``), token
    count, patch counts, decoder width / depth / MLP ratio. Head counts, the fusion / aggregation
    split of the tokens and non-square grids are not in the shapes: they come from the known profile
    with the same embed dim (``profile``, else among ``paper`` / ``vggsound_release`` /
    ``as2m_release`` at 768 the one whose fusion ratios match) or from ``overrides`` (any
    ``ModelConfig`` field, applied last).
    """
    enc, has_decoder = _split_encoder(state_dict)
    D, num_tokens = _shape(enc, "fusion_tokens")[2], _shape(enc, "fusion_tokens")[1]
    p = _shape(enc, "image.patch_embed.proj.weight")[-1]
    blocks = _indices(enc, "image.blocks.")
    if not blocks:
        raise CheckpointError("cannot infer the model configuration: no image.blocks.* keys")
    inferred: dict[str, Any] = dict(embed_dim=D, patch_size=p, depth=blocks[-1] + 1,
                                    mlp_ratio=_shape(enc, f"image.blocks.{blocks[0]}.mlp.fc1.weight")[0] / D)

    layers = _indices(enc, "fusion_blocks.")
    if layers:
        q_key = _first_match(enc, r"fusion_blocks\.\d+\.attn\.q\.weight")
        fc1_key = _first_match(enc, r"fusion_blocks\.\d+\.mlp\.fc1\.weight")
        kv_key = _first_match(enc, r"fusion_blocks\.\d+\.attn\.kv\.weight")
        if _first_match(enc, r"fusion_blocks\.\d+\.attn\.attn_v\..*"):
            arch = "factorized"
        elif kv_key is not None:
            arch = "dense" if _shape(enc, kv_key)[1] == 2 * D else "token"
        else:
            raise CheckpointError("cannot tell the fusion block type: no attn.attn_v.* or attn.kv.weight keys")
        inferred.update(
            fusion_arch=arch, fusion_layers="all" if layers == list(range(inferred["depth"])) else tuple(layers),
            fusion_attn_ratio=_shape(enc, q_key or "fusion_blocks.0.attn.q.weight")[0] / D,
            fusion_mlp_ratio=_shape(enc, fc1_key or "fusion_blocks.0.mlp.fc1.weight")[0] / D)
    else:
        inferred.update(fusion_arch="none", fusion_layers="none")
    if has_decoder:
        Dd = _shape(state_dict, "image_decoder_embed.weight")[0]
        depths = {m: len(_indices(state_dict, f"{m}_decoder_blocks.")) for m in ("image", "audio")}
        if depths["image"] != depths["audio"]:
            raise CheckpointError(f"decoders of different depths {depths} are not supported (one decoder_depth)")
        inferred.update(decoder_embed_dim=Dd, decoder_depth=depths["image"])
        dec_fc1 = _first_match(state_dict, r"image_decoder_blocks\.\d+\.mlp\.fc1\.weight")
        if dec_fc1 is not None:
            inferred["decoder_mlp_ratio"] = _shape(state_dict, dec_fc1)[0] / Dd

    # the known configuration this most likely is: same width, then same fusion ratios
    if profile is not None and profile not in PROFILES:
        raise CheckpointError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    names = [profile] if profile else [n for n in (*RELEASE_PROFILES, *PROFILES) if n in PROFILES]
    candidates = [PROFILES[n]().model for n in dict.fromkeys(names)]
    candidates = [c for c in candidates if c.embed_dim == D]
    ratios = (inferred.get("fusion_attn_ratio"), inferred.get("fusion_mlp_ratio"))
    base = next((c for c in candidates if (c.fusion_attn_ratio, c.fusion_mlp_ratio) == ratios),
                candidates[0] if candidates else None)

    unresolved = []
    if base is not None:
        inferred.update(num_heads=base.num_heads, fusion_num_heads=base.fusion_num_heads,
                        decoder_num_heads=base.decoder_num_heads)
    else:
        unresolved += ["num_heads", "fusion_num_heads"] + (["decoder_num_heads"] if has_decoder else [])
    if base is not None and base.num_fusion_total == num_tokens:
        inferred.update(num_fusion_tokens=base.num_fusion_tokens, num_aggr_image_tokens=base.num_aggr_image_tokens,
                        num_aggr_audio_tokens=base.num_aggr_audio_tokens)
    elif num_tokens % 4 == 0:   # the official yaml's proportions 16 | 8 | 8
        inferred.update(num_fusion_tokens=num_tokens // 2, num_aggr_image_tokens=num_tokens // 4,
                        num_aggr_audio_tokens=num_tokens // 4)
    else:
        unresolved += ["num_fusion_tokens", "num_aggr_image_tokens", "num_aggr_audio_tokens"]
    for m in ("image", "audio"):
        n = _shape(enc, f"{m}.pos_embed")[1]
        side = math.isqrt(n)
        if base is not None and math.prod(getattr(base, f"{m}_grid")) == n:
            inferred[f"{m}_size"] = getattr(base, f"{m}_size")
        elif side * side == n:
            inferred[f"{m}_size"] = (side * p, side * p)
        else:
            unresolved.append(f"{m}_size")
    unresolved = [k for k in unresolved if k not in overrides]
    if unresolved:
        raise CheckpointError(f"cannot infer {', '.join(unresolved)} from the tensor shapes (embed_dim={D} "
                              f"matches no known profile): pass them as keyword arguments")
    unknown = set(overrides) - {f.name for f in fields(ModelConfig)}
    if unknown:
        raise CheckpointError(f"unknown ModelConfig fields {sorted(unknown)}")
    return replace(base if base is not None else ModelConfig(), **{**inferred, **overrides})


def _model_config_from_stored(config: Mapping, path: Path) -> ModelConfig:
    """``ModelConfig`` from a stored config dict (a full ``config_to_dict(Config)`` or its model part)."""
    model = config.get("model", config)
    try:
        return ModelConfig(**model)
    except (TypeError, ConfigError) as e:
        raise CheckpointError(f"{path}: its stored config does not describe a valid ModelConfig: {e}") from e


def load_pretrained(path: str | os.PathLike, profile: str | None = None,
                    **overrides: Any) -> tuple[AVMAE | DeepAVFusion, ModelConfig]:
    """Build the model an official (or our) pre-training checkpoint describes and load it strictly.

    The configuration comes from the checkpoint's stored ``config`` when there is one (and no
    ``profile`` is given), else from the tensor shapes (``infer_model_config``); ``overrides``
    (``ModelConfig`` fields, e.g. ``pair_attention="explicit"``) are applied last. Builds ``AVMAE``
    when decoder keys are present, else the encoder alone, and loads with ``strict=True`` after
    checking every key and shape (``CheckpointError`` naming the mismatches).

    Returns:
        (model, ModelConfig). Floating tensors are loaded as float32; the model is in train mode,
        like any freshly built module.
    """
    ckpt = load_checkpoint(path)
    sd = {k: v.float() if v.is_floating_point() else v for k, v in extract_state_dict(ckpt).items()}
    stored = ckpt.get("config") if isinstance(ckpt, Mapping) else None
    if isinstance(stored, Mapping) and profile is None:
        cfg = replace(_model_config_from_stored(stored, Path(path)), **overrides)
    else:
        cfg = infer_model_config(sd, profile, **overrides)
    enc, has_decoder = _split_encoder(sd)
    with torch.device("meta"):   # no init work: every tensor comes from the checkpoint
        model = AVMAE(cfg) if has_decoder else DeepAVFusion(cfg)
    sd = sd if has_decoder else enc
    check_state_dict(model, sd, what=str(path))
    model.load_state_dict(sd, strict=True, assign=True)
    return model, cfg


# ----------------------------------------------------------------------------------------------
# The golden fixtures' descriptive config (docs/official_implementation.md §8)
# ----------------------------------------------------------------------------------------------
def model_config_from_fixture(c: Mapping[str, Any], **overrides: Any) -> ModelConfig:
    """``ModelConfig`` from the descriptive ``config`` dict stored in an ``avmae_*.pt`` fixture."""
    if c["image_decoder_depth"] != c["audio_decoder_depth"] or c["image_norm_pix_loss"] != c["audio_norm_pix_loss"]:
        raise ValueError("per-modality decoder depths / norm_pix_loss must agree (one ModelConfig field each)")
    return ModelConfig(
        embed_dim=c["embed_dim"], depth=c["depth"], num_heads=c["vit_num_heads"], mlp_ratio=c["vit_mlp_ratio"],
        patch_size=c["patch_size"], image_size=tuple(c["image_size"]), audio_size=tuple(c["audio_size"]),
        drop_path=c["drop_path"], fusion_arch=c["fusion_arch"], fusion_layers=c["fusion_layers"],
        num_fusion_tokens=c["num_fusion_tokens"], num_aggr_image_tokens=c["num_visual_aggregation_tokens"],
        num_aggr_audio_tokens=c["num_audio_aggregation_tokens"], fusion_num_heads=c["fusion_num_heads"],
        fusion_attn_ratio=c["fusion_attn_ratio"], fusion_mlp_ratio=c["fusion_mlp_ratio"],
        image_mask_ratio=c["image_mask_ratio"], audio_mask_ratio=c["audio_mask_ratio"],
        decoder_embed_dim=c["decoder_dim"], decoder_depth=c["image_decoder_depth"],
        decoder_num_heads=c["decoder_num_heads"], decoder_mlp_ratio=c["decoder_mlp_ratio"],
        norm_pix_loss=c["image_norm_pix_loss"], **overrides)
