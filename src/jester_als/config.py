"""Typed YAML configuration: the schema, loading, ``--set`` overrides and validation.

Every error in a config is collected and reported at once, before Spark starts, each with its key path and
what was expected. Defaults are stated once, in ``SCHEMA``.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

from jester_als.generate import GeneratorParams as _GEN

REQUIRED = object()

# ALS params a grid may name: everything Spark's ALS estimator takes except the column names and the
# explicit/implicit switch (this project is explicit feedback only).
ALS_GRID_PARAMS = {
    "rank": int,
    "maxIter": int,
    "regParam": float,
    "alpha": float,
    "nonnegative": bool,
    "numUserBlocks": int,
    "numItemBlocks": int,
    "checkpointInterval": int,
    "blockSize": int,
    "biases": bool,  # not Spark's: the biased model (jester_als.biased) or the plain one
}


class ConfigError(Exception):
    """One or more config problems; ``problems`` lists them as ``key.path: message``, and a problem with a value
    given on the command line as ``--set key.path=value: message``."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = problems
        self.source = source
        from_set = [p for p in problems if p.startswith("--set ")]
        from_file = [p for p in problems if not p.startswith("--set ")]
        parts = []
        if from_file:
            where = f" in {source}" if source else ""
            parts.append(f"invalid config{where} ({len(from_file)} problem(s)):\n"
                         + "\n".join(f"  - {p}" for p in from_file))
        if from_set:
            parts.append(f"invalid --set value(s) ({len(from_set)} problem(s)):\n"
                         + "\n".join(f"  - {p}" for p in from_set))
        super().__init__("\n".join(parts))


@dataclass(frozen=True)
class Field:
    """One leaf of the schema: its type, default, and an optional extra check."""

    kind: type | tuple[type, ...]
    default: Any = REQUIRED
    nullable: bool = False
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None
    doc: str = ""


@dataclass(frozen=True)
class MapOf:
    """A free-form mapping whose keys are strings and whose values have one of the given kinds."""

    kind: type | tuple[type, ...]
    default: dict = field(default_factory=dict)
    doc: str = ""


@dataclass(frozen=True)
class ListOf:
    """A list whose items have the given kind."""

    kind: type | tuple[type, ...]
    default: Any = REQUIRED
    min_len: int = 0
    doc: str = ""


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _open_unit(v):
    return None if 0 < v < 1 else "must be between 0 and 1 (exclusive)"


def _memory_size(v):
    return None if re.fullmatch(r"auto|\d+(\.\d+)?[mMgG]", v) else "must be auto or a size like 8g or 4096m"


def _unit(v):
    return None if 0 < v <= 1 else "must be in (0, 1]"


def _range_pair(v):
    if len(v) != 2 or not v[0] < v[1]:
        return "must be [low, high] with low < high"
    return None


def _grid_check(grid: dict) -> list[str]:
    problems = []
    for name, values in grid.items():
        if name not in ALS_GRID_PARAMS:
            problems.append(f"{name}: not an ALS parameter (expected one of {sorted(ALS_GRID_PARAMS)})")
            continue
        if not isinstance(values, list):
            values = [values]
        if not values:
            problems.append(f"{name}: empty list (give at least one value)")
            continue
        want = ALS_GRID_PARAMS[name]
        for v in values:
            ok = isinstance(v, want) and not (want is int and isinstance(v, bool))
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                ok = True
            if not ok:
                problems.append(f"{name}: expected {_a(want)}, got {v!r}")
            elif name in ("rank", "maxIter", "numUserBlocks", "numItemBlocks", "blockSize") and v < 1:
                problems.append(f"{name}: {v!r} must be >= 1")
            elif name == "regParam" and v <= 0:
                # Unregularized ALS solves singular systems for users or jokes with fewer ratings than the rank
                # and can give NaN factors without an error.
                problems.append(f"{name}: {v!r} must be > 0 (ALS needs regularization)")
            elif name == "alpha" and v < 0:
                problems.append(f"{name}: {v!r} must be >= 0")
    return problems


