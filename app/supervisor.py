"""`run` keeps its worker alive: a worker that exits (crash, OOM kill, SIGKILL) is started again
with backoff, and the restart is logged. Stopping the supervisor stops the worker for good."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable

log = logging.getLogger("conversation_service.supervisor")


class ChildSupervisor:
    """Restarts a child process whenever it exits, after 1, 2, 4, … s (capped); a child that ran
    `stable_s` seconds resets the backoff. One watcher thread per child."""

    def __init__(
        self,
        name: str,
        spawn: Callable[[], subprocess.Popen[bytes]],
        *,
        max_backoff_s: float = 30.0,
        stable_s: float = 60.0,
    ) -> None:
        self.name = name
        self._spawn = spawn
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.restarts = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        with self._lock:
            self._proc = self._spawn()
        self._thread = threading.Thread(target=self._watch, name=f"supervise-{self.name}", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        failures = 0
        while True:
            with self._lock:
                proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - started
            if ran >= self.stable_s:
                failures = 0
            delay = min(float(1 << min(failures, 10)), self.max_backoff_s)
            failures += 1
            log.warning(
                "%s (pid %s) exited with %s after %.1f s; restarting in %.0f s", self.name, proc.pid, code, ran, delay
            )
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._proc = self._spawn()
                self.restarts += 1
                log.warning("%s restarted (pid %s)", self.name, self._proc.pid)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None:
            self._thread.join(timeout)
