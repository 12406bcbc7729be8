"""lmms-eval's own scoring modules, imported without lmms-eval's package start-up.

`import lmms_eval.tasks` runs its whole task registry (torch, transformers, datasets, every
task's YAML); the scoring files need none of it. So `lmms_eval.tasks` is registered as a bare
package over the installed folder, and its modules import as usual from there. lmms-eval is
installed with --no-deps (scripts/install.sh): its declared dependencies pull CUDA torch.

    vqa = reference("lmms_eval.tasks._task_utils.vqa_eval_metric")
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import types

import pytest


def reference(module: str):
    lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval not installed (scripts/install.sh test does)")
    if "lmms_eval.tasks" not in sys.modules:
        tasks = types.ModuleType("lmms_eval.tasks")
        tasks.__path__ = [os.path.join(os.path.dirname(lmms_eval.__file__), "tasks")]
        sys.modules["lmms_eval.tasks"] = tasks
    os.environ.setdefault("API_TYPE", "dummy")  # MathVista's module builds a judge client at import; no call is made
    with contextlib.redirect_stdout(io.StringIO()):  # their WER prints its first pair
        return importlib.import_module(module)


def quiet(function, *args, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args, **kwargs)