SCHEMA: dict[str, Any] = {
    "input": {
        "format": Field(str, "csv", choices=("csv", "parquet", "table"),
                        doc="csv or parquet file/directory at `path`, or a catalog `table`"),
        "path": Field(str, "data/jester_synthetic.csv", nullable=True,
                      doc="file or directory to read (csv, parquet)"),
        "table": Field(str, None, nullable=True, doc="catalog table, e.g. workspace.default.jester_data_1"),
        "layout": Field(str, "wide", choices=("wide", "long", "jester"),
                        doc="wide: one row per user, one column per joke; long: user, joke, rating; jester: "
                            "the original files (no header, count column first, users by row)"),
        "user_ids": Field(str, "auto", choices=("auto", "integer", "reindex"),
                          doc="auto: re-index when any id is not an integer in Int range"),
        "min_ratings_per_user": Field(int, 1, check=_positive,
                                      doc="users with fewer valid ratings are refused (too_few_ratings)"),
        "header": Field(bool, True, doc="csv: first line holds the column names"),
        "delimiter": Field(str, ",", doc="csv field delimiter"),
        "user_column": Field(str, "User", doc="wide layout: the column holding the user id"),
        "drop_columns": ListOf(str, ["Number of Jokes Rated"], doc="wide layout: columns that are not jokes"),
        "long_columns": {
            "user": Field(str, "user", doc="long layout: the user id column"),
            "joke": Field(str, "joke", doc="long layout: the joke id column"),
            "rating": Field(str, "rating", doc="long layout: the rating column"),
        },
        "missing_values": ListOf((int, float), [99], doc="sentinels that mean 'not rated' (never 0)"),
        "rating_range": ListOf((int, float), [-10.0, 10.0], doc="[low, high]; values outside are refused"),
    },
    "generate": {
        "path": Field(str, "data/jester_synthetic.csv", doc="where `generate` writes the wide CSV"),
        "users": Field(int, _GEN.users, check=_positive, doc="users (rows) in the synthetic table"),
        "jokes": Field(int, _GEN.jokes, check=_positive, doc="jokes (columns) in the synthetic table"),
        "rank": Field(int, _GEN.rank, check=_positive, doc="rank of the planted low-rank structure"),
        "noise": Field((int, float), _GEN.noise, check=_non_negative, doc="standard deviation of the noise"),
        "factor_scale": Field((int, float), _GEN.factor_scale, check=_non_negative,
                              doc="standard deviation of the low-rank part"),
        "user_bias": Field((int, float), _GEN.user_bias, check=_non_negative, doc="std of the user effects"),
        "joke_bias": Field((int, float), _GEN.joke_bias, check=_non_negative, doc="std of the joke effects"),
        "mean": Field((int, float), _GEN.mean, doc="centre of the ratings before clipping"),
        "min_ratings": Field(int, _GEN.min_ratings, check=_positive, doc="every user rates at least this many"),
        "mean_ratings": Field((int, float), _GEN.mean_ratings, check=_positive, doc="average ratings per user"),
        "gauge_jokes": Field(int, _GEN.gauge_jokes, check=_non_negative, doc="jokes rated by nearly everyone"),
        "zero_fraction": Field((int, float), _GEN.zero_fraction, check=_non_negative,
                               doc="extra share of exact 0.00 ratings (clicks on the centre)"),
        "seed": Field(int, _GEN.seed, doc="seeds the synthetic table"),
    },
    "split": {
        "test_fraction": Field((int, float), 0.2, check=_open_unit, doc="share of ratings held out for test"),
        "seed": Field(int, 42, doc="seeds the hash that splits ratings"),
    },
    "als": {
        "blocks": Field((int, str), "auto",
                        check=lambda v: None if v == "auto" or (isinstance(v, int) and v >= 1)
                        else "must be 'auto' or an integer >= 1",
                        doc="user and item blocks; auto = the cores Spark has"),
        "checkpoint_interval": Field(int, 10, check=_positive,
                doc="ALS checkpoints every this many iterations (needs a checkpoint dir)"),
        "nonnegative": Field(bool, False, doc="ALS non-negative factors"),
        "biases": Field(bool, False, doc="fit mu + user and joke offsets first, ALS on the residuals "
                                         "(a grid's biases list overrides it)"),
        "bias_reg": Field((int, float), 10.0, check=_non_negative,
                          doc="regularization of the biased model's offsets (added to each rating count)"),
        "seed": Field(int, 42, doc="seeds ALS's initialization"),
        "fallback": Field(str, "none", choices=("none", "numpy"),
                          doc="when the platform refuses Spark ALS: stop (none) or use NumPy ALS on the driver"),
    },
    "tune": {
        "grid": MapOf((int, float, bool, list), {"rank": [5], "regParam": [0.3, 0.5], "biases": [False, True],
                                "maxIter": [10]},
                      doc="ALS param -> list of values"),
        "train_ratio": Field((int, float), 0.8, check=_open_unit,
                doc="TrainValidationSplit's share of the training ratings used for fitting"),
        "parallelism": Field(int, 2, check=_positive, doc="grid points fitted at once"),
        "seed": Field(int, 42, doc="seeds TrainValidationSplit's split"),
        "refit_max_iter": Field(int, 20, nullable=True, check=_positive,
                                doc="maxIter for the final fit on all training ratings (null: the best grid "
                                    "point's)"),
    },
    "evaluate": {
        "k": Field(int, 10, check=_positive, doc="cut-off for precision@k, recall@k, MAP@k and NDCG@k"),
        "relevance_threshold": Field((int, float), 5.0, doc="ratings >= this count as relevant"),
    },
    "recommend": {
        "top_n": Field(int, 10, check=_positive, doc="jokes recommended per user"),
    },
    "baseline": {
        "max_users": Field(int, 100_000, nullable=True, check=_positive,
                           doc="collect at most this many users to the driver (null: no cap)"),
        "fraction": Field((int, float), None, nullable=True, check=_unit,
                          doc="sample this share of users first (null: all)"),
        "seed": Field(int, 42, doc="seeds the user sample and NumPy ALS's initialization"),
        "params": MapOf((int, float), {}, doc="rank, regParam, maxIter for NumPy ALS (default: Spark's model)"),
        "tol": Field((int, float), None, nullable=True, check=_positive,
                     doc="stop NumPy ALS when the training RMSE improves by less than this"),
        "dense_budget_mb": Field((int, float), 512, check=_non_negative,
                                 doc="largest dense users x jokes pattern NumPy ALS may build"),
        "bias_reg": Field((int, float), 10.0, check=_non_negative, doc="regularization of the bias baseline"),
    },
    "tracking": {
        "mlflow": Field(bool, False, doc="log each job run to MLflow (the mlflow extra)"),
        "tracking_uri": Field(str, None, nullable=True,
                              doc="MLflow tracking URI (null: databricks on Databricks, else a SQLite store "
                                  "in output.dir)"),
        "experiment": Field(str, "jester-als",
                            doc="experiment name (on Databricks a name that is not a path goes under "
                                "/Users/<you>/)"),
    },
    "bench": {
        "users": Field(int, 24983, check=_positive, doc="users in the benchmark's table"),
        "jokes": Field(int, 100, check=_positive, doc="jokes in the benchmark's table"),
        "rank": Field(int, 10, check=_positive, doc="ALS rank of every engine"),
        "regParam": Field((int, float), 0.1, check=_positive, doc="ALS regParam of every engine"),
        "maxIter": Field(int, 20, check=_positive, doc="ALS iterations of every engine"),
        "test_fraction": Field((int, float), 0.2, check=_open_unit, doc="share of ratings held out"),
        "seed": Field(int, 42, doc="seeds the table and the split"),
        "numpy_repeats": Field(int, 5, check=_positive, doc="NumPy ALS fits timed (median)"),
        "spark_repeats": Field(int, 3, check=_positive, doc="Spark ALS fits timed (median)"),
        "loop_repeats": Field(int, 1, check=_non_negative, doc="0 skips the seed's slow loop"),
        "memory_budget_mb": Field(int, 20_000, check=_positive,
                                  doc="peak RSS allowed to each engine's process; sizes past it are refused"),
        "time_budget_seconds": Field((int, float), 3600, check=_positive, doc="per engine"),
        "spark_driver_memory": Field(str, "auto", check=_memory_size,
                                     doc="Spark's driver heap: auto sizes it to the data, or e.g. 8g"),
        "work_dir": Field(str, None, nullable=True, doc="where the generated table goes (default: temp dir)"),
        "numpy_dense_budget_mb": Field((int, float), 4096, check=_non_negative,
                                       doc="largest dense users x jokes pattern + ratings NumPy ALS may build"),
        "target_numpy_seconds": Field((int, float), 0.35, check=_positive,
                doc="target: NumPy fit at most this many seconds"),
        "target_speedup": Field((int, float), 15.0, check=_positive,
                doc="target: NumPy at least this many times faster than Spark"),
    },
    "scale": {
        "users_axis": ListOf(int, [25_000, 100_000, 250_000, 1_000_000, 2_500_000],
                             doc="users at each point of the users axis (100 jokes)"),
        "jokes_axis": ListOf(int, [100, 1_000, 3_000, 10_000], doc="jokes at each point of the jokes axis"),
        "jokes_axis_users": Field(int, 25_000, check=_positive, doc="users on the jokes axis"),
        "jokes_axis_ratings_per_user": Field((int, float), 50, check=_positive,
                                             doc="mean ratings per user on the jokes axis (most rate few)"),
        "rank": Field(int, 10, check=_positive, doc="ALS rank in the study"),
        "regParam": Field((int, float), 0.1, check=_positive, doc="ALS regParam in the study"),
        "maxIter": Field(int, 10, check=_positive, doc="ALS iterations in the study"),
        "test_fraction": Field((int, float), 0.2, check=_open_unit, doc="share of ratings held out"),
        "seed": Field(int, 42, doc="seeds the tables and splits"),
        "repeats": Field(int, 3, check=_positive, doc="fits per point where one is cheap"),
        "repeat_below_ratings": Field(int, 2_000_000, check=_non_negative,
                                      doc="a point with fewer training ratings than this is cheap"),
        "time_budget_seconds": Field((int, float), 900, check=_positive, doc="per engine and point"),
        "memory_budget_mb": Field(int, 20_000, check=_positive, doc="peak RSS per engine and point"),
        "spark_driver_memory": Field(str, "14g", doc="local-mode JVM heap for the Spark worker"),
        "numpy_dense_budget_mb": Field((int, float), 4096, check=_non_negative,
                                       doc="NumPy ALS's dense rating-pattern budget in the study"),
        "work_dir": Field(str, None, nullable=True, doc="where generated tables go (default: temp dir)"),
        "machine_memory_gb": Field((int, float), 24, check=_positive, doc="the one machine of the predictions"),
        "cluster_executors": Field(int, 8, check=_positive, doc="the cluster of the predictions"),
        "cores_per_executor": Field(int, 4, check=_positive, doc="cores per executor of the predictions"),
    },
    "output": {
        "dir": Field(str, "output/local", doc="every output of a run goes under this directory (a local or "
                                              "mounted path)"),
        "mode": Field(str, "overwrite", choices=("overwrite", "error"),
                      doc="overwrite: replace a previous run's outputs; error: refuse"),
    },
    "spark": {
        "app_name": Field(str, "jester-als", doc="the Spark application name"),
        "master": Field(str, None, nullable=True, doc="leave null under spark-submit and Databricks"),
        "remote": Field(str, None, nullable=True, doc="Spark Connect URL, e.g. sc://localhost:15002"),
        "checkpoint_dir": Field(str, None, nullable=True, doc="default: a temporary directory"),
        "log_level": Field(str, "WARN", choices=("ERROR", "WARN", "INFO", "DEBUG"), doc="Spark's own log level"),
        "conf": MapOf((str, int, float, bool), {},
                      doc="extra Spark settings applied when the job builds the session (over the local-mode "
                          "defaults: shuffle partitions 2 x cores, driver memory 4g, console progress bar "
                          "only on a terminal)"),
    },
    "log_level": Field(str, "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), doc="the job's log level"),
}


_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list", dict: "mapping"}


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)


