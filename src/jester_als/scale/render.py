"""What the study shows a person: scale.md (tables, limits, the cost model, predictions) and scale.png."""

from __future__ import annotations

import logging

from jester_als.plots import pyplot, save_png
from jester_als.report import table
from jester_als.scale.analysis import completed, crossover, fitted_users, model_rank, uneven, warm_seconds, why_missed
from jester_als.scale.costmodel import ENGINES, cost_points

log = logging.getLogger("jester_als.scale")
AXES = ("users", "density", "jokes")
ENGINE_NAMES = {"numpy": "NumPy", "spark": "Spark local mode"}


def _cell(result: dict, key: str, fmt: str) -> str:
    if not result:
        return ""
    if not result.get("completed"):
        return ("not run" if result.get("skipped") else "limit") if key == "fit_seconds" else ""
    return fmt.format(result[key])


def conclusion(study: dict, compared: bool, spark_faster_somewhere: bool) -> str:
    """The answer's last sentence, from what the run showed: which engine was faster, and which held more."""
    if not compared:
        return "No size completed on both engines, so the study cannot say which is faster."
    numpy_users, spark_users = fitted_users(study, "numpy"), fitted_users(study, "spark")
    if spark_faster_somewhere:
        return "Spark local mode was faster at some sizes, so Spark is worth it on one machine there already."
    if numpy_users and spark_users and numpy_users < spark_users:
        return (
            f"Spark local mode held more users than NumPy ({spark_users / 1e6:,.2f} M against "
            f"{numpy_users / 1e6:,.2f} M): past NumPy's limit Spark is necessary even on one machine."
        )
    if numpy_users:
        return (
            f"So on one machine NumPy is faster and holds at least as many users as Spark local mode; Spark "
            f"becomes necessary past what NumPy holds ({numpy_users / 1e6:,.2f} M Jester-like users fitted "
            f"here), on a cluster: not for speed, but to spread the ratings and factors over several "
            f"machines' memory."
        )
    return "NumPy was faster at every size both completed; its limit was not measured."


