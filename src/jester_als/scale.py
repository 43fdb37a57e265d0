"""``jester-als scale``: when does Spark become necessary? A measured scaling study and a cost model.

For each size along two axes (more users with 100 jokes; more jokes with a fixed number of users, each rating
few of them) the project's generator streams a Jester-shaped table to Parquet, split over ratings, and each
engine fits it with the same rank, regParam and iterations in a fresh worker process: NumPy ALS on the
driver, and Spark ALS in local mode (driver and executor in one JVM). The parent samples the resident memory
of the worker's whole process tree every 0.1 s (peak RSS) and enforces the time and memory budgets: an engine
that exceeds one is stopped, the limit is recorded with its reason, and that engine's axis ends there.

A cost model, fitted to the measured points by least squares, gives per-iteration time as
``c0 + c1 * nnz * k^2 + c2 * (users + jokes) * k^3`` and peak memory as
``m0 + m1 * nnz + m2 * (users + jokes) * k + m3 * users * jokes`` (the last term is NumPy's dense rating
pattern, used while it fits ``scale.numpy_dense_budget_mb``) per engine, plus Spark's shuffle volume per
iteration; it is checked against a measured point left out of the fit and then used to predict sizes this
machine cannot hold.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from jester_als.generate import GeneratorParams, generate_chunks
from jester_als.numpy_als import uses_dense_path
from jester_als.outputs import now_iso, write_text_atomic
from jester_als.report import table

log = logging.getLogger(__name__)

ENGINES = ("numpy", "spark")
BYTES_PER_FACTOR = 4  # Spark ships float32 factors in its shuffles


# --- data ------------------------------------------------------------------------------------------------

def write_split_parquet(params: GeneratorParams, directory: Path, test_fraction: float, seed: int) -> dict:
    """Stream the generated table to ``train.parquet`` and ``test.parquet`` (long layout), chunk by chunk, so
    generating a large table needs memory for one chunk only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("user", pa.int32()), ("joke", pa.int32()), ("rating", pa.float64())])
    writers = {name: pq.ParquetWriter(directory / f"{name}.parquet", schema) for name in ("train", "test")}
    counts = {"train": 0, "test": 0}
    try:
        for index, chunk in enumerate(generate_chunks(params)):
            users, jokes, values = chunk.long()
            users, jokes = users.astype(np.int32), jokes.astype(np.int32)
            is_test = np.random.default_rng([seed, index]).random(values.size) < test_fraction
            for name, mask in (("train", ~is_test), ("test", is_test)):
                writers[name].write_table(pa.table({"user": users[mask], "joke": jokes[mask],
                                                    "rating": values[mask]}, schema=schema))
                counts[name] += int(mask.sum())
    finally:
        for writer in writers.values():
            writer.close()
    return {"train_ratings": counts["train"], "test_ratings": counts["test"]}


# --- the worker (runs in its own process) ----------------------------------------------------------------

def _read(path: Path):
    import pyarrow.parquet as pq

    data = pq.read_table(path)
    return (data.column("user").to_numpy(), data.column("joke").to_numpy(), data.column("rating").to_numpy())


def worker(argv: list[str]) -> int:
    """``python -m jester_als.scale worker ENGINE DATA_DIR RANK REG ITERS REPEATS OUT DRIVER_MEMORY DENSE_MB``"""
    engine, data_dir, rank, reg, iters, repeats, out = argv[:7]
    dense_budget_mb = float(argv[8]) if len(argv) > 8 else 512.0
    rank, reg, iters, repeats, data_dir = int(rank), float(reg), int(iters), int(repeats), Path(data_dir)
    seconds = []
    if engine == "numpy":
        from jester_als.numpy_als import RatingMatrix, fit_numpy_als, rmse_mae

        train = RatingMatrix.from_ids(*_read(data_dir / "train.parquet"))
        for _ in range(repeats):
            started = time.perf_counter()
            model = fit_numpy_als(train, rank=rank, reg_param=reg, max_iter=iters, seed=1,
                                  dense_budget_mb=dense_budget_mb)
            seconds.append(time.perf_counter() - started)
        users, jokes, ratings = _read(data_dir / "test.parquet")
        score = {**rmse_mae(ratings, model.predict(users, jokes)), "path": model.layout}
    else:
        from pyspark.sql import SparkSession

        from jester_als.session import als_blocks
        from jester_als.tune import fit_als, make_als, regression_metrics

        memory = argv[7] if len(argv) > 7 else "4g"
        spark = (SparkSession.builder.master("local[*]").appName("jester-als-scale")
                 .config("spark.driver.memory", memory).config("spark.ui.enabled", "false")
                 .config("spark.sql.shuffle.partitions", str(os.cpu_count() or 2))
                 # inside the point's directory, which the study removes when it ends (also on failure)
                 .config("spark.checkpoint.dir", str(data_dir / "checkpoints"))
                 .config("spark.log.level", "ERROR").getOrCreate())
        train = spark.read.parquet(str(data_dir / "train.parquet")).persist()
        train.count()
        als = make_als(seed=1, blocks=als_blocks(spark, "auto"))
        for _ in range(repeats):
            model, fit_seconds = fit_als(train, als, {"rank": rank, "regParam": reg, "maxIter": iters})
            seconds.append(fit_seconds)
        test = spark.read.parquet(str(data_dir / "test.parquet"))
        scores = regression_metrics(model.transform(test))
        score = {"rmse": scores["rmse"], "mae": scores["mae"], "rows": scores["rows"]}
        spark.stop()
    Path(out).write_text(json.dumps({"seconds": seconds, **score}))
    return 0


