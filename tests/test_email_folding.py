"""One case-folding rule for email addresses (issue 10.8): Python and the staging DB's SQL fold
alike, so a member whose address has non-ASCII capitals is matched to its contact.

SQLite's built-in ``lower()`` folds ASCII only (``lower('ÄNNE@x')`` is ``'Änne@x'``), while
Python's ``str.lower`` folds every letter: mixing the two left such members unmatched, and a
duplicate contact was created for them.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import World
from hypothesis import given
from hypothesis import strategies as st

from mcsync.api.mailchimp import member_hash
from mcsync.rules.addresses import fold_email
from mcsync.sim.mailchimp import subscriber_hash
from mcsync.store.database import MIGRATIONS, Staging

MCSYNC = Path(__file__).resolve().parent.parent / "mcsync"


def _contacts_owning(world: World, address: str) -> list[int]:
    """Undeleted contacts with an email that folds to this address's folding."""
    return sorted(
        {
            e["contact_id"]
            for e in world.civi.query(
                "SELECT e.contact_id, e.email FROM email e JOIN contact c ON c.id = e.contact_id "
                "WHERE c.is_deleted = 0"
            )
            if fold_email(e["email"]) == fold_email(address)
        }
    )


@pytest.mark.parametrize(
    ("at_mailchimp", "in_civicrm"),
    [
        ("ÄNNE@example.org", "änne@example.org"),
        ("änne@example.org", "ÄNNE@example.org"),
        ("ÉLODIE.ØRSTED@example.org", "Élodie.Ørsted@Example.org"),
    ],
)
def test_non_ascii_capitals_match_the_contact(
    world: World, at_mailchimp: str, in_civicrm: str
) -> None:
    for n in range(20):  # bystanders in sync, so that nothing here nears the brake
        world.person(f"p{n}@example.org", mc="subscribed", civi="Added")
    world.mc.seed_member(
        world.list_id,
        at_mailchimp,
        "subscribed",
        last_changed=world.ago(days=1),
        merge_fields={"FNAME": "Änne", "LNAME": ""},
    )
    contact = world.civi.add_contact("Änne", "")
    world.civi.add_email(contact, in_civicrm)
    world.civi.set_group_status(contact, world.group_id, "Removed", when=world.ago(days=9))

    result = world.sync()[0]
    assert result.error is None and result.outcome and result.outcome.completed
    assert _contacts_owning(world, at_mailchimp) == [contact], "a duplicate contact was created"
    assert world.civi_status(contact) == "Added", "the newer Mailchimp subscribe carries over"
    assert world.mc_status(at_mailchimp) == "subscribed"
    before = len(world.writes())
    world.sync()
    assert world.writes()[before:] == [], "the next run finds both sides in agreement"


def test_a_held_address_with_non_ascii_capitals_is_never_subscribed(world: World) -> None:
    """The hold is found whichever side spells the address in capitals."""
    for n in range(20):
        world.person(f"p{n}@example.org", mc="subscribed", civi="Added")
    world.mc.seed_member(
        world.list_id, "ÖDÖN@example.org", "unsubscribed", last_changed=world.ago(days=9)
    )
    contact = world.civi.add_contact("Ödön", "")
    world.civi.add_email(contact, "ödön@example.org", on_hold=1)
    world.civi.set_group_status(contact, world.group_id, "Added", when=world.ago(days=1))
    result = world.sync()[0]
    assert result.error is None
    assert world.mc_status("ÖDÖN@example.org") == "unsubscribed"
    assert _contacts_owning(world, "ÖDÖN@example.org") == [contact]


# Addresses with letters whose case folds outside ASCII, in any mix of case.
_LETTERS = st.characters(
    categories=("Lu", "Ll", "Lt", "Nd"), max_codepoint=0x24F
) | st.sampled_from("ÄÖÜÉÈÅØÆäöüéèåøæßẞİıΣσςDŽdžǅ")
_LOCAL = st.text(_LETTERS | st.sampled_from(".-_+"), min_size=1, max_size=20)
_ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}", _LOCAL, _LOCAL)


@pytest.fixture(scope="module")
def staging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Staging]:
    """One staging DB for the property tests (hypothesis runs many examples per test)."""
    db = Staging(tmp_path_factory.mktemp("fold") / "state.sqlite3")
    yield db
    db.close()


@given(text=st.text(max_size=40) | _ADDRESS)
def test_sql_and_python_fold_alike(staging: Staging, text: str) -> None:
    assert staging.scalar("SELECT fold_email(?)", (text,)) == fold_email(text)


@given(address=_ADDRESS, flips=st.lists(st.booleans(), min_size=41, max_size=41))
def test_any_recasing_folds_to_one_address_and_one_hash(
    staging: Staging, address: str, flips: list[bool]
) -> None:
    """Mailchimp keys a member by the MD5 of the lower-cased address: every spelling of an
    address that folds alike is one member, for mcsync and the simulator alike, and the staging
    DB finds it by its folded address."""
    spelled = "".join(ch.upper() if flip else ch for ch, flip in zip(address, flips, strict=False))
    if fold_email(spelled) != fold_email(address):
        return  # upper() then lower() is not the identity for a few letters (ß, ǅ...)
    assert member_hash(spelled) == member_hash(address) == subscriber_hash(spelled)
    staging.execute("DELETE FROM rows")
    staging.execute(
        "INSERT INTO rows (list_id, mc_hash, mc_email) VALUES ('L', 'h', ?)", (address,)
    )
    found = staging.query(
        "SELECT mc_email FROM rows WHERE list_id = 'L' AND fold_email(mc_email) = ?",
        (fold_email(spelled),),
    )
    assert [r[0] for r in found] == [address]


def test_no_sql_folds_with_sqlite_lower() -> None:
    """Every SQL string in mcsync folds with fold_email(), never SQLite's ASCII-only lower()
    (migrations that have shipped stay as they were; a later one replaces their index)."""
    shipped = set(MIGRATIONS[:6])
    offenders = []
    for path in sorted(MCSYNC.rglob("*.py")):
        if "sim" in path.relative_to(MCSYNC).parts:
            continue  # the simulators model the services' own folding
        tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
        for token in tokens:
            if token.type != tokenize.STRING or _literal(token.string) in shipped:
                continue
            if re.search(r"(?<![.\w])lower\(", token.string):
                offenders.append(f"{path.name}:{token.start[0]}")
    assert offenders == []


def _literal(source: str) -> str | None:
    """A plain string literal's value (None for f-strings and bytes)."""
    try:
        value = ast.literal_eval(source)
    except ValueError:
        return None
    return value if isinstance(value, str) else None
