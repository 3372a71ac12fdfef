"""The localization comparison methods (``avlib.baselines``: EZ-VSL, SLAVC, Mix-and-Localize) and SLAVC's
evaluation with silent and off-screen sounds (``avlib.metrics``): hand-computed losses, gradients, the EMA
rule, bit-exact resume, the zero-shot read-outs, smoke pre-training through ``tasks.pretrain``, and the
metrics on cases whose answers are worked out by hand."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from avlib.audio import AudioFrontEnd
from avlib.baselines import extended_test_scenes, load_objective_model, zero_shot_localization, zero_shot_slavc
from avlib.baselines.common import LateFusionObjective, encode, validation_loss
from avlib.baselines.ezvsl import max_xmil_logits
from avlib.baselines.mix_and_localize import cycle_loss
from avlib.baselines.slavc import SLAVC, slavc_logits, surviving_channels_dropout
from avlib.config import make_config
from avlib.data import AlternateMixtureDataset, MixtureDataset, make_loaders
from avlib.metrics import (LocalizationEvaluator, SLAVCEvaluator, ciou_per_sample, slavc_ap, slavc_confidence,
                           slavc_loc_acc, slavc_max_f1, slavc_precision_recall)
from avlib.model import build_encoder
from avlib.objectives import OBJECTIVES
from avlib.tasks import build_task_model, pretrain
from avlib.train import StopTraining, fit
from avlib.utils import seed_everything

NAMES = ("ezvsl", "slavc", "mix_and_localize")
LATE = {"data.dataset": "synthetic", "model.fusion_arch": "none"}
# parameters no loss of these methods trains: the frozen sin-cos tables, and the fusion stream a late-fusion
# backbone never reads (late_fusion_encoder freezes it)
FROZEN = {"encoder.image.pos_embed", "encoder.audio.pos_embed", "encoder.fusion_tokens", "encoder.fusion_norm.weight",
          "encoder.fusion_norm.bias"}


def _cfg(**kw):
    return make_config("smoke", **{**LATE, **kw})


def _batch(obj, cfg):
    """One training batch of the objective's own data (scenes, or mixture pairs)."""
    return next(iter(make_loaders(cfg, mixtures=obj.mixtures)[0]))


def e(i, n=2):
    """Unit vector i of R^n."""
    return F.one_hot(torch.tensor(i), n).float()


# ----------------------------------------------------------------------------------------------
# Registration and the backbone
# ----------------------------------------------------------------------------------------------
def test_the_localization_methods_are_registered_with_zero_shot_maps():
    assert list(OBJECTIVES)[:1] == ["deepavfusion"] and set(NAMES) <= set(OBJECTIVES)
    for name in NAMES:
        obj = OBJECTIVES[name]
        assert isinstance(obj, LateFusionObjective) and obj.name == name and obj.checkpoint_name == f"{name}.pt"
        assert callable(obj.localization_map) and obj.options()["name"] == name
    assert OBJECTIVES["mix_and_localize"].mixtures == "alternates" and not OBJECTIVES["slavc"].mixtures


@pytest.mark.parametrize("name", NAMES)
def test_published_recipe_and_hyperparameter_table(name):
    """The same two views as the mix-and-separate objectives': ``config_overrides()`` (the backbone and the
    published optimizer, a valid config) and ``hyperparameters()`` (one row per field, published vs kit)."""
    obj = OBJECTIVES[name]
    over = obj.config_overrides()
    assert over["model.fusion_arch"] == "none" and over["pretrain.optimizer"] == "adam"
    assert not {"pretrain.batch_size", "pretrain.epochs", "pretrain.max_steps"} & set(over)    # every method: the same run
    cfg = make_config("smoke", **over)
    obj.build(replace(cfg, data=replace(cfg.data, dataset="synthetic")))
    rows = obj.hyperparameters()
    assert [r["name"] for r in rows] == [k for k in obj.options() if k != "name"]
    for r in rows:
        assert r["kit"] == getattr(obj, r["name"])
        assert r["note"] or r["published"] == r["kit"], r          # every change from the published value says why
    assert {r["name"] for r in OBJECTIVES["slavc"].hyperparameters() if r["note"]} == {"dropout_img", "ema_momentum"}


