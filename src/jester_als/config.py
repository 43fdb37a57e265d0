"""Typed YAML configuration: the models, loading, ``--set`` overrides and validation.

The config is :class:`JesterConfig`, one pydantic model per section: each key's type is its annotation, its
default and meaning are stated once in ``key(...)`` (the config reference in docs/config.md is generated from
them), the checks types cannot state (``regParam > 0``, a memory size) are validators beside the keys, the
checks across keys are validators of their section, and ``tune.grid`` is a model of its own (:class:`AlsGrid`).
Validation is strict (``"5"`` is not an integer, ``true`` is not a number; an integer stands for a number).
Every error is collected and reported at once, before Spark starts, in this project's words by one formatter
(:func:`_problems`: ``split.seed: expected an integer, got 'forty-two'``), and a value given with ``--set`` is
reported as a ``--set`` problem. :func:`load_config` returns the model: the jobs read attributes and hand each
function the section it uses; ``model_dump()`` is for where a plain mapping leaves the program (the run's
manifest in metrics.json, MLflow's params).
"""

from __future__ import annotations

import copy
import os
import re
import types
from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from jester_als.generate import GAUGE_JOKES
from jester_als.generate import GeneratorParams as _GEN


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
            parts.append(
                f"invalid config{where} ({len(from_file)} problem(s)):\n" + "\n".join(f"  - {p}" for p in from_file)
            )
        if from_set:
            parts.append(
                f"invalid --set value(s) ({len(from_set)} problem(s)):\n" + "\n".join(f"  - {p}" for p in from_set)
            )
        super().__init__("\n".join(parts))


_TYPE_NAMES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list", dict: "mapping"}


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_TYPE_NAMES.get(k, getattr(k, "__name__", str(k))) for k in kinds)


def _a(kind) -> str:
    """The type as people write it after "expected": "an integer", "a number or a string"."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if set(kinds) >= {int, float}:
        kinds = tuple(k for k in kinds if k is not int)  # an integer is a number
    names = [_TYPE_NAMES.get(k, k.__name__) for k in kinds]
    return " or ".join(("an " if name[0] in "aeiou" else "a ") + name for name in names)


def _is_a(value, kind: type) -> bool:
    """Strict typing as the config states it: a bool is not an integer, and an integer stands for a number."""
    return type(value) is kind or (kind is float and type(value) is int)


def _coerce(value, kind):
    """Ints stand for floats where a number is wanted (``regParam: 1``)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _checked(message: Callable[[Any], str | None]) -> AfterValidator:
    """An extra check on a value that already has its type: ``message`` returns what is wrong, or None."""

    def check(value):
        problem = message(value)
        if problem:
            raise ValueError(problem)
        return value

    return AfterValidator(check)


def _positive(v):
    return None if v > 0 else "must be > 0"


def _non_negative(v):
    return None if v >= 0 else "must be >= 0"


def _open_unit(v):
    return None if 0 < v < 1 else "must be between 0 and 1 (exclusive)"


def _unit(v):
    return None if 0 < v <= 1 else "must be in (0, 1]"


def _memory_size(v):
    return None if re.fullmatch(r"auto|\d+(\.\d+)?[mMgG]", v) else "must be auto or a size like 8g or 4096m"


def size_mb(setting: str) -> int:
    """MB of a JVM memory size as the config writes it ("16g", "4096m")."""
    return int(float(setting[:-1]) * {"g": 1024, "m": 1}[setting[-1].lower()])


def _range_pair(v):
    return None if len(v) == 2 and v[0] < v[1] else "must be [low, high] with low < high"


def _single_character(v):
    return None if len(v) == 1 else "expected a single character"


def _distinct(v):
    return None if len(set(v)) == len(v) else "must not repeat a value"


def _jvm_options(v):
    return None if all(option.startswith("-") for option in v) else "each JVM option must start with '-'"


def _blocks(v):
    ok = v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1)
    return None if ok else "must be 'auto' or an integer >= 1"


def _kinds(*kinds: type) -> AfterValidator:
    """A value of any of ``kinds`` (a bool is not an integer): for the few keys that take more than one type."""

    def message(value):
        if any(_is_a(value, kind) for kind in kinds):
            return None
        return f"expected {_a(kinds)}"

    return _checked(message)


# The types of the schema. Strict: "5" is not an integer and true is not a number; an integer stands for a number.
PositiveInt = Annotated[int, _checked(_positive)]
NonNegativeInt = Annotated[int, _checked(_non_negative)]
Number = float
PositiveNumber = Annotated[float, _checked(_positive)]
NonNegativeNumber = Annotated[float, _checked(_non_negative)]
Fraction = Annotated[float, _checked(_open_unit)]
# Values whose type is one of several: their README type is given by ``kind``.
IntOrNumber = Annotated[Any, _kinds(int, float)]
SparkValue = Annotated[Any, _kinds(str, int, float, bool)]


