"""Names edited at Mailchimp flow to the contact (seed-behaviour §8.3, without its webhook):
which of a member's FNAME/LNAME to copy onto the contact's first/last name. Pure.

The extension copies a profile update's names when they are not empty and differ from the
contact's. mcsync sees profile changes in the member data it fetches, so it must tell a
person's edit from its own writes: a name is an edit at Mailchimp only when it differs from
what mcsync last knew Mailchimp had (what it pushed through the merge-field feed, or read when
it first saw the member). Both sides may have changed the name since: then the later edit wins
(a tie goes to CiviCRM, as everywhere), and a CiviCRM edit that wins is sent by the feed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

# Mailchimp's default name merge tags → the CiviCRM Contact fields they mirror.
NAME_FIELDS: Mapping[str, str] = {"FNAME": "first_name", "LNAME": "last_name"}


@dataclass(frozen=True)
class NameEdit:
    """One member's names: ``mailchimp`` (tag → value now), ``known`` (tag → what mcsync last
    knew Mailchimp had), ``civicrm`` (field → the contact's value now), and the times of the
    last change on each side (Mailchimp's ``last_changed``, CiviCRM's ``modified_date``, UTC;
    None = unknown). Each is at or after its side's name edit."""

    mailchimp: Mapping[str, str | None]
    known: Mapping[str, str | None]
    civicrm: Mapping[str, str | None]
    mailchimp_changed_at: datetime | None
    civicrm_changed_at: datetime | None

    def __post_init__(self) -> None:
        for name, value in (
            ("mailchimp_changed_at", self.mailchimp_changed_at),
            ("civicrm_changed_at", self.civicrm_changed_at),
        ):
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"NameEdit.{name} must be timezone-aware (UTC)")


def _text(value: str | None) -> str:
    return (value or "").strip()


def edited_at_mailchimp(edit: NameEdit, tags: Mapping[str, str] = NAME_FIELDS) -> dict[str, str]:
    """The tags whose Mailchimp value is a person's edit: not empty (an empty name never wipes
    one) and not what mcsync last knew Mailchimp had (its own push is no edit). Tag → value."""
    edited = {}
    for tag in tags:
        value = _text(edit.mailchimp.get(tag))
        if value and value != _text(edit.known.get(tag)):
            edited[tag] = value
    return edited


def names_to_apply(edit: NameEdit, tags: Mapping[str, str] = NAME_FIELDS) -> dict[str, str]:
    """The contact fields to set (field → value) for a member's edited names. A field is set
    when the contact's value differs and either it was not edited in CiviCRM since mcsync's
    view of Mailchimp (it equals that view) or the Mailchimp edit is strictly later than the
    contact's last change (a tie, or an unknown time, keeps CiviCRM's: the feed sends it)."""
    changes = {}
    for tag, value in edited_at_mailchimp(edit, tags).items():
        field = tags[tag]
        current = _text(edit.civicrm.get(field))
        if current == value:
            continue
        edited_in_civicrm = current != _text(edit.known.get(tag))
        if edited_in_civicrm and not _mailchimp_later(edit):
            continue
        changes[field] = value
    return changes


def _mailchimp_later(edit: NameEdit) -> bool:
    at_mailchimp, at_civicrm = edit.mailchimp_changed_at, edit.civicrm_changed_at
    return at_mailchimp is not None and at_civicrm is not None and at_mailchimp > at_civicrm