@pytest.mark.parametrize("name", NAMES)
def test_every_method_needs_the_late_fusion_backbone(name):
    cfg = make_config("smoke", **{"data.dataset": "synthetic"})               # factorized fusion
    with pytest.raises(ValueError, match=r"model.fusion_arch='factorized'.*Pass model.fusion_arch='none'"):
        OBJECTIVES[name].build(cfg)


def test_one_stream_of_the_late_fusion_encoder_is_the_encoder_forward():
    cfg = _cfg()
    enc = build_encoder(cfg.model).eval()
    image, audio = torch.randn(3, 3, *cfg.model.image_size), torch.randn(3, 1, *cfg.model.audio_size)
    out = enc(image, audio)
    torch.testing.assert_close(encode(enc, "image", image), out.image, rtol=0, atol=1e-6)
    torch.testing.assert_close(encode(enc, "audio", audio), out.audio, rtol=0, atol=1e-6)


# what a self-supervised loss may read: the scenes' and mixtures' audio-visual inputs, never a label or a map
AV_INPUTS = {"image", "audio", "waveform", "images", "mix_audio", "mix_waveform", "source_audio", "source_waveforms",
             "alt_mix_audio", "alt_mix_waveform", "alt_source_waveforms"}


@pytest.mark.parametrize("name", NAMES)
def test_the_losses_read_only_audio_visual_inputs(name):
    cfg = _cfg()
    obj = OBJECTIVES[name]
    model = obj.build(cfg).eval()
    b = _batch(obj, cfg)
    assert {"label", "labels", "loc_map", "loc_maps"} & set(b)             # the batch does carry them
    loss, _ = obj.loss(model, b)
    torch.testing.assert_close(obj.loss(model, {k: v for k, v in b.items() if k in AV_INPUTS})[0], loss)


# ----------------------------------------------------------------------------------------------
# Losses on hand-worked cases
# ----------------------------------------------------------------------------------------------
def test_ezvsl_infonce_over_a_2x2_batch():
    # images: 0 = {e1, e2} (two locations), 1 = {e1, e1}; clips: 0 = e2, 1 = e1; tau = 0.5
    v = torch.stack([torch.stack([e(0), e(1)]), torch.stack([e(0), e(0)])])     # (2, 2, 2)
    a = torch.stack([e(1), e(0)])                                              # (2, 2)
    logits = max_xmil_logits(v, a, 0.5)
    torch.testing.assert_close(logits, torch.tensor([[2.0, 2.0], [0.0, 2.0]]))     # max over locations / tau
    target = torch.arange(2)
    loss = F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)
    # rows: log 2 and log(1 + e^2) - 2; columns: log(e^2 + 1) - 2 and log 2; each direction averaged
    assert loss.item() == pytest.approx(math.log(2) + math.log(1 + math.e ** 2) - 2, abs=1e-6)


def test_ezvsl_model_is_the_symmetric_infonce_of_its_features():
    cfg = _cfg()
    obj = OBJECTIVES["ezvsl"]
    model = obj.build(cfg).eval()
    b = _batch(obj, cfg)
    loss, logs = obj.loss(model, b)
    logits = max_xmil_logits(*model.features(b["image"], b["audio"]), obj.tau)
    t = torch.arange(len(logits))
    torch.testing.assert_close(logs["loss_i2a"], F.cross_entropy(logits, t))
    torch.testing.assert_close(logs["loss_a2i"], F.cross_entropy(logits.T, t))
    torch.testing.assert_close(loss, logs["loss_i2a"] + logs["loss_a2i"])


def test_slavc_log_sum_of_the_two_softmaxes():
    # one head pair used twice: images 0 = {e1, e2}, 1 = {e1, e1}; clips 0 = e1, 1 = e2; tau = 1
    v = torch.stack([torch.stack([e(0), e(1)]), torch.stack([e(0), e(0)])])
    a = torch.stack([e(0), e(1)])
    s = slavc_logits(v, v, a, a, 1.0)
    sig = math.e / (1 + math.e)                    # softmax([1, 0])[0]
    # s_nm = log sum_p softmax_m(.)[m] * softmax_p(.)[p], worked out location by location
    want = torch.tensor([[math.log(sig ** 2 + (1 - sig) ** 2)] * 2, [math.log(sig), math.log(1 - sig)]])
    torch.testing.assert_close(s, want)
    ce = F.cross_entropy(s, torch.arange(2))
    assert ce.item() == pytest.approx((math.log(2) + math.log(1 + math.e)) / 2, abs=1e-6)


