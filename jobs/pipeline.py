"""spark-submit entry for the `pipeline` job: `spark-submit jobs/pipeline.py --conf FILE [--set key=value ...]`."""

import sys

from jester_als.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
