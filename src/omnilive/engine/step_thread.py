"""The thread that owns an engine: it runs the commands handed to it, steps while there is
work and sleeps when there is none.

Every engine (the LLM engine behind AsyncLLM, the native Omni step loop) is driven the same
way: coroutines never touch it, they `submit` small commands (add a request, abort one) that
the thread carries out between two steps, so the engine itself needs no locks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class StepThread:
    def __init__(
        self,
        name: str,
        has_work: Callable[[], bool],
        step: Callable[[], None],
        on_step_error: Callable[[Exception], None],
        on_stop: Callable[[], None],
        on_start: Callable[[], None] = lambda: None,
    ):
        """step: one engine step (outputs delivered by the callee). on_step_error: a step
        raised - a bug outside any one request: fail them all rather than hang them.
        on_stop: runs on the thread after the last step (end the open requests)."""
        self._has_work, self._step = has_work, step
        self._on_step_error, self._on_stop, self._on_start = on_step_error, on_stop, on_start
        self._wake = threading.Condition()
        self._commands: list[Callable[[], None]] = []  # guarded by _wake
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def submit(self, command: Callable[[], None]) -> bool:
        """Run `command` on the thread before its next step; False (not run) once stopping."""
        with self._wake:
            if self._stopping:
                return False
            self._commands.append(command)
            self._wake.notify()
            return True

    def stop(self, timeout: float | None = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        self._on_start()
        while True:
            with self._wake:
                while not (self._commands or self._stopping or self._has_work()):
                    self._wake.wait()
                if self._stopping:
                    break
                commands, self._commands = self._commands, []
            for command in commands:
                command()
            if not self._has_work():
                continue
            try:
                self._step()
            except Exception as error:
                log.exception("engine step failed")
                self._on_step_error(error)
        self._on_stop()