def _a(kind) -> str:
    """The type as people write it after "expected": "an integer", "a number or a string"."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) == {int, float}:
        kinds = (float,)  # an integer is a number
    names = [_TYPE_NAMES.get(k, k.__name__) for k in kinds]
    return " or ".join(("an " if name[0] in "aeiou" else "a ") + name for name in names)


def _is_kind(value, kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _coerce(value, kind):
    """Ints stand for floats where a number is wanted (``regParam: 1``)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and int not in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _validate(schema: dict, values: Any, path: str, problems: list[str]) -> dict:
    if not isinstance(values, dict):
        problems.append(f"{path or '<top>'}: expected a mapping, got {type(values).__name__}")
        values = {}
    resolved = {}
    for key in values:
        if key not in schema:
            known = ", ".join(sorted(schema))
            problems.append(f"{path + '.' if path else ''}{key}: unknown key (expected one of: {known})")
    for key, spec in schema.items():
        key_path = f"{path}.{key}" if path else key
        present = key in values
        value = values.get(key)
        if isinstance(spec, dict):
            resolved[key] = _validate(spec, value if present and value is not None else {}, key_path, problems)
        elif isinstance(spec, MapOf):
            value = copy.deepcopy(spec.default) if not present or value is None else value
            if not isinstance(value, dict):
                problems.append(f"{key_path}: expected a mapping, got {type(value).__name__}")
                value = {}
            for k, v in value.items():
                if not _is_kind(v, spec.kind):
                    problems.append(f"{key_path}.{k}: expected {_a(spec.kind)}, got {v!r}")
            if key_path == "tune.grid":
                if not value:
                    problems.append(f"{key_path}: empty grid (name at least one ALS parameter)")
                problems.extend(f"{key_path}.{p}" for p in _grid_check(value))
                value = {k: [_coerce(x, ALS_GRID_PARAMS.get(k, object)) for x in (v if isinstance(v, list) else [v])]
                         for k, v in value.items()}
            resolved[key] = value
        elif isinstance(spec, ListOf):
            if not present:
                if spec.default is REQUIRED:
                    problems.append(f"{key_path}: required (a list of {_type_name(spec.kind)} values)")
                resolved[key] = copy.deepcopy(spec.default) if spec.default is not REQUIRED else None
                continue
            if not isinstance(value, list):
                problems.append(f"{key_path}: expected a list of {_type_name(spec.kind)} values, got {value!r}")
                resolved[key] = copy.deepcopy(spec.default)
                continue
            bad = [v for v in value if not _is_kind(v, spec.kind)]
            if bad:
                problems.append(f"{key_path}: expected a list of {_type_name(spec.kind)} values, got item(s) {bad!r}")
            if len(value) < spec.min_len:
                problems.append(f"{key_path}: needs at least {spec.min_len} item(s)")
            if key_path == "input.rating_range" and not bad:
                msg = _range_pair(value)
                if msg:
                    problems.append(f"{key_path}: {msg}, got {value!r}")
            resolved[key] = value
        else:
            if not present:
                if spec.default is REQUIRED:
                    problems.append(f"{key_path}: required ({_a(spec.kind)})"
                                    + (f": {spec.doc}" if spec.doc else ""))
                    resolved[key] = None
                else:
                    resolved[key] = copy.deepcopy(spec.default)
                continue
            if value is None:
                if not spec.nullable:
                    problems.append(f"{key_path}: must not be null (expected {_a(spec.kind)})")
                resolved[key] = None
                continue
            if not _is_kind(value, spec.kind):
                problems.append(f"{key_path}: expected {_a(spec.kind)}, got {value!r}")
                resolved[key] = value
                continue
            value = _coerce(value, spec.kind)
            if spec.choices and value not in spec.choices:
                problems.append(f"{key_path}: expected one of {list(spec.choices)}, got {value!r}")
            elif spec.check:
                msg = spec.check(value)
                if msg:
                    problems.append(f"{key_path}: {msg}, got {value!r}")
            resolved[key] = value
    return resolved


