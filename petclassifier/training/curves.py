"""curves.png: loss and accuracy per epoch, drawn into every run folder so people see the learning; and the
matplotlib plumbing the other pictures (insight.plots) share. matplotlib is an optional extra, imported only when
something is drawn."""

from __future__ import annotations

from pathlib import Path

from ..engine.metrics import epoch_rows
from ..errors import UserError

PLOTS_HINT = 'plotting needs matplotlib: pip install -e ".[plots]"'


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or a UserError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError(PLOTS_HINT) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=fig.dpi, bbox_inches="tight")
    pyplot().close(fig)
    return path


def plot_curves(metrics_path: str | Path, out: str | Path) -> Path:
    """Train and validation loss, and validation accuracy, per epoch, from a run's metrics.jsonl."""
    rows = epoch_rows(metrics_path)
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "s-", label="validation")
    ax_loss.set(title="Loss (cross-entropy)", xlabel="epoch", ylabel="loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in rows], "o-", color="tab:green")
    ax_acc.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(f"Training curves ({Path(metrics_path).parent.name})")
    fig.tight_layout()
    return save(fig, out)


def write_curves(run_dir: str | Path) -> Path | None:
    """curves.png in a run folder; without matplotlib, a one-line note instead (training does not need it)."""
    try:
        return plot_curves(Path(run_dir) / "metrics.jsonl", Path(run_dir) / "curves.png")
    except UserError as e:
        print(f"note: no curves.png: {e}")
        return None
