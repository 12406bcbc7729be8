"""torch's OpenMP runtime is left alone by Whisper and by helper threads (see omnilive/__init__.py
and omnilive/engine/torch_threads.py for what goes wrong otherwise)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from omnilive.engine.torch_threads import FreshThreadExecutor

# torch at 2 threads, Whisper at 1; then the thread count torch's own libgomp reports
PROBE = """
import ctypes, pathlib, sys
{first_import}
import numpy as np, torch
from omnilive.backends.asr import WhisperASR
from omnilive.backends.assets import whisper_base_dir
from omnilive.types import AudioInput
torch.set_num_threads(2)
asr = WhisperASR(whisper_base_dir(), cpu_threads=1)
asr.transcribe(AudioInput(np.zeros(16000, np.float32)), language="en")
gomp = ctypes.CDLL(str(pathlib.Path(torch.__file__).parent / "lib" / "libgomp.so.1"))
print(gomp.omp_get_max_threads())
"""


def _torch_openmp_threads_after_whisper(first_import: str) -> int:
    result = subprocess.run([sys.executable, "-c", PROBE.format(first_import=first_import)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


@pytest.mark.slow
def test_whisper_keeps_to_its_own_openmp_runtime():
    # omnilive imported first (as every entry point does): Whisper's cpu_threads stays its own
    assert _torch_openmp_threads_after_whisper("import omnilive") == 2
    # the failure this guards against: torch loaded first, Whisper's OpenMP calls land in torch's
    assert _torch_openmp_threads_after_whisper("import torch; import omnilive") == 1


def test_omnilive_sets_a_short_openmp_spin_unless_told_otherwise():
    probe = "import os, omnilive; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["30000", "None"]
    chosen = subprocess.run([sys.executable, "-c", probe], env={**env, "OMP_WAIT_POLICY": "PASSIVE"},
                            capture_output=True, text=True, check=True).stdout
    assert chosen.split() == ["None", "PASSIVE"]  # the user's choice stands


def test_fresh_thread_executor_runs_calls_one_at_a_time_on_threads_that_end():
    executor = FreshThreadExecutor(thread_name_prefix="probe")
    running, seen, order = [], [], []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            running.append(i)
            overlap = len(running) > 1
        time.sleep(0.02)
        with lock:
            running.remove(i)
        seen.append(threading.current_thread())
        order.append(i)
        assert not overlap, "two calls ran at once"
        return i * i

    futures = [executor.submit(work, i) for i in range(6)]
    assert [f.result(timeout=10) for f in futures] == [i * i for i in range(6)]
    assert order == list(range(6))  # first come, first served
    assert len({id(t) for t in seen}) == 6  # a thread per call
    for thread in seen:
        thread.join(timeout=5)
        assert not thread.is_alive()
    executor.shutdown()
    with pytest.raises(RuntimeError):
        executor.submit(work, 7)


def test_fresh_thread_executor_errors_and_cancellation():
    executor = FreshThreadExecutor()
    gate = threading.Event()
    blocker = executor.submit(gate.wait, 10)
    queued = [executor.submit(lambda: 1) for _ in range(3)]
    failing = executor.submit(lambda: 1 / 0)
    executor.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in [*queued, failing])
    gate.set()
    assert blocker.result(timeout=10) is True  # the running call is never interrupted
    executor.shutdown(wait=True)

    executor = FreshThreadExecutor()
    with pytest.raises(ZeroDivisionError):
        executor.submit(lambda: 1 / 0).result(timeout=10)
    assert executor.submit(lambda: "next").result(timeout=10) == "next"  # a failure does not block the queue
