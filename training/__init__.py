"""Trainer for Open-Sora 1.0's three STDiT stages (image, video, high-quality) on datakit selections.

`python cli.py train --stage image|video|hq (--set NAME[@vN] | --select SQL)`; see README "Training".
Modules, in the order a run uses them: `config` (presets, files, overrides), `selection` (freeze
the rows into the run folder), `data` (span decoding, transforms, buckets), `sampler` (bucketed,
distributed, resumable), `models` (build VAE/T5/STDiT), `ema`, `checkpoint`, `metrics`, `trainer`.
"""
