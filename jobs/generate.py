"""spark-submit entry for the `generate` job: `spark-submit jobs/generate.py --conf FILE [--set key=value ...]`."""

import sys

from jester_als.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
