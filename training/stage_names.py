"""The names of Open-Sora 1.0's three training stages, importable without the config machinery
(the `features` datakit stage lists them as choices, and every datakit command lists the stages)."""

STAGES = ("image", "video", "hq")