def answer(study: dict) -> str:
    """The question's answer in a few sentences, every figure and every conclusion taken from the study."""
    both = [p for p in study["points"] if all(completed(p["engines"].get(e, {})) for e in ENGINES)]
    said = []
    faster = []
    if both:
        ratios, estimated = [], False
        for p in both:
            (spark, s_est), (numpy_s, n_est) = warm_seconds(study, p, "spark"), warm_seconds(study, p, "numpy")
            ratios.append((spark / numpy_s, p))
            estimated |= s_est or n_est
        low, high = min(ratios, key=lambda r: r[0]), max(ratios, key=lambda r: r[0])
        where = lambda r: f"{r[1]['users']:,} x {r[1]['jokes']:,}, {r[1]['train_ratings'] / 1e6:,.1f} M ratings"
        faster = [r for r in ratios if r[0] < 1]
        said.append(
            (
                "NumPy ALS on the driver fitted faster than Spark in local mode at every size both completed "
                if not faster
                else f"Spark in local mode fitted faster than NumPy at {len(faster)} of the "
                f"{len(ratios)} sizes both completed; elsewhere NumPy was faster "
            )
            + f"(Spark took {low[0]:.1f}x NumPy's time at {where(low)}, {high[0]:.1f}x at {where(high)}"
            + (
                "; sizes fitted once are counted without the first fit's extra cost that the repeated sizes show"
                if estimated
                else ""
            )
            + ")."
        )
    top_jokes = max((p for p in both if p["axis"] == "jokes"), key=lambda p: p["jokes"], default=None)
    if top_jokes:
        n = top_jokes["engines"]["numpy"]
        (n_s, _), (s_s, _) = warm_seconds(study, top_jokes, "numpy"), warm_seconds(study, top_jokes, "spark")
        said.append(
            f"With many items ({top_jokes['users']:,} users x {top_jokes['jokes']:,} jokes, "
            f"{top_jokes['train_ratings'] / 1e6:,.1f} M ratings, NumPy on its {n.get('path', '')} path) the "
            f"lead is {s_s / n_s:.1f}x ({n_s:,.1f} s against {s_s:,.1f} s)."
        )
    for engine in ENGINES:
        limit = study.get("limits", {}).get(engine) or {}
        largest, first = limit.get("largest_fitted"), limit.get("first_not_fitted")
        if largest:
            per_rating = largest["peak_mb"] * 2**20 / largest["train_ratings"]
            probe = (
                f", {largest['probe_iterations']} iterations of a limit probe"
                if largest.get("probe_iterations")
                else ""
            )
            said.append(
                f"{ENGINE_NAMES[engine]} fitted up to {largest['users'] / 1e6:,.2f} M Jester-like users "
                f"({largest['train_ratings'] / 1e6:,.0f} M training ratings{probe}, peak "
                f"{largest['peak_mb'] / 1024:,.1f} GB, {per_rating:,.0f} bytes a rating)"
                + (
                    f" and not at {first['users'] / 1e6:,.2f} M ({first['why'].split(':')[0]})"
                    if first
                    else ", the largest size tried"
                )
                + "."
            )
        held = limit.get("in_memory") or {}
        if held.get("largest_held") and held.get("first_on_disk"):
            kept, disk = held["largest_held"], held["first_on_disk"]
            said.append(
                f"Its heap held all it cached up to {kept['users'] / 1e6:,.2f} M users; at "
                f"{disk['users'] / 1e6:,.2f} M {disk['disk_mb']:,.0f} MB of its cached blocks were on disk "
                f"and it still fitted."
            )
        fills = (held.get("storage_model") or {}).get("fills_at")
        if fills:
            between = largest and first and largest["users"] < fills["users"] < first["users"]
            said.append(
                f"By its own figures its cached blocks fill the unified memory of its "
                f"{held['storage_model']['heap']} heap at about {fills['users'] / 1e6:,.2f} M users"
                + (", between the two" if between else "")
                + "."
            )
    predicted = (study.get("limits", {}).get("numpy") or {}).get("predicted")
    if predicted:
        said.append(
            f"By NumPy's memory model the budget of {predicted['memory_mb'] / 1024:,.1f} GB is reached at "
            f"about {predicted['users'] / 1e6:,.1f} M users ({predicted['train_ratings'] / 1e6:,.0f} M "
            f"ratings)."
        )
    said.append(conclusion(study, bool(both), bool(faster)))
    return " ".join(said) if said else "Too few sizes completed to answer."


