"""Work done on one helper thread while the caller goes on: a report's image files and plots are
written while scoring continues, so the report costs little more than the scoring itself."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Background:
    """Jobs run one at a time, in the order given, on a helper thread.

    A job's error is raised in the caller: at its next ``submit`` if the job has finished by
    then, else at ``wait``. At most ``limit`` jobs wait at a time (a ``submit`` beyond that
    waits for the oldest), so a slow disk holds back the caller rather than filling memory. Use as a context manager: leaving it (on an error, an interrupt, or
    after ``wait``) cancels the jobs not started and waits for the running one, so no file is
    being written once it has returned.
    """

    def __init__(self, limit: int = 32) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medfuse-report")
        self._pending: list[Future] = []
        self._limit = limit

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, job: Callable[..., Any], *args: Any) -> Future:
        """Queue ``job(*args)``; return its future.

        Raises:
            Exception: the error of an earlier job that has failed.
        """
        self._raise_failed()
        while len(self._pending) >= self._limit:
            self._pending.pop(0).result()
        future = self._pool.submit(job, *args)
        self._pending.append(future)
        return future

    def wait(self) -> None:
        """Wait for every job queued so far. Raises the first error of one that failed."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def _raise_failed(self) -> None:
        for future in self._pending:
            if future.done() and future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        self._pending = [future for future in self._pending if not future.done()]