class Section(BaseModel):
    """A mapping of the config: unknown keys are refused, values are not converted between types, and a
    section given as null (``tune:`` with nothing under it) takes every default."""

    model_config = ConfigDict(strict=True, extra="forbid")
    # What a key the section does not have is called, with {known}: the keys it has.
    unknown_key: ClassVar[str] = "unknown key (expected one of: {known})"
    # Shown and documented as one key whose value is a mapping (tune.grid), not as a section of keys.
    one_key: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data):
        if data is None:
            return {}
        if isinstance(data, dict):  # `conf:` or `grid:` with nothing under it: the default mapping
            return {
                k: v
                for k, v in data.items()
                if not (v is None and k in cls.model_fields and _is_mapping(_plain(cls.model_fields[k].annotation)))
            }
        return data


def _is_mapping(annotation) -> bool:
    """A key whose value is a mapping given whole: a dict, or a section shown as one key (tune.grid)."""
    return get_origin(annotation) is dict or annotation is dict or (_is_section(annotation) and annotation.one_key)


def _problem(*messages: str) -> PydanticCustomError:
    """Problems raised by a check, each ``"sub.key: message"`` (under the checked key) or ``"message"``."""
    return PydanticCustomError("problems", "{problems}", {"problems": list(messages)})


def key(default: Any, doc: str, *, kind: str | None = None) -> Any:
    """One key: its default (stated here and nowhere else) and what it does (the README's table)."""
    extra = {"kind": kind} if kind else None
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda: copy.deepcopy(default), description=doc, json_schema_extra=extra)
    return Field(default, description=doc, json_schema_extra=extra)


def section(model: type[Section]) -> Any:
    return Field(default_factory=model)


class LongColumns(Section):
    user: str = key("user", "long layout: the user id column")
    joke: str = key("joke", "long layout: the joke id column")
    rating: str = key("rating", "long layout: the rating column")


class InputConfig(Section):
    format: Literal["csv", "parquet", "table", "xls"] = key(
        "csv",
        "csv or parquet file/directory at `path`, a catalog `table`, or xls: the original Excel files (a "
        "file, a directory of them or a glob; layout jester; the excel extra)",
    )
    path: str | None = key("data/jester_synthetic.csv", "file or directory to read (csv, parquet)")
    table: str | None = key(None, "catalog table, e.g. workspace.default.jester_data_1")
    layout: Literal["wide", "long", "jester"] = key(
        "wide",
        "wide: one row per user, one column per joke; long: user, joke, rating; jester: the original files "
        "(no header, count column first, users by row)",
    )
    user_ids: Literal["auto", "integer", "reindex"] = key(
        "auto", "auto: re-index when any id is not an integer in Int range"
    )
    min_ratings_per_user: PositiveInt = key(1, "users with fewer valid ratings are refused (too_few_ratings)")
    header: bool = key(True, "csv: first line holds the column names")
    delimiter: Annotated[str, _checked(_single_character)] = key(",", "csv field delimiter")
    user_column: str = key("User", "wide layout: the column holding the user id")
    drop_columns: list[str] = key(["Number of Jokes Rated"], "wide layout: columns that are not jokes")
    long_columns: LongColumns = section(LongColumns)
    missing_values: list[Number] = key([99], "sentinels that mean 'not rated' (never 0)")
    rating_range: Annotated[list[Number], _checked(_range_pair)] = key(
        [-10.0, 10.0], "[low, high]; values outside are refused"
    )
    reference_scan: bool = key(
        True,
        "time a plain read-melt-write of the same input before prepare (the session's first job) and after it, "
        "and report prepare's time against the second (data.timing); false saves both",
    )
    one_pass: bool = key(
        True,
        "prepare a wide table with integer user ids, or the original Excel files, in one pass over the input "
        "(false: always the general "
        "path, which caches the input; both give the same outputs and counts)",
    )

    @model_validator(mode="after")
    def _where_to_read(self):
        problems = []
        if self.format == "table" and not self.table:
            problems.append("table: required when input.format is 'table'")
        if self.format == "xls" and self.layout != "jester":
            problems.append(
                f"layout: must be 'jester' with input.format 'xls' (the original files have no header "
                f"row), got {self.layout!r}"
            )
        if self.format in ("csv", "parquet", "xls") and not self.path:
            problems.append(f"path: required when input.format is '{self.format}'")
        if problems:
            raise _problem(*problems)
        return self


