"""Library code must run over Spark Connect and on serverless: no SparkContext, RDDs or JVM handles."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "jester_als"
FORBIDDEN_NAMES = {"sparkContext", "SparkContext", "_jvm", "_java_obj", "_jsc", "_jdf", "rdd"}


def forbidden_uses(source: str) -> list[str]:
    """Names in code (not in strings or comments) that only exist in classic PySpark."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.string in FORBIDDEN_NAMES:
            found.append(f"{token.start[0]}: {token.line.strip()}")
    return found


def test_the_check_catches_what_it_looks_for():
    assert forbidden_uses("n = spark.sparkContext.defaultParallelism\n")
    assert forbidden_uses("rows = df.rdd.map(f)\n")
    assert forbidden_uses("m = model._java_obj.x()\n")
    assert not forbidden_uses('"""sparkContext is not used"""\n# nor .rdd\n')


def test_library_never_touches_spark_context_rdd_or_jvm():
    sources = sorted(SRC.rglob("*.py"))
    assert sources, f"no library sources found under {SRC}"
    offenders = [f"{path.name}:{use}" for path in sources for use in forbidden_uses(path.read_text("utf-8"))]
    assert offenders == []
