"""Executors decide where a stage's work runs; `runner` plans and commits the same way for all.

- `local`: in this process, a process pool (`-j N`), threads for I/O-bound stages, or one worker
  per visible GPU for GPU stages.
- `ray`: a Ray Data actor pool (local Ray or a cluster), with `prepare` as its own CPU step.

Both are `Executor` classes (`base`), chosen by name from `EXECUTORS`.
"""

from datakit.executors.base import EXECUTORS, Executor, StageSetupError, executor_class
from datakit.executors.runner import StageStats, plan, run_stage

__all__ = ["EXECUTORS", "Executor", "StageSetupError", "StageStats", "executor_class", "plan", "run_stage"]
