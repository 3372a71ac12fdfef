"""The staged recipe at small scale: its named deviations (per-channel image targets, inpainting masks),
the two zoo stages end to end at ``smoke``, and budget curves read from the validation split only."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from avlib import budgets, zoo
from avlib.config import ConfigError, make_config
from avlib.model import _patch_stats, build_avmae, inpainting_noise, random_masking
from avlib.objectives import OBJECTIVES


def _synthetic(**over):
    return make_config("smoke", **{"data.dataset": "synthetic", **over})


# ----------------------------------------------------------------------------------------------
# image_target_norm
# ----------------------------------------------------------------------------------------------
def test_channel_statistics_standardize_each_colour_channel_of_a_patch():
    torch.manual_seed(0)
    target = torch.randn(2, 5, 4 * 4 * 3) * torch.tensor([1.0, 5.0, 0.2]).repeat(16) + torch.tensor([3.0, -2.0, 0.0]).repeat(16)
    mean, std = _patch_stats(target, channels=3)
    z = ((target - mean) / std).view(2, 5, 16, 3)
    assert torch.allclose(z.mean(2), torch.zeros(2, 5, 3), atol=1e-5)
    assert torch.allclose(z.var(2), torch.ones(2, 5, 3), atol=1e-3)           # unbiased var, as norm_pix_loss
    joint_mean, _ = _patch_stats(target)                                       # the official statistics
    assert joint_mean.shape == (2, 5, 1) and not torch.allclose(mean[..., :1], joint_mean)


def test_channel_targets_change_the_image_loss_only_and_reconstruct_exactly():
    cfg = _synthetic()
    torch.manual_seed(0)
    official = build_avmae(cfg.model).eval()
    channel = build_avmae(replace(cfg.model, image_target_norm="channel")).eval()
    channel.load_state_dict(official.state_dict())
    image, audio = torch.rand(2, 3, *cfg.model.image_size), torch.randn(2, 1, *cfg.model.audio_size)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    a, b = official(image, audio, generator=g()), channel(image, audio, generator=g())
    assert torch.equal(a.loss_audio, b.loss_audio) and not torch.allclose(a.loss_image, b.loss_image)
    # a prediction equal to the standardized target reconstructs the input exactly
    target = channel.patchify(image)
    mean, std = _patch_stats(target, 3)
    b.pred_image = (target - mean) / std
    rec_image, _ = channel.reconstruct(image, audio, b)
    assert torch.allclose(rec_image, image, atol=1e-5)


def test_bad_recipe_values_are_refused_with_the_key():
    with pytest.raises(ConfigError, match="image_target_norm"):
        make_config("smoke", **{"model.image_target_norm": "pixel"})
    with pytest.raises(ConfigError, match="masking"):
        make_config("smoke", **{"model.masking": "blocks"})
    with pytest.raises(ConfigError, match="inpaint_a2v"):
        make_config("smoke", **{"model.inpaint_a2v": 0.8, "model.inpaint_v2a": 0.5})


# ----------------------------------------------------------------------------------------------
# inpainting masks
# ----------------------------------------------------------------------------------------------
def _cell_tokens(grid_hw, cell, cells=2):
    gh, gw = grid_hw
    return [r * gw + c for r in range(gh) for c in range(gw) if (r * cells // gh) * cells + c * cells // gw == cell]


def test_audio_to_image_samples_mask_the_sounding_cell_first():
    grid, B = (4, 4), 6
    sounding = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 1, 2]), 4).float()
    audio = torch.randn(B, 1, 8, 8)
    nv, na = inpainting_noise(sounding, grid, audio, 4, p_a2v=1.0, p_v2a=0.0, generator=torch.Generator().manual_seed(0))
    _, mask, _ = random_masking(B, 16, 0.75, nv)                  # 12 of 16 masked: the cell's 4 among them
    for i, cell in enumerate(sounding.argmax(1).tolist()):
        assert mask[i, _cell_tokens(grid, cell)].eq(1).all()
    assert na.shape == (B, 4) and ((na >= 0) & (na < 1)).all()    # audio: uniform noise (random masking)


def test_image_to_audio_samples_keep_the_sounding_cell_and_the_quietest_audio():
    grid, B = (4, 4), 4
    sounding = torch.nn.functional.one_hot(torch.tensor([3, 0, 2, 1]), 4).float()
    audio = torch.randn(B, 1, 8, 8)
    nv, na = inpainting_noise(sounding, grid, audio, 4, p_a2v=0.0, p_v2a=1.0, generator=torch.Generator().manual_seed(0))
    keep_v, _, _ = random_masking(B, 16, 0.75, nv)                # 4 kept: exactly the sounding cell's tokens
    keep_a, _, _ = random_masking(B, 4, 0.5, na)                   # 2 of 4 audio tokens kept: the quietest
    energy = torch.nn.functional.avg_pool2d(audio, 4).flatten(1)
    for i, cell in enumerate(sounding.argmax(1).tolist()):
        assert sorted(keep_v[i].tolist()) == _cell_tokens(grid, cell)
        assert set(keep_a[i].tolist()) == set(energy[i].argsort()[:2].tolist())


def test_inpainting_pretraining_uses_the_scenes_sounding_cells():
    cfg = _synthetic(**{"model.masking": "inpainting", "model.inpaint_a2v": 1.0, "model.inpaint_v2a": 0.0})
    obj = OBJECTIVES["deepavfusion"]
    model = obj.build(cfg)
    batch = {"image": torch.rand(2, 3, *cfg.model.image_size), "audio": torch.randn(2, 1, *cfg.model.audio_size),
             "sounding": torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]])}
    loss, terms = obj.loss(model, batch)
    assert torch.isfinite(loss) and set(terms) == {"loss_image", "loss_audio"}
    with pytest.raises(ValueError, match="sounding"):
        obj.loss(model, {"image": batch["image"], "audio": batch["audio"]})


# ----------------------------------------------------------------------------------------------
# the staged recipe and the budget curves
# ----------------------------------------------------------------------------------------------
def test_every_profile_with_a_zoo_has_the_same_stages():
    for profile, recipes in zoo.RECIPES.items():
        assert [r.name for r in recipes][:2] == ["unimodal", "deepavfusion"], profile
        uni, av = recipes[0], recipes[1]
        assert uni.overrides["model.fusion_arch"] == "none" and uni.downstream == "warm_start"
        assert av.warm_start == "unimodal" and av.overrides["pretrain.pretrained_lr_ramp"] is True
        assert av.warm_start_decoders and not uni.warm_start_decoders
        assert zoo.recipe_config(profile, "deepavfusion").model.fusion_arch == make_config(profile).model.fusion_arch


def test_the_staged_recipe_runs_end_to_end_at_smoke(tmp_path, monkeypatch):
    # the smoke profile's own recipe (both stages, inpainting included) on synthetic scenes, two steps each
    monkeypatch.setitem(zoo.RECIPES, "smoke", [replace(r, overrides={**r.overrides, "data.dataset": "synthetic",
                                                                      "pretrain.max_steps": 2})
                                               for r in zoo.RECIPES["smoke"][:2]])
    entries = zoo.build("smoke", zoo=tmp_path / "zoo", runs=tmp_path / "runs", device="cpu")
    assert set(entries) == {"smoke/unimodal", "smoke/deepavfusion"}
    uni = torch.load(tmp_path / "zoo" / entries["smoke/unimodal"]["file"], weights_only=True)["state_dict"]
    assert not any(k.startswith("encoder.fusion") and "blocks" in k for k in uni)    # no fusion stream
    assert entries["smoke/deepavfusion"]["config"]["model"]["masking"] == "inpainting"


def test_budget_curves_read_the_validation_split_only(tmp_path, monkeypatch):
    from avlib.data import loaders

    seen = []
    real = loaders.make_dataset

    def spy(cfg, split, task=None, **kw):
        seen.append((task, cfg.task(task).data_spec(cfg.data.dataset, split)[1] if task else split))
        return real(cfg, split, task, **kw)

    monkeypatch.setattr(loaders, "make_dataset", spy)
    cfg = _synthetic()
    curves = budgets.learning_curves(cfg, ["localization"], {"scratch": ("scratch", None)}, 2, tmp_path)
    pts = curves["localization"]["scratch"]
    assert [p["epoch"] for p in pts] == [1.0, 2.0] and all("cell_acc" in p for p in pts)
    assert 0 <= pts[0]["minutes"] <= pts[1]["minutes"]
    assert ("localization", "val") in seen and ("localization", "test") not in seen
    fig = budgets.plot_curves(curves, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0 and fig.axes[0].get_title() == "localization"


def test_every_comparison_method_is_a_zoo_entry_warm_started_like_deepavfusion(tmp_path, monkeypatch):
    from avlib.objectives import OBJECTIVES

    for profile in zoo.RECIPES:
        by_name = {r.name: r for r in zoo.RECIPES[profile]}
        av = by_name["deepavfusion"]
        for name in zoo.BASELINES:
            r = by_name[name]
            assert r.objective == name and r.warm_start == "unimodal" and r.downstream == "pretrained"
            assert r.overrides["model.fusion_arch"] == "none"
            for key, value in OBJECTIVES[name].config_overrides().items():    # the published recipe
                assert r.overrides[key] == value, (profile, name, key)
            # the same budget as DeepAVFusion's audio-visual stage
            assert r.overrides.get("pretrain.epochs") == av.overrides.get("pretrain.epochs")
            # the curated pre-training scenes (zoo.BASELINE_DATA), named in the entry's overrides
            assert zoo.recipe_config(profile, name).data.pretrain_distractors == 0
        assert zoo.recipe_config(profile, "deepavfusion").data.pretrain_distractors is None
        # the data control: DeepAVFusion's stage on the methods' curated scenes, nothing else changed
        control = by_name["deepavfusion_curated"]
        assert control.overrides == {**av.overrides, **zoo.BASELINE_DATA} and control.objective == "deepavfusion"
        assert (control.warm_start, control.warm_start_decoders) == (av.warm_start, av.warm_start_decoders)
    # each builds from the unimodal entry and hands a late-fusion encoder downstream (one step each)
    monkeypatch.setitem(zoo.RECIPES, "smoke", [replace(r, overrides={**r.overrides, "data.dataset": "synthetic",
                                                                      "pretrain.max_steps": 1})
                                               for r in zoo.RECIPES["smoke"] if not r.name.startswith("deepavfusion")])
    root, runs = tmp_path / "zoo", tmp_path / "runs"
    entries = zoo.build("smoke", zoo=root, runs=runs, device="cpu")
    assert set(entries) == {f"smoke/{n}" for n in ("unimodal", *zoo.BASELINES)}
    inits = zoo.initializations("smoke", tuple(zoo.BASELINES), runs=runs, zoo=root)
    assert all(v[0] == "pretrained" and v[2] == {"model.fusion_arch": "none"} for v in inits.values())


def test_the_comparison_methods_pretrain_on_curated_scenes_and_are_scored_on_task_scenes():
    """zoo.BASELINE_DATA: a method's pre-training scenes show the sounding object alone; its downstream
    protocols (and zero-shot read-outs) read the task scenes, every cell filled."""
    from avlib.data.loaders import make_dataset

    cfg = zoo.recipe_config("smoke", "ezvsl", **{"data.dataset": "synthetic", "data.test_size": 16})
    pre = make_dataset(cfg, "test", None)
    task = make_dataset(cfg, "test", "localization")
    for i in range(16):
        curated, full = pre.scene(i), task.scene(i)
        assert (curated.classes >= 0).sum() == len(curated.sounding) == 1
        assert (full.classes >= 0).all()
        assert curated.sounding == full.sounding       # the same draw, distractors cleared
    # the mix-and-separate methods' pre-training mixtures too; the separation protocol's stay task scenes
    cfg = zoo.recipe_config("smoke", "sound_of_pixels", **{"data.dataset": "synthetic", "data.test_size": 8})
    pre = make_dataset(cfg, "test", None, mixtures=True)
    task = make_dataset(cfg, "test", "separation")
    for i in range(8):
        for curated, full in zip(pre.scenes(i), task.scenes(i)):
            assert (curated.classes >= 0).sum() == 1 and (full.classes >= 0).all()


def test_the_notebooks_compare_three_initializations(tmp_path, monkeypatch):
    monkeypatch.setitem(zoo.RECIPES, "smoke", [replace(r, overrides={**r.overrides, "data.dataset": "synthetic",
                                                                      "pretrain.max_steps": 1})
                                               for r in zoo.RECIPES["smoke"]])
    monkeypatch.setattr(zoo, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(zoo, "ZOO", tmp_path / "zoo")              # no committed smoke zoo: trained here
    inits = zoo.compared_inits("smoke", device="cpu")
    assert list(inits) == ["scratch", "unimodal", "deepavfusion"]
    assert inits["scratch"][0] == "scratch" and inits["unimodal"][0] == "warm_start"
    assert inits["deepavfusion"][0] == "pretrained" and inits["deepavfusion"][1].is_file()
    handed = zoo.compared_inits("smoke", pretrain_ckpt=inits["deepavfusion"][1], unimodal_ckpt="uni.pt")
    assert handed["deepavfusion"][1] == inits["deepavfusion"][1] and str(handed["unimodal"][1]) == "uni.pt"
    # a profile without zoo recipes: no unimodal row unless given, and DeepAVFusion needs a checkpoint
    monkeypatch.delitem(zoo.RECIPES, "smoke")
    assert list(zoo.compared_inits("smoke", pretrain_ckpt="av.pt")) == ["scratch", "deepavfusion"]
    with pytest.raises(zoo.ZooError, match="pretrain_ckpt"):
        zoo.compared_inits("smoke")


def test_decoders_warm_start_from_a_masked_modeling_checkpoint(tmp_path):
    from avlib.checkpoint import save_checkpoint
    from avlib.config import config_to_dict
    from avlib.model import build_encoder
    from avlib.tasks import load_decoders

    cfg = _synthetic()
    torch.manual_seed(0)
    source = build_avmae(replace(cfg.model, fusion_arch="none"))
    save_checkpoint(tmp_path / "uni.pt", {"state_dict": source.state_dict(), "config": config_to_dict(cfg)})
    torch.manual_seed(1)
    target = build_avmae(cfg.model)
    loaded = load_decoders(target, tmp_path / "uni.pt")
    assert loaded and all(k.startswith(("image_decoder_", "audio_decoder_")) for k in loaded)
    own, src = target.state_dict(), source.state_dict()
    assert all(torch.equal(own[k], src[k]) for k in loaded)
    assert not torch.equal(own["encoder.image.patch_embed.proj.weight"], src["encoder.image.patch_embed.proj.weight"])
    with pytest.raises(ValueError, match="decoders"):
        load_decoders(build_encoder(cfg.model), tmp_path / "uni.pt")


def test_a_notebook_shows_the_measured_curves_or_says_how_to_measure_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(budgets, "REPORTS", tmp_path)
    assert budgets.task_figure("smoke", "localization") is None
    assert "python -m avlib.budgets --profile smoke --tasks localization" in capsys.readouterr().out
    pts = [{"epoch": 1.0, "step": 4, "minutes": 0.1, "cell_acc": 0.3}]
    path = budgets.curves_file("smoke")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**budgets.load_record("smoke"), "curves": {"localization": {"scratch": pts}}}))
    fig = budgets.task_figure("smoke", "localization")
    assert fig.axes[0].get_title() == "localization" and budgets.task_figure("smoke", "separation") is None
