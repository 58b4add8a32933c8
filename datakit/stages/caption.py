"""Caption: a vision-language model describes each clip from a few of its frames.

Frames are read at fixed fractions of the clip span with the frame-exact reader (in the prepare
threads, ahead of the model), shrunk to `frame_size` and JPEG-encoded, so every engine sees the
same pixels. Three engines (`datakit.captioning`):

- `vllm` (default): datakit starts a vLLM OpenAI-compatible server from its own environment
  (`scripts/setup_vllm.sh`) on a free local port, captions through it and stops it;
- `openai`: any OpenAI-compatible endpoint (`--endpoint URL --model NAME`);
- `transformers`: in-process generation (small runs).

Each caption is cleaned and checked (`datakit.captioning.qa`): empty, truncated, refusal-like or
repetitive captions are kept with `caption_status` and `qa_reason` saying so, never dropped. Rows
are keyed `<clip_id>:<model_key>`; the model key hashes the engine, model and weights, the prompt
and the generation settings, so another model or prompt adds rows instead of overwriting.
"""

from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datakit.stage import OptionError, Resources, Rows, Stage, WorkerContext, option
from datakit.tables import Column as C
from datakit.tables import Table

if TYPE_CHECKING:  # the interface every caption engine implements (vLLM, OpenAI-compatible, transformers)
    from datakit.captioning.base import Engine

TABLES = (
    Table.marker(
        "captions",
        C("row_id", "VARCHAR", "<clip_id>:<model_key>"),
        "Clip captions from a vision-language model, one row per clip and model key. Written by `caption`.",
        (
            C("clip_id", "VARCHAR", "id of the clip"),
            C("model_key", "VARCHAR", "hash of engine, model, weights, prompt and generation settings"),
            C("engine", "VARCHAR", "'vllm', 'openai' or 'transformers'"),
            C("model", "VARCHAR", "model path or name, engine version; '[random weights]' for test models"),
            C("prompt_id", "VARCHAR", "prompt template, NAME@VERSION (manifests/prompts)"),
            C("caption", "VARCHAR", "cleaned caption (always kept, whatever its caption_status)"),
            C("raw_caption", "VARCHAR", "the model's text before cleaning"),
            C(
                "caption_status",
                "VARCHAR",
                "'ok' or the first QA problem: empty, refusal, repetition, truncated",
            ),
            C("qa_reason", "VARCHAR", "every QA problem found, readable (null when ok)"),
            C(
                "finish_reason",
                "VARCHAR",
                "why generation stopped: 'stop' (end of text), 'length' (max_tokens)",
            ),
            C("prompt_tokens", "INTEGER", "tokens of the prompt, frames included"),
            C("output_tokens", "INTEGER", "tokens generated"),
            C("num_frames", "INTEGER", "frames sent to the model"),
            C("scored_at", "DOUBLE", "unix time the caption was written (views pick the latest per clip)"),
        ),
    ),
)

ENGINES = ("auto", "vllm", "openai", "transformers")
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"