def test_slavc_logits_are_the_reference_expression_in_log_space():
    g = torch.Generator().manual_seed(0)
    v1, v2 = (F.normalize(torch.randn(5, 6, 8, generator=g), dim=-1) for _ in range(2))
    a1, a2 = (F.normalize(torch.randn(5, 8, generator=g), dim=-1) for _ in range(2))
    tau = 0.03
    # model.py: torch.log((softmax over clips * softmax over locations).sum over locations)
    p1 = (torch.einsum("npc,mc->nmp", v1, a1) / tau).softmax(dim=1)
    p2 = (torch.einsum("npc,mc->nmp", v2, a2) / tau).softmax(dim=2)
    torch.testing.assert_close(slavc_logits(v1, v2, a1, a2, tau), torch.log((p1 * p2).sum(2)), rtol=1e-5, atol=1e-5)


def test_slavc_model_pairs_online_images_with_ema_audio_and_back():
    cfg = _cfg()
    obj = OBJECTIVES["slavc"]
    model = obj.build(cfg)
    model.start_ema()                                  # (what the first training forward does)
    with torch.no_grad():                              # targets that differ from the online branch
        for q in model.ema_heads.parameters():
            q.add_(0.05 * torch.randn_like(q))
    model.eval()                                       # no dropout, no EMA update: a deterministic check
    b = _batch(obj, cfg)
    loss, logs = obj.loss(model, b)
    v1, v2, a1, a2 = model.branch(model.encoder, model.heads, b["image"], b["audio"])
    tv1, tv2, ta1, ta2 = model.branch(model.ema_encoder, model.ema_heads, b["image"], b["audio"])
    t = torch.arange(len(v1))
    torch.testing.assert_close(logs["loss_i2a"], F.cross_entropy(slavc_logits(v1, v2, ta1, ta2, obj.tau), t))
    torch.testing.assert_close(logs["loss_a2i"], F.cross_entropy(slavc_logits(tv1, tv2, a1, a2, obj.tau), t))
    torch.testing.assert_close(loss, logs["loss_i2a"] + logs["loss_a2i"])
    assert (logs["loss_i2a"] - logs["loss_a2i"]).abs() > 1e-4                  # the two terms are not swapped-equal


def test_mix_and_localize_cycle_on_a_toy_pair():
    # one pair (B = 1, K = 2): image 0's best location is e1, image 1's is e2 (the other location points away)
    v = torch.stack([torch.stack([e(0), -e(0)]), torch.stack([-e(1), e(1)])])[None]     # (1, 2, 2, 2)
    sig = math.e / (1 + math.e)
    same = torch.stack([e(0), e(1)])[None]                                             # node k <-> image k
    loss, acc = cycle_loss(v, same, same, 1.0)
    # A_IS = A_SI = [[s, 1-s], [1-s, s]]: the walk returns to its node with s^2 + (1-s)^2
    assert loss.item() == pytest.approx(-math.log(sig ** 2 + (1 - sig) ** 2), abs=1e-6) and acc.item() == 1.0
    swapped = torch.stack([e(1), e(0)])[None]                                          # M2's nodes bind the other way
    loss, acc = cycle_loss(v, same, swapped, 1.0)
    assert loss.item() == pytest.approx(-math.log(2 * sig * (1 - sig)), abs=1e-6) and acc.item() == 0.0
    both = torch.stack([e(0), e(0)])[None]                                             # M2's nodes both bind image 0
    loss, acc = cycle_loss(v, same, both, 1.0)
    # A_SI rows are both [s, 1-s]: the walk from either node reaches node 0 with s^2 + (1-s)^2, node 1 with 2s(1-s)
    want = -(math.log(sig ** 2 + (1 - sig) ** 2) + math.log(2 * sig * (1 - sig))) / 2
    assert loss.item() == pytest.approx(want, abs=1e-6) and acc.item() == 0.5


