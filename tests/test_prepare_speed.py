"""`python -m jester_als.prepare_speed`: prepare run again and again in one session, the processes of each order in
turn, the three readings from the right runs."""

from __future__ import annotations

import json

import pytest

from jester_als import prepare_speed
from jester_als.config import load_config


def test_a_session_runs_the_jobs_prepare_again_and_keeps_each_runs_timing(spark, small_table, tmp_path):
    """The worker's loop on the tests' session: the first run of a prepare-first session has no scan, the later
    ones scan before and after; every run is the one pass, and nothing is left behind."""
    path, _ = small_table
    cfg = load_config("conf/local.yaml", [f"input.path={path}"])
    work = tmp_path / "work"
    runs = prepare_speed.session_runs(spark, cfg, str(work), 3, "prepare_first")
    assert len(runs) == 3
    assert "reference_scan" not in runs[0] and "reference_scan_first" not in runs[0]
    for run in runs:
        assert run["prepare"] > 0 and set(run["one_pass_parts"]) >= {"pass", "written_counts", "refused"}
    for run in runs[1:]:
        assert run["reference_scan_first"] > 0 and run["reference_scan"] > 0
        # the job's ratio is of the unrounded seconds, which lie within 0.005 of those it reports
        low, high = run["prepare"] - 0.005, run["prepare"] + 0.005
        assert (
            low / (run["reference_scan"] + 0.005) - 0.005
            <= run["ratio"]
            <= high / (run["reference_scan"] - 0.005) + 0.005
        )
    assert not work.exists()  # the staged ratings and refused cells are removed, and the directory made for them


def test_the_worker_writes_its_record(spark, small_table, tmp_path):
    """`--worker` as the study starts it (here in the tests' process, whose session it joins)."""
    path, _ = small_table
    result = tmp_path / "result.json"
    argv = ["--conf", "conf/local.yaml", "--set", f"input.path={path}", "--runs", "2"]
    assert prepare_speed.main([*argv, "--worker", "scan_first", str(result)]) == 0
    record = json.loads(result.read_text())
    assert record["order"] == "scan_first" and len(record["runs"]) == 2
    assert all(run["reference_scan_first"] > 0 for run in record["runs"])
    assert len(record["load_average_1min"]) == 2
    with pytest.raises(SystemExit):
        prepare_speed.main([*argv, "--worker", "scan_last", str(result)])
    with pytest.raises(SystemExit):
        prepare_speed.main([*argv[:-1], "1"])  # one run has nothing warm


def _run(scan_first=None, prepare=0.0, scan=None, parts=None) -> dict:
    run = {"prepare": prepare}
    if parts is not None:  # the pass, the written counts, the refused cells (the unique-user check not run)
        run["one_pass_parts"] = dict(zip(("pass", "written_counts", "refused", "unique_users"), (*parts, 0.0)))
    if scan_first is not None:
        run.update(reference_scan_first=scan_first, reference_scan=scan)
    return run


# Two processes of each order, planted so that each reading has its own answer: the first scan of a prepare-first
# session (9.0) is cold and must not count as warm, nor may a session's first prepare.
PLANTED = [
    {"order": "prepare_first", "runs": [_run(prepare=10.0), _run(9.0, 2.0, 1.0), _run(1.0, 3.0, 1.0)]},
    {"order": "scan_first", "runs": [_run(6.0, 5.0, 2.0, (3.0, 1.0, 0.5)), _run(1.0, 2.5, 1.5, (1.5, 0.5, 0.2))]},
    {"order": "prepare_first", "runs": [_run(prepare=12.0), _run(9.0, 2.0, 1.0)]},
    {"order": "scan_first", "runs": [_run(4.0, 7.0, 2.0, (5.0, 1.4, 0.1)), _run(2.0, 4.0, 1.0, (2.5, 0.7, 0.2))]},
]


