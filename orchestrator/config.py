"""stations.yaml: the line's configuration, validated.

Every error names the file, the line and the field (``stations.yaml:14: stations.1.uart: ...``).
Unknown keys, wrong types, and two stations sharing a probe or a UART are errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nuwire.keys import public_key_from_raw


class ConfigError(Exception):
    """An invalid stations.yaml; the message names file, line and field, one line per problem
    (``problems``: every one found, not only the first)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Cloud(_Strict):
    url: str = Field(pattern=r"^https://")
    client_certificate: Path
    client_key: Path
    ca: Path


class SecureIsp(_Strict):
    rom_public_key: str = Field(description="the ROM's static ECDH public key, raw X||Y hex")
    bootloader_public_key: str
    station_key: Path = Field(description="PEM: this line's static ECDH private key")

    @field_validator("rom_public_key", "bootloader_public_key")
    @classmethod
    def _point(cls, value: str) -> str:
        try:
            public_key_from_raw(bytes.fromhex(value))
        except ValueError as error:
            raise ValueError(f"not a P-256 public key (128 hex digits X||Y): {error}") from None
        return value


class Retry(_Strict):
    attempts: int = Field(default=4, ge=1, le=20)
    backoff_s: float = Field(default=0.2, gt=0, le=30)


class StepClass(_Strict):
    timeout_s: float = Field(gt=0, le=600)
    retry: Retry = Retry()


class Defaults(_Strict):
    debug: StepClass = StepClass(timeout_s=60)
    uart: StepClass = StepClass(timeout_s=2)
    cloud: StepClass = StepClass(timeout_s=30, retry=Retry(attempts=6, backoff_s=0.5))


class Station(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    probe: str = Field(min_length=1, description="pyOCD unique id")
    usb_port: str = ""
    uart: str = Field(min_length=1)
    baud: int = Field(default=115_200, ge=1200, le=12_000_000)
    enabled: bool = True


class Api(_Strict):
    listen: str = Field(
        default="127.0.0.1:8470",
        pattern=r"^[0-9A-Za-z.:\[\]-]+:[0-9]{1,5}$",
        description="host:port of the status API and dashboard; port 0 picks a free one",
    )
    token_file: Path | None = Field(
        default=None, description="file holding the bearer token for control actions; none: read-only"
    )
    stall_s: float = Field(
        default=300, gt=0, le=3600, description="a station whose status stands still this long is stuck"
    )
    allowed_hosts: list[str] = Field(
        default=[], description="host names (besides IP addresses and localhost) the API answers to"
    )


def probe_key(unique_id: str) -> str:
    """A probe's serial as pyOCD lists it: without a probe type (``cmsisdap:``, ``boardsim:``), any case."""
    return unique_id.rsplit(":", 1)[-1].lower()


def clashes(stations: list[Any]) -> list[str]:
    """One station per name, per physical probe and per physical UART: a probe id compared
    by :func:`probe_key` (no case, no probe type), a UART by the device its path resolves to
    (``/dev/serial/by-id/...`` links and ``/dev/ttyACM0`` are one port). ``stations`` as
    mappings (valid or not); each clash as ``index.field: problem``."""
    physical: dict[str, Callable[[str], str]] = {
        "name": lambda v: v,
        "probe": probe_key,
        "uart": os.path.realpath,
    }
    problems = []
    for field, identity in physical.items():
        seen: dict[str, int] = {}
        for index, station in enumerate(stations):
            value = station.get(field) if isinstance(station, dict) else None
            if not isinstance(value, str) or not value:
                continue
            key = identity(value)
            if key in seen:
                problems.append(f"{index}.{field}: {value!r} is already used by station {seen[key]}")
            seen.setdefault(key, index)
    return problems


class LineConfig(_Strict):
    line: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,60}$")
    target_profile: str = "M2354"
    cloud: Cloud
    job_id: str
    secureisp: SecureIsp
    defaults: Defaults = Defaults()
    api: Api = Api()
    stations: list[Station]

    @field_validator("stations")
    @classmethod
    def _unique(cls, stations: list[Station]) -> list[Station]:
        problems = clashes([s.model_dump() for s in stations])
        if problems:
            raise ValueError("\n".join(problems))
        return stations


