"""What each actor declares it publishes is what the README says it publishes, and what the runtime and the
bus's permissions enforce (bus/ops/auth.py): one declaration, three readers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bus.ops.actors import ACTORS, actor_class

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_rows() -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 4 and (m := re.fullmatch(r"`(\w+)`", cells[1])) and m.group(1) in ACTORS:
            rows[m.group(1)] = cells
    return rows


@pytest.mark.parametrize("name", list(ACTORS))
def test_the_readmes_produces_column_is_the_actors_declaration(name: str) -> None:
    cells = _readme_rows()[name]
    written = set(re.findall(r"`([A-Z]\w+)`", cells[3]))
    declared = {kind.__name__ for kind in actor_class(name).produces}
    assert written == declared, f"README says {name} produces {sorted(written)}; the actor declares {sorted(declared)}"


def test_every_kind_an_actor_consumes_has_a_producer() -> None:
    """The choreography is closed: what an actor waits for, an actor (or upstream) may publish, so the
    permissions derived from `produces` never starve a consumer."""
    from messages import CancelIntent, SubmitIntent

    produced = {SubmitIntent, CancelIntent}  # upstream's (and ops') commands
    for name in ACTORS:
        produced |= set(actor_class(name).produces)
    for name in ACTORS:
        orphans = {kind.__name__ for kind in actor_class(name).consumes} - {k.__name__ for k in produced}
        assert not orphans, f"{name} consumes {sorted(orphans)}, which nobody may publish"
