"""The project's comparisons in one place: the chispa wrapper (DataFrame equality with its options fixed) and
equality of results with Spark's floating tolerance."""

import pytest
from chispa import assert_approx_df_equality, assert_df_equality


def assert_frames_equal(actual, expected, *, precision: float | None = None) -> None:
    """Same rows (in any order) and same column names and types, nullability aside."""
    if precision is None:
        assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    else:
        assert_approx_df_equality(actual, expected, precision, ignore_row_order=True, ignore_nullable=True)


def assert_same_results(actual, expected, *, rel: float, where: str = "metrics") -> None:
    """Equal structure and values, floats to ``rel`` relative. Spark sums in the order its tasks finish, so two
    correct runs may differ in the last bits of a metric; everything else must match exactly."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert set(actual) == set(expected), f"{where}: {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_same_results(actual[key], expected[key], rel=rel, where=f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same_results(a, e, rel=rel, where=f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=rel, abs=1e-12), where
    else:
        assert actual == expected, where
