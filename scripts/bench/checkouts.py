"""Running one benchmark script's measurement with another checkout's code.

A script measures the checkout it is imported from; with ``--baseline DIR``
it runs itself again with ``--child`` in a process whose imports come from
``DIR`` (its ``PYTHONPATH`` and working directory), and reads the JSON the
child prints last. The two checkouts' processes alternate, so both meet the
same machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def measured_in(script: Path, root: Path, *arguments: str) -> Any:
    """What ``script --child ARGUMENTS`` prints last (JSON), run with
    ``root``'s code; raises CalledProcessError with its stderr on failure."""
    env = {**os.environ, "PYTHONPATH": str(root), "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run(
        [sys.executable, str(script), "--child", *arguments],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])
