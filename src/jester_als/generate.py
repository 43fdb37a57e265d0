"""Synthetic Jester-shaped ratings with a planted structure, written in the seed's wide CSV format.

The default table is made to look like Jester dataset 1 as far as the statistics in ``../shared/DESIGN.md``
describe it (:data:`REAL_JESTER`): a user's latent liking of a joke is ``user effect + joke effect + <user
factors, joke factors> + noise``, with factors whose variances decay geometrically (a slowly decaying spectrum,
not a few strong factors over flat noise), and the rating is that latent's standard score mapped onto the real
ratings' distribution (``marginal: jester``: a Gaussian copula; the map is monotone, so who likes what more is
unchanged), rounded to 0.01, with a small extra share of exact 0.00 (people clicking the centre of the slider).
``marginal: clip`` keeps the plain additive model ``mean + latent`` clipped to [-10, 10], whose noise is in
rating units: the tests that check a planted structure is recovered to the noise use it.

Which jokes a user rated mimics dataset 1 too: every user rated at least ``min_ratings``, a share rated every
joke, the others' counts are skewed towards the minimum as in the real set, the jokes nearly everyone rated sit
at the real set's ids (the ten gauge jokes first), and the other jokes are picked with popularity weights.

Generation is chunked over users with a seed per chunk, so the output depends only on the parameters and
the seed, and memory stays bounded by one chunk whatever the number of users.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import ndtr

from jester_als.outputs import atomic_path

if TYPE_CHECKING:  # config imports this module
    from jester_als.config import JesterConfig

log = logging.getLogger(__name__)

RATING_LOW, RATING_HIGH = -10.0, 10.0
GAUGE_MISS_PROBABILITY = 0.0005
CELLS_PER_CHUNK = 2_000_000

# The data set's "gauge set" (its page: the jokes every visitor was shown first), then the other jokes more than
# 98% of the real users rated, by id (DESIGN.md's 5,000-user sample of dataset 1).
GAUGE_JOKES = (5, 7, 8, 13, 15, 16, 17, 18, 19, 20)
UNIVERSAL_JOKES = GAUGE_JOKES + (21, 27, 29, 31, 32, 35, 36, 42, 48, 49, 50, 53, 54, 56, 61, 62, 65, 66, 68, 69)

# The real ratings' distribution as a piecewise-uniform density: DESIGN.md gives the shares of the five 4-point
# bins; the two outer bins are split at -8 and 8 so that the density also has the real mean and standard
# deviation (0.916, 5.219), which uniform outer bins miss (5.33).
MARGINAL_EDGES = np.array([-10.0, -8.0, -6.0, -2.0, 2.0, 6.0, 8.0, 10.0])
MARGINAL_SHARES = np.array([0.055, 0.083, 0.149, 0.247, 0.272, 0.124, 0.070])

# What the generated table is held to (tests/test_generate.py): the aggregates of the public 5,000-user sample
# of dataset 1 that DESIGN.md lists.
REAL_JESTER = {
    "ratings_per_user_mean": 72.6,
    "ratings_per_user_min": 36,
    "ratings_per_user_percentiles": [38, 53, 72, 100, 100],
    "share_rated_all": 0.295,
    "rating_mean": 0.916,
    "rating_std": 5.219,
    "zero_share": 0.0028,
    "bin_shares": [0.138, 0.149, 0.247, 0.272, 0.194],
    "joke_mean_std": 1.53,
    "user_mean_std": 2.57,
    "universal_jokes": sorted(UNIVERSAL_JOKES),
    "energy_shares": [0.068, 0.059, 0.045, 0.031, 0.026, 0.025, 0.021, 0.020, 0.019, 0.016],
}


@dataclass(frozen=True)
class GeneratorParams:
    """Parameters of the planted model. The defaults give Jester dataset 1's size and the statistics of
    :data:`REAL_JESTER` (how each was matched: ``conf/local.yaml``'s ``generate`` section); with ``marginal:
    jester`` the effects, factors and noise are in units of the latent, whose standard score becomes the
    rating."""

    users: int = 24983
    jokes: int = 100
    rank: int = 30
    spectrum_decay: float = 0.8
    noise: float = 0.78
    factor_scale: float = 0.5
    user_bias: float = 0.56
    joke_bias: float = 0.32
    mean: float = 1.08
    marginal: str = "jester"
    min_ratings: int = 36
    mean_ratings: float = 72.6
    share_rated_all: float = 0.295
    gauge_jokes: int = 30
    zero_fraction: float = 0.0022
    seed: int = 7

    @classmethod
    def from_config(cls, gen, **overrides) -> GeneratorParams:
        """The parameters of the config's ``generate`` section (:class:`jester_als.config.GenerateConfig`), with
        ``overrides``."""
        fields = {k: getattr(gen, k) for k in cls.__dataclass_fields__ if hasattr(gen, k)}
        fields.update(overrides)
        return cls(**fields)

    @property
    def latent_std(self) -> float:
        """Standard deviation of the latent before it is mapped onto the ratings' distribution."""
        return float(np.sqrt(self.user_bias**2 + self.joke_bias**2 + self.factor_scale**2 + self.noise**2))


@dataclass
class PlantedModel:
    """The structure behind a generated table: what a good model should recover."""

    joke_factors: np.ndarray  # (jokes, rank)
    joke_effects: np.ndarray  # (jokes,)
    popularity: np.ndarray  # (jokes,) selection weights
    gauge: np.ndarray  # (jokes,) bool


@dataclass
class WideChunk:
    """Consecutive users: ids start at ``first_user``; ``ratings`` has NaN where a joke was not rated."""

    first_user: int
    ratings: np.ndarray  # (n, jokes) float64
    user_factors: np.ndarray  # (n, rank)
    user_effects: np.ndarray  # (n,)

    @property
    def user_ids(self) -> np.ndarray:
        return np.arange(self.first_user, self.first_user + self.ratings.shape[0])

    def long(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The chunk's ratings as (user id, joke id, rating) arrays, users then jokes in order."""
        rows, cols = np.nonzero(~np.isnan(self.ratings))
        return rows + self.first_user, cols + 1, self.ratings[rows, cols]

    @property
    def counts(self) -> np.ndarray:
        return np.count_nonzero(~np.isnan(self.ratings), axis=1)


def factor_stds(p: GeneratorParams) -> np.ndarray:
    """Standard deviation of each planted factor of users and of jokes: the variance of ``<x_u, y_j>``
    is ``factor_scale**2`` split over the ``rank`` factors in shares that fall by ``spectrum_decay`` from one to
    the next (1.0: equal factors). With factor ``i`` of both sides iid N(0, s_i^2), its product has variance
    s_i^4."""
    if p.factor_scale <= 0:
        return np.zeros(p.rank)
    shares = p.spectrum_decay ** np.arange(p.rank, dtype=np.float64)
    return (p.factor_scale**2 * shares / shares.sum()) ** 0.25


def universal_jokes(p: GeneratorParams, rng: np.random.Generator) -> np.ndarray:
    """Positions of the ``gauge_jokes`` jokes nearly everyone rates: the real set's (:data:`UNIVERSAL_JOKES`,
    the ten gauge jokes first) where the table has those ids, then others at random."""
    count = min(p.gauge_jokes, p.jokes)
    chosen = [j - 1 for j in UNIVERSAL_JOKES if j <= p.jokes][:count]
    rest = np.setdiff1d(np.arange(p.jokes), chosen)
    extra = rng.choice(rest, size=count - len(chosen), replace=False) if count > len(chosen) else []
    return np.concatenate([np.asarray(chosen, dtype=np.int64), np.asarray(extra, dtype=np.int64)])


def planted_model(p: GeneratorParams) -> PlantedModel:
    rng = np.random.default_rng([p.seed, 0])
    joke_factors = rng.normal(0.0, 1.0, size=(p.jokes, p.rank)) * factor_stds(p)
    joke_effects = rng.normal(0.0, p.joke_bias, size=p.jokes)
    if p.jokes > 1:  # centred, so that the table's mean is the marginal's (or ``mean``), not one draw's
        joke_effects -= joke_effects.mean()
    popularity = rng.lognormal(0.0, 0.75, size=p.jokes)
    gauge = np.zeros(p.jokes, dtype=bool)
    gauge[universal_jokes(p, rng)] = True
    return PlantedModel(joke_factors, joke_effects, popularity, gauge)


def _ratings_per_user(rng: np.random.Generator, n: int, p: GeneratorParams) -> np.ndarray:
    """A share of users rate everything (as in Jester, for tables of up to 150 jokes); the others' counts are
    ``min + span U^g`` rounded down, U uniform, span at most three times the mean's distance from the minimum
    (so that a table of thousands of jokes gets no user with thousands of ratings), g set so that the mean is
    ``mean_ratings``. For dataset 1 (g about 1.5) that is skewed towards the minimum as the real counts are
    (REAL_JESTER's percentiles)."""
    low, top = p.min_ratings, p.jokes
    share_all = p.share_rated_all if p.jokes <= 150 else 0.0
    rest_mean = (p.mean_ratings - share_all * top) / (1.0 - share_all)
    if rest_mean < low:
        share_all, rest_mean = 0.0, p.mean_ratings
    above = max(rest_mean - low, 0.0)
    span = min(top - low, 3.0 * above + 1.0)
    if span <= 0:
        return np.full(n, top, dtype=np.int64)
    # E[floor(low + span U^g)] is about low + span / (1 + g) - 1/2.
    power = max(span / (above + 0.5) - 1.0, 1e-6)
    counts = np.minimum(low + np.floor(span * rng.random(n) ** power).astype(np.int64), top)
    counts[rng.random(n) < share_all] = top
    return counts


def _user_chunks(p: GeneratorParams, chunk_users: int, stream: int):
    """Consecutive chunks of users, each with its own generator (seeded by the parameters' seed, ``stream`` and
    the chunk's index) that has drawn the users' factors, effects and rating counts: (first user's offset,
    the generator, factors, effects, counts)."""
    stds = factor_stds(p)
    for index, start in enumerate(range(0, p.users, chunk_users)):
        n = min(chunk_users, p.users - start)
        rng = np.random.default_rng([p.seed, stream, index])
        user_factors = rng.normal(0.0, 1.0, size=(n, p.rank)) * stds
        user_effects = rng.normal(0.0, p.user_bias, size=n)
        yield start, rng, user_factors, user_effects, _ratings_per_user(rng, n, p)


_MARGINAL_CDF = np.concatenate([[0.0], np.cumsum(MARGINAL_SHARES) / MARGINAL_SHARES.sum()])


def jester_marginal(z: np.ndarray) -> np.ndarray:
    """Standard scores onto the real ratings' distribution: ``Q(Phi(z))`` with ``Q`` the quantile function of the
    piecewise-uniform density of :data:`MARGINAL_SHARES`. Monotone, so the order of a user's likings stays."""
    return np.interp(ndtr(z), _MARGINAL_CDF, MARGINAL_EDGES)


def _observed(signal: np.ndarray, rng: np.random.Generator, p: GeneratorParams) -> np.ndarray:
    """What a user would enter for ``signal`` (which includes ``mean``): plus noise, onto the rating scale
    (``marginal``), rounded to 0.01, with a share of exact 0.00."""
    latent = signal + rng.normal(0.0, p.noise, size=signal.shape)
    if p.marginal == "jester":
        latent_std = p.latent_std
        values = jester_marginal((latent - p.mean) / latent_std) if latent_std > 0 else np.zeros_like(latent)
    else:
        values = np.clip(latent, RATING_LOW, RATING_HIGH)
    values = np.round(values, 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    values[rng.random(signal.shape) < p.zero_fraction] = 0.0
    return values


def generate_chunks(p: GeneratorParams) -> Iterator[WideChunk]:
    """Yield the table in chunks of users; the same parameters always give the same table."""
    return (task() for task in wide_chunk_tasks(p))


def wide_chunk_tasks(p: GeneratorParams) -> Iterator[Callable[[], WideChunk]]:
    """The table's chunks as independent tasks, in order: each chunk has its own seeded generator, so the
    tasks may run on any thread in any order and still give the same table."""
    model = planted_model(p)
    log_weights = np.log(model.popularity)
    for start, rng, user_factors, user_effects, counts in _user_chunks(p, max(1, CELLS_PER_CHUNK // p.jokes), 1):
        yield partial(_wide_chunk, p, model, log_weights, start, rng, user_factors, user_effects, counts)


def _wide_chunk(
    p: GeneratorParams,
    model: PlantedModel,
    log_weights: np.ndarray,
    start: int,
    rng: np.random.Generator,
    user_factors: np.ndarray,
    user_effects: np.ndarray,
    counts: np.ndarray,
) -> WideChunk:
    n = counts.size
    # Weighted sampling without replacement (Efraimidis-Spirakis): the k largest of log(u) / w.
    # Gauge jokes go first unless the user happened to skip one.
    keys = np.log(rng.random((n, p.jokes))) / np.exp(log_weights)
    gauge_kept = model.gauge & (rng.random((n, p.jokes)) >= GAUGE_MISS_PROBABILITY)
    keys[gauge_kept] = np.inf
    order = np.argsort(-keys, axis=1, kind="stable")
    rated = np.zeros((n, p.jokes), dtype=bool)
    take = np.arange(p.jokes)[None, :] < counts[:, None]
    rows = np.broadcast_to(np.arange(n)[:, None], order.shape)
    rated[rows[take], order[take]] = True

    signal = p.mean + user_effects[:, None] + model.joke_effects[None, :] + user_factors @ model.joke_factors.T
    values = _observed(signal, rng, p)
    values[~rated] = np.nan
    return WideChunk(start + 1, values, user_factors, user_effects)


# Past this many jokes a table is generated as long triples (:func:`generate_long_chunks`): a wide chunk
# costs users x jokes cells of work whatever the ratings, which at Netflix's 17,770 items is 200 times the
# ratings themselves.
LONG_FROM_JOKES = 2000
RATINGS_PER_LONG_CHUNK = 2_000_000


def generate_long_chunks(p: GeneratorParams) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The table as (user id, joke id, rating) arrays, chunk by chunk, for tables with many jokes: work and
    memory in proportion to the ratings. Ratings follow the same planted model as :func:`generate_chunks`,
    and the gauge jokes are rated by nearly everyone as there; each user's other jokes are drawn by
    popularity *with* replacement and repeats dropped, so a user rates a few fewer jokes than drawn (about
    ``draws^2 / (2 jokes)`` with even popularity). The same parameters always give the same table (not the
    table :func:`generate_chunks` would give)."""
    return (task() for task in _long_tasks(p))


def _long_tasks(p: GeneratorParams) -> Iterator[Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    model = planted_model(p)
    chunk_users = max(1, int(RATINGS_PER_LONG_CHUNK // max(1.0, p.mean_ratings)))
    cumulative = np.cumsum(model.popularity / model.popularity.sum())
    gauge = np.flatnonzero(model.gauge)
    for start, rng, user_factors, user_effects, counts in _user_chunks(p, chunk_users, 2):
        yield partial(_long_chunk, p, model, cumulative, gauge, start, rng, user_factors, user_effects, counts)


def _long_chunk(
    p: GeneratorParams,
    model: PlantedModel,
    cumulative: np.ndarray,
    gauge: np.ndarray,
    start: int,
    rng: np.random.Generator,
    user_factors: np.ndarray,
    user_effects: np.ndarray,
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = counts.size
    owners = np.repeat(np.arange(n, dtype=np.int64), counts)
    drawn = np.minimum(np.searchsorted(cumulative, rng.random(owners.size), side="right"), p.jokes - 1)
    gauge_owners = np.repeat(np.arange(n, dtype=np.int64), gauge.size)
    gauge_jokes = np.tile(gauge, n)
    kept = rng.random(gauge_owners.size) >= GAUGE_MISS_PROBABILITY
    cells = np.unique(np.concatenate([owners * p.jokes + drawn, (gauge_owners * p.jokes + gauge_jokes)[kept]]))
    users, jokes = cells // p.jokes, cells % p.jokes
    signal = (
        p.mean
        + user_effects[users]
        + model.joke_effects[jokes]
        + np.einsum("ij,ij->i", user_factors[users], model.joke_factors[jokes])
    )
    return users + start + 1, jokes + 1, _observed(signal, rng, p)


def long_chunks(p: GeneratorParams) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(user id, joke id, rating) chunks of the table, generated the way that suits its shape."""
    return (task() for task in long_chunk_tasks(p))


def long_chunk_tasks(p: GeneratorParams) -> Iterator[Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """:func:`long_chunks` as independent tasks, in order (see :func:`wide_chunk_tasks`)."""
    if p.jokes > LONG_FROM_JOKES:
        yield from _long_tasks(p)
    else:
        for task in wide_chunk_tasks(p):
            yield partial(_as_long, task)


def _as_long(task: Callable[[], WideChunk]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return task().long()


def _cell_strings() -> np.ndarray:
    """Every value the generator can emit, pre-formatted; index round(r * 100) + 1000, blank last."""
    table = [f"{v / 100:.2f}" for v in range(-1000, 1001)]
    table[1000] = "0.00"
    return np.array(table + [""], dtype=object)


def write_wide_csv(p: GeneratorParams, path: str) -> dict:
    """Write the seed-format CSV (``User``, ``Number of Jokes Rated``, ``1``..``jokes``) atomically.

    Returns summary statistics of what was written.
    """
    cells = _cell_strings()
    n_ratings = 0
    total = 0.0
    total_sq = 0.0
    zeros = 0
    min_count = p.jokes
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(",".join(["User", "Number of Jokes Rated"] + [str(j) for j in range(1, p.jokes + 1)]) + "\n")
            for chunk in generate_chunks(p):
                known = ~np.isnan(chunk.ratings)
                index = np.where(
                    known, np.round(np.nan_to_num(chunk.ratings) * 100).astype(np.int64) + 1000, len(cells) - 1
                )
                strings = cells[index]
                counts = chunk.counts
                lines = [f"{u},{c}," + ",".join(row) for u, c, row in zip(chunk.user_ids, counts, strings)]
                fh.write("\n".join(lines) + "\n")
                vals = chunk.ratings[known]
                n_ratings += vals.size
                total += float(vals.sum())
                total_sq += float(np.square(vals).sum())
                zeros += int(np.count_nonzero(vals == 0.0))
                min_count = min(min_count, int(counts.min()))
    mean = total / n_ratings
    return {
        "path": path,
        "users": p.users,
        "jokes": p.jokes,
        "ratings": n_ratings,
        "ratings_per_user": n_ratings / p.users,
        "min_ratings_per_user": min_count,
        "mean": mean,
        "std": (total_sq / n_ratings - mean**2) ** 0.5,
        "zero_share": zeros / n_ratings,
        "seed": p.seed,
    }


def table_statistics(ratings: np.ndarray) -> dict:
    """The statistics of :data:`REAL_JESTER` for a wide table (users x jokes, NaN where not rated)."""
    rated = ~np.isnan(ratings)
    values = ratings[rated]
    counts = rated.sum(axis=1)
    jokes = ratings.shape[1]
    with np.errstate(invalid="ignore"):
        joke_means = np.nanmean(ratings, axis=0)
        user_means = np.nanmean(ratings, axis=1)
    edges = [-10.0, -6.0, -2.0, 2.0, 6.0, 10.0 + 1e-9]
    full = ratings[counts == jokes]
    energy: list[float] = []
    if len(full) > 1:
        centred = full - full.mean(axis=1, keepdims=True)
        centred -= centred.mean(axis=0, keepdims=True)
        singular = np.linalg.svd(centred, compute_uv=False)
        energy = (singular[:10] ** 2 / np.sum(singular**2)).tolist()
    return {
        "ratings_per_user_mean": float(counts.mean()),
        "ratings_per_user_min": int(counts.min()),
        "ratings_per_user_percentiles": [float(v) for v in np.percentile(counts, [5, 25, 50, 75, 95])],
        "share_rated_all": float(np.mean(counts == jokes)),
        "rating_mean": float(values.mean()),
        "rating_std": float(values.std()),
        "zero_share": float(np.mean(values == 0.0)),
        "bin_shares": (np.histogram(values, bins=edges)[0] / values.size).tolist(),
        "joke_mean_std": float(np.nanstd(joke_means)),
        "user_mean_std": float(np.nanstd(user_means)),
        "universal_jokes": (np.flatnonzero(rated.mean(axis=0) > 0.98) + 1).tolist(),
        "energy_shares": energy,
    }


def generate_job(cfg: JesterConfig) -> str:
    """The ``generate`` job: the table ``generate`` configures, written to ``generate.path``; what it prints."""
    started = time.perf_counter()
    params = GeneratorParams.from_config(cfg.generate)
    # the command's own logger, as for every job's first line
    logging.getLogger("jester_als").info(
        "generate: %d users x %d jokes (seed %d) into %s", params.users, params.jokes, params.seed, cfg.generate.path
    )
    stats = write_wide_csv(params, cfg.generate.path)
    return f"jester-als generate: wrote {stats['path']} in {time.perf_counter() - started:.1f} s\n  " + json.dumps(
        {k: round(v, 4) if isinstance(v, float) else v for k, v in stats.items()}
    )