def test_mix_and_localize_model_walks_between_its_two_mixtures():
    cfg = _cfg()
    obj = OBJECTIVES["mix_and_localize"]
    model = obj.build(cfg).eval()
    b = _batch(obj, cfg)
    loss, logs = obj.loss(model, b)
    B, K = b["images"].shape[:2]
    v = model.visual(b["images"].flatten(0, 1)).unflatten(0, (B, K))
    want, acc = cycle_loss(v, model.nodes(b["mix_audio"]), model.nodes(b["alt_mix_audio"]), obj.temperature)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(logs["cycle_acc"], acc)
    with pytest.raises(KeyError, match="alt_mix_audio.*AlternateMixtureDataset"):
        obj.loss(model, {k: v for k, v in b.items() if k != "alt_mix_audio"})


# ----------------------------------------------------------------------------------------------
# Gradients, the EMA rule, resume
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_the_objective_trains_gets_a_gradient(name):
    cfg = _cfg()
    obj = OBJECTIVES[name]
    model = obj.build(cfg).train()
    loss, _ = obj.loss(model, _batch(obj, cfg))
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen - {n for n in frozen if n.startswith(("ema_encoder.", "ema_heads."))} == FROZEN
    assert (name == "slavc") == any(n.startswith("ema_") for n in frozen)
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert trained and missing == []
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_slavc_visual_dropout_keeps_the_published_surviving_channels():
    assert surviving_channels_dropout(512) == pytest.approx(0.9)               # the code's value at its width
    assert surviving_channels_dropout(96) == pytest.approx(1 - 51.2 / 96) and surviving_channels_dropout(32) == 0.0
    assert OBJECTIVES["slavc"].build(make_config("cpu", **LATE)).img_dropout.p == pytest.approx(1 - 51.2 / 96)
    assert SLAVC(dropout_img=0.9).build(_cfg()).img_dropout.p == 0.9
    with pytest.raises(ValueError, match="dropout_img"):
        SLAVC(dropout_img=1.0)


def test_slavc_ema_copies_move_by_the_ema_rule_inside_the_training_forward():
    cfg = _cfg()
    obj = OBJECTIVES["slavc"]
    model = obj.build(cfg)
    online = dict(model.encoder.named_parameters()) | {f"h.{k}": v for k, v in model.heads.named_parameters()}
    ema = dict(model.ema_encoder.named_parameters()) | {f"h.{k}": v for k, v in model.ema_heads.named_parameters()}
    with torch.no_grad():                          # weights loaded after build, as a warm start does
        for k, v in online.items():
            if v.requires_grad:
                v.add_(0.01 * torch.randn_like(v))
    assert not all(torch.equal(online[k], ema[k]) for k in online)
    b = _batch(obj, cfg)
    obj.loss(model, b)[0].backward()                                    # the first training forward:
    for k in online:                                                    # the EMA copies start as the online ones
        torch.testing.assert_close(ema[k], online[k], rtol=0, atol=1e-6)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    opt.step()                                                          # online != EMA from here
    before = {k: v.detach().clone() for k, v in ema.items()}
    now = {k: v.detach().clone() for k, v in online.items()}
    model.eval()
    obj.loss(model, b)                                                  # eval: no update
    assert all(torch.equal(ema[k], before[k]) for k in ema)
    model.train()
    obj.loss(model, b)                                                  # train: ema <- m ema + (1 - m) online
    m = obj.ema_momentum
    for k in ema:
        want = before[k] if not online[k].requires_grad else m * before[k] + (1 - m) * now[k]
        torch.testing.assert_close(ema[k], want, rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(ema[k], before[k]) for k in ema)


