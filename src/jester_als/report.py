"""``report.md``: the results in ``metrics.json`` as a person reads them."""

from __future__ import annotations

import math


def figure(value, digits: int = 4) -> str:
    """A figure as the report and the job's log print it: floats to ``digits`` decimals, ints with separators."""
    # a figure that could not be computed reads as metrics.json holds it (null), not as nan
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _params(params: dict | None) -> str:
    if not params:
        return "n/a"
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _config_name(path: str | None) -> str:
    """The run's config file, or what a run without ``--conf`` read."""
    return f"`{path}`" if path else "the built-in defaults (`conf/local.yaml`'s)"


def render_report(metrics: dict) -> str:
    out = ["# jester-als report", ""]
    run = metrics.get("run", {})
    if run:
        out += [
            f"Run {run.get('run_id', '')} of `{run.get('job', '')}`, finished {run.get('finished', '')}, "
            f"config {_config_name(run.get('config_file'))}.",
            "",
        ]
    data = metrics.get("data")
    if data:
        out += [
            "## Data",
            "",
            table(
                ["users", "jokes", "ratings", "train", "test", "rejected cells", "missing cells"],
                [
                    [
                        figure(data.get("users")),
                        figure(data.get("items")),
                        figure(data.get("ratings")),
                        figure(data.get("train_ratings")),
                        figure(data.get("test_ratings")),
                        figure(data.get("rejected")),
                        figure(data.get("missing")),
                    ]
                ],
            ),
            "",
        ]
        by_reason = (data.get("cells") or {}).get("rejected") or {}
        if by_reason:
            out += [
                "Refused cells by reason: "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(by_reason.items()))
                + " (see `rejected/`).",
                "",
            ]
    spark = metrics.get("spark_als")
    comparison = engine_rows(metrics)
    if comparison:
        out += [
            "## Engines on the same held-out ratings",
            "",
            table(
                [
                    "engine",
                    "params",
                    "collect (s)",
                    "fit (s)",
                    "collect + fit (s)",
                    "test RMSE",
                    "test MAE",
                    "test NMAE",
                    "rows scored",
                ],
                comparison,
            ),
            "",
        ]
        out += comparison_notes(metrics) + [""]
    elif spark and "test_rmse" in spark:
        out += [
            "## Spark ALS on the test ratings",
            "",
            table(
                ["params", "fit (s)", "test RMSE", "test MAE", "rows scored"],
                [
                    [
                        _params(spark.get("model_params")),
                        figure(spark.get("fit_seconds"), 2),
                        figure(spark["test_rmse"]),
                        figure(spark.get("test_mae")),
                        figure(spark.get("test_rows_scored")),
                    ]
                ],
            ),
            "",
        ]
    if metrics.get("als_engine"):
        fallback = metrics["numpy_als"]
        out += [
            f"## {metrics['als_engine']}",
            "",
            f"Spark refused ALS ({fallback['fallback_reason']}); the same grid was tuned with NumPy ALS on the driver.",
            "",
            table(
                ["params", "fit (s)", "test RMSE", "test MAE", "rows scored"],
                [
                    [
                        _params(fallback["params"]),
                        figure(fallback["fit_seconds"], 2),
                        figure(fallback["test_rmse"]),
                        figure(fallback["test_mae"]),
                        figure(fallback["test_rows_scored"]),
                    ]
                ],
            ),
            "",
            table(
                ["params", "validation RMSE"],
                [[_params(p["params"]), figure(p["validation_rmse"])] for p in fallback["validation"]],
            ),
            "",
        ]
    if spark and spark.get("validation"):
        out += [
            "## Tuning grid",
            "",
            f"{len(spark['validation'])} grid points in {figure(spark.get('tune_seconds'), 1)} s by "
            f"{spark.get('tune_method', 'TrainValidationSplit')} (validation RMSE on a "
            f"{figure(spark.get('train_ratio'), 2)} train ratio of the training ratings).",
            "",
            grid_table(spark),
            "",
        ]
        out += tuning_notes(spark)
        out += ranking_section(metrics)
    out += new_users_section(metrics)
    out += foldin_section(metrics)
    out += timing_section(metrics)
    recs = metrics.get("recommendations")
    if recs:
        out += [
            "## Recommendations",
            "",
            f"Top {recs['top_n']} unrated jokes for {figure(recs['users'])} users in `recommendations/`; "
            f"{figure(recs.get('users_without'))} users rated every joke and get none. Catalogue coverage: "
            f"{figure(recs.get('jokes_recommended'))} distinct jokes recommended "
            f"({figure(recs.get('catalogue_coverage'), 3)} of the jokes with ratings).",
            "",
        ]
    out += plots_section(metrics.get("plots"))
    return "\n".join(out)


