"""What the study shows a person: scale.md (tables, limits, the cost model, predictions) and scale.png."""

from __future__ import annotations

import logging
import os

from jester_als.report import table
from jester_als.scale.costmodel import ENGINES

log = logging.getLogger("jester_als.scale")


def crossover(points: list[dict], axis: str) -> dict | None:
    """The first size at which NumPy could not run (budget) while Spark still could, or at which Spark
    became faster."""
    for p in points:
        if p["axis"] != axis:
            continue
        numpy_r, spark_r = p["engines"].get("numpy", {}), p["engines"].get("spark", {})
        if spark_r.get("completed") and not numpy_r.get("completed"):
            return {"train_ratings": p["train_ratings"], "users": p["users"], "jokes": p["jokes"],
                    "why": f"NumPy stopped: {numpy_r.get('limit')}"}
        if spark_r.get("completed") and numpy_r.get("completed") and spark_r["fit_seconds"] < numpy_r["fit_seconds"]:
            return {"train_ratings": p["train_ratings"], "users": p["users"], "jokes": p["jokes"],
                    "why": "Spark fitted faster"}
    return None


def single_machine_limit(study: dict, engine: str) -> dict | None:
    """Along the users axis (100 jokes, the users axis' ratings per user), the size at which the engine's
    fitted memory model reaches the machine's memory: where one machine runs out and Spark on a cluster
    becomes necessary."""
    entry = study["cost_model"]["engines"].get(engine, {})
    users_points = [p for p in study["points"] if p["axis"] == "users" and p["users"]]
    if not entry.get("fitted") or not users_points:
        return None
    per_user = users_points[-1]["train_ratings"] / users_points[-1]["users"]
    machine_mb = study["machine"]["memory_gb"] * 1024
    coef = entry["memory"]["coefficients"]
    jokes, rank = 100, study["cost_model"]["rank"]
    dense_per_user = coef[3] * jokes if len(coef) > 3 else 0.0
    slope = coef[1] * per_user + coef[2] * rank + dense_per_user  # MB per user
    if slope <= 0:
        return None
    users = (machine_mb - coef[0] - coef[2] * jokes * rank) / slope
    return {"users": users, "train_ratings": users * per_user, "memory_gb": study["machine"]["memory_gb"]}


def _cell(result: dict, key: str, fmt: str) -> str:
    if not result:
        return ""
    if not result.get("completed"):
        return "limit" if key == "fit_seconds" else ""
    return fmt.format(result[key])


