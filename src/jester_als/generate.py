"""Synthetic Jester-shaped ratings with a planted structure, written in the seed's wide CSV format.

A rating is ``mean + user effect + joke effect + <user factors, joke factors> + noise``, clipped to
[-10, 10] and rounded to 0.01, with a small extra share of exact 0.00 (people clicking the centre of the
slider). Which jokes a user rated mimics Jester dataset 1: every user rated at least ``min_ratings``, a
block of ``gauge_jokes`` was rated by nearly everyone, about a quarter of users rated every joke, and
the other jokes are picked with popularity weights.

Generation is chunked over users with a seed per chunk, so the output depends only on the parameters and
the seed, and memory stays bounded by one chunk whatever the number of users.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np

log = logging.getLogger(__name__)

RATING_LOW, RATING_HIGH = -10.0, 10.0
GAUGE_MISS_PROBABILITY = 0.01
SHARE_RATING_ALL = 0.25
CELLS_PER_CHUNK = 2_000_000


@dataclass(frozen=True)
class GeneratorParams:
    """Parameters of the planted model; the defaults give Jester dataset 1's size and spread (24,983 users,
    100 jokes, about 72.6 ratings per user, mean about 0.92, standard deviation about 5.2, 0.3% zeros)."""

    users: int = 24983
    jokes: int = 100
    rank: int = 3
    noise: float = 4.4
    factor_scale: float = 2.8
    user_bias: float = 2.0
    joke_bias: float = 1.3
    mean: float = 1.08
    min_ratings: int = 36
    mean_ratings: float = 72.6
    gauge_jokes: int = 30
    zero_fraction: float = 0.0023
    seed: int = 7

    @classmethod
    def from_config(cls, gen: dict, **overrides) -> GeneratorParams:
        fields = {k: gen[k] for k in cls.__dataclass_fields__ if k in gen}
        fields.update(overrides)
        return cls(**fields)


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


def _factor_std(p: GeneratorParams) -> float:
    # With user and joke factors iid N(0, s^2), <p, q> has variance rank * s^4.
    return (p.factor_scale ** 2 / p.rank) ** 0.25 if p.factor_scale > 0 else 0.0


def planted_model(p: GeneratorParams) -> PlantedModel:
    rng = np.random.default_rng([p.seed, 0])
    s = _factor_std(p)
    joke_factors = rng.normal(0.0, s, size=(p.jokes, p.rank))
    joke_effects = rng.normal(0.0, p.joke_bias, size=p.jokes)
    popularity = rng.lognormal(0.0, 0.75, size=p.jokes)
    gauge = np.zeros(p.jokes, dtype=bool)
    gauge[rng.choice(p.jokes, size=min(p.gauge_jokes, p.jokes), replace=False)] = True
    return PlantedModel(joke_factors, joke_effects, popularity, gauge)


def _ratings_per_user(rng: np.random.Generator, n: int, p: GeneratorParams) -> np.ndarray:
    """A share of users rate everything (as in Jester); the rest are uniform on [min, hi] so the mean fits."""
    low, top = p.min_ratings, p.jokes
    share_all = SHARE_RATING_ALL if p.jokes <= 150 else 0.0
    rest_mean = (p.mean_ratings - share_all * top) / (1.0 - share_all)
    if rest_mean < low:
        share_all, rest_mean = 0.0, p.mean_ratings
    high = int(np.clip(round(2 * rest_mean - low), low, top))
    counts = rng.integers(low, high + 1, size=n)
    counts[rng.random(n) < share_all] = top
    return counts


def _user_chunks(p: GeneratorParams, chunk_users: int, stream: int):
    """Consecutive chunks of users, each with its own generator (seeded by the parameters' seed, ``stream`` and
    the chunk's index) that has drawn the users' factors, effects and rating counts: (first user's offset,
    the generator, factors, effects, counts)."""
    s = _factor_std(p)
    for index, start in enumerate(range(0, p.users, chunk_users)):
        n = min(chunk_users, p.users - start)
        rng = np.random.default_rng([p.seed, stream, index])
        user_factors = rng.normal(0.0, s, size=(n, p.rank))
        user_effects = rng.normal(0.0, p.user_bias, size=n)
        yield start, rng, user_factors, user_effects, _ratings_per_user(rng, n, p)


def _observed(signal: np.ndarray, rng: np.random.Generator, p: GeneratorParams) -> np.ndarray:
    """What a user would enter for ``signal``: plus noise, clipped to the slider's range, rounded to 0.01,
    with a share of exact 0.00."""
    values = signal + rng.normal(0.0, p.noise, size=signal.shape)
    values = np.round(np.clip(values, RATING_LOW, RATING_HIGH), 2) + 0.0  # + 0.0 turns -0.0 into 0.0
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


def _wide_chunk(p: GeneratorParams, model: PlantedModel, log_weights: np.ndarray, start: int,
                rng: np.random.Generator, user_factors: np.ndarray, user_effects: np.ndarray,
                counts: np.ndarray) -> WideChunk:
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

    signal = (p.mean + user_effects[:, None] + model.joke_effects[None, :]
              + user_factors @ model.joke_factors.T)
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


def _long_chunk(p: GeneratorParams, model: PlantedModel, cumulative: np.ndarray, gauge: np.ndarray, start: int,
                rng: np.random.Generator, user_factors: np.ndarray, user_effects: np.ndarray,
                counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = counts.size
    owners = np.repeat(np.arange(n, dtype=np.int64), counts)
    drawn = np.minimum(np.searchsorted(cumulative, rng.random(owners.size), side="right"), p.jokes - 1)
    gauge_owners = np.repeat(np.arange(n, dtype=np.int64), gauge.size)
    gauge_jokes = np.tile(gauge, n)
    kept = rng.random(gauge_owners.size) >= GAUGE_MISS_PROBABILITY
    cells = np.unique(np.concatenate([owners * p.jokes + drawn, (gauge_owners * p.jokes + gauge_jokes)[kept]]))
    users, jokes = cells // p.jokes, cells % p.jokes
    signal = (p.mean + user_effects[users] + model.joke_effects[jokes]
              + np.einsum("ij,ij->i", user_factors[users], model.joke_factors[jokes]))
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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    n_ratings = 0
    total = 0.0
    total_sq = 0.0
    zeros = 0
    min_count = p.jokes
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(",".join(["User", "Number of Jokes Rated"] + [str(j) for j in range(1, p.jokes + 1)]) + "\n")
            for chunk in generate_chunks(p):
                known = ~np.isnan(chunk.ratings)
                index = np.where(known, np.round(np.nan_to_num(chunk.ratings) * 100).astype(np.int64) + 1000,
                                 len(cells) - 1)
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
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    mean = total / n_ratings
    return {
        "path": path,
        "users": p.users,
        "jokes": p.jokes,
        "ratings": n_ratings,
        "ratings_per_user": n_ratings / p.users,
        "min_ratings_per_user": min_count,
        "mean": mean,
        "std": (total_sq / n_ratings - mean ** 2) ** 0.5,
        "zero_share": zeros / n_ratings,
        "seed": p.seed,
    }
