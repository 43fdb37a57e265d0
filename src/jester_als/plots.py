"""Charts of a run's results, drawn from ``metrics.json`` alone (so any job's merged metrics can be redrawn):
the tuning grid as heatmaps, the engines on the same held-out rows as bars, and the held-out errors as a
histogram. matplotlib is the optional ``plot`` extra; without it the plots are skipped with one log line and
the report says so.
"""

from __future__ import annotations

import itertools
import logging
import os

from jester_als.outputs import atomic_path

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
SKIPPED = "matplotlib is not installed (pip install 'jester-als[plot]')"
DPI = 100


def pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only: no display on a cluster driver or in CI
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str, dpi: int = DPI) -> None:
    """Write the figure next to ``path`` and move it into place: a reader never sees half a PNG."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


def tuning_heatmap(plt, validation: list[dict], best: dict | None, path: str) -> None:
    """Validation RMSE over rank (rows) x regParam (columns), one panel per value of every other grid
    parameter (biases, maxIter, ...); the chosen point is outlined."""
    ranks = sorted({p["params"].get("rank") for p in validation})
    regs = sorted({p["params"].get("regParam") for p in validation})
    others = sorted({k for p in validation for k in p["params"]} - {"rank", "regParam"})
    panels = sorted({tuple(p["params"].get(k) for k in others) for p in validation}, key=str)
    fig, axes = plt.subplots(1, len(panels), figsize=(1.2 + 3.6 * len(panels), 3.6), squeeze=False)
    values = [p["validation_rmse"] for p in validation]
    low, high = min(values), max(values)
    for ax, panel in zip(axes[0], panels):
        grid = [[None] * len(regs) for _ in ranks]
        for p in validation:
            if tuple(p["params"].get(k) for k in others) == panel:
                grid[ranks.index(p["params"].get("rank"))][regs.index(p["params"].get("regParam"))] = p[
                    "validation_rmse"
                ]
        shown = [[float("nan") if v is None else v for v in row] for row in grid]
        image = ax.imshow(shown, cmap="viridis_r", vmin=low, vmax=high if high > low else low + 1e-9, aspect="auto")
        for i, j in itertools.product(range(len(ranks)), range(len(regs))):
            if grid[i][j] is not None:
                ax.text(
                    j,
                    i,
                    f"{grid[i][j]:.4f}",
                    ha="center",
                    va="center",
                    color="black",
                    fontsize=8,
                    bbox={"facecolor": "white", "alpha": 0.6, "linewidth": 0},
                )
                is_best = best and all(
                    best.get(k) == v
                    for k, v in {"rank": ranks[i], "regParam": regs[j], **dict(zip(others, panel))}.items()
                )
                if is_best:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
        ax.set_xticks(range(len(regs)), [str(r) for r in regs])
        ax.set_yticks(range(len(ranks)), [str(r) for r in ranks])
        ax.set_xlabel("regParam")
        ax.set_ylabel("rank")
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip(others, panel)) or "validation RMSE", fontsize=9)
    fig.subplots_adjust(bottom=0.16, top=0.88)
    fig.colorbar(image, ax=axes[0].tolist(), label="validation RMSE")
    save_png(fig, path)
    plt.close(fig)


def engine_bars(
    plt, rows: list[tuple[str, float, float | None]], title: str, path: str, time_label: str = "fit seconds"
) -> None:
    """Two panels of bars: test RMSE and seconds per engine (``rows``: name, RMSE, seconds or None)."""
    names = [r[0] for r in rows]
    fig, (ax_rmse, ax_time) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax_rmse.barh(names, [r[1] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax_rmse.text(r[1], i, f" {r[1]:.4f}", va="center", fontsize=8)
    ax_rmse.set_xlim(0, max(r[1] for r in rows) * 1.2)
    ax_rmse.set_xlabel("test RMSE (same held-out rows)")
    ax_rmse.invert_yaxis()
    timed = [r for r in rows if r[2] is not None]
    ax_time.barh([r[0] for r in timed], [r[2] for r in timed], color="tab:orange")
    for i, r in enumerate(timed):
        ax_time.text(r[2], i, f" {r[2]:.2f} s", va="center", fontsize=8)
    ax_time.set_xlim(0, max((r[2] for r in timed), default=1.0) * 1.25 or 1.0)
    ax_time.set_xlabel(time_label)
    ax_time.invert_yaxis()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def error_histogram(plt, histogram: dict, path: str) -> None:
    """Held-out errors (clipped prediction - rating) per engine, as step histograms on shared bins."""
    edges = histogram["edges"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for name, counts in histogram["counts"].items():
        ax.stairs(counts, edges, label=name)
    ax.set_xlabel("prediction - rating (held-out ratings, predictions clipped to the rating scale)")
    ax.set_ylabel("ratings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def _or_gap(value: float | None) -> float:
    """A figure to plot; NaN (a gap in the line) where there was nothing to score."""
    return float("nan") if value is None else value


def new_users_curve(plt, new: dict, path: str) -> None:
    """RMSE and NDCG@k of the held-out users' other ratings against how many ratings they showed: fold-in,
    popularity and a full refit; the gauge jokes as single points."""
    shown = sorted(new["random"], key=int)
    fig, (ax_rmse, ax_ndcg) = plt.subplots(1, 2, figsize=(9, 3.6))
    for predictor, style in (("model", "o-"), ("popularity", "s--"), ("refit", "^:")):
        label = {"model": "fold-in", "popularity": "popularity", "refit": "full refit"}[predictor]
        xs = [int(n) for n in shown]
        ax_rmse.plot(xs, [_or_gap(new["random"][n][predictor]["rmse"]) for n in shown], style, label=label)
        ax_ndcg.plot(xs, [new["random"][n][predictor]["ndcg_at_k"] or 0 for n in shown], style, label=label)
        if new.get("gauge"):
            x = new["gauge"]["revealed_per_user"]
            ax_rmse.plot(
                [x], [_or_gap(new["gauge"][predictor]["rmse"])], "*", markersize=11, color=ax_rmse.lines[-1].get_color()
            )
            ax_ndcg.plot(
                [x],
                [new["gauge"][predictor]["ndcg_at_k"] or 0],
                "*",
                markersize=11,
                color=ax_ndcg.lines[-1].get_color(),
            )
    for ax, what in ((ax_rmse, "RMSE"), (ax_ndcg, f"NDCG@{new['k']}")):
        ax.set_xscale("log")
        ax.set_xlabel("ratings shown (random; star: the gauge jokes)")
        ax.set_ylabel(f"{what} of the other ratings")
    ax_rmse.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def run_plots(metrics: dict, output_dir: str) -> dict:
    """Draw every plot the metrics allow into ``output_dir/plots/``; returns ``{name: relative path}``, or
    ``{"skipped": reason}`` without matplotlib."""
    plt = pyplot()
    if plt is None:
        log.warning("plots skipped: %s", SKIPPED)
        return {"skipped": SKIPPED}
    made = {}
    spark = metrics.get("spark_als") or {}
    if spark.get("validation"):
        made["tuning"] = os.path.join(PLOTS_DIR, "tuning.png")
        tuning_heatmap(plt, spark["validation"], spark.get("best_params"), os.path.join(output_dir, made["tuning"]))
    numpy_als, baselines = metrics.get("numpy_als") or {}, metrics.get("baselines") or {}
    if "spark_test_rmse_same_rows" in numpy_als and baselines:
        rows = [
            ("Spark ALS", numpy_als["spark_test_rmse_same_rows"], spark.get("fit_seconds")),
            ("NumPy ALS", numpy_als["test_rmse"], numpy_als.get("driver_seconds")),
            ("user + joke bias", baselines["bias"]["test_rmse"], baselines["bias"].get("fit_seconds")),
            ("global mean", baselines["global_mean"]["test_rmse"], None),
        ]
        made["engines"] = os.path.join(PLOTS_DIR, "engines.png")
        engine_bars(
            plt,
            rows,
            f"{numpy_als['rows']:,} held-out ratings of {numpy_als['sample_users']:,} users",
            os.path.join(output_dir, made["engines"]),
            "seconds (fit; NumPy ALS: collect + fit)",
        )
    if baselines.get("error_histogram"):
        made["errors"] = os.path.join(PLOTS_DIR, "errors.png")
        error_histogram(plt, baselines["error_histogram"], os.path.join(output_dir, made["errors"]))
    if (metrics.get("new_users") or {}).get("random"):
        made["new_users"] = os.path.join(PLOTS_DIR, "new_users.png")
        new_users_curve(plt, metrics["new_users"], os.path.join(output_dir, made["new_users"]))
    for name in ("tuning", "engines", "errors", "new_users"):  # a plot of a section this directory no longer holds
        stale = os.path.join(output_dir, PLOTS_DIR, f"{name}.png")
        if name not in made and os.path.exists(stale):
            os.remove(stale)
    return made
