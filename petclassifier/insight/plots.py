"""Pictures a person wants to look at: training curves, confusion matrix, mistakes, Grad-CAM, filters, comparison.

matplotlib is an optional extra, imported only when something is drawn.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import torch

from ..training.curves import pyplot, save


def to_image(x: torch.Tensor):
    """uint8 or float [3, H, W] -> an array imshow can draw ([H, W, 3], 0-1 floats)."""
    x = x.detach().float().cpu()
    if x.max() > 1.5:
        x = x / 255
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


def plot_confusion(matrix: torch.Tensor, class_names: list[str], out: str | Path, title: str) -> Path:
    """Confusion matrix (rows true, columns predicted), each row as shares of its photos."""
    plt = pyplot()
    n = len(class_names)
    side = max(4.0, 0.26 * n + 2)
    fig, ax = plt.subplots(figsize=(side + 1, side), dpi=80)
    totals = matrix.sum(1, keepdim=True).clamp(min=1)
    image = ax.imshow((matrix / totals).numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(n)
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=8 if n > 10 else 10)
    ax.set_yticks(ticks, class_names, fontsize=8 if n > 10 else 10)
    ax.set(xlabel="predicted class", ylabel="true class", title=title)
    if n <= 12:  # counts are readable only on small matrices
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class's photos")
    return save(fig, out)


def plot_reliability(calibration: dict, out: str | Path, title: str) -> Path:
    """Accuracy per top-1 confidence bin against the diagonal, before and after the temperature (calibration_report)."""
    plt = pyplot()
    bins = calibration["bins"]
    centres = [(i + 0.5) / bins for i in range(bins)]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.9), dpi=80, sharey=True)
    captions = {"before": "before: the model's own probabilities",
                "after": f"after: logits / T, T = {calibration['temperature']:.3g}"}
    for ax, (when, caption) in zip(axes, captions.items()):
        r = calibration[f"reliability_{when}"]
        shown = [i for i in range(bins) if r["photos"][i]]  # empty bins have no accuracy to draw
        ax.bar([centres[i] for i in shown], [r["accuracy"][i] for i in shown], 1 / bins, color="tab:blue",
               edgecolor="white", label="accuracy")
        ax.scatter([r["confidence"][i] for i in shown], [r["accuracy"][i] for i in shown], s=12, color="tab:orange",
                   zorder=3, label="(mean confidence, accuracy)")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
        ax.set(title=f"{caption}\nECE {calibration[f'ece_{when}']:.3f}", xlabel="top-1 confidence", xlim=(0, 1),
               ylim=(0, 1))
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below, off the bars
    return save(fig, out)


def plot_image_grid(images: list[torch.Tensor], captions: list[str], out: str | Path, title: str,
                    columns: int = 4) -> Path:
    """Photos in a grid, each with its caption."""
    plt = pyplot()
    rows = max(1, math.ceil(len(images) / columns))
    # constrained layout makes room for each caption (tight_layout let two-line captions run under the photo above)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.0 * rows), dpi=70, squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, caption in zip(axes.flat, images, captions):
        ax.imshow(to_image(img))
        ax.set_title(caption, fontsize=8)
    fig.suptitle(title)
    return save(fig, out)


def plot_gradcam(image: torch.Tensor, cams: list[tuple[str, torch.Tensor]], out: str | Path, title: str) -> Path:
    """The photo, then one heat-map overlay per (caption, cam [H, W] in 0-1)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 1 + len(cams), figsize=(3.2 * (1 + len(cams)), 3.5), dpi=72, squeeze=False)
    axes[0, 0].imshow(to_image(image))
    axes[0, 0].set_title("photo (what the network sees)", fontsize=9)
    for ax, (caption, cam) in zip(axes[0, 1:], cams):
        ax.imshow(to_image(image))
        ax.imshow(cam.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(caption, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, out)


def plot_filters(weight: torch.Tensor, out: str | Path, title: str) -> Path:
    """First-layer convolution filters [C_out, 3, k, k] as small colour patches, each scaled to 0-1."""
    plt = pyplot()
    n = weight.shape[0]
    columns = min(8, n)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.1 * columns, 1.1 * rows + 0.6), dpi=72, squeeze=False)
    w = weight.detach().float()
    low, high = w.amin(dim=(1, 2, 3), keepdim=True), w.amax(dim=(1, 2, 3), keepdim=True)
    w = (w - low) / (high - low).clamp(min=1e-8)
    for ax in axes.flat:
        ax.axis("off")
    for ax, f in zip(axes.flat, w):
        ax.imshow(to_image(f if f.shape[0] == 3 else f[:1].expand(3, -1, -1)), interpolation="nearest")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save(fig, out)


