"""spark-submit entry for the `check` job: `spark-submit jobs/check.py --conf FILE [--set key=value ...]`."""

import sys

from jester_als.cli import main

if __name__ == "__main__":
    sys.exit(main(["check", *sys.argv[1:]]))
