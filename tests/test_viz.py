"""Figures (avlib.viz) and the plain functions behind the widgets (avlib.widgets), on small random data.
Each figure must come back as a Figure whose axes say what they show."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from IPython.display import Audio  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from avlib import viz, widgets  # noqa: E402

H = W = 32          # image
F, T = 32, 64       # mel bins x frames
P = 16              # patch size
SR, HOP = 8000, 125


def labels(fig: Figure) -> set[str]:
    """Every title / axis label / colorbar label / suptitle in the figure."""
    out = {fig._suptitle.get_text()} if fig._suptitle is not None else set()
    for ax in fig.axes:
        out |= {ax.get_title(), ax.get_xlabel(), ax.get_ylabel()}
    return out - {""}


def check(fig, *expected: str):
    assert isinstance(fig, Figure)
    found = labels(fig)
    for text in expected:
        assert any(text in s for s in found), f"no label containing {text!r} in {sorted(found)}"
    for ax in fig.axes:   # no anonymous panels: every visible axes has a title or an axis label
        if ax.get_visible() and ax.axison and (len(ax.get_xticks()) or len(ax.get_yticks())):
            assert ax.get_title() or ax.get_xlabel() or ax.get_ylabel(), f"unlabelled axes {ax}"
    fig.savefig(__import__("io").BytesIO(), format="png")          # renders without error


@pytest.fixture
def scene():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(3, H, W, generator=g)
    mel = torch.randn(1, F, T, generator=g)
    loc = torch.rand(H, W, generator=g)
    seg = (torch.rand(H, W, generator=g) > 0.5).float()
    return image, mel, loc, seg


def test_denormalize_undoes_imagenet_normalization():
    rgb = np.full((H, W, 3), 0.5, np.float32)
    normalized = (rgb - np.asarray(viz.IMAGENET_MEAN)) / np.asarray(viz.IMAGENET_STD)
    out = viz.denormalize(torch.from_numpy(normalized).permute(2, 0, 1))
    assert out.shape == (H, W, 3)
    np.testing.assert_allclose(out, rgb, atol=1e-6)


def test_show_scene(scene):
    image, mel, loc, seg = scene
    fig = viz.show_scene(image, mel, loc_map=loc, seg_mask=seg, box=torch.tensor([2, 3, 20, 25]), title="scene 0",
                         sample_rate=SR, hop_length=HOP)
    check(fig, "frame", "where it sounds", "time (s)", "mel bin", "log10 mel power", "scene 0")
    check(viz.show_scene(image, mel), "frame", "mel bin")                       # no ground truth


def test_show_spectrogram_time_axis_in_seconds(scene):
    fig = viz.show_spectrogram(scene[1], SR, HOP)
    check(fig, "time (s)", "mel bin", "log10 mel power")
    assert fig.axes[0].get_xlim()[1] == pytest.approx(T * HOP / SR)
    check(viz.show_spectrogram(scene[1]), "frame")                               # no rate: frames


def test_show_masking(scene):
    image, mel, *_ = scene
    mask_i = torch.tensor([1.0, 0.0, 1.0, 1.0])                                  # 2x2 patch grid
    mask_a = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])              # 2x4 patch grid
    fig = viz.show_masking(image, mask_i, mel, mask_a, P, sample_rate=SR, hop_length=HOP)
    check(fig, "75% masked", "50% masked", "mel bin", "time (s)")


def test_show_reconstruction_image_and_audio(scene):
    image, mel, *_ = scene
    check(viz.show_reconstruction(image, image * 0, image), "original", "masked input", "reconstruction")
    check(viz.show_reconstruction(mel, None, mel + 0.1, mask=torch.tensor([1.0, 0, 0, 1, 0, 0, 1, 1]),
                                  patch_size=P), "masked input", "mel bin", "log10 mel power")


def test_plot_history_variants(tmp_path):
    hist = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(10)] + [{"step": 10, "loss": 0.1, "top1": 0.5}]
    check(viz.plot_history(hist), "loss", "top1", "step")
    check(viz.plot_history({"step": [0, 1, 2], "loss": [3.0, 2.0, 1.0]}, keys="loss", logy=True), "loss")
    fig = viz.plot_history({"scratch": hist, "pretrained": hist}, keys=["loss"])
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == {"scratch", "pretrained"}
    from avlib.train import History

    run = History(steps=hist[:10], evals=[{"step": 9, "epoch": 1, "nn_acc": 0.4}])
    path = tmp_path / "history.json"
    run.to_json(path)                                                            # what fit() writes
    check(viz.plot_history(path), "loss", "nn_acc")
    check(viz.plot_history({"a": run, "b": path}, keys="nn_acc"), "nn_acc")
    with pytest.raises(KeyError, match="acc"):
        viz.plot_history(hist, keys=["acc"])


def test_show_attention():
    attn = torch.softmax(torch.randn(3, 6, 10), dim=-1)
    fig = viz.show_attention(attn, k_groups=[("fusion", 2), ("image", 4), ("audio", 4)])
    check(fig, "head 0", "head 2", "key token", "query token", "attention weight")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["fusion", "image", "audio"]


def test_localization_and_segmentation_figures(scene):
    images = torch.stack([scene[0]] * 2)
    gt = torch.rand(2, 4, 4)                                                     # coarse token-grid maps
    preds = {"scratch": torch.rand(2, 4, 4), "DeepAVFusion": torch.rand(2, 4, 4)}
    fig = viz.localization_figure(images, preds, gt, titles=["dog", "piano"])
    check(fig, "image", "ground truth", "scratch", "DeepAVFusion", "dog", "piano")
    masks = (torch.rand(2, H, W) > 0.5).float()
    fig = viz.segmentation_figure(images, {"scratch": torch.rand(2, H, W)}, masks)
    check(fig, "ground truth", "scratch", "sample 1")


def test_separation_figure(scene):
    mel = scene[1][0]
    fig = viz.separation_figure(mel, torch.stack([mel, mel]), {"scratch": torch.stack([mel, mel]) * 0.5,
                                                               "DeepAVFusion": torch.stack([mel, mel])},
                                source_names=["violin", "guitar"], sample_rate=SR, hop_length=HOP)
    check(fig, "mixture", "ground truth", "scratch", "DeepAVFusion", "violin", "guitar", "time (s)")


def test_compare_bars_accepts_dict_and_tidy_frames():
    res = {"classification": {"pretrained": 0.8, "scratch": 0.5}, "localization": {"pretrained": 0.4, "scratch": 0.3}}
    fig = viz.compare_bars(res, ylabel="score")
    check(fig, "classification", "localization", "initialization", "score", "pretrained vs scratch")
    assert sum(len(ax.patches) for ax in fig.axes) == 4
    tidy = pd.DataFrame([{"task": "sep", "init": "pretrained", "metric": "SDR (dB)", "value": 5.0},
                         {"task": "sep", "init": "scratch", "metric": "SDR (dB)", "value": 3.0}])
    check(viz.compare_bars(tidy), "sep", "SDR (dB)")


def test_ablation_plot_line_and_bar():
    rows = [{"fusion": f, "tokens": n, "top1": 0.1 * n + i} for i, f in enumerate(["token", "dense"]) for n in (2, 4)]
    check(viz.ablation_plot(rows, x="tokens", y="top1", hue="fusion"), "tokens", "top1")
    check(viz.ablation_plot(pd.DataFrame(rows), x="fusion", y="top1"), "fusion", "top1")


# ----------------------------------------------------------------------------------------------
# widgets: the plain functions, and that the explorers build
# ----------------------------------------------------------------------------------------------
class TinyScenes:
    sample_rate, hop_length = SR, HOP

    def __init__(self, scene):
        image, mel, loc, seg = scene
        self.items = [dict(image=image, audio=mel, waveform=torch.randn(SR), loc_map=loc, seg_mask=seg,
                           box=torch.tensor([0, 0, 16, 16]), label=torch.tensor(i - 1)) for i in range(2)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_render_scene_returns_figure_and_player(scene):
    fig, player = widgets.render_scene(TinyScenes(scene), 0)
    check(fig, "nothing on screen sounds", "time (s)")
    assert isinstance(player, Audio) and player.data[:4] == b"RIFF"


def test_render_overlay_with_threshold(scene):
    images = torch.stack([scene[0]] * 2)
    fig = widgets.render_overlay(images, {"m": torch.rand(2, 4, 4)}, torch.stack([scene[3]] * 2), 1, 0.7)
    check(fig, "ground truth", "m", "≥ 0.70", "of the map")


def test_render_separation_players():
    mix, gts = torch.randn(2, 800), torch.randn(2, 2, 800)
    fig, players = widgets.render_separation(mix, gts * 0.5, gts, SR, index=1)
    check(fig, "mixture", "source 2", "time (s)", "amplitude")
    assert list(players) == ["mixture", "source 1: ground truth", "source 1: separated",
                             "source 2: ground truth", "source 2: separated"]
    assert all(isinstance(p, Audio) for p in players.values())


def test_explorers_build(scene):
    import ipywidgets as w

    images = torch.stack([scene[0]] * 2)
    assert isinstance(widgets.scene_explorer(TinyScenes(scene)), w.VBox)
    assert isinstance(widgets.overlay_explorer(images, torch.rand(2, 4, 4), torch.rand(2, 4, 4)), w.VBox)
    assert isinstance(widgets.separation_explorer(torch.randn(2, 800), torch.randn(2, 2, 800),
                                                  torch.randn(2, 2, 800), SR), w.VBox)