class GenerateConfig(Section):
    path: str = key("data/jester_synthetic.csv", "where `generate` writes the wide CSV")
    users: PositiveInt = key(_GEN.users, "users (rows) in the synthetic table")
    jokes: PositiveInt = key(_GEN.jokes, "jokes (columns) in the synthetic table")
    marginal: Literal["jester", "clip"] = key(
        _GEN.marginal,
        "jester: the latent's standard score mapped onto the real ratings' distribution; clip: "
        "`mean` + latent clipped to [-10, 10] (effects, factors and noise in rating units)",
    )
    rank: PositiveInt = key(_GEN.rank, "number of planted factors")
    spectrum_decay: Annotated[float, _checked(_unit)] = key(
        _GEN.spectrum_decay, "each planted factor's variance is this times the previous one's (1: equal factors)"
    )
    noise: NonNegativeNumber = key(_GEN.noise, "standard deviation of the noise")
    factor_scale: NonNegativeNumber = key(_GEN.factor_scale, "standard deviation of the low-rank part")
    user_bias: NonNegativeNumber = key(_GEN.user_bias, "std of the user effects")
    joke_bias: NonNegativeNumber = key(_GEN.joke_bias, "std of the joke effects")
    mean: Number = key(_GEN.mean, "clip marginal: centre of the ratings before clipping")
    min_ratings: PositiveInt = key(_GEN.min_ratings, "every user rates at least this many")
    mean_ratings: PositiveNumber = key(_GEN.mean_ratings, "average ratings per user")
    share_rated_all: Annotated[float, _checked(lambda v: None if 0 <= v < 1 else "must be in [0, 1)")] = key(
        _GEN.share_rated_all, "share of users who rate every joke (tables of up to 150 jokes)"
    )
    gauge_jokes: NonNegativeInt = key(
        _GEN.gauge_jokes, "jokes rated by nearly everyone (the real set's ids first: the ten gauge jokes, then 20 more)"
    )
    zero_fraction: NonNegativeNumber = key(
        _GEN.zero_fraction, "extra share of exact 0.00 ratings (clicks on the centre)"
    )
    seed: int = key(_GEN.seed, "seeds the synthetic table")

    @model_validator(mode="after")
    def _counts_fit_the_jokes(self):
        problems = []
        if self.min_ratings > self.jokes:
            problems.append(f"min_ratings: {self.min_ratings} exceeds generate.jokes ({self.jokes})")
        if self.gauge_jokes > self.jokes:
            problems.append(f"gauge_jokes: {self.gauge_jokes} exceeds generate.jokes ({self.jokes})")
        if not self.min_ratings <= self.mean_ratings <= self.jokes:
            problems.append(
                f"mean_ratings: {self.mean_ratings} must lie between generate.min_ratings and generate.jokes"
            )
        if problems:
            raise _problem(*problems)
        return self


class SplitConfig(Section):
    test_fraction: Fraction = key(0.2, "share of ratings held out for test")
    seed: int = key(42, "seeds the hash that splits ratings")


class AlsConfig(Section):
    blocks: Annotated[Any, _checked(_blocks)] = key(
        "auto", "user and item blocks; auto = the cores Spark has", kind="integer or string"
    )
    checkpoint_interval: PositiveInt = key(
        10,
        "ALS checkpoints every this many iterations (needs a checkpoint dir); a fit of at most this many "
        "iterations writes no checkpoint",
    )
    nonnegative: bool = key(False, "ALS non-negative factors")
    biases: bool = key(
        False, "fit mu + user and joke offsets first, ALS on the residuals (a grid's biases list overrides it)"
    )
    bias_reg: NonNegativeNumber = key(10.0, "regularization of the biased model's offsets (added to each rating count)")
    seed: int = key(42, "seeds ALS's initialization")
    fallback: Literal["none", "numpy"] = key(
        "none", "when the platform refuses Spark ALS: stop (none) or use NumPy ALS on the driver"
    )


def _grid_value(kind: type, floor: float | None = None, why: str = "", *, strict: bool = False) -> Any:
    """The values of one grid key: a list (a single value is a list of one) of at least one ``kind``, each at
    least ``floor`` (above it with ``strict``); a bad value is named as given, ``rank: 0 must be >= 1``."""

    def check(value):
        if not _is_a(value, kind):
            raise _problem(f"expected {_a(kind)}, got {value!r}")
        if floor is not None and (value <= floor if strict else value < floor):
            raise _problem(f"{value!r} must be {'>' if strict else '>='} {floor:g}{why}")
        return _coerce(value, kind)

    item = Annotated[Any, BeforeValidator(check)]
    return Annotated[
        list[item] | None,
        BeforeValidator(lambda v: v if isinstance(v, list) or v is None else [v]),
        Field(min_length=1),
    ]


