"""The cloud over real mutual TLS: who may do what, idempotency, quota, images, audit."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from cloudserver.client import CloudClient, CloudRefused, QuotaExceeded, client_context
from nuwire import mcuboot
from nuwire.keys import key_hash, public_key_from_raw
from tests.cloudserver.conftest import Cloud, foreign_pki
from tests.conftest import system_tool, venv_tool

BOOT = os.urandom(6000)
APP = os.urandom(9000)


def uid(n: int) -> str:
    return f"{0xC0FFEE00 + n:08X}1111222233334444"


async def new_job(cloud: Cloud, quantity: int = 10, lines: tuple[str, ...] = ()) -> str:
    async with cloud.client("admin") as admin:
        job = await admin.create_job(
            pdid=0xA1735440,
            bootloader=BOOT,
            bootloader_version="1.0.0",
            application=APP,
            application_version="2.1.0+7",
            quantity=quantity,
            lines=lines,
        )
    return str(job["id"])


def test_client_without_certificate_or_from_another_ca_is_refused(cloud: Cloud, tmp_path: Path) -> None:
    ca = cloud.data / "pki" / "ca.crt"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{cloud.url}/openapi.json", verify=ssl.create_default_context(cafile=str(ca)))
    other = foreign_pki(tmp_path)
    context = client_context(other / "admin.crt", other / "admin.key", ca)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{cloud.url}/openapi.json", verify=context)
    ok = httpx.get(
        f"{cloud.url}/openapi.json",
        verify=client_context(
            cloud.data / "pki" / "station-01.crt", cloud.data / "pki" / "station-01.key", ca
        ),
    )
    assert ok.json()["openapi"] == "3.1.0"


def test_curl_with_and_without_a_certificate(cloud: Cloud) -> None:
    pki = cloud.data / "pki"
    base = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(pki / "ca.crt")]
    refused = subprocess.run([*base, f"{cloud.url}/v1/jobs"], capture_output=True, text=True, check=False)
    assert refused.stdout in ("000", "")  # the TLS handshake fails: no HTTP status at all
    allowed = subprocess.run(
        [
            *base,
            "--cert",
            str(pki / "station-01.crt"),
            "--key",
            str(pki / "station-01.key"),
            f"{cloud.url}/v1/jobs",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert allowed.stdout == "200"


def test_stations_cannot_manage_jobs_and_admins_can(cloud: Cloud) -> None:
    async def scenario() -> None:
        async with cloud.client("station-01") as station:
            with pytest.raises(CloudRefused) as refused:
                await station.create_job(
                    pdid=1,
                    bootloader=BOOT,
                    bootloader_version="1",
                    application=APP,
                    application_version="1",
                    quantity=1,
                )
            assert refused.value.status == 403
            job_id = await new_job(cloud)
            with pytest.raises(CloudRefused) as closing:
                await station.close_job(job_id)
            assert closing.value.status == 403
            assert (await station.job(job_id))["state"] == "open"
        async with cloud.client("admin") as admin:
            assert (await admin.close_job(job_id))["state"] == "closed"
            with pytest.raises(CloudRefused) as provisioning:
                await admin.bootloader(job_id, uid(1), "0" * 32)
            assert provisioning.value.status == 403

    anyio.run(scenario)


def test_fifty_concurrent_repeats_give_one_key_and_identical_images(cloud: Cloud) -> None:
    async def scenario() -> None:
        job_id = await new_job(cloud)
        async with cloud.client() as station:
            obj_id = await station.register(uid(1))
            assert await station.register(uid(1)) == obj_id
            answers: list[Any] = []

            async def one() -> None:
                answers.append(await station.bootloader(job_id, uid(1), obj_id))

            async with anyio.create_task_group() as group:
                for _ in range(50):
                    group.start_soon(one)
            assert len({a.public_key for a in answers}) == 1
            assert len({a.image for a in answers}) == 1
            apps = [await station.application(job_id, uid(1), obj_id) for _ in range(3)]
            assert len({a.image for a in apps}) == 1
            assert apps[0].public_key == await station.application_key(job_id, uid(1), obj_id)
            assert apps[0].public_key != answers[0].public_key
            other = await station.bootloader(job_id, uid(2), await station.register(uid(2)))
            assert other.public_key != answers[0].public_key
            assert (await station.job(job_id))["used"] == 2

    anyio.run(scenario)


def test_quota_admits_n_boards_refuses_the_next_and_still_answers_repeats(cloud: Cloud) -> None:
    async def scenario() -> None:
        job_id = await new_job(cloud, quantity=3)
        async with cloud.client() as station:
            first = {}
            for n in range(3):
                obj_id = await station.register(uid(n))
                first[n] = (obj_id, await station.bootloader(job_id, uid(n), obj_id))
            extra = await station.register(uid(9))
            with pytest.raises(QuotaExceeded) as refused:
                await station.bootloader(job_id, uid(9), extra)
            assert refused.value.status == 409
            assert uid(9) in refused.value.detail
            for n, (obj_id, answer) in first.items():
                again = await station.bootloader(job_id, uid(n), obj_id)
                assert again.image == answer.image
            assert (await station.job(job_id))["used"] == 3

    anyio.run(scenario)


def test_signed_images_pass_imgtool_verify_with_the_returned_key(cloud: Cloud, tmp_path: Path) -> None:
    async def scenario() -> tuple[Any, Any]:
        job_id = await new_job(cloud)
        async with cloud.client() as station:
            obj_id = await station.register(uid(5))
            return await station.bootloader(job_id, uid(5), obj_id), await station.application(
                job_id, uid(5), obj_id
            )

    boot, app = anyio.run(scenario)
    for name, signed in (("bootloader", boot), ("application", app)):
        key = tmp_path / f"{name}.pem"
        key.write_bytes(
            public_key_from_raw(signed.public_key).public_bytes(
                Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
            )
        )
        image = tmp_path / f"{name}.bin"
        image.write_bytes(signed.image)
        result = subprocess.run(
            [venv_tool("imgtool"), "verify", "-k", str(key), str(image)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
    parsed = mcuboot.parse(app.image)
    assert parsed.body == APP
    assert str(parsed.version) == "2.1.0+7"
    assert mcuboot.verify_against_key_hash(parsed, key_hash(app.public_key)) is mcuboot.Verdict.OK
    assert mcuboot.parse(boot.image).tlv(mcuboot.TlvType.KEYHASH) is not None


def test_bad_input_gets_problem_json_naming_the_field(cloud: Cloud) -> None:
    pki = cloud.data / "pki"
    context = client_context(pki / "station-01.crt", pki / "station-01.key", pki / "ca.crt")
    with httpx.Client(base_url=cloud.url, verify=context) as http:
        bad_uid = http.post("/v1/devices", json={"uid": "not-a-uid"})
        assert bad_uid.status_code == 422
        assert bad_uid.headers["content-type"].startswith("application/problem+json")
        assert bad_uid.json()["field"] == "uid"
        assert http.post("/v1/devices", content=b"{nope").json()["title"] == "malformed JSON"
        assert http.post("/v1/devices", json={"uid": "0" * 24, "extra": 1}).status_code == 422
        assert http.get("/v1/jobs/job-zzz").json()["field"] == "job_id"
        assert http.get("/v1/nothing").status_code == 404
        assert http.delete("/v1/jobs").status_code == 405
        wrong = http.post(f"/v1/jobs/job-{'0' * 12}/devices/{uid(1)}/bootloader", json={"obj_id": "0" * 32})
        assert wrong.status_code == 404


def test_deeply_nested_or_oversized_json_is_refused_never_a_500(cloud: Cloud) -> None:
    pki = cloud.data / "pki"
    context = client_context(pki / "station-01.crt", pki / "station-01.key", pki / "ca.crt")
    nested = b'{"obj_id": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    paths = (
        "/v1/devices",
        f"/v1/jobs/job-{'0' * 12}/devices/{uid(1)}/bootloader",
        f"/v1/jobs/job-{'0' * 12}/devices/{uid(1)}/results",
    )
    with httpx.Client(base_url=cloud.url, verify=context, timeout=60) as http:
        for path in paths:
            answer = http.post(path, content=nested)
            assert answer.status_code == 400, (path, answer.text)
            assert "nests deeper" in answer.json()["detail"]
        brackets = http.post(paths[0], content=b'{"uid": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}')
        assert brackets.status_code == 422  # brackets inside a string are no nesting
        huge = http.post(paths[0], content=b'{"uid": "' + b"0" * (4 << 20) + b'"}')
        assert huge.status_code == 413


def test_results_and_device_history(cloud: Cloud) -> None:
    async def scenario() -> dict[str, Any]:
        job_id = await new_job(cloud)
        async with cloud.client() as station:
            obj_id = await station.register(uid(7))
            await station.bootloader(job_id, uid(7), obj_id)
            await station.report(
                job_id, uid(7), obj_id, outcome="FAIL", step=8, reason="OTP entry 8 not blank"
            )
            await station.report(
                job_id, uid(7), obj_id, outcome="FAIL", step=8, reason="OTP entry 8 not blank"
            )
            with pytest.raises(CloudRefused):
                await station.report(job_id, uid(7), "f" * 32, outcome="PASS", step=13)
            return await station.device(uid(7))

    device = anyio.run(scenario)
    assert [r["reason"] for r in device["results"]] == ["OTP entry 8 not blank"]
    assert [k["purpose"] for k in device["keys"]] == ["bootloader"]
    assert [h["action"] for h in device["history"]] == [
        "register",
        "key_create",
        "sign",
        "image_fetch",
        "result",
        "result",
        "refuse",
    ]


def test_audit_log_has_exactly_the_expected_rows(cloud: Cloud) -> None:
    async def scenario() -> str:
        job_id = await new_job(cloud, quantity=1)
        async with cloud.client() as station:
            obj_id = await station.register(uid(1))
            await station.bootloader(job_id, uid(1), obj_id)
            await station.bootloader(job_id, uid(1), obj_id)
            await station.application_key(job_id, uid(1), obj_id)
            await station.application(job_id, uid(1), obj_id)
            await station.report(job_id, uid(1), obj_id, outcome="PASS", step=13)
            with pytest.raises(QuotaExceeded):
                await station.bootloader(job_id, uid(2), await station.register(uid(2)))
        return job_id

    job_id = anyio.run(scenario)
    result = subprocess.run(
        [venv_tool("cloudserver"), "audit", "--data", str(cloud.data), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    import json  # noqa: PLC0415

    rows = [json.loads(line) for line in result.stdout.splitlines()]
    station, admin = "CN=station-01,L=line-1,OU=station,O=nuprov", "CN=admin,OU=admin,O=nuprov"
    expected = [
        (admin, "job_create", None),
        (station, "register", uid(1)),
        (station, "key_create", uid(1)),
        (station, "sign", uid(1)),
        (station, "image_fetch", uid(1)),
        (station, "image_fetch", uid(1)),
        (station, "key_create", uid(1)),
        (station, "key_fetch", uid(1)),
        (station, "sign", uid(1)),
        (station, "image_fetch", uid(1)),
        (station, "result", uid(1)),
        (station, "register", uid(2)),
        (station, "refuse", uid(2)),
    ]
    assert [(r["subject"], r["action"], r["uid"]) for r in rows] == expected
    assert all(r["job_id"] == job_id for r in rows[2:11])


def _past_the_triggers(cloud: Cloud) -> None:
    """What the database's owner can do: take the append-only triggers away."""
    if cloud.postgres is None:
        cloud.sql("DROP TRIGGER audit_no_update")
        cloud.sql("DROP TRIGGER audit_no_delete")
    else:
        cloud.sql("ALTER TABLE audit DISABLE TRIGGER audit_no_change")


