"""How many jokes must a new user rate? Fold-in scored on users held out whole (a user split, not a rating split).

Jester's own question (Eigentaste, Goldberg et al. 2001): a visitor rates a few jokes, the ten gauge jokes first,
and is recommended from that alone. Here a share of the sampled users (``new_users.holdout_fraction``, by a
seeded hash of the user) is left out of a model fitted with the chosen params on the other users' training
ratings. For each held-out user k of its ratings are revealed (its gauge jokes, as Jester did; or k chosen by a
seeded hash, for each k of ``new_users.reveal``), the user is folded in from them (:mod:`jester_als.foldin`),
and the rest of its ratings are scored (RMSE, MAE, NMAE, and NDCG@k of ranking them), against joke popularity
(each joke's mean rating among the other users: what a system with no model shows a new user) and against a
full refit that included the revealed ratings (the upper bound fold-in approximates). NumPy engine, on the
driver, over the same user sample the baseline step collects.
"""

from __future__ import annotations

import time

import numpy as np

from jester_als import hashsplit
from jester_als.config import NewUsersConfig
from jester_als.foldin import fold_in, from_numpy_model, predict
from jester_als.generate import GAUGE_JOKES
from jester_als.numpy_als import RatingMatrix, fit_numpy_als, nmae

# The least share of the sampled users who rated each gauge joke for the gauge jokes to be scored as Jester's
# gauge set (see gauge_problem).
GAUGE_SHARE = 0.9


def held_out_users(users: np.ndarray, fraction: float, seed: int, max_users: int) -> np.ndarray:
    """Sorted ids of the users held out whole: a seeded hash of the user below ``fraction``, at most
    ``max_users`` of them (the lowest hashes)."""
    ids = np.unique(users)
    hashed = np.mod(hashsplit.xxhash64_ints(ids.astype(np.int32), np.int32(seed)), hashsplit.SPLIT_BUCKETS)
    chosen = hashed < hashsplit.test_threshold(fraction)
    picked = ids[chosen][np.argsort(hashed[chosen], kind="stable")][:max_users]
    return np.sort(picked)


