"""``report.md``: the results in ``metrics.json`` as a person reads them."""

from __future__ import annotations


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _params(params: dict | None) -> str:
    if not params:
        return "n/a"
    return ", ".join(f"{k}={v}" for k, v in sorted(params.items()))


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def render_report(metrics: dict) -> str:
    out = ["# jester-als report", ""]
    run = metrics.get("run", {})
    if run:
        out += [f"Run {run.get('run_id', '')} of `{run.get('job', '')}`, finished {run.get('finished', '')}, "
                f"config `{run.get('config_file')}`.", ""]
    data = metrics.get("data")
    if data:
        out += ["## Data", "",
                table(["users", "jokes", "ratings", "train", "test", "rejected cells", "missing cells"],
                      [[_num(data.get("users")), _num(data.get("items")), _num(data.get("ratings")),
                        _num(data.get("train_ratings")), _num(data.get("test_ratings")),
                        _num(data.get("rejected")), _num(data.get("missing"))]]), ""]
        by_reason = (data.get("cells") or {}).get("rejected") or {}
        if by_reason:
            out += ["Refused cells by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(by_reason.items()))
                    + " (see `rejected/`).", ""]
    comparison = engine_rows(metrics)
    if comparison:
        out += ["## Engines on the same held-out ratings", "",
                table(["engine", "params", "fit (s)", "test RMSE", "test MAE", "rows scored"], comparison), ""]
    spark = metrics.get("spark_als")
    if spark and spark.get("validation"):
        out += ["## TrainValidationSplit grid", "",
                f"{len(spark['validation'])} grid points in {_num(spark.get('tune_seconds'), 1)} s "
                f"(validation RMSE on a {_num(spark.get('train_ratio'), 2)} train ratio of the training ratings).", "",
                table(["params", "validation RMSE", ""],
                      [[_params(p["params"]), _num(p["validation_rmse"]),
                        "best" if all(spark["best_params"].get(k) == v for k, v in p["params"].items())
                        else ""] for p in spark["validation"]]), ""]
        k = (spark.get("ranking") or {}).get("k")
        if k:
            out += [f"Ranking each user's held-out jokes by predicted rating (relevant: rating >= "
                    f"{spark['ranking'].get('relevance_threshold')}): precision@{k} "
                    f"{_num(spark.get(f'precision_at_{k}'))}, NDCG@{k} {_num(spark.get(f'ndcg_at_{k}'))} over "
                    f"{_num(spark['ranking'].get('users'))} users.", ""]
    recs = metrics.get("recommendations")
    if recs:
        out += ["## Recommendations", "",
                f"Top {recs['top_n']} unrated jokes for {_num(recs['users'])} users in `recommendations/`; "
                f"{_num(recs.get('users_without'))} users rated every joke and get none.", ""]
    return "\n".join(out)


def engine_rows(metrics: dict) -> list[list]:
    rows = []
    spark = metrics.get("spark_als")
    if spark and "test_rmse" in spark:
        rows.append(["Spark ALS (all test ratings)", _params(spark.get("model_params") or spark.get("best_params")),
                     _num(spark.get("fit_seconds"), 2), _num(spark["test_rmse"]), _num(spark.get("test_mae")),
                     _num(spark.get("test_rows_scored"))])
    return rows
