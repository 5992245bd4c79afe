"""The daemon's local HTTP API, dashboard and metrics (aiohttp, in the daemon's event loop).

Read-only and open to anyone who can reach the address (127.0.0.1 by default): the dashboard at /,
``GET /api/v1/status``, ``GET /api/v1/stations/{name}``, ``GET /api/v1/boards`` (the job's boards,
searched), ``GET /api/v1/boards/{uid}`` and ``.../history`` (every attempt), the live event stream
``GET /api/v1/events`` (server-sent events) and ``GET /metrics`` (Prometheus). Control actions need
``Authorization: Bearer <token>`` with the token from ``api.token_file``:
``POST /api/v1/stations/{name}/pause|resume|retry|release``. The routes are listed in docs/monitoring.md.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from orchestrator.journal import FINAL, Board
from orchestrator.report import board_history, board_row

if TYPE_CHECKING:
    from orchestrator.daemon import Line

log = structlog.get_logger("orchestrator")
WEB = Path(__file__).parent / "web"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ACTIONS = ("pause", "resume", "retry", "release")


class ApiError(Exception):
    """The API cannot start: its address is taken or wrong, or its token file is unusable."""


class Refused(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def _problem(status: int, title: str, detail: str) -> web.Response:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    response = web.json_response(body, status=status, content_type="application/problem+json")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="orchestrator"'
    return response


def read_token(path: Path | None) -> str | None:
    """The control token from ``api.token_file``; ApiError (naming the file) when it is unusable."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as error:
        raise ApiError(f"api.token_file {path}: {error.strerror}") from None
    if len(token) < 16:
        raise ApiError(f"api.token_file {path}: the API token must be at least 16 characters")
    if path.stat().st_mode & 0o077:
        log.warning("api.token_file_readable", file=str(path), hint="chmod 600")
    return token


