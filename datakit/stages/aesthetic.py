"""Aesthetic score: CLIP image embeddings -> the LAION aesthetic MLP, mean over frames at fixed fractions.

One pass per clip: frames at `frames` fractions of the clip span (10/50/90 % by default) are decoded
and preprocessed in CPU threads (`prepare`), then one CLIP call embeds a whole batch. Each frame's
L2-normalised embedding is scored by the head; the clip's score is the mean. The same pass stores the
clip's mean embedding (re-normalised, float16) in `clip_embeddings` for dedup and the text match.
Clips are read from the source span when the source file exists, else from the cut file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

from datakit.scoring import (
    CLIP_ITEMS_SQL,
    ClipOptions,
    ScoreStage,
    clip_file,
    describe_ref,
    frame_positions,
    identity_columns,
    model_key,
    now,
    read_frames_at,
    sql_str,
    weights_ref,
)
from datakit.stage import OptionError, Resources, WorkerContext, option
from datakit.tables import ClipColumns, Table
from datakit.tables import Column as C

SCORER_VERSION = 1  # bump when a change here changes scores
LAION_HEAD_URL = "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"

_VERSIONED = identity_columns(
    "short hash of model, weights, settings and scorer version",
    "readable: model, weights and package version that made the row",
)

TABLES = (
    Table.marker(
        "aesthetic_scores",
        C("row_id", "VARCHAR", "'<clip_id>:<model_key>'"),
        "LAION aesthetic scores per clip and model (rerunning with other weights adds rows). Written by `score aesthetic`.",
        (
            *_VERSIONED,
            C("aesthetic", "DOUBLE", "mean of the per-frame scores (about 1-10 with the LAION head)"),
            C("frame_scores", "FLOAT[]", "score of each frame read"),
            C("frames", "VARCHAR", 'JSON: {"file": "source" or "cut", "indices": frame indices read}'),
            C("scored_at", "DOUBLE", "unix time of scoring (views show the latest row per clip)"),
        ),
    ),
    Table(
        "clip_embeddings",
        "row_id",
        "Mean CLIP image embedding per clip and CLIP model (from `score aesthetic`): the mean of the frames' "
        "L2-normalised embeddings, normalised again, as little-endian float16 bytes "
        "(`numpy.frombuffer(embedding, '<f2')`).",
        (
            C(
                "row_id",
                "VARCHAR",
                "'<clip_id>:<model_key>' (the key covers the CLIP model and frames, not the head)",
            ),
            *_VERSIONED,
            C("dim", "INTEGER", "embedding size"),
            C("embedding", "BLOB", "dim float16 values, little-endian, unit length"),
            C("scored_at", "DOUBLE", "unix time of embedding"),
        ),
    ),
)


def clip_frames(item: dict, fractions: list[float]) -> tuple[str, list[int], str]:
    """(file, frame indices, 'source' or 'cut') for a clip row of CLIP_ITEMS_SQL."""
    path, start, end, _, kind = clip_file(item)
    return path, sorted(set(frame_positions(start, end, fractions))), kind


@dataclass(kw_only=True)
class AestheticStage(ScoreStage, ClipOptions):
    """CLIP image embeddings and the LAION aesthetic score of each clip (mean over a few frames)."""

    name = "aesthetic"
    marker_table = "aesthetic_scores"
    extra_tables = ("clip_embeddings",)
    tables = TABLES
    after = ("cut",)
    clip_columns = (ClipColumns("aesthetic_scores", ("aesthetic",)),)
    resources = Resources(cpus=1, gpus=1)
    run_by_default = False
    cli_path = ("score", "aesthetic")

    head: str = option(LAION_HEAD_URL, "Aesthetic head weights (path or URL; the LAION state dict layout).")
    frames: list[float] = option([0.1, 0.5, 0.9], "Fractions of the clip span at which frames are scored.")
    batch_size: int = option(32, "Clips per model call.", min=1)
    commit_every: int = option(256, "Items per committed part file.", min=1)

    def check(self) -> None:
        if not self.frames or any(not 0 <= f < 1 for f in self.frames):
            raise OptionError(f"{self.name}: frames must be fractions in [0, 1), got {self.frames}")
        self.check_clip_refs(("head", self.head))

    # ------------------------------------------------------------------ keys
    @cached_property
    def embed_key(self) -> str:
        return model_key(**self.clip_identity(), frames=self.frames, version=SCORER_VERSION)

    @cached_property
    def score_key(self) -> str:
        return model_key(embedding=self.embed_key, head=weights_ref(self.head), version=SCORER_VERSION)

    @cached_property
    def clip_description(self) -> str:
        """Readable model of an embedding row: CLIP, its weights (files with their hash), package version."""
        return f"{self.clip_model_description()}; frames {self.frames}"

    @cached_property
    def score_description(self) -> str:
        return f"{self.clip_description}; head {describe_ref(self.head)}"

    @property
    def score_model(self) -> str:
        return self.score_description

    def items_sql(self) -> str:
        return f"SELECT *, clip_id || ':' || {sql_str(self.score_key)} AS row_id FROM ({CLIP_ITEMS_SQL})"

    # ------------------------------------------------------------------ work
    def setup(self, ctx: WorkerContext) -> None:
        from datakit.clip_models import load_aesthetic_head, load_clip

        self._clip = load_clip(self.model, self.pretrained, ctx.device, self.cache_dir)
        self._head = load_aesthetic_head(self.head).to(ctx.device)
        if self._head.layers[0].in_features != self._clip.embed_dim:
            raise OptionError(
                f"{self.name}: head expects {self._head.layers[0].in_features}-d embeddings, "
                f"{self.model} makes {self._clip.embed_dim}-d"
            )

    def prepare(self, item: dict) -> dict:
        import torch
        from PIL import Image

        from datakit.clip_models import image_transform

        path, indices, kind = clip_frames(item, self.frames)
        transform = image_transform(self.model, self.pretrained)
        frames = read_frames_at(path, indices)
        pixels = torch.stack([transform(Image.fromarray(f)) for f in frames])
        return {**item, "pixels": pixels, "frames_read": {"file": kind, "indices": indices}}

    def process_batch(self, items: list[dict]) -> list[dict]:
        import numpy as np
        import torch

        from datakit.clip_models import in_fixed_calls

        # One model call for the batch, always of the same shape (a short batch is padded): a clip's
        # score is bit-identical whichever clips share its batch.
        rows = self.batch_size * len(self.frames)
        pixels = torch.cat([i["pixels"] for i in items])
        embeddings = self._clip.encode_images(pixels, call_rows=rows)
        scores = in_fixed_calls(self._head, embeddings, rows).float().cpu().numpy()
        embeddings = embeddings.cpu()
        out, at, t = [], 0, now()
        for item in items:
            n = len(item["pixels"])
            frame_scores = scores[at : at + n]
            mean = torch.nn.functional.normalize(embeddings[at : at + n].mean(0), dim=0).numpy()
            at += n
            base = {"clip_id": item["clip_id"], "scored_at": t}
            out.append(
                {
                    "aesthetic_scores": [
                        {
                            **base,
                            "row_id": item["row_id"],
                            "model_key": self.score_key,
                            "model": self.score_description,
                            "status": "ok",
                            "aesthetic": float(np.mean(frame_scores)),
                            "frame_scores": [float(s) for s in frame_scores],
                            "frames": json.dumps(item["frames_read"]),
                        }
                    ],
                    "clip_embeddings": [
                        {
                            **base,
                            "row_id": f"{item['clip_id']}:{self.embed_key}",
                            "model_key": self.embed_key,
                            "model": self.clip_description,
                            "dim": len(mean),
                            "embedding": mean.astype("<f2").tobytes(),
                        }
                    ],
                }
            )
        return out

    def teardown(self) -> None:
        self._clip = self._head = None
