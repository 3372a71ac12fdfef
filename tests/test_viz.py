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


def lines(ax) -> list[str]:
    """Labels of the axes' labelled lines (reference lines; seaborn's error bars have ``_child`` labels)."""
    return [line.get_label() for line in ax.lines if not line.get_label().startswith("_")]


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
    from avlib.image import normalize
    rgb = np.full((H, W, 3), 0.5, np.float32)
    normalized = normalize(torch.from_numpy(rgb).permute(2, 0, 1))               # (3, H, W)
    out = viz.denormalize(normalized)
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
    check(viz.plot_history(hist), "loss", "top-1 (%)", "step")
    check(viz.plot_history({"step": [0, 1, 2], "loss": [3.0, 2.0, 1.0]}, keys="loss", logy=True), "loss")
    fig = viz.plot_history({"scratch": hist, "pretrained": hist}, keys=["loss"])
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == {"scratch", "pretrained"}
    from avlib.train import History

    run = History(steps=hist[:10], evals=[{"step": 9, "epoch": 1, "nn_acc": 0.4}])
    path = tmp_path / "history.json"
    run.to_json(path)                                                            # what fit() writes
    check(viz.plot_history(path), "loss", "1-NN accuracy (%)")
    check(viz.plot_history({"a": run, "b": path}, keys="nn_acc"), "1-NN accuracy (%)")
    with pytest.raises(KeyError, match="acc"):
        viz.plot_history(hist, keys=["acc"])


def test_plot_history_groups_runs_and_draws_references():
    long = [{"step": s, "loss": 2.5 - s / 1000} for s in range(0, 1400, 20)]
    short = [{"step": s, "loss": 2.6 - s / 100, "loss_image": 1.0} for s in range(0, 140, 20)]
    runs = {"linprobe / pretrained": long, "linprobe / scratch": long, "finetune / pretrained": short,
            "finetune / scratch": short}
    fig = viz.plot_history(runs, keys="loss", references={"uniform guess (ln 10)": np.log(10)})
    check(fig, "linear probe", "fine-tuning", "loss")
    assert len(fig.axes) == 2                                     # one panel per protocol: nothing squashed
    assert fig.axes[1].get_xlim()[1] < 200
    for ax in fig.axes:                                           # the reference line is in every panel
        lo, hi = ax.get_ylim()
        assert "uniform guess (ln 10)" in lines(ax) and lo < np.log(10) < hi
    legend = fig.axes[-1].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["pretrained", "scratch", "uniform guess (ln 10)"]
    fig.draw_without_rendering()                                  # legend right of the panel, not over it
    assert legend.get_window_extent().x0 >= fig.axes[-1].get_window_extent().x1
    assert len(viz.plot_history(runs, keys="loss", group_sep=None).axes) == 1
    check(viz.plot_history(short, keys=["loss_image"]), "image loss")


def test_readable_labels():
    assert viz.readable("top1") == "top-1 (%)"
    assert viz.readable("sdr") == "SDR (dB)" and viz.readable("auc") == "AUC"
    assert viz.readable("avsbench_miou") == "AVSBench mIoU"
    assert viz.readable("loss_image") == "image loss"
    assert viz.readable("pretrain_nn_fusion") == "pretrain nn fusion"
    assert viz.readable("SDRi (dB)") == "SDRi (dB)"                # labels stay as they are
    assert set(viz.METRIC_LABELS) >= {"top1", "auc", "ciou", "avsbench_miou", "avsbench_f", "davf_miou", "sdr",
                                      "sdri", "sir", "sar"}