def new_users_section(metrics: dict) -> list[str]:
    """How fold-in does for users held out whole, against popularity and a full refit, per revealed ratings."""
    new = metrics.get("new_users")
    if not new:
        return []
    heading = "## New users: how many ratings a new user needs"
    if "skipped" in new:
        return [heading, "", f"Not scored: {new['skipped']}.", ""]
    k = new["k"]
    rows = []
    scenarios = [(f"the {len(new['gauge_jokes'])} gauge jokes", new.get("gauge"))]
    scenarios += [(f"{n} random", entry) for n, entry in new.get("random", {}).items()]
    for label, entry in scenarios:
        if not entry:
            continue
        cells = [label, figure(entry["users"]), f"{entry['revealed_per_user']:.1f}"]
        for predictor in ("model", "popularity", "refit"):
            cells += [
                figure(entry[predictor]["rmse"]),
                figure(entry[predictor]["nmae"]),
                figure(entry[predictor]["ndcg_at_k"]),
            ]
        rows.append(cells)
    header = ["revealed", "users", "ratings shown"] + [
        f"{who} {what}" for who in ("fold-in", "popularity", "refit") for what in ("RMSE", "NMAE", f"NDCG@{k}")
    ]
    serve = new.get("serve_seconds") or {}
    seconds = new["seconds"]
    lines = [
        heading,
        "",
        f"{figure(new['users'])} users held out whole (not in the model, fitted on "
        f"{figure(new['fitted_on_users'])} other users' training ratings with the chosen params); each shows k of "
        f"its ratings, is folded in from them without a refit, and its other ratings are scored. Popularity: "
        f"each joke's mean rating among the other users; refit: the model fitted again with the shown ratings "
        f"(what fold-in approximates). Relevant: rating >= {new['relevance_threshold']}.",
        "",
        table(header, rows),
        "",
        beats_sentence(new),
        "",
    ]
    if "gauge_skipped" in new:
        lines += [f"The gauge jokes are not scored: {new['gauge_skipped']}.", ""]
    if serve:
        lines += [
            "Fold-in on the driver (input in memory, median of 5): "
            + ", ".join(f"{int(n):,} user(s) at once {s:.4f} s" for n, s in serve.items())
            + f". The evaluation took {seconds['total']:.1f} s ({seconds['refits']:.1f} s of it the refits).",
            "",
        ]
    return lines


def beats_sentence(new: dict) -> str:
    """From how many random shown ratings on fold-in beats popularity (RMSE, NDCG) and how the refit compares,
    read off the run."""
    shown = sorted(new.get("random", {}), key=int)

    def first(better) -> str:
        wins = [n for n in shown if better(new["random"][n])]
        if not wins:
            return "at none of the counts tried"
        tail = shown[shown.index(wins[0]) :]
        return (
            f"from {wins[0]} shown rating(s) on"
            if all(n in wins for n in tail)
            else f"at {', '.join(wins)} shown rating(s)"
        )

    def lower(entry: dict, better: str, worse: str, what: str = "rmse") -> bool:
        # a count at which no held-out user had a rating left to score has no figures: it wins nothing
        ours, theirs = entry[better][what], entry[worse][what]
        return ours is not None and theirs is not None and ours < theirs

    rmse = first(lambda e: lower(e, "model", "popularity"))
    ndcg = first(lambda e: lower(e, "popularity", "model", "ndcg_at_k"))
    refit_better = [n for n in shown if lower(new["random"][n], "refit", "model")]
    return (
        f"Fold-in beats popularity's RMSE {rmse} and its NDCG@{new['k']} {ndcg}; the full refit's RMSE is lower "
        f"than fold-in's at {len(refit_better)} of {len(shown)} random counts."
    )


