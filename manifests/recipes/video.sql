-- @video: the large pretraining set of video clips (Open-Sora's first training stages).
-- Numbers from the brief (../shared/docs/BRIEF.md, section 2):
--   clips 2-15 s (scene detection policy); aesthetic 4.5-5 for pretraining (LAION predictor, mean
--   over 3 frames; we take the lower end, 4.5); near-duplicates by CLIP cosine >= 0.98, one kept per group.
-- Scores are never filtered while scoring; this recipe is where thresholds live. Each top-level AND
-- condition is reported separately by `datakit report` (how many clips it removes).
-- Captions: `caption` is the first source with one, in the order provided (the imported table's own,
-- e.g. Panda-70M's) > vlm (datakit caption); caption_source says which. To prefer the VLM here, select
-- `* REPLACE (coalesce(vlm_caption, provided_caption) AS caption)`; given_* columns are the table's scores.
-- Parameters (DuckDB variables, read with getvariable; unset: the numbers below): video_min_aesthetic. Set them in
-- `datakit select NAME --recipe @x --param NAME=VALUE` or datakit.sets.select(..., params={...}) (recorded in the card).
SELECT *
FROM clips
WHERE media_type = 'video'
  AND end_s - start_s BETWEEN 2 AND 15       -- clips of 2-15 s
  AND aesthetic >= coalesce(getvariable('video_min_aesthetic'), 4.5)  -- aesthetic >= 4.5 (pretraining range 4.5-5)
  AND static = false                         -- motion scored and not a static clip
  AND caption_status = 'ok'                  -- captioned, and the caption passed caption QA
  AND dup_group IS NOT NULL                  -- dedup has compared this clip
  AND dup_of IS NULL                         -- one clip per near-duplicate group (the best-scored)
ORDER BY clip_id
