"""What each reason code (``reasons.Reason``, plus "aborted") means to a person and what to do
about it: the texts `failures` shows and `--reason` accepts. Pure values."""

from __future__ import annotations

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
    "order_unknown": (
        "The person changed their status at Mailchimp and staff changed the group in CiviCRM "
        "at about the same time, and a later profile edit at Mailchimp hides when the status "
        "changed (or trashing a flagged contact with this address hid when its privacy flag "
        "was set), so mcsync cannot tell which choice is newer; it changed neither",
        "Ask the person or check both histories, then set the group in CiviCRM (a newer "
        "CiviCRM change is synced as usual).",
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
        "Mailchimp's answer to this contact's update was malformed (a batch result or a bulk "
        "write's answer that could not be read), so mcsync cannot tell whether the change was "
        "made",
        "Usually nothing: the next run decides the contact again from Mailchimp's state (a "
        "change that was made shows at its fetch).",
    ),
    "civicrm_error": (
        "CiviCRM refused to change this contact's group membership; its error is shown",
        "Check the contact in CiviCRM (deleted, merged, or hidden from the API user by an "
        "ACL?). mcsync tries again by itself at the next try shown (after a run, then 15 "
        "minutes, doubling up to a day).",
    ),
    "new_email_in_use": (
        "The contact's email changed in CiviCRM, but the new address is already a member of "
        "this audience (another person, or an old member of the same person), so Mailchimp "
        "will not move the member to it; the member keeps the old address and its status",
        "If both are the same person, archive the other member in Mailchimp (or merge the "
        "contacts in CiviCRM); otherwise give the contact its own address. A later change of "
        "the contact's email is tried again.",
    ),
    "email_change_not_subscribed": (
        "The contact's email changed in CiviCRM, but Mailchimp changes the address of "
        'subscribed members only ("You can only update email addresses for members with a '
        "status of 'subscribed'\"), and this member no longer is",
        "Nothing to do: the next run reads the member's status and syncs it as usual.",
    ),
    "new_email_forgotten": (
        "The contact's email changed in CiviCRM, but Mailchimp will not take the new address "
        "(it was permanently deleted there, or is in compliance state); the member keeps the "
        "old address and its status",
        "Only the person can bring the new address back, through a Mailchimp signup form. "
        "Meanwhile mail goes to the old address.",
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
