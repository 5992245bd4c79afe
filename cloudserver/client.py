"""The orchestrator's typed client for the cloud: httpx, mutual TLS, explicit timeouts, retries.

Errors::

    CloudError                 anything that went wrong talking to the cloud
     ├── CloudUnavailable      network failure, timeout or 5xx after the retries (retryable)
     └── CloudRefused          a 4xx problem answer (not retryable): status, title, detail, field
          └── QuotaExceeded    409: the job has made all its boards

Every provisioning call is idempotent on the server (the same request gives the same key and the
same image bytes), so they are retried on network failures and 5xx; creating a job is not retried.
"""

from __future__ import annotations

import base64
import hashlib
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx

from nuwire.keys import public_key_from_raw

TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=30.0, pool=5.0)


class CloudError(Exception):
    retryable = False


class CloudUnavailable(CloudError):
    """``retry_after``: the seconds the server asked for (Retry-After of a 429 or 503), or 0."""

    retryable = True

    def __init__(self, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class CloudRefused(CloudError):
    def __init__(self, status: int, title: str, detail: str, field: str = "") -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail, self.field = status, title, detail, field


class QuotaExceeded(CloudRefused):
    pass


@dataclass(frozen=True, slots=True)
class SignedKey:
    public_key: bytes
    image: bytes
    sha256: str


def client_context(certificate: Path, key: Path, ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.load_cert_chain(str(certificate), str(key))
    return context


class CloudClient:
    def __init__(
        self,
        url: str,
        context: ssl.SSLContext,
        *,
        attempts: int = 4,
        backoff: float = 0.2,
        timeout: httpx.Timeout = TIMEOUT,
        observe: Callable[[str, str, float, int], None] | None = None,
        connections: int = 20,
    ) -> None:
        """``observe(method, path, seconds, status)`` is called after every request (status 0: no
        answer); ``connections`` are kept alive for reuse (each new one costs a TLS handshake)."""
        limits = httpx.Limits(
            max_connections=max(100, connections), max_keepalive_connections=connections, keepalive_expiry=30
        )
        self._http = httpx.AsyncClient(base_url=url, verify=context, timeout=timeout, limits=limits)
        self._observe = observe or (lambda *_: None)
        self._attempts = attempts
        self._backoff = backoff

    def __repr__(self) -> str:
        return f"<CloudClient {self._http.base_url}>"

    async def __aenter__(self) -> CloudClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, *, retry: bool = True
    ) -> Any:
        attempts = self._attempts if retry else 1
        for attempt in range(attempts):
            started = time.monotonic()
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.HTTPError as error:
                self._observe(method, path, time.monotonic() - started, 0)
                failure: CloudError = CloudUnavailable(f"{method} {path}: {type(error).__name__}: {error}")
            else:
                self._observe(method, path, time.monotonic() - started, response.status_code)
                if response.status_code < 400:
                    return response.json()
                failure = _refusal(response)
                if not failure.retryable:
                    raise failure
            if attempt + 1 < attempts:
                backoff = self._backoff * 2**attempt * (0.5 + random.random())  # noqa: S311  # jitter
                await anyio.sleep(max(backoff, getattr(failure, "retry_after", 0.0)))
        raise failure

    async def register(self, uid: str) -> str:
        """The OBJ_ID for a UID (the same one every time)."""
        return str((await self._call("POST", "/v1/devices", {"uid": uid}))["obj_id"])

    async def device(self, uid: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("GET", f"/v1/devices/{uid}")
        return answer

    async def create_job(
        self,
        *,
        pdid: int,
        bootloader: bytes,
        bootloader_version: str,
        application: bytes,
        application_version: str,
        quantity: int,
        lines: Sequence[str] = (),
    ) -> dict[str, Any]:
        body = {
            "pdid": pdid,
            "quantity": quantity,
            "lines": list(lines),
            "bootloader": {"body": base64.b64encode(bootloader).decode(), "version": bootloader_version},
            "application": {"body": base64.b64encode(application).decode(), "version": application_version},
        }
        answer: dict[str, Any] = await self._call("POST", "/v1/jobs", body, retry=False)
        return answer

    async def jobs(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = await self._call("GET", "/v1/jobs")
        return answer

    async def job(self, job_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("GET", f"/v1/jobs/{job_id}")
        return answer

    async def maintenance(self, seconds: int) -> None:
        """Admin: provisioning answers 503 (retryable) for ``seconds``."""
        await self._call("POST", "/v1/maintenance", {"seconds": seconds}, retry=False)

    async def close_job(self, job_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("POST", f"/v1/jobs/{job_id}/close")
        return answer

    async def _signed(
        self, job_id: str, uid: str, obj_id: str, what: str, carries: Sequence[int] | None = None
    ) -> SignedKey:
        body: dict[str, Any] = {"obj_id": obj_id}
        if carries is not None:
            body["carries"] = list(carries)
        answer = await self._call("POST", f"/v1/jobs/{job_id}/devices/{uid}/{what}", body)
        image = base64.b64decode(answer["image"])
        if hashlib.sha256(image).hexdigest() != answer["sha256"]:
            raise CloudUnavailable(f"{what} image for {uid} arrived damaged (SHA-256 differs)")
        return SignedKey(_public_key(answer["public_key"]), image, answer["sha256"])

    async def bootloader(
        self, job_id: str, uid: str, obj_id: str, carries: Sequence[int] | None = None
    ) -> SignedKey:
        """Step 2: the board's bootloader public key and the bootloader signed with it;
        ``carries``: the OTP words the board holds for that key (so the cloud never makes a
        second key for a board that carries one)."""
        return await self._signed(job_id, uid, obj_id, "bootloader", carries)

    async def application_key(self, job_id: str, uid: str, obj_id: str) -> bytes:
        """Step 7: the board's application public key (raw X||Y)."""
        answer = await self._call(
            "POST", f"/v1/jobs/{job_id}/devices/{uid}/application-key", {"obj_id": obj_id}
        )
        return _public_key(answer["public_key"])

    async def application(self, job_id: str, uid: str, obj_id: str) -> SignedKey:
        """Step 11: the application signed with the board's application key."""
        return await self._signed(job_id, uid, obj_id, "application")

    async def report(
        self, job_id: str, uid: str, obj_id: str, *, outcome: str, step: int, reason: str = ""
    ) -> None:
        """Step 13: PASS, or FAIL with the step and reason."""
        body = {"obj_id": obj_id, "outcome": outcome, "step": step, "reason": reason}
        await self._call("POST", f"/v1/jobs/{job_id}/devices/{uid}/results", body)


def _public_key(text: str) -> bytes:
    raw = bytes.fromhex(text)
    public_key_from_raw(raw, "public key from the cloud")
    return raw


def _refusal(response: httpx.Response) -> CloudError:
    if response.status_code >= 500 or response.status_code == 429:
        try:
            after = min(60.0, float(response.headers.get("Retry-After", "0")))
        except ValueError:  # an HTTP date: not sent by this server
            after = 0.0
        return CloudUnavailable(
            f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}", after
        )
    try:
        body = response.json()
        title, detail, field = str(body["title"]), str(body["detail"]), str(body.get("field", ""))
    except (ValueError, KeyError, TypeError):
        title, detail, field = "refused", response.text[:200], ""
    kind = QuotaExceeded if response.status_code == 409 and title == "quota exhausted" else CloudRefused
    return kind(response.status_code, title, detail, field)