# --- the parent: budgets and peak memory -----------------------------------------------------------------

def run_worker(engine: str, data_dir: Path, cfg: dict, repeats: int) -> dict:
    """Run one engine on one point in a fresh process; sample the tree's RSS; enforce the budgets."""
    import psutil

    scale = cfg["scale"]
    result_file = data_dir / f"{engine}-result.json"
    args = [sys.executable, "-m", "jester_als.scale", "worker", engine, str(data_dir), str(scale["rank"]),
            str(scale["regParam"]), str(scale["maxIter"]), str(repeats), str(result_file),
            scale["spark_driver_memory"], str(scale["numpy_dense_budget_mb"])]
    env = dict(os.environ, SPARK_LOCAL_IP=os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"))
    started = time.perf_counter()
    log_path = data_dir / f"{engine}-worker.log"
    with open(log_path, "wb") as log_file:  # a file, not a pipe: a chatty worker must never block on it
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log_file, env=env)
    root = psutil.Process(process.pid)
    peak, limit = 0, None
    budget_bytes = scale["memory_budget_mb"] * 2**20
    while process.poll() is None:
        try:
            tree = [root] + root.children(recursive=True)
            rss = sum(p.memory_info().rss for p in tree if p.is_running())
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        elapsed = time.perf_counter() - started
        if rss > budget_bytes:
            limit = f"memory: {rss / 2**20:,.0f} MB > budget {scale['memory_budget_mb']:,} MB"
        elif elapsed > scale["time_budget_seconds"]:
            limit = f"time: {elapsed:,.0f} s > budget {scale['time_budget_seconds']:,} s"
        if limit:
            for p in reversed([root] + root.children(recursive=True)):
                try:
                    p.kill()
                except psutil.Error:
                    pass
            process.wait()
            break
        time.sleep(0.1)
    stderr = log_path.read_text(errors="replace")
    wall = time.perf_counter() - started
    if limit:
        return {"completed": False, "limit": limit, "peak_rss_mb": peak / 2**20, "wall_seconds": wall}
    if process.returncode != 0 or not result_file.exists():
        reason = "out of memory" if "OutOfMemory" in stderr or "MemoryError" in stderr else "failed"
        return {"completed": False, "limit": f"{reason}: exit {process.returncode}: {stderr.strip()[-300:]}",
                "peak_rss_mb": peak / 2**20, "wall_seconds": wall}
    result = json.loads(result_file.read_text())
    result.update(completed=True, peak_rss_mb=peak / 2**20, wall_seconds=wall,
                  fit_seconds=float(np.median(result["seconds"])))
    return result


def axis_points(cfg: dict) -> list[dict]:
    scale = cfg["scale"]
    points = [{"axis": "users", "users": n, "jokes": 100, "mean_ratings": 72.6, "min_ratings": 36,
               "gauge_jokes": 30} for n in scale["users_axis"]]
    sparse = scale["jokes_axis_ratings_per_user"]
    points += [{"axis": "jokes", "users": scale["jokes_axis_users"], "jokes": j,
                "mean_ratings": min(float(sparse), 0.726 * j), "min_ratings": min(15, j),
                "gauge_jokes": min(10, j)} for j in scale["jokes_axis"]]
    return points


