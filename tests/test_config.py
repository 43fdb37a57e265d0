"""Config validation: every problem at once, each with its key path; typed --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import ROOT, job_argv
from jester_als.cli import main
from jester_als.config import ConfigError, load_config, parse_override

ROOT_CONF = "conf/local.yaml"


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_shipped_configs_are_valid():
    cfg = load_config(ROOT_CONF)
    assert cfg.input.path == "data/jester_synthetic.csv"
    assert cfg.tune.grid.as_dict() == {
        "rank": [5, 10, 20],
        "regParam": [0.3, 0.5],
        "biases": [False, True],
        "maxIter": [5],
    }


def test_unknown_key_is_named(tmp_path):
    path = write(tmp_path, "output: {dir: out}\ntune: {grdi: {rank: [5]}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "tune.grdi: unknown key" in str(err.value)
    assert path in str(err.value)


def test_wrong_types_and_values_are_all_reported_at_once(tmp_path):
    path = write(
        tmp_path,
        """
output: {dir: out}
split: {test_fraction: 1.5, seed: "forty-two"}
tune:
  grid: {rank: [0, 5], regParam: [-0.1], maxIter: []}
  parallelism: two
new_users: {gauge_jokes: [5, 7, 5]}
""",
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    problems = err.value.problems
    assert "split.test_fraction: must be between 0 and 1 (exclusive), got 1.5" in problems
    assert "split.seed: expected an integer, got 'forty-two'" in problems
    assert "tune.parallelism: expected an integer, got 'two'" in problems
    assert "tune.grid.rank: 0 must be >= 1" in problems
    assert "tune.grid.regParam: -0.1 must be > 0 (ALS needs regularization)" in problems
    assert "tune.grid.maxIter: empty list (give at least one value)" in problems
    assert "new_users.gauge_jokes: must not repeat a value, got [5, 7, 5]" in problems


def test_null_where_a_value_is_needed(tmp_path):
    with pytest.raises(ConfigError, match=r"output.dir: must not be null \(expected a string\)"):
        load_config(write(tmp_path, "output: {dir: null}\n"))


def test_grid_names_only_als_params(tmp_path):
    with pytest.raises(ConfigError, match=r"tune.grid.learningRate: not an ALS parameter"):
        load_config(write(tmp_path, "output: {dir: o}\ntune: {grid: {learningRate: [0.1]}}\n"))


def test_set_overrides_are_typed():
    cfg = load_config(
        ROOT_CONF,
        [
            "tune.grid.rank=[3, 7]",
            "split.test_fraction=0.25",
            "tune.parallelism=1",
            "als.blocks=4",
            "output.mode=error",
            "spark.conf.spark.sql.shuffle.partitions=8",
        ],
    )
    assert cfg.tune.grid.rank == [3, 7]
    assert cfg.split.test_fraction == 0.25
    assert cfg.als.blocks == 4
    assert cfg.output.mode == "error"
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == 8


def test_set_override_with_wrong_type_is_refused_as_a_set_problem():
    with pytest.raises(ConfigError) as refused:
        load_config(ROOT_CONF, ["tune.parallelism=many", "tune.grid={rank: [five], maxIter: [10]}"])
    assert set(refused.value.problems) == {
        "--set tune.parallelism=many: expected an integer, got 'many'",
        "--set tune.grid={rank: [five], maxIter: [10]}: expected an integer, got 'five' (at tune.grid.rank)",
    }
    assert str(refused.value).startswith("invalid --set value(s) (2 problem(s)):")
    assert "local.yaml" not in str(refused.value)  # the file is fine


def test_int_stands_for_float():
    cfg = load_config(ROOT_CONF, ["tune.grid.regParam=[1]"])
    assert cfg.tune.grid.regParam == [1.0] and isinstance(cfg.tune.grid.regParam[0], float)


def test_malformed_set_is_a_usage_error():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_override("tune.parallelism")


def test_output_dir_that_is_a_file_is_refused(tmp_path):
    afile = tmp_path / "f"
    afile.write_text("x")
    with pytest.raises(ConfigError, match=r"--set output.dir=.*: .* is a file"):
        load_config(ROOT_CONF, [f"output.dir={afile}"])


def test_cli_exits_2_on_config_errors_before_spark_starts(tmp_path, capsys):
    assert main(job_argv("tune", "tune.grid.rank=[]", "bogus=1", conf=ROOT_CONF)) == 2
    err = capsys.readouterr().err
    assert "--set tune.grid.rank=[]: empty list" in err and "--set bogus=1: unknown key" in err


def test_cli_exits_2_on_missing_config_file(capsys):
    assert main(job_argv("prepare", conf="no/such.yaml")) == 2
    assert "config file 'no/such.yaml' does not exist" in capsys.readouterr().err


def test_every_job_has_help(capsys):
    for job in ("generate", "prepare", "tune", "recommend", "pipeline"):
        assert main([job, "--help"]) == 0
        assert "--conf" in capsys.readouterr().out
    assert main(["nonsense"]) == 2


def test_regparam_must_be_positive():
    with pytest.raises(ConfigError) as refused:
        load_config(None, ["output.dir=/tmp/x", "tune.grid.regParam=[0.1, 0]", "bench.regParam=0"])
    assert "--set tune.grid.regParam=[0.1, 0]: 0 must be > 0 (ALS needs regularization)" in refused.value.problems
    assert "--set bench.regParam=0: must be > 0, got 0" in refused.value.problems
    with pytest.raises(ConfigError) as refused:
        load_config(None, ["output.dir=/tmp/x", "baseline.params={rank: 3, regParam: 0, maxIter: 5}"])
    assert (
        "--set baseline.params={rank: 3, regParam: 0, maxIter: 5}: 0 must be > 0 (ALS needs regularization) "
        "(at baseline.params.regParam)"
    ) in refused.value.problems


def test_the_embedded_default_is_the_built_in_default():
    """One set of defaults: conf/local.yaml states nothing the schema does not, so `--conf` may be left out."""
    assert load_config(ROOT_CONF).model_dump() == load_config(None).model_dump()


def test_config_table_shows_each_key_with_its_type_and_default():
    """The table the README's section is generated from (tests/test_readme.py compares the two)."""
    from jester_als.config import config_table

    assert "| `tune.refit_max_iter` | integer | `20` |" in config_table()  # what a reader looks up, e.g.