def test_the_audit_log_is_append_only(cloud: Cloud) -> None:
    async def scenario() -> None:
        async with cloud.client() as station:
            await station.register(uid(3))

    anyio.run(scenario)
    for statement in ("DELETE FROM audit", "UPDATE audit SET detail = 'x'", "TRUNCATE audit"):
        if statement.startswith("TRUNCATE") and cloud.postgres is None:
            continue  # SQLite has no TRUNCATE
        with pytest.raises(RuntimeError, match="append-only"):
            cloud.sql(statement)
    assert cloud.sql("SELECT COUNT(*) FROM audit") == [("1",)]


def test_audit_verify_finds_an_update_and_a_delete_done_behind_the_servers_back(cloud: Cloud) -> None:
    async def scenario() -> None:
        async with cloud.client() as station:
            for n in range(4, 8):
                await station.register(uid(n))

    anyio.run(scenario)

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [venv_tool("cloudserver"), "audit", "verify", "--data", str(cloud.data)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    held = verify()
    assert held.returncode == 0, held.stdout + held.stderr
    assert held.stdout.startswith("ok: 4 rows chained")
    _past_the_triggers(cloud)
    ids = [row[0] for row in cloud.sql("SELECT id FROM audit ORDER BY id")]
    cloud.sql(f"UPDATE audit SET detail = 'repeat' WHERE id = {int(ids[1])}")  # noqa: S608
    edited = verify()
    assert edited.returncode == 1
    assert f"row {ids[1]}:" in edited.stdout
    cloud.sql(f"UPDATE audit SET detail = 'new' WHERE id = {int(ids[1])}")  # noqa: S608  # as it was
    assert verify().returncode == 0
    cloud.sql(f"DELETE FROM audit WHERE id = {int(ids[2])}")  # noqa: S608
    removed = verify()
    assert removed.returncode == 1
    assert f"row {ids[3]}:" in removed.stdout  # the row after the one removed no longer follows


def test_a_revoked_certificate_is_refused_on_its_next_request(cloud: Cloud) -> None:
    pki = cloud.data / "pki"
    printed = subprocess.run(
        [system_tool("openssl", "openssl"), "x509", "-in", str(pki / "station-02.crt"), "-noout", "-serial"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def revoke(what: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [venv_tool("cloudserver"), "cert", "revoke", "--data", str(cloud.data), "--reason", "lost", what],
            capture_output=True, text=True, check=False,
        )  # fmt: skip

    async def register(who: str) -> None:
        async with cloud.client(who, attempts=1) as station:
            await station.register(uid(9))

    job_id = anyio.run(new_job, cloud)
    anyio.run(register, "station-02")  # served before
    done = revoke(printed.strip())  # "serial=..." as openssl prints it
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("revoked: serial")
    assert revoke(str(pki / "station-02.crt")).stdout.startswith("already revoked")

    async def every_call(obj_id: str) -> list[int]:  # each route's own way of checking
        refusals = []
        async with cloud.client("station-02", attempts=1) as revoked:
            for call in (
                lambda: revoked.register(uid(9)),
                lambda: revoked.bootloader(job_id, uid(9), obj_id),
                lambda: revoked.application_key(job_id, uid(9), obj_id),
                lambda: revoked.application(job_id, uid(9), obj_id),
                lambda: revoked.bootloader("job-000000000000", uid(9), obj_id),  # no such job
                lambda: revoked.report(job_id, uid(9), obj_id, outcome="FAIL", step=2),
                revoked.jobs,
            ):
                with pytest.raises(CloudRefused) as refused:
                    await call()
                assert "revoked" in str(refused.value)
                refusals.append(refused.value.status)
        return refusals

    async def obj_id() -> str:
        async with cloud.client("station-01") as station:
            return await station.register(uid(9))  # the others go on

    assert anyio.run(every_call, anyio.run(obj_id)) == [403] * 7
    assert revoke("not-hex").returncode == 2
    audit = subprocess.run(
        [venv_tool("cloudserver"), "audit", "--data", str(cloud.data), "--json"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    actions = [json.loads(line)["action"] for line in audit.splitlines()]
    assert actions.count("cert_revoke") == 1
    assert actions[-7:] == ["refuse"] * 7


def test_client_retries_then_reports_unavailable(tmp_path: Path) -> None:
    from cloudserver.client import CloudUnavailable  # noqa: PLC0415

    async def scenario() -> None:
        client = CloudClient("https://127.0.0.1:9", ssl.create_default_context(), attempts=2, backoff=0.01)
        async with client:
            with pytest.raises(CloudUnavailable):
                await client.register(uid(1))

    anyio.run(scenario)


def test_the_same_contract_holds_with_keys_in_the_hsm(hsm_cloud: Cloud, tmp_path: Path) -> None:
    test_fifty_concurrent_repeats_give_one_key_and_identical_images(hsm_cloud)
    test_signed_images_pass_imgtool_verify_with_the_returned_key(hsm_cloud, tmp_path)


def test_no_audit_row_means_no_action(cloud: Cloud) -> None:
    from cloudserver.server import open_service  # noqa: PLC0415
    from cloudserver.service import Refused  # noqa: PLC0415
    from cloudserver.settings import load  # noqa: PLC0415

    if cloud.postgres is None:
        cloud.sql(
            "CREATE TRIGGER audit_full BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    else:
        cloud.sql(
            "CREATE FUNCTION full_disk() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;"
            " CREATE TRIGGER audit_full BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION full_disk()"
        )

    async def scenario() -> None:
        service = await open_service(load(cloud.data), cloud.data)
        try:
            with pytest.raises(Exception, match="disk full"):
                await service.register("CN=test", uid(4))
            with pytest.raises(Refused, match="not registered"):
                await service.device(uid(4))
        finally:
            await service.close()

    anyio.run(scenario)
    assert cloud.sql("SELECT COUNT(*) FROM devices") == [("0",)]


def test_a_database_from_before_the_chain_is_chained_by_its_migration(tmp_path: Path) -> None:
    import sqlite3  # noqa: PLC0415

    from cloudserver.db import HEAD, engine_for, migrate  # noqa: PLC0415
    from cloudserver.keystore import FileKeyStore  # noqa: PLC0415
    from cloudserver.service import Service  # noqa: PLC0415
    from nuwire.profiles import M2354  # noqa: PLC0415

    path = tmp_path / "old.db"

    async def scenario() -> tuple[str, int, str | None]:
        engine = engine_for(f"sqlite+aiosqlite:///{path}")
        await migrate(engine, "0001")
        await engine.dispose()
        with sqlite3.connect(path) as db:  # as the numbered runner's version 1 left it: rows, no chain
            for verb in ("update", "delete"):
                db.execute(f"DROP TRIGGER audit_no_{verb}")
            db.execute("ALTER TABLE audit DROP COLUMN hash")
            db.execute("DROP TABLE revoked")
            db.execute("DROP TABLE alembic_version")
            db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            db.execute("INSERT INTO schema_version VALUES (1)")
            for n in range(3):
                db.execute(
                    "INSERT INTO audit (time, subject, action, outcome, detail)"
                    " VALUES (?, 'CN=x', 'register', 'ok', ?)",
                    (f"2026-01-0{n + 1} 00:00:00", str(n)),
                )
        engine = engine_for(f"sqlite+aiosqlite:///{path}")
        version = await migrate(engine)
        service = Service(engine, FileKeyStore(os.urandom(32)), M2354)
        count, _, broken = await service.verify_audit()
        await service.revoke("CN=x", "01")  # the table version 3 added is there
        await engine.dispose()
        return version, count, broken

    assert anyio.run(scenario) == (HEAD, 3, None)
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit")


def test_alembic_knows_the_head_the_code_names(tmp_path: Path) -> None:
    from alembic.config import Config  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    from cloudserver.db import HEAD, MIGRATIONS  # noqa: PLC0415

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_heads() == [HEAD]


def test_a_station_past_its_rate_gets_429_with_retry_after_and_the_client_waits(tmp_path: Path) -> None:
    from tests.cloudserver.conftest import _data, _serve  # noqa: PLC0415

    data = _data(tmp_path)
    settings = json.loads((data / "settings.json").read_text())
    settings["limits"] = {"station_rate_per_s": 0.5, "station_burst": 2}
    (data / "settings.json").write_text(json.dumps(settings))
    serving = _serve(data)
    cloud = next(serving)
    try:  # (a generator's close ends the server)
        pki = cloud.data / "pki"
        station = client_context(pki / "station-01.crt", pki / "station-01.key", pki / "ca.crt")
        admin = client_context(pki / "admin.crt", pki / "admin.key", pki / "ca.crt")
        with httpx.Client(base_url=cloud.url, verify=station) as http:
            answers = [http.get("/v1/jobs") for _ in range(3)]
            assert [a.status_code for a in answers] == [200, 200, 429]
            assert int(answers[2].headers["Retry-After"]) >= 1
            assert answers[2].json()["title"] == "too many requests"
        with httpx.Client(base_url=cloud.url, verify=admin) as http:  # admins are not limited
            assert {http.get("/v1/jobs").status_code for _ in range(5)} == {200}

        async def register() -> str:
            async with cloud.client(attempts=2, backoff=0.01) as client:
                return await client.register(uid(5))  # 429 first, then after Retry-After: served

        assert len(anyio.run(register)) == 32
    finally:
        for _ in serving:  # the generator's teardown: the server stops
            pass


def test_a_station_acts_only_for_its_own_line(cloud: Cloud) -> None:
    """station-01 is of line-1; line-2's station registers its own boards. Each is refused the
    other's boards, a job that does not serve it, a PASS for a board it has no key for, and any
    result once the job is closed."""
    from cloudserver.pki import issue_client  # noqa: PLC0415

    pki = cloud.data / "pki"
    issue_client(pki, cloud.data.parent / "ca" / "ca.key", "station-b1", role="station", line="line-2")

    async def scenario() -> None:
        job_id = await new_job(cloud)
        only_b = await new_job(cloud, quantity=5, lines=("line-2",))
        async with cloud.client("admin") as admin:
            assert (await admin.job(only_b))["lines"] == ["line-2"]
        async with cloud.client() as a, cloud.client("station-b1") as b:
            theirs = await b.register(uid(20))
            await b.bootloader(only_b, uid(20), theirs)
            for refused in (
                a.register(uid(20)),
                a.bootloader(job_id, uid(20), theirs),
                a.application_key(job_id, uid(20), theirs),
                a.report(job_id, uid(20), theirs, outcome="FAIL", step=3, reason="x"),
            ):
                with pytest.raises(CloudRefused) as error:
                    await refused
                assert (error.value.status, error.value.title) == (403, "another line's board")
            ours = await a.register(uid(21))
            with pytest.raises(CloudRefused) as error:
                await a.bootloader(only_b, uid(21), ours)
            assert (error.value.status, error.value.title) == (403, "not this line's job")
            with pytest.raises(CloudRefused) as error:
                await a.report(job_id, uid(21), ours, outcome="PASS", step=13)
            assert (error.value.status, error.value.title) == (409, "not provisioned")
            await a.report(job_id, uid(21), ours, outcome="FAIL", step=1, reason="no SWD")  # a FAIL is fine
            await a.bootloader(job_id, uid(21), ours)
            async with cloud.client("admin") as admin:
                await admin.close_job(job_id)
            with pytest.raises(CloudRefused) as error:
                await a.report(job_id, uid(21), ours, outcome="PASS", step=13)
            assert (error.value.status, error.value.title) == (409, "job closed")

    anyio.run(scenario)
    rows = cloud.sql("SELECT COUNT(*) FROM audit WHERE action = 'refuse'")
    assert rows == [("7",)]


@pytest.mark.parametrize("cloud", ["postgres"], indirect=True)  # roles are PostgreSQL's
def test_on_postgresql_the_service_role_cannot_change_the_audit_log(cloud: Cloud) -> None:
    """deploy/postgres/roles.sql, as documented: the service role appends to the audit log and
    cannot change or remove a row, whatever happens to the trigger."""
    assert cloud.postgres is not None
    roles = Path(__file__).parent.parent.parent / "deploy" / "postgres" / "roles.sql"
    cloud.sql("CREATE ROLE nuprov_service LOGIN PASSWORD 'service-pw'")
    cloud.postgres.psql(cloud.database, "", "-v", "service=nuprov_service", "-f", str(roles))
    cloud.sql("ALTER TABLE audit DISABLE TRIGGER audit_no_change")  # only the privileges stand

    def as_service(statement: str) -> str:
        assert cloud.postgres is not None
        return cloud.postgres.psql(cloud.database, statement, role="nuprov_service", password="service-pw")  # noqa: S106

    as_service(
        "INSERT INTO audit (time, subject, action, outcome, detail, hash)"
        " VALUES (now(), 'CN=x', 'register', 'ok', '', '')"
    )
    for statement in ("UPDATE audit SET detail = 'x'", "DELETE FROM audit", "TRUNCATE audit"):
        with pytest.raises(RuntimeError, match="permission denied"):
            as_service(statement)
    assert as_service("SELECT COUNT(*) FROM audit").strip() == "1"


def test_no_second_key_for_a_board_that_carries_one(cloud: Cloud) -> None:
    """The OTP words the station read are the board's own record of what it was given: a board
    carrying a key the cloud has no record of (a restore from an old backup, another line) gets
    no new key and costs no quota; one carrying words of its own key (a burn cut off) is served."""
    from nuwire.profiles import M2354  # noqa: PLC0415

    blank = [0xFFFFFFFF] * 16

    async def scenario() -> None:
        job_id = await new_job(cloud, quantity=5)
        async with cloud.client() as station:
            lost = await station.register(uid(30))
            with pytest.raises(CloudRefused) as refused:
                await station.bootloader(job_id, uid(30), lost, carries=[0x12345678, *blank[1:]])
            assert (refused.value.status, refused.value.title) == (409, "key lost")
            assert (await station.job(job_id))["used"] == 0
            fine = await station.register(uid(31))
            first = await station.bootloader(job_id, uid(31), fine, carries=blank)
            words = [w for entry in M2354.bootloader_key_entries(first.public_key).values() for w in entry]
            half = words[:7] + blank[7:]  # our key, its burn cut off
            assert (await station.bootloader(job_id, uid(31), fine, carries=half)).image == first.image
            with pytest.raises(CloudRefused) as refused:
                await station.bootloader(job_id, uid(31), fine, carries=[words[0] ^ 1, *words[1:]])
            assert (refused.value.status, refused.value.title) == (409, "another key burnt")

    anyio.run(scenario)


def test_sqlite_group_commit_a_failing_write_undoes_only_itself(tmp_path: Path) -> None:
    """Writes that arrive together are committed together on SQLite; one refused among them
    (another line's board) leaves the others done, and the audit chain whole."""
    from cloudserver.db import engine_for, migrate  # noqa: PLC0415
    from cloudserver.keystore import FileKeyStore  # noqa: PLC0415
    from cloudserver.service import Refused, Service  # noqa: PLC0415
    from nuwire.profiles import M2354  # noqa: PLC0415

    async def scenario() -> None:
        engine = engine_for(f"sqlite+aiosqlite:///{tmp_path / 'cloud.db'}")
        await migrate(engine)
        service = Service(engine, FileKeyStore(os.urandom(32)), M2354)
        for n in range(10):
            await service.register("CN=a", uid(n), "line-a")
        outcomes: dict[str, str] = {}

        async def one(n: int) -> None:
            try:
                await service.register("CN=b", uid(n), "line-b")  # 0..9 are line-a's: refused
                outcomes[uid(n)] = "ok"
            except Refused as refused:
                outcomes[uid(n)] = refused.title

        async with anyio.create_task_group() as group:
            for n in range(20):
                group.start_soon(one, n)
        assert sorted(outcomes.values()) == ["another line's board"] * 10 + ["ok"] * 10
        assert all(outcomes[uid(n)] == "ok" for n in range(10, 20))
        count, _, broken = await service.verify_audit()
        assert (count, broken) == (20, None)  # 10 + 10 registrations; refusals are the app's rows
        await service.close()

    anyio.run(scenario)


def test_metrics_for_a_monitor_certificate_pass_promtool(cloud: Cloud) -> None:
    """GET /metrics: requests by route pattern (never a UID) and status, latency, connection
    trouble; for monitor (and admin) certificates only; promtool accepts the text."""

    async def scenario() -> None:
        async with cloud.client() as station:
            await station.register(uid(40))
            with pytest.raises(CloudRefused):
                await station.job("job-000000000000")

    anyio.run(scenario)
    pki = cloud.data / "pki"
    with httpx.Client(
        base_url=cloud.url,
        verify=client_context(pki / "station-01.crt", pki / "station-01.key", pki / "ca.crt"),
    ) as http:
        assert http.get("/metrics").status_code == 403
    monitor = client_context(pki / "monitor.crt", pki / "monitor.key", pki / "ca.crt")
    with httpx.Client(base_url=cloud.url, verify=monitor) as http:
        answer = http.get("/metrics")
    assert answer.status_code == 200
    text = answer.text
    assert 'nuprov_cloud_requests_total{method="POST",route="/v1/devices",status="200"} 1.0' in text
    assert 'route="/v1/jobs/{job_id}",status="404"' in text
    assert uid(40) not in text
    assert "nuprov_cloud_request_seconds_bucket" in text
    promtool = system_tool("promtool", "prometheus")
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
