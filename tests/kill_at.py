"""Run one stage and kill it (SIGKILL: no cleanup, no ``finally``) on the n-th call of a chosen function.

    python kill_at.py STAGE MODULE:ATTRIBUTE:N OVERRIDES_JSON

ATTRIBUTE may be dotted (``Trainer._save_rng_state``). The process dies before that call runs, so whatever the
stage had written by then is what a kill at that point leaves. ``-`` instead of a kill point runs the stage whole.
Used by ``test_kills.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from typing import Any

from specialize.config import load_config
from specialize.pipeline import run_stage


def arm(spec: str) -> None:
    """Replace ``MODULE:ATTRIBUTE`` by a function that kills this process on its N-th call."""
    module, attribute, n = spec.rsplit(":", 2)
    owner: Any = importlib.import_module(module)
    *parents, name = attribute.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original, calls = getattr(owner, name), 0

    def killing(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == int(n):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, killing)


if __name__ == "__main__":
    stage, spec, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    config = load_config(None, overrides)
    if spec != "-":
        arm(spec)
    run_stage(config, stage)
