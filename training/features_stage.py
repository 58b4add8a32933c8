"""Feature cache for training: VAE posteriors and T5 caption embeddings of a selection's clips.

    datakit features --selection workspace/sets/hq@v2 --train-stage video [--preset tiny]
                     [--train-config FILE] [-o 'overrides=["data.resolution=[512]"]']

Items are the rows of a frozen selection (a curated set version, a training run's
`data/rows.parquet`, or any rows file with the set columns); the training options say which
encoders and which buckets the cache is for, exactly as `python cli.py train` resolves them. For
each clip the centred window of its bucket is decoded in `prepare` (threads, span only), then one
VAE call per bucket shape and one T5 call per batch encode it (bf16 on GPU, fp32 on CPU). Each
batch becomes one safetensors shard, content-addressed by its clips, under
`<workspace>/data/features/<key>/`, written to a temp name and renamed before its rows are
committed: a batch redone after a kill rewrites the same file. The start of a run removes temp
files and shards no row points to. `training/features.py` reads the shards
(`python cli.py train ... data.source=features`).

The stage lives on the training side (it builds training's encoders and buckets) and joins the
datakit registry through the `datakit.stages` entry point declared in pyproject.toml, as any
installed plugin does: datakit itself never imports training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from datakit.scoring import ScoreStage, identity_columns, now, sql_str
from datakit.stage import OptionError, Resources, WorkerContext, option
from datakit.tables import Column as C
from datakit.tables import Table
from training.stage_names import STAGES as TRAIN_STAGES  # no config import: listing stages stays fast

REQUIRED = ("clip_id", "start_frame", "end_frame", "width", "height")

TABLES = (
    Table.marker(
        "features",
        C("row_id", "VARCHAR", "'<clip_id>:<model_key>'"),
        "Cached VAE posteriors and T5 caption embeddings per clip and training config, for "
        "`train ... data.source=features`. Written by `features`.",
        (
            *identity_columns(
                "features key: hash of the VAE, T5, caption length, frame and size buckets, version",
                "readable: encoders and training settings the features were made with",
            ),
            C(
                "shard",
                "VARCHAR",
                "safetensors file under <workspace>/data/features/: '<model_key>/<hash>.safetensors'",
            ),
            C(
                "shard_index",
                "INTEGER",
                "the clip's i in the shard: tensors '<i>/mean', '<i>/std' (C, T, h, w; scaled like latents), "
                "'<i>/text' (valid tokens, d) and '<i>/mask' (L,)",
            ),
            C("frames", "INTEGER", "bucket: frames of the window"),
            C("height", "INTEGER", "bucket: height in pixels"),
            C("width", "INTEGER", "bucket: width in pixels"),
            C("tokens", "INTEGER", "valid caption tokens"),
            C("caption_md5", "VARCHAR", "md5 of the caption encoded (a changed caption makes the row stale)"),
            C("frames_read", "VARCHAR", 'JSON: {"file": "source" or "cut", "indices": source frame indices}'),
            C("dtype", "VARCHAR", "dtype of the stored tensors (bfloat16 on GPU, float32 on CPU)"),
            C("computed_at", "DOUBLE", "unix time"),
        ),
    ),
)


def resolve_selection(spec: str) -> Path:
    """The rows file of `spec`: a .parquet file, a curated set given by folder (`datakit.sets`:
    latest version, `FOLDER@vN`, or a version folder) or a training run folder (its data/rows.parquet)."""
    from datakit.sets import SetError, resolve_folder

    path = Path(spec).expanduser()
    if path.is_file():
        return path.resolve()
    for rows in (path / "rows.parquet", path / "data" / "rows.parquet"):  # a rows folder, a run folder
        if rows.is_file():
            return rows.resolve()
    try:
        found = resolve_folder(spec)
    except SetError:
        found = None
    if found is not None:
        return found.rows_path.resolve()
    raise OptionError(
        f"features: selection {spec!r} is not a rows .parquet file, a set (version) folder or a run folder"
    )


@dataclass(kw_only=True)
class FeaturesStage(ScoreStage):
    """VAE latents and T5 embeddings of a selection's clips, cached in shards for training."""

    name = "features"
    marker_table = "features"
    tables = TABLES
    after = ("aesthetic", "caption", "dedup", "match", "motion")  # encodes a curated set: after curation
    resources = Resources(cpus=1, gpus=1)
    run_by_default = False
    time_column = "computed_at"

    selection: str | None = option(
        None,
        "Clips to encode: a curated set folder (<workspace>/sets/NAME, latest version; NAME@vN), "
        "a set version folder, a training run folder or a rows .parquet file.",
    )
    train_stage: str = option(
        "video", "Training stage whose settings the cache is for (image, video, hq).", choices=TRAIN_STAGES
    )
    preset: str | None = option(
        None, "'tiny': the tiny random encoders and sizes of `train --preset tiny`.", choices=("tiny",)
    )
    train_config: str | None = option(
        None, "Training config file as given to `train --config` (a run's train_config.json works too)."
    )
    overrides: list[str] = option(
        [], 'Training config overrides as given to `train`, e.g. ["data.resolution=[512]"].'
    )
    batch_size: int = option(8, "Clips per model call, and per shard file.", min=1)
    commit_every: int = option(64, "Items per committed part file.", min=1)

    # ------------------------------------------------------------------ options
    @cached_property
    def run_config(self):
        from training.config import ConfigError, resolve_config

        try:
            return resolve_config(
                self.train_stage,
                tiny=self.preset == "tiny",
                config_file=self.train_config,
                overrides=list(self.overrides),
            )
        except ConfigError as err:
            raise OptionError(f"{self.name}: {err}") from None

    @cached_property
    def rows_file(self) -> Path:
        return resolve_selection(self.selection or "")

    @cached_property
    def features_key(self) -> str:
        from training.features import features_key

        return features_key(self.run_config)

    def check(self) -> None:
        if not self.selection:
            raise OptionError(
                f"{self.name}: give --selection (a curated set folder, a run folder or a rows .parquet file)"
            )
        import pyarrow.parquet as pq

        columns = set(pq.read_schema(self.rows_file).names)
        missing = [c for c in REQUIRED if c not in columns] + (
            [] if columns & {"source_path", "path"} else ["source_path or path"]
        )
        if missing:
            raise OptionError(f"{self.name}: {self.rows_file} lacks column(s) {', '.join(missing)}")
        self.run_config  # noqa: B018 (a config error is an option error, raised now)

    # ------------------------------------------------------------------ items
    def _rows_sql(self) -> str:
        import pyarrow.parquet as pq

        columns = set(pq.read_schema(self.rows_file).names)
        optional = {
            name: f"r.{name}" if name in columns else "NULL" for name in ("source_path", "path", "caption")
        }
        return (
            f"SELECT DISTINCT ON (r.clip_id) r.clip_id, r.start_frame, r.end_frame, r.width, r.height, "
            f"CAST({optional['source_path']} AS VARCHAR) AS source_path, "
            f"CAST({optional['path']} AS VARCHAR) AS path, "
            f"coalesce(CAST({optional['caption']} AS VARCHAR), '') AS caption "
            f"FROM read_parquet({sql_str(str(self.rows_file))}) r"
        )

    def items_sql(self) -> str:
        if not self.selection:  # nothing to do (e.g. `datakit status` with the defaults)
            return "SELECT NULL::VARCHAR AS row_id, NULL::VARCHAR AS clip_id WHERE false"
        key = sql_str(self.features_key)
        return (
            f"SELECT s.*, md5(s.caption) AS caption_md5, s.clip_id || ':' || {key} AS row_id "
            f"FROM ({self._rows_sql()}) s"
        )

    def stale_sql(self, marker: str) -> str | None:
        """Done, but for another caption than the selection's now."""
        if not self.selection:
            return None
        return (
            f"{marker}.caption_md5 IS DISTINCT FROM (SELECT md5(s.caption) FROM ({self._rows_sql()}) s "
            f"WHERE s.clip_id = {marker}.clip_id)"
        )

    def begin_run(self, ctx: WorkerContext) -> None:
        """Remove what killed runs left: temp files, and shards no row points to."""
        root = ctx.stage_dir
        if not root.is_dir():
            return
        for tmp in root.glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)
        from datakit.workspace import Workspace

        rows = Workspace(ctx.workspace, create=False).sql(
            "SELECT DISTINCT shard FROM features WHERE shard IS NOT NULL"
        )
        used = {r["shard"] for r in rows}
        for shard in root.glob("*/*.safetensors"):
            if shard.relative_to(root).as_posix() not in used:
                shard.unlink(missing_ok=True)

    # ------------------------------------------------------------------ work
    def setup(self, ctx: WorkerContext) -> None:
        import torch

        from training.build import build_encoders, stdit_arch

        cfg = self.run_config
        self._device = torch.device(ctx.device)
        compute = torch.float32 if cfg.train.precision == "fp32" else torch.bfloat16
        self._vae, self._t5 = build_encoders(cfg, self._device, compute)
        self._multiple = self._vae.spatial_factor * int(stdit_arch(cfg)["patch_size"][1])
        self._stage_dir = ctx.stage_dir

    def describe_model(self) -> str:
        m, d = self.run_config.model, self.run_config.data
        vae, t5 = ("tiny", "tiny") if m.tiny else (m.vae, m.text_encoder)
        return (
            f"VAE {vae}, T5 {t5} ({m.model_max_length} tokens); {self.train_stage} stage: frames "
            f"{d.num_frames} at interval {d.frame_interval}, resolution {d.resolution}, ratios {d.aspect_ratios}"
        )

    def prepare(self, item: dict) -> dict:
        from training.buckets import assign_bucket
        from training.data import clip_window, load_clip, media_path

        d = self.run_config.data
        bucket = assign_bucket(item, d, self._multiple)
        if bucket is None:
            span = int(item["end_frame"]) - int(item["start_frame"])
            raise ValueError(
                f"too short: {span} frames hold no {min(d.num_frames)} frames at interval {d.frame_interval}"
            )
        indices = clip_window(item, bucket, d, None)
        video = load_clip(item, bucket, d, indices)
        kind = "cut" if media_path(item, d.prefer)[1] else "source"
        return {**item, "video": video, "bucket": bucket, "frames_read": {"file": kind, "indices": indices}}

    def process_batch(self, items: list[dict]) -> list[dict]:
        import torch

        from training.features import shard_name, write_shard

        means: list = [None] * len(items)
        stds: list = [None] * len(items)
        for bucket in {it["bucket"] for it in items}:  # one VAE call per shape
            at = [i for i, it in enumerate(items) if it["bucket"] == bucket]
            mean, std = self._vae.posterior(torch.stack([items[i]["video"] for i in at]).to(self._device))
            for j, i in enumerate(at):
                means[i], stds[i] = mean[j], std[j]
        text = self._t5.encode([it["caption"] for it in items])
        entries = [
            {
                "mean": means[i],
                "std": stds[i],
                "text": text["y"][i, 0][text["mask"][i].bool()],
                "mask": text["mask"][i].to(torch.uint8),
            }
            for i in range(len(items))
        ]
        entries = [{k: v.detach().to("cpu", copy=True) for k, v in e.items()} for e in entries]
        ids = [it["clip_id"] for it in items]
        shard = shard_name(self.features_key, ids)
        write_shard(
            self._stage_dir / shard, entries, {"model_key": self.features_key, "clips": json.dumps(ids)}
        )
        t, model = now(), self.describe_model()
        return [
            {
                "features": [
                    {
                        "row_id": it["row_id"],
                        "clip_id": it["clip_id"],
                        "model_key": self.features_key,
                        "model": model,
                        "status": "ok",
                        "shard": shard,
                        "shard_index": i,
                        "frames": it["bucket"].frames,
                        "height": it["bucket"].height,
                        "width": it["bucket"].width,
                        "tokens": int(e["mask"].sum()),
                        "caption_md5": it["caption_md5"],
                        "frames_read": json.dumps(it["frames_read"]),
                        "dtype": str(e["mean"].dtype).removeprefix("torch."),
                        "computed_at": t,
                    }
                ]
            }
            for i, (it, e) in enumerate(zip(items, entries, strict=True))
        ]

    @property
    def score_key(self) -> str:
        return self.features_key

    @property
    def score_model(self) -> str:
        return self.describe_model()

    def failure_extra(self, item: dict) -> dict:
        return {"caption_md5": item.get("caption_md5")}

    def teardown(self) -> None:
        self._vae = self._t5 = None