def test_show_attention():
    attn = torch.softmax(torch.randn(3, 6, 10), dim=-1)
    fig = viz.show_attention(attn, k_groups=[("fusion", 2), ("image", 4), ("audio", 4)])
    check(fig, "head 0", "head 2", "key token", "query token", "attention weight")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["fusion", "image", "audio"]
    # before / after: one row per model, the same heads in the same columns, one color scale
    fig = viz.show_attention({"untrained": attn, "pre-trained": attn.flip(-1)}, max_heads=2)
    check(fig, "head 0", "head 1", "untrained", "pre-trained", "attention weight")
    images = [im for ax in fig.axes for im in ax.get_images()]
    assert len(images) == 4 and len({im.get_clim() for im in images}) == 1


def gt_outlines(ax) -> list:
    """The ground-truth outlines drawn on an axes (``viz.draw_gt``: GT_COLOR contours or rectangles)."""
    from matplotlib.colors import to_rgba
    green = to_rgba(viz.GT_COLOR)
    found = [c for c in ax.collections if len(c.get_edgecolor()) and tuple(c.get_edgecolor()[0]) == green]
    return found + [p for p in ax.patches if p.get_edgecolor() == green and not p.get_fill()]


def test_ground_truth_is_one_green_outline_everywhere(scene):
    image, mel, loc, seg = scene
    images = torch.stack([image] * 2)
    cell = torch.zeros(2, 4, 4)
    cell[:, :2, :2] = 1.0                                                        # coarse map: one sounding cell
    fig = viz.localization_figure(images, {"scratch": torch.rand(2, 4, 4)}, cell)
    axes = np.array(fig.axes[:-1]).reshape(2, 3)                                 # last axes: the colorbar
    for row in axes:
        assert not gt_outlines(row[0])                                           # the plain image
        assert gt_outlines(row[1]) and not row[1].get_images()[1:]               # GT: an outline, no heat map
        assert gt_outlines(row[2])                                               # and over the prediction
    seg2 = (torch.rand(2, H, W) > 0.5).float()
    fig = viz.segmentation_figure(images, {"scratch": torch.rand(2, H, W)}, seg2)
    assert all(gt_outlines(ax) for k, ax in enumerate(fig.axes) if k % 3)
    fig = viz.show_scene(image, mel, loc_map=(loc > 0.5).float(), seg_mask=seg, box=torch.tensor([2, 3, 20, 25]))
    assert gt_outlines(fig.axes[0]) and len(gt_outlines(fig.axes[1])) == 2      # box; map and mask
    assert len(fig.axes[1].get_images()) == 1                                    # no jet GT map any more
    fig = widgets.render_overlay(images, torch.rand(2, 4, 4), cell, 0, threshold=0.5)
    assert all(gt_outlines(ax) for ax in fig.axes[1:4])
    # nothing sounds: nothing drawn; the whole frame: its border
    from matplotlib.figure import Figure as _F
    ax = _F().subplots()
    assert viz.draw_gt(ax, torch.zeros(4, 4), (H, W)) is None and viz.draw_gt(ax, torch.zeros(4)) is None
    assert viz.draw_gt(ax, torch.ones(4, 4), (H, W)).get_width() == W


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
    check(fig, "classification", "localization", "initialization", "score", "initializations compared")
    assert sum(len(ax.patches) for ax in fig.axes) == 4
    tidy = pd.DataFrame([{"task": "sep", "init": "pretrained", "metric": "SDR (dB)", "value": 5.0},
                         {"task": "sep", "init": "scratch", "metric": "SDR (dB)", "value": 3.0}])
    check(viz.compare_bars(tidy), "sep", "SDR (dB)")


def test_compare_bars_orders_the_initializations_like_the_reports():
    from avlib.reproduce import INIT_ORDER
    res = {"localization": {"ccol": 0.3, "deepavfusion": 0.25, "other": 0.1, "scratch": 0.2, "ezvsl": 0.3,
                            "unimodal": 0.22, "mix_and_localize": 0.2, "slavc": 0.2, "sound_of_pixels": 0.2,
                            "oneavm": 0.2, "deepavfusion_curated": 0.2}}
    fig = viz.compare_bars(res, ylabel="auc")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks == [*INIT_ORDER, "other"]     # scratch, unimodal, deepavfusion, its data control, the methods
    assert all(t.get_rotation() == 30 for t in fig.axes[0].get_xticklabels())     # eleven names do not overlap
    three = viz.compare_bars({"probe": {"deepavfusion": 60.0, "unimodal": 58.0, "scratch": 50.0}}, ylabel="top1")
    assert [t.get_text() for t in three.axes[0].get_xticklabels()] == ["scratch", "unimodal", "deepavfusion"]