def foldin_section(metrics: dict) -> list[str]:
    """What the foldin job did with the new users' ratings."""
    fold = metrics.get("foldin")
    if not fold:
        return []
    refused = fold["cells"]["rejected"]
    return [
        "## New users folded in",
        "",
        f"{figure(fold['users'])} of the {figure(fold['users'] + fold['users_without_ratings'])} new users in "
        f"{fold['source']} ({figure(fold['ratings'])} ratings of jokes the model "
        f"knows) folded into the saved model ({fold['engine']}; {'biased, ' if fold['biased'] else ''}regParam "
        f"{fold['reg_param']}) and recommended their top {fold['top_n']} unrated jokes in "
        f"`new_user_recommendations/` ({figure(fold['recommended_users'])} users). "
        f"{figure(fold['known_users'])} were already in the model (folded in anew from these ratings; the model is "
        f"not changed); the other {figure(fold['users_without_ratings'])} had no rating of a known joke. "
        "Refused cells: "
        + (", ".join(f"{k} {v:,}" for k, v in sorted(refused.items())) if refused else "none")
        + " (`new_user_rejected/`).",
        "",
    ]


def timing_section(metrics: dict) -> list[str]:
    """Where the run's time went: its steps, and prepare's own parts against a plain scan of the same input."""
    steps = metrics.get("steps_seconds") or {}
    timing = (metrics.get("data") or {}).get("timing_seconds") or {}
    if not steps and not timing:
        return []
    out = ["## Where the time went", ""]
    if steps:
        out += [table(list(steps), [[f"{v:.1f} s" for v in steps.values()]]), ""]
        machine = (metrics.get("run") or {}).get("machine") or {}
        loads = machine.get("load_average_1min") or []
        if machine.get("cpus") and len(loads) == 2 and None not in loads:
            out += [
                f"On {machine['cpus']} cores; the machine's 1-minute load average was {loads[0]:.2f} when the job "
                f"started and {loads[1]:.2f} when it ended (a job in local mode keeps up to {machine['cpus']} of "
                "them busy).",
                "",
            ]
    if timing:
        one_pass = (metrics.get("data") or {}).get("one_pass")
        line = f"prepare: {timing['prepare']:.1f} s (" + (
            "in one pass: reading, classifying, counting and writing the ratings and the refused cells"
            + one_pass_parts(timing.get("one_pass_parts"))
            + ")."
            if one_pass
            else f"read, classify and count {timing['read_and_count']:.1f} s, write {timing['write']:.1f} s)."
        )
        if "reference_scan" in timing:
            line += (
                f" A plain read-melt-write of the same input, without checks or counts: "
                f"{timing['reference_scan_first']:.1f} s as the session's first job, "
                f"{timing['reference_scan']:.1f} s repeated after prepare; prepare took {timing['ratio']:.1f}x "
                "the repeated scan. The repeated scan runs code the session has already compiled; prepare's own "
                "(Spark's generated classes, and the JIT's compilation of them) is compiled while it runs, which on "
                "a few cores takes time from its tasks. `python -m jester_als.prepare_speed` compares like with like "
                "(each as a fresh session's first job, and warm) and takes the job's reading again on a larger table."
            )
        out += [line, ""]
    tune = (metrics.get("spark_als") or {}).get("timing_seconds")
    if tune:
        out += ["tune: " + timed_parts(tune, TUNE_PARTS) + ".", ""]
    return out


# What a person reads for the parts the jobs time (``spark_als.timing_seconds``, ``one_pass_parts``).
TUNE_PARTS = {
    "split": "split and count",
    "folds_and_offsets": "tuning folds and their offsets (made and released)",
    "grid": "grid points",
    "refit": "final fit",
    "evaluate": "test metrics",
    "save": "model saved",
}
ONE_PASS_PARTS = {
    "pass": "the pass",
    "written_counts": "the written ratings counted (their number, sums, hash and jokes)",
    "unique_users": "the check for repeated user ids",
    "refused": "the sentinels and refused cells (a second pass only when some cells need parsing)",
}


def timed_parts(parts: dict, names: dict) -> str:
    """``name 1.2 s, other 3.4 s`` for a job's timed parts, in the order they were recorded."""
    return ", ".join(f"{names.get(part, part)} {seconds:.1f} s" for part, seconds in parts.items())


def one_pass_parts(parts: dict | None) -> str:
    """``; of which ...`` for the parts of prepare's one pass, or nothing for a run that did not record them."""
    return "; of which " + timed_parts(parts, ONE_PASS_PARTS) if parts else ""


def points_timed(spark: dict) -> bool:
    """Whether the job's own loop timed every grid point (Spark's TrainValidationSplit does not say)."""
    points = spark.get("validation") or []
    return bool(points) and all("seconds" in p for p in points)


