"""spark-submit entry for the `baseline` job: `spark-submit jobs/baseline.py --conf FILE [--set key=value ...]`."""

import sys

from jester_als.cli import main

if __name__ == "__main__":
    sys.exit(main(["baseline", *sys.argv[1:]]))
