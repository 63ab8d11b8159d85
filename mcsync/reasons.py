"""Why a row cannot (fully) sync: the reason codes staging stores per row, and their text."""

from __future__ import annotations

import enum
from collections.abc import Mapping


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
    Reason.PRIVACY_FLAGS: "the contact is deceased, do-not-email or opted out of bulk mail",
    Reason.NO_CONTACT: "subscribed at Mailchimp but no CiviCRM contact matched or was created",
    Reason.MEMBER_EXISTS: "Mailchimp says the member exists; two contacts may share the email",
    Reason.MAILCHIMP_ERROR: "Mailchimp refused the update; see title and detail",
    Reason.BAD_RESULT: "Mailchimp's batch result for the update was malformed; see the detail",
    Reason.CIVICRM_ERROR: "CiviCRM refused the group change; see the error",
}
