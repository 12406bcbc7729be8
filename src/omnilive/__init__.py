"""omnilive: a self-hosted server and engine for omni models."""

import os

# OpenMP threads that busy-wait between ops steal the cores the ASR/TTS threads need (and
# collapse decode speed on a shared 2-core machine: measured 10.9 → 0.9 tok/s). Must be set
# before torch is first imported to take effect.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
