-- @hq: the small high-quality set for the last training stage (strict thresholds).
-- Numbers from the brief (../shared/docs/BRIEF.md, section 2): clips 2-15 s; aesthetic 5.5 fair,
-- 6.5 high (LAION predictor): we take 6.0, between the two; near-duplicates by CLIP cosine >= 0.98.
-- Motion is datakit's Farneback score in short sides per second (`datakit score motion`): below
-- 0.05 the clip barely moves, above 1.0 content crosses the whole frame every second (shaky or
-- chaotic). The text match is CLIP cosine of caption and middle frame: about 0.3 for a fitting
-- caption with ViT-L/14; 0.25 drops captions that do not describe the frame.
-- Captions: `caption` is the first source with one, in the order provided (the imported table's own,
-- e.g. Panda-70M's) > vlm (datakit caption); caption_source says which. To prefer the VLM here, select
-- `* REPLACE (coalesce(vlm_caption, provided_caption) AS caption)`; given_* columns are the table's scores.
-- Parameters (DuckDB variables, read with getvariable; unset: the numbers below): hq_min_aesthetic, hq_min_text_match. Set them in
-- `datakit select NAME --recipe @x --param NAME=VALUE` or datakit.sets.select(..., params={...}) (recorded in the card).
SELECT *
FROM clips
WHERE media_type = 'video'
  AND end_s - start_s BETWEEN 2 AND 15       -- clips of 2-15 s
  AND aesthetic >= coalesce(getvariable('hq_min_aesthetic'), 6.0)  -- aesthetic >= 6 (5.5 fair, 6.5 high)
  AND motion BETWEEN 0.05 AND 1.0            -- visible motion, not chaotic
  AND static = false                         -- not a static clip
  AND caption_status = 'ok'                  -- the latest caption passed caption QA
  AND length(caption) >= 40                  -- a descriptive caption, not a few words
  AND text_match >= coalesce(getvariable('hq_min_text_match'), 0.25)  -- the caption describes the frame
  AND dup_group IS NOT NULL                  -- dedup has compared this clip
  AND dup_of IS NULL                         -- one clip per near-duplicate group
ORDER BY clip_id