def test_method_names():
    assert viz.method_name("deepavfusion") == "DeepAVFusion" and viz.method_name("mix_and_localize") == "Mix-and-Localize"
    assert viz.method_name("something else") == "something else"
    from avlib import zoo
    assert set(zoo.BASELINES) | {"scratch", "unimodal", "deepavfusion", "deepavfusion_curated"} == set(viz.METHOD_NAMES)
    assert {"scratch", *(r.name for r in zoo.RECIPES["cpu"])} == set(viz.METHOD_NAMES)     # every zoo entry has a name


def test_plot_history_references_per_key():
    hist = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(10)] + [{"step": 9, "cell_acc": 0.3}]
    fig = viz.plot_history({"scratch": hist, "deepavfusion": hist}, keys=["loss", "cell_acc"],
                           references={"loss": {"constant prediction": 0.56}, "cell_acc": {"chance": 0.25},
                                       "everywhere": 0.1})
    loss, acc = fig.axes[:2]
    refs = lambda ax: set(lines(ax)) - {"scratch", "deepavfusion"}          # noqa: E731 (the runs' lines)
    assert refs(loss) == {"constant prediction", "everywhere"} and refs(acc) == {"chance", "everywhere"}


def tidy_rows(task, metric, *values):
    return [{"task": task, "init": i, "metric": metric, "value": v} for i, v in zip(["pretrained", "scratch"], values)]


def test_compare_bars_axes_start_at_zero_with_headroom_and_units():
    df = pd.DataFrame(tidy_rows("linprobe", "top1", 55.0, 50.6) + tidy_rows("localization", "auc", 0.21, 0.22)
                      + tidy_rows("segmentation", "avsbench_miou", 0.0, 0.0) + tidy_rows("sep", "sdri", -0.03, -0.05))
    fig = viz.compare_bars(df)
    check(fig, "linear probe", "top-1 (%)", "AUC", "AVSBench mIoU", "SDRi (dB)")
    top1, auc, miou, sdri = fig.axes
    assert top1.get_ylim()[0] == 0 and top1.get_ylim()[1] >= 55.0 * 1.15     # room for the value label
    assert auc.get_ylim()[0] == 0
    assert miou.get_ylim() == (0.0, 1.0)                                      # all zero: the whole score range
    assert sdri.get_ylim() == (-1.0, 1.0)                  # a change in dB: symmetric about 0, at least +-1 dB
    neg = viz.compare_bars(pd.DataFrame(tidy_rows("sep", "SDR (dB)", -0.03, -0.05)))   # not a change: from 0
    assert neg.axes[0].get_ylim()[1] == 0 and neg.axes[0].get_ylim()[0] <= -1.0    # and at least 1 dB deep
    zero_pct = viz.compare_bars({"probe": {"pretrained": 0.0, "scratch": 0.0}}, ylabel="top1")
    assert zero_pct.axes[0].get_ylim() == (0.0, 100.0) and zero_pct.axes[0].get_ylabel() == "top-1 (%)"


