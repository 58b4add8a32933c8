"""`train_losses`: per-clip training loss written back by the trainer at the end of each run.

The mean diffusion loss of each training clip at fixed timesteps and fixed noise seeds, keyed by
the run, so runs can be compared and `select clip_id, train_loss from clips order by train_loss
desc` finds the clips a model cannot fit (broken, mislabelled, containing a transition).
"""

from __future__ import annotations

from datakit.tables import ClipColumns, Table
from datakit.tables import Column as C

TABLES = (
    Table(
        "train_losses",
        "row_id",
        "Per-clip training loss of a run (mean IDDPM loss at the run's val_timesteps, noise seeded per clip).",
        (
            C("row_id", "VARCHAR", "'<model_key>:<clip_id>'"),
            C("clip_id", "VARCHAR", "the clip"),
            C("status", "VARCHAR", "'ok'"),
            C("model_key", "VARCHAR", "the run: hash of its folder name, stage and final step"),
            C("run", "VARCHAR", "the run folder as given to the trainer"),
            C("stage", "VARCHAR", "image, video or hq"),
            C("step", "BIGINT", "optimizer steps done when measured"),
            C("train_loss", "DOUBLE", "mean loss over the fixed timesteps"),
            C("timesteps", "VARCHAR", "JSON list of the timesteps"),
            C("scored_at", "DOUBLE", "unix time of the measurement"),
        ),
    ),
)
CLIP_COLUMNS = (ClipColumns("train_losses", ("train_loss",)),)  # the newest run's loss per clip