def reveal_random(users: np.ndarray, jokes: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(revealed, eligible) masks over the held-out ratings: each user's k ratings with the lowest seeded hash of
    (user, joke); users with no more than k ratings are not eligible (nothing would be left to score)."""
    hashed = hashsplit.xxhash64_ints(users.astype(np.int32), jokes.astype(np.int32), np.int32(seed + k))
    order = np.lexsort((hashed, users))
    ids, first, counts = np.unique(users[order], return_index=True, return_counts=True)
    index = np.repeat(np.arange(ids.size), counts)
    position, per_user = np.empty(users.size, dtype=np.int64), np.empty(users.size, dtype=np.int64)
    position[order] = np.arange(users.size) - first[index]
    per_user[order] = counts[index]
    eligible = per_user > k
    return (position < k) & eligible, eligible


def reveal_gauge(
    users: np.ndarray, jokes: np.ndarray, gauge: tuple[int, ...] | list[int] = GAUGE_JOKES
) -> tuple[np.ndarray, np.ndarray]:
    """(revealed, eligible): each user's ratings of the gauge jokes (Jester's ten unless named); users who rated
    none of them, or only them, are not eligible."""
    revealed = np.isin(jokes, gauge)
    ids, index = np.unique(users, return_inverse=True)
    shown = np.bincount(index, revealed, len(ids))
    total = np.bincount(index, minlength=len(ids))
    user_ok = (shown > 0) & (shown < total)
    return revealed & user_ok[index], user_ok[index]


def gauge_problem(users: np.ndarray, jokes: np.ndarray, gauge: list[int]) -> str | None:
    """Why the gauge jokes are no gauge in this sample, or None: every new user is shown them first, which holds
    only where nearly every user rated each (as in Jester, docs/data.md); elsewhere (another data set, or
    other joke ids) revealing them would show each held-out user whichever few of them it happened to rate."""
    if not gauge:
        return "new_users.gauge_jokes is empty"
    sampled = np.unique(users).size
    raters = np.array([np.count_nonzero(jokes == joke) for joke in gauge])  # a user rates a joke at most once
    least = int(np.argmin(raters))
    share = raters[least] / sampled
    if share >= GAUGE_SHARE:
        return None
    return (
        f"joke {gauge[least]} of new_users.gauge_jokes was rated by {share:.1%} of the {sampled:,} sampled users; "
        f"every new user is shown the gauge jokes, so they are scored only where each was rated by at least "
        f"{GAUGE_SHARE:.0%} (set new_users.gauge_jokes to this data's nearly universal jokes, or [] to leave them out)"
    )


def ndcg_at_k(
    users: np.ndarray, jokes: np.ndarray, truth: np.ndarray, scores: np.ndarray, k: int, threshold: float
) -> float | None:
    """Mean NDCG@k of ranking each user's rows by ``scores`` (ties by joke id), relevant = ``truth >=
    threshold`` (Spark's RankingEvaluator definition: binary gains, log2 discounts); users without a relevant
    row are left out, as the job's ranking metrics leave them out."""
    order = np.lexsort((jokes, -scores, users))
    sorted_users, relevant = users[order], (truth[order] >= threshold).astype(np.float64)
    ids, first = np.unique(sorted_users, return_index=True)
    index = np.searchsorted(ids, sorted_users)
    rank = np.arange(sorted_users.size) - first[index]
    discount = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    dcg = np.bincount(index, relevant * discount, len(ids))
    n_relevant = np.bincount(index, relevant, len(ids)).astype(np.int64)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    idcg = ideal[np.minimum(n_relevant, k)]
    scored = n_relevant > 0
    return float(np.mean(dcg[scored] / idcg[scored])) if scored.any() else None


def _scores(truth, predicted, rating_range, users, jokes, k, threshold) -> dict:
    predicted = np.clip(predicted, *rating_range)
    ok = ~np.isnan(predicted)
    if not ok.any():
        # no held-out user had a rating left to score here: no figure, rather than NaN
        return {"rmse": None, "mae": None, "nmae": None, "ndcg_at_k": None, "rows": 0}
    error = predicted[ok] - truth[ok]
    mae = float(np.mean(np.abs(error)))
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": mae,
        "nmae": nmae(mae, rating_range),
        "ndcg_at_k": ndcg_at_k(users[ok], jokes[ok], truth[ok], predicted[ok], k, threshold),
        "rows": int(ok.sum()),
    }


