"""A first sync against a CiviCRM site with no contacts yet (a new installation, or the
first audience of a fresh site): the run takes no modified-contacts mark from an empty
Contact table, and the next run must still read the contacts changed since — a privacy flag
or a trash set on a contact mcsync created is a choice to propagate (DESIGN §4)."""

from __future__ import annotations

from conftest import World

EMAIL = "first@example.org"


def _completed(world: World, **kwargs: object) -> None:
    [result] = world.sync(**kwargs)
    assert result.error is None, result.error
    assert result.outcome is not None and result.outcome.completed


def _created_contact(world: World) -> int:
    [row] = world.civi.query(
        "SELECT contact_id FROM email WHERE email = ?",
        (EMAIL,),
    )
    return int(row["contact_id"])


def test_a_flag_on_a_contact_created_in_the_first_sync_is_read_next_run(world: World) -> None:
    assert world.civi.query("SELECT id FROM contact") == []
    world.person(EMAIL, mc="subscribed")
    _completed(world)
    contact = _created_contact(world)
    assert world.civi_status(contact) == "Added"
    world.advance_clock(minutes=10)
    world.civi.update_contact(contact, do_not_email=True)
    world.advance_clock(minutes=10)
    _completed(world)
    assert world.mc_status(EMAIL) == "unsubscribed"


def test_a_contact_created_and_flagged_before_the_next_run_is_read(world: World) -> None:
    """Staff create a contact on the empty site while the first run works (after its marks
    were taken), flag it, and Add it: the next incremental run reads it."""
    _completed(world)
    contact = world.civi.add_contact("New", "Person")
    world.civi.add_email(contact, EMAIL)
    world.civi.set_group_status(contact, world.group_id, "Added")
    world.advance_clock(minutes=10)
    _completed(world)
    assert world.mc_status(EMAIL) == "subscribed"
    world.advance_clock(minutes=10)
    world.civi.update_contact(contact, is_opt_out=True)
    world.advance_clock(minutes=10)
    _completed(world)
    assert world.mc_status(EMAIL) == "unsubscribed"
