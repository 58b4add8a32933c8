"""Captions from any OpenAI-compatible chat endpoint (vLLM, SGLang, TGI, llama.cpp, hosted APIs).

The `openai` package's async client sends each clip's frames as JPEG data URLs, at most
`concurrency` requests in flight (an asyncio semaphore). Rate limits (429), server errors (5xx),
timeouts and dropped connections are retried by the client with exponential backoff (honouring
`Retry-After`) up to `max_retries` times; a request that still fails becomes a `TransientError`,
so its clip is marked `retry` and a later run tries it again. So does a malformed answer (a 200
whose body is truncated, not JSON, or JSON without the text of a chat completion): the server
misbehaved, not the clip. A rejected request (400: too many tokens, an image the server refuses)
is an error for that clip only.

The client lives on an event loop in a thread of its own. `submit` sends a request at once and
returns a future, so the stage can send each clip as soon as its frames are decoded (from its
prepare threads) and collect the answers in `process_batch`: requests stream to the server
without a pause at batch boundaries, and connections are kept between batches.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from datakit.captioning.base import Generation, Sampling, chat_messages
from datakit.captioning.prompts import Prompt
from datakit.stage import TransientError

T = TypeVar("T")


class _LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def base_url(endpoint: str) -> str:
    """The client's base URL: the endpoint as given, with `/v1` added when it has no path."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"endpoint {endpoint!r} is not an http(s) URL")
    return endpoint.rstrip("/") + ("/v1" if parts.path in ("", "/") else "")


class OpenAIEngine:
    """Chat completions against `endpoint` with bounded concurrency and retries."""

    def __init__(
        self,
        endpoint: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 8,
        timeout_s: float = 300.0,
        max_retries: int = 5,
        name: str = "openai",
    ):
        self.name = name
        self.endpoint = base_url(endpoint)
        self._loop = _LoopThread(f"{name}-client")
        self._concurrency = concurrency
        self._client = self._loop.run(self._connect(api_key or "EMPTY", timeout_s, max_retries))
        self.served_model = model
        self.model = model  # what rows record (the vLLM engine adds its version)

    async def _connect(self, api_key: str, timeout_s: float, max_retries: int):
        from openai import AsyncOpenAI

        self._semaphore = asyncio.Semaphore(self._concurrency)
        return AsyncOpenAI(
            base_url=self.endpoint, api_key=api_key, timeout=timeout_s, max_retries=max_retries
        )

    def check(self) -> None:
        """Fail fast (before any clip) when the endpoint is unreachable, refuses the key or lacks the model."""

        async def served() -> list[str]:
            return [m.id async for m in self._client.models.list()]

        import openai

        try:
            names = self._loop.run(served())
        except openai.APIError as exc:
            raise RuntimeError(f"cannot list the models of {self.endpoint}: {_describe(exc)}") from exc
        if self.served_model not in names:
            raise ValueError(
                f"{self.endpoint} does not serve model {self.served_model!r} (it serves: {', '.join(names)})"
            )

    async def _one(self, frames: list[bytes], prompt: Prompt, sampling: Sampling) -> Generation:
        extra = {"seed": sampling.seed} if sampling.temperature > 0 else {}
        import openai

        async with self._semaphore:
            try:
                response = await self._client.chat.completions.with_raw_response.create(
                    model=self.served_model,
                    messages=chat_messages(frames, prompt),
                    max_tokens=sampling.max_tokens,
                    temperature=sampling.temperature,
                    **extra,
                )
                body = response.http_response.content
            except openai.APIResponseValidationError as exc:
                raise MalformedAnswer(f"{exc}") from None
        return generation_of(body)

    def submit(self, frames: list[bytes], prompt: Prompt, sampling: Sampling) -> Future:
        """Send one clip's request now (it waits for a free slot of `concurrency`); a future of its answer."""
        return asyncio.run_coroutine_threadsafe(self._one(frames, prompt, sampling), self._loop.loop)

    @staticmethod
    def result(future: Future) -> Generation | Exception:
        """The answer of a submitted request, or the exception its clip's row records."""
        try:
            return future.result()
        except Exception as exc:
            return _as_clip_error(exc)

    def generate(
        self, clips: list[list[bytes]], prompt: Prompt, sampling: Sampling
    ) -> list[Generation | Exception]:
        futures = [self.submit(frames, prompt, sampling) for frames in clips]
        return [self.result(f) for f in futures]

    def close(self) -> None:
        try:
            self._loop.run(self._shutdown())
        finally:
            self._loop.close()

    async def _shutdown(self) -> None:
        """Cancel requests nobody will collect (a run that stopped early), then close the client."""
        current = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not current:
                task.cancel()
        await self._client.close()


class MalformedAnswer(TransientError):
    """A 200 whose body is not a chat completion: retried by a later run, like a 500."""

    def __init__(self, why: str):
        super().__init__(f"malformed answer from the endpoint: {why}")


def generation_of(body: bytes) -> Generation:
    """The generation in a chat completion's JSON body; MalformedAnswer when it holds none."""
    import json

    try:
        data = json.loads(body)
    except ValueError:  # truncated, not JSON, not UTF-8
        raise MalformedAnswer(f"not JSON ({len(body)} bytes: {body[:60]!r})") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedAnswer(f"no choices list in {str(data)[:80]!r}")
    choice = choices[0]
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else None
    finish = choice.get("finish_reason") or "stop"
    if not isinstance(message, dict) or not isinstance(text, str | None) or not isinstance(finish, str):
        raise MalformedAnswer(f"choice without a text message: {str(choice)[:80]!r}")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

    def tokens(key: str) -> int | None:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    return Generation(
        text=text or "",
        finish_reason=finish,
        prompt_tokens=tokens("prompt_tokens"),
        output_tokens=tokens("completion_tokens"),
    )


def _as_clip_error(exc: Exception) -> Exception:
    """A failed request as the exception its clip's row records (transient ones get a retry row)."""
    import openai

    if isinstance(
        exc,
        openai.APITimeoutError
        | openai.APIConnectionError
        | openai.RateLimitError
        | openai.InternalServerError,
    ):
        return TransientError(f"endpoint still failing after retries: {_describe(exc)}")
    if isinstance(exc, openai.APIStatusError):
        return ValueError(f"endpoint refused the request: {_describe(exc)}")
    return exc


def _describe(exc: BaseException) -> str:
    status = getattr(exc, "status_code", None)
    return f"{type(exc).__name__}" + (f" (HTTP {status})" if status else "") + f": {exc}"