def test_slavc_resumes_bit_for_bit_with_its_ema_and_dropout(tmp_path):
    cfg = _cfg(**{"data.train_size": 16, "pretrain.batch_size": 4, "pretrain.epochs": 1, "pretrain.log_every": 1})
    obj = OBJECTIVES["slavc"]

    def run(run_dir, callbacks=()):
        seed_everything(cfg.seed)
        train, _ = make_loaders(cfg)
        model = obj.build(cfg)
        return model, fit(model, train, cfg.pretrain, loss_fn=obj.loss, run_dir=run_dir, callbacks=list(callbacks))

    ref, ref_hist = run(tmp_path / "ref")

    def stop(info):
        if info.step >= 2:                                              # mid-epoch (4 steps per epoch)
            raise StopTraining("stop at step 2")

    run(tmp_path / "b", [stop])
    torch.manual_seed(999)                          # the resumed process starts from another RNG state
    model, hist = run(tmp_path / "b")
    assert hist.meta["resumed_from_step"] == [2] and hist.meta["completed"] and len(hist.steps) == 4
    ref_sd, sd = ref.state_dict(), model.state_dict()
    assert any(k.startswith("ema_encoder.") for k in sd)
    for k in ref_sd:
        assert torch.equal(sd[k], ref_sd[k]), k
    assert _without_timing(hist.steps) == _without_timing(ref_hist.steps)


def _without_timing(steps):
    return [{k: v for k, v in s.items() if k != "samples_per_s"} for s in steps]


# ----------------------------------------------------------------------------------------------
# Zero-shot read-outs
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_zero_shot_maps_are_eval_mode_cosines_on_the_token_grid(name):
    cfg = _cfg()
    obj = OBJECTIVES[name]
    model = obj.build(cfg).train()
    image, audio = torch.randn(3, 3, *cfg.model.image_size), torch.randn(3, 1, *cfg.model.audio_size)
    m1, m2 = obj.localization_map(model, image, audio), obj.localization_map(model, image, audio)
    assert m1.shape == (3, *model.encoder.image_grid) and model.training       # mode restored
    assert torch.equal(m1, m2) and bool((m1.abs() <= 1 + 1e-6).all())         # no dropout; cosines
    assert not m1.requires_grad


def test_slavc_reads_its_maps_from_the_ema_copies():
    cfg = _cfg()
    model = OBJECTIVES["slavc"].build(cfg)
    image, audio = torch.randn(2, 3, *cfg.model.image_size), torch.randn(2, 1, *cfg.model.audio_size)
    ema, online = SLAVC(readout="ema"), SLAVC(readout="online")
    torch.testing.assert_close(ema.localization_map(model, image, audio), online.localization_map(model, image, audio))
    with torch.no_grad():
        for q in model.ema_heads.parameters():
            q.add_(0.1 * torch.randn_like(q))
    assert not torch.allclose(ema.localization_map(model, image, audio), online.localization_map(model, image, audio))
    with torch.no_grad():                          # the mean of the two EMA heads' diagonal cosine maps
        model.eval()
        v1, v2, a1, a2 = model.branch(model.ema_encoder, model.ema_heads, image, audio)
        want = ((v1 @ a1[:, :, None])[..., 0] + (v2 @ a2[:, :, None])[..., 0]) / 2
    torch.testing.assert_close(ema.localization_map(model, image, audio).flatten(1), want)


def test_mix_and_localize_reads_the_strongest_node():
    cfg = _cfg()
    obj = OBJECTIVES["mix_and_localize"]
    model = obj.build(cfg).eval()
    image, audio = torch.randn(2, 3, *cfg.model.image_size), torch.randn(2, 1, *cfg.model.audio_size)
    per_node = torch.einsum("npc,nkc->nkp", model.visual(image), model.nodes(audio)).detach()   # (2, K, Nv)
    got = obj.localization_map(model, image, audio).flatten(1)
    torch.testing.assert_close(got, per_node.amax(dim=1))
    assert not torch.allclose(got, per_node.mean(dim=1))


def test_zero_shot_localization_scores_the_maps_as_the_localization_protocol():
    cfg = _cfg()
    obj = OBJECTIVES["ezvsl"]
    torch.manual_seed(0)
    model = obj.build(cfg)
    _, test = make_loaders(cfg, "localization")
    res = zero_shot_localization("ezvsl", model, test, cfg)
    ev = LocalizationEvaluator()
    for b in test:
        ev.update(obj.localization_map(model, b["image"], b["audio"]), b["loc_map"])
    assert {k: res[k] for k in ("ciou", "ciou_mean", "auc")} == pytest.approx(
        {k: v for k, v in ev.compute().items() if k != "n"})
    assert 0.0 <= res["cell_acc"] <= 1.0 and model.training


