"""`python -m jester_als.speed`: each variant's runs in turn, the table of medians and savings, clear failures."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from jester_als import speed
from jester_als.config import load_config


def test_a_study_runs_the_variants_in_turn_and_keeps_each_runs_steps(pipeline_run, tmp_path):
    """Round by round, every variant once per round, each with the common settings under its own; each run's
    outputs are removed once its metrics are read. The runner stands in for the fresh process only: the metrics
    it leaves are a real pipeline run's."""
    out, _, _ = pipeline_run
    metrics = json.loads((out / "metrics.json").read_text())
    calls = []

    def run(argv):
        calls.append(argv)
        out_dir = argv[argv.index("--set") + 1].removeprefix("output.dir=")
        os.makedirs(out_dir)
        shutil.copy(out / "metrics.json", out_dir)

    variants = speed.variants_named(["as configured", "no reference scan"])
    work = tmp_path / "runs"
    result = speed.study("conf/local.yaml", str(work), repeats=2, variants=variants, settings=["a.b=1"], run=run)

    expected = [
        speed.pipeline_argv("conf/local.yaml", str(work / f"run-{r}-{i}"), ["a.b=1", *v.settings])
        for r in range(2)
        for i, v in enumerate(variants)
    ]
    assert calls == expected
    assert calls[1][-2:] == ["--set", "input.reference_scan=false"]
    assert not list(work.iterdir())
    runs = result["variants"][1]["runs"]
    assert len(runs) == 2
    assert runs[0]["steps_total"] == pytest.approx(sum(metrics["steps_seconds"].values()), abs=0.01)
    assert runs[0]["chosen"] == metrics["spark_als"]["model_params"]
    assert runs[0]["chosen_validation_rmse"] == min(p["validation_rmse"] for p in metrics["spark_als"]["validation"])


def _result(totals: dict[str, list[float]]) -> dict:
    def run(total):
        return {
            "steps_seconds": {"prepare": total / 2, "tune": total / 2},
            "steps_total": total,
            "grid_points": 12,
            "chosen": {"rank": 10},
            "chosen_validation_rmse": 4.0,
            "load_average_1min": [0.5, 2.0],
        }

    return {
        "written": "2026-12-04T00:00:00+00:00",
        "seconds": 600,
        "config": "conf/local.yaml",
        "settings": [],
        "repeats": 3,
        "machine": {"cpus": 2, "python": "3.11", "pyspark": "4.3.0"},
        "variants": [
            {"name": name, "settings": [f"{name}=1"], "gives_up": "x", "runs": [run(t) for t in values]}
            for name, values in totals.items()
        ],
    }


def test_the_table_gives_medians_and_what_each_variant_saves_against_the_first():
    result = _result({"base": [70.0, 90.0, 72.0], "cut": [60.0, 61.0, 80.0]})
    rows = speed.summary(result)
    assert [row["steps_total"] for row in rows] == [72.0, 61.0]
    assert [row["saves"] for row in rows] == [0.0, 11.0]
    assert rows[1]["steps"]["prepare"] == 30.5 and rows[1]["steps"]["new_users"] == 0.0
    page = speed.render(result)
    assert "| cut | `cut=1` | 61.0 | 11.0 | 30.5 | 30.5 |" in page
    assert "Fastest: cut, 61.0 s against 72.0 s (0.85 of it)" in page
    assert "ranged 0.50 to 2.00" in page


def test_an_unknown_variant_is_refused_naming_the_known_ones():
    with pytest.raises(SystemExit, match=r"unknown variant\(s\) \['fast'\]; the variants are \['as configured'"):
        speed.variants_named(["fast"])


def test_a_failed_run_names_its_command_and_the_jobs_own_error(tmp_path):
    with pytest.raises(RuntimeError) as failed:
        speed.run_in_new_process(speed.pipeline_argv(str(tmp_path / "missing.yaml"), str(tmp_path / "out"), []))
    message = str(failed.value)
    assert "-m jester_als.cli pipeline --conf" in message and "exited 2" in message
    assert "missing.yaml' does not exist" in message


def test_every_variant_is_a_valid_config_that_changes_what_it_names():
    """A study runs for half an hour: a variant whose settings the config refuses, or that changes nothing,
    would fail or mislead only at its turn."""
    base = load_config("conf/local.yaml").model_dump()
    for variant in speed.VARIANTS[1:]:
        changed = load_config("conf/local.yaml", variant.settings).model_dump()
        assert changed != base, variant.name
    cfg = load_config("conf/local.yaml", speed.variants_named(["64 MB pages"])[0].settings)
    assert cfg.spark.conf == {"spark.buffer.pageSize": "64m"}
    cfg = load_config("conf/local.yaml", speed.variants_named(["the JVM's own inlining"])[0].settings)
    assert cfg.spark.local_java_options == ["-XX:+UseParallelGC"]
