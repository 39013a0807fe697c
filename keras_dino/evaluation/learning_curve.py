"""Plot of a pretraining run: loss and k-NN accuracy per epoch."""

import csv


def read_history(csv_path):
    """Columns of a `keras.callbacks.CSVLogger` file as float lists."""
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} holds no epochs yet.")
    columns = {}
    for row in rows:
        for key, value in row.items():
            try:
                columns.setdefault(key, []).append(float(value))
            except (TypeError, ValueError):
                columns.setdefault(key, []).append(float("nan"))
    return columns


def plot_learning_curve(history, path, baseline_knn=None, title=None):
    """Writes a PNG with the loss and the k-NN top-1 per epoch.

    Args:
        history: a dict of per-epoch lists with `epoch` (0-based), `loss`
            and optionally `knn_top1`, `teacher_entropy` (e.g.
            `read_history("history.csv")`).
        path: output PNG path.
        baseline_knn: optional k-NN top-1 of the random initialisation,
            drawn at epoch 0.
        title: optional figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e + 1 for e in history["epoch"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(epochs, history["loss"], "o-", label="DINO loss")
    if "teacher_entropy" in history:
        axes[0].plot(
            epochs,
            history["teacher_entropy"],
            "s--",
            label="teacher entropy",
        )
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("nats")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    knn = history.get("knn_top1")
    if knn:
        xs, ys = list(epochs), list(knn)
        if baseline_knn is not None:
            xs, ys = [0] + xs, [baseline_knn] + ys
            axes[1].axhline(
                baseline_knn, color="gray", ls=":", label="random init"
            )
        axes[1].plot(xs, ys, "o-", color="C2", label="teacher k-NN top-1")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("k-NN top-1 (%)")
        axes[1].legend()
        axes[1].grid(alpha=0.3)
    else:
        axes[1].set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
