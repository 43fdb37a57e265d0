"""The project's one chispa wrapper: DataFrame equality with the options fixed in one place."""

from chispa import assert_approx_df_equality, assert_df_equality


def assert_frames_equal(actual, expected, *, precision: float | None = None) -> None:
    """Same rows (in any order) and same column names and types, nullability aside."""
    if precision is None:
        assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    else:
        assert_approx_df_equality(actual, expected, precision, ignore_row_order=True, ignore_nullable=True)
