-- Clips of 2-15 s from readable videos at least 256 px on the short side: the base set that
-- the video stages train on. Scores (aesthetic, motion, ...) are added by later stages and
-- filtered here, never while scoring.
SELECT c.clip_id, c.video_id, c.source_path, c.path, c.start_frame, c.end_frame,
       c.num_frames, c.fps, c.width, c.height, c.end_s - c.start_s AS seconds
FROM clips c
JOIN videos v USING (video_id)
WHERE v.status = 'ok'
  AND least(c.width, c.height) >= 256
  AND c.end_s - c.start_s BETWEEN 2 AND 15
ORDER BY c.clip_id
