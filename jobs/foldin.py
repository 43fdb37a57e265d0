"""spark-submit entry for the `foldin` job: `spark-submit jobs/foldin.py --conf FILE --set new_users.path=...`."""

import sys

from jester_als.cli import main

if __name__ == "__main__":
    sys.exit(main(["foldin", *sys.argv[1:]]))
