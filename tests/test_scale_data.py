"""The scaling study's tables: the long generator, the split on one thread and on two, a probe reading the first
users of a larger table."""

from __future__ import annotations

import numpy as np
import pytest


def test_long_generator_draws_by_popularity_keeps_gauge_jokes_and_repeats_itself():
    from jester_als.generate import GeneratorParams, generate_long_chunks, long_chunks, planted_model

    params = GeneratorParams(users=3_000, jokes=5_000, mean_ratings=40, min_ratings=20, gauge_jokes=5, seed=4)
    first = [np.concatenate(parts) for parts in zip(*generate_long_chunks(params))]
    again = [np.concatenate(parts) for parts in zip(*long_chunks(params))]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    users, jokes, values = first
    cells = users.astype(np.int64) * (params.jokes + 1) + jokes
    assert np.unique(cells).size == cells.size  # a user rates a joke once
    assert users.min() == 1 and users.max() == params.users and jokes.min() >= 1 and jokes.max() <= params.jokes
    per_user = np.bincount(users)[1:]
    # 20..60 drawn (mean 40), few repeats among 5,000 jokes, plus the 5 gauge jokes nearly all keep
    assert 40 < per_user.mean() < 46 and per_user.min() >= 20
    model = planted_model(params)
    gauge = np.flatnonzero(model.gauge) + 1
    assert np.isin(jokes, gauge).sum() > 0.98 * params.users * gauge.size
    counts = np.bincount(jokes, minlength=params.jokes + 1)[1:]
    others = ~model.gauge
    # popular jokes are drawn more: the correlation of counts with the popularity weights is strong
    assert np.corrcoef(counts[others], model.popularity[others])[0, 1] > 0.8
    assert values.min() >= -10 and values.max() <= 10


@pytest.mark.parametrize("jokes", [100, 3000], ids=["wide", "long"])
def test_generated_split_is_the_same_on_one_thread_and_on_two(tmp_path, monkeypatch, jokes):
    """Chunks generated on a thread pool are written in order: the Parquet files hold the same rows as when
    one thread generates everything."""
    import jester_als.generate as generate
    import jester_als.harness.data as data
    from jester_als.generate import GeneratorParams

    params = GeneratorParams(users=3_000, jokes=jokes, seed=5, mean_ratings=40, min_ratings=10, gauge_jokes=5)
    monkeypatch.setattr(generate, "CELLS_PER_CHUNK", 30_000)  # ten chunks of 300 users (wide)
    monkeypatch.setattr(generate, "RATINGS_PER_LONG_CHUNK", 12_000)  # ten chunks of 300 users (long)
    files = []
    for threads in (1, 2):
        monkeypatch.setattr(data, "engine_threads", lambda threads=threads: threads)
        sizes = data.write_split_parquet(params, tmp_path / str(threads), 0.2, 42)
        files.append([data.read_ratings(tmp_path / str(threads) / f"{name}.parquet") for name in ("train", "test")])
        assert sizes["train_ratings"] == files[-1][0][0].size and sizes["test_ratings"] == files[-1][1][0].size
    for one, two in zip(*files):
        for a, b in zip(one, two):
            assert np.array_equal(a, b)
    assert files[0][1][0].size > 0.15 * (files[0][0][0].size + files[0][1][0].size)  # a split, not empty


def test_a_probe_reads_the_first_users_of_a_larger_table(tmp_path, monkeypatch):
    """A smaller limit probe fits the first users of its larger probe's table: the rows read up to a user id are
    exactly the table's rows of those users, found from the row groups' statistics wherever the boundary falls
    (inside a group, on a group's end, before the first user, past the last), and counted the same way."""
    import pyarrow.parquet as pq

    import jester_als.generate as generate
    import jester_als.harness.data as data
    from jester_als.generate import GeneratorParams

    params = GeneratorParams(users=3_000, jokes=100, seed=5, mean_ratings=40, min_ratings=10, gauge_jokes=5)
    monkeypatch.setattr(generate, "CELLS_PER_CHUNK", 30_000)  # ten chunks of 300 users, a row group each
    data.write_split_parquet(params, tmp_path, 0.2, 42)
    for name in ("train", "test"):
        assert pq.ParquetFile(tmp_path / f"{name}.parquet").num_row_groups == 10
        users, jokes, ratings = data.read_ratings(tmp_path / f"{name}.parquet")
        assert users[0] == 1 and users[-1] == 3_000 and np.all(np.diff(users) >= 0)
        for max_user in (0, 1, 450, 600, 2_999, 3_000, 10_000):
            keep = users <= max_user
            got = data.read_ratings(tmp_path / f"{name}.parquet", max_user)
            for a, b in zip(got, (users[keep], jokes[keep], ratings[keep])):
                assert np.array_equal(a, b), (name, max_user)
            assert data.split_counts(tmp_path, max_user)[f"{name}_ratings"] == keep.sum()