def grid_table(spark: dict) -> str:
    """Every grid point's validation RMSE, the best one marked, and what it took to fit and score where the job's
    loop timed it (Spark's TrainValidationSplit does not say)."""
    timed = points_timed(spark)
    rows = [
        [
            _params(p["params"]),
            figure(p["validation_rmse"]),
            *([figure(p["seconds"], 1)] if timed else []),
            "best" if all(spark["best_params"].get(k) == v for k, v in p["params"].items()) else "",
        ]
        for p in spark["validation"]
    ]
    header = ["params", "validation RMSE", *(["seconds to fit and score"] if timed else []), ""]
    return table(header, rows)


def tuning_notes(spark: dict) -> list[str]:
    """Where the chosen point sits in the grid, how regParam was scaled, and the time of each wave."""
    notes = []
    for edge in spark.get("grid_edges") or []:
        notes.append(
            f"The chosen {edge['param']} ({edge['value']}) is the {edge['edge']} value the grid tried "
            f"({', '.join(map(str, edge['tried']))}): the best value may lie "
            f"{'above' if edge['edge'] == 'largest' else 'below'} it; widen the grid to find out."
        )
    factor = spark.get("reg_param_factor")
    if factor not in (None, 1.0):
        notes.append(f"regParam values were scaled by {factor:g} to the rating scale (`tune.scale_reg_param`).")
    waves = spark.get("tune_waves_seconds")
    if waves:
        notes.append(
            f"Tuning ran in {len(waves)} wave(s) of parallel grid points: {', '.join(f'{w:.1f}' for w in waves)} s."
            + (
                " A point's seconds are wall time on cores it shared with the other points of its wave; the first "
                "wave (the costliest points start first) also pays the session's warm-up."
                if points_timed(spark)
                else ""
            )
        )
    return [note for item in notes for note in (item, "")]


PLOT_CAPTIONS = {
    "tuning": "Validation RMSE over the tuning grid (rank x regParam; one panel per other grid parameter; the "
    "chosen point outlined)",
    "engines": "Engines and baselines on the same held-out ratings: test RMSE and fit time",
    "errors": "Held-out errors of the chosen model, NumPy ALS and the bias baseline on the same rows",
    "new_users": "New users held out whole: error of the rest of their ratings against the ratings they showed",
}


def plots_section(plots: dict | None) -> list[str]:
    if not plots:
        return []
    if "skipped" in plots:
        return ["## Plots", "", f"Plots skipped: {plots['skipped']}.", ""]
    out = ["## Plots", ""]
    for name, path in plots.items():
        out += [f"![{PLOT_CAPTIONS.get(name, name)}]({path})", "", f"*{PLOT_CAPTIONS.get(name, name)}.*", ""]
    return out


def ranking_section(metrics: dict) -> list[str]:
    """The model's ranking metrics beside rankings without a model, on the same users and held-out jokes."""
    spark = metrics.get("spark_als") or {}
    ranking = spark.get("ranking") or {}
    k = ranking.get("k")
    if not k:
        return []
    references = metrics.get("references") or {}
    keys = ("precision_at_k", "recall_at_k", "map_at_k", "ndcg_at_k")
    rows = [["Spark ALS (chosen model)", *(figure(ranking.get(key)) for key in keys), figure(ranking.get("users"))]]
    for name, label in (("popularity", "joke popularity (mean training rating)"), ("random", "random order")):
        if references.get(name):
            rows.append(
                [label, *(figure(references[name].get(key)) for key in keys), figure(references[name]["users"])]
            )
    return [
        f"Ranking each user's held-out jokes (relevant: rating >= {ranking.get('relevance_threshold')}; "
        f"Spark's RankingMetrics definitions), against rankings that use no model:",
        "",
        table(["ranking", f"precision@{k}", f"recall@{k}", f"MAP@{k}", f"NDCG@{k}", "users"], rows),
        "",
    ]