def test_the_three_readings_take_their_own_runs():
    readings = prepare_speed.summary({"processes_run": [{**r, "load_average_1min": [0.1, 0.2]} for r in PLANTED]})
    # in the job: the scan-first sessions' first prepare (5, 7) against the scan after it (2, 2)
    assert readings["in_the_job"] == {"prepare": 6.0, "scan": 2.0, "ratio": 3.0, "prepare_runs": 2, "scan_runs": 2}
    # alone: the prepare-first sessions' first prepare (10, 12) against the scan-first sessions' first scan (6, 4)
    assert readings["alone"]["prepare"] == 11.0 and readings["alone"]["scan"] == 5.0
    assert readings["alone"]["ratio"] == pytest.approx(2.2)
    # warm: prepares 2, 3, 2.5, 2, 4 and scans 1, 1, 1, 2, 1, 1.5, 1, 2, 2, 1 (every one that ran before in its session)
    assert readings["warm"]["prepare"] == 2.5 and readings["warm"]["prepare_runs"] == 5
    assert readings["warm"]["scan"] == 1.0 and readings["warm"]["scan_runs"] == 10


def test_the_study_runs_the_orders_in_turn_and_renders_each_reading(tmp_path):
    """The runner stands in for the fresh process only; the page is rendered from what it returned."""
    calls = []
    planted = iter(PLANTED)

    def run(conf, settings, runs, order, result_file):
        calls.append((conf, settings, runs, order))
        assert result_file.startswith(str(tmp_path))
        return {**next(planted), "load_average_1min": [0.5, 1.5]}

    result = prepare_speed.study("conf/local.yaml", str(tmp_path), processes=2, runs=3, settings=["a.b=1"], run=run)
    assert [c[3] for c in calls] == ["prepare_first", "scan_first"] * 2
    assert all(c[:3] == ("conf/local.yaml", ["a.b=1"], 3) for c in calls)
    assert list(tmp_path.iterdir()) == []  # each process's directory removed once read
    page = prepare_speed.render(result)
    assert "| in the job | prepare's first run in its session against the scan repeated after it" in page
    assert "| 6.00 | 2.00 | 3.00x | 2 / 2 |" in page and "| 11.00 | 5.00 | 2.20x | 2 / 2 |" in page
    assert "| 2.50 | 1.00 | 2.50x | 5 / 10 |" in page
    assert "ranged 0.50 to 1.50" in page and "with `a.b=1`" in page


RESULT_HEAD = {
    "written": "2026-12-04T12:00:00+00:00",
    "seconds": 60,
    "config": "conf/local.yaml",
    "settings": [],
    "processes": 2,
    "runs": 3,
    "machine": {"cpus": 2, "python": "3.11.7", "pyspark": "4.3.0"},
}


def test_prepares_parts_are_read_from_the_same_runs_as_the_readings():
    """Only the scan-first sessions went in one pass (the prepare-first ones have no parts, as on the general
    path): in the job their first runs, warm their second ones, and alone none."""
    result = {"processes_run": [{**r, "load_average_1min": [0.1, 0.2]} for r in PLANTED]}
    parts = prepare_speed.parts_summary(result)
    assert parts["alone"] is None
    job = parts["in_the_job"]
    # passes 3 and 5, counts 1 and 1.4, refused 0.5 and 0.1; the rest 5 - 4.5 and 7 - 6.5
    assert job["runs"] == 2 and job["pass"] == 4.0 and job["written_counts"] == pytest.approx(1.2)
    assert job["refused"] == pytest.approx(0.3) and job["rest"] == pytest.approx(0.5) and job["unique_users"] == 0.0
    assert parts["warm"]["runs"] == 2 and parts["warm"]["pass"] == 2.0
    page = prepare_speed.render({**result, **RESULT_HEAD})
    assert "| the written ratings counted (their number, sums, hash and jokes) | 1.20 |  | 0.60 |" in page
    assert "| prepare, whole | 6.00 |  | 3.25 |" in page  # over the same runs as the parts: warm, 2.5 and 4
    # the pass against the job's scan (2, 2)
    assert "In the job, prepare's pass alone took 2.00x the repeated scan (4.00 s against 2.00 s)" in page
    # no run in one pass: no section
    general = [
        {**r, "runs": [{k: v for k, v in run.items() if k != "one_pass_parts"} for run in r["runs"]]}
        for r in result["processes_run"]
    ]
    assert "Where prepare's time went" not in prepare_speed.render({**RESULT_HEAD, "processes_run": general})


