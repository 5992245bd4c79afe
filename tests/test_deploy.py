"""deploy/ as an operations engineer installs it, checked by the tools that will read it:
systemd-analyze (units), promtool (scrape config, alert rules and their unit tests), and the metric
names every rule and dashboard panel uses against what the daemon exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from cloudserver.pki import init_pki
from orchestrator.metrics import Metrics
from tests.conftest import system_tool

DEPLOY = Path(__file__).parent.parent / "deploy"
NAME = re.compile(r"\bnuprov_[a-z_]+\b")


def exported() -> set[str]:
    """Every sample name the daemon can export (histograms as their three series)."""
    metrics = Metrics()
    metrics.watch(list)
    names: set[str] = set()
    for line in metrics.render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"histogram": ["_bucket", "_count", "_sum"]}.get(
                kind, [""]
            )  # counters: _total already
            names.update(name + suffix for suffix in suffixes)
    return names


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = system_tool("systemd-analyze", "systemd")
    # The units name the installed venv (/opt/nuprov/venv); verify them against this checkout's.
    venv_bin = str(Path(sys.executable).parent) + "/"
    units = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/opt/nuprov/venv/bin/", venv_bin))
        units.append(str(copy))
    assert len(units) == 2
    result = subprocess.run([analyze, "verify", *units], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr  # not even a warning
    daemon = (DEPLOY / "systemd" / "nuprov-orchestrator.service").read_text()
    for setting in (
        "Type=notify",
        "WatchdogSec=",
        "TimeoutStopSec=180",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ):
        assert setting in daemon


def test_prometheus_config_rules_and_rule_tests(tmp_path: Path) -> None:
    """promtool checks the configuration in full: the cloud job's TLS files (the paths a plant
    installs them at) are pointed at a monitor certificate, its key and the CA made here."""
    promtool = system_tool("promtool", "prometheus")
    folder = tmp_path / "prometheus"
    shutil.copytree(DEPLOY / "prometheus", folder)
    init_pki(tmp_path / "pki", 1)
    config = (folder / "prometheus.yml").read_text()
    assert config.count("/etc/nuprov/prometheus/") == 3
    (folder / "prometheus.yml").write_text(config.replace("/etc/nuprov/prometheus/", f"{tmp_path / 'pki'}/"))
    for command in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                    ["test", "rules", "alerts_test.yml"]):  # fmt: skip
        result = subprocess.run([promtool, *command], cwd=folder, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(config)["scrape_configs"]}
    assert jobs["nuprov-cloud"]["scheme"] == "https"


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    names = exported()
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    assert {"NuprovStationStuck", "NuprovYieldDropping", "NuprovRetriesRising", "NuprovCloudErrors"} <= alerts
    used = set(NAME.findall((DEPLOY / "prometheus" / "alerts.yml").read_text()))
    dashboard = json.loads((DEPLOY / "grafana" / "nuprov-line.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used.update(NAME.findall(target["expr"]))
    assert used, "no metric used"
    assert used <= names, sorted(used - names)


def test_vector_config_reads_the_units_and_parses_json() -> None:
    config = yaml.safe_load((DEPLOY / "vector" / "vector.yaml").read_text())
    source = config["sources"]["nuprov_journal"]
    assert source["type"] == "journald"
    assert set(source["include_units"]) == {p.name for p in (DEPLOY / "systemd").glob("*.service")}
    assert "parse_json" in config["transforms"]["nuprov_parsed"]["source"]
    vector = shutil.which("vector")
    if vector is not None:  # not packaged for Debian: checked when an operations machine has it
        command = [vector, "validate", "--no-environment", str(DEPLOY / "vector" / "vector.yaml")]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
