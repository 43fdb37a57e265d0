"""The jobs: each takes a SparkSession, the resolved config and the run's outputs, and returns the
``metrics.json`` sections it produced. ``pipeline`` chains them in one session, handing data along in memory.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jester_als import __version__
from jester_als.baseline import compare_engines, sample_users
from jester_als.config import InputConfig, JesterConfig
from jester_als.driver import collect_ratings, tune_numpy
from jester_als.errors import first_line
from jester_als.excel import rows_evaluated_in_tasks
from jester_als.fallback import WAYS_OUT, AlsNotAllowedError, is_not_allowed, not_allowed_reason
from jester_als.foldin import (
    PARAMS_FILE,
    fold_in,
    fold_in_spark,
    load_params,
    save_params,
    top_n,
)
from jester_als.hashsplit import is_test
from jester_als.models import Recommender, load_model_at, recommender
from jester_als.newusers import evaluate_new_users
from jester_als.onepass import eligible as onepass_eligible
from jester_als.onepass import prepare_in_one_pass
from jester_als.outputs import RunOutputs, now_iso
from jester_als.plots import run_plots
from jester_als.prepare import (
    RATINGS_SCHEMA,
    InputError,
    cells_read,
    check_duplicates,
    hex64,
    input_name,
    prepare_ratings,
    reference_scan,
    rows_without_ratings,
)
from jester_als.progress import step
from jester_als.registry import Job
from jester_als.report import figure, render_report
from jester_als.session import als_blocks, is_connect, master_of, try_persist, try_unpersist
from jester_als.tables import write_tables
from jester_als.tracking import track_job
from jester_als.tune import (
    evaluate_predictions,
    fit_als,
    held_out_predictions,
    make_als,
    reg_param_factor,
    scaled_grid,
    split_ratings,
    tune_als,
)

log = logging.getLogger(__name__)


def read_prepared_ratings(spark: SparkSession, out: RunOutputs) -> DataFrame:
    path = out.final_path("ratings")
    try:
        ratings = spark.read.parquet(path)
        _ = ratings.columns  # resolve now so a missing path fails here, with its name
    except Exception as exc:
        raise InputError(
            f"prepared ratings {path}: cannot be read ({first_line(exc)}); "
            f"run the prepare job with the same output.dir first"
        ) from None
    return ratings


def run_prepare(spark: SparkSession, cfg: JesterConfig, out: RunOutputs) -> tuple[dict, DataFrame, DataFrame | None]:
    """Read, melt, classify; write ``ratings/``, ``rejected/`` (and ``user_ids/`` when ids were re-indexed);
    return the data section, the ratings as read back from what was written (a deterministic, short-lineage
    input for ALS) and the id mapping."""
    with rows_evaluated_in_tasks(spark, cfg.input.format == "xls"):
        return _run_prepare(spark, cfg, out)


def _run_prepare(spark: SparkSession, cfg: JesterConfig, out: RunOutputs) -> tuple[dict, DataFrame, DataFrame | None]:
    scan_path = out.path(".reference-scan")
    # The plain read-melt-write runs first, paying the session's warm-up as any first job would, and again
    # after prepare on a warm session: prepare's time is held against the second.
    first_scan = timed_scan(spark, cfg.input, scan_path) if cfg.input.reference_scan else None
    started = time.perf_counter()
    one = (
        prepare_in_one_pass(spark, cfg.input, out.path("ratings"), out.path("rejected"))
        if onepass_eligible(cfg.input)
        else None
    )
    checked = time.perf_counter()
    if one is None:
        prepared = prepare_ratings(spark, cfg.input)
        checked = time.perf_counter()
        write_prepared(prepared, cfg.input, out)
    else:
        prepared = one
        if one.user_files is not None:
            one.user_files.write.mode("overwrite").parquet(out.path("user_files"))
    written = time.perf_counter()
    # In one pass, reading, counting and writing (the refused cells too) all fall in read_and_count.
    timing = {
        "read_and_count": round(checked - started, 2),
        "write": round(written - checked, 2),
        "prepare": round(written - started, 2),
    }
    if one is not None:
        timing["one_pass_parts"] = one.parts
    scan = timed_scan(spark, cfg.input, scan_path) if first_scan is not None else None
    shutil.rmtree(scan_path, ignore_errors=True)
    if scan is not None:
        timing.update(
            reference_scan_first=round(first_scan, 2),
            reference_scan=round(scan, 2),
            ratio=round((written - started) / scan, 2),
        )
        parts = (
            "in one pass"
            if one is not None
            else f"read, classify and count {checked - started:.1f} s, write {written - checked:.1f} s"
        )
        log.info(
            "prepare took %.1f s (%s); a plain read-melt-write of the same input took %.1f s before it (the "
            "session's first job) and %.1f s after it: prepare %.1fx the second",
            written - started,
            parts,
            first_scan,
            scan,
            (written - started) / scan,
        )
    user_ids = spark.read.parquet(out.path("user_ids")) if prepared.user_ids is not None else None
    counts = prepared.counts
    row = counts["ratings"]
    ratings = spark.read.schema(RATINGS_SCHEMA).parquet(out.path("ratings"))
    if not row["ratings"]:
        raise InputError(
            f"{prepared.source}: no valid ratings among {counts['cells']:,} cells "
            f"(missing {counts['missing']}, rejected {counts['rejected']})"
        )
    data = {
        "source": prepared.source,
        "input": prepared.fingerprint,
        "ratings_hash": hex64(row["hash"]),
        "user_ids_reindexed": user_ids is not None,
        "one_pass": one is not None,
        "jokes_without_ratings": counts["jokes_without_ratings"],
        "rows_without_ratings": rows_without_ratings(prepared, row["users"]),
        "users": row["users"],
        "items": row["items"],
        "ratings": row["ratings"],
        "rating_mean": row["mean"],
        "rating_std": row["std"],
        "rejected": counts["rejected_total"],
        "missing": counts["missing_total"],
        "cells": cells_read(counts),
        "timing_seconds": timing,
    }
    log.info(
        "%s: %d cells -> %d ratings by %d users of %d jokes; %d missing, %d rejected %s",
        prepared.source,
        counts["cells"],
        row["ratings"],
        row["users"],
        row["items"],
        counts["missing_total"],
        counts["rejected_total"],
        counts["rejected"] or "",
    )
    return {"data": data}, ratings, user_ids


def write_prepared(prepared, inp: InputConfig, out: RunOutputs) -> None:
    """The general path's outputs: ``ratings/``, ``rejected/``, and ``user_ids/`` and ``user_files/`` where they
    apply; the cached intermediate results are released whatever happens."""
    try:
        if inp.layout == "long":  # wide and Jester tables have one row per user and distinct jokes
            check_duplicates(prepared.ratings, prepared.source, prepared.user_ids)
        prepared.ratings.write.mode("overwrite").parquet(out.path("ratings"))
        prepared.rejected.write.mode("overwrite").parquet(out.path("rejected"))
        if prepared.user_ids is not None:
            prepared.user_ids.select("original_user", "user").write.mode("overwrite").parquet(out.path("user_ids"))
        if prepared.user_files is not None:
            prepared.user_files.write.mode("overwrite").parquet(out.path("user_files"))
    finally:
        prepared.release()
        if prepared.user_ids is not None:
            try_unpersist(prepared.user_ids)


def timed_scan(spark: SparkSession, inp: InputConfig, path: str) -> float | None:
    """:func:`reference_scan`'s seconds, or None where it cannot run: an input it cannot read is left to
    ``prepare``, whose checks say what is wrong with it."""
    try:
        return reference_scan(spark, inp, path)
    except Exception as exc:  # the input's problem is reported by prepare itself
        log.debug("reference scan skipped (%s)", first_line(exc))
        return None


def run_tune(
    spark: SparkSession, cfg: JesterConfig, out: RunOutputs, ratings: DataFrame | None = None
) -> tuple[dict, Recommender, DataFrame]:
    """Split, tune over the grid, refit the best params on all training ratings, evaluate on test,
    save ``model/``. Returns the sections, the model, and all ratings (for recommendations)."""
    if ratings is None:
        ratings = read_prepared_ratings(spark, out)
    split = cfg.split
    train, test = split_ratings(ratings, test_fraction=split.test_fraction, seed=split.seed)
    train, test = try_persist(train, "the training ratings"), try_persist(test, "the test ratings")
    try:
        started = time.perf_counter()
        counts = {"train_ratings": train.count(), "test_ratings": test.count()}
        split_seconds = time.perf_counter() - started
        if not counts["train_ratings"] or not counts["test_ratings"]:
            raise InputError(
                f"the split left {counts['train_ratings']} training and {counts['test_ratings']} test ratings; "
                f"need both (check split.test_fraction and the input size)"
            )
        blocks = als_blocks(spark, cfg.als.blocks)
        try:
            als = make_als(
                seed=cfg.als.seed,
                blocks=blocks,
                checkpoint_interval=cfg.als.checkpoint_interval,
                nonnegative=cfg.als.nonnegative,
            )
        except Exception as exc:
            sections, fitted = _tune_on_the_driver(exc, train, test, cfg, out)
            return {"data": counts, **sections}, fitted, ratings
        sections, fitted = _tune_spark(als, blocks, train, test, cfg, out, counts, split_seconds)
    finally:
        try_unpersist(train)
        try_unpersist(test)
    method = "xxhash64(user, joke, seed)"
    data = {**counts, "split": {"test_fraction": split.test_fraction, "seed": split.seed, "method": method}}
    return {"data": data, **sections}, fitted, ratings


def _tune_on_the_driver(exc: Exception, train, test, cfg: JesterConfig, out: RunOutputs) -> tuple[dict, Recommender]:
    """Where the platform refuses Spark ALS (``exc``): the NumPy engine tunes on the driver with
    ``als.fallback: numpy``, and the job stops with what to do otherwise; any other error is raised as it is."""
    if not is_not_allowed(exc):
        raise exc
    reason = not_allowed_reason(exc)
    if cfg.als.fallback != "numpy":
        raise AlsNotAllowedError(f"{WAYS_OUT} (the error was: {reason})") from None
    section, numpy_model = tune_numpy(train, test, cfg, reason)
    fitted = recommender(numpy_model)
    fitted.save(out.path("model"))
    save_params(out.path("model"), section["params"], cfg.als.bias_reg)
    return {"als_engine": "numpy (fallback: Spark ALS not allowed here)", "numpy_als": section}, fitted


def _tune_spark(
    als, blocks: int, train, test, cfg: JesterConfig, out: RunOutputs, counts: dict, split_seconds: float
) -> tuple[dict, Recommender]:
    """TrainValidationSplit over the (scaled) grid, the best point refitted on all training ratings, scored on
    the test ratings and saved: the ``spark_als`` and ``references`` sections and the model, with the time of
    each part (``split_seconds``: the split, persisted and counted, before this)."""
    tuning, bias_reg = cfg.tune, cfg.als.bias_reg
    # The points of a wave share the cores: with blocks: auto each gets its share of them (at least one
    # block); the final fit has them all.
    tune_blocks = max(1, blocks // tuning.parallelism) if cfg.als.blocks == "auto" else blocks
    log.info(
        "tuning ALS on %d training ratings (%d held out), %d grid points at a time with %d user and item "
        "blocks each; the final fit with %d",
        counts["train_ratings"],
        counts["test_ratings"],
        tuning.parallelism,
        tune_blocks,
        blocks,
    )
    reg_factor = reg_param_factor(cfg.input.rating_range, tuning.scale_reg_param)
    grid = scaled_grid(tuning.grid.as_dict(), reg_factor)
    if reg_factor != 1.0 and "regParam" in grid:
        log.info(
            "regParam values %s scaled by %.3g to the rating range %s: %s",
            tuning.grid.regParam,
            reg_factor,
            cfg.input.rating_range,
            grid["regParam"],
        )
    result = tune_als(
        train,
        als.copy({als.numUserBlocks: tune_blocks, als.numItemBlocks: tune_blocks}),
        grid,
        train_ratio=tuning.train_ratio,
        parallelism=tuning.parallelism,
        seed=tuning.seed,
        biases=cfg.als.biases,
        bias_reg=bias_reg,
    )
    params = dict(result.best_params)
    if tuning.refit_max_iter:
        params["maxIter"] = tuning.refit_max_iter
    model, fit_seconds = fit_als(train, als, params, bias_reg=bias_reg)
    evaluated = time.perf_counter()
    evaluation = evaluate_predictions(
        held_out_predictions(model, test),
        k=cfg.evaluate.k,
        threshold=cfg.relevance_threshold,
        rating_range=cfg.input.rating_range,
        references=(train, cfg.split.seed),
    )
    references = evaluation.pop("references")
    saved = time.perf_counter()
    fitted = recommender(model)
    fitted.save(out.path("model"))
    save_params(out.path("model"), params, bias_reg)
    timing = {
        "split": split_seconds,
        "folds_and_offsets": result.folds_seconds,
        "grid": result.tune_seconds - (result.folds_seconds or 0.0),
        "refit": fit_seconds,
        "evaluate": saved - evaluated,
        "save": time.perf_counter() - saved,
    }
    spark_als = {
        "best_params": result.best_params,
        "model_params": params,
        "biases": bool(params.get("biases")),
        "bias_reg": bias_reg if params.get("biases") else None,
        "validation": result.validation,
        "grid_edges": result.edges,
        "reg_param_factor": reg_factor,
        "tune_method": result.method,
        "tune_seconds": result.tune_seconds,
        "tune_waves_seconds": result.waves,
        "timing_seconds": {part: round(seconds, 2) for part, seconds in timing.items() if seconds is not None},
        "train_ratio": tuning.train_ratio,
        "fit_seconds": fit_seconds,
        "blocks": blocks,
        "tune_blocks": tune_blocks,
        **evaluation,
    }
    log.info(
        "final model %s: test RMSE %.4f, MAE %.4f (fit %.1f s, tuning %.1f s)",
        params,
        evaluation["test_rmse"],
        evaluation["test_mae"],
        fit_seconds,
        result.tune_seconds,
    )
    return {"spark_als": spark_als, "references": references}, fitted


def run_recommend(
    spark: SparkSession,
    cfg: JesterConfig,
    out: RunOutputs,
    model: Recommender | None = None,
    ratings: DataFrame | None = None,
    user_ids: DataFrame | None = None,
) -> dict:
    """Top-N unrated jokes per user; users carry their original ids when prepare re-indexed them."""
    if model is None:
        check_model_fits_ratings(out)
        model = saved_model(out, spark)
    if ratings is None:
        ratings = read_prepared_ratings(spark, out)
        user_ids = saved_user_ids(spark, out)
    top_n = cfg.recommend.top_n
    recommendations = model.recommend(spark, ratings, top_n, cfg.input.rating_range)
    recommendations = with_original_ids(recommendations, user_ids, "rank", "joke", "score")
    recommendations.write.mode("overwrite").parquet(out.path("recommendations"))
    written = spark.read.parquet(out.path("recommendations"))
    row = written.agg(
        F.countDistinct("user").alias("users"), F.count(F.lit(1)).alias("rows"), F.countDistinct("joke").alias("jokes")
    ).first()
    known = ratings.agg(F.countDistinct("user").alias("users"), F.countDistinct("joke").alias("jokes")).first()
    coverage = row["jokes"] / known["jokes"] if known["jokes"] else None
    log.info(
        "recommendations: top %d for %d users (%d users have no unrated joke left); %d of %d jokes "
        "recommended to someone",
        top_n,
        row["users"],
        known["users"] - row["users"],
        row["jokes"],
        known["jokes"],
    )
    return {
        "recommendations": {
            "top_n": top_n,
            "users": row["users"],
            "rows": row["rows"],
            "users_without": known["users"] - row["users"],
            "jokes_recommended": row["jokes"],
            "catalogue_coverage": coverage,
        }
    }


def with_original_ids(frame: DataFrame, user_ids: DataFrame | None, *columns: str) -> DataFrame:
    """``user`` and ``columns`` of ``frame``, the users under the ids the input gave them where prepare re-indexed
    them (``user_ids``: original_user -> user); ``frame`` as it is otherwise."""
    if user_ids is None:
        return frame
    originals = user_ids.select("original_user", "user")
    return frame.join(originals, "user").select(F.col("original_user").alias("user"), *columns)


def saved_user_ids(spark: SparkSession, out: RunOutputs) -> DataFrame | None:
    """The id mapping (original_user -> user) prepare wrote when it re-indexed the users, or None."""
    path = out.final_path("user_ids")
    return spark.read.parquet(path) if os.path.exists(path) else None


def known_users(
    spark: SparkSession, out: RunOutputs, model: Recommender, ratings: DataFrame, new_ids: DataFrame | None
) -> int:
    """How many users of ``ratings`` (re-indexed by ``new_ids`` when the new users' prepare did so) the saved
    model was fitted on, matched by the ids their inputs gave them: the training input and the new users' input
    are each re-indexed with a numbering of its own, so their int ids cannot be compared."""

    def original(frame: DataFrame, ids: DataFrame | None) -> DataFrame:
        return with_original_ids(frame, ids).select(F.col("user").cast("string").alias("user"))

    new = original(ratings.select("user").distinct(), new_ids)
    fitted = original(model.users(spark), saved_user_ids(spark, out))
    return new.join(fitted, "user", "left_semi").count()


def saved_model(out: RunOutputs, spark: SparkSession | None = None) -> Recommender:
    """The saved model of ``out``'s directory (:func:`jester_als.models.load_model_at`)."""
    return recommender(load_model_at(out.final_path("model"), spark))


def check_model_fits_ratings(out: RunOutputs) -> None:
    """Refuse to use the saved model with ``ratings/`` when prepare has replaced those ratings since the model
    was fitted (it then drops ``spark_als`` from metrics.json as stale and says so): scored or recommended
    against the new ratings, the model would mix two data sets without a word."""
    dropped = out.read_metrics().get("stale_sections_dropped") or {}
    if "spark_als" in dropped:
        raise InputError(
            f"model {out.final_path('model')}: fitted on other ratings than {out.final_path('ratings')} holds now "
            f"(prepare replaced them; metrics.json: spark_als {dropped['spark_als']}); run tune with the same "
            "output.dir first, or the pipeline job"
        )


def run_new_users(
    spark: SparkSession,
    cfg: JesterConfig,
    ratings: DataFrame,
    spark_als: dict,
    cells: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict:
    """The ``new_users`` section: fold-in scored on users held out whole (:mod:`jester_als.newusers`), over the
    user sample the baseline collects (``cells``, its users, jokes and ratings, when the baseline step already
    collected them), with the chosen model's params; and how long fold-in takes for one user and for 10,000
    users at once (their gauge ratings), the input in memory."""
    if cells is None:
        base = cfg.baseline
        sample = sample_users(ratings, max_users=base.max_users, fraction=base.fraction, seed=base.seed)
        cells = collect_ratings(ratings.join(sample, "user", "left_semi"))
    users, jokes, values = cells
    test = is_test(
        users.astype(np.int32), jokes.astype(np.int32), test_fraction=cfg.split.test_fraction, seed=cfg.split.seed
    )
    params = spark_als["model_params"]
    section = evaluate_new_users(
        users,
        jokes,
        values,
        test,
        params=params,
        bias_reg=cfg.als.bias_reg,
        new_users=cfg.new_users,
        k=cfg.evaluate.k,
        threshold=cfg.relevance_threshold,
        rating_range=cfg.input.rating_range,
        seed=cfg.als.seed,
    )
    if "skipped" in section:
        log.warning("new users: not scored: %s", section["skipped"])
        return {"new_users": section}
    if "gauge_skipped" in section:
        # a warning only where gauge jokes were named: [] asks for none
        (log.warning if cfg.new_users.gauge_jokes else log.info)(
            "new users: the gauge jokes are not scored: %s", section["gauge_skipped"]
        )
        most = max(section["random"], key=int, default=None)
        shown, scored = f"{most} random ratings", section["random"].get(most)
    else:
        shown, scored = "gauge jokes", section["gauge"]
    serve = section["serve_seconds"]
    if scored is None:
        return {"new_users": section}

    def scores(predictor: str) -> str:
        figures = scored[predictor]
        return f"{figure(figures['rmse'])}, {figure(figures['ndcg_at_k'])}"

    log.info(
        "new users (%d held out whole): %s revealed -> fold-in RMSE %s, NDCG@%d %s | popularity %s | "
        "full refit %s; fold-in of 10,000 users %s",
        section["users"],
        shown,
        figure(scored["model"]["rmse"]),
        section["k"],
        figure(scored["model"]["ndcg_at_k"]),
        scores("popularity"),
        scores("refit"),
        f"{serve['10000']:.3f} s" if "10000" in serve else "n/a (fewer users in the sample)",
    )
    return {"new_users": section}


def foldable_model(spark: SparkSession, out: RunOutputs, cfg: JesterConfig):
    """The saved model as :class:`~jester_als.foldin.FoldInModel`, with the regParam it was fitted with."""
    model = saved_model(out, spark)
    params = load_params(out.final_path("model")) or (out.read_metrics().get("spark_als") or {}).get("model_params")
    if not params or "regParam" not in params:
        raise InputError(
            f"model {out.final_path('model')}: its regParam is unknown (no {PARAMS_FILE} beside it and "
            f"no spark_als.model_params in metrics.json); run tune again with this version"
        )
    return model, model.foldable(float(params["regParam"]))


def new_users_input(cfg: JesterConfig) -> InputConfig:
    """``input`` with the new users' path, and their format and layout where given."""
    new = cfg.new_users
    if not new.path:
        raise InputError(
            "foldin: new_users.path is not set; give the new users' ratings, e.g. --set "
            "new_users.path=new_users.csv (any layout prepare reads)"
        )
    fmt = new.format or cfg.input.format
    return cfg.input.model_copy(
        update={
            "path": new.path,
            "format": fmt,
            "layout": new.layout or cfg.input.layout,
            "table": new.path if fmt == "table" else cfg.input.table,
            "reference_scan": False,
        }
    )


def run_foldin(spark: SparkSession, cfg: JesterConfig, out: RunOutputs) -> dict:
    """Fold the new users of ``new_users.path`` into the saved model and recommend them their top N unrated
    jokes: ``new_user_recommendations/``, ``new_user_factors/`` and ``new_user_rejected/`` (every refused
    cell, jokes the model never saw among them). Users the model already has are folded in from the ratings
    given (their saved factors are not changed) and counted."""
    started = time.perf_counter()
    model, foldable = foldable_model(spark, out, cfg)
    inp = new_users_input(cfg)
    prepared = prepare_ratings(spark, inp)
    ratings = on_spark = None
    try:
        if inp.layout == "long":  # as prepare refuses them: a pair rated twice would weigh twice in the solve
            check_duplicates(prepared.ratings, prepared.source, prepared.user_ids)
        known_jokes = spark.createDataFrame([(int(j),) for j in foldable.joke_ids], "joke int")
        ratings = prepared.ratings.join(F.broadcast(known_jokes), "joke", "left_semi").select("user", "joke", "rating")
        unknown = prepared.ratings.join(F.broadcast(known_jokes), "joke", "left_anti").select(
            F.col("user").cast("string").alias("user"),
            F.col("joke").cast("string").alias("joke"),
            F.col("rating").cast("string").alias("value"),
            F.lit("unknown_joke").alias("reason"),
            F.lit("the model has no factors for this joke").alias("detail"),
        )
        ratings = try_persist(ratings, "the new users' ratings")
        summary = ratings.agg(F.count(F.lit(1)).alias("ratings"), F.countDistinct("user").alias("users")).first()
        # Users whose usable ratings are all of jokes the model never saw are without a rating too; prepare's
        # count of users without one (the long layout's) cannot know of them.
        usable_users = prepared.ratings.agg(F.countDistinct("user")).first()[0]
        if not summary["ratings"]:
            raise InputError(
                f"{prepared.source}: no rating of a joke the model knows among "
                f"{prepared.counts['cells']:,} cells (missing {prepared.counts['missing']}, rejected "
                f"{prepared.counts['rejected']})"
            )
        engine = cfg.new_users.engine
        if engine == "auto":
            engine = model.engine
        top = cfg.recommend.top_n
        rating_range = cfg.input.rating_range
        if engine == "numpy":
            users, jokes, values = collect_ratings(ratings)
            folded = fold_in(foldable, users, jokes, values)
            best = top_n(foldable, folded, top, rating_range)
            factors = spark.createDataFrame(folded_table(folded))
            recommendations = spark.createDataFrame(recommendation_table(best))
        else:
            on_spark = fold_in_spark(foldable, ratings, top, rating_range)
            factors, recommendations = on_spark.factors, on_spark.recommendations
        recommendations = with_original_ids(recommendations, prepared.user_ids, "rank", "joke", "score")
        factors = with_original_ids(factors, prepared.user_ids, "offset", "features")
        recommendations.write.mode("overwrite").parquet(out.path("new_user_recommendations"))
        factors.write.mode("overwrite").parquet(out.path("new_user_factors"))
        prepared.rejected.unionByName(unknown).write.mode("overwrite").parquet(out.path("new_user_rejected"))
        known = known_users(spark, out, model, ratings, prepared.user_ids)
        unknown_count = unknown.count()
    finally:
        prepared.release()
        if on_spark is not None:
            on_spark.release()
        if ratings is not None:
            try_unpersist(ratings)
    written = (
        spark.read.parquet(out.path("new_user_recommendations"))
        .agg(F.countDistinct("user").alias("users"), F.count(F.lit(1)).alias("rows"))
        .first()
    )
    section = {
        "source": prepared.source,
        "engine": engine,
        "users": summary["users"],
        "ratings": summary["ratings"],
        "known_users": known,
        "users_without_ratings": rows_without_ratings(prepared, usable_users) + usable_users - summary["users"],
        "cells": cells_read(prepared.counts, {"unknown_joke": unknown_count}),
        "recommended_users": written["users"],
        "recommendation_rows": written["rows"],
        "top_n": top,
        "reg_param": foldable.reg_param,
        "biased": foldable.biased,
        "seconds": time.perf_counter() - started,
    }
    log.info(
        "foldin: %d new users read, %d with a rating of a known joke (%d ratings; %d already in the model, folded "
        "in anew) -> top %d for %d users; refused cells %s",
        summary["users"] + section["users_without_ratings"],
        summary["users"],
        summary["ratings"],
        known,
        top,
        written["users"],
        section["cells"]["rejected"] or "none",
    )
    return {"foldin": section}


def folded_table(folded):
    import pyarrow as pa

    offsets = folded.offsets if folded.offsets is not None else [None] * len(folded.user_ids)
    return pa.table(
        {
            "user": pa.array(folded.user_ids.astype(np.int32)),
            "offset": pa.array(offsets, pa.float64()),
            "features": pa.array(list(folded.factors), pa.list_(pa.float64())),
        }
    )


def recommendation_table(best: dict):
    import pyarrow as pa

    return pa.table(
        {
            "user": best["user"].astype(np.int32),
            "rank": best["rank"].astype(np.int32),
            "joke": best["joke"].astype(np.int32),
            "score": best["score"].astype(np.float64),
        }
    )


def run_baseline(
    spark: SparkSession,
    cfg: JesterConfig,
    out: RunOutputs,
    model: Recommender | None = None,
    ratings: DataFrame | None = None,
    spark_params: dict | None = None,
    collected: dict | None = None,
) -> dict:
    """NumPy ALS and the baselines on a collected sample, against the Spark model on the same rows; the sample's
    ratings go into ``collected`` (see :func:`jester_als.baseline.compare_engines`)."""

    if model is None:
        check_model_fits_ratings(out)
        model = saved_model(out, spark)
    if model.engine == "numpy":
        log.warning("baseline: skipped; Spark ALS was not allowed, so the NumPy engine is the model itself")
        return {"baseline_skipped": "Spark ALS not allowed here; the model is NumPy ALS (see numpy_als)"}
    ratings = ratings if ratings is not None else read_prepared_ratings(spark, out)
    params = cfg.baseline.params or spark_params
    if not params:
        params = (out.read_metrics().get("spark_als") or {}).get("model_params")
    if not params:
        raise InputError(
            f"baseline: no ALS params to use; set baseline.params or run tune first so that "
            f"{out.final_path('metrics.json')} holds spark_als.model_params"
        )
    try:
        return compare_engines(model.model, ratings, cfg, params, collected)
    except ValueError as exc:
        raise InputError(f"baseline: {exc}") from None


def run_pipeline(spark: SparkSession, cfg: JesterConfig, out: RunOutputs) -> dict:
    grid_points = 1
    for values in cfg.tune.grid.as_dict().values():
        grid_points *= len(values)
    steps: dict[str, float] = {}
    total = 5 if cfg.new_users.evaluate else 4
    with step(1, total, f"prepare: read and melt {input_name(cfg.input)}", record=steps, name="prepare"):
        sections, ratings, user_ids = run_prepare(spark, cfg, out)
    with step(2, total, f"tune: {grid_points} grid points, then the final fit", record=steps, name="tune"):
        tuned, model, ratings = run_tune(spark, cfg, out, ratings)
    merge_sections(sections, tuned)
    spark_params = tuned.get("spark_als", {}).get("model_params")
    collected: dict = {}  # the baseline's sample, which the new-user evaluation scores again
    with step(3, total, "baseline: NumPy ALS and baselines on the driver", record=steps, name="baseline"):
        merge_sections(sections, run_baseline(spark, cfg, out, model, ratings, spark_params, collected))
    with step(4, total, f"recommend: top {cfg.recommend.top_n} per user", record=steps, name="recommend"):
        merge_sections(sections, run_recommend(spark, cfg, out, model, ratings, user_ids))
    if cfg.new_users.evaluate and "spark_als" in tuned:
        with step(5, 5, "new users: fold-in on users held out whole", record=steps, name="new_users"):
            merge_sections(sections, run_new_users(spark, cfg, ratings, tuned["spark_als"], collected.get("cells")))
    sections["steps_seconds"] = steps
    return sections


def merge_sections(into: dict, new: dict) -> dict:
    """Merge ``metrics.json`` sections one level deep (``data`` gathers keys from several jobs)."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key].update(value)
        else:
            into[key] = value
    return into


# The sections of metrics.json each job's results make out of date: new data invalidates everything computed
# from the old ratings; a new model invalidates what was computed from the old model.
FROM_RATINGS = (
    "spark_als",
    "references",
    "numpy_als",
    "baselines",
    "recommendations",
    "als_engine",
    "baseline_skipped",
    "foldin",
    "new_users",
)
FROM_MODEL = ("numpy_als", "baselines", "recommendations", "baseline_skipped", "foldin", "new_users")


def drop_stale_sections(previous: dict, job: str, sections: dict) -> dict:
    """``previous`` without the sections this job's results make stale; what was dropped, and why, is listed
    under ``stale_sections_dropped`` so a reader knows the directory's other outputs are from an earlier run."""
    if job == "prepare":
        old_hash = (previous.get("data") or {}).get("ratings_hash")
        if old_hash is None or old_hash == sections["data"]["ratings_hash"]:
            return previous
        stale, reason, kept = FROM_RATINGS, f"computed from other ratings (hash {old_hash})", {}
    elif job == "tune":
        stale, reason = FROM_MODEL, "computed from an earlier model"
        kept = {"data": previous.get("data", {})}
    else:
        return previous
    dropped = [name for name in stale if name in previous]
    base = {**{k: v for k, v in previous.items() if k not in stale and k != "data"}, **kept}
    base.pop("stale_sections_dropped", None)
    if dropped:
        log.warning("metrics.json: dropping %s (%s); rerun the jobs that write them", ", ".join(dropped), reason)
        base["stale_sections_dropped"] = {name: reason for name in dropped}
    return base


def run_manifest(
    spark: SparkSession, cfg: JesterConfig, job: str, out: RunOutputs, started: str, seconds: float
) -> dict:
    import numpy

    return {
        "job": job,
        "run_id": out.run_id,
        "started": started,
        "finished": now_iso(),
        "wall_seconds": round(seconds, 2),
        "config_file": cfg.source,
        "config": cfg.model_dump(),
        "versions": {
            "jester_als": __version__,
            "python": platform.python_version(),
            "spark": spark.version,
            "numpy": numpy.__version__,
        },
        "spark_mode": "connect" if is_connect(spark) else "classic",
        "master": master_of(spark),
        **({"removed_stale_staging": out.swept} if out.swept else {}),
    }


def prepare_job(spark: SparkSession, cfg: JesterConfig, out: RunOutputs) -> dict:
    """The ``prepare`` job: :func:`run_prepare`'s sections."""
    return run_prepare(spark, cfg, out)[0]


def tune_job(spark: SparkSession, cfg: JesterConfig, out: RunOutputs) -> dict:
    """The ``tune`` job: :func:`run_tune`'s sections."""
    return run_tune(spark, cfg, out)[0]


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS has none): a run's timings are only as quiet as
    the machine was, so the manifest records it at the job's start and end."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run_spark_job(spark: SparkSession, cfg: JesterConfig, job: Job, on_start=None) -> dict:
    """Run one job of the table with staged outputs; returns the full ``metrics.json`` content it committed.
    ``on_start`` receives the run's outputs (the entry point uses it to clean up after an interrupt)."""

    out = RunOutputs(cfg.output.dir, cfg.output.mode, list(job.outputs))
    out.check()
    if on_start:
        on_start(out)
    started, clock, load = now_iso(), time.perf_counter(), load_average()
    try:
        if job.whole:
            sections = job.run(spark, cfg, out)
        else:
            with step(1, 1, job.name):
                sections = job.run(spark, cfg, out)
        manifest = run_manifest(spark, cfg, job.name, out, started, time.perf_counter() - clock)
        manifest["machine"] = {"cpus": os.cpu_count(), "load_average_1min": [load, load_average()]}

        def update(previous: dict) -> tuple[dict, str]:
            base = {} if job.whole else drop_stale_sections(previous, job.name, sections)
            metrics = merge_sections(base, sections)
            stale = metrics.get("stale_sections_dropped") or {}
            for name in sections:  # rewritten by this run: no longer stale
                stale.pop(name, None)
            if not stale:
                metrics.pop("stale_sections_dropped", None)
            metrics["run"] = manifest
            plots = run_plots(metrics, out.final)
            if plots:
                metrics["plots"] = plots
            else:
                metrics.pop("plots", None)
            return metrics, render_report(metrics)

        metrics = out.commit(update)
    finally:
        out.abort()

    track_job(cfg, job.name, metrics, out.final, spark)  # after the commit: tracking can only add

    write_tables(spark, cfg.output, job.name, metrics, out.final)  # after the commit: a refused table leaves the files
    return metrics
