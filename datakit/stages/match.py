"""Text match: CLIP cosine similarity of a clip's caption and its middle frame.

Runs after captioning, on clips whose `caption` (the `clips` view: the latest ok caption) is set. A
row remembers a hash of the caption it compared, so a new caption makes the clip pending again.
The CLIP model options are the aesthetic stage's (same defaults: ViT-L-14, openai).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from datakit.scoring import (
    CLIP_ITEMS_SQL,
    ClipOptions,
    ScoreStage,
    clip_file,
    frame_positions,
    identity_columns,
    model_key,
    now,
    read_frames_at,
    sql_str,
)
from datakit.stage import Resources, WorkerContext, option
from datakit.tables import ClipColumns, Table
from datakit.tables import Column as C

SCORER_VERSION = 1

TABLES = (
    Table.marker(
        "text_match_scores",
        C("row_id", "VARCHAR", "'<clip_id>:<model_key>'"),
        "CLIP similarity of caption and middle frame, per clip and model. Written by `score match`.",
        (
            *identity_columns(
                "short hash of CLIP model, weights and scorer version",
                "readable: model, weights and package version",
            ),
            C("text_match", "DOUBLE", "cosine similarity of the caption and middle-frame embeddings (-1..1)"),
            C("caption_md5", "VARCHAR", "md5 of the caption compared (a new caption makes the clip pending)"),
            C("frame", "BIGINT", "index of the frame compared, in the file read"),
            C("scored_at", "DOUBLE", "unix time of scoring"),
        ),
    ),
)


@dataclass(kw_only=True)
class TextMatchStage(ScoreStage, ClipOptions):
    """CLIP similarity of each captioned clip's caption and middle frame."""

    name = "match"
    marker_table = "text_match_scores"
    tables = TABLES
    after = ("caption",)
    clip_columns = (ClipColumns("text_match_scores", ("text_match",)),)
    resources = Resources(cpus=1, gpus=1)
    run_by_default = False
    cli_path = ("score", "match")

    batch_size: int = option(32, "Clips per model call.", min=1)
    commit_every: int = option(256, "Items per committed part file.", min=1)

    def check(self) -> None:
        self.check_clip_refs()

    @cached_property
    def match_key(self) -> str:
        return model_key(**self.clip_identity(), frame=0.5, version=SCORER_VERSION)

    @cached_property
    def description(self) -> str:
        return self.clip_model_description()

    @property
    def score_key(self) -> str:
        return self.match_key

    @property
    def score_model(self) -> str:
        return self.description

    def items_sql(self) -> str:
        return f"""
            SELECT i.*, c.caption, md5(c.caption) AS caption_md5, i.clip_id || ':' || {sql_str(self.match_key)} AS row_id
            FROM ({CLIP_ITEMS_SQL}) i JOIN (SELECT clip_id, caption FROM clips WHERE caption IS NOT NULL) c USING (clip_id)
        """

    def stale_sql(self, marker: str) -> str | None:
        return f"{marker}.caption_md5 IS DISTINCT FROM i.caption_md5"

    def setup(self, ctx: WorkerContext) -> None:
        from datakit.clip_models import load_clip

        self._clip = load_clip(self.model, self.pretrained, ctx.device, self.cache_dir)

    def prepare(self, item: dict) -> dict:
        from PIL import Image

        from datakit.clip_models import image_transform

        path, start, end, _, _ = clip_file(item)
        (middle,) = frame_positions(start, end, [0.5])
        (frame,) = read_frames_at(path, [middle])
        return {
            **item,
            "pixels": image_transform(self.model, self.pretrained)(Image.fromarray(frame)),
            "frame": middle,
        }

    def process_batch(self, items: list[dict]) -> list[dict]:
        import torch

        # model calls of one shape (a short batch is padded): a clip's score does not depend on its batch
        images = self._clip.encode_images(
            torch.stack([i["pixels"] for i in items]), call_rows=self.batch_size
        )
        texts = self._clip.encode_texts([i["caption"] for i in items], call_rows=self.batch_size)
        sims = (images * texts).sum(-1).cpu().tolist()
        t = now()
        return [
            {
                "text_match_scores": [
                    {
                        "row_id": item["row_id"],
                        "clip_id": item["clip_id"],
                        "model_key": self.match_key,
                        "model": self.description,
                        "status": "ok",
                        "text_match": sim,
                        "caption_md5": item["caption_md5"],
                        "frame": item["frame"],
                        "scored_at": t,
                    }
                ]
            }
            for item, sim in zip(items, sims, strict=True)
        ]

    def failure_extra(self, item: dict) -> dict:
        return {"caption_md5": item.get("caption_md5")}

    def teardown(self) -> None:
        self._clip = None
