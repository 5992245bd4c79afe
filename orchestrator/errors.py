"""Every way a board's sequence stops, as one tree (the shape of httpx/_exceptions.py)::

    ProvisioningError          reason, station, step, uid, retryable
     ├── BoardStop             the board's sequence ends here: no retry
     │    ├── Fatal            FAIL: retrying cannot help (a signature that does not verify)
     │    ├── Quarantine       the board holds what it should not (a value read twice): a person decides
     │    ├── Swapped          the board in the fixture is not the one being provisioned: touch nothing
     │    └── Parked           the station stops: the board waits at a safe point, its journal open
     ├── PortFailure           a port failed: retried unless ``retryable`` says no; ``gone``: the board waits
     │    ├── ProbeFailure     the probe worker (``kind``: probe, transfer, timeout, not_detected, failed)
     │    ├── UartFailure      the ISP UART
     │    │    ├── SessionLost no valid answer, or SecureISP ended: only nRESET brings it back
     │    │    └── Refused     the target refused a request (it keeps its session)
     │    └── CloudFailure     the cloud (orchestrator/cloud.py maps the client's errors by type)
     └── JournalFailure        a journal write failed: the station blocks before anything irreversible

The station (orchestrator/station.py) fills in ``station``, ``step`` and ``uid`` where an error
passes a step, and retries by ``retryable`` alone, in one place (``StationRunner.step``). Outside
the tree: nuwire's ProtocolError (a malformed image or record from the cloud: the board FAILs),
and orchestrator/states.py's IllegalTransition (a bug: the station task restarts).
"""

from __future__ import annotations


class ProvisioningError(Exception):
    """A board's sequence stopped; ``reason`` says why, the other fields where."""

    retryable = False

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool | None = None,
        station: str | None = None,
        step: int | None = None,
        uid: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason, self.station, self.step, self.uid = reason, station, step, uid
        if retryable is not None:
            self.retryable = retryable

    def at(self, station: str, step: int, uid: str) -> ProvisioningError:
        """Where it happened, filled in once (the innermost step that saw it)."""
        if self.station is None:
            self.station, self.step, self.uid = station, step, uid
        return self


class BoardStop(ProvisioningError):
    """The board's sequence ends here, whatever a retry would do."""


class Fatal(BoardStop):
    """The board fails here; retrying cannot help (quota, signature mismatch)."""


class Quarantine(BoardStop):
    """The board holds something it should not (a foreign OTP value): a person decides."""


class Swapped(BoardStop):
    """The board in the fixture is not the one being provisioned: stop, touch nothing."""


class Parked(BoardStop):
    """The station stops (SIGTERM, SIGINT, a reload that removes it): the board waits at a safe
    point with its journal open; the next start of the station resumes it."""


class PortFailure(ProvisioningError):
    """A port (probe, UART, cloud) failed; retryable unless it says otherwise. ``gone``: the port
    itself is away (the probe unplugged, the UART device missing, the cloud unreachable), which
    says nothing about the board: when the step's retries run out the board is not failed but
    waits, its journal open, while the station shows ``blocked`` until the port is back."""

    retryable = True

    def __init__(self, reason: str, *, retryable: bool | None = None, gone: bool = False) -> None:
        super().__init__(reason, retryable=retryable)
        self.gone = gone


class ProbeFailure(PortFailure):
    """The probe worker's answer: ``kind`` is probe, transfer, timeout (retryable), not_detected
    (the debug port answers nothing: maybe locked) or failed."""

    def __init__(self, kind: str, message: str, *, gone: bool | None = None) -> None:
        """``gone`` defaults to kind ``probe`` (the probe itself is away); the station's own
        verdicts on a silent debug port around the lock say ``gone=False``: retried, then FAIL."""
        super().__init__(
            f"{kind}: {message}",
            retryable=kind in ("probe", "transfer", "timeout"),
            gone=kind == "probe" if gone is None else gone,
        )
        self.kind = kind


class UartFailure(PortFailure):
    """The ISP UART failed (it does not open, a request was refused or went unanswered)."""


class SessionLost(UartFailure):
    """The target gave no valid answer, or ended SecureISP: only a reset brings it back."""


class Refused(UartFailure):
    """The target answered a request with a refusal (it keeps its session)."""


class CloudFailure(PortFailure):
    """The cloud did not do what was asked: ``status`` is its HTTP refusal (404, 409, ...), or
    None when it did not answer (a timeout, a TLS handshake refused, a 5xx, a 429); ``retry_after``
    the seconds it asked the station to wait (Retry-After), which the step's backoff honours."""

    def __init__(
        self, reason: str, *, retryable: bool, status: int | None = None, retry_after: float = 0.0
    ) -> None:
        super().__init__(reason, retryable=retryable, gone=retryable and (status is None or status >= 500))
        self.status, self.retry_after = status, retry_after


class JournalFailure(ProvisioningError):
    """A journal write failed (disk full, I/O error). The write is not on disk, so nothing
    irreversible may follow it: the station blocks until a write succeeds again (``Journal.check``)."""