def cluster_lines(cluster: dict | None) -> list[str]:
    """The standalone-cluster measurements and the cluster model fitted to them."""
    if not cluster:
        return []
    # studies before one application per executor count ran a 6- and a 2-iteration fit
    iterations = cluster.get("iterations") or {"short": 2, "long": 6}
    short, long = iterations["short"], iterations["long"]
    lines = [
        "",
        "## Measured on a standalone cluster",
        "",
        "Spark ALS on the project's standalone cluster (one worker on this machine) with one-core executors "
        "and as many ALS blocks, one application per executor count fitting the sizes smallest first; "
        f"Spark's REST API gives the shuffle bytes written per iteration (a {long}-iteration fit less a "
        f"{short}-iteration fit, over {long - short}) and each executor's peak memory during a size's stages "
        "(its process tree's resident set, which keeps what a smaller size grew). Wall-clock speed-up is not "
        "measured: the executors share this machine's cores.",
        "",
    ]
    rows = []
    for m in cluster["measurements"]:
        rows.append(
            [
                f"{m['users']:,}",
                f"{m['train_ratings']:,}",
                str(m["executors"]),
                f"{m['shuffle_bytes_per_iteration'] / 2**20:,.1f}"
                if "shuffle_bytes_per_iteration" in m
                else m.get("limit", ""),
                f"{m['executor_peak_mb']:,.0f}" if "executor_peak_mb" in m else "",
            ]
        )
    lines += [table(["users", "train ratings", "executors", "shuffle MB / iteration", "executor peak MB"], rows), ""]
    model = cluster["model"]
    if not model.get("fitted"):
        return lines + [f"Cluster model not fitted: {model['reason']}."]
    memory = model["executor_memory_mb"]
    lines.append(
        f"Cluster model (fitted on {', '.join(f'{n:,}' for n in model['sizes_used'])} training ratings): "
        f"shuffle per iteration = {model['shuffle_factor']:.2f} x the partitioning rule's factor copies "
        f"(k float32s each); executor peak MB = {memory['fixed']:,.0f} + {memory['per_rating'] * 1e6:,.1f} "
        f"x million training ratings per executor. Checks on the largest size, left out:"
    )
    for c in model["checks"]:
        lines.append(
            f"- {c['executors']} executor(s), {c['train_ratings']:,} ratings: shuffle predicted "
            f"{c['predicted_shuffle_bytes'] / 2**20:,.1f} MB, measured "
            f"{c['measured_shuffle_bytes'] / 2**20:,.1f} MB "
            f"({c['shuffle_error']:+.0%}); executor memory predicted {c['predicted_executor_mb']:,.0f} MB, "
            f"measured {c['measured_executor_mb']:,.0f} MB ({c['memory_error']:+.0%}): "
            + ("within target" if c["within_target"] else "MISSES the target" + uneven(cluster, c))
        )
    return lines


def render_scale(study: dict) -> str:
    """scale.md: the answer, the measurements, the single-machine limits, the cost model and the predictions."""
    lines = _measurement_lines(study) + _limit_lines(study) + _cost_model_lines(study) + _prediction_lines(study)
    return "\n".join(lines)


def _measurement_lines(study: dict) -> list[str]:
    rows = []
    for p in study["points"]:
        numpy_r, spark_r = p["engines"].get("numpy", {}), p["engines"].get("spark", {})
        axis = p["axis"] + (f" (limit probe, {p['iterations']} iterations)" if "probe" in p else "")
        rows.append(
            [
                axis,
                f"{p['users']:,}",
                f"{p['jokes']:,}",
                f"{p['train_ratings']:,}",
                _cell(numpy_r, "fit_seconds", "{:.2f}") + (f" ({numpy_r['path']})" if numpy_r.get("path") else ""),
                _cell(numpy_r, "peak_rss_mb", "{:,.0f}"),
                _cell(spark_r, "fit_seconds", "{:.2f}"),
                _cell(spark_r, "peak_rss_mb", "{:,.0f}"),
                _cell(numpy_r, "rmse", "{:.4f}"),
                _cell(spark_r, "rmse", "{:.4f}"),
            ]
        )
    limits = [
        f"- {p['axis']} axis, {p['users']:,} x {p['jokes']:,}, {engine}: {r['limit']}"
        for p in study["points"]
        for engine, r in p["engines"].items()
        if not r.get("completed") and not r.get("skipped")
    ]
    params = study["params"]
    minutes = f" The study took {study['study_minutes']:.1f} minutes." if "study_minutes" in study else ""
    lines = [
        "# jester-als scale",
        "",
        "## The answer",
        "",
        answer(study),
        "",
        "## Measurements",
        "",
        f"Rank {params['rank']}, regParam {params['regParam']}, {params['maxIter']} iterations; "
        f"{study['machine']['cpus']} CPUs, {study['machine']['memory_gb']:.0f} GB; budgets "
        f"{study['budgets']['time_seconds']:,} s and {study['budgets']['memory_mb']:,} MB per fit; "
        f"{study['when']}. Fit time is the median of repeats where a fit is cheap; peak memory is the "
        f"resident set of the whole worker process tree (the driver for NumPy; driver and executor, one "
        f"JVM, for Spark local mode).{minutes}",
        "",
        table(
            [
                "axis",
                "users",
                "jokes",
                "train ratings",
                "NumPy fit (s)",
                "NumPy peak (MB)",
                "Spark fit (s)",
                "Spark peak (MB)",
                "NumPy RMSE",
                "Spark RMSE",
            ],
            rows,
        ),
        "",
    ]
    if limits:
        lines += ["Limits reached:", *limits, ""]
    for axis in AXES:
        cross = crossover(study["points"], axis)
        lines.append(
            f"Crossover on the {axis} axis: "
            + (
                f"at {cross['train_ratings']:,} training ratings ({cross['users']:,} x {cross['jokes']:,}): "
                f"{cross['why']}."
                if cross
                else "none within the measured range: NumPy ALS on one machine was "
                "faster at every size both engines completed."
            )
        )
    return lines


