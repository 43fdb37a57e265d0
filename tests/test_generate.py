"""The generator: deterministic, Jester-shaped, and with the structure it claims to plant."""

from __future__ import annotations

import csv

import numpy as np

from conftest import small_params
from jester_als.generate import GeneratorParams, generate_chunks, write_wide_csv


def read_wide(path):
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    return header, rows


def test_same_seed_same_file_other_seed_other_file(tmp_path):
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    write_wide_csv(small_params(), str(a))
    write_wide_csv(small_params(), str(b))
    write_wide_csv(small_params(seed=12), str(c))
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_seed_format_shape_range_and_counts(tmp_path):
    path = tmp_path / "t.csv"
    params = small_params(users=300, jokes=25, min_ratings=12, mean_ratings=18, gauge_jokes=5)
    stats = write_wide_csv(params, str(path))
    header, rows = read_wide(path)
    assert header == ["User", "Number of Jokes Rated"] + [str(j) for j in range(1, 26)]
    assert len(rows) == 300 and [int(r[0]) for r in rows] == list(range(1, 301))
    for row in rows:
        cells = [c for c in row[2:] if c != ""]
        assert int(row[1]) == len(cells) >= 12
        values = [float(c) for c in cells]
        assert all(-10.0 <= v <= 10.0 for v in values)
        assert all(c == f"{float(c):.2f}" for c in cells)  # rounded to 0.01, never "-0.00"
    assert stats["ratings"] == sum(int(r[1]) for r in rows)
    assert stats["min_ratings_per_user"] >= 12


def test_default_parameters_look_like_jester_dataset_1():
    """Density, spread, zeros and gauge jokes near the real set's, on a 5,000-user draw."""
    params = GeneratorParams(users=5000)
    ratings = np.vstack([chunk.ratings for chunk in generate_chunks(params)])
    rated = ~np.isnan(ratings)
    values = ratings[rated]
    assert ratings.shape == (5000, 100)
    assert 70.0 < rated.sum(axis=1).mean() < 75.5  # real: 72.6
    assert rated.sum(axis=1).min() >= 36
    assert 0.6 < values.mean() < 1.2  # real: about 0.92
    assert 4.9 < values.std() < 5.5  # real: about 5.2
    assert 0.002 < np.mean(values == 0.0) < 0.004  # real: about 0.3%
    coverage = rated.mean(axis=0)
    assert np.sum(coverage > 0.97) == 30  # the gauge block
    assert 0.2 < np.mean(rated.sum(axis=1) == 100) < 0.3


def test_planted_structure_is_what_the_ratings_carry():
    """Without noise or clipping, ratings are exactly mean + effects + factors (rounded)."""
    params = small_params(noise=0.0, users=50, factor_scale=1.0, user_bias=0.5, joke_bias=0.5)
    chunk = next(generate_chunks(params))
    from jester_als.generate import planted_model

    model = planted_model(params)
    signal = (params.mean + chunk.user_effects[:, None] + model.joke_effects[None, :]
              + chunk.user_factors @ model.joke_factors.T)
    rated = ~np.isnan(chunk.ratings)
    assert np.max(np.abs(chunk.ratings[rated] - np.round(signal[rated], 2))) < 1e-9