def test_compare_bars_sdri_is_honest_about_small_differences():
    # SDRi -0.04 vs -0.01 dB must not fill the panel: 0 ("the mixture itself") in the middle, >= +-1 dB
    fig = viz.compare_bars({"SDRi (dB)": {"pretrained": -0.04, "scratch": -0.01}}, ylabel="dB",
                           references={"SDRi (dB)": {"mixture": 0.0}})
    lo, hi = fig.axes[0].get_ylim()
    assert lo <= -1.0 and hi >= 1.0 and lo == -hi
    assert lines(fig.axes[0]) == ["mixture"]
    big = viz.compare_bars({"SDRi (dB)": {"pretrained": 4.0, "scratch": 2.0}}, ylabel="dB")
    lo, hi = big.axes[0].get_ylim()
    assert hi >= 4.0 * 1.2 and lo == -hi                                       # bars and labels fit
    free = viz.compare_bars({"SDRi (dB)": {"pretrained": 0.1, "scratch": 0.2}}, ylabel="dB", symmetric={})
    assert free.axes[0].get_ylim()[0] == 0                                     # switched off: from 0


def test_compare_bars_sharey():
    res = {"linear probe": {"pretrained": 40.0, "scratch": 38.0}, "fine-tuning": {"pretrained": 64.0, "scratch": 56.0}}
    probe, ft = viz.compare_bars(res, ylabel="top1", sharey=True).axes
    assert probe.get_ylim() == ft.get_ylim() and probe.get_ylim()[0] == 0 and probe.get_ylim()[1] >= 64.0
    probe, ft = viz.compare_bars(res, ylabel="top1").axes
    assert probe.get_ylim() != ft.get_ylim()


def test_compare_bars_reference_lines():
    bars = {"cIoU": {"pretrained": 0.004, "scratch": 0.002}, "AUC": {"pretrained": 0.21, "scratch": 0.22}}
    fig = viz.compare_bars(bars, references={"AUC": {"oracle": 0.525, "random map": 0.195}, "ceiling": 1.0})
    ciou, auc = fig.axes
    assert lines(auc) == ["ceiling", "oracle", "random map"]
    assert lines(ciou) == ["ceiling"]                                          # {label: y}: every panel
    assert all(line.get_linestyle() == "--" for line in (ciou.lines + auc.lines) if line.get_label() == "ceiling")
    assert ciou.get_ylim()[1] >= 1.0 and auc.get_ylim()[1] >= 0.525          # the lines stay visible
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["ceiling", "oracle", "random map"]
    old_style = viz.compare_bars(bars)                                         # lines added by the caller
    old_style.axes[0].axhline(1.0)
    assert old_style.axes[0].get_ylim()[1] >= 1.0


def test_ablation_plot_line_and_bar():
    rows = [{"fusion": f, "tokens": n, "top1": 0.1 * n + i} for i, f in enumerate(["token", "dense"]) for n in (2, 4)]
    check(viz.ablation_plot(rows, x="tokens", y="top1", hue="fusion"), "tokens", "top-1 (%)")
    check(viz.ablation_plot(pd.DataFrame(rows), x="fusion", y="top1"), "fusion", "top-1 (%)")


def test_ablation_plot_legend_outside_chance_line_and_rotated_labels():
    rows = [{"features": f, "init": i, "top1": 40.0 + k} for k, f in enumerate(["audio", "audio+visual+fusion"])
            for i in ("pretrained", "scratch")]
    fig = viz.ablation_plot(rows, x="features", y="top1", hue="init", chance=10.0)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "top-1 (%)"
    (chance,) = [line for line in ax.lines if line.get_label() == "chance"]
    assert lines(ax) == ["chance"] and chance.get_ydata()[0] == 10.0
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["pretrained", "scratch", "chance"]
    fig.draw_without_rendering()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1      # never over the bars
    ticks = ax.get_xticklabels()
    assert all(t.get_rotation() == 30 and t.get_ha() == "right" and t.get_rotation_mode() == "anchor" for t in ticks)
    ax.tick_params(axis="x", labelrotation=20)                               # a caller's own angle keeps ha
    assert all(t.get_ha() == "right" for t in ax.get_xticklabels())
    short = viz.ablation_plot(rows[:2], x="init", y="top1", legend=None, ylabel="accuracy")
    assert short.axes[0].get_xticklabels()[0].get_rotation() == 0 and short.axes[0].get_legend() is None
    assert short.axes[0].get_ylabel() == "accuracy"