def test_a_run_whose_scan_could_not_read_the_input_is_left_out_of_the_readings():
    unscanned = {"order": "scan_first", "runs": [_run(prepare=50.0), _run(prepare=40.0)], "load_average_1min": []}
    readings = prepare_speed.summary({"processes_run": [*PLANTED, unscanned]})
    assert readings["in_the_job"]["prepare"] == 6.0 and readings["in_the_job"]["prepare_runs"] == 2
    assert readings["alone"]["scan"] == 5.0


def test_the_larger_table_is_generated_as_the_input_was_with_more_users(tmp_path):
    table = tmp_path / "table.csv"
    settings = [f"generate.path={table}", f"input.path={table}", "generate.users=40"]
    larger = tmp_path / "larger.csv"
    made = prepare_speed.larger_table("conf/local.yaml", settings, 3, str(larger))
    assert made["factor"] == 3 and made["users"] == 120 and made["bytes"] == larger.stat().st_size
    with open(larger, encoding="utf-8") as handle:
        assert handle.readline().startswith("User,Number of Jokes Rated,1,2,")
        assert sum(1 for _ in handle) == 120
    assert made["ratings"] >= 120 * 36  # every generated user rates at least min_ratings (36)
    # an input that is not the generated table: its settings need not read a generated one
    other = [f"generate.path={table}", f"input.path={tmp_path / 'other.csv'}"]
    assert prepare_speed.larger_table("conf/local.yaml", other, 3, str(tmp_path / "none.csv")) is None
    assert not (tmp_path / "none.csv").exists()


# The larger table's processes: the job's reading there is prepare 22 against the scan 11, the pass 16, the counts 3.2.
LARGER = [
    {"order": "scan_first", "runs": [_run(12.0, 20.0, 10.0, (15.0, 3.0, 0.2))]},
    {"order": "scan_first", "runs": [_run(14.0, 24.0, 12.0, (17.0, 3.4, 0.2))]},
]


def test_the_larger_tables_processes_take_their_turn_and_are_set_beside_the_input(tmp_path):
    calls, made = [], []
    planted, larger = iter(PLANTED), iter(LARGER)

    def make_table(conf, settings, factor, path):
        made.append((conf, settings, factor, path))
        return {"factor": factor, "users": 249_830, "ratings": 18_113_373, "bytes": 107_280_092}

    def run(conf, settings, runs, order, result_file):
        calls.append((settings, runs, order))
        record = next(larger) if any(s.startswith("input.path=") for s in settings) else next(planted)
        return {**record, "load_average_1min": [0.5, 1.5]}

    result = prepare_speed.study(
        "conf/local.yaml", str(tmp_path), processes=2, runs=3, larger=10, run=run, make_table=make_table
    )
    table = str(tmp_path / "larger.csv")
    assert made == [("conf/local.yaml", [], 10, table)]
    # each round: a process of each order, then the larger table's, which runs prepare once after a scan
    assert calls == [([], 3, "prepare_first"), ([], 3, "scan_first"), ([f"input.path={table}"], 1, "scan_first")] * 2
    assert [r["runs"] for r in result["processes_run"]] == [r["runs"] for r in PLANTED]
    assert [r["runs"] for r in result["larger"]["processes_run"]] == [r["runs"] for r in LARGER]
    page = prepare_speed.render({**result, **RESULT_HEAD})
    assert "with 10x its users (249,830 users, 18,113,373 ratings, 107.3 MB)" in page
    assert "| the input | 6.00 | 2.00 | 3.00x | 4.00 | 1.20 | 2 |" in page
    assert "| 10x its users | 22.00 | 11.00 | 2.00x | 16.00 | 3.20 | 2 |" in page
    assert (
        "the scan took 5.5x as long and prepare 3.7x; prepare took 11.00 s more than the scan, against 4.00 s" in page
    )
    # without one (or from a study that ran none) no section
    assert "On a larger table" not in prepare_speed.render({**result, **RESULT_HEAD, "larger": None})
    planted = iter(PLANTED)
    no_table = prepare_speed.study(
        "conf/local.yaml", str(tmp_path / "w"), processes=1, runs=3, larger=10, run=run, make_table=lambda *a: None
    )
    assert no_table["larger"] is None and calls[6:] == [([], 3, "prepare_first"), ([], 3, "scan_first")]