class AlsGrid(Section):
    """``tune.grid``: ALS param -> the values to try. Every param of Spark's ALS estimator but the column names
    and the explicit/implicit switch (this project is explicit feedback only), and ``biases``. The grid keeps
    the order its keys were given in (Spark's grid, and so the order of the points, follows it)."""

    unknown_key: ClassVar[str] = "not an ALS parameter (expected one of {names})"
    one_key: ClassVar[bool] = True

    rank: _grid_value(int, 1) = None
    maxIter: _grid_value(int, 1) = None
    # Unregularized ALS solves singular systems for users or jokes with fewer ratings than the rank and can give
    # NaN factors without an error.
    regParam: _grid_value(float, 0, " (ALS needs regularization)", strict=True) = None
    alpha: _grid_value(float, 0) = None
    nonnegative: _grid_value(bool) = None
    numUserBlocks: _grid_value(int, 1) = None
    numItemBlocks: _grid_value(int, 1) = None
    checkpointInterval: _grid_value(int) = None
    blockSize: _grid_value(int, 1) = None
    biases: _grid_value(bool) = None  # not Spark's: the biased model (jester_als.biased) or the plain one
    _order: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _keep_order(cls, data, handler):
        grid = handler(data)
        if isinstance(data, dict):
            grid._order = tuple(name for name in data if name in cls.model_fields)
        elif isinstance(data, AlsGrid):
            grid._order = data._order
        if not grid._order:
            raise _problem("empty grid (name at least one ALS parameter)")
        return grid

    @model_serializer(mode="wrap")
    def _given_keys(self, handler) -> dict:
        values = handler(self)
        return {name: values[name] for name in self._order}

    def as_dict(self) -> dict[str, list]:
        """The keys given, in their order, with their values: what Spark's ParamGridBuilder is given."""
        return {name: list(getattr(self, name)) for name in self._order}


def _grid(values: dict) -> Any:
    return Field(default_factory=lambda: AlsGrid.model_validate(values), description="ALS param -> list of values")


class TuneConfig(Section):
    grid: AlsGrid = _grid({"rank": [5, 10, 20], "regParam": [0.3, 0.5], "biases": [False, True], "maxIter": [5]})
    train_ratio: Fraction = key(0.8, "TrainValidationSplit's share of the training ratings used for fitting")
    parallelism: PositiveInt = key(2, "grid points fitted at once")
    seed: int = key(42, "seeds TrainValidationSplit's split")
    refit_max_iter: PositiveInt | None = key(
        20, "maxIter for the final fit on all training ratings (null: the best grid point's)"
    )
    scale_reg_param: bool = key(
        True,
        "the grid's regParam values are for a 20-point scale (Jester's) and are multiplied by the span of "
        "input.rating_range / 20 (x 0.2 on a 1-5 scale); false: used as given",
    )


# Where relevance starts on the rating scale when evaluate.relevance_threshold is null: Jester's usual 5.0 of -10..10.
RELEVANT_SHARE = 0.75


class EvaluateConfig(Section):
    k: PositiveInt = key(10, "cut-off for precision@k, recall@k, MAP@k and NDCG@k")
    relevance_threshold: Number | None = key(
        None,
        "ratings >= this count as relevant, above the bottom of input.rating_range and at most its top (null: "
        "three quarters up it: 5.0 on -10..10, 4.0 on 1..5)",
    )


class RecommendConfig(Section):
    top_n: PositiveInt = key(10, "jokes recommended per user")


def _numpy_params(params: dict) -> dict:
    problems = [
        f"{name}: unknown (expected rank, regParam, maxIter)"
        for name in params
        if name not in ("rank", "regParam", "maxIter")
    ]
    if params and not problems and set(params) != {"rank", "regParam", "maxIter"}:
        problems.append("give all of rank, regParam, maxIter (or none to use Spark's)")
    if params.get("regParam", 1) <= 0:
        problems.append(f"regParam: {params['regParam']!r} must be > 0 (ALS needs regularization)")
    if problems:
        raise _problem(*problems)
    return params


class NewUsersConfig(Section):
    path: str | None = key(
        None,
        "foldin: new users' ratings, read with input's settings (format, layout, missing "
        "values, rating range) unless given below",
    )
    format: Literal["csv", "parquet", "table", "xls"] | None = key(
        None, "foldin: the new users' format (null: input.format)"
    )
    layout: Literal["wide", "long", "jester"] | None = key(None, "foldin: the new users' layout (null: input.layout)")
    engine: Literal["auto", "spark", "numpy"] = key(
        "auto",
        "foldin: spark (inside Spark tasks, no collect), numpy (on the driver), auto (numpy for a NumPy "
        "model, else spark)",
    )
    evaluate: bool = key(True, "pipeline: score fold-in on users held out whole, revealing k of their ratings")
    holdout_fraction: Fraction = key(0.1, "share of users held out whole for that evaluation")
    reveal: list[PositiveInt] = key(
        [1, 2, 5, 10, 20],
        "k random ratings revealed per held-out user (the gauge jokes are revealed too, as Jester did)",
    )
    gauge_jokes: Annotated[list[PositiveInt], _checked(_distinct)] = key(
        list(GAUGE_JOKES),
        "the jokes every new user is shown first (Jester's ten gauge jokes); scored only where each was rated by "
        "nearly every sampled user ([]: not scored)",
    )
    max_users: PositiveInt = key(5000, "at most this many held-out users are scored (collected to the driver)")
    seed: int = key(42, "seeds which users are held out and which ratings are revealed")


