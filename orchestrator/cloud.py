"""The station's cloud port: the cloud client's calls a line makes, each attempt within its
deadline, the client's errors mapped by type to :class:`CloudFailure` (orchestrator/errors.py).

One retry layer: the client makes one request per call (``attempts=1``); the station's steps
retry (``defaults.cloud.retry``), each attempt within ``defaults.cloud.timeout_s``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import anyio
import httpx

from cloudserver.client import CloudClient, CloudError, CloudRefused, SignedKey, client_context
from orchestrator.config import LineConfig
from orchestrator.errors import CloudFailure, Quarantine

T = TypeVar("T")
CARRIED = ("key lost", "another key burnt")
"""The cloud's refusals for a board whose OTP already holds a key it did not hand out (or no
longer knows): QUARANTINE, never a second key."""


class CloudPort(Protocol):
    """What a station asks of the cloud; a failure is a CloudFailure (orchestrator/errors.py)."""

    async def register(self, uid: str) -> str: ...
    async def job(self, job_id: str) -> dict[str, Any]: ...
    async def bootloader(
        self, job_id: str, uid: str, obj_id: str, carries: Sequence[int] | None = None
    ) -> SignedKey: ...
    async def application_key(self, job_id: str, uid: str, obj_id: str) -> bytes: ...
    async def application(self, job_id: str, uid: str, obj_id: str) -> SignedKey: ...
    async def report(
        self, job_id: str, uid: str, obj_id: str, *, outcome: str, step: int, reason: str = ""
    ) -> None: ...
    async def aclose(self) -> None: ...


class LineCloud:
    """The CloudPort of a line: the cloud client over mutual TLS."""

    def __init__(self, client: CloudClient, timeout_s: float) -> None:
        self.client, self.timeout_s = client, timeout_s

    def __repr__(self) -> str:
        return f"<LineCloud {self.client!r} timeout={self.timeout_s}s>"

    @classmethod
    def for_line(cls, config: LineConfig, observe: Callable[[str, str, float, int], None]) -> LineCloud:
        cloud, timeout = config.cloud, config.defaults.cloud.timeout_s
        client = CloudClient(
            cloud.url,
            client_context(cloud.client_certificate, cloud.client_key, cloud.ca),
            attempts=1,
            timeout=httpx.Timeout(timeout),
            observe=observe,
            connections=max(20, len(config.stations)),  # one kept alive per station
        )
        return cls(client, timeout)

    async def _call(self, action: Awaitable[T]) -> T:
        try:
            with anyio.fail_after(self.timeout_s):
                return await action
        except TimeoutError:
            late = f"the cloud gave no answer within {self.timeout_s} s"
            raise CloudFailure(late, retryable=True) from None
        except CloudRefused as refused:
            if refused.title in CARRIED:  # the board holds a key the cloud will not stand behind
                raise Quarantine(f"the cloud refused: {refused.detail}") from refused
            raise CloudFailure(str(refused), retryable=refused.retryable, status=refused.status) from refused
        except CloudError as error:  # no answer, a TLS handshake refused (CA, certificate), a 5xx, a 429
            after = getattr(error, "retry_after", 0.0)
            raise CloudFailure(str(error), retryable=error.retryable, retry_after=after) from error

    async def register(self, uid: str) -> str:
        return await self._call(self.client.register(uid))

    async def job(self, job_id: str) -> dict[str, Any]:
        return await self._call(self.client.job(job_id))

    async def bootloader(
        self, job_id: str, uid: str, obj_id: str, carries: Sequence[int] | None = None
    ) -> SignedKey:
        return await self._call(self.client.bootloader(job_id, uid, obj_id, carries))

    async def application_key(self, job_id: str, uid: str, obj_id: str) -> bytes:
        return await self._call(self.client.application_key(job_id, uid, obj_id))

    async def application(self, job_id: str, uid: str, obj_id: str) -> SignedKey:
        return await self._call(self.client.application(job_id, uid, obj_id))

    async def report(
        self, job_id: str, uid: str, obj_id: str, *, outcome: str, step: int, reason: str = ""
    ) -> None:
        await self._call(self.client.report(job_id, uid, obj_id, outcome=outcome, step=step, reason=reason))

    async def aclose(self) -> None:
        await self.client.aclose()