def _limit_lines(study: dict) -> list[str]:
    lines = [
        "",
        "## Single-machine limits",
        "",
        f"Along the users axis (100 jokes), against the study's memory budget of "
        f"{study['budgets']['memory_mb']:,} MB (Spark's heap: {study['budgets']['spark_driver_memory']}):",
        "",
    ]
    for engine in ENGINES:
        lines.append(f"- {ENGINE_NAMES[engine]}: " + "; ".join(_limit_said(study["limits"].get(engine) or {})) + ".")
    return lines


def _limit_said(limit: dict) -> list[str]:
    """What one engine's limits say, clause by clause."""
    largest, first, predicted = limit.get("largest_fitted"), limit.get("first_not_fitted"), limit.get("predicted")
    said = [
        f"largest measured to fit {largest['users']:,} users ({largest['train_ratings']:,} ratings, peak "
        f"{largest['peak_mb']:,.0f} MB)"
        if largest
        else "no size fitted"
    ]
    said.append(
        f"{first['users']:,} users did not ({first['why']})"
        if first
        else "every size on the axis fitted, so the measured limit lies beyond it"
    )
    held = limit.get("in_memory")
    if held:
        kept, disk = held["largest_held"], held["first_on_disk"]
        said.append(
            (
                f"its heap held every cached block up to {kept['users']:,} users"
                if kept
                else "its heap held the cached blocks at no size"
            )
            + (
                f"; from {disk['users']:,} users {disk['disk_mb']:,.0f} MB of them were on disk and "
                f"{disk['spilled_mb']:,.0f} MB spilled (garbage collection {disk['gc_share']:.0%} of task "
                f"time), so past that its memory is the heap and the cost is disk"
                if disk
                else ", and nothing spilled"
            )
        )
        model = held.get("storage_model")
        if model and model["fills_at"]:
            reported = model.get("unified_memory_from") == "Spark's maxMemory"
            said.append(
                f"Spark's cached blocks grew {model['bytes_per_rating']:.1f} bytes a training rating "
                f"(+ {model['fixed_mb']:,.0f} MB; within {model['max_relative_error']:.0%} of every "
                f"point), so they fill the {model['unified_memory_mb']:,.0f} MB of unified memory of a "
                f"{model['heap']} heap ("
                + ("its block manager's maxMemory" if reported else "(heap - 300 MB) x 0.6")
                + f") at about {model['fills_at']['users'] / 1e6:,.2f} M users "
                f"({model['fills_at']['train_ratings'] / 1e6:,.0f} M ratings), past which its heap cannot "
                f"hold them; its resident memory is the heap's size, not this need"
            )
    if predicted:
        said.append(
            f"the memory model reaches the budget at {predicted['users'] / 1e6:,.2f} M users "
            f"({predicted['train_ratings'] / 1e6:,.0f} M ratings"
            + (f", {predicted['path']} path)" if predicted.get("path") else ")")
        )
    return said


