"""spark-submit entry for the `tune` job: `spark-submit jobs/tune.py --conf FILE [--set key=value ...]`."""

import sys

from jester_als.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
