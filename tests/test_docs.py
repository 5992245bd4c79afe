"""The docs made from the code (protocols.md, the station diagram) must be up to date."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from orchestrator.states import mermaid

DOCS = Path(__file__).parent.parent / "docs"


def test_protocols_page_matches_the_code() -> None:
    spec = importlib.util.spec_from_file_location("make_protocols", DOCS / "make_protocols.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render()
    assert (DOCS / "protocols.md").read_text() == expected, "run: python docs/make_protocols.py"
    assert "@" + "MERMAID" not in expected


def test_the_station_diagram_is_made_from_the_table() -> None:
    page = (DOCS / "orchestrator.md").read_text()
    block = page.split("## Station states", 1)[1].split("```mermaid\n", 1)[1].split("\n```", 1)[0]
    assert block == mermaid(), "paste orchestrator.states.mermaid() into docs/orchestrator.md"
