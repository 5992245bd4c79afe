"""Property-based fuzz of the API from its own OpenAPI document (schemathesis): no input gives a
5xx, and every answer matches the schema it is documented with."""

from __future__ import annotations

import requests
import schemathesis
from hypothesis import HealthCheck, settings

from cloudserver.api import openapi
from tests.cloudserver.conftest import Cloud

schema = schemathesis.openapi.from_dict(openapi())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_from_its_schema(case: schemathesis.Case, cloud: Cloud) -> None:  # type: ignore[type-arg]
    pki = cloud.data / "pki"
    role = (
        "admin"
        if case.method == "POST" and case.path in ("/v1/jobs", "/v1/jobs/{job_id}/close")
        else "station-01"
    )
    with requests.Session() as session:
        case.call_and_validate(
            base_url=cloud.url,
            session=session,
            verify=str(pki / "ca.crt"),
            cert=(str(pki / f"{role}.crt"), str(pki / f"{role}.key")),
        )
