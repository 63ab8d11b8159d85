"""Why a row cannot (fully) sync: the reason codes staging stores per row (their texts are in
``explanations``)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, timedelta


class Reason(enum.StrEnum):
    """Why a row cannot (fully) sync; shown per contact by ``status`` and ``failures``."""

    CLEANED = "cleaned"
    COMPLIANCE = "compliance"
    FORGOTTEN = "forgotten"
    ON_HOLD = "on_hold"
    SEVERAL_EMAILS = "several_emails"
    NO_USABLE_EMAIL = "no_usable_email"
    INVALID_EMAIL = "invalid_email"
    PRIVACY_FLAGS = "privacy_flags"
    NO_CONTACT = "no_contact"
    MEMBER_EXISTS = "member_exists"
    MAILCHIMP_ERROR = "mailchimp_error"
    BAD_RESULT = "bad_result"
    CIVICRM_ERROR = "civicrm_error"
    ORDER_UNKNOWN = "order_unknown"
    NEW_EMAIL_IN_USE = "new_email_in_use"
    EMAIL_CHANGE_NOT_SUBSCRIBED = "email_change_not_subscribed"
    NEW_EMAIL_FORGOTTEN = "new_email_forgotten"


REASON_TEXT: Mapping[Reason, str] = {
    Reason.CLEANED: "cleaned at Mailchimp (hard bounce or abuse); cannot be re-subscribed",
    Reason.COMPLIANCE: "Mailchimp refused to re-subscribe (compliance state); the person must "
    "re-subscribe through a Mailchimp form or confirm the pending email",
    Reason.FORGOTTEN: "permanently deleted at Mailchimp; cannot be re-imported",
    Reason.ON_HOLD: "the email is on hold in CiviCRM; refusing to subscribe it",
    Reason.SEVERAL_EMAILS: "the contact has another subscribed email in this audience; "
    "fine to ignore",
    Reason.NO_USABLE_EMAIL: "the contact has no email that is not on hold",
    Reason.INVALID_EMAIL: "the email is not a valid address",
    Reason.PRIVACY_FLAGS: "the contact is deceased, do-not-email or opted out of bulk mail; "
    "a Mailchimp sign-up made after the flag was set is left alone and listed",
    Reason.NO_CONTACT: "subscribed at Mailchimp but no CiviCRM contact matched or was created",
    Reason.MEMBER_EXISTS: "Mailchimp says the member exists; two contacts may share the email",
    Reason.MAILCHIMP_ERROR: "Mailchimp refused the update; see title and detail",
    Reason.BAD_RESULT: "Mailchimp's answer to the update was malformed; see the detail",
    Reason.CIVICRM_ERROR: "CiviCRM refused the group change; see the error",
    Reason.ORDER_UNKNOWN: "the Mailchimp status change and the CiviCRM group change could not "
    "be put in order (a later profile edit dates the member); left alone: check which is right",
    Reason.NEW_EMAIL_IN_USE: "the contact's new email is already a member of the audience; "
    "the member keeps its old address",
    Reason.EMAIL_CHANGE_NOT_SUBSCRIBED: "Mailchimp changes the address of subscribed members "
    "only; the member keeps its old address",
    Reason.NEW_EMAIL_FORGOTTEN: "the contact's new email was permanently deleted at Mailchimp "
    "(or is in compliance state); the member keeps its old address",
}

# Reasons an email change made in CiviCRM was refused by Mailchimp (seed §5.5); the member
# keeps its old address, and its subscription is unaffected.
EMAIL_CHANGE_REASONS = frozenset(
    {Reason.NEW_EMAIL_IN_USE, Reason.EMAIL_CHANGE_NOT_SUBSCRIBED, Reason.NEW_EMAIL_FORGOTTEN}
)


def newer_subscribe_detail(subscribed_at: datetime, flags_at: datetime) -> str:
    """The failure detail of a flagged contact who subscribed at Mailchimp after the flag was
    set: mcsync neither unsubscribes them nor changes the group, and a person must decide."""
    return (
        f"subscribed at Mailchimp {_utc(subscribed_at)}, after the privacy flag was set in "
        f"CiviCRM (by {_utc(flags_at)}); left subscribed: check the flag"
    )


def trashed_flag_detail(flag_by: datetime, subscribed_at: datetime | None) -> str:
    """The failure detail of a member whose address belongs to a contact in the trash with a
    privacy flag that cannot be ordered against the member's subscribe: trashing the contact
    moved its modified date, so the flag's own time is unknown. mcsync neither creates a
    contact for the member nor unsubscribes it; a person must decide."""
    subscribed = f" {_utc(subscribed_at)}" if subscribed_at else ""
    return (
        f"subscribed at Mailchimp{subscribed}; a contact in the trash with this address has a "
        f"privacy flag set by {_utc(flag_by)} (when exactly is unknown: trashing it moved its "
        "modified date); no contact created, left subscribed: check which is right"
    )


def unordered_subscribe_detail(
    subscribed_by: datetime, flags_after: datetime, flags_at: datetime
) -> str:
    """The failure detail of a flagged contact who subscribed at Mailchimp (by
    ``subscribed_by``) while the flag was set at a time mcsync only knows to lie after
    ``flags_after`` and by ``flags_at`` (CiviCRM keeps no history of flags; another edit of
    the contact moves its modified_date): either may be the later choice."""
    return (
        f"subscribed at Mailchimp by {_utc(subscribed_by)}; the privacy flag was set in "
        f"CiviCRM by {_utc(flags_at)} (after {_utc(flags_after)}), so either may be the "
        "later choice; left subscribed: check the flag"
    )


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# Reasons that pass by themselves (a Mailchimp outage inside a batch, a CiviCRM lock timeout):
# normal runs try such rows again, with a backoff. Every other reason lasts until the data
# changes (which marks the row to decide again) or a full run decides every row again.
RETRIED_REASONS = frozenset({Reason.MAILCHIMP_ERROR, Reason.CIVICRM_ERROR, Reason.BAD_RESULT})
RETRY_FIRST = timedelta(minutes=15)
RETRY_CAP = timedelta(days=1)


def is_retried(reason: Reason | str | None, status: int | None) -> bool:
    """Whether a failure is tried again by normal runs. A Mailchimp error is when Mailchimp
    answered 5xx or 429 (or nothing); a 4xx names data to fix, which a change in CiviCRM
    brings back. CiviCRM refusals are (a lock timeout, an ACL fixed meanwhile), and so is a
    write whose answer was malformed (made or not, unknown: decided again from fresh data)."""
    if reason in (Reason.CIVICRM_ERROR, Reason.BAD_RESULT):
        return True
    if reason == Reason.MAILCHIMP_ERROR:
        return status is None or status == 429 or status >= 500
    return False


def retry_delay(attempts: int) -> timedelta:
    """How long after the run that failed a row's ``attempts``-th time in a row it is tried
    again: the first failure at the next run, then 15 minutes, doubling, at most a day."""
    if attempts <= 1:
        return timedelta(0)
    doublings: int = min(attempts - 2, 16)
    return min(RETRY_FIRST * (1 << doublings), RETRY_CAP)
