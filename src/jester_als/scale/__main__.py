"""``python -m jester_als.scale --refit DIR --why TEXT``: recompute a study's cost model, limits and predictions
from the measurements in ``DIR/scale.json`` (after a change to the model, without measuring again) and rewrite
``scale.json``, ``scale.md`` and ``scale.png`` there; ``scale.md`` says when and why."""

import json
import os
import sys

from jester_als.config import load_config
from jester_als.scale.analysis import refit
from jester_als.scale.study import write_study

if len(sys.argv) != 5 or sys.argv[1] != "--refit" or sys.argv[3] != "--why":
    print("usage: python -m jester_als.scale --refit DIR --why TEXT (DIR holds a study's scale.json)", file=sys.stderr)
    sys.exit(2)
directory = sys.argv[2]
with open(os.path.join(directory, "scale.json")) as fh:
    measured = json.load(fh)
write_study(refit(measured, load_config("conf/scale.yaml", []).scale, sys.argv[4]), directory)
