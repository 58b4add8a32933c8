"""Trainer for Open-Sora 1.0's three STDiT stages (image, video, high-quality) on datakit selections.

`python cli.py train --stage image|video|hq (--set NAME[@vN] | --select SQL)`; see README "Training".
Modules, in the order a run uses them: `config` (presets, files, overrides), `selection` (freeze
the rows into the run folder), `data` and `buckets` (span decoding, transforms, buckets) or
`features` (the `datakit features` cache), `sampler` (bucketed, distributed, resumable), `build`
(VAE/T5/STDiT), `weights` (fp32 views, EMA), `checkpoint`, `metrics` (metrics.jsonl, TensorBoard),
`samples` (periodic mp4 samples), `trainer`.
"""
