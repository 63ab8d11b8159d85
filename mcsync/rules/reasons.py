"""Why a row cannot (fully) sync: the reason codes staging stores per row, and their text."""

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
    Reason.BAD_RESULT: "Mailchimp's batch result for the update was malformed; see the detail",
    Reason.CIVICRM_ERROR: "CiviCRM refused the group change; see the error",
}


def newer_subscribe_detail(subscribed_at: datetime, flags_at: datetime) -> str:
    """The failure detail of a flagged contact who subscribed at Mailchimp after the flag was
    set: mcsync neither unsubscribes them nor changes the group, and a person must decide."""
    return (
        f"subscribed at Mailchimp {_utc(subscribed_at)}, after the privacy flag was set in "
        f"CiviCRM (by {_utc(flags_at)}); left subscribed: check the flag"
    )


def _utc(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


# Reasons that pass by themselves (a Mailchimp outage inside a batch, a CiviCRM lock timeout):
# normal runs try such rows again, with a backoff. Every other reason lasts until the data
# changes (which marks the row to decide again) or a full run decides every row again.
RETRIED_REASONS = frozenset({Reason.MAILCHIMP_ERROR, Reason.CIVICRM_ERROR})
RETRY_FIRST = timedelta(minutes=15)
RETRY_CAP = timedelta(days=1)


def is_retried(reason: Reason | str | None, status: int | None) -> bool:
    """Whether a failure is tried again by normal runs. A Mailchimp error is when Mailchimp
    answered 5xx or 429 (or nothing); a 4xx names data to fix, which a change in CiviCRM
    brings back. CiviCRM refusals are (a lock timeout, an ACL fixed meanwhile)."""
    if reason == Reason.CIVICRM_ERROR:
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


# Reason code (Reason, plus "aborted") → (plain reason, what to do about it).
REASONS: dict[str, tuple[str, str]] = {
    "cleaned": (
        "Mailchimp cleaned this address (it bounced hard or was reported as spam); Mailchimp "
        "will not let it be subscribed again, so mcsync put the email on hold in CiviCRM",
        "Ask the person for a working address and add it to their contact in CiviCRM.",
    ),
    "compliance": (
        'Mailchimp refused to re-subscribe a person who had unsubscribed ("compliance '
        'state"); mcsync asked for a confirmation email instead (status pending)',
        "Nothing to do: they are subscribed once they click the link in Mailchimp's email. "
        "If they never got it, they can re-subscribe through a Mailchimp signup form.",
    ),
    "forgotten": (
        "The person asked Mailchimp to forget them (GDPR erasure); Mailchimp will not accept "
        "the address again through the API",
        "Remove the contact from the group in CiviCRM; only the person can re-subscribe, "
        "through a Mailchimp signup form.",
    ),
    "on_hold": (
        "The email is on hold in CiviCRM (it bounced), so mcsync does not subscribe it",
        "Check the address; if it works again, take it off hold in CiviCRM.",
    ),
    "several_emails": (
        "The contact has several addresses in this audience and another one is subscribed, "
        "so the contact stays in the group",
        "Usually fine to ignore. If they are the same person's old addresses, archive the "
        "extra members in Mailchimp.",
    ),
    "no_usable_email": (
        "The contact is in the group but has no email that can be used (none, or all on hold)",
        "Add an email to the contact, or take one off hold.",
    ),
    "invalid_email": (
        "Mailchimp rejected the address as invalid (a typo, or a domain that takes no mail)",
        "Correct the email address in CiviCRM; the next run tries again.",
    ),
    "privacy_flags": (
        "The contact is deceased, marked 'do not email' or opted out of bulk mail, so mcsync "
        "does not subscribe them; if they signed up at Mailchimp after the flag was set (the "
        "detail says so), mcsync leaves that sign-up alone instead of undoing it",
        "Usually intentional. Where the detail says 'check the flag', check it: clear it in "
        "CiviCRM if the person wants mail again, or unsubscribe them in Mailchimp if the flag "
        "is right. To subscribe flagged contacts anyway, set respect_privacy_flags = false.",
    ),
    "no_contact": (
        "Subscribed at Mailchimp, but no CiviCRM contact matched the email and none was created",
        "Set create_contacts = true in [sync], or create the contact in CiviCRM by hand.",
    ),
    "member_exists": (
        "Mailchimp says a member with this address already exists (usually two contacts share "
        "one email, or an address changed to one already in the audience)",
        "Merge the duplicate contacts in CiviCRM, or give one of them another address.",
    ),
    "mailchimp_error": (
        "Mailchimp refused the update; its error title and detail are shown",
        "Read the detail. A temporary error at Mailchimp (5xx, 429) is tried again by itself, "
        "at the next try shown; otherwise fix the data it names in CiviCRM, and the run after "
        "the change tries again.",
    ),
    "bad_result": (
        "Mailchimp's batch result for this contact's update was malformed (its status code or "
        "response could not be read), so mcsync cannot tell whether the change was made",
        "Usually nothing: a change that was made shows at the next fetch, and the next full "
        "run (--since ever) decides the contact again in any case.",
    ),
    "civicrm_error": (
        "CiviCRM refused to change this contact's group membership; its error is shown",
        "Check the contact in CiviCRM (deleted, merged, or hidden from the API user by an "
        "ACL?). mcsync tries again by itself at the next try shown (after a run, then 15 "
        "minutes, doubling up to a day).",
    ),
    "aborted": (
        "The update was cancelled by 'mcsync abort' before Mailchimp confirmed it",
        "Nothing: the next run decides this contact again from fresh data.",
    ),
}
UNKNOWN_ADVICE = "Look at the detail; run fetch-and-reconcile with -vv to see the requests."


def explain(reason: str | None) -> tuple[str, str]:
    """The plain explanation and advice for a reason code (unknown codes are shown as is)."""
    if reason and reason in REASONS:
        return REASONS[reason]
    return (reason or "unknown", UNKNOWN_ADVICE)
