-- @image: the image set: images, and one frame of each video clip (column `frame`: the middle
-- frame of the clip span, as the text match reads it; a trainer reads this frame of a video row).
-- Numbers from the brief (../shared/docs/BRIEF.md, section 2): aesthetic 4.5-5 for pretraining,
-- 5.5 fair, 6.5 high (LAION predictor). Images are plentiful, so we take the top of the
-- pretraining range, 5.0. Known near-duplicates (CLIP cosine >= 0.98) keep one member.
-- Parameters (DuckDB variables, read with getvariable; unset: the numbers below): image_min_aesthetic. Set them in
-- `datakit select NAME --recipe @x --param NAME=VALUE` or datakit.sets.select(..., params={...}) (recorded in the card).
SELECT *, start_frame + (end_frame - start_frame) // 2 AS frame
FROM clips
WHERE aesthetic >= coalesce(getvariable('image_min_aesthetic'), 5.0)  -- aesthetic >= 5 (pretraining range 4.5-5, upper end)
  AND dup_of IS NULL                         -- not a known near-duplicate of a kept clip
ORDER BY clip_id
