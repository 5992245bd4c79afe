"""Running the service: open storage and key store, listen with mutual TLS, announce the URL."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import anyio
from aiohttp import web

from cloudserver.app import application, server_context
from cloudserver.db import engine_for, migrate
from cloudserver.service import Service
from cloudserver.settings import Settings
from nuwire.profiles import profile


async def open_service(settings: Settings, data: Path) -> Service:
    engine = engine_for(settings.database_url(data))
    await migrate(engine)
    return Service(engine, settings.open_keystore(data), profile(settings.profile))


async def run(
    settings: Settings, data: Path, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; ``task_status`` gets the URL (with the port chosen when it was 0)."""
    service = await open_service(settings, data)
    tls = settings.tls
    context = server_context(
        settings.path(data, tls.certificate), settings.path(data, tls.key), settings.path(data, tls.client_ca)
    )
    runner = web.AppRunner(application(service), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.listen.host, settings.listen.port, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        url = f"https://{settings.listen.host}:{port}"
        (data / "serve.json").write_text(json.dumps({"url": url}))
        task_status.started(url)
        await anyio.sleep_forever()
    finally:
        await runner.cleanup()
        await service.engine.dispose()


async def serve_until_signal(settings: Settings, data: Path) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            await group.start(run, settings, data)
            async for _ in signals:
                group.cancel_scope.cancel()
                break
