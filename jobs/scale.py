"""Entry for the `scale` job: `python jobs/scale.py --conf conf/scale.yaml` (it starts its own workers)."""

import sys

from jester_als.cli import main

if __name__ == "__main__":
    sys.exit(main(["scale", *sys.argv[1:]]))