def test_ablation_sweeps_chance_line_units_and_shared_rows():
    rows = pd.DataFrame({"variant": ["none", "token", "default", "1 token"], "linprobe_top1": [30.0, 35.0, 40.0, 33.0],
                         "pretrain_nn_fusion": [12.0, 20.0, 25.0, 18.0]}).set_index("variant")
    fig = viz.ablation_sweeps(rows, {"fusion": ["none", "token", "default"], "tokens": ["1 token", "default"]},
                              {"linprobe_top1": "linear probe, top-1 (%)", "pretrain_nn_fusion": "1-NN, fusion (%)"},
                              chance={"linprobe_top1": 10.0, "pretrain_nn_fusion": 10.0},
                              references={"linprobe_top1": {"02 checkpoint": 45.0}})
    check(fig, "sweep: fusion", "sweep: tokens", "linear probe, top-1 (%)", "1-NN, fusion (%)")
    top, bottom = np.array(fig.axes).reshape(2, 2)
    for ax in (*top, *bottom):
        (chance,) = [line for line in ax.lines if line.get_label() == "chance"]
        assert chance.get_ydata()[0] == 10.0 and ax.get_ylim()[0] == 0         # from 0, chance drawn
    assert "02 checkpoint" in lines(top[0]) and "02 checkpoint" not in lines(bottom[0])
    assert top[0].get_ylim() == top[1].get_ylim() and top[0].get_ylim()[1] >= 45.0
    assert "%" in top[0].get_ylabel()
    assert top[1].get_legend() is not None and top[0].get_legend() is None


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
    check(fig, "ground truth", "m", "≥ 0.70", "of the map", "p in [")


def test_render_overlay_thresholds_raw_probabilities(scene):
    images = torch.stack([scene[0]] * 2)
    probs = 0.1 + 0.2 * torch.rand(2, 4, 4)                   # confident nowhere: nothing reaches p = 0.5
    fig = widgets.render_overlay(images, probs, torch.rand(2, 4, 4), 0, 0.5)
    check(fig, "p ≥ 0.50 (0% of the map)", "p in [0.1")
    logits = torch.randn(2, 4, 4) * 3                          # not probabilities: the scaled map is thresholded
    fig = widgets.render_overlay(images, logits, torch.rand(2, 4, 4), 0, 0.5)
    check(fig, "min-max scaled ≥ 0.50", "value in [")
    fig = widgets.render_overlay(images, probs, torch.rand(2, 4, 4), 0, 0.5, probabilities=False)
    check(fig, "min-max scaled ≥ 0.50")


def test_localization_figure_titles_give_raw_range(scene):
    images = torch.stack([scene[0]] * 2)
    maps = 0.2 + 0.05 * torch.rand(2, 4, 4)
    fig = viz.localization_figure(images, {"scratch": maps}, torch.rand(2, 4, 4))
    lo, hi = float(maps[1].min()), float(maps[1].max())
    check(fig, "scratch\np in [", f"p in [{lo:.3g}, {hi:.3g}]")
    check(viz.localization_figure(images, maps - 0.2, torch.rand(2, 4, 4), value_name="cos"), "cos in [")


def wav_peak(player) -> float:
    import io
    import wave

    with wave.open(io.BytesIO(player.data)) as w:
        return float(np.abs(np.frombuffer(w.readframes(w.getnframes()), np.int16)).max())


