"""A revision's history entry keeps the change record it carried, for auditors and approvers."""

from __future__ import annotations

from controlled_friction import names
from tests.planner_world import passing
from tests.test_planner import deployed


def test_the_change_record_is_kept_in_the_revisions_history_entry():
    w = deployed([{"setWeight": 20}, {"pause": {"duration": "10s"}}])
    w.annotations[names.ANN_CHANGE_RECORD] = "CHG-1234 raise checkout timeout to 5s"
    for _ in range(6):
        w.tick(passing(), advance=4)
    assert w.status.phase == "Healthy" and w.status.history
    assert w.status.history[-1].outcome == "Promoted"
    assert w.status.history[-1].change_record == "CHG-1234 raise checkout timeout to 5s"
