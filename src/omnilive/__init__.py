"""omnilive: a self-hosted server and engine for omni models."""

import importlib.util
import os
import sys

# OpenMP workers spin GOMP_SPINCOUNT times after a parallel region before they sleep. Spinning
# for ever (OMP_WAIT_POLICY=ACTIVE) steals the cores the ASR/TTS threads need (decode collapsed
# 10.9 → 0.9 tok/s on a shared 2-core machine); never spinning (PASSIVE) makes every op of a
# decode step wake a sleeping worker (the embedded LLM's step 58 → 78 ms). A short spin
# bridges the gaps between one step's ops and sleeps between steps. Read when torch loads.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "30000"

# CTranslate2 (Whisper) bundles its own libgomp. Loaded after torch, whose libgomp is in the
# global symbol scope, its OpenMP calls bind to torch's runtime instead: Whisper's cpu_threads
# then sets torch's thread count, and after one transcription every torch kernel runs ~30 %
# slower (the embedded LLM's decode step 58 → 78 ms, measured). Loaded first, each keeps its
# own runtime. tests/backends/test_openmp_isolation.py checks it.
if "torch" not in sys.modules and importlib.util.find_spec("ctranslate2") is not None:
    try:
        import ctranslate2  # noqa: F401
    except (ImportError, OSError):  # a broken install fails where Whisper is used, not here
        pass
