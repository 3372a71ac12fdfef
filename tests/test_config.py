"""The one config system: named profiles, recipes, overrides, strict keys, round trips."""
from __future__ import annotations

import numpy as np
import pytest

from avlib.config import (PROFILES, RECIPES, ConfigError, config_from_dict, config_hash, config_to_dict,
                          make_config, parse_assignments)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_profiles_build_and_round_trip(profile):
    cfg = make_config(profile)
    assert cfg.profile == profile
    assert (cfg.data.n_mels, cfg.data.num_frames) == cfg.model.audio_size     # front end feeds the model
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert config_hash(cfg) == config_hash(make_config(profile))


def test_release_profiles_differ_only_in_fusion_ratios():
    paper, vgg, as2m = make_config("paper"), make_config("vggsound_release"), make_config("as2m_release")
    assert (paper.model.fusion_attn_ratio, paper.model.fusion_mlp_ratio) == (0.25, 4.0)
    assert (vgg.model.fusion_attn_ratio, vgg.model.fusion_mlp_ratio) == (0.25, 1.0)
    assert (as2m.model.fusion_attn_ratio, as2m.model.fusion_mlp_ratio) == (1.0, 4.0)


def test_dotted_and_nested_overrides():
    cfg = make_config("smoke", overrides={"pretrain": {"epochs": 3}}, **{"model.fusion_arch": "dense_mmi"})
    assert cfg.pretrain.epochs == 3 and cfg.model.fusion_arch == "dense"      # official names accepted
    assert make_config("smoke") != cfg


@pytest.mark.parametrize("bad, hint", [({"model.dpth": 2}, "model.depth"),
                                       ({"pretrain": {"epoch": 2}}, "pretrain.epochs"),
                                       ({"nonsense": 1}, "")])
def test_unknown_keys_are_rejected_with_a_suggestion(bad, hint):
    with pytest.raises(ConfigError, match="unknown config key") as e:
        make_config("smoke", overrides=bad)
    assert hint in str(e.value)


def test_invalid_values_and_inconsistent_sizes_are_rejected():
    with pytest.raises(ConfigError, match="fusion_arch"):
        make_config("smoke", **{"model.fusion_arch": "sparse"})
    with pytest.raises(ConfigError, match="audio front end"):
        make_config("smoke", **{"data.n_mels": 48})
    with pytest.raises(ConfigError, match="profile"):
        make_config("laptop")


def test_official_recipe_is_a_named_alternative():
    sup, off = make_config("paper"), make_config("paper", recipe="official")
    assert sup.linprobe.train.optimizer == "adam" and sup.linprobe.train.lr == 1e-4      # supplement A.1
    assert off.linprobe.train.optimizer == "lars" and off.linprobe.head == "official"
    assert off.finetune.train.layer_decay == 0.75 and off.finetune.train.epochs == 100
    # a small profile keeps its own (short) schedule under the official recipe
    assert make_config("smoke", recipe="official").finetune.train.epochs == make_config("smoke").finetune.train.epochs


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_profile_and_recipe_passes_the_field_checks(profile, recipe):
    cfg = make_config(profile, recipe=recipe)
    assert config_from_dict(config_to_dict(cfg)) == cfg      # a stored config (lists for tuples) reads back


# (override, key named in the error, what the error says is expected): the reproductions of issue 16
BAD_VALUES = [
    ({"model.norm_pix_loss": "false"}, "model.norm_pix_loss", "true or false"),
    ({"model.depth": -1}, "model.depth", ">= 1"),
    ({"model.depth": 0}, "model.depth", ">= 1"),
    ({"model.depth": 2.0}, "model.depth", "an int"),
    ({"model.depth": True}, "model.depth", "an int"),
    ({"model.image_mask_ratio": 1.5}, "model.image_mask_ratio", "in [0, 1)"),
    ({"model.audio_mask_ratio": 0.9}, "model.audio_mask_ratio", "keeps at least one"),
    ({"pretrain.epochs": 2.5}, "pretrain.epochs", "an int"),
    ({"pretrain.epochs": "ten"}, "pretrain.epochs", "an int"),
    ({"pretrain.epochs": 0}, "pretrain.epochs", ">= 1"),
    ({"data.train_size": -5}, "data.train_size", ">= 1"),
    ({"data.sample_rate": 8000.5}, "data.sample_rate", "an int"),
    ({"seed": "0"}, "seed", "an int"),
    ({"finetune.train.lr": float("nan")}, "finetune.train.lr", "a finite number"),
    ({"finetune.train.schedule": "linear"}, "finetune.train.schedule", "cosine | constant"),
    ({"localization.train.betas": [0.9]}, "localization.train.betas", "a list of 2 float"),
    ({"separation.eval_mixtures": 0}, "separation.eval_mixtures", ">= 1"),
    ({"linprobe.features": ["audio", "sound"]}, "linprobe.features", "audio | visual | fusion"),
    ({"data.holdout_speakers": "theo"}, "data.holdout_speakers", "a list of str"),
    ({"model.fusion_layers": [0, 5]}, "model.fusion_layers", "0..1"),
    ({"model.fusion_layers": "1-x"}, "model.fusion_layers", "'a-b-c'"),
    ({"segmentation.head": "unet"}, "segmentation.head", "upsample | official_unet"),
    ({"data.root": 3}, "data.root", "a string or None"),
]