@dataclass(kw_only=True)
class CaptionStage(Stage):
    """Caption each clip with a vision-language model (vLLM, an OpenAI-compatible endpoint, transformers).

    vLLM runs in its own environment as a server that datakit starts and stops. One `captions`
    row per clip and model key; flagged captions are kept with their QA status."""

    name = "caption"
    marker_table = "captions"
    tables = TABLES
    after = ("cut",)
    clip_columns = ()  # caption, caption_status: picked by source preference in datakit.table_import
    resources = Resources(cpus=1, gpus=1)  # one worker (one vLLM server) per GPU; the CPU without one
    run_by_default = False

    engine: str = option(
        "auto",
        "vllm, openai (an endpoint) or transformers; auto: openai with --endpoint, else vllm.",
        choices=ENGINES,
    )
    model: str | None = option(
        None, f"Model folder or hub name (default {DEFAULT_MODEL}); with --endpoint, the served model name."
    )
    endpoint: str | None = option(None, "Base URL of an OpenAI-compatible server, e.g. http://host:8000/v1.")
    prompt: str = option(
        "video@v1", "Prompt template NAME@VERSION from manifests/prompts, or FILE.toml@VERSION."
    )
    frames: int = option(4, "Frames per clip, at the centres of equal parts of the span.", min=1, max=32)
    frame_size: int = option(448, "Short side of the frames sent (never enlarged).", min=28)
    max_tokens: int = option(
        256, "Most tokens generated per caption (a caption cut there is 'truncated').", min=1
    )
    temperature: float = option(0.0, "Sampling temperature (0: greedy, reproducible).", min=0.0, max=2.0)
    seed: int = option(0, "Sampling seed (used when temperature > 0).", min=0)
    concurrency: int = option(32, "Requests in flight (openai and vllm engines).", min=1)
    request_timeout_s: float = option(300.0, "Seconds before one request times out (it is retried).", min=1.0)
    max_retries: int = option(5, "Retries of a request (429, 5xx, timeouts) with exponential backoff.", min=0)
    api_key_env: str = option(
        "OPENAI_API_KEY", "Environment variable holding the endpoint's API key (never stored)."
    )
    vllm_python: str | None = option(
        None, "Python of the vLLM environment (default $DATAKIT_VLLM_PYTHON or .venv-vllm)."
    )
    vllm_args: list[str] = option([], 'Extra `vllm serve` arguments, e.g. ["--tensor-parallel-size", "2"].')
    max_model_len: int | None = option(None, "vLLM context length (default: the model's).", min=256)
    kv_cache_gib: float = option(
        1.0, "vLLM KV cache size on the CPU, GiB (GPUs size it themselves).", min=0.25
    )
    server_timeout_s: float = option(900.0, "Seconds to wait for the vLLM server to become ready.", min=10.0)
    batch_size: int = option(
        16, "Clips per generate call (transformers); clips collected per step (servers).", min=1
    )

    # ------------------------------------------------------------------ options
    @property
    def resolved_engine(self) -> str:
        if self.engine == "auto":
            return "openai" if self.endpoint else "vllm"
        return self.engine

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL

    def check(self) -> None:
        from datakit.captioning.prompts import PromptError, load_prompt

        try:
            load_prompt(self.prompt)
        except PromptError as exc:
            raise OptionError(f"caption: {exc}") from None
        engine = self.resolved_engine
        if engine == "openai":
            if not self.endpoint:
                raise OptionError("caption: --engine openai needs --endpoint URL")
            if not self.model:
                raise OptionError(
                    "caption: with --endpoint, --model must name the served model (GET /v1/models lists them)"
                )
            from datakit.captioning.openai_engine import base_url

            try:
                base_url(self.endpoint)
            except ValueError as exc:
                raise OptionError(f"caption: {exc}") from None
        elif self.endpoint:
            raise OptionError(f"caption: --endpoint needs --engine openai (or auto), not {engine}")
        if engine != "openai" and _looks_like_path(self.model_name) and not Path(self.model_name).is_dir():
            raise OptionError(f"caption: model folder {self.model_name} does not exist")
        if engine == "vllm" and not self.vllm_python_path.exists():
            raise OptionError(
                f"caption: no vLLM environment at {self.vllm_python_path}: run `bash scripts/setup_vllm.sh`, "
                "or pass --vllm-python (or set DATAKIT_VLLM_PYTHON)"
            )

    @property
    def vllm_python_path(self) -> Path:
        from datakit.captioning.vllm_server import default_vllm_python

        return Path(self.vllm_python) if self.vllm_python else default_vllm_python()

    @functools.cached_property
    def model_key(self) -> str:
        from datakit.captioning.prompts import load_prompt
        from datakit.scoring import model_key

        prompt = load_prompt(self.prompt)
        return model_key(
            engine=self.resolved_engine,
            model=self.model_name,
            weights=_weights_fingerprint(self.model_name),
            prompt=prompt.id,
            prompt_digest=prompt.digest,
            frames=self.frames,
            frame_size=self.frame_size,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            seed=self.seed if self.temperature > 0 else None,
            version=1,
        )

    @functools.cached_property
    def prompt_id(self) -> str:
        from datakit.captioning.prompts import load_prompt

        return load_prompt(self.prompt).id

    # ------------------------------------------------------------------ contract
    def items_sql(self) -> str:
        from datakit.scoring import CLIP_ITEMS_SQL, sql_str

        return (
            f"SELECT i.clip_id || ':' || {sql_str(self.model_key)} AS row_id, i.* FROM ({CLIP_ITEMS_SQL}) i"
        )

    def setup(self, ctx: WorkerContext) -> None:
        from datakit.captioning.base import Sampling
        from datakit.captioning.prompts import load_prompt

        self._prompt = load_prompt(self.prompt)
        self._sampling = Sampling(self.max_tokens, self.temperature, self.seed)
        self._server = None
        engine = self.resolved_engine
        if engine == "transformers":
            from datakit.captioning.hf_engine import TransformersEngine

            self._engine = TransformersEngine(self.model_name, ctx.device)
        elif engine == "openai":
            self._engine = self._client(self.endpoint, self.model, api_key=os.environ.get(self.api_key_env))
            self._engine.check()
        else:
            self._engine = self._start_vllm(ctx)
        self._model_desc = self._engine.model + (" [random weights]" if _is_random(self.model_name) else "")

    def _client(
        self, endpoint: str, model: str, *, api_key: str | None = None, name: str = "openai"
    ) -> Engine:
        from datakit.captioning.openai_engine import OpenAIEngine

        return OpenAIEngine(
            endpoint,
            model,
            api_key=api_key,
            concurrency=self.concurrency,
            timeout_s=self.request_timeout_s,
            max_retries=self.max_retries,
            name=name,
        )

    def _start_vllm(self, ctx: WorkerContext) -> Engine:
        from datakit.captioning.vllm_server import VllmServer

        served = Path(self.model_name).name or "model"
        server = VllmServer(
            self.vllm_python_path,
            self.model_name,
            served_name=served,
            log_path=ctx.stage_dir / f"vllm-server-{ctx.rank}.log",
            max_images=self.frames,
            max_model_len=self.max_model_len,
            kv_cache_gib=self.kv_cache_gib,
            extra_args=self.vllm_args,
            seed=self.seed,
        )
        url = server.start(self.server_timeout_s)
        self._server = server
        engine = self._client(url, served, name="vllm")
        engine.model = f"{self.model_name} (vllm {server.version()})"
        return engine

    def teardown(self) -> None:
        engine, server = getattr(self, "_engine", None), getattr(self, "_server", None)
        self._engine = self._server = None
        try:
            if engine is not None:
                engine.close()
        finally:
            if server is not None:
                server.stop()

    def prepare(self, item: dict) -> dict:
        from datakit.captioning.frames import clip_frames

        return self._with_request(item, clip_frames(item, self.frames, self.frame_size))

    def _with_request(self, item: dict, frames: list[bytes]) -> dict:
        submit = getattr(getattr(self, "_engine", None), "submit", None)
        if submit is None:  # transformers, or a prepare step without the engine (Ray): generate in batches
            return {**item, "frames": frames}
        # Server engines: send the request now, so that the server generates while the next clips
        # are decoded and never waits at a batch boundary (at most `concurrency` in flight).
        return {**item, "frames": frames, "request": submit(frames, self._prompt, self._sampling)}

    def process_batch(self, items: list[dict]) -> list[Rows]:
        from datakit.stage import TransientError

        server = self._server
        if server is not None and (server.process is None or server.process.poll() is not None):
            raise TransientError(f"the vLLM server is not running; see {server.log_path}")
        unsent = [i for i in items if "request" not in i]
        generated = iter(
            self._engine.generate([i["frames"] for i in unsent], self._prompt, self._sampling)
            if unsent
            else []
        )
        results = [self._engine.result(i["request"]) if "request" in i else next(generated) for i in items]
        return [
            self.failure_rows(item, r) if isinstance(r, Exception) else {"captions": [self._row(item, r)]}
            for item, r in zip(items, results, strict=True)
        ]

    def _row(self, item: dict, gen) -> dict:
        from datakit.captioning.qa import check_caption, clean_caption

        caption = clean_caption(gen.text)
        qa = check_caption(caption, gen.finish_reason, max_tokens=self.max_tokens)
        return {
            **self._identity(item),
            "status": "ok",
            "error": None,
            "caption": caption,
            "raw_caption": gen.text,
            "caption_status": qa.status,
            "qa_reason": qa.reason,
            "finish_reason": gen.finish_reason,
            "prompt_tokens": gen.prompt_tokens,
            "output_tokens": gen.output_tokens,
            "num_frames": len(item["frames"]),
            "scored_at": time.time(),
        }

    def _identity(self, item: dict) -> dict:
        return {
            "row_id": item["row_id"],
            "clip_id": item["clip_id"],
            "model_key": self.model_key,
            "engine": self.resolved_engine,
            "model": getattr(self, "_model_desc", self.model_name),
            "prompt_id": self.prompt_id,
        }

    def failure_rows(self, item: dict, exc: BaseException) -> Rows:
        rows = super().failure_rows(item, exc)
        rows["captions"][0].update({**self._identity(item), "scored_at": time.time()})
        return rows


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or os.path.exists(model)


def _weights_fingerprint(model: str) -> str | None:
    """A local model folder by its config and weight files (names and sizes); a hub name by itself."""
    folder = Path(model)
    if not folder.is_dir():
        return None
    parts = {"config": (folder / "config.json").read_text() if (folder / "config.json").is_file() else None}
    for path in sorted(folder.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".pt") or path.name.endswith(".index.json"):
            parts[path.name] = path.stat().st_size
    return json.dumps(parts, sort_keys=True)


def _is_random(model: str) -> bool:
    """Test models built by datakit.captioning.tiny say so in their config."""
    config = Path(model) / "config.json"
    try:
        return bool(json.loads(config.read_text()).get("datakit_random_weights"))
    except (OSError, ValueError):
        return False