def _cost_model_lines(study: dict) -> list[str]:
    lines = [
        "",
        "## Cost model",
        "",
        f"Seconds per iteration and peak MB as non-negative least-squares fits (relative errors) of the terms "
        f"below (k = rank {model_rank(study)}, rows = users + jokes, dense cells = users x jokes on NumPy's "
        f"dense path); each coefficient +- its standard error (blank: held at zero). Checked on points left "
        f"out of the fit, one above the measured range and one inside it; target: within "
        f"{study['cost_model']['check_target']:.0%}."
        + (
            f" Refitted {study['refit']['when']} from this run's measurements: {study['refit']['why']}."
            if study.get("refit")
            else ""
        ),
        "",
    ]
    for engine in ENGINES:
        entry = study["cost_model"].get(engine, {})
        if not entry.get("fitted"):
            lines.append(f"- {ENGINE_NAMES[engine]}: not fitted ({entry.get('reason', 'no points')})")
            continue
        for target, unit in (("time", "s/iteration"), ("memory", "MB")):
            coefficients = " + ".join(
                f"{c['value']:.3g}"
                + (f" (+-{c['stderr']:.2g})" if c["stderr"] is not None else "")
                + f" x {c['term']}".replace(" x fixed", "")
                for c in entry["coefficients"][target]
            )
            lines.append(
                f"- {ENGINE_NAMES[engine]} {unit} = {coefficients}; fitted points within "
                f"{entry['max_relative_error_on_fitted'][target]:.0%} ({entry['points_used']} points)"
            )
        if not entry["checks"]:
            lines.append(f"  - no held-out check: {entry.get('checks_skipped', '')}")
        for c in entry["checks"]:
            verdict = (
                "within target" if c["within_target"] else ("MISSES the target; why: " + why_missed(study, engine, c))
            )
            lines.append(
                f"  - check {c['role']} the range ({c['axis']} axis, {c['users']:,} x {c['jokes']:,}, "
                f"{c['train_ratings']:,} ratings): predicted {c['predicted_seconds']:,.1f} s / "
                f"{c['predicted_mb']:,.0f} MB, measured {c['measured_seconds']:,.1f} s / "
                f"{c['measured_mb']:,.0f} MB ({c['seconds_error']:+.0%} / {c['mb_error']:+.0%}): {verdict}"
            )
    lines += cluster_lines(study.get("cluster"))
    return lines


def _prediction_lines(study: dict) -> list[str]:
    lines = ["", "## Predictions", ""]
    prediction_rows = []
    reach = lambda one: f", {one['extrapolation']:,.0f}x measured" if one.get("extrapolation", 1) > 1.5 else ""
    for row in study["predictions"]:
        numpy_p, spark_p = row["engines"].get("numpy"), row["engines"].get("spark")
        cluster = (spark_p or {}).get("cluster")
        numpy_time = f"{numpy_p['seconds']:,.0f} s ({numpy_p['path']}{reach(numpy_p)})" if numpy_p else ""
        spark_time = (
            f"{spark_p['seconds']:,.0f} s{' (' + reach(spark_p)[2:] + ')' if reach(spark_p) else ''}" if spark_p else ""
        )
        spark_memory = "heap " if (spark_p or {}).get("resident_mb") is not None else ""
        prediction_rows.append(
            [
                row["name"],
                f"{row['train_ratings']:,.0f}",
                f"{numpy_time}, {numpy_p['memory_mb'] / 1024:,.1f} GB"
                + ("" if numpy_p["fits_one_machine"] else " (does not fit)")
                if numpy_p
                else "",
                f"{spark_time}, {spark_memory}{spark_p['memory_mb'] / 1024:,.1f} GB"
                + ("" if spark_p["fits_one_machine"] else " (does not fit)")
                if spark_p
                else "",
                f"{cluster['seconds']:,.0f} s, {cluster['memory_mb_per_executor'] / 1024:,.1f} GB/executor, "
                f"{cluster['shuffle_gb_per_iteration']:,.1f} GB shuffled/iteration"
                if cluster
                else "",
            ]
        )
    executors = study["predictions"][0]["engines"].get("spark", {}).get("cluster", {}).get("executors", "N")
    heap_rule = any((r["engines"].get("spark") or {}).get("resident_mb") is not None for r in study["predictions"])
    lines += [
        table(
            [
                "data set",
                "train ratings",
                "NumPy, one machine",
                "Spark, one machine (local)",
                f"Spark, cluster of {executors} executors (assumed scaling)",
            ],
            prediction_rows,
        ),
        "",
        "Every figure here is the cost model's, extrapolated from the points measured above; \"Nx "
        'measured" says how many times the most training ratings that engine was timed on, at a size '
        "with at least as many jokes, a prediction reaches. The model's terms are the algorithms' own "
        "costs, but its coefficients were fitted up to that size only: a prediction a few times beyond "
        "it is an estimate of the order of magnitude, and "
        "one many times beyond it (the seed's guess) says which resource runs out first, not how long it "
        "takes. "
        + (
            "Spark's one-machine memory is the heap its cached blocks need (the line through its cached "
            'bytes under "Single-machine limits", turned into a heap by Spark\'s unified-memory rule): its '
            "resident memory is the heap the JVM was given, not what the fit needs. "
            if heap_rule
            else ""
        )
        + "In the "
        "cluster column the time is arithmetic, not measurement: the one-machine model's size-dependent "
        "time divided by the executors (perfect speed-up, no network time). "
        + (
            "Its shuffle volume and memory per executor come from the cluster model fitted to the "
            "standalone-cluster measurements above."
            if (study.get("cluster") or {}).get("model", {}).get("fitted")
            else "Its shuffle volume is the partitioning rule's and its memory one machine's divided by the "
            "executors: nothing of it was measured on a cluster."
        ),
        "",
    ]
    return lines