def test_packaged_configs_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    from jester_als.config import packaged_configs, resolve_conf_path

    monkeypatch.chdir(tmp_path)  # no conf/ here: a user's directory after pip install
    assert set(packaged_configs()) == {"local", "bench", "scale", "databricks", "jester"}
    for name in ("bench", "conf/bench.yaml", "bench.yaml"):
        assert Path(resolve_conf_path(name)).read_text() == (ROOT / "conf" / "bench.yaml").read_text()
    with pytest.raises(ConfigError, match="packaged configs: bench, databricks, jester, local, scale"):
        resolve_conf_path("conf/nope.yaml")


def test_types_are_strict_and_worded_as_people_write_them(tmp_path):
    path = write(
        tmp_path,
        """
tune: {parallelism: true, train_ratio: "0.8"}
input: {missing_values: [99, "n/a", false], format: xlsb, delimiter: ";;"}
spark: {conf: {spark.driver.memory: [4g]}, local_java_options: ["-Xmx2g", "XX:FreqInlineSize=90"]}
recommend: [10]
""",
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert set(err.value.problems) == {
        "tune.parallelism: expected an integer, got True",
        "tune.train_ratio: expected a number, got '0.8'",
        "input.missing_values: expected a list of number values, got item(s) ['n/a', False]",
        "input.format: expected one of ['csv', 'parquet', 'table', 'xls'], got 'xlsb'",
        "input.delimiter: expected a single character, got ';;'",
        "spark.conf.spark.driver.memory: expected a string or a number or a boolean, got ['4g']",
        "spark.local_java_options: each JVM option must start with '-', got ['-Xmx2g', 'XX:FreqInlineSize=90']",
        "recommend: expected a mapping, got list",
    }


def test_empty_sections_and_mappings_take_their_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "tune:\n  grid:\nspark:\n  conf:\nrecommend:\n"))
    assert cfg.tune.grid.as_dict() == load_config(None).tune.grid.as_dict()
    assert cfg.spark.conf == {} and cfg.recommend.top_n == 10


def test_every_key_of_the_models_is_documented():
    from jester_als.config import describe_schema

    rows = describe_schema()
    assert len(rows) > 100
    assert [key for key, _, _, doc in rows if not doc.strip()] == []
    assert ("als.blocks", "integer or string", "auto") == rows[[r[0] for r in rows].index("als.blocks")][:3]


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys without a word; the config names both, for every mapping."""
    conf = tmp_path / "twice.yaml"
    conf.write_text("als:\n  seed: 1\n  seed: 2\ntune:\n  grid:\n    rank: [5]\n    rank: [10]\nals:\n  blocks: 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(conf))
    assert caught.value.problems == [
        "als.seed: given twice (lines 2 and 3); remove one",
        "tune.grid.rank: given twice (lines 6 and 7); remove one",
        "als: given twice (lines 1 and 8); remove one",
    ]
    assert str(conf) in str(caught.value)


def test_a_set_inside_the_grid_changes_one_key_with_or_without_conf():
    """`--set tune.grid.rank=...` changes the rank of the grid in force, whether the grid comes from a file or
    from the built-in defaults; the other grid keys stay."""
    from_defaults = load_config(None, ["tune.grid.rank=[5, 10]"]).tune.grid.as_dict()
    from_file = load_config(ROOT_CONF, ["tune.grid.rank=[5, 10]"]).tune.grid.as_dict()
    assert from_defaults == from_file
    assert from_defaults["rank"] == [5, 10] and from_defaults["biases"] == [False, True]
    assert load_config(None, ["tune.grid={rank: [3]}"]).tune.grid.as_dict() == {"rank": [3]}  # a whole grid replaces
