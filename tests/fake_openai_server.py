"""A scripted OpenAI-compatible chat server on 127.0.0.1 for the captioning tests (stdlib only).

In a test: `FakeVLM(...).start()` serves /v1/chat/completions, /v1/models, /health and /version
from a thread, answers with scripted captions, fails chosen requests (429/500/400, with a short
`retry-after-ms`), answers chosen requests with a malformed 200 (a truncated body, JSON of the
wrong shape), can hold the first requests until several are in flight (to prove concurrency) or
hold every request after the first N (so that a test kills a run mid-way on an event, not a
timer), and records what it received. As a script it stands in for vLLM's server module:
`python fake_openai_server.py --model M --port P --served-model-name N ...` (the arguments datakit
passes), recording its argv, pid and environment to $FAKE_VLLM_RECORD; $FAKE_VLLM_HOLD_AFTER=N makes
it answer N chat requests, then hold the others until the process ends.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_CAPTIONS = [("The video shows a dog running along a sunny beach.", "stop")]
# malformed 200 answers, by name: the raw body sent
MALFORMED = {
    "truncated": b'{"id": "chatcmpl-0", "object": "chat.completion", "choices": [{"index": 0, "message": {"rol',
    "not-json": b"<html>502 Bad Gateway</html>",
    "no-choices": b'{"id": "chatcmpl-0", "object": "chat.completion", "model": "fake-vlm"}',
    "empty-choices": b'{"id": "chatcmpl-0", "object": "chat.completion", "choices": []}',
    "choices-not-a-list": b'{"id": "chatcmpl-0", "choices": "a dog"}',
    "message-not-an-object": b'{"id": "chatcmpl-0", "choices": [{"index": 0, "message": "a dog", "finish_reason": "stop"}]}',
    "content-not-text": b'{"id": "chatcmpl-0", "choices": [{"index": 0, "message": {"role": "assistant", "content": 7}}]}',
    "a-list": b"[1, 2, 3]",
}


class FakeVLM:
    def __init__(
        self,
        captions: list[tuple[str, str]] | None = None,
        *,
        failures: dict[int, int] | None = None,
        always_fail: int | None = None,
        hold_first: int = 0,
        delay_s: float = 0.0,
        model: str = "fake-vlm",
        port: int = 0,
        malformed: dict[int, str] | None = None,
        hold_after: int | None = None,
    ):
        self.captions = captions or DEFAULT_CAPTIONS
        self.failures = failures or {}  # request number (from 0) -> HTTP status to answer instead
        self.always_fail = always_fail
        self.malformed = malformed or {}  # request number -> a MALFORMED name to answer with (status 200)
        self.hold_after = hold_after  # answer this many chat requests, then hold the others forever
        self.delay_s = delay_s
        self.model = model
        self.requests: list[dict] = []  # every chat request received (the JSON body, images decoded)
        self.statuses: list[int] = []
        self.in_flight = self.max_in_flight = 0
        self._answered = 0
        self._lock = threading.Lock()
        self._barrier = threading.Barrier(hold_first, timeout=20) if hold_first > 1 else None
        self._hold_first = hold_first
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeVLM:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def chat(self, body: dict) -> tuple[int, dict | bytes]:
        with self._lock:
            n = len(self.requests)
            self.requests.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold_after is not None and n >= self.hold_after:
                threading.Event().wait()  # never answered: the run is stopped while it waits
            if self._barrier is not None and n < self._hold_first:
                self._barrier.wait()  # proves that `hold_first` requests are in flight together
            if self.delay_s:
                time.sleep(self.delay_s)
            status = self.always_fail or self.failures.get(n)
            if status:
                return status, {"error": {"message": f"scripted failure {status}", "type": "test"}}
            if n in self.malformed:
                return 200, MALFORMED[self.malformed[n]]
            with self._lock:
                text, finish = self.captions[self._answered % len(self.captions)]
                self._answered += 1
            images = [
                p
                for m in body["messages"]
                if isinstance(m["content"], list)
                for p in m["content"]
                if p["type"] == "image_url"
            ]
            completion = body["max_tokens"] if finish == "length" else max(1, len(text.split()))
            return 200, {
                "id": f"chatcmpl-{n}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                ],
                "usage": {
                    "prompt_tokens": 20 + 16 * len(images),
                    "completion_tokens": completion,
                    "total_tokens": 20 + 16 * len(images) + completion,
                },
            }
        finally:
            with self._lock:
                self.in_flight -= 1

    def images(self, request: dict) -> list[bytes]:
        """The decoded image bytes of a recorded request, in order."""
        urls = [
            p["image_url"]["url"]
            for m in request["messages"]
            if isinstance(m["content"], list)
            for p in m["content"]
            if p["type"] == "image_url"
        ]
        return [base64.b64decode(u.split(",", 1)[1]) for u in urls]


def _handler(fake: FakeVLM):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, payload: dict | bytes) -> None:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429 or status >= 500:
                self.send_header("retry-after-ms", "10")
            self.end_headers()
            self.wfile.write(data)
            fake.statuses.append(status)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, {})
            elif self.path == "/version":
                self._send(200, {"version": "fake-0"})
            elif self.path == "/v1/models":
                self._send(
                    200,
                    {"object": "list", "data": [{"id": fake.model, "object": "model", "owned_by": "test"}]},
                )
            else:
                self._send(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                self._send(404, {"error": {"message": "not found"}})
                return
            if body.get("model") != fake.model:
                self._send(404, {"error": {"message": f"model {body.get('model')} not served"}})
                return
            self._send(*fake.chat(body))

    return Handler


def main() -> None:
    """Stand-in for `python -m vllm.entrypoints.openai.api_server` (extra arguments are recorded)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    args, _ = parser.parse_known_args()
    record = os.environ.get("FAKE_VLLM_RECORD")
    if record:
        keys = ("TMPDIR", "VLLM_CACHE_ROOT", "VLLM_CPU_KVCACHE_SPACE")
        with open(record, "a") as fh:
            fh.write(
                json.dumps(
                    {"pid": os.getpid(), "argv": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}}
                )
                + "\n"
            )
    delay = float(os.environ.get("FAKE_VLLM_DELAY_S", "0"))
    hold = os.environ.get("FAKE_VLLM_HOLD_AFTER")
    fake = FakeVLM(
        model=args.served_model_name, port=args.port, delay_s=delay, hold_after=int(hold) if hold else None
    )
    fake.server.serve_forever()


if __name__ == "__main__":
    main()
