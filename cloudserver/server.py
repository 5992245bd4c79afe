"""Running the service: open storage and key store, listen with mutual TLS, announce the URL."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import anyio
import structlog
from aiohttp import web
from sqlalchemy import make_url
from sqlalchemy.exc import SQLAlchemyError

from cloudserver.app import RateLimit, application, server_context
from cloudserver.db import engine_for, migrate
from cloudserver.metrics import CloudMetrics
from cloudserver.service import Service
from cloudserver.settings import Settings, SettingsError
from nuwire.profiles import profile

HANDSHAKE_S = 5.0
"""A TLS handshake not done by then is dropped: an idle or slow connection holds nothing long."""
QUIET_S = 60.0
"""Connection-level trouble (refused handshakes, accept() out of descriptors) is logged once per
this many seconds, with a count, never as a traceback per connection."""
log = structlog.get_logger("cloudserver")


class _Site(web.TCPSite):
    """aiohttp's TCPSite with a handshake deadline and a long backlog."""

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None  # noqa: S101  # set up by the runner before any site starts
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=1024,
            ssl_handshake_timeout=HANDSHAKE_S,
        )  # fmt: skip
        self._bound_port = self._server.sockets[0].getsockname()[1]


def _more_descriptors() -> int:
    """Raise the soft limit on open files to the hard one (systemd's default soft limit is 1024);
    the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _quiet_connection_errors(loop: asyncio.AbstractEventLoop, metrics: CloudMetrics) -> None:
    """asyncio reports each failed accept() or handshake with a traceback: count them instead,
    and log a count once per QUIET_S (``connections.trouble``)."""
    counts: dict[str, int] = {}
    said = [0.0]

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        message = str(context.get("message", ""))
        if not isinstance(error, OSError) and "accept" not in message and "handshake" not in message:
            loop.default_exception_handler(context)
            return
        kind = type(error).__name__ if error is not None else message
        counts[kind] = counts.get(kind, 0) + 1
        metrics.trouble.labels(kind).inc()
        if time.monotonic() - said[0] >= QUIET_S:
            log.warning("connections.trouble", counts=dict(counts), example=f"{message}: {error}"[:200])
            counts.clear()
            said[0] = time.monotonic()

    loop.set_exception_handler(handle)


async def open_service(settings: Settings, data: Path) -> Service:
    """The service on its database (migrated) and key store; a SettingsError naming the setting
    when either cannot be opened."""
    keystore = settings.open_keystore(data)
    url = settings.database_url(data)
    engine = engine_for(url)
    try:
        await migrate(engine)
    except (OSError, SQLAlchemyError) as error:
        await engine.dispose()
        where = make_url(url).render_as_string(hide_password=True)
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        raise SettingsError(f"{data / 'settings.json'}: database: {where}: {reason}") from None
    return Service(engine, keystore, profile(settings.profile))


async def run(
    settings: Settings, data: Path, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; ``task_status`` gets the URL (with the port chosen when it was 0)."""
    certificate, key, client_ca = settings.tls_files(data)
    try:
        context = server_context(certificate, key, client_ca)
    except ssl.SSLError as error:
        raise SettingsError(f"{data / 'settings.json'}: tls: {certificate}, {key}: {error}") from None
    service = await open_service(settings, data)
    limits, metrics = settings.limits, CloudMetrics()
    runner = web.AppRunner(
        application(service, RateLimit(limits.station_rate_per_s, limits.station_burst), metrics),
        access_log=None,
    )
    await runner.setup()
    try:
        descriptors = _more_descriptors()
        _quiet_connection_errors(asyncio.get_running_loop(), metrics)
        site = _Site(runner, settings.listen.host, settings.listen.port, ssl_context=context)
        try:
            await site.start()
        except OSError as error:
            where = f"{settings.listen.host}:{settings.listen.port}"
            raise SettingsError(f"{data / 'settings.json'}: listen: {where}: {error.strerror}") from None
        port = runner.addresses[0][1]
        url = f"https://{settings.listen.host}:{port}"
        (data / "serve.json").write_text(json.dumps({"url": url}))
        log.info("serve", url=url, open_files=descriptors, handshake_s=HANDSHAKE_S)
        task_status.started(url)
        await anyio.sleep_forever()
    finally:
        await runner.cleanup()
        await service.close()


async def serve_until_signal(settings: Settings, data: Path) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            await group.start(run, settings, data)
            async for _ in signals:
                group.cancel_scope.cancel()
                break