class BaselineConfig(Section):
    max_users: PositiveInt | None = key(100_000, "collect at most this many users to the driver (null: no cap)")
    fraction: Annotated[float, _checked(_unit)] | None = key(None, "sample this share of users first (null: all)")
    seed: int = key(42, "seeds the user sample and NumPy ALS's initialization")
    params: Annotated[dict[str, IntOrNumber], AfterValidator(_numpy_params)] = key(
        {}, "rank, regParam, maxIter for NumPy ALS (default: Spark's model)"
    )
    tol: PositiveNumber | None = key(None, "stop NumPy ALS when the training RMSE improves by less than this")
    dense_budget_mb: NonNegativeNumber = key(512, "largest dense users x jokes pattern NumPy ALS may build")
    bias_reg: NonNegativeNumber = key(10.0, "regularization of the bias baseline")


class TrackingConfig(Section):
    mlflow: bool = key(False, "log each job run to MLflow (the mlflow extra)")
    tracking_uri: str | None = key(
        None, "MLflow tracking URI (null: databricks on Databricks, else a SQLite store in output.dir)"
    )
    experiment: str = key(
        "jester-als", "experiment name (on Databricks a name that is not a path goes under /Users/<you>/)"
    )
    registered_model: str | None = key(
        None,
        "register the logged model under this name (Unity Catalog: "
        "catalog.schema.model) and point model_alias at the new version",
    )
    model_alias: str = key("candidate", "the alias the registered version gets")


class BenchConfig(Section):
    users: PositiveInt = key(24983, "users in the benchmark's table")
    jokes: PositiveInt = key(100, "jokes in the benchmark's table")
    rank: PositiveInt = key(10, "ALS rank of every engine")
    regParam: PositiveNumber = key(0.1, "ALS regParam of every engine")
    maxIter: PositiveInt = key(20, "ALS iterations of every engine")
    test_fraction: Fraction = key(0.2, "share of ratings held out")
    seed: int = key(42, "seeds the table and the split")
    numpy_repeats: PositiveInt = key(5, "NumPy ALS fits timed (median)")
    spark_repeats: PositiveInt = key(3, "Spark ALS fits timed (median)")
    loop_repeats: NonNegativeInt = key(1, "0 skips the seed's slow loop")
    memory_budget_mb: PositiveInt = key(20_000, "peak RSS allowed to each engine's process; sizes past it are refused")
    time_budget_seconds: PositiveNumber = key(3600, "per engine")
    spark_driver_memory: Annotated[str, _checked(_memory_size)] = key(
        "auto", "Spark's driver heap: auto sizes it to the data, or e.g. 8g"
    )
    work_dir: str | None = key(None, "where the generated table goes (made if missing; default: a temp dir)")
    numpy_dense_budget_mb: NonNegativeNumber = key(
        4096, "largest dense users x jokes pattern + ratings NumPy ALS may build"
    )
    target_numpy_seconds: PositiveNumber = key(0.35, "target: NumPy fit at most this many seconds")
    target_speedup: PositiveNumber = key(15.0, "target: NumPy at least this many times faster than Spark")


class ScaleConfig(Section):
    users_axis: list[int] = key(
        [25_000, 100_000, 250_000, 1_000_000, 2_500_000, 4_000_000],
        "users at each point of the users axis (100 jokes, 72.6 ratings per user); the "
        "largest meant to pass the memory budget",
    )
    limit_probes: list[PositiveNumber] = key(
        [0.8, 1.2],
        "users-axis sizes past the listed ones, as multiples of the users at "
        "which an engine's memory model reaches the budget (Spark: at which "
        "its cached blocks fill its heap's unified memory), run for an engine "
        "that fitted every listed size (empty: none)",
    )
    limit_probe_iterations: PositiveInt = key(2, "ALS iterations of a limit probe (its memory peaks in the first)")
    density_axis: list[PositiveNumber] = key(
        [5, 10, 25, 50, 100], "mean ratings per user at each point of the density axis"
    )
    density_axis_users: PositiveInt = key(100_000, "users on the density axis")
    density_axis_jokes: PositiveInt = key(1_000, "jokes on the density axis")
    jokes_axis: list[int] = key(
        [100, 1_000, 5_000, 17_770], "jokes at each point of the jokes axis (17,770: Netflix's item count)"
    )
    jokes_axis_users: PositiveInt = key(120_000, "users on the jokes axis")
    jokes_axis_ratings_per_user: PositiveNumber = key(
        200, "mean ratings per user on the jokes axis (at most 72.6% of the jokes)"
    )
    rank: PositiveInt = key(10, "ALS rank in the study")
    regParam: PositiveNumber = key(0.1, "ALS regParam in the study")
    maxIter: PositiveInt = key(10, "ALS iterations in the study")
    test_fraction: Fraction = key(0.2, "share of ratings held out")
    seed: int = key(42, "seeds the tables and splits")
    repeats: PositiveInt = key(3, "fits per point where one is cheap")
    repeat_below_ratings: NonNegativeInt = key(2_000_000, "a point with fewer training ratings than this is cheap")
    time_budget_seconds: PositiveNumber = key(600, "per engine and point")
    memory_budget_mb: PositiveInt = key(20_000, "peak RSS per engine and point")
    spark_driver_memory: str = key("16g", "local-mode JVM heap for the Spark worker")
    numpy_dense_budget_mb: NonNegativeNumber = key(4096, "NumPy ALS's dense rating-pattern budget in the study")
    work_dir: str | None = key(None, "where generated tables go (made if missing; default: a temp dir)")
    machine_memory_gb: PositiveNumber = key(24, "the one machine of the predictions")
    cluster_executors: PositiveInt = key(8, "the cluster of the predictions")
    cluster_measure_users: list[int] = key(
        [25_000, 50_000, 100_000],
        "users (100 jokes) at which Spark ALS runs on the project's standalone "
        "cluster to measure shuffle bytes and executor memory (empty: none)",
    )
    cluster_measure_executors: list[PositiveInt] = key([1, 2, 4], "one-core executors of each cluster measurement")
    cluster_worker_memory: str = key("10g", "memory of the standalone worker the measurements run on")
    cluster_executor_memory: str = key("2g", "heap of each executor in the cluster measurements")
    cores_per_executor: PositiveInt = key(4, "cores per executor of the predictions")


