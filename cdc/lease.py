"""A pipeline's lease, as the pipeline sees it (several instances sharing ``state.dsn``).

Theory of operation: with a PostgreSQL state store, each pipeline runs in one instance at a
time. The instance's lease manager (:mod:`cdc.state_pg`) takes, renews and loses leases in the
state database and reflects each one into a :class:`PipelineLease`. The pipeline only reads
it: it waits in ``standby`` until the lease is held, checks :meth:`PipelineLease.held` before
each batch it hands to the sink, and stops promptly (closing its source, which releases the
replication slot) once it is not. ``held`` is a local judgement: the lease is considered held
until a local deadline computed from the last successful renewal (its start time plus the
expiry), so a paused or partitioned instance stops by itself even without hearing from the
database. The database has the last word: checkpoints and schema versions are written in a
transaction that checks the holder and the fencing token (see :mod:`cdc.state_pg`).

This module imports no database client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Protocol


class PipelineLease:
    """One pipeline's lease in this instance. Written by the lease manager thread, read by the
    pipeline's threads."""

    def __init__(self, pipeline: str) -> None:
        self.pipeline = pipeline
        #: the fencing token of the lease while this instance holds it, else None
        self.token: int | None = None
        self._valid_until = 0.0  # time.monotonic() deadline
        self._cond = threading.Condition()

    def held(self) -> bool:
        """True while this instance holds the lease and it has not expired locally."""
        return self.token is not None and time.monotonic() < self._valid_until

    def grant(self, token: int, valid_until: float) -> None:
        """Called by the lease manager after it took the lease (a new fencing token)."""
        with self._cond:
            self.token = token
            self._valid_until = valid_until
            self._cond.notify_all()

    def extend(self, valid_until: float) -> None:
        """Called by the lease manager after a successful renewal."""
        with self._cond:
            self._valid_until = max(self._valid_until, valid_until)

    def revoke(self) -> None:
        """Called by the lease manager when the lease is gone (taken over, expired, released)."""
        with self._cond:
            self.token = None
            self._valid_until = 0.0
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the lease to be held; returns :meth:`held`."""
        with self._cond:
            if not self.held():
                self._cond.wait(timeout)
        return self.held()


class LeaseCoordinator(Protocol):
    """What the service needs from a store's lease manager (see :mod:`cdc.state_pg`)."""

    instance_id: str
    leases: dict[str, PipelineLease]
    #: True while the state database cannot be reached (``/healthz`` is then 503)
    unreachable: bool

    def start(self) -> None: ...

    def stop(self, release: Iterable[str] = ()) -> None: ...

    def add(self, pipeline: str) -> PipelineLease: ...

    def remove(self, pipeline: str) -> None: ...
