"""API v1: request and response models (validation and the OpenAPI document come from them)."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from nuwire.profiles import M2354

UID = Annotated[
    str, Field(pattern=r"^[0-9A-F]{24}$", description="24 upper-case hex digits: UID0, UID1, UID2")
]
OBJ_ID = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$", description="32 lower-case hex digits")]
JOB_ID = r"^job-[0-9a-f]{12}$"
MAX_BODY = 1 << 20


def _whole(value: object) -> object:
    """JSON integers only (1 and 1.0, as JSON Schema counts them), never true or "1"."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected an integer")  # pydantic wants ValueError
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("expected an integer")
    return int(value)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RegisterRequest(Strict):
    uid: UID


class DeviceRequest(Strict):
    obj_id: OBJ_ID
    carries: list[Annotated[int, Field(ge=0, le=0xFFFFFFFF)]] | None = Field(
        default=None,
        max_length=64,
        description="the OTP words the board holds for this purpose's key, as read (0xFFFFFFFF blank): "
        "the cloud makes no new key for a board that already carries one",
    )


BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{4})$"
_BYTE = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_U16 = r"(?:6553[0-5]|655[0-2]\d|65[0-4]\d\d|6[0-4]\d{3}|[1-5]\d{4}|[1-9]\d{0,3}|0)"
VERSION = rf"^{_BYTE}(?:\.{_BYTE}(?:\.{_U16})?)?(?:\+\d{{1,9}})?$"


def room(slot_name: str) -> int:
    """Body bytes a slot of the default profile takes, leaving space for the header and the TLVs."""
    slot = getattr(M2354, f"{slot_name}_slot")
    return int(slot.size - slot.header_size - 512)


class Firmware(Strict):
    body: str = Field(pattern=BASE64, description="the unsigned firmware body, base64")
    version: str = Field(pattern=VERSION, description="major.minor.revision[+build]")

    @field_validator("body")
    @classmethod
    def _base64(cls, value: str) -> str:
        base64.b64decode(value, validate=True)  # the pattern admits only valid base64
        return value

    def decoded(self) -> bytes:
        return base64.b64decode(self.body)


class BootloaderFirmware(Firmware):
    body: str = Field(
        pattern=BASE64, max_length=4 * (room("bootloader") // 3), description="base64, fits the slot"
    )


class ApplicationFirmware(Firmware):
    body: str = Field(
        pattern=BASE64, max_length=4 * (room("application") // 3), description="base64, fits the slot"
    )


class JobRequest(Strict):
    pdid: Annotated[int, BeforeValidator(_whole)] = Field(ge=0, le=0xFFFFFFFF)
    bootloader: BootloaderFirmware
    application: ApplicationFirmware
    quantity: Annotated[int, BeforeValidator(_whole)] = Field(ge=1, le=10_000_000)
    lines: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]] = Field(
        default_factory=list,
        max_length=64,
        description="the lines whose stations may draw on it; [] is every line",
    )


class ResultRequest(Strict):
    obj_id: OBJ_ID
    outcome: Literal["PASS", "FAIL"]
    step: Annotated[int, BeforeValidator(_whole)] = Field(
        ge=1, le=13, description="the step of the provisioning sequence (1..13)"
    )
    reason: str = Field(default="", max_length=500)


class MaintenanceRequest(Strict):
    seconds: Annotated[int, BeforeValidator(_whole)] = Field(ge=0, le=86_400)


class Device(BaseModel):
    uid: str
    obj_id: str
    created: str


class KeyAnswer(BaseModel):
    uid: str
    obj_id: str
    job_id: str
    purpose: Literal["bootloader", "application"]
    public_key: str = Field(description="raw X||Y of the P-256 public key, 128 hex digits")


class ImageAnswer(KeyAnswer):
    image: str = Field(description="the signed MCUboot image, base64")
    sha256: str


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    field: str = ""


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document for API v1, built from the models above."""
    schemas: dict[str, Any] = {}
    models: list[type[BaseModel]] = [
        RegisterRequest,
        DeviceRequest,
        BootloaderFirmware,
        ApplicationFirmware,
        JobRequest,
        ResultRequest,
        MaintenanceRequest,
        Device,
        KeyAnswer,
        ImageAnswer,
        Problem,
    ]
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    problem = {
        "description": "refused",
        "content": {"application/problem+json": {"schema": _schema(Problem)}},
    }
    errors = {str(code): problem for code in (400, 401, 403, 404, 409, 413, 422, 503)}
    uid = {
        "name": "uid",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9A-F]{24}$"},
    }
    job = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string", "pattern": JOB_ID}}

    def op(
        summary: str,
        role: str,
        body: type[BaseModel] | None,
        answer: type[BaseModel] | dict[str, Any],
        params: tuple[dict[str, Any], ...] = (),
    ) -> dict[str, Any]:
        content = _schema(answer) if isinstance(answer, type) else answer
        operation: dict[str, Any] = {
            "summary": summary,
            "description": f"Client certificate role: {role}.",
            "parameters": list(params),
            "responses": {
                "200": {"description": "done", "content": {"application/json": {"schema": content}}},
                **errors,
            },
        }
        if body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(body)}},
            }
        return operation

    anything = {"type": "object"}
    provision = "station"
    return {
        "openapi": "3.1.0",
        "info": {"title": "nuprov provisioning cloud", "version": "1"},
        "paths": {
            "/v1/devices": {
                "post": op(
                    "register a UID; the same UID always gets the same OBJ_ID",
                    "station or admin",
                    RegisterRequest,
                    Device,
                )
            },
            "/v1/devices/{uid}": {
                "get": op(
                    "a device with its keys, results and history", "station or admin", None, anything, (uid,)
                )
            },
            "/v1/jobs": {
                "get": op("list jobs", "station or admin", None, {"type": "array", "items": anything}),
                "post": op("create a job", "admin", JobRequest, anything),
            },
            "/v1/jobs/{job_id}": {"get": op("show a job", "station or admin", None, anything, (job,))},
            "/v1/jobs/{job_id}/close": {"post": op("close a job", "admin", None, anything, (job,))},
            "/v1/jobs/{job_id}/devices/{uid}/bootloader": {
                "post": op(
                    "step 2: the board's bootloader key and its signed bootloader",
                    provision,
                    DeviceRequest,
                    ImageAnswer,
                    (job, uid),
                )
            },
            "/v1/jobs/{job_id}/devices/{uid}/application-key": {
                "post": op(
                    "step 7: the board's application public key",
                    provision,
                    DeviceRequest,
                    KeyAnswer,
                    (job, uid),
                )
            },
            "/v1/jobs/{job_id}/devices/{uid}/application": {
                "post": op(
                    "step 11: the application signed with the board's key",
                    provision,
                    DeviceRequest,
                    ImageAnswer,
                    (job, uid),
                )
            },
            "/v1/maintenance": {
                "post": op(
                    "answer 503 with Retry-After to provisioning for this many seconds",
                    "admin",
                    MaintenanceRequest,
                    {"type": "object"},
                )
            },
            "/v1/jobs/{job_id}/devices/{uid}/results": {
                "post": op(
                    "step 13: PASS or FAIL with step and reason",
                    provision,
                    ResultRequest,
                    anything,
                    (job, uid),
                )
            },
        },
        "components": {"schemas": schemas},
    }