def _table_name(v):
    if v is None or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,2}", v):
        return None
    return "must be a table name: [catalog.][schema.]table of letters, digits and underscores"


class OutputConfig(Section):
    dir: str = key("output/local", "every output of a run goes under this directory (a local or mounted path)")
    mode: Literal["overwrite", "error"] = key("overwrite", "overwrite: replace a previous run's outputs; error: refuse")
    recommendations_table: Annotated[str | None, _checked(_table_name)] = key(
        None, "also write the recommendations to this catalog table (partitioned by run_key; null: files only)"
    )
    metrics_table: Annotated[str | None, _checked(_table_name)] = key(
        None, "also write the run's numeric metrics to this catalog table (partitioned by run_key)"
    )
    run_key: str | None = key(
        None,
        "the rows a run owns in those tables: a rerun with the same key replaces them, "
        "never another key's (null: the run's own id; on Databricks pass the job run's)",
    )

    @model_validator(mode="after")
    def _not_a_file(self):
        if "://" not in self.dir and os.path.isfile(self.dir):
            raise _problem(f"dir: {self.dir!r} is a file (expected a directory or a path that does not exist)")
        return self


class SparkConfig(Section):
    app_name: str = key("jester-als", "the Spark application name")
    master: str | None = key(None, "leave null under spark-submit and Databricks")
    remote: str | None = key(None, "Spark Connect URL, e.g. sc://localhost:15002")
    checkpoint_dir: str | None = key(None, "default: a temporary directory")
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = key("WARN", "Spark's own log level")
    conf: dict[str, SparkValue] = key(
        {},
        "extra Spark settings applied when the job builds the session (over the local-mode defaults: shuffle "
        "partitions 2 x cores, driver memory 4g, Tungsten page size 2m, console progress bar only on a terminal)",
    )
    # The parallel (throughput) collector instead of G1: a local job is one batch JVM where pauses do not matter
    # and throughput does. Smaller inlining budgets for C2 (HotSpot product flags from Java 17 to 25, defaults
    # 325 and 2500 bytes): the JVM lives about a minute, and C2 compiling Spark's planner, Janino and the
    # generated code takes the cores the tasks need; with less inlined into each method every compilation is
    # cheaper, while ALS's hot loops are small methods that still compile whole (docs/speed.md).
    local_java_options: Annotated[list[str], _checked(_jvm_options)] = key(
        ["-XX:+UseParallelGC", "-XX:FreqInlineSize=100", "-XX:InlineSmallCode=1000"],
        "JVM options of a driver the job starts in local mode, beside the package's log settings (a "
        "spark.driver.extraJavaOptions in `conf` replaces both)",
    )

    @model_validator(mode="after")
    def _one_way_in(self):
        if self.master and self.remote:
            raise _problem("remote: cannot be combined with spark.master (choose one)")
        return self


