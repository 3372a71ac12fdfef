"""The one config system: named profiles, recipes, overrides, strict keys, round trips."""
from __future__ import annotations

import pytest

from avlib.config import (PROFILES, ConfigError, config_from_dict, config_hash, config_to_dict, make_config)


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