def evaluate_new_users(
    users: np.ndarray,
    jokes: np.ndarray,
    ratings: np.ndarray,
    is_test: np.ndarray,
    *,
    params: dict,
    bias_reg: float,
    new_users: NewUsersConfig,
    k: int,
    threshold: float,
    rating_range,
    seed: int,
) -> dict:
    """The ``new_users`` section of ``metrics.json``: for the gauge jokes and every k of
    ``new_users.reveal``, the scores of fold-in, popularity and a full refit on the held-out users' other
    ratings. ``is_test`` marks the job's test ratings, which no model here is fitted on."""
    started = time.perf_counter()
    held = held_out_users(users, new_users.holdout_fraction, new_users.seed, new_users.max_users)
    is_held = np.isin(users, held)
    fit_rows = ~is_held & ~is_test
    if held.size == 0 or not fit_rows.any():
        sampled, share = int(np.unique(users).size), new_users.holdout_fraction
        return {
            "users": int(held.size),
            "k": k,
            "skipped": f"none of the {sampled:,} sampled users fell in the share held out whole "
            f"(new_users.holdout_fraction {share}), so fold-in has no one to be scored on; more users or a "
            "larger share give it some"
            if held.size == 0
            else f"the share held out whole (new_users.holdout_fraction {share}) took {held.size:,} of the "
            f"{sampled:,} sampled users and left no training rating to fit the model on; a smaller share "
            "leaves some",
        }
    fit_kwargs = dict(
        rank=int(params["rank"]),
        reg_param=float(params["regParam"]),
        max_iter=int(params["maxIter"]),
        biases=bool(params.get("biases")),
        bias_reg=bias_reg,
        seed=seed,
    )
    base = fit_numpy_als(RatingMatrix.from_ids(users[fit_rows], jokes[fit_rows], ratings[fit_rows]), **fit_kwargs)
    foldable = from_numpy_model(base, fit_kwargs["reg_param"])
    joke_ids, joke_index = np.unique(jokes[fit_rows], return_inverse=True)
    popularity = np.bincount(joke_index, ratings[fit_rows]) / np.bincount(joke_index)
    h_users, h_jokes, h_ratings = users[is_held], jokes[is_held], ratings[is_held]
    gauge = list(new_users.gauge_jokes)
    not_a_gauge = gauge_problem(users, jokes, gauge)
    scenarios = {} if not_a_gauge else {"gauge": reveal_gauge(h_users, h_jokes, gauge)}
    scenarios.update({str(n): reveal_random(h_users, h_jokes, n, new_users.seed) for n in new_users.reveal})
    result: dict = {
        "users": int(held.size),
        "fitted_on_users": int(np.unique(users[fit_rows]).size),
        "k": k,
        "relevance_threshold": threshold,
        "params": {**params, "bias_reg": bias_reg},
        "gauge_jokes": gauge,
        "random": {},
    }
    if not_a_gauge:
        result["gauge_skipped"] = not_a_gauge
    fold_seconds = refit_seconds = 0.0
    for name, (revealed, eligible) in scenarios.items():
        scored = eligible & ~revealed
        clock = time.perf_counter()
        folded = fold_in(foldable, h_users[revealed], h_jokes[revealed], h_ratings[revealed])
        fold_seconds += time.perf_counter() - clock
        su, sj, truth = h_users[scored], h_jokes[scored], h_ratings[scored]
        where, known = np.searchsorted(joke_ids, sj), np.isin(sj, joke_ids)
        by_popularity = np.where(known, popularity[np.minimum(where, len(joke_ids) - 1)], np.nan)
        clock = time.perf_counter()
        refit_rows = fit_rows.copy()
        refit_rows[np.flatnonzero(is_held)[revealed]] = True
        refit = fit_numpy_als(
            RatingMatrix.from_ids(users[refit_rows], jokes[refit_rows], ratings[refit_rows]), **fit_kwargs
        )
        refit_seconds += time.perf_counter() - clock
        entry = {
            "users": int(np.unique(h_users[eligible]).size),
            "revealed_per_user": float(revealed.sum() / max(1, np.unique(h_users[revealed]).size)),
        }
        for predictor, predicted in (
            ("model", predict(foldable, folded, su, sj)),
            ("popularity", by_popularity),
            ("refit", refit.predict(su, sj)),
        ):
            entry[predictor] = _scores(truth, predicted, rating_range, su, sj, k, threshold)
        if name == "gauge":
            result["gauge"] = entry
        else:
            result["random"][name] = entry
    result["seconds"] = {"total": time.perf_counter() - started, "fold_in": fold_seconds, "refits": refit_seconds}
    # timed on what a new user shows: its gauge ratings, or 10 ratings where the gauge jokes are no gauge
    shown = reveal_random(users, jokes, 10, new_users.seed)[0] if not_a_gauge else np.isin(jokes, gauge)
    result["serve_seconds"] = serve_seconds(foldable, users, jokes, ratings, shown)
    return result


def serve_seconds(foldable, users: np.ndarray, jokes: np.ndarray, ratings: np.ndarray, shown: np.ndarray) -> dict:
    """Median seconds of folding in 1 and 10,000 users at once from their ``shown`` ratings (the input in
    memory), where the sample has that many users."""
    raters = np.unique(users[shown])
    timed = {}
    for count in (1, 10_000):
        if raters.size >= count:
            chosen = shown & np.isin(users, raters[:count])
            timed[str(count)] = timed_fold_in(foldable, users[chosen], jokes[chosen], ratings[chosen])
    return timed


def median_seconds(call, repeats: int) -> float:
    """Median seconds of ``repeats`` calls of ``call()``."""
    times = []
    for _ in range(repeats):
        clock = time.perf_counter()
        call()
        times.append(time.perf_counter() - clock)
    return float(np.median(times))


def timed_fold_in(foldable, users: np.ndarray, jokes: np.ndarray, ratings: np.ndarray, repeats: int = 5) -> float:
    """Median seconds of folding in these users (the input already in memory)."""
    return median_seconds(lambda: fold_in(foldable, users, jokes, ratings), repeats)
