"""Start-up time of `omnilive serve` (embedded default): a first start on an empty model cache,
then a second start on the cache the first one filled, each until /v1/models answers.

The first start joins the packaged model parts and converts the LLM's weights into the cache;
the second reads them back. Prints both times, the ratio, each start's per-model lines and the
load average (a shared machine's timings are noisy). Prints, never asserts, records nothing.

    python bench/startup.py [--llm qwen2.5-coder-0.5b|smollm2-135m] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/
from tests.server_process import ServerProcess  # noqa: E402

MODEL_LINE = re.compile(r"^\S+ +(qwen\S*|smollm\S*|whisper-base|hibari-tts|rapidocr) .*$", re.MULTILINE)


def timed_start(server: ServerProcess) -> tuple[float, str]:
    """Seconds from launch until /v1/models answers, and the console lines of the models."""
    logged = server.log_path.stat().st_size if server.log_path.exists() else 0
    began = time.perf_counter()
    server.start()
    while httpx.get(f"{server.url}/v1/models", headers=server.auth_headers, timeout=30).status_code != 200:
        time.sleep(0.1)
    took = time.perf_counter() - began
    server.stop()
    console = server.log_path.read_bytes()[logged:].decode(errors="replace")
    return took, "\n".join(m.group(0) for m in MODEL_LINE.finditer(console))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default="qwen2.5-coder-0.5b")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        server = ServerProcess(Path(root) / "data", api_key="bench-key",
                               args=["--llm", args.llm, "--threads", str(args.threads)],
                               env={"OMNILIVE_CACHE_DIR": str(Path(root) / "cache")})
        first, first_lines = timed_start(server)
        print(f"first start (empty cache): {first:6.1f} s\n{first_lines}\n")
        second, second_lines = timed_start(server)
        print(f"second start (cache filled): {second:6.1f} s\n{second_lines}\n")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"second / first: {second / first:.2f}   load average {load}")


if __name__ == "__main__":
    main()
