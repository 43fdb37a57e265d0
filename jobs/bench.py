"""spark-submit entry for the `bench` job: `spark-submit jobs/bench.py --conf FILE [--set key=value ...]`."""

import sys

from jester_als.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