def _line_of(node: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """The 1-based line of the value at ``path`` in a composed YAML document (the nearest known)."""
    line = None if node is None else node.start_mark.line + 1
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next((value for key, value in node.value if key.value == str(part)), None)
            if node is None:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _parse(path: Path) -> tuple[Any, yaml.Node | None]:
    """(the data, the composed node tree for line numbers) of a YAML file."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError([f"{path}: {error.strerror}"]) from None
    try:
        return yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError([f"{where}: not valid YAML: {getattr(error, 'problem', error)}"]) from None


def _clash_at(clash: str) -> tuple[tuple[Any, ...], str]:
    """(where, what) of one of :func:`clashes`' ``index.field: problem`` lines."""
    index, rest = clash.split(".", 1)
    field, text = rest.split(": ", 1)
    return ("stations", int(index), field), text


def _problems(path: Path, tree: yaml.Node | None, error: ValidationError) -> list[str]:
    """Every validation error as ``file:line: field: message``."""
    found = []
    for each in error.errors():
        loc, message = tuple(each["loc"]), each["msg"].removeprefix("Value error, ")
        parts = [(loc, message)]
        if loc == ("stations",) and message.split(".")[0].isdigit():  # the uniqueness check's list
            parts = [_clash_at(line) for line in message.splitlines()]
        for where, text in parts:
            field_path = ".".join(str(part) for part in where) or "(top)"
            found.append(f"{path}:{_line_of(tree, where) or 1}: {field_path}: {text}")
    return found


def load(path: Path) -> LineConfig:
    data, tree = _parse(path)
    try:
        config = LineConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_problems(path, tree, error)) from None
    base = path.parent
    for attribute in ("client_certificate", "client_key", "ca"):
        value = getattr(config.cloud, attribute)
        if not value.is_absolute():
            setattr(config.cloud, attribute, base / value)
    if config.api.token_file is not None and not config.api.token_file.is_absolute():
        config.api.token_file = base / config.api.token_file
    if not config.secureisp.station_key.is_absolute():
        config.secureisp.station_key = base / config.secureisp.station_key
    for station in config.stations:  # like every other path: relative to the file, not to the caller
        if not Path(station.uart).is_absolute():
            station.uart = str(base / station.uart)
    return config


SECRETS = {("cloud", "client_key"), ("secureisp", "station_key"), ("api", "token_file")}
"""Files that must be readable by the daemon's user only (mode 0600 or tighter)."""


def _at(path: Path, tree: yaml.Node | None, where: tuple[Any, ...]) -> str:
    """``file:line: field`` of the value at ``where``."""
    return f"{path}:{_line_of(tree, where) or 1}: {'.'.join(str(part) for part in where)}"


def _section(data: dict[str, Any], section: str, field: str) -> Any:
    part = data.get(section)
    return part.get(field) if isinstance(part, dict) else None


def check(path: Path) -> list[str]:
    """What ``orchestrator check-config`` reports: every validation error, then every file the
    configuration names that is missing, unreadable or (a secret) readable by others, and every
    station's UART device that is not there; each as ``file:line: field: problem``."""
    try:
        data, tree = _parse(path)
    except ConfigError as error:
        return error.problems
    found: list[str] = []
    try:
        LineConfig.model_validate(data)
    except ValidationError as error:
        found += _problems(path, tree, error)
        if isinstance(data, dict) and isinstance(data.get("stations"), list):  # not checked past an error
            for clash in clashes(data["stations"]):
                where, text = _clash_at(clash)
                line = f"{_at(path, tree, where)}: {text}"
                if line not in found:
                    found.append(line)
    if not isinstance(data, dict):
        return found
    for section, field in (("cloud", "client_certificate"), ("cloud", "client_key"), ("cloud", "ca"),
                           ("secureisp", "station_key"), ("api", "token_file")):  # fmt: skip
        value = _section(data, section, field)
        if not isinstance(value, str) or not value:
            continue
        file = Path(value) if Path(value).is_absolute() else path.parent / value
        try:
            mode = file.stat().st_mode
            file.open("rb").close()
        except OSError as error:
            found.append(f"{_at(path, tree, (section, field))}: {file}: {error.strerror}")
            continue
        if (section, field) in SECRETS and mode & 0o077:
            found.append(
                f"{_at(path, tree, (section, field))}: {file}: mode {mode & 0o777:04o}, others can read it: "
                f"chmod 600 {file}"
            )
    for number, station in enumerate(data.get("stations") or []):
        uart = station.get("uart") if isinstance(station, dict) else None
        if isinstance(uart, str) and uart and not (path.parent / uart).exists():  # (an absolute path stays)
            found.append(f"{_at(path, tree, ('stations', number, 'uart'))}: {uart}: no such device")
    return found