def engine_rows(metrics: dict) -> list[list]:
    """One row per engine, all scored on the same held-out rows of the collected sample."""
    spark, numpy_als, baselines = metrics.get("spark_als"), metrics.get("numpy_als"), metrics.get("baselines")
    if not (spark and numpy_als and baselines):
        return []
    rows_scored = figure(numpy_als["rows"])
    collect, fit = numpy_als["collect_seconds"], numpy_als["fit_seconds"]
    return [
        [
            "Spark ALS",
            _params(spark.get("model_params")),
            "",
            figure(spark.get("fit_seconds"), 2),
            figure(spark.get("fit_seconds"), 2),
            figure(numpy_als["spark_test_rmse_same_rows"]),
            figure(numpy_als.get("spark_test_mae_same_rows")),
            figure(_nmae(numpy_als.get("spark_test_mae_same_rows"), metrics)),
            rows_scored,
        ],
        [
            "NumPy ALS (driver)",
            _params(numpy_als["params"]),
            figure(collect, 2),
            figure(fit, 2),
            figure(collect + fit, 2),
            figure(numpy_als["test_rmse"]),
            figure(numpy_als["test_mae"]),
            figure(numpy_als.get("test_nmae")),
            rows_scored,
        ],
        [
            "user + joke bias",
            f"reg={baselines['bias']['reg']}",
            "same sample",
            figure(baselines["bias"]["fit_seconds"], 2),
            "",
            figure(baselines["bias"]["test_rmse"]),
            figure(baselines["bias"]["test_mae"]),
            figure(baselines["bias"].get("test_nmae")),
            rows_scored,
        ],
        [
            "global mean",
            f"mean={baselines['global_mean']['value']:.3f}",
            "same sample",
            "0.00",
            "",
            figure(baselines["global_mean"]["test_rmse"]),
            figure(baselines["global_mean"]["test_mae"]),
            figure(baselines["global_mean"].get("test_nmae")),
            rows_scored,
        ],
    ]


def _nmae(mae, metrics: dict):
    """MAE over the span of the rating scale the run clipped to (``spark_als.clipping.range``)."""
    span = ((metrics.get("spark_als") or {}).get("clipping") or {}).get("range")
    return None if mae is None or not span else mae / (span[1] - span[0])


def against_bias(spark_rmse: float, bias_rmse: float) -> list[str]:
    """Whether the chosen model's factors earn their keep: its RMSE against the user + joke bias baseline's on the
    same rows, said plainly either way."""
    if spark_rmse < bias_rmse:
        return [
            f"On these rows the chosen Spark ALS model's RMSE is {bias_rmse - spark_rmse:.4f} below the user + joke "
            f"bias baseline's ({spark_rmse:.4f} against {bias_rmse:.4f}).",
            "",
        ]
    return [
        f"**The chosen Spark ALS model does not beat the user + joke bias baseline on these rows** (RMSE "
        f"{spark_rmse:.4f} against {bias_rmse:.4f}): on this data its factors add error to what the offsets "
        "alone predict. A wider grid may find a model that does (a larger regParam, a smaller rank; the "
        "tuning section below names a chosen value on the grid's edge); until then the bias baseline is the "
        "better predictor.",
        "",
    ]


def comparison_notes(metrics: dict) -> list[str]:
    spark, numpy_als = metrics.get("spark_als"), metrics.get("numpy_als")
    if not (spark and numpy_als):
        return []
    memory = numpy_als["memory"]
    return [
        f"Same rows: the held-out ratings of {figure(numpy_als['sample_users'])} sampled users that every engine "
        f"can score. Spark ALS was fitted on all {figure(metrics.get('data', {}).get('train_ratings'))} training "
        f"ratings; NumPy ALS and the baselines on the sample's {figure(numpy_als['sample_train_ratings'])}. "
        f"On all {figure(spark.get('test_rows_scored'))} test ratings Spark ALS scores RMSE "
        f"{figure(spark.get('test_rmse'))}, MAE {figure(spark.get('test_mae'))}, NMAE {figure(spark.get('test_nmae'))} "
        f"(MAE over the span of the rating scale, as Jester papers report it).",
        "",
        *against_bias(numpy_als["spark_test_rmse_same_rows"], metrics["baselines"]["bias"]["test_rmse"]),
        f"Driver cost of NumPy ALS: collecting the sample took {numpy_als['collect_seconds']:.1f} s and the fit "
        f"{numpy_als['fit_seconds']:.2f} s; the driver process peaked at {memory['driver_peak_mb']:,.0f} MB "
        f"({memory['driver_growth_mb']:,.0f} MB above where it started) while the collected sample takes "
        f"{memory['collected_mb']:.1f} MB as arrays and the factors {memory['factors_mb']:.2f} MB (the seed "
        f"estimated {memory['seed_estimate_whole_table_mb']} MB for the whole table).",
    ]
