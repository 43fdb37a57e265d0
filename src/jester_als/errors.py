"""The errors a job reports to its user as a message and exit status 1 (no stack trace unless ``-v``)."""


class JobError(Exception):
    """A failure the user can act on: bad input, an output that may not be replaced, refused compute."""


# What a person can act on, found in a failure's text (a Py4JJavaError carries the Java exception and its causes):
# (pattern, what to say). The path, where the text names one, is added.
_CAUSES = (
    (r"No space left on device", "no space left on device"),
    (r"Disk quota exceeded", "disk quota exceeded"),
    (r"Permission denied|AccessDeniedException", "permission denied"),
    (r"Read-only file system", "read-only file system"),
    (
        r"ExecutorLostFailure|Executor heartbeat timed out|Lost executor",
        "a Spark executor was lost (its node or process died; see the cluster's logs)",
    ),
    (
        r"java\.lang\.OutOfMemoryError",
        "the JVM ran out of memory (raise spark.driver.memory or the executors' memory in spark.conf)",
    ),
)
_PATH = r"(/[^\s:()'\"]+)"


def actionable_cause(exc: BaseException) -> str | None:
    """One line naming the cause of ``exc`` a person can act on (no space left on device and where, permission
    denied and on what, a lost executor, the JVM out of memory), from its text and its chain; None when none
    is recognized."""
    import errno
    import re

    seen, current, texts = set(), exc, []
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            where = f": {current.filename}" if current.filename else ""
            return f"{current.strerror.lower() if current.strerror else 'I/O error'}{where}"
        texts.append(str(current))
        current = current.__cause__ or current.__context__
    text = "\n".join(texts)
    missing = re.search(r"No module named '([^']+)'", text)
    if missing:  # a Python worker of an executor: the nodes' Python lacks what the job imports there
        return (
            f"the executors' Python has no module {missing.group(1)!r}: ship the job's environment to the "
            f"nodes (make pack, then spark-submit --archives dist/jester_als_env.tar.gz#environment with "
            f"spark.pyspark.python=./environment/bin/python; docs/running-everywhere.md)"
        )
    for pattern, said in _CAUSES:
        match = re.search(pattern, text)
        if not match:
            continue
        if "executor" in said or "memory" in said:
            return said
        line = text[text.rfind("\n", 0, match.start()) + 1 : text.find("\n", match.end()) % (len(text) + 1)]
        # The file the error names, else the one Spark was writing (its task error names it as file:/...).
        path = (
            re.search(_PATH + r"\s*\((?:" + pattern + r")\)", text)
            or re.search(_PATH, line)
            or re.search(r"file:" + _PATH, text)
        )
        return f"{said}: {path.group(1).rstrip('.')}" if path else said
    return None


def first_line(exc: BaseException) -> str:
    """The first line of a Spark failure's text that says what went wrong: a classic session's Py4JJavaError
    opens with py4j's own line ("An error occurred while calling o49.parquet.") and puts Spark's error, behind
    its Java class name, on the next."""
    import re

    for line in str(exc).strip().splitlines():
        line = line.strip().removeprefix(": ")
        if not line or line.startswith("An error occurred while calling"):
            continue
        # "org.apache.spark.SparkException: [ERROR_CLASS] ..." -> "[ERROR_CLASS] ..."
        return re.sub(r"^(?:[a-z_$][\w$]*\.)+[A-Z][\w$]*(?:Exception|Error): ", "", line)
    return type(exc).__name__
