"""The sync engine end to end, in-process against the simulators (httpx transports)."""

from __future__ import annotations

from conftest import World


def test_first_sync_converges_both_sides(world: World) -> None:
    a = world.person("a@example.org", mc="subscribed", civi="Added")
    b = world.person("b@example.org", mc="unsubscribed", civi="Added",
                     mc_at=world.ago(days=1), civi_at=world.ago(days=10))
    world.person("c@example.org", mc="subscribed", first="Cat", last="Case")
    d = world.person("d@example.org", civi="Added")
    results = world.sync()
    assert results[0].error is None, results[0].error
    assert results[0].outcome and results[0].outcome.completed
    assert world.civi_status(a) == "Added"
    assert world.civi_status(b) == "Removed"
    created = world.civi.query("SELECT contact_id FROM email WHERE email = ?",
                               ("c@example.org",))
    assert len(created) == 1
    assert world.civi_status(created[0]["contact_id"]) == "Added"
    assert world.mc_status("d@example.org") == "subscribed"
    assert world.mc_status("b@example.org") == "unsubscribed"
    before = len(world.writes())
    second = world.sync()
    assert second[0].outcome and second[0].outcome.completed
    assert len(world.writes()) == before, world.writes()[before:]