class JesterConfig(Section):
    """The whole config: one section per concern, each key with its type, default and meaning. The jobs read it
    as attributes (``cfg.tune.grid``) and hand each function the section it uses; ``model_dump()`` only where a
    plain mapping leaves the program (the run's manifest, MLflow's params)."""

    _source: str | None = PrivateAttr(default=None)

    input: InputConfig = section(InputConfig)
    generate: GenerateConfig = section(GenerateConfig)
    split: SplitConfig = section(SplitConfig)
    als: AlsConfig = section(AlsConfig)
    tune: TuneConfig = section(TuneConfig)
    evaluate: EvaluateConfig = section(EvaluateConfig)
    recommend: RecommendConfig = section(RecommendConfig)
    baseline: BaselineConfig = section(BaselineConfig)
    new_users: NewUsersConfig = section(NewUsersConfig)
    tracking: TrackingConfig = section(TrackingConfig)
    bench: BenchConfig = section(BenchConfig)
    scale: ScaleConfig = section(ScaleConfig)
    output: OutputConfig = section(OutputConfig)
    spark: SparkConfig = section(SparkConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = key("INFO", "the job's log level")

    @property
    def source(self) -> str | None:
        """The file the config was read from (None: the built-in defaults)."""
        return self._source

    @model_validator(mode="after")
    def _relevance_on_the_scale(self):
        # a threshold above the scale makes no rating relevant, one at or below its bottom makes every rating
        # relevant: either way the ranking metrics mean nothing
        given, (low, high) = self.evaluate.relevance_threshold, self.input.rating_range
        if given is not None and not low < given <= high:
            raise _problem(
                f"evaluate.relevance_threshold: must lie on input.rating_range, above {low} and at most {high}, "
                f"got {given}"
            )
        return self

    @property
    def reads_generated_table(self) -> bool:
        """Whether the input is the CSV ``generate`` writes (``input.path`` is ``generate.path``, as in the
        built-in config), on this machine's file system."""
        path = self.input.path
        return (
            self.input.format == "csv"
            and bool(path)
            and "://" not in path
            and os.path.abspath(path) == os.path.abspath(self.generate.path)
        )

    @property
    def relevance_threshold(self) -> float:
        """``evaluate.relevance_threshold``, or where it is null the same place on ``input.rating_range`` as
        Jester's customary 5.0 on -10..10 (three quarters up): 4.0, four stars, on a 1-5 scale."""
        if self.evaluate.relevance_threshold is not None:
            return float(self.evaluate.relevance_threshold)
        low, high = (float(v) for v in self.input.rating_range)
        return low + RELEVANT_SHARE * (high - low)


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


def _default_mapping(parts: list[str]) -> dict:
    """The default of the mapping-valued key at ``parts`` (``tune.grid``, ``spark.conf``), or {} where the path
    names a section or leaves the models."""
    model: Any = JesterConfig
    for part in parts:
        if not _is_section(model) or part not in model.model_fields:
            return {}
        info = model.model_fields[part]
        model = _plain(info.annotation)
    if _is_section(model) and not model.one_key:
        return {}
    default = info.get_default(call_default_factory=True)
    default = default.model_dump() if isinstance(default, BaseModel) else default
    return copy.deepcopy(default) if isinstance(default, dict) else {}


def apply_overrides(raw: dict, overrides: Iterable[str]) -> dict:
    """``raw`` with each ``--set`` applied. A ``--set`` changes one key, always: one inside a mapping-valued key
    the file does not give (``tune.grid.rank`` without ``--conf``) changes that key of its default mapping, as it
    would of the file's."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for depth, part in enumerate(parts[:-1], start=1):
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = _default_mapping(parts[:depth])
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
                f" (at {key})" if key != set_key else ""
            )
    return problem


def packaged_configs() -> dict[str, str]:
    """The YAML configs shipped inside the package (the repository's ``conf/``), by name: local, bench, ..."""
    from importlib import resources

    folder = resources.files("jester_als").joinpath("conf")
    if not folder.is_dir():
        return {}
    return {entry.name.removesuffix(".yaml"): str(entry) for entry in folder.iterdir() if entry.name.endswith(".yaml")}


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
    raise ConfigError(
        [
            f"config file {path!r} does not exist (also looked for {shipped!r} in {os.getcwd()}); "
            f"packaged configs: {', '.join(sorted(packaged)) or 'none'}"
        ]
    )


def duplicate_keys(node: yaml.Node | None, path: str = "") -> list[str]:
    """A problem for every key given twice in one mapping of a composed YAML document (PyYAML keeps the last
    value without a word), with the lines of both."""
    problems: list[str] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key)
            where = f"{path}.{name}" if path else str(name)
            if name in seen:
                problems.append(f"{where}: given twice (lines {seen[name]} and {key.start_mark.line + 1}); remove one")
            else:
                seen[name] = key.start_mark.line + 1
            problems += duplicate_keys(value, where)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(item, f"{path}[{i}]")
    return problems


def load_config(path: str | None, overrides: Iterable[str] = (), *, base: dict | None = None) -> JesterConfig:
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
                text = fh.read()
            duplicates = duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader))
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError([f"not valid YAML: {exc}"], source) from None
        if duplicates:  # YAML would keep the last silently
            raise ConfigError(duplicates, source)
        if not isinstance(raw, dict):
            raise ConfigError([f"expected a mapping at the top, got {type(raw).__name__}"], source)
    overrides = list(overrides)
    raw = apply_overrides(raw, overrides)
    try:
        cfg = JesterConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_attribute(problem, overrides) for problem in _problems(exc)], source) from None
    cfg._source = source
    return cfg


