"""The line's side of a station's preflight: the cloud answers over mutual TLS (the configured CA and
station certificate) and the job exists, is open and has quota left.

One :class:`JobCheck` serves every station of a line: its answer is shared for ``ttl_s`` (an idle
line of 16 stations polls four times a second), one request at a time.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from orchestrator.cloud import CloudPort
from orchestrator.errors import CloudFailure


class JobCheck:
    def __init__(self, cloud: CloudPort, job_id: str, *, ttl_s: float = 5.0) -> None:
        self.cloud, self.job_id, self.ttl_s = cloud, job_id, ttl_s
        self._lock = anyio.Lock()
        self._asked_at = -float("inf")
        self._job: dict[str, Any] | None = None
        self._error: str | None = None

    def __repr__(self) -> str:
        return f"<JobCheck {self.job_id} error={self._error!r}>"

    async def problem(self, *, new_board: bool) -> str | None:
        """Why the job cannot take a board now, or None. ``new_board``: a board not yet started
        needs quota left; a board in progress already holds its share."""
        async with self._lock:
            if time.monotonic() - self._asked_at > self.ttl_s:
                self._job, self._error = await self._ask()
                self._asked_at = time.monotonic()
        if self._error is not None or self._job is None:
            return self._error
        job = self._job
        if job.get("state") != "open":
            return f"job {self.job_id} is {job.get('state')} on the cloud"
        used, quantity = int(job.get("used", 0)), int(job.get("quantity", 0))
        if new_board and used >= quantity:
            return f"job {self.job_id} has no quota left ({used} of {quantity} boards)"
        return None

    @property
    def job(self) -> dict[str, Any] | None:
        """The cloud's last answer about the job (None before one, or after a failure)."""
        return self._job

    @property
    def error(self) -> str | None:
        """Why the last question about the job had no answer (None: it had one)."""
        return self._error

    def forget(self) -> None:
        """Ask the cloud again next time (a board took quota, a refusal came back)."""
        self._asked_at = -float("inf")

    async def _ask(self) -> tuple[dict[str, Any] | None, str | None]:
        try:
            return await self.cloud.job(self.job_id), None
        except CloudFailure as failure:
            if failure.status == 404:
                return None, f"job {self.job_id} does not exist on the cloud"
            if failure.status is not None:
                return None, f"the cloud refuses the job check: {failure}"
            # no answer in time, a TLS handshake refused (CA, certificate), a 5xx
            return None, f"the cloud does not answer: {failure}"[:300]