def run_study(cfg: dict) -> dict:
    scale = cfg["scale"]
    gen_cfg = cfg["generate"]
    work = Path(tempfile.mkdtemp(prefix="jester-als-scale-", dir=scale["work_dir"]))
    stopped: dict[tuple[str, str], str] = {}
    points = []
    try:
        for spec in axis_points(cfg):
            params = GeneratorParams.from_config(gen_cfg, users=spec["users"], jokes=spec["jokes"],
                                                 mean_ratings=spec["mean_ratings"], min_ratings=spec["min_ratings"],
                                                 gauge_jokes=spec["gauge_jokes"])
            data_dir = work / f"{spec['axis']}-{spec['users']}x{spec['jokes']}"
            started = time.perf_counter()
            sizes = write_split_parquet(params, data_dir, scale["test_fraction"], scale["seed"])
            point = {**spec, **sizes, "ratings": sizes["train_ratings"] + sizes["test_ratings"],
                     "generate_seconds": time.perf_counter() - started, "engines": {}}
            log.info("scale point %s: %d users x %d jokes, %d training ratings", spec["axis"], spec["users"],
                     spec["jokes"], sizes["train_ratings"])
            for engine in ENGINES:
                key = (spec["axis"], engine)
                if key in stopped:
                    point["engines"][engine] = {"completed": False, "skipped": True,
                                                "limit": f"not run: {stopped[key]} at a smaller size"}
                    continue
                cheap = sizes["train_ratings"] <= scale["repeat_below_ratings"]
                repeats = scale["repeats"] if cheap else 1
                result = run_worker(engine, data_dir, cfg, repeats)
                point["engines"][engine] = result
                if not result["completed"]:
                    stopped[key] = result["limit"]
                log.info("  %s: %s", engine, f"{result['fit_seconds']:.2f} s, peak {result['peak_rss_mb']:,.0f} MB, "
                         f"RMSE {result['rmse']:.4f}" if result["completed"] else result["limit"])
            points.append(point)
            for name in ("train.parquet", "test.parquet"):
                (data_dir / name).unlink(missing_ok=True)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    model = fit_cost_model(points, scale["rank"], scale["maxIter"])
    return {"when": now_iso(), "machine": {"cpus": os.cpu_count(), "memory_gb": _machine_memory_gb()},
            "params": {k: scale[k] for k in ("rank", "regParam", "maxIter")},
            "budgets": {"time_seconds": scale["time_budget_seconds"], "memory_mb": scale["memory_budget_mb"]},
            "points": points, "cost_model": model, "predictions": predict(model, cfg)}


def _machine_memory_gb() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


# --- the cost model --------------------------------------------------------------------------------------

def _features(engine: str, users: float, jokes: float, nnz: float, rank: int, dense: bool = False) -> dict:
    time_terms = [1.0, nnz * rank ** 2, (users + jokes) * rank ** 3]
    memory = [1.0, nnz, (users + jokes) * rank]
    if engine == "numpy":
        # NumPy's dense path works and stores the whole users x jokes pattern; the sparse path does not.
        time_terms.append(users * jokes * rank ** 2 if dense else 0.0)
        memory.append(users * jokes if dense else 0.0)
    return {"time": time_terms, "memory": memory}