def _yaml_value(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _plain(annotation):
    """The type under ``Annotated[...]`` and ``... | None``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            others = [a for a in get_args(annotation) if a is not type(None)]
            if len(others) != 1:
                return annotation
            annotation = others[0]
        else:
            return annotation


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _annotation_at(loc: tuple) -> Any:
    """The declared type of the key at ``loc`` (None where the path leaves the models)."""
    model, annotation = JesterConfig, None
    for part in loc:
        if not _is_section(model) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        model = _plain(annotation)
    return annotation


def _kind(annotation) -> str:
    """How the README names a type: integer, number, string, boolean, list of ..., mapping."""
    plain = _plain(annotation)
    origin = get_origin(plain)
    if origin is Literal:
        return _type_name(type(get_args(plain)[0]))
    if origin is list:
        return f"list of {_kind(get_args(plain)[0])}"
    if origin is dict or plain is dict or (_is_section(plain) and plain.one_key):
        return "mapping"
    return _type_name(plain)


_TYPE_ERRORS = {
    "int_type": int,
    "float_type": float,
    "string_type": str,
    "bool_type": bool,
    "list_type": list,
    "dict_type": dict,
    "model_type": dict,
}


def _problems(error: ValidationError) -> list[str]:
    """pydantic's errors as this project words them: ``key.path: what was expected, got what was given``, one
    per bad value (the bad items of one list together)."""
    problems: list[str] = []
    bad_items: dict[str, list] = {}
    for err in error.errors():
        loc, kind = err["loc"], err["type"]
        if kind in _TYPE_ERRORS and loc and isinstance(loc[-1], int):  # an item of a list: said once per list
            bad_items.setdefault(".".join(str(part) for part in loc[:-1]), []).append(err.get("input"))
        elif kind == "problems":  # several problems from one check, each "sub.key: message" or "message"
            path = ".".join(str(part) for part in loc if not isinstance(part, int))  # a list's item: the list
            problems.extend(
                (f"{path}.{p}" if ": " in p else f"{path}: {p}") if path else p for p in err["ctx"]["problems"]
            )
        else:
            problems.append(f"{'.'.join(str(part) for part in loc)}: {_message(err)}")
    for path, items in bad_items.items():
        kind = _kind(_annotation_at(tuple(path.split("."))))
        problems.append(f"{path}: expected a {kind} values, got item(s) {items!r}")
    return problems


def _message(err) -> str:
    """What is wrong with one value, from one of pydantic's errors."""
    loc, kind, value = err["loc"], err["type"], err.get("input")
    if kind == "extra_forbidden":
        parent = _plain(_annotation_at(loc[:-1])) if len(loc) > 1 else JesterConfig
        names = list(parent.model_fields) if _is_section(parent) else []
        return (parent if _is_section(parent) else Section).unknown_key.format(
            known=", ".join(names), names=sorted(names)
        )
    if kind == "too_short":
        return "empty list (give at least one value)"
    if kind == "value_error":
        return f"{err['ctx']['error']}, got {value!r}"
    if kind == "literal_error":
        return f"expected one of {list(get_args(_plain(_annotation_at(loc))))}, got {value!r}"
    if kind in _TYPE_ERRORS and value is None:
        return f"must not be null (expected {_a(_TYPE_ERRORS[kind])})"
    if _TYPE_ERRORS.get(kind) is dict:
        return f"expected a mapping, got {type(value).__name__}"
    if kind == "list_type":
        return f"expected a {_kind(_annotation_at(loc))} values, got {value!r}"
    if kind in _TYPE_ERRORS:
        return f"expected {_a(_TYPE_ERRORS[kind])}, got {value!r}"
    return f"{err['msg']}, got {value!r}"


def config_table() -> str:
    """The README's config table, from the models: every key, its type, its default, what it does."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key_path, kind, default, doc in describe_schema():
        lines.append(f"| `{key_path}` | {kind} | `{default}` | {doc.replace('|', '/')} |")
    return "\n".join(lines)


def describe_schema(model: type[BaseModel] | None = None, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows of (key, type, default as YAML, meaning) for every key of the models, in their order."""
    rows = []
    for name, info in (model or JesterConfig).model_fields.items():
        annotation = _plain(info.annotation)
        if _is_section(annotation) and not annotation.one_key:
            rows.extend(describe_schema(annotation, f"{prefix}{name}."))
            continue
        extra = info.json_schema_extra or {}
        doc = info.description or ""
        if get_origin(annotation) is Literal:
            choices = ", ".join(map(str, get_args(annotation)))
            doc = f"{doc} (one of: {choices})" if doc else f"one of: {choices}"
        default = info.get_default(call_default_factory=True)
        default = default.model_dump() if isinstance(default, BaseModel) else default
        rows.append((f"{prefix}{name}", extra.get("kind") or _kind(info.annotation), _yaml_value(default), doc))
    return rows
