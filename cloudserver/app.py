"""The HTTPS service: aiohttp on asyncio, mutual TLS on every request.

aiohttp keeps the TLS connection's SSL object on the transport, so each request knows the verified
client certificate that made it (uvicorn and Hypercorn do not pass it to the application). The role
is the certificate's OU: ``station`` may register devices and provision; ``admin`` manages jobs.
Errors are application/problem+json naming the field; no input gives a 5xx.
"""

from __future__ import annotations

import base64
import json
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ValidationError

from cloudserver import api
from cloudserver.metrics import CloudMetrics
from cloudserver.pki import identity
from cloudserver.service import JobSpec, Refused, Service

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
M = TypeVar("M", bound=BaseModel)
SERVICE: web.AppKey[Service] = web.AppKey("service", Service)
SUBJECT: web.RequestKey[str] = web.RequestKey("subject", str)
ROLE: web.RequestKey[str] = web.RequestKey("role", str)
LINE: web.RequestKey[str] = web.RequestKey("line", str)
SERIAL: web.RequestKey[str] = web.RequestKey("serial", str)
log = structlog.get_logger("cloudserver")
_UID = re.compile(r"^[0-9A-F]{24}$")
_JOB = re.compile(api.JOB_ID)
MAX_DEPTH = 16
"""Nesting a request body may have: the API's own bodies need 3."""


