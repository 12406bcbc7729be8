"""A real `omnilive serve` subprocess on a free port, for every test that needs a server.

It can be killed (SIGKILL) and started again on the same data dir and database, for
persistence tests. The assembled-model cache is shared with normal use (OMNILIVE_CACHE_DIR,
else the default data dir's): building it takes a while, so only the first run pays for it.

    with ServerProcess(tmp_path / "data", api_key="k", args=["--llm", "smollm2-135m"]) as server:
        httpx.get(f"{server.url}/health", headers=server.auth_headers)
        server.kill(); server.start()
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO_SRC = Path(__file__).resolve().parents[1] / "src"
STARTUP_TIMEOUT_S = 420  # a first run assembles the packaged models into the cache


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_cache_dir() -> str:
    from omnilive.server.settings import Settings

    return os.environ.get("OMNILIVE_CACHE_DIR") or str(Settings().models_dir)


class ServerProcess:
    def __init__(self, data_dir: Path, database_url: str | None = None, api_key: str | None = None,
                 env: dict[str, str] | None = None, args: list[str] | None = None, max_body_bytes: int | None = None):
        self.data_dir = data_dir
        self.database_url = database_url
        self.api_key = api_key
        self.extra_env = dict(env or {})
        self.extra_args = list(args or [])
        self.max_body_bytes = max_body_bytes
        if max_body_bytes is not None:
            self.extra_env["OMNILIVE_MAX_BODY_BYTES"] = str(max_body_bytes)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir / "server.log"

    @classmethod
    def of_checkpoint(cls, directory: Path, data_dir: Path, api_key: str) -> ServerProcess:
        """`omnilive serve --model DIR` in float32 on one thread: the tiny-checkpoint tests' server."""
        return cls(data_dir, api_key=api_key, env={"OMNILIVE_THREADS": "1"},
                   args=["--model", str(directory), "--dtype", "float32"])

    def openai_client(self, timeout: float = 120):
        """The official OpenAI client with this server's key, not retrying (a context manager)."""
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=self.api_key, max_retries=0, timeout=timeout)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_SRC), os.environ.get("PYTHONPATH")])),
            "OMNILIVE_CACHE_DIR": default_cache_dir(),
            **self.extra_env,
        }
        env.pop("OMNILIVE_DATABASE_URL", None)
        if self.database_url:
            env["OMNILIVE_DATABASE_URL"] = self.database_url
        command = [sys.executable, "-m", "omnilive", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        if self.api_key:
            command += ["--api-key", self.api_key]
        command += self.extra_args
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self._wait_healthy()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not healthy after {STARTUP_TIMEOUT_S} s:\n{self.log_tail()}")

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