def shuffle_bytes_per_iteration(users: float, jokes: float, nnz: float, rank: int, blocks: int) -> float:
    """Spark ALS sends each factor once to every block of the other side that rates it: at most
    min(blocks, its ratings) copies per user and per joke, each rank float32s, per half iteration."""
    joke_copies = jokes * min(blocks, max(1.0, nnz / max(jokes, 1.0)))
    user_copies = users * min(blocks, max(1.0, nnz / max(users, 1.0)))
    return (joke_copies + user_copies) * rank * BYTES_PER_FACTOR


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients, relative errors (points span orders of magnitude)."""
    from scipy.optimize import nnls

    weights = 1.0 / np.maximum(y, 1e-9)
    coef, _ = nnls(x * weights[:, None], y * weights)
    return coef


def fit_cost_model(points: list[dict], rank: int, iterations: int, holdout: bool = True) -> dict:
    """Per engine: time per iteration and peak memory as non-negative combinations of the features. The
    largest completed point of each engine is held out (when there are enough points) to check the model."""
    model = {"rank": rank, "iterations": iterations, "engines": {}}
    for engine in ENGINES:
        rows = [(p, p["engines"][engine]) for p in points
                if p["engines"].get(engine, {}).get("completed")]
        if len(rows) < 3:
            model["engines"][engine] = {"fitted": False, "reason": f"{len(rows)} completed points (need 3)"}
            continue
        rows.sort(key=lambda r: r[0]["train_ratings"])
        held = rows[-1] if holdout and len(rows) >= 4 else None
        used = rows[:-1] if held else rows
        fitted = {}
        for target, key in (("time", "fit_seconds"), ("memory", "peak_rss_mb")):
            x = np.array([_features(engine, p["users"], p["jokes"], p["train_ratings"], rank,
                                    r.get("path") == "dense")[target] for p, r in used])
            y = np.array([r[key] / (iterations if target == "time" else 1.0) for _, r in used])
            coef = _nnls(x, y)
            fitted_y = x @ coef
            fitted[target] = {"coefficients": coef.tolist(),
                              "max_relative_error_on_fitted": float(np.max(np.abs(fitted_y - y) / y))}
        entry = {"fitted": True, "points_used": len(used), **fitted}
        if held:
            p, r = held
            predicted = predict_point(entry, engine, p["users"], p["jokes"], p["train_ratings"], rank, iterations,
                                      r.get("path") == "dense")
            entry["holdout"] = {"users": p["users"], "jokes": p["jokes"], "train_ratings": p["train_ratings"],
                                "measured_seconds": r["fit_seconds"], "predicted_seconds": predicted["seconds"],
                                "measured_memory_mb": r["peak_rss_mb"], "predicted_memory_mb": predicted["memory_mb"]}
        model["engines"][engine] = entry
    return model


def predict_point(entry: dict, engine: str, users: float, jokes: float, nnz: float, rank: int,
                  iterations: int, dense: bool = False) -> dict:
    features = _features(engine, users, jokes, nnz, rank, dense)
    seconds = float(np.dot(features["time"], entry["time"]["coefficients"])) * iterations
    memory = float(np.dot(features["memory"], entry["memory"]["coefficients"]))
    return {"seconds": seconds, "memory_mb": memory}


TARGETS = [
    {"name": "real Jester (dataset 1)", "users": 24983, "jokes": 100, "ratings": 1_810_455},
    {"name": "50 M users x 10,000 jokes (seed's guess)", "users": 50_000_000, "jokes": 10_000,
     "ratings": 50_000_000 * 100},
    {"name": "Netflix Prize", "users": 480_189, "jokes": 17_770, "ratings": 100_480_507},
]


def predict(model: dict, cfg: dict) -> list[dict]:
    scale = cfg["scale"]
    rank, iterations = model["rank"], model["iterations"]
    machine_mb = scale["machine_memory_gb"] * 1024
    executors = scale["cluster_executors"]
    out = []
    for target in TARGETS:
        nnz = target["ratings"] * (1 - scale["test_fraction"])
        row = {**target, "train_ratings": nnz, "engines": {}}
        for engine, entry in model["engines"].items():
            if not entry.get("fitted"):
                continue
            dense = engine == "numpy" and uses_dense_path(target["users"], target["jokes"], nnz,
                                                          scale["numpy_dense_budget_mb"])
            one = predict_point(entry, engine, target["users"], target["jokes"], nnz, rank, iterations, dense)
            if engine == "numpy":
                one["path"] = "dense" if dense else "sparse"
            fits = one["memory_mb"] <= machine_mb
            row["engines"][engine] = {**one, "fits_one_machine": fits}
            if engine == "spark":
                # Work and data divide over executors; the per-iteration fixed cost does not.
                coef_t = entry["time"]["coefficients"]
                coef_m = entry["memory"]["coefficients"]
                fixed = coef_t[0] * iterations
                row["engines"]["spark"]["cluster"] = {
                    "executors": executors,
                    "seconds": fixed + (one["seconds"] - fixed) / executors,
                    "memory_mb_per_executor": coef_m[0] + (one["memory_mb"] - coef_m[0]) / executors,
                    "shuffle_gb_per_iteration": 2 * shuffle_bytes_per_iteration(
                        target["users"], target["jokes"], nnz, rank, executors * scale["cores_per_executor"]) / 2**30,
                }
        out.append(row)
    return out


# --- outputs ---------------------------------------------------------------------------------------------

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


def scale_job(cfg: dict) -> dict:
    study = run_study(cfg)
    out_dir = cfg["output"]["dir"]
    os.makedirs(out_dir, exist_ok=True)
    study["plot"] = plot(study, os.path.join(out_dir, "scale.png"))
    write_text_atomic(os.path.join(out_dir, "scale.json"), json.dumps(study, indent=2) + "\n")
    text = render_scale(study)
    if not study["plot"]:
        text += "\nThe plot was skipped: matplotlib is not installed.\n"
    write_text_atomic(os.path.join(out_dir, "scale.md"), text)
    print(text)
    return study


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(worker(sys.argv[2:]))
    print("usage: python -m jester_als.scale worker ... (run the study with `jester-als scale`)", file=sys.stderr)
    sys.exit(2)