def test_slavc_evaluation_on_scenes_with_silent_and_offscreen_sounds():
    cfg = _cfg(**{"data.test_size": 24})
    ds = extended_test_scenes(cfg, p_offscreen=0.5)
    items = [ds[i] for i in range(len(ds))]
    kinds = {ds.scene(i).offscreen for i in range(len(ds))}
    assert kinds == {None, "silence", "offscreen"}
    for i, it in enumerate(items):
        if ds.scene(i).offscreen:                  # nothing on screen sounds: empty ground truth
            assert it["loc_map"].sum() == 0 and it["label"] == -1 and it["sounding"].sum() == 0
        else:
            assert it["loc_map"].sum() > 0
    obj = OBJECTIVES["slavc"]
    model = obj.build(cfg)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    res = zero_shot_slavc("slavc", model, loader)
    n_vis = sum(int(it["loc_map"].sum() > 0) for it in items)
    assert res["n"] == 24 and res["n_visible"] == n_vis and 0 < n_vis < 24
    assert {"slavc_ap", "slavc_max_f1", "slavc_loc_acc", "slavc_auc"} <= set(res)
    with pytest.raises(ValueError, match="scene data"):
        extended_test_scenes(make_config("smoke", **{**LATE, "localization.test_data": "flickr"}))


def test_slavc_evaluation_normalizes_by_each_objectives_map_range():
    """The fixed range comes from the objective (cosines (-1, 1), OneAVM-style's cos / tau (-1/tau, 1/tau));
    a map without one (Sound-of-Pixels' energies) needs an explicit value_range."""
    assert OBJECTIVES["ezvsl"].map_range == (-1.0, 1.0) and OBJECTIVES["mix_and_localize"].map_range == (-1.0, 1.0)
    tau = OBJECTIVES["oneavm"].tau
    assert OBJECTIVES["oneavm"].map_range == pytest.approx((-1 / tau, 1 / tau))
    assert OBJECTIVES["sound_of_pixels"].map_range is None

    class Scaled(LateFusionObjective):             # EZ-VSL's maps x 10 + 5, with a range to match
        name = "scaled"
        map_range = (-5.0, 15.0)

        def localization_map(self, model, image, audio):
            return 10 * OBJECTIVES["ezvsl"].localization_map(model, image, audio) + 5

    cfg = _cfg(**{"data.test_size": 8})
    loader = torch.utils.data.DataLoader(extended_test_scenes(cfg, p_offscreen=0.5), batch_size=8)
    torch.manual_seed(0)
    model = OBJECTIVES["ezvsl"].build(cfg)
    for relative in (True, False):                 # the absolute threshold reads the normalized values
        ref = zero_shot_slavc("ezvsl", model, loader, relative_prediction=relative)
        assert zero_shot_slavc(Scaled(), model, loader, relative_prediction=relative) == pytest.approx(ref, nan_ok=True)
    with pytest.raises(ValueError, match="no fixed range.*value_range"):
        zero_shot_slavc("sound_of_pixels", model, loader)


# ----------------------------------------------------------------------------------------------
# Pre-training at smoke through tasks.pretrain
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=NAMES)
def pretrained(request, tmp_path_factory):
    name = request.param
    # one object per scene (grid 1), so the match of sound and picture is learnable by the smoke model (32-d,
    # 2x2 tokens) in 24 steps of 16; with four objects per scene the loss moves less than its step noise.
    # The same optimizer for every method: AdamW at a constant 3e-4 (the smoke profile's lr, no warm-up).
    cfg = _cfg(**{"data.grid": 1, "data.train_size": 64, "pretrain.batch_size": 16, "pretrain.epochs": 6,
                  "pretrain.lr": 3e-4, "pretrain.schedule": "constant", "pretrain.warmup_epochs": 0.0,
                  "pretrain.log_every": 1})
    obj = OBJECTIVES[name]
    seed_everything(cfg.seed)                      # what pretrain does first: the same initial weights
    _, test = make_loaders(cfg, mixtures=obj.mixtures)
    initial = validation_loss(obj, obj.build(cfg), test)["loss"]
    result = pretrain(cfg, tmp_path_factory.mktemp(name), objective=name, device="cpu")
    return name, cfg, initial, result