def _cross_checks(cfg: dict, problems: list[str]) -> None:
    inp = cfg["input"]
    if inp["format"] == "table" and not inp["table"]:
        problems.append("input.table: required when input.format is 'table'")
    if inp["format"] in ("csv", "parquet") and not inp["path"]:
        problems.append(f"input.path: required when input.format is '{inp['format']}'")
    if isinstance(inp.get("delimiter"), str) and len(inp["delimiter"]) != 1:
        problems.append(f"input.delimiter: expected a single character, got {inp['delimiter']!r}")
    gen = cfg["generate"]
    if all(isinstance(gen.get(k), int) for k in ("users", "jokes", "min_ratings", "gauge_jokes")):
        if gen["min_ratings"] > gen["jokes"]:
            problems.append(f"generate.min_ratings: {gen['min_ratings']} exceeds generate.jokes ({gen['jokes']})")
        if gen["gauge_jokes"] > gen["jokes"]:
            problems.append(f"generate.gauge_jokes: {gen['gauge_jokes']} exceeds generate.jokes ({gen['jokes']})")
        if isinstance(gen.get("mean_ratings"), (int, float)) and not (
                gen["min_ratings"] <= gen["mean_ratings"] <= gen["jokes"]):
            problems.append(f"generate.mean_ratings: {gen['mean_ratings']} must lie between generate.min_ratings "
                            f"and generate.jokes")
    params = cfg["baseline"].get("params") or {}
    for name in params:
        if name not in ("rank", "regParam", "maxIter"):
            problems.append(f"baseline.params.{name}: unknown (expected rank, regParam, maxIter)")
    if params and set(params) != {"rank", "regParam", "maxIter"}:
        problems.append("baseline.params: give all of rank, regParam, maxIter (or none to use Spark's)")
    if isinstance(params.get("regParam"), (int, float)) and params["regParam"] <= 0:
        problems.append(f"baseline.params.regParam: {params['regParam']!r} must be > 0 (ALS needs regularization)")
    out = cfg["output"].get("dir")
    if isinstance(out, str) and "://" not in out and os.path.isfile(out):
        problems.append(f"output.dir: {out!r} is a file (expected a directory or a path that does not exist)")
    if cfg["spark"].get("master") and cfg["spark"].get("remote"):
        problems.append("spark.remote: cannot be combined with spark.master (choose one)")


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], typed value). Values are YAML: 5, 0.1, true, [5, 10], null."""
    if "=" not in item:
        raise ConfigError([f"--set {item!r}: expected key.path=value"])
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError([f"--set {item!r}: expected key.path=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError([f"--set {key}: value {raw!r} is not valid YAML ({exc.problem})"]) from None
    # spark.conf keys contain dots themselves: everything after "spark.conf." is one key.
    parts = key.split(".")
    if parts[:2] == ["spark", "conf"] and len(parts) > 2:
        parts = ["spark", "conf", ".".join(parts[2:])]
    return parts, value


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    raw = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                node[part] = nxt
            node = nxt
        node[parts[-1]] = value
    return raw


def _attribute(problem: str, overrides: list[str]) -> str:
    """Name the ``--set`` a problem comes from when its key (or a key above it) was set on the command line,
    so that the user looks at the command, not at the file."""
    key = problem.split(":", 1)[0]
    for item in reversed(overrides):  # the last --set of a key wins
        parts, _ = parse_override(item)
        set_key = ".".join(parts)
        if key == set_key or key.startswith(set_key + "."):
            return f"--set {item}: {problem.split(': ', 1)[1] if ': ' in problem else problem}" + (
                f" (at {key})" if key != set_key else "")
    return problem


def packaged_configs() -> dict[str, str]:
    """The YAML configs shipped inside the package (the repository's ``conf/``), by name: local, bench, ..."""
    from importlib import resources

    folder = resources.files("jester_als").joinpath("conf")
    if not folder.is_dir():
        return {}
    return {entry.name.removesuffix(".yaml"): str(entry) for entry in folder.iterdir()
            if entry.name.endswith(".yaml")}


def resolve_conf_path(path: str) -> str:
    """Find a config file: the path itself; under spark-submit cluster mode, a file shipped with ``--files``
    in the driver's working directory under its base name; else a packaged default named like the file
    (``--conf bench`` or ``--conf conf/bench.yaml`` after ``pip install``)."""
    if os.path.exists(path):
        return path
    shipped = os.path.basename(path)
    if os.path.exists(shipped):
        return shipped
    packaged = packaged_configs()
    name = shipped.removesuffix(".yaml")
    if name in packaged:
        return packaged[name]
    raise ConfigError([f"config file {path!r} does not exist (also looked for {shipped!r} in {os.getcwd()}); "
                       f"packaged configs: {', '.join(sorted(packaged)) or 'none'}"])


def load_config(path: str | None, overrides: Iterable[str] = (), *, base: dict | None = None) -> dict:
    """Read YAML from ``path`` (or start from ``base``), apply ``--set`` overrides, validate, fill defaults.

    Raises
    ------
    ConfigError
        With every problem found, each naming its key path.
    """
    source = None
    raw: Any = copy.deepcopy(base) if base else {}
    if path is not None:
        source = resolve_conf_path(path)
        try:
            with open(source, encoding="utf-8") as fh:
                raw = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source) from None
        if not isinstance(raw, dict):
            raise ConfigError([f"expected a mapping at the top, got {type(raw).__name__}"], source)
    overrides = list(overrides)
    raw = apply_overrides(raw, overrides)
    problems: list[str] = []
    cfg = _validate(SCHEMA, raw, "", problems)
    if not problems:
        _cross_checks(cfg, problems)
    if problems:
        raise ConfigError([_attribute(problem, overrides) for problem in problems], source)
    cfg["_source"] = source
    return cfg