def _host_name(host: str) -> str:
    """The name part of a Host header: "[::1]:8470" -> "::1", "Line-PC:8470" -> "line-pc"."""
    if host.startswith("["):
        return host[1 : host.find("]")].lower()
    return host.rsplit(":", 1)[0].lower() if host.count(":") == 1 else host.lower()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class Api:
    def __init__(self, line: Line, token: str | None, allowed_hosts: list[str] | None = None) -> None:
        """``allowed_hosts``: names a browser may use in Host besides IP addresses and localhost
        (a name a reverse proxy passes on); any other name is refused, which stops DNS rebinding."""
        self.line, self._token = line, token
        self._hosts = {"localhost", *(name.lower() for name in allowed_hosts or [])}
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.app = web.Application(middlewares=[self._errors])
        self.app.add_routes(
            [
                web.get("/", self.index),
                web.static("/static", WEB),
                web.get("/api/v1/status", self.status),
                web.get("/api/v1/stations/{name}", self.station),
                web.get("/api/v1/boards", self.boards),
                web.get("/api/v1/boards/{uid}", self.board),
                web.get("/api/v1/boards/{uid}/history", self.history),
                web.post("/api/v1/stations/{name}/{action}", self.action),
                web.get("/api/v1/events", self.events),
                web.get("/metrics", self.metrics),
            ]
        )

    def __repr__(self) -> str:
        return f"<Api {self.url or 'not started'}>"

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            name = _host_name(request.host)
            if not _is_ip(name) and name not in self._hosts:
                raise Refused(
                    421, "Unknown host", f"{name!r} is not this daemon's name: see api.allowed_hosts"
                )
            response = await handler(request)
        except Refused as refused:
            response = _problem(refused.status, refused.title, refused.detail)
        except web.HTTPException as error:
            response = _problem(error.status, error.reason, error.text or error.reason)
        if not response.prepared:
            response.headers.update(HEADERS)
        return response

    async def start(self, listen: str) -> str:
        host, port = listen.rsplit(":", 1)
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise ApiError(f"api.listen {listen}: {error.strerror or error}") from None
        self.url = f"http://{host}:{self._runner.addresses[0][1]}"  # the port chosen, for port 0
        log.info("api.listen", url=self.url, control="on" if self._token else "off (no api.token_file)")
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- read-only ---------------------------------------------------------------------------------

    async def index(self, _: web.Request) -> web.StreamResponse:
        return web.FileResponse(WEB / "index.html")

    async def status(self, _: web.Request) -> web.Response:
        return web.json_response(self.line.snapshot())

    async def station(self, request: web.Request) -> web.Response:
        return web.json_response(self.line.station_status(self._runner_name(request)))

    def _board(self, request: web.Request) -> Board:
        board = self.line.journal.board(request.match_info["uid"].upper())
        if board is None:
            raise Refused(404, "No such board", "the journal has no board with this UID")
        return board

    async def board(self, request: web.Request) -> web.Response:
        return web.json_response(vars(self._board(request)))

    async def history(self, request: web.Request) -> web.Response:
        """Every attempt of every step of one board, from the journal (the board table's detail)."""
        return web.json_response(board_history(self.line.journal, self._board(request)))

    async def boards(self, request: web.Request) -> web.Response:
        """The job's boards, latest first: ``search`` (part of a UID), ``outcome`` (PASS, FAIL,
        QUARANTINE, or ``none`` for boards in progress), ``limit`` (1-500, default 100)."""
        query = request.query
        search, outcome = query.get("search", "").strip(), query.get("outcome", "")
        if not re.fullmatch(r"[0-9A-Za-z]{0,64}", search):
            raise Refused(400, "Bad search", "search: letters and digits of a UID only")
        if outcome not in ("", "none", *FINAL):
            raise Refused(400, "Bad outcome", f"outcome: one of {', '.join(FINAL)} or none")
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 500:
            raise Refused(400, "Bad limit", "limit: a whole number from 1 to 500")
        found = self.line.journal.boards(
            self.line.config.job_id,
            search=search,
            outcome=None if not outcome else "" if outcome == "none" else outcome,
            limit=limit + 1,
        )
        rows = [board_row(board) for board in found[:limit]]
        return web.json_response({"boards": rows, "more": len(found) > limit})

    async def metrics(self, _: web.Request) -> web.Response:
        response = web.Response(body=self.line.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``status`` (the whole snapshot, when it changes) and ``board`` (each
        finished board), or only those named in ``?types=status,board``; a comment every 15 s
        keeps proxies from closing the stream."""
        types = set(request.query.get("types", "status,board").split(","))
        if not types or types - {"status", "board"}:
            raise Refused(400, "Unknown event type", "types is a comma-separated list of status and board")
        response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream"})
        await response.prepare(request)
        sent, seen, quiet = "", self.line.boards_done, 0.0
        try:
            while True:
                snapshot = json.dumps(self.line.snapshot()) if "status" in types else sent
                if snapshot != sent:
                    await response.write(f"event: status\ndata: {snapshot}\n\n".encode())
                    sent, quiet = snapshot, 0.0
                for number, event in list(self.line.board_events):
                    if number > seen and "board" in types:
                        await response.write(f"event: board\ndata: {json.dumps(event)}\n\n".encode())
                        seen = number
                if quiet >= 15:
                    await response.write(b": keep-alive\n\n")
                    quiet = 0.0
                await anyio.sleep(0.25)
                quiet += 0.25
        except (ConnectionResetError, RuntimeError):  # the browser went away
            pass
        return response

    # -- control -----------------------------------------------------------------------------------

    def _runner_name(self, request: web.Request) -> str:
        name = request.match_info["name"]
        if name not in self.line.stations:
            raise Refused(404, "No such station", f"no station named {name!r} is running")
        return name

    def _authorise(self, request: web.Request) -> None:
        if self._token is None:
            raise Refused(
                403, "Control is off", "set api.token_file in stations.yaml to allow control actions"
            )
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token.encode()
        ):
            raise Refused(401, "Token needed", "control actions need Authorization: Bearer <api token>")

    async def action(self, request: web.Request) -> web.Response:
        self._authorise(request)
        name, action = self._runner_name(request), request.match_info["action"]
        if action not in ACTIONS:
            raise Refused(404, "No such action", f"{action!r}: use one of {', '.join(ACTIONS)}")
        body: Any = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                raise Refused(400, "Bad body", "the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise Refused(400, "Bad body", "the body must be a JSON object")
        try:
            result = self.line.act(name, action, uid=body.get("uid"), reason=str(body.get("reason") or ""))
        except LookupError as error:
            raise Refused(409, "Nothing to do", str(error.args[0])) from None
        return web.json_response(result)


def daemon_url(listen: str, folders: list[Path]) -> str | None:
    """Where a line's daemon serves: ``api.listen`` itself, or for port 0 the address it wrote to
    api.json in the first of ``folders`` (beside the journal, beside the configuration) that has one."""
    host, port = listen.rsplit(":", 1)
    if port != "0":
        return f"http://{host}:{port}"
    for folder in folders:
        try:
            return str(json.loads((folder / "api.json").read_text())["url"])
        except (OSError, ValueError, KeyError):
            continue
    return None


def write_address(path: Path, url: str) -> None:
    """``api.json`` beside the journal: how ``orchestrator status`` finds a daemon on port 0."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    temporary.replace(path)
