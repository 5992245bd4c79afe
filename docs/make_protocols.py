"""Writes docs/protocols.md from docs/protocols.md.in: the state diagrams and status table come from
the code, so the page cannot drift from the table it describes. Run: python docs/make_protocols.py"""

from __future__ import annotations

from pathlib import Path

from nuwire.secureisp.commands import STATUS_MEANING, Status
from nuwire.secureisp.states import mermaid

HERE = Path(__file__).parent
OURS = range(0x40, 0x50)


def _source(status: Status) -> str:
    return "ours" if status in OURS else "CH"


def render() -> str:
    rows = "\n".join(
        f"| 0x{code:02X} | {code.name} | {STATUS_MEANING[code]} | {_source(code)} |" for code in Status
    )
    return (
        (HERE / "protocols.md.in").read_text().replace("@STATUS_TABLE@", rows).replace("@MERMAID@", mermaid())
    )


if __name__ == "__main__":
    (HERE / "protocols.md").write_text(render())
