"""The line supervisor's view, checked from outside: a real Chromium on the dashboard of a running
simulated line, the status API and CLI against report.json, the report CLI, Prometheus' promtool on
/metrics, and control actions with and without the token.

One demo runs for the module (``orchestrator demo --hold``: the dashboard stays up after the last
board until SIGTERM). Screenshots go to $NUPROV_ARTIFACTS (default test-artifacts/).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import system_tool, venv_tool

STATIONS, BOARDS = 4, 3
TOTAL = STATIONS * BOARDS
DEPLOY = Path(__file__).parents[2] / "deploy"
ARTIFACTS = Path(os.environ.get("NUPROV_ARTIFACTS", "test-artifacts"))


@dataclass
class Demo:
    workdir: Path
    process: subprocess.Popen[bytes]
    url: str

    @property
    def token(self) -> str:
        return (self.workdir / "api-token").read_text().strip()

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/api/v1/status", timeout=10).json()
        return answer

    def station(self, name: str) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/api/v1/stations/{name}", timeout=10).json()
        return answer

    def report(self) -> dict[str, Any] | None:
        path = self.workdir / "report.json"
        return json.loads(path.read_text()) if path.exists() else None

    def wait_report(self, timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (report := self.report()) is None:
            assert self.process.poll() is None, "the demo stopped before writing report.json"
            assert time.monotonic() < deadline, "the line did not finish"
            time.sleep(0.2)
        return report


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    workdir = tmp_path_factory.mktemp("supervisor") / "run"
    log = workdir.parent / "demo.out"
    faults = workdir.parent / "faults.yaml"  # station-04 loses SWD at its first reset: FAIL at step 5
    faults.write_text("station-04: {swd_lost_at_reset: true}\n")
    command = [
        venv_tool("orchestrator"), "demo", "--workdir", str(workdir), "--stations", str(STATIONS),
        "--boards", str(BOARDS), "--app-size", "12000", "--baud", "460800", "--api-port", "0", "--hold",
        "--faults", str(faults), "--quantity", str(TOTAL + 1),  # room for the board the runbook test puts in
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        address = workdir / "api.json"
        wait_for(lambda: address.exists() or process.poll() is not None, 120, "the daemon's API")
        assert process.poll() is None, log.read_text()[-3000:]
        yield Demo(workdir, process, json.loads(address.read_text())["url"])
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_dashboard_in_chromium_live_updates_pause_and_final_count(demo: Demo) -> None:
    chromium = system_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.goto(demo.url + "/")
        page.evaluate("window.loadedOnce = true")  # gone if the page ever reloads
        page.wait_for_selector("article.tile >> nth=3")
        names = page.eval_on_selector_all("article.tile", "tiles => tiles.map(t => t.dataset.station)")
        assert names == [f"station-{n:02d}" for n in range(1, STATIONS + 1)]
        page.screenshot(path=ARTIFACTS / "dashboard-start.png")

        # Live: the tiles' progress and the totals change while nobody reloads.
        seen_progress: set[str] = set()
        seen_steps: set[str] = set()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (len(seen_progress) < 3 or len(seen_steps) < 3):
            seen_progress.update(
                page.eval_on_selector_all(".tile .bar span", "s => s.map(x => x.style.width)")
            )
            seen_steps.update(page.eval_on_selector_all(".tile .step", "s => s.map(x => x.textContent)"))
            time.sleep(0.1)
        assert len(seen_progress) >= 3, seen_progress
        assert len(seen_steps) >= 3, seen_steps

        # Pause station-02 from the page: it stops at a safe point and takes no step while paused.
        page.fill("#token", demo.token)
        page.dispatch_event("#token", "change")
        page.click("article[data-station='station-02'] button.pause")
        wait_for(lambda: demo.station("station-02")["state"] == "paused", 60, "station-02 to pause")
        tile = "article[data-station='station-02']"
        page.wait_for_selector(f"{tile}.paused")
        assert page.text_content(f"{tile} button.pause") == "resume"
        with sqlite3.connect(demo.workdir / "journal.db") as db:
            query = "SELECT COUNT(*) FROM steps WHERE station = 'station-02'"
            before = db.execute(query).fetchone()[0]
            time.sleep(3)
            assert db.execute(query).fetchone()[0] == before  # nothing happened on the paused station
        assert demo.station("station-02")["state"] == "paused"
        page.screenshot(path=ARTIFACTS / "dashboard-paused.png")
        page.click(f"{tile} button.pause")  # now labelled "resume"
        wait_for(lambda: not demo.station("station-02")["paused"], 10, "station-02 to resume")

        report = demo.wait_report()
        page.wait_for_function(
            "expected => document.getElementById('total-pass').textContent === String(expected)",
            arg=report["totals"]["pass"],
            timeout=10_000,
        )
        assert page.evaluate("window.loadedOnce") is True
        assert page.text_content("#total-fail") == str(report["totals"]["fail"])
        assert page.eval_on_selector_all("#pareto li", "items => items.map(i => i.dataset.step)") == ["5"]
        page.screenshot(path=ARTIFACTS / "dashboard-end.png")

        # 64 stations on one 1920x1080 screen: every tile fully visible without scrolling.
        synthetic = demo.status()
        template = synthetic["stations"][0]
        synthetic["stations"] = [{**template, "name": f"station-{n:02d}"} for n in range(1, 65)]
        page.evaluate("snapshot => window.renderSnapshot(snapshot)", synthetic)
        boxes = page.eval_on_selector_all(
            "article.tile",
            "tiles => tiles.map(t => { const r = t.getBoundingClientRect(); return [r.right, r.bottom]; })",
        )
        assert len(boxes) == 64
        assert all(right <= 1920 and bottom <= 1080 for right, bottom in boxes), max(
            boxes, key=lambda b: b[1]
        )
        page.screenshot(path=ARTIFACTS / "dashboard-64-stations.png")

        # A reload refused (issue 14): the notice is shown whole above the stations, without hovering.
        notice = "stations.yaml: job_id changed: a reload cannot apply that; restart the daemon"
        page.evaluate("snapshot => window.renderSnapshot(snapshot)", {**synthetic, "notice": notice})
        assert page.is_visible("#notice")
        assert page.inner_text("#notice") == notice
        box = page.eval_on_selector(
            "#notice", "n => [n.scrollWidth <= n.clientWidth, n.getBoundingClientRect().top]"
        )
        assert box[0] is True  # nothing cut off
        assert box[1] < page.eval_on_selector("#stations", "s => s.getBoundingClientRect().top")
        page.screenshot(path=ARTIFACTS / "dashboard-notice.png")
        page.evaluate("snapshot => window.renderSnapshot(snapshot)", {**synthetic, "notice": ""})
        assert not page.is_visible("#notice")

        # A QUARANTINE tile says why (the board's reason, not the last SWD error); a PASS tile
        # carries no error of a retried attempt; the whole reason opens with a click, no hover.
        reason = "OTP entry 3 holds (0x12345678, 0x9ABCDEF0), expected (0xFFFFFFFF, 0x00000000): " * 2
        tiles = [
            {
                **template,
                "name": "station-q",
                "state": "quarantine",
                "reason": reason,
                "last_error": "SWD fault",
            },
            {
                **template,
                "name": "station-p",
                "state": "pass",
                "reason": "",
                "last_error": "timeout, retried",
            },
        ]
        page.evaluate("snapshot => window.renderSnapshot(snapshot)", {**synthetic, "stations": tiles})
        quarantined = '[data-station="station-q"] .error'
        assert page.inner_text(quarantined) == reason.strip()
        assert page.inner_text('[data-station="station-p"] .error') == ""
        page.click(quarantined)
        opened = page.eval_on_selector(
            quarantined, "e => e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight + 1"
        )
        assert opened is True  # all of it shown
        page.screenshot(path=ARTIFACTS / "dashboard-quarantine-reason.png")
        browser.close()


def test_status_cli_and_api_agree_with_report(demo: Demo) -> None:
    report = demo.wait_report()
    assert report["totals"]["pass"] == TOTAL - 1
    assert report["totals"]["fail"] == 1
    status = demo.status()
    cli = subprocess.run(
        [venv_tool("orchestrator"), "status", "--json", "--url", demo.url],
        capture_output=True,
        text=True,
        check=True,
    )
    from_cli = json.loads(cli.stdout)
    for totals in (status["totals"], from_cli["totals"]):
        assert {key: totals[key] for key in ("pass", "fail", "quarantine")} == {
            key: report["totals"][key] for key in ("pass", "fail", "quarantine")
        }
        assert totals["finished"] == len(report["boards"])
        assert totals["failures_by_step"] == [{"step": 5, "name": "reset", "count": 1}]
    assert sum(s["counts"]["PASS"] for s in status["stations"]) == report["totals"]["pass"]
    table = subprocess.run(
        [venv_tool("orchestrator"), "status", "--config", str(demo.workdir / "stations.yaml"),
         "--journal", str(demo.workdir / "journal.db")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "station-04" in table.stdout
    assert f"PASS {report['totals']['pass']}" in table.stdout


def test_report_cli_csv_and_json_match_report_json(demo: Demo) -> None:
    report = demo.wait_report()
    job = demo.status()["job_id"]
    base = [venv_tool("orchestrator"), "report", "--job", job, "--journal", str(demo.workdir / "journal.db")]
    as_json = json.loads(
        subprocess.run([*base, "--format", "json"], capture_output=True, text=True, check=True).stdout
    )
    assert [b["uid"] for b in as_json["boards"]] == [b["uid"] for b in report["boards"]]
    assert dict(as_json["totals"].items()) == {k: v for k, v in report["totals"].items() if k != "wall_s"}
    rows = list(csv.DictReader(io.StringIO(subprocess.run([*base, "--format", "csv"], capture_output=True,
                                                          text=True, check=True).stdout)))  # fmt: skip
    assert [row["uid"] for row in rows] == [b["uid"] for b in report["boards"]]
    failed = [row for row in rows if row["outcome"] == "FAIL"]
    assert len(failed) == 1
    assert failed[0]["failed_step"] == "5"
    assert "reset not answered" in failed[0]["reason"]
    assert all(float(row["step_12_s"]) > 0 for row in rows if row["outcome"] == "PASS")
    other = subprocess.run([*base[:3], "nope", *base[4:]], capture_output=True, text=True, check=True)
    assert len(other.stdout.strip().splitlines()) == 1  # the header only: no board of another job


def test_metrics_pass_promtool_and_count_the_run(demo: Demo) -> None:
    promtool = system_tool("promtool", "prometheus")
    report = demo.wait_report()
    text = httpx.get(f"{demo.url}/metrics", timeout=10).text
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line[:1] != "#"
    }
    passed = sum(
        v for k, v in samples.items() if k.startswith("nuprov_boards_total{") and 'outcome="PASS"' in k
    )
    assert passed == report["totals"]["pass"]
    assert samples['nuprov_step_duration_seconds_count{step="12"}'] >= report["totals"]["pass"]
    assert any(k.startswith("nuprov_cloud_request_duration_seconds_count{") for k in samples)
    assert (
        sum(v for k, v in samples.items() if k.startswith("nuprov_uart_bytes_total{"))
        > 12000 * report["totals"]["pass"]
    )
    assert sum(v for k, v in samples.items() if k.startswith("nuprov_station_state{") and v == 1) == STATIONS


def test_control_actions_need_the_token_and_go_to_the_journal(demo: Demo) -> None:
    report = demo.wait_report()
    rebound = httpx.get(f"{demo.url}/api/v1/status", headers={"Host": "rebind.example"}, timeout=10)
    assert rebound.status_code == 421  # a page on another name that resolves to 127.0.0.1 reads nothing
    assert httpx.get(demo.url.replace("127.0.0.1", "localhost") + "/api/v1/status", timeout=10).is_success
    url = f"{demo.url}/api/v1/stations/station-01/pause"
    assert httpx.post(url, timeout=10).status_code == 401
    assert (
        httpx.post(url, headers={"Authorization": "Bearer wrong-token-0123456789"}, timeout=10).status_code
        == 401
    )
    missing = httpx.post(
        f"{demo.url}/api/v1/stations/nope/pause",
        headers={"Authorization": f"Bearer {demo.token}"},
        timeout=10,
    )
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    (failed,) = [b for b in report["boards"] if b["outcome"] == "FAIL"]
    files = ["--config", str(demo.workdir / "stations.yaml"), "--journal", str(demo.workdir / "journal.db")]
    command = ["station", "release", failed["station"], "--uid", failed["uid"], "--reason", "x", *files]
    release = subprocess.run(
        [venv_tool("orchestrator"), *command], capture_output=True, text=True, check=False
    )
    assert release.returncode == 1
    assert "QUARANTINE" in release.stderr  # a FAIL is retried, not released


def test_dashboard_job_panel_board_table_history_and_quarantine_release(demo: Demo) -> None:
    """Issue 14's dashboard in Chromium: the job panel against the status API, the board table
    searched by part of a UID, a board's step history from the journal, a quarantined board
    listed and released from the page (the reason asked for and journaled), a verdict once the
    job is done, and the tiles of starting and blocked stations with their reason."""
    chromium = system_tool("chromium", "chromium")
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    report = demo.wait_report()
    (failed,) = [b for b in report["boards"] if b["outcome"] == "FAIL"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.goto(demo.url + "/")
        page.wait_for_selector("#boards tbody tr[data-uid]")
        job = demo.status()["job"]
        assert job["quantity"] == TOTAL + 1
        assert job["left"] == job["quantity"] - job["used"]
        assert page.inner_text("#job-quota") == f"{job['used']} of {job['quantity']} used, {job['left']} left"
        assert page.inner_text("#job-progress") == str(job["in_progress"])
        assert not page.is_visible("#verdict")  # quota is left: not done
        rows = page.eval_on_selector_all("#boards tbody tr", "rows => rows.map(r => r.dataset.uid)")
        assert sorted(rows) == sorted(b["uid"] for b in report["boards"])

        # Search by a part of the UID (lower case): only that board; its history from the journal.
        page.fill("#board-search", failed["uid"][-6:].lower())
        selector = "#boards tbody tr"
        page.wait_for_function("s => document.querySelectorAll(s).length === 1", arg=selector)
        assert page.eval_on_selector(selector, "r => r.dataset.uid") == failed["uid"]
        assert "FAIL\t" in page.inner_text(selector)
        assert "reset not answered" in page.inner_text(selector)
        page.click(selector)
        page.wait_for_selector("#history-steps tbody tr[data-step='5']")
        steps = page.eval_on_selector_all(
            "#history-steps tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        )
        step5 = [row for row in steps if row[0] == "5 reset"]
        assert [row[1] for row in step5] == [str(n) for n in range(1, len(step5) + 1)]  # every attempt
        assert len(step5) == 4
        assert all(row[5] == "error" and "reset not answered" in row[6] for row in step5)
        assert [row[0].split()[0] for row in steps[:4]] == ["1", "2", "3", "4"]  # in order, from step 1
        assert "OTP written and read back" in steps[2][7]
        assert failed["uid"] in page.inner_text("#history-title")
        page.screenshot(path=ARTIFACTS / "dashboard-board-history.png", full_page=True)
        page.fill("#board-search", "no/such")  # not a UID: the API's reason in the table
        page.wait_for_function(
            "() => document.querySelector('#boards tbody').textContent.includes('letters and digits')"
        )
        page.fill("#board-search", "")

        # A quarantined board is listed with its reason; released from the list with a reason.
        insert = '{"op": "insert", "station": "station-02", "kind": "objid"}'
        subprocess.run(
            [venv_tool("boardsim"), "ctl", "--state-dir", str(demo.workdir / "boards"), insert], check=True
        )
        wait_for(
            lambda: demo.station("station-02")["state"] == "quarantine", 300, "the quarantine on station-02"
        )
        uid = demo.station("station-02")["uid"]
        item = f"#quarantined li[data-uid='{uid}']"
        page.wait_for_selector(item)
        assert "OBJ_ID" in page.inner_text(f"{item} .reason")
        page.screenshot(path=ARTIFACTS / "dashboard-quarantine-list.png")
        page.fill("#token", demo.token)
        page.dispatch_event("#token", "change")
        page.once("dialog", lambda dialog: dialog.accept("checked by engineering: OBJ_ID from the old line"))
        page.click(f"{item} button.release")
        page.wait_for_selector(item, state="detached")
        with sqlite3.connect(demo.workdir / "journal.db") as db:
            decision = db.execute(
                "SELECT outputs FROM steps WHERE uid = ? AND phase = 'operator'", (uid,)
            ).fetchone()
        assert json.loads(decision[0])["reason"] == "checked by engineering: OBJ_ID from the old line"
        assert page.inner_text("#quarantined") == "none"

        # The verdict once the job is done; starting and blocked tiles say so, and why.
        status = demo.status()
        template = status["stations"][0]
        done = {**status["job"], "used": job["quantity"], "left": 0, "in_progress": 0,
                "verdict": "job done: 11 PASS, 1 FAIL, 0 QUARANTINE", "time_left_s": 0}  # fmt: skip
        blocked = "job job-1 has no quota left (13 of 13 boards)"
        tiles = [
            {
                **template,
                "name": "station-s",
                "state": "starting",
                "uid": None,
                "step": None,
                "last_error": "",
            },
            {
                **template,
                "name": "station-b",
                "state": "blocked",
                "uid": None,
                "step": None,
                "last_error": blocked,
            },
        ]
        page.evaluate("s => window.renderSnapshot(s)", {**status, "job": done, "stations": tiles})
        assert page.inner_text("#verdict") == done["verdict"]
        assert page.inner_text("[data-station='station-s'] .state").lower() == "starting"
        assert page.inner_text("[data-station='station-b'] .error") == blocked
        page.screenshot(path=ARTIFACTS / "dashboard-job-done.png")
        browser.close()


def test_board_list_api_pages_filters_and_refuses_bad_queries(demo: Demo) -> None:
    report = demo.wait_report()
    boards = f"{demo.url}/api/v1/boards"
    first = httpx.get(boards, params={"limit": "2"}, timeout=10).json()
    assert len(first["boards"]) == 2
    assert first["more"] is True
    failed = httpx.get(boards, params={"outcome": "FAIL"}, timeout=10).json()
    assert [b["uid"] for b in failed["boards"]] == [
        b["uid"] for b in report["boards"] if b["outcome"] == "FAIL"
    ]
    assert failed["more"] is False
    for bad in ({"outcome": "MAYBE"}, {"limit": "0"}, {"limit": "many"}, {"search": "' OR 1=1"}):
        answer = httpx.get(boards, params=bad, timeout=10)
        assert answer.status_code == 400, bad
        assert answer.headers["content-type"].startswith("application/problem+json")
    assert httpx.get(f"{boards}/0000/history", timeout=10).status_code == 404


def runbook_commands() -> list[str]:
    text = (Path(__file__).parent.parent.parent / "docs" / "runbook.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_runbook_commands_run_against_the_line(demo: Demo) -> None:
    """Every command of docs/runbook.md, with the line PC's paths replaced by the demo's."""
    report = demo.wait_report()
    (failed,) = [b for b in report["boards"] if b["outcome"] == "FAIL"]
    # A board carrying an OBJ_ID the cloud never gave: QUARANTINE at step 1, for the release command.
    # The event stream, open meanwhile, tells of it.
    stream: list[str] = []

    def listen() -> None:
        with httpx.stream("GET", f"{demo.url}/api/v1/events", timeout=90) as response:
            for line in response.iter_lines():
                stream.append(line)
                if '"outcome": "QUARANTINE"' in line and stream[-2] == "event: board":
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    wait_for(lambda: "event: status" in stream, 10, "the event stream")
    insert = '{"op": "insert", "station": "station-03", "kind": "objid"}'
    ctl = [venv_tool("boardsim"), "ctl", "--state-dir", str(demo.workdir / "boards"), insert]
    subprocess.run(ctl, check=True)
    wait_for(lambda: demo.station("station-03")["state"] == "quarantine", 300, "the quarantine on station-03")
    listener.join(timeout=30)
    assert stream[-2] == "event: board", stream[-4:]
    assert json.loads(stream[-1].removeprefix("data: "))["station"] == "station-03"
    quarantined = demo.station("station-03")["uid"]
    units = {unit.name.removesuffix(".service") for unit in (DEPLOY / "systemd").glob("*.service")}
    log = demo.workdir / "logs" / "orchestrator.jsonl"
    sources = "".join(path.read_text() for path in (Path(__file__).parents[2] / "orchestrator").glob("*.py"))
    ran = 0
    for command in runbook_commands():
        words = shlex.split(command)
        if words[0] == "sudo":
            words = words[1:]
        if words[0] == "sudoedit":
            assert words[1] == "/etc/nuprov/stations.yaml"
            continue
        if words[0] in ("systemctl", "journalctl"):
            assert units & set(words), f"{command}: names no unit of deploy/systemd"
            if (
                "reload" in words
            ):  # systemctl reload is the unit's ExecReload: SIGHUP (tests/orchestrator/test_reload.py)
                assert (
                    "ExecReload=/bin/kill -HUP $MAINPID"
                    in (DEPLOY / "systemd" / f"{words[-1]}.service").read_text()
                )
            if "|" in words:  # the filter runs on the daemon's own log, as journald would give it
                pattern = words[words.index("grep") + 1].replace("UID", failed["uid"])
                if pattern not in log.read_text():
                    assert f'"{pattern}"' in sources, f"{command}: {pattern} is no event the daemon logs"
            continue
        assert words[0] == "orchestrator", command
        station = {"retry": failed["station"], "release": "station-03"}.get(
            words[2] if len(words) > 2 else "", "station-01"
        )
        replaced = [
            word.replace("/etc/nuprov/stations.yaml", str(demo.workdir / "stations.yaml"))
            .replace("/var/lib/nuprov/journal.db", str(demo.workdir / "journal.db"))
            .replace("failures.csv", str(demo.workdir / "failures.csv"))
            .replace("station-03", station)
            .replace("JOB", demo.status()["job_id"])
            .replace("UID", failed["uid"])
            for word in words
        ]
        result = subprocess.run(
            [venv_tool("orchestrator"), *replaced[1:]], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
        ran += 1
    assert ran >= 8
    assert "station-03" in (demo.workdir / "failures.csv").read_text()
    with sqlite3.connect(demo.workdir / "journal.db") as db:
        decisions = dict(db.execute("SELECT uid, outputs FROM steps WHERE phase = 'operator'").fetchall())
        outcome = db.execute("SELECT outcome FROM boards WHERE uid = ?", (failed["uid"],)).fetchone()[0]
    assert json.loads(decisions[failed["uid"]])["previous"]["outcome"] == "FAIL"
    assert json.loads(decisions[quarantined])["reason"].startswith("OTP checked by engineering")
    assert outcome is None  # back on the line: taken again when it is put in a fixture
    text = log.read_text()
    assert '"event": "board.retry"' in text
    assert '"event": "board.release"' in text