def test_smoke_pretraining_lowers_each_objectives_own_loss(pretrained):
    name, cfg, initial, result = pretrained
    losses = [s["loss"] for s in result.history.steps]
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    third = len(losses) // 3
    assert np.mean(losses[-third:]) < np.mean(losses[:third]), losses          # the training loss falls
    assert result.metrics["val_loss"] < initial - 0.02, (initial, result.metrics)   # and on the fixed test set


def test_a_pretrained_baseline_hands_its_online_encoder_downstream(pretrained):
    name, cfg, _, result = pretrained
    stored = torch.load(result.checkpoint, weights_only=True)
    assert stored["objective"] == name and stored["objective_options"] == OBJECTIVES[name].options()
    model = build_task_model("localization", cfg, "pretrained", result.checkpoint)
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, result.model.encoder.state_dict()[k]), k
    # the whole model comes back for the zero-shot read-outs (EMA copies included)
    obj, again, stored_cfg = load_objective_model(result.checkpoint)
    assert obj is OBJECTIVES[name] and stored_cfg == cfg and not again.training
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


# ----------------------------------------------------------------------------------------------
# The second mixture (Mix-and-Localize's data)
# ----------------------------------------------------------------------------------------------
def _same_item(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dataset", ["synthetic", pytest.param("avdigits", marks=pytest.mark.data)])
def test_alternate_mixtures_are_other_recordings_of_the_same_sources(dataset, request):
    root = request.getfixturevalue("data_root") if dataset == "avdigits" else None
    cfg = make_config("smoke", **{"data.dataset": dataset})
    front = AudioFrontEnd(cfg.data)
    for split in ("train", "test"):
        alt = AlternateMixtureDataset(cfg, split, root=root, size=4)
        base = MixtureDataset(cfg, split, root=root, size=4)
        for i in range(4):
            it, plain = alt[i], base[i]
            assert all(torch.equal(it[k], plain[k]) for k in plain)      # the first mixture is untouched
            assert it["alt_source_waveforms"].shape == plain["source_waveforms"].shape
            assert torch.equal(it["alt_mix_waveform"], it["alt_source_waveforms"].sum(0))
            torch.testing.assert_close(it["alt_mix_audio"], front(it["alt_mix_waveform"]), atol=1e-5, rtol=0)
            assert not torch.equal(it["alt_mix_waveform"], it["mix_waveform"])
            if dataset == "avdigits":
                bank = alt.content.bank
                for s, t in zip(it["source_ids"].tolist(), it["alt_source_ids"].tolist()):
                    r, q = bank.recordings[s], bank.recordings[t]
                    assert (q.digit, q.speaker, q.split) == (r.digit, r.speaker, r.split) and q.take != r.take
        assert _same_item(alt[2], AlternateMixtureDataset(cfg, split, root=root, size=4)[2])   # deterministic
    train = AlternateMixtureDataset(cfg, "train", root=root, size=2)
    first = train[0]["alt_mix_waveform"]
    train.set_epoch(1)
    assert not torch.equal(train[0]["alt_mix_waveform"], first)


# ----------------------------------------------------------------------------------------------
# SLAVC's metrics (utils.py::EvaluatorFull) on hand-worked cases
# ----------------------------------------------------------------------------------------------
def test_slavc_ap_max_f1_and_locacc_by_hand():
    # 3 visible items and 1 silent one; confidences 0.9, 0.8, 0.7 (silent), 0.4
    vis, ciou, conf = [1, 1, 0, 1], [0.6, 0.2, float("nan"), 0.7], [0.9, 0.8, 0.7, 0.4]
    # thresholds 0.8, 0.7, 0.4 (sorted, largest dropped, top down): P/R = 1/2,1/2; 1/3,1/2; 1/2,1
    assert slavc_precision_recall(vis, ciou, conf, 0.8) == (0.5, 0.5)
    assert slavc_precision_recall(vis, ciou, conf, 0.7) == pytest.approx((1 / 3, 0.5))
    assert slavc_precision_recall(vis, ciou, conf, 0.4) == (0.5, 1.0)
    # interpolated precision 1/2, 1/2, 1/2 -> AP = 1/2 (1/2 - 1/2) + 1/2 (1 - 1/2)
    assert slavc_ap(vis, ciou, conf) == pytest.approx(0.25)
    # F1 at every confidence (N // 10 = 0 -> step 1): 2/3, 0.4, 1/2, 1/2 (at 0.9: P = 1, R = 1/3)
    assert slavc_max_f1(vis, ciou, conf) == pytest.approx(2 / 3)
    assert slavc_loc_acc(vis, ciou) == pytest.approx(2 / 3)                   # 0.6 and 0.7 of the visible three
    # the reference's conventions: nothing confident -> precision 1; nothing visible -> recall 1
    assert slavc_precision_recall(vis, ciou, conf, 2.0) == (1.0, 0.0)
    assert slavc_precision_recall([0, 0], [0, 0], [0.5, 0.5], 0.1) == (0.0, 1.0)


def test_slavc_confidence_is_the_mean_of_the_top_quarter():
    assert slavc_confidence(np.arange(8.0)) == pytest.approx(6.5)             # top 2 of 8
    assert slavc_confidence(np.arange(9.0)) == pytest.approx(7.0)             # top ceil(9/4) = 3 of 9


def test_slavc_fixed_range_normalization_two_halves():
    # the case: halves at 0.1/tau and 0.6/tau, ground truth the left half
    tau = 0.03
    pred = np.zeros((8, 8))
    pred[:, :4], pred[:, 4:] = 0.1 / tau, 0.6 / tau
    gt = np.zeros((8, 8))
    gt[:, :4] = 1
    # SLAVC without --relative_prediction: (x + 1/tau) / (2/tau) = 0.55 and 0.8, both >= 0.5: all positive
    assert ciou_per_sample(pred, gt, 0.5, normalize="fixed", value_range=(-1 / tau, 1 / tau)) == pytest.approx(0.5)
    assert ciou_per_sample(pred, gt, 0.5) == 0.0                              # per-image min-max: left half 0
    assert ciou_per_sample(pred * tau, gt, 0.5, normalize="fixed", value_range=(-1, 1)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="value_range"):
        ciou_per_sample(pred, gt, 0.5, normalize="fixed")


def test_slavc_evaluator_by_hand():
    # 2 x 2 cosine maps at the GT size: a visible item lit on its sounding half, a silent item lit nowhere
    gt = torch.zeros(2, 2, 2)
    gt[0, :, 0] = 1
    pred = torch.tensor([[[0.8, -0.2], [0.8, -0.2]], [[-0.6, -0.6], [-0.6, -0.6]]])
    ev = SLAVCEvaluator(value_range=(-1.0, 1.0))
    (c0, conf0), (_, conf1) = ev.update(pred, gt)
    assert c0 == 1.0                                                          # median threshold: the left half
    assert conf0 == pytest.approx(0.9) and conf1 == pytest.approx(0.2)        # top quarter of (x + 1) / 2
    res = ev.compute()
    assert res["n"] == 2 and res["n_visible"] == 1 and res["slavc_loc_acc"] == 1.0
    # one threshold (0.2): both confident, P = 1/2, R = 1 -> AP sums nothing; F1 at 0.2: 2/3, at 0.9: 1
    assert res["slavc_ap"] == 0.0 and res["slavc_max_f1"] == pytest.approx(1.0)


def test_with_readout_names_the_entries_whose_objective_has_that_zero_shot_readout():
    from avlib import baselines

    names = ["deepavfusion_curated", "ezvsl", "ccol", "sound_of_pixels", "oneavm", "mix_and_localize"]
    assert baselines.with_readout(names, "localization_map") == ["ezvsl", "sound_of_pixels", "oneavm",
                                                                 "mix_and_localize"]
    assert baselines.with_readout(names, "separation_mask") == ["ccol", "sound_of_pixels", "oneavm"]
    with pytest.raises(ValueError, match="readout"):
        baselines.with_readout(names, "map")