def _depth(raw: bytes) -> int:
    """How deep ``raw``'s arrays and objects nest, counted without parsing (brackets outside strings)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:  # most bodies: a few brackets in all
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    return deepest


def server_context(certificate: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(client_ca))
    context.load_cert_chain(str(certificate), str(key))
    context.verify_mode = ssl.CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def problem(refused: Refused, headers: dict[str, str] | None = None) -> web.Response:
    body = api.Problem(title=refused.title, status=refused.status, detail=refused.detail, field=refused.field)
    return web.Response(
        status=refused.status,
        text=body.model_dump_json(),
        content_type="application/problem+json",
        headers=headers,
    )


class RateLimit:
    """A token bucket per certificate subject: ``rate`` requests a second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # subject -> (tokens, at)
        self._said: dict[str, float] = {}

    def wait_s(self, subject: str) -> float:
        """0 when ``subject`` may make a request now (a token is taken), else the seconds until it may."""
        now = time.monotonic()
        tokens, at = self._buckets.get(subject, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1:
            self._buckets[subject] = (tokens - 1, now)
            return 0.0
        self._buckets[subject] = (tokens, now)
        if now - self._said.get(subject, -60.0) >= 60:  # once a minute per certificate
            self._said[subject] = now
            log.warning("rate.limited", subject=subject, rate_per_s=self.rate, burst=self.burst)
        return (1 - tokens) / self.rate


LIMIT: web.AppKey[RateLimit] = web.AppKey("limit", RateLimit)
METRICS: web.AppKey[CloudMetrics] = web.AppKey("metrics", CloudMetrics)


@web.middleware
async def measured(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer counted by method, route (the pattern, not the path: UIDs are not labels) and
    status, and timed."""
    started = time.monotonic()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        metrics = request.app[METRICS]
        metrics.requests.labels(request.method, route, str(status)).inc()
        metrics.seconds.labels(route).observe(time.monotonic() - started)


def _action(request: web.Request) -> str:
    return f"{request.method} {request.path}"


@web.middleware
async def mutual_tls(request: web.Request, handler: Handler) -> web.StreamResponse:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return problem(Refused(401, "client certificate required", "connect with a client certificate"))
    subject, role, serial, line = identity(der)
    request[SUBJECT], request[ROLE], request[LINE], request[SERIAL] = subject, role, line, serial
    service = request.app[SERVICE]
    headers: dict[str, str] = {}
    try:
        if request.match_info.handler not in _CHECK_REVOKED_THEMSELVES:
            await service.check_revoked(subject, serial)
        if not role:
            raise Refused(
                403, "no role", f"certificate {subject} names no role (admin, station, monitor) in its OU"
            )
        wait = request.app[LIMIT].wait_s(subject) if role == "station" else 0.0
        if wait > 0:  # answered, not audited: a flood must not become a flood of audit rows
            headers["Retry-After"] = str(math.ceil(wait))
            return problem(Refused(429, "too many requests", f"{subject}: retry in {wait:.1f} s"), headers)
        remaining = service.unavailable_until - time.monotonic()
        if remaining > 0 and request.path.startswith("/v1/jobs/") and "/devices/" in request.path:
            headers["Retry-After"] = str(math.ceil(remaining))
            return problem(
                Refused(503, "maintenance", f"provisioning resumes in {math.ceil(remaining)} s"), headers
            )
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        refused = Refused(error.status, error.reason, f"{request.method} {request.path}: {error.reason}")
        if "Allow" in error.headers:  # RFC 9110: a 405 names the methods that are allowed
            headers["Allow"] = error.headers["Allow"]
    except Refused as error:
        refused = error
    uid = request.match_info.get("uid")
    job_id = request.match_info.get("job_id")
    await service.refusal(
        subject,
        _action(request),
        refused,
        uid if uid and _UID.match(uid) else None,
        job_id if job_id and _JOB.match(job_id) else None,
    )
    log.info(
        "refused", subject=subject, action=_action(request), status=refused.status, detail=refused.detail
    )
    return problem(refused, headers)


def _require(request: web.Request, *roles: str) -> None:
    if request[ROLE] not in roles:
        raise Refused(
            403, "forbidden", f"{request[ROLE]} certificates may not {request.method} {request.path}"
        )


async def _body(request: web.Request, model: type[M]) -> M:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise Refused(413, "too large", "the request body is larger than the server takes") from None
    if _depth(raw) > MAX_DEPTH:
        raise Refused(400, "malformed JSON", f"the request body nests deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        raise Refused(400, "malformed JSON", "the request body is not JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise Refused(422, "invalid request", f"{where}: {first['msg']}", where) from None


def _path(request: web.Request) -> tuple[str, str]:
    job_id, uid = request.match_info.get("job_id", ""), request.match_info.get("uid", "")
    if job_id and not _JOB.match(job_id):
        raise Refused(
            422, "invalid request", f"job_id: expected job-<12 hex digits>, got {job_id[:60]!r}", "job_id"
        )
    if uid and not _UID.match(uid):
        raise Refused(
            422, "invalid request", f"uid: expected 24 upper-case hex digits, got {uid[:60]!r}", "uid"
        )
    return job_id, uid


def _json(value: Any) -> web.Response:
    return web.json_response(value)


async def register(request: web.Request) -> web.Response:
    _require(request, "station", "admin")
    body = await _body(request, api.RegisterRequest)
    service = request.app[SERVICE]
    return _json(await service.register(request[SUBJECT], body.uid, request[LINE], serial=request[SERIAL]))


async def show_device(request: web.Request) -> web.Response:
    _require(request, "station", "admin")
    _, uid = _path(request)
    return _json(await request.app[SERVICE].device(uid))


async def create_job(request: web.Request) -> web.Response:
    _require(request, "admin")
    body = await _body(request, api.JobRequest)
    spec = JobSpec(
        body.pdid,
        body.bootloader.decoded(),
        body.bootloader.version,
        body.application.decoded(),
        body.application.version,
        body.quantity,
        tuple(body.lines),
    )
    return _json(await request.app[SERVICE].create_job(request[SUBJECT], spec))


async def list_jobs(request: web.Request) -> web.Response:
    _require(request, "station", "admin")
    return _json(await request.app[SERVICE].jobs())


async def show_job(request: web.Request) -> web.Response:
    _require(request, "station", "admin")
    job_id, _ = _path(request)
    return _json(await request.app[SERVICE].job(job_id))


async def close_job(request: web.Request) -> web.Response:
    _require(request, "admin")
    job_id, _ = _path(request)
    return _json(await request.app[SERVICE].close_job(request[SUBJECT], job_id))


def _provisioning(method: str) -> Handler:
    async def handle(request: web.Request) -> web.Response:
        _require(request, "station")
        job_id, uid = _path(request)
        body = await _body(request, api.DeviceRequest)
        service = request.app[SERVICE]
        call = getattr(service, method)
        answer = await call(
            request[SUBJECT], job_id, uid, body.obj_id, line=request[LINE], carries=body.carries,
            serial=request[SERIAL],
        )  # fmt: skip
        if "image" in answer:
            answer["image"] = base64.b64encode(answer["image"]).decode()
        return _json(answer)

    return handle


async def result(request: web.Request) -> web.Response:
    _require(request, "station")
    job_id, uid = _path(request)
    body = await _body(request, api.ResultRequest)
    service = request.app[SERVICE]
    return _json(
        await service.result(
            request[SUBJECT],
            job_id,
            uid,
            body.obj_id,
            outcome=body.outcome,
            step=body.step,
            reason=body.reason,
            line=request[LINE],
            serial=request[SERIAL],
        )
    )


PROVISIONING = {method: _provisioning(method) for method in ("bootloader", "application_key", "application")}
_CHECK_REVOKED_THEMSELVES = {register, result, *PROVISIONING.values()}
"""Handlers whose service call checks the caller's certificate against the revocation list in the
request's own first statement (one read fewer on the hot path); every other route is checked by
:func:`mutual_tls`."""


async def maintenance(request: web.Request) -> web.Response:
    _require(request, "admin")
    body = await _body(request, api.MaintenanceRequest)
    await request.app[SERVICE].maintenance(request[SUBJECT], body.seconds)
    return _json({"seconds": body.seconds})


async def metrics_text(request: web.Request) -> web.Response:
    _require(request, "monitor", "admin")
    return web.Response(body=request.app[METRICS].render(), content_type="text/plain", charset="utf-8")


async def openapi_document(request: web.Request) -> web.Response:
    return _json(api.openapi())


def application(
    service: Service, limit: RateLimit | None = None, metrics: CloudMetrics | None = None
) -> web.Application:
    app = web.Application(middlewares=[measured, mutual_tls], client_max_size=3 * api.MAX_BODY)
    app[SERVICE] = service
    app[METRICS] = metrics or CloudMetrics()
    app[LIMIT] = limit or RateLimit(200.0, 400)
    app.router.add_post("/v1/devices", register)
    app.router.add_get("/v1/devices/{uid}", show_device)
    app.router.add_post("/v1/jobs", create_job)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{job_id}", show_job)
    app.router.add_post("/v1/jobs/{job_id}/close", close_job)
    app.router.add_post("/v1/jobs/{job_id}/devices/{uid}/bootloader", PROVISIONING["bootloader"])
    app.router.add_post("/v1/jobs/{job_id}/devices/{uid}/application-key", PROVISIONING["application_key"])
    app.router.add_post("/v1/jobs/{job_id}/devices/{uid}/application", PROVISIONING["application"])
    app.router.add_post("/v1/jobs/{job_id}/devices/{uid}/results", result)
    app.router.add_post("/v1/maintenance", maintenance)
    app.router.add_get("/openapi.json", openapi_document)
    app.router.add_get("/metrics", metrics_text)
    return app