README_TABLE_START = "<!-- config table: generated by `python -m jester_als.config --readme README.md` -->"
README_TABLE_END = "<!-- end of config table -->"


def _yaml_value(value) -> str:
    if value is REQUIRED:
        return "required"
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def config_table() -> str:
    """The README's config table, from the schema: every key, its type, its default, what it does."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, kind, default, doc in describe_schema(yaml_defaults=True):
        lines.append(f"| `{key}` | {kind} | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)


def write_readme_table(readme: str) -> bool:
    """Replace the table between the markers in ``readme``; True when the file changed."""
    with open(readme, encoding="utf-8") as fh:
        text = fh.read()
    head, _, rest = text.partition(README_TABLE_START)
    _, _, tail = rest.partition(README_TABLE_END)
    new = f"{head}{README_TABLE_START}\n{config_table()}\n{README_TABLE_END}{tail}"
    if new != text:
        with open(readme, "w", encoding="utf-8") as fh:
            fh.write(new)
    return new != text


def describe_schema(schema: dict = SCHEMA, prefix: str = "", *,
                    yaml_defaults: bool = False) -> list[tuple[str, str, str, str]]:
    """Rows of (key, type, default, doc) for documentation."""
    rows = []
    for key, spec in schema.items():
        path = f"{prefix}{key}"
        if isinstance(spec, dict):
            rows.extend(describe_schema(spec, path + ".", yaml_defaults=yaml_defaults))
        else:
            if yaml_defaults:
                default = _yaml_value(spec.default)
            else:
                default = "required" if spec.default is REQUIRED else repr(spec.default)
            kind = f"list of {_type_name(spec.kind)}" if isinstance(spec, ListOf) else (
                "mapping" if isinstance(spec, MapOf) else _type_name(spec.kind))
            doc = spec.doc
            if yaml_defaults and getattr(spec, "choices", None):
                choices = ", ".join(map(str, spec.choices))
                doc = f"{doc} (one of: {choices})" if doc else f"one of: {choices}"
            rows.append((path, kind, default, doc))
    return rows


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["--readme"] or len(sys.argv) != 3:
        print("usage: python -m jester_als.config --readme README.md", file=sys.stderr)
        sys.exit(2)
    print("updated" if write_readme_table(sys.argv[2]) else "up to date", sys.argv[2])