def test_render_separation_players():
    mix, gts = torch.randn(2, 800), torch.randn(2, 2, 800)
    fig, players = widgets.render_separation(mix, gts * 0.5, gts, SR, index=1)
    check(fig, "mixture", "source 2", "time (s)", "amplitude")
    assert list(players) == ["mixture", "source 1: ground truth", "source 1: separated",
                             "source 2: ground truth", "source 2: separated"]
    assert all(isinstance(p, Audio) for p in players.values())
    # one common scale: the half-amplitude estimates play at half the level of their ground truth
    assert wav_peak(players["source 1: separated"]) == pytest.approx(0.5 * wav_peak(players["source 1: ground truth"]),
                                                                      rel=1e-3)
    assert max(map(wav_peak, players.values())) == pytest.approx(32767, rel=1e-3)   # loudest clip at full scale
    _, normalized = widgets.render_separation(mix, gts * 0.5, gts, SR, index=1, normalize=True)
    assert wav_peak(normalized["source 1: separated"]) == pytest.approx(32767, rel=1e-3)


def test_reconstruction_players_invert_all_clips_the_same_way():
    from avlib.audio import AudioFrontEnd
    from avlib.config import make_config
    data = make_config("smoke").data                                             # 32 mels, 64 frames, 1 s at 8 kHz
    t = torch.arange(data.clip_samples) / data.sample_rate
    wave = 0.5 * torch.sin(2 * torch.pi * 440 * t)
    mel = AudioFrontEnd(data)(wave)                                              # (1, 32, 64): a 2 x 4 patch grid
    mask = torch.tensor([1.0, 0, 0, 1, 0, 1, 1, 0])
    players = widgets.reconstruction_players(mel, mel + 0.1, mask, P, data, recording=wave)
    assert list(players)[0] == "the recording" and "reconstruction" in players
    assert any(k.startswith("masked input (50%") for k in players)
    assert all(isinstance(a, Audio) for a in players.values())
    assert len(widgets.reconstruction_players(mel, mel, mask, P, data)) == 3


def test_audio_players_scale_to_the_reference():
    mix = torch.randn(800)
    mix = mix / mix.abs().max()                                # peak 1
    quiet = 0.25 * mix
    players = widgets.audio_players({"estimate": quiet}, SR, reference=mix)
    assert wav_peak(players["estimate"]) == pytest.approx(0.25 * 32767, rel=1e-3)
    assert wav_peak(widgets.audio_players({"estimate": quiet}, SR, normalize=True)["estimate"]) == pytest.approx(
        32767, rel=1e-3)
    assert wav_peak(widgets.audio_players({"silence": torch.zeros(800)}, SR)["silence"]) == 0


def test_explorers_build(scene):
    import ipywidgets as w

    images = torch.stack([scene[0]] * 2)
    assert isinstance(widgets.scene_explorer(TinyScenes(scene)), w.VBox)
    assert isinstance(widgets.overlay_explorer(images, torch.rand(2, 4, 4), torch.rand(2, 4, 4)), w.VBox)
    assert isinstance(widgets.separation_explorer(torch.randn(2, 800), torch.randn(2, 2, 800),
                                                  torch.randn(2, 2, 800), SR), w.VBox)


def test_static_explorers_are_galleries_of_the_same_views(scene, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda *objs: shown.extend(objs))
    g = widgets.scene_explorer(TinyScenes(scene), static=True)
    assert isinstance(g, widgets.Gallery) and g.settings == [{"index": i} for i in range(len(TinyScenes(scene)))]
    g._ipython_display_()
    assert any(isinstance(o, Figure) for o in shown) and any(isinstance(o, Audio) for o in shown)
    images = torch.stack([scene[0]] * 3)
    ov = widgets.overlay_explorer(images, {"a": torch.rand(3, 4, 4), "b": torch.rand(3, 4, 4)},
                                  torch.rand(3, 4, 4), static=True)
    assert ov.settings == [{"index": i, "threshold": 0.5, "method": m} for m in "ab" for i in (0, 1)]
    fig = ov.render(**ov.settings[3])                          # exactly what the slider would show there
    check(fig, "b", "≥ 0.50")
    sep = widgets.separation_explorer(torch.randn(4, 800), torch.randn(4, 2, 800), torch.randn(4, 2, 800), SR,
                                      static=True)
    assert sep.settings == [{"index": 0}, {"index": 1}]