def _mark_limits(study: dict, ax_time, ax_mem) -> None:
    """Each engine's largest size measured to fit and where its memory model reaches the budget, as vertical
    lines on both plots (labelled once, on the memory plot)."""
    for engine, color in (("numpy", "tab:blue"), ("spark", "tab:orange")):
        limit = study["limits"].get(engine) or {}
        largest, predicted = limit.get("largest_fitted"), limit.get("predicted")
        name = "NumPy" if engine == "numpy" else "Spark"
        for ax in (ax_time, ax_mem):
            if largest:
                ax.axvline(
                    largest["train_ratings"],
                    color=color,
                    linestyle="-",
                    linewidth=2,
                    alpha=0.35,
                    label=f"{name}: largest measured to fit" if ax is ax_mem else None,
                )
            if predicted:
                ax.axvline(
                    predicted["train_ratings"],
                    color=color,
                    linestyle=":",
                    label=f"{name}: model reaches the budget" if ax is ax_mem else None,
                )


def plot(study: dict, path: str) -> bool:
    """Fit time and peak memory against training ratings, log scales, one line per engine and axis."""

    plt = pyplot()
    if plt is None:
        log.warning("matplotlib is not installed: scale.png skipped (pip install 'jester-als[plot]')")
        return False
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, style in zip(AXES, ("-o", ":^", "--s")):
        for engine, color in (("numpy", "tab:blue"), ("spark", "tab:orange")):
            # not the limit probes: their fewer iterations would bend the time line
            done = [p for p in cost_points(study["points"], engine) if p["axis"] == axis]
            if not done:
                continue
            x = [p["train_ratings"] for p in done]
            label = f"{'NumPy' if engine == 'numpy' else 'Spark'} ({axis} axis)"
            ax_time.plot(x, [p["engines"][engine]["fit_seconds"] for p in done], style, color=color, label=label)
            ax_mem.plot(x, [p["engines"][engine]["peak_rss_mb"] for p in done], style, color=color, label=label)
    _mark_limits(study, ax_time, ax_mem)
    ax_mem.axhline(study["budgets"]["memory_mb"], color="red", linestyle="--", linewidth=0.8, label="memory budget")
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
    save_png(fig, path, dpi=110)
    plt.close(fig)
    return True
