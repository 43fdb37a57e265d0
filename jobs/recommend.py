"""spark-submit entry for the `recommend` job: `spark-submit jobs/recommend.py --conf FILE [--set key=value ...]`."""

import sys

from jester_als.cli import main

if __name__ == "__main__":
    sys.exit(main(["recommend", *sys.argv[1:]]))