def plot_feature_maps(image: torch.Tensor, stages: list[tuple[str, torch.Tensor]], out: str | Path,
                      title: str) -> Path:
    """Per stage (caption, maps [K, h, w]), one row of its strongest feature maps beside the photo."""
    plt = pyplot()
    k = max(m.shape[0] for _, m in stages)
    fig, axes = plt.subplots(len(stages), k + 1, figsize=(1.6 * (k + 1), 1.8 * len(stages)), dpi=72,
                             squeeze=False)
    for row, (caption, maps) in enumerate(stages):
        axes[row, 0].imshow(to_image(image))
        axes[row, 0].set_title(caption, fontsize=8)
        for col, fmap in enumerate(maps, start=1):
            axes[row, col].imshow(fmap.numpy(), cmap="viridis")
            axes[row, col].set_title(f"{tuple(fmap.shape)[0]}x{tuple(fmap.shape)[1]}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, out)


def plot_comparison(rows: list[dict], out: str | Path, title: str) -> Path:
    """Bars of accuracy and mean per-class accuracy per method, grouped by task, hand-crafted in grey."""
    plt = pyplot()
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.8 * len(tasks), 3.8), dpi=80, squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        x = torch.arange(len(mine)).numpy()
        colours = ["tab:gray" if r["features"] == "hand-crafted" else "tab:blue" for r in mine]
        ax.bar(x - 0.2, [100 * r["accuracy"] for r in mine], 0.4, color=colours, label="accuracy")
        ax.bar(x + 0.2, [100 * r["mean_per_class_accuracy"] for r in mine], 0.4, color=colours, alpha=0.55,
               hatch="//", label="mean per-class accuracy")
        for xi, r in zip(x, mine):
            ax.text(xi - 0.2, 100 * r["accuracy"] + 1, f"{r['accuracy']:.1%}", ha="center", fontsize=7)
        labels = [f"{textwrap.fill(r['method'], 18, break_long_words=False)}\n{r['train_seconds']:.0f} s" for r in mine]
        ax.set_xticks(x, labels, fontsize=8)
        ax.set(title=f"task: {task}", ylabel="held-out accuracy (%)", ylim=(0, 105))
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, out)


def plot_accuracy_time(train: dict, out: str | Path, title: str) -> Path:
    """Validation accuracy against wall seconds since process start (log scale: the runs differ 40-fold), one line
    per training run, its end marked with its test accuracy."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=90)
    for name, run in train.items():
        seconds, accuracy = [s for s, _ in run["curve"]], [100 * a for _, a in run["curve"]]
        (line,) = ax.plot(seconds, accuracy, "o-", markersize=3, label=f"{name}: {run['seconds']:.0f} s")
        if run["test_accuracy"] is not None:
            ax.plot(run["seconds"], 100 * run["test_accuracy"], "*", markersize=11, color=line.get_color())
    ax.set_xscale("log")
    ax.set(xlabel="wall seconds since the process started (log scale)", ylabel="validation accuracy (%)",
           ylim=(0, 100), title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right", title="star: test accuracy at the end", title_fontsize=8)
    fig.tight_layout()
    return save(fig, out)