@pytest.mark.parametrize("override, key, expected", BAD_VALUES, ids=[str(b[0]) for b in BAD_VALUES])
def test_bad_values_are_rejected_naming_key_value_and_expectation(override, key, expected):
    with pytest.raises(ConfigError) as e:
        make_config("smoke", overrides=override)
    msg = str(e.value)
    value = next(iter(override.values()))
    shown = repr(tuple(value) if isinstance(value, list) and "list" not in expected else value)
    assert f"config key {key!r} = {shown}" in msg and expected in msg
    assert "Fix:" in msg


def test_nested_and_stored_configs_go_through_the_same_checks():
    with pytest.raises(ConfigError, match="'pretrain.epochs' = 2.5"):
        make_config("smoke", overrides={"pretrain": {"epochs": 2.5}})
    stored = config_to_dict(make_config("smoke"))
    stored["finetune"]["train"]["batch_size"] = -1                # a hand-edited manifest / checkpoint config
    with pytest.raises(ConfigError, match="'finetune.train.batch_size' = -1"):
        config_from_dict(stored)


def test_values_are_normalized_and_ints_accepted_for_floats():
    cfg = make_config("smoke", overrides={"data.holdout_speakers": ["theo"], "model.image_size": [48, 48],
                                          "pretrain.lr": 1, "data.num_workers": np.int64(2)})
    assert cfg.data.holdout_speakers == ("theo",) and cfg.model.image_size == (48, 48)
    assert cfg.pretrain.lr == 1 and type(cfg.data.num_workers) is int


def test_related_fields_can_change_together():
    cfg = make_config("smoke", **{"data.n_mels": 64, "model.audio_size": (64, 64)})   # one rebuild, one check
    assert cfg.model.audio_size == (64, 64)
    cfg = make_config("smoke", overrides={"model.fusion_layers": [2]}, **{"model.depth": 3})
    assert cfg.model.fusion_layer_ids == (2,)


def test_command_line_text_is_parsed_to_the_field_type():
    got = parse_assignments(["model.norm_pix_loss=false", "pretrain.epochs=3", "pretrain.lr=1e-3",
                             "data.root=none", "data.dataset='synthetic'", "model.image_size=48,48",
                             "data.holdout_speakers=[\"theo\", \"nicolas\"]", "model.fusion_layers=0-1",
                             "linprobe.train.clip_grad=null", "model.grad_checkpointing=TRUE"])
    assert got == {"model.norm_pix_loss": False, "pretrain.epochs": 3, "pretrain.lr": 1e-3, "data.root": None,
                   "data.dataset": "synthetic", "model.image_size": [48, 48],
                   "data.holdout_speakers": ["theo", "nicolas"], "model.fusion_layers": "0-1",
                   "linprobe.train.clip_grad": None, "model.grad_checkpointing": True}
    cfg = make_config("smoke", overrides=got)
    assert cfg.model.norm_pix_loss is False and cfg.model.fusion_layers == (0, 1)


@pytest.mark.parametrize("item, match", [("model.norm_pix_loss=no", "'model.norm_pix_loss' = 'no'.*true or false"),
                                         ("pretrain.epochs=ten", "'pretrain.epochs' = 'ten'.*an int"),
                                         ("pretrain.epochs=2.5", "'pretrain.epochs' = '2.5'.*an int"),
                                         ("pretrain.epoch=3", "Did you mean pretrain.epochs"),
                                         ("model=3", "model is a section"),
                                         ("pretrain.epochs", "expected KEY=VALUE")])
def test_command_line_text_errors(item, match):
    with pytest.raises(ConfigError, match=match):
        parse_assignments([item])