def render_scale(study: dict) -> str:
    rows = []
    for p in study["points"]:
        numpy_r, spark_r = p["engines"].get("numpy", {}), p["engines"].get("spark", {})
        rows.append([p["axis"], f"{p['users']:,}", f"{p['jokes']:,}", f"{p['train_ratings']:,}",
                     _cell(numpy_r, "fit_seconds", "{:.2f}") + (f" ({numpy_r['path']})" if numpy_r.get("path") else ""),
                     _cell(numpy_r, "peak_rss_mb", "{:,.0f}"),
                     _cell(spark_r, "fit_seconds", "{:.2f}"), _cell(spark_r, "peak_rss_mb", "{:,.0f}"),
                     _cell(numpy_r, "rmse", "{:.4f}"), _cell(spark_r, "rmse", "{:.4f}")])
    limits = [f"- {p['axis']} axis, {p['users']:,} x {p['jokes']:,}, {engine}: {r['limit']}"
              for p in study["points"] for engine, r in p["engines"].items()
              if not r.get("completed") and not r.get("skipped")]
    params = study["params"]
    lines = ["# jester-als scale", "",
             f"Rank {params['rank']}, regParam {params['regParam']}, {params['maxIter']} iterations; "
             f"{study['machine']['cpus']} CPUs, {study['machine']['memory_gb']:.0f} GB; budgets "
             f"{study['budgets']['time_seconds']:,} s and {study['budgets']['memory_mb']:,} MB per fit; "
             f"{study['when']}. Fit time is the median of repeats where a fit is cheap; peak memory is the "
             f"resident set of the whole worker process tree (the driver for NumPy; driver and executor, one "
             f"JVM, for Spark local mode).", "",
             table(["axis", "users", "jokes", "train ratings", "NumPy fit (s)", "NumPy peak (MB)",
                    "Spark fit (s)", "Spark peak (MB)", "NumPy RMSE", "Spark RMSE"], rows), ""]
    if limits:
        lines += ["Limits reached:", *limits, ""]
    for axis in ("users", "jokes"):
        cross = crossover(study["points"], axis)
        lines.append(f"Crossover on the {axis} axis: " + (
            f"at {cross['train_ratings']:,} training ratings ({cross['users']:,} x {cross['jokes']:,}): "
            f"{cross['why']}." if cross else "none within the measured range: NumPy ALS on one machine was "
                                             "faster at every size both engines completed."))
    for engine in ENGINES:
        limit = single_machine_limit(study, engine)
        if limit:
            lines.append(f"{'NumPy' if engine == 'numpy' else 'Spark local mode'} runs out of this machine's "
                         f"{limit['memory_gb']:.0f} GB at about {limit['users'] / 1e6:.1f} M Jester-like users "
                         f"({limit['train_ratings'] / 1e6:,.0f} M training ratings), by the memory model below.")
    lines += ["", "## Cost model", ""]
    model = study["cost_model"]
    for engine, entry in model["engines"].items():
        if not entry.get("fitted"):
            lines.append(f"- {engine}: not fitted ({entry['reason']})")
            continue
        t, m = entry["time"]["coefficients"], entry["memory"]["coefficients"]
        dense = f" + {m[3]:.3g} x users x jokes [dense path]" if len(m) > 3 else ""
        dense_t = f" + {t[3]:.3g} x users x jokes k^2 [dense path]" if len(t) > 3 else ""
        time_error = entry["time"]["max_relative_error_on_fitted"]
        lines.append(f"- {engine}: seconds per iteration = {t[0]:.3g} + {t[1]:.3g} x nnz k^2 + {t[2]:.3g} x "
                     f"(users + jokes) k^3{dense_t} (fitted points within {time_error:.0%});"
                     f" peak MB = {m[0]:.3g} + {m[1]:.3g} x nnz + {m[2]:.3g} x (users + jokes) k{dense} (within "
                     f"{entry['memory']['max_relative_error_on_fitted']:.0%})")
        if "holdout" in entry:
            h = entry["holdout"]
            lines.append(f"  - check on a point not used to fit ({h['train_ratings']:,} ratings): predicted "
                         f"{h['predicted_seconds']:.1f} s / {h['predicted_memory_mb']:,.0f} MB, measured "
                         f"{h['measured_seconds']:.1f} s / {h['measured_memory_mb']:,.0f} MB")
    lines += ["", "## Predictions", ""]
    prediction_rows = []
    for row in study["predictions"]:
        numpy_p, spark_p = row["engines"].get("numpy"), row["engines"].get("spark")
        cluster = (spark_p or {}).get("cluster")
        numpy_time = f"{numpy_p['seconds']:,.0f} s ({numpy_p['path']})" if numpy_p else ""
        prediction_rows.append([
            row["name"], f"{row['train_ratings']:,.0f}",
            f"{numpy_time}, {numpy_p['memory_mb'] / 1024:,.1f} GB"
            + ("" if numpy_p["fits_one_machine"] else " (does not fit)") if numpy_p else "",
            f"{spark_p['seconds']:,.0f} s, {spark_p['memory_mb'] / 1024:,.1f} GB"
            + ("" if spark_p["fits_one_machine"] else " (does not fit)") if spark_p else "",
            f"{cluster['seconds']:,.0f} s, {cluster['memory_mb_per_executor'] / 1024:,.1f} GB/executor, "
            f"{cluster['shuffle_gb_per_iteration']:,.1f} GB shuffled/iteration" if cluster else ""])
    executors = study["predictions"][0]["engines"].get("spark", {}).get("cluster", {}).get("executors", "N")
    lines += [table(["data set", "train ratings", "NumPy, one machine", "Spark, one machine (local)",
                     f"Spark, cluster of {executors} executors"],
                    prediction_rows), ""]
    return "\n".join(lines)


def plot(study: dict, path: str) -> bool:
    """Fit time and peak memory against training ratings, log scales, one line per engine and axis."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: scale.png skipped (pip install 'jester-als[plot]')")
        return False
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, style in (("users", "-o"), ("jokes", "--s")):
        for engine, color in (("numpy", "tab:blue"), ("spark", "tab:orange")):
            done = [p for p in study["points"] if p["axis"] == axis and p["engines"][engine].get("completed")]
            if not done:
                continue
            x = [p["train_ratings"] for p in done]
            label = f"{'NumPy' if engine == 'numpy' else 'Spark'} ({axis} axis)"
            ax_time.plot(x, [p["engines"][engine]["fit_seconds"] for p in done], style, color=color, label=label)
            ax_mem.plot(x, [p["engines"][engine]["peak_rss_mb"] for p in done], style, color=color, label=label)
        cross = crossover(study["points"], axis)
        if cross:
            for ax in (ax_time, ax_mem):
                ax.axvline(cross["train_ratings"], color="gray", linestyle=":", label=f"crossover ({axis})")
    limit = single_machine_limit(study, "numpy")
    if limit:
        for ax in (ax_time, ax_mem):
            ax.axvline(limit["train_ratings"], color="red", linestyle=":",
                       label=f"NumPy outgrows {limit['memory_gb']:.0f} GB (model)")
        ax_mem.axhline(limit["memory_gb"] * 1024, color="red", linestyle="--", linewidth=0.8,
                       label="machine memory")
    for ax, ylabel in ((ax_time, "fit time (s)"), (ax_mem, "peak resident memory (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training ratings")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("jester-als: NumPy ALS on the driver vs Spark ALS (local mode)")
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True
