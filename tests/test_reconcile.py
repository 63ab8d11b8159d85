"""Decision tables of mcsync.rules.reconcile, one case per row of seed-behaviour §5.2/§5.3 and the
rules of §4.2–§4.5, §5.4–§5.6 and §7. Case ids name the table row they cover."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mcsync.rules.matching import (
    Candidate,
    Match,
    MatchRule,
    TrashedFlagOrder,
    choose_contact,
    should_create_contact,
    trashed_flag_order,
)
from mcsync.rules.member_state import (
    AudiencePolicy,
    CivicrmSide,
    EmailRecord,
    GroupState,
    MailchimpSide,
    MemberRow,
    Refusal,
    Sibling,
)
from mcsync.rules.queue_rules import (
    ABORT_NOT_SUBSCRIBED,
    ABORT_SUPERSEDED,
    AbortUpdate,
    QueuedUpdate,
    QueuePlan,
    keep_pending,
    plan_queue,
)
from mcsync.rules.reasons import Reason
from mcsync.rules.reconcile import (
    Action,
    ChangeMemberEmail,
    PutEmailOnHold,
    QueueMailchimpUpdate,
    SetGroupStatus,
    choose_best_email,
    decide_email_change,
    decide_subscription,
    most_recent,
    reconcile_member,
)
from mcsync.rules.write_results import apply_batch_result

T = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OLD, NEW = T, T + timedelta(hours=1)
NEWER = T + timedelta(hours=2)
CID, GID, IGID, IID = 7, 12, 34, "int-a"
EMAIL = "ann@example.org"
POLICY = AudiencePolicy(group_id=GID, interest_groups={IID: IGID})

ADD = SetGroupStatus(CID, GID, "Added")
REMOVE = SetGroupStatus(CID, GID, "Removed")
HOLD = PutEmailOnHold(CID, EMAIL)
OTHER_SUBSCRIBED = Sibling("ann.other@example.org", "subscribed")


def body(status: str, email: str = EMAIL, **extra: Any) -> dict[str, Any]:
    """A status PUT's body; an unsubscribe never creates a member (no ``status_if_new``)."""
    if status == "unsubscribed":
        return {"email_address": email, "status": status, **extra}
    return {"email_address": email, "status": status, "status_if_new": status, **extra}


def put(status: str, email: str = EMAIL, **extra: Any) -> QueueMailchimpUpdate:
    return QueueMailchimpUpdate(email, body(status, email, **extra))


def row(
    mc: str | None,
    civi: str | None,
    *,
    mc_at: datetime | None = OLD,
    civi_at: datetime | None = NEW,
    emails: tuple[EmailRecord, ...] = (EmailRecord(EMAIL, is_primary=True),),
    siblings: tuple[Sibling, ...] = (),
    on_hold_anywhere: bool = False,
    refusal: Refusal | None = None,
    contact_id: int | None = CID,
    interest: tuple[bool | None, datetime | None, str | None, datetime | None] | None = None,
    merge: tuple[dict[str, Any], dict[str, Any]] = ({}, {}),
    flags_at: datetime | None = None,
    cleaned_handled: bool = False,
    **flags: bool,
) -> MemberRow:
    """A row; ``interest`` = (MC value, MC time, CiviCRM status, CiviCRM time) for IID;
    ``flags_at``: when the privacy flags were set (None: unknown); ``cleaned_handled``:
    mcsync already acted on the member becoming cleaned."""
    mc_interests: dict[str, bool] = {}
    mc_interest_at: dict[str, datetime] = {}
    civi_groups: dict[int, GroupState] = {}
    if interest is not None:
        value, value_at, group_status, group_at = interest
        if value is not None:
            mc_interests[IID] = value
        if value_at is not None:
            mc_interest_at[IID] = value_at
        civi_groups[IGID] = GroupState(group_status, group_at)  # type: ignore[arg-type]
    return MemberRow(
        mailchimp=MailchimpSide(
            email=EMAIL if mc else None,
            status=mc,  # type: ignore[arg-type]
            last_changed=mc_at if mc else None,
            interests=mc_interests,
            interests_changed_at=mc_interest_at,
            merge_fields=merge[0],
        ),
        civicrm=CivicrmSide(
            contact_id=contact_id,
            subscription=GroupState(civi, civi_at),  # type: ignore[arg-type]
            interest_groups=civi_groups,
            emails=emails,
            merge_fields=merge[1],
            flags_changed_at=flags_at,
            **flags,
        ),
        siblings=siblings,
        mailchimp_email_on_hold=on_hold_anywhere,
        refusal=refusal,
        cleaned_handled=cleaned_handled,
    )


SUB_SIBLING = (Sibling("ann.other@example.org", "subscribed"),)
HELD = (EmailRecord(EMAIL, on_hold=1, is_primary=True),)
A = {"mc_at": NEW, "civi_at": OLD}  # Mailchimp changed most recently
B = {"mc_at": OLD, "civi_at": NEW}  # CiviCRM changed most recently

# (row, rule, final_subscribed, reason, actions)
SUBSCRIPTION_CASES = [
    # --- Case A: Mailchimp most recent ---
    pytest.param(
        row("subscribed", "Added", **A),
        "5.2-A1",
        True,
        None,
        (),
        id="5.2-A1-mc-subscribed-civi-added-mc-newer",
    ),
    pytest.param(
        row("pending", "Added", **A),
        "5.2-A1",
        True,
        None,
        (),
        id="5.2-A1-mc-pending-civi-added-mc-newer",
    ),
    pytest.param(
        row("unsubscribed", "Added", **A),
        "5.2-A2",
        False,
        None,
        (REMOVE,),
        id="5.2-A2-mc-unsubscribed-civi-added-mc-newer",
    ),
    pytest.param(
        row("archived", "Added", **A),
        "5.2-A2",
        False,
        None,
        (REMOVE,),
        id="5.2-A2-mc-archived-civi-added-mc-newer",
    ),
    pytest.param(
        row("transactional", "Added", **A),
        "5.2-A2",
        False,
        None,
        (REMOVE,),
        id="5.2-A2-mc-transactional-civi-added-mc-newer",
    ),
    pytest.param(
        row("cleaned", "Added", **A),
        "5.2-A2",
        False,
        None,
        (HOLD, REMOVE),
        id="5.2-A2-mc-cleaned-civi-added-mc-newer-email-on-hold",
    ),
    pytest.param(
        row("unsubscribed", "Added", siblings=SUB_SIBLING, **A),
        "5.2-A2-several-emails",
        False,
        Reason.SEVERAL_EMAILS,
        (),
        id="5.6-issue9-A2-other-email-subscribed-stays-added",
    ),
    pytest.param(
        row("unsubscribed", "Added", siblings=(Sibling("x@example.org", "unsubscribed"),), **A),
        "5.2-A2",
        False,
        None,
        (REMOVE,),
        id="5.6-issue9-A2-other-email-unsubscribed-removes",
    ),
    pytest.param(
        row("subscribed", "Removed", **A),
        "5.2-A3",
        True,
        None,
        (ADD,),
        id="5.2-A3-mc-subscribed-civi-removed-mc-newer",
    ),
    pytest.param(
        row("pending", "Deleted", **A),
        "5.2-A3",
        True,
        None,
        (ADD,),
        id="5.2-A3-mc-pending-civi-deleted-mc-newer",
    ),
    pytest.param(
        row("subscribed", "Pending", **A),
        "5.2-A3",
        True,
        None,
        (ADD,),
        id="5.2-A3-mc-subscribed-civi-pending-mc-newer",
    ),
    pytest.param(
        row("subscribed", None, civi_at=None),
        "5.2-A3",
        True,
        None,
        (ADD,),
        id="5.2-A3-mc-subscribed-civi-no-history-mc-wins",
    ),
    pytest.param(
        row("unsubscribed", "Removed", **A),
        "5.2-A4",
        False,
        None,
        (),
        id="5.2-A4-mc-unsubscribed-civi-removed-mc-newer",
    ),
    pytest.param(
        row("cleaned", None, civi_at=None),
        "5.2-A4",
        False,
        None,
        (HOLD,),
        id="5.2-A4-mc-cleaned-civi-no-history",
    ),
    pytest.param(
        row("unsubscribed", "Added", civi_at=None),
        "5.2-A2",
        False,
        None,
        (REMOVE,),
        id="5.1-civi-added-without-history-mc-wins",
    ),
    # --- Case B: CiviCRM most recent ---
    pytest.param(
        row("subscribed", "Added", **B),
        "5.2-B1",
        True,
        None,
        (),
        id="5.2-B1-mc-subscribed-civi-added-civi-newer",
    ),
    pytest.param(
        row("pending", "Added", **B),
        "5.2-B1",
        True,
        None,
        (),
        id="5.2-B1-mc-pending-civi-added-civi-newer",
    ),
    pytest.param(
        row(None, "Added", **B),
        "5.2-B2",
        True,
        None,
        (put("subscribed"),),
        id="5.2-B2-not-at-mc-civi-added-subscribe-best-email",
    ),
    pytest.param(
        row(None, "Added", civi_at=None),
        "5.2-B2",
        True,
        None,
        (put("subscribed"),),
        id="5.2-B2-civi-only-added-without-history-never-removed",
    ),
    pytest.param(
        row(None, "Added", emails=HELD, **B),
        "5.2-B2",
        False,
        Reason.NO_USABLE_EMAIL,
        (),
        id="5.2-B2-no-usable-email-all-on-hold",
    ),
    pytest.param(
        row(None, "Added", emails=(), **B),
        "5.2-B2",
        False,
        Reason.NO_USABLE_EMAIL,
        (),
        id="5.2-B2-no-email-at-all",
    ),
    pytest.param(
        row(None, "Added", emails=(EmailRecord("not-an-email"),), **B),
        "5.2-B2",
        False,
        Reason.INVALID_EMAIL,
        (),
        id="5.2-B2-invalid-email",
    ),
    pytest.param(
        row(None, "Added", siblings=SUB_SIBLING, **B),
        "5.2-B2-several-emails",
        False,
        Reason.SEVERAL_EMAILS,
        (),
        id="5.6-issue9-B2-not-created-while-other-email-subscribed",
    ),
    pytest.param(
        row("unsubscribed", "Added", **B),
        "5.2-B3",
        True,
        None,
        (put("subscribed"),),
        id="5.2-B3-mc-unsubscribed-civi-added-civi-newer",
    ),
    pytest.param(
        row("archived", "Added", **B),
        "5.2-B3",
        True,
        None,
        (put("subscribed"),),
        id="5.2-B3-mc-archived-civi-added-civi-newer",
    ),
    pytest.param(
        row("transactional", "Added", **B),
        "5.2-B3",
        True,
        None,
        (put("subscribed"),),
        id="5.2-B3-mc-transactional-civi-added-civi-newer",
    ),
    pytest.param(
        row("unsubscribed", "Added", mc_at=T, civi_at=T),
        "5.2-B3",
        True,
        None,
        (put("subscribed"),),
        id="5.1-tie-goes-to-civicrm",
    ),
    pytest.param(
        row("unsubscribed", "Added", emails=HELD, **B),
        "5.2-B3-on-hold",
        False,
        Reason.ON_HOLD,
        (),
        id="4.5-B3-email-on-hold-on-contact-refuses",
    ),
    pytest.param(
        row("unsubscribed", "Added", on_hold_anywhere=True, **B),
        "5.2-B3-on-hold",
        False,
        Reason.ON_HOLD,
        (),
        id="4.5-B3-email-on-hold-on-any-contact-refuses",
    ),
    pytest.param(
        row("unsubscribed", "Added", siblings=SUB_SIBLING, **B),
        "5.2-B3-several-emails",
        False,
        Reason.SEVERAL_EMAILS,
        (),
        id="5.6-issue9-B3-not-resubscribed-while-other-email-subscribed",
    ),
    pytest.param(
        row("unsubscribed", "Added", refusal=Refusal(Reason.COMPLIANCE, EMAIL, NEW), **B),
        "5.2-B3-refused",
        False,
        Reason.COMPLIANCE,
        (),
        id="5.4-B3-compliance-refused-not-retried",
    ),
    pytest.param(
        row("unsubscribed", "Added", refusal=Refusal(Reason.COMPLIANCE, EMAIL, OLD), **B),
        "5.2-B3",
        True,
        None,
        (put("subscribed"),),
        id="5.4-B3-compliance-refused-civi-changed-since-retries",
    ),
    pytest.param(
        row(None, "Added", refusal=Refusal(Reason.FORGOTTEN, EMAIL, NEW), **B),
        "5.2-B2-refused",
        False,
        Reason.FORGOTTEN,
        (),
        id="5.4-B2-forgotten-email-not-retried",
    ),
    pytest.param(
        row("cleaned", "Added", **B),
        "5.2-B4",
        False,
        Reason.CLEANED,
        (HOLD,),
        id="5.2-B4-mc-cleaned-civi-added-civi-newer-never-resubscribed",
    ),
    pytest.param(
        row("cleaned", "Added", emails=HELD, **B),
        "5.2-B4",
        False,
        Reason.CLEANED,
        (),
        id="5.4-B4-cleaned-already-on-hold",
    ),
    pytest.param(
        row("subscribed", "Removed", **B),
        "5.2-B5",
        False,
        None,
        (put("unsubscribed"),),
        id="5.2-B5-mc-subscribed-civi-removed-civi-newer",
    ),
    pytest.param(
        row("pending", "Deleted", **B),
        "5.2-B5",
        False,
        None,
        (put("unsubscribed"),),
        id="5.2-B5-mc-pending-civi-deleted-civi-newer",
    ),
    pytest.param(
        row("subscribed", None, **B),
        "5.2-B5",
        False,
        None,
        (put("unsubscribed"),),
        id="5.2-B5-mc-subscribed-civi-none-with-history",
    ),
    pytest.param(
        row("unsubscribed", "Removed", **B),
        "5.2-B6",
        False,
        None,
        (),
        id="5.2-B6-mc-unsubscribed-civi-removed-civi-newer",
    ),
    pytest.param(
        row("cleaned", "Removed", emails=HELD, **B),
        "5.2-B6",
        False,
        None,
        (),
        id="5.2-B6-mc-cleaned-civi-removed-civi-newer",
    ),
    pytest.param(
        row(None, "Removed", **B), "5.2-B6", False, None, (), id="5.2-B6-not-at-mc-civi-removed"
    ),
    pytest.param(
        row(None, None, civi_at=None), "5.2-B6", False, None, (), id="5.2-B6-not-at-mc-no-history"
    ),
    pytest.param(
        row("unsubscribed", "Pending", **B),
        "5.2-B6",
        False,
        None,
        (),
        id="5.2-B6-civi-pending-is-not-added-nothing-to-do",
    ),
    pytest.param(
        row("subscribed", "Pending", **B),
        "5.2-B5",
        False,
        None,
        (put("unsubscribed"),),
        id="5.2-B5-civi-pending-is-not-added-unsubscribes",
    ),
    # --- §4.5 privacy flags (respected by default): CiviCRM group status is kept ---
    pytest.param(
        row("subscribed", "Added", is_opt_out=True),
        "privacy-unsubscribe",
        False,
        Reason.PRIVACY_FLAGS,
        (put("unsubscribed"),),
        id="4.5-is-opt-out-subscribed-is-unsubscribed-group-kept",
    ),
    pytest.param(
        row("pending", "Added", do_not_email=True, **A),
        "privacy-unsubscribe",
        False,
        Reason.PRIVACY_FLAGS,
        (put("unsubscribed"),),
        id="4.5-do-not-email-pending-is-unsubscribed",
    ),
    pytest.param(
        row("subscribed", "Removed", is_deceased=True, **A),
        "privacy-unsubscribe",
        False,
        Reason.PRIVACY_FLAGS,
        (put("unsubscribed"),),
        id="4.5-deceased-mc-newer-not-added-to-group",
    ),
    pytest.param(
        row("unsubscribed", "Added", is_opt_out=True, **A),
        "privacy-keep-group",
        False,
        Reason.PRIVACY_FLAGS,
        (),
        id="4.5-opt-out-mc-newer-unsubscribe-keeps-group",
    ),
    pytest.param(
        row(None, "Added", do_not_email=True),
        "privacy-keep-group",
        False,
        Reason.PRIVACY_FLAGS,
        (),
        id="4.5-do-not-email-not-created-at-mc",
    ),
    pytest.param(
        row("unsubscribed", "Removed", is_deceased=True),
        "privacy-keep-group",
        False,
        None,
        (),
        id="4.5-deceased-nothing-to-do",
    ),
    pytest.param(
        row("cleaned", "Added", is_deceased=True),
        "privacy-keep-group",
        False,
        Reason.PRIVACY_FLAGS,
        (HOLD,),
        id="4.5-deceased-cleaned-still-on-hold",
    ),
    # --- issue 10 item 7: a privacy flag never undoes a newer Mailchimp subscribe ---
    pytest.param(
        row("subscribed", "Added", is_opt_out=True, flags_at=OLD, **A),
        "privacy-newer-subscribe",
        False,
        Reason.PRIVACY_FLAGS,
        (),
        id="10.7-opt-out-older-than-mc-subscribe-not-undone",
    ),
    pytest.param(
        row("pending", "Removed", do_not_email=True, flags_at=OLD, mc_at=NEW, civi_at=T),
        "privacy-newer-subscribe",
        False,
        Reason.PRIVACY_FLAGS,
        (),
        id="10.7-do-not-email-older-than-mc-pending-no-group-write",
    ),
    pytest.param(
        row("subscribed", None, civi_at=None, is_deceased=True, flags_at=OLD, mc_at=NEW),
        "privacy-newer-subscribe",
        False,
        Reason.PRIVACY_FLAGS,
        (),
        id="10.7-flag-older-mc-newer-no-history-not-added",
    ),
    pytest.param(
        row("subscribed", "Added", is_opt_out=True, flags_at=NEW, mc_at=OLD, civi_at=OLD),
        "privacy-unsubscribe",
        False,
        Reason.PRIVACY_FLAGS,
        (put("unsubscribed"),),
        id="10.7-flag-newer-than-mc-subscribe-unsubscribes",
    ),
    pytest.param(
        row("subscribed", "Added", is_opt_out=True, flags_at=T, mc_at=T, civi_at=OLD),
        "privacy-unsubscribe",
        False,
        Reason.PRIVACY_FLAGS,
        (put("unsubscribed"),),
        id="10.7-flag-same-time-as-mc-subscribe-goes-to-civicrm",
    ),
    pytest.param(
        row("subscribed", "Removed", is_opt_out=True, flags_at=OLD, mc_at=NEW, civi_at=NEWER),
        "5.2-B5",
        False,
        None,
        (put("unsubscribed"),),
        id="10.7-flag-older-but-civi-removal-newest-unsubscribes",
    ),
    pytest.param(
        row(None, "Added", is_opt_out=True, flags_at=OLD, civi_at=NEW),
        "privacy-keep-group",
        False,
        Reason.PRIVACY_FLAGS,
        (),
        id="10.7-flagged-never-subscribed-from-civicrm",
    ),
    pytest.param(
        row("unsubscribed", "Added", is_opt_out=True, flags_at=OLD, mc_at=NEW, civi_at=T),
        "privacy-keep-group",
        False,
        Reason.PRIVACY_FLAGS,
        (),
        id="10.7-flag-older-mc-unsubscribed-keeps-group",
    ),
    # --- issue 10 item 6: cleaned puts the email on hold once, on the transition ---
    pytest.param(
        row("cleaned", "Added", cleaned_handled=True, **A),
        "5.2-A2",
        False,
        None,
        (REMOVE,),
        id="10.6-cleaned-handled-admin-unhold-kept-A2",
    ),
    pytest.param(
        row("cleaned", "Added", cleaned_handled=True, **B),
        "5.2-B4",
        False,
        Reason.CLEANED,
        (),
        id="10.6-cleaned-handled-admin-unhold-kept-B4",
    ),
    pytest.param(
        row("cleaned", None, civi_at=None, cleaned_handled=True),
        "5.2-A4",
        False,
        None,
        (),
        id="10.6-cleaned-handled-no-history-no-hold",
    ),
    pytest.param(
        row("cleaned", "Added", is_deceased=True, cleaned_handled=True),
        "privacy-keep-group",
        False,
        Reason.PRIVACY_FLAGS,
        (),
        id="10.6-cleaned-handled-flagged-no-hold",
    ),
    # --- §4.1/§4.5 no contact, deleted contact ---
    pytest.param(
        row("subscribed", None, contact_id=None),
        "no-contact",
        True,
        Reason.NO_CONTACT,
        (),
        id="4.3-subscribed-without-contact",
    ),
    pytest.param(
        row("unsubscribed", None, contact_id=None),
        "no-contact",
        False,
        None,
        (),
        id="4.3-unsubscribed-without-contact-skipped",
    ),
    pytest.param(
        row("subscribed", "Added", is_deleted=True),
        "no-contact",
        True,
        Reason.NO_CONTACT,
        (),
        id="4.5-deleted-contact-never-acted-on",
    ),
    # --- §4.1 a removal made before the contact was trashed (DESIGN §4) ---
    pytest.param(
        replace(row("subscribed", None, contact_id=None, mc_at=OLD), trashed_removal_at=NEW),
        "4.1-trashed-removal",
        False,
        None,
        (put("unsubscribed"),),
        id="4.1-trashed-removal-newer-unsubscribes",
    ),
    pytest.param(
        replace(row("pending", None, contact_id=None, mc_at=OLD), trashed_removal_at=NEW),
        "4.1-trashed-removal",
        False,
        None,
        (put("unsubscribed"),),
        id="4.1-trashed-removal-newer-than-pending-unsubscribes",
    ),
    pytest.param(
        replace(row("subscribed", None, contact_id=None, mc_at=NEW), trashed_removal_at=NEW),
        "4.1-trashed-removal",
        False,
        None,
        (put("unsubscribed"),),
        id="4.1-trashed-removal-tie-goes-to-civicrm",
    ),
    pytest.param(
        replace(row("subscribed", None, contact_id=None, mc_at=NEW), trashed_removal_at=OLD),
        "no-contact",
        True,
        Reason.NO_CONTACT,
        (),
        id="4.1-trashed-removal-older-than-subscribe",
    ),
    pytest.param(
        replace(row("unsubscribed", None, contact_id=None, mc_at=OLD), trashed_removal_at=NEW),
        "no-contact",
        False,
        None,
        (),
        id="4.1-trashed-removal-already-unsubscribed",
    ),
    pytest.param(
        replace(row("subscribed", "Added", mc_at=OLD), trashed_removal_at=NEW),
        "5.2-B1",
        True,
        None,
        (),
        id="4.1-trashed-removal-older-than-a-matched-contact-change",
    ),
    pytest.param(
        replace(row("subscribed", "Added", mc_at=OLD, civi_at=OLD), trashed_removal_at=NEW),
        "4.1-trashed-removal-co-owner",
        False,
        None,
        (REMOVE, put("unsubscribed")),
        id="4.1-trashed-removal-outranks-an-older-co-owner-state",
    ),
    pytest.param(
        replace(row("subscribed", "Added", mc_at=OLD, civi_at=None), trashed_removal_at=NEW),
        "4.1-trashed-removal-co-owner",
        False,
        None,
        (REMOVE, put("unsubscribed")),
        id="4.1-trashed-removal-outranks-an-undated-co-owner-state",
    ),
    pytest.param(
        replace(
            row(
                "subscribed",
                "Added",
                mc_at=OLD,
                civi_at=OLD,
                siblings=(Sibling("b@x.org", "subscribed"),),
            ),
            trashed_removal_at=NEW,
        ),
        "4.1-trashed-removal-co-owner",
        False,
        None,
        (put("unsubscribed"),),
        id="4.1-trashed-removal-co-owner-stays-for-another-subscribed-email",
    ),
    pytest.param(
        replace(row("unsubscribed", "Added", mc_at=OLD, civi_at=OLD), trashed_removal_at=NEW),
        "4.1-trashed-removal-co-owner",
        False,
        None,
        (REMOVE,),
        id="4.1-trashed-removal-co-owner-leaves-the-group",
    ),
    pytest.param(
        replace(row("subscribed", "Added", mc_at=NEWER, civi_at=OLD), trashed_removal_at=NEW),
        "5.2-A1",
        True,
        None,
        (),
        id="4.1-subscribe-later-than-the-co-owner-removal",
    ),
    # --- §4.1 a privacy flag of a trashed owner of the address (DESIGN §4) ---
    pytest.param(
        replace(
            row("subscribed", None, contact_id=None, mc_at=OLD),
            trashed_flag_after=NEW,
            trashed_flag_by=NEWER,
        ),
        "4.1-trashed-privacy-flag",
        False,
        None,
        (put("unsubscribed"),),
        id="4.1-trashed-flag-later-unsubscribes",
    ),
    pytest.param(
        replace(
            row("subscribed", None, contact_id=None, mc_at=NEW),
            trashed_flag_after=None,
            trashed_flag_by=NEWER,
        ),
        "4.1-trashed-privacy-flag-order-unknown",
        False,
        Reason.ORDER_UNKNOWN,
        (),
        id="4.1-trashed-flag-of-unknown-time-reported",
    ),
    pytest.param(
        replace(
            row("subscribed", None, contact_id=None, mc_at=NEWER),
            trashed_flag_after=OLD,
            trashed_flag_by=NEW,
        ),
        "no-contact",
        True,
        Reason.NO_CONTACT,
        (),
        id="4.1-subscribe-later-than-a-trashed-flag",
    ),
    pytest.param(
        replace(
            row("unsubscribed", None, contact_id=None, mc_at=OLD),
            trashed_flag_after=NEW,
            trashed_flag_by=NEWER,
        ),
        "no-contact",
        False,
        None,
        (),
        id="4.1-trashed-flag-already-unsubscribed",
    ),
]


@pytest.mark.parametrize(("member", "rule", "final", "reason", "actions"), SUBSCRIPTION_CASES)
def test_subscription_table(
    member: MemberRow, rule: str, final: bool, reason: Reason | None, actions: tuple[Action, ...]
) -> None:
    decision = decide_subscription(member, POLICY)
    assert (decision.rule, decision.final_subscribed, decision.reason) == (rule, final, reason)
    assert decision.actions == actions


def test_newer_mailchimp_subscribe_of_flagged_contact_says_what_to_check() -> None:
    """The failure row names both times, so whoever reads `mcsync failures` can judge."""
    member = row("subscribed", "Added", is_opt_out=True, flags_at=OLD, **A)
    decision = reconcile_member(member, POLICY)
    assert (decision.rule, decision.actions, decision.interests) == (
        "privacy-newer-subscribe",
        (),
        (),
    )
    assert decision.detail is not None
    assert "2024-05-01 13:00" in decision.detail and "2024-05-01 12:00" in decision.detail
    assert "check the flag" in decision.detail


def test_newer_subscribe_of_flagged_contact_aborts_queued_writes() -> None:
    """Left alone means left alone: an older queued unsubscribe or data push is dropped."""
    queued = [QueuedUpdate(1, body("unsubscribed"))]
    decision = reconcile_member(
        row("subscribed", "Added", is_opt_out=True, flags_at=OLD, **A), POLICY
    )
    assert plan_queue(queued, decision) == QueuePlan((AbortUpdate(1, ABORT_NOT_SUBSCRIBED),))


def test_privacy_flags_can_be_ignored() -> None:
    policy = AudiencePolicy(group_id=GID, respect_privacy_flags=False)
    decision = decide_subscription(row(None, "Added", is_opt_out=True), policy)
    assert decision.rule == "5.2-B2" and decision.actions == (put("subscribed"),)


@pytest.mark.parametrize(
    ("prefer", "member", "rule", "actions"),
    [
        pytest.param(
            "mailchimp",
            row("unsubscribed", "Added", mc_at=T, civi_at=T),
            "5.2-A2",
            (REMOVE,),
            id="prefer-mailchimp-settles-a-tie",
        ),
        pytest.param(
            "civicrm",
            row("unsubscribed", "Added", mc_at=T, civi_at=T),
            "5.2-B3",
            (put("subscribed"),),
            id="prefer-civicrm-settles-a-tie",
        ),
        pytest.param(
            "mailchimp",
            row("subscribed", "Removed", mc_at=None, civi_at=OLD),
            "5.2-A3",
            (SetGroupStatus(CID, GID, "Added"),),
            id="prefer-mailchimp-settles-an-undated-mailchimp-status",
        ),
        pytest.param(
            "civicrm",
            row("subscribed", "Removed", **A),
            "5.2-A3",
            (SetGroupStatus(CID, GID, "Added"),),
            id="prefer-civicrm-never-overrides-a-newer-mailchimp-choice",
        ),
        pytest.param(
            "mailchimp",
            row("unsubscribed", "Added", **B),
            "5.2-B3",
            (put("subscribed"),),
            id="prefer-mailchimp-never-overrides-a-newer-civicrm-choice",
        ),
        pytest.param(
            "mailchimp",
            row(None, "Added", **B),
            "5.2-B2",
            (put("subscribed"),),
            id="prefer-mailchimp-never-removes-a-civicrm-only-contact",
        ),
    ],
)
def test_prefer_settles_only_conflicts_whose_order_is_unknown(
    prefer: Any, member: MemberRow, rule: str, actions: tuple[Action, ...]
) -> None:
    decision = decide_subscription(member, AudiencePolicy(group_id=GID, prefer=prefer))
    assert (decision.rule, decision.actions) == (rule, actions)


@pytest.mark.parametrize(
    ("civi_at", "mc_at", "at_mc", "winner"),
    [
        pytest.param(NEW, OLD, True, "civicrm", id="5.1-civi-newer"),
        pytest.param(OLD, NEW, True, "mailchimp", id="5.1-mc-newer"),
        pytest.param(T, T, True, "civicrm", id="5.1-tie-civicrm"),
        pytest.param(None, OLD, True, "mailchimp", id="5.1-no-civi-history-mailchimp"),
        pytest.param(OLD, None, False, "civicrm", id="5.1-not-at-mailchimp-civicrm"),
        pytest.param(None, None, False, "civicrm", id="5.1-neither-civicrm"),
    ],
)
def test_most_recent(
    civi_at: datetime | None, mc_at: datetime | None, at_mc: bool, winner: str
) -> None:
    assert most_recent(GroupState("Added", civi_at), mc_at, at_mailchimp=at_mc) == winner


def test_times_compare_across_zones() -> None:
    """13:30+01:00 is 12:30 UTC: older than NEW (13:00 UTC), so Mailchimp (NEW) wins."""
    from datetime import timezone

    civi = GroupState("Added", datetime(2024, 5, 1, 13, 30, tzinfo=timezone(timedelta(hours=1))))
    assert most_recent(civi, NEW, at_mailchimp=True) == "mailchimp"


def test_naive_times_are_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        GroupState("Added", datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        MailchimpSide(EMAIL, "subscribed", datetime(2024, 1, 1))


# ---- §5.3 interests (member ends subscribed: MC subscribed, CiviCRM Added) ----------------------


def interest_row(
    value: bool | None,
    value_at: datetime | None,
    group: str | None,
    group_at: datetime | None,
    **kw: Any,
) -> MemberRow:
    """A row with one mapped interest: MC value/time against the CiviCRM interest group."""
    mc, sub = kw.pop("mc", "subscribed"), kw.pop("sub", "Added")
    return row(mc, sub, interest=(value, value_at, group, group_at), **kw)


def data_put(**extra: Any) -> QueueMailchimpUpdate:
    return QueueMailchimpUpdate(EMAIL, {"email_address": EMAIL, **extra})


INTEREST_CASES = [
    pytest.param(
        interest_row(None, None, "Added", NEW), "5.3-I1-no-data", (), id="5.3-I1-no-mc-data-skipped"
    ),
    pytest.param(interest_row(True, OLD, "Added", NEW), "5.3-I2-equal", (), id="5.3-I2-equal-true"),
    pytest.param(
        interest_row(False, NEW, "Removed", OLD), "5.3-I2-equal", (), id="5.3-I2-equal-false"
    ),
    pytest.param(
        interest_row(False, NEW, None, None), "5.3-I2-equal", (), id="5.3-I2-equal-false-no-history"
    ),
    pytest.param(
        interest_row(True, NEW, "Removed", OLD),
        "5.3-I3",
        (SetGroupStatus(CID, IGID, "Added"),),
        id="5.3-I3-differ-mc-newer-add",
    ),
    pytest.param(
        interest_row(False, NEW, "Added", OLD),
        "5.3-I3",
        (SetGroupStatus(CID, IGID, "Removed"),),
        id="5.3-I3-differ-mc-newer-remove",
    ),
    pytest.param(
        interest_row(True, OLD, None, None),
        "5.3-I3",
        (SetGroupStatus(CID, IGID, "Added"),),
        id="5.3-I3-differ-civi-no-history-mc-wins",
    ),
    pytest.param(
        interest_row(True, OLD, "Removed", NEW),
        "5.3-I4",
        (data_put(interests={IID: False}),),
        id="5.3-I4-differ-civi-newer-push-false",
    ),
    pytest.param(
        interest_row(False, OLD, "Added", NEW),
        "5.3-I4",
        (data_put(interests={IID: True}),),
        id="5.3-I4-differ-civi-newer-push-true",
    ),
    pytest.param(
        interest_row(False, T, "Added", T),
        "5.3-I4",
        (data_put(interests={IID: True}),),
        id="5.3-I4-tie-goes-to-civicrm",
    ),
    pytest.param(
        interest_row(True, OLD, "Pending", NEW),
        "5.3-civicrm-pending",
        (),
        id="5.3-civi-pending-left-alone",
    ),
    # --- §4.1 a removal from the interest's group made before a contact was trashed ---
    pytest.param(
        replace(interest_row(True, OLD, None, None), trashed_interest_removals={IGID: NEW}),
        "4.1-trashed-interest-removal",
        (data_put(interests={IID: False}),),
        id="4.1-trashed-interest-removal-newer-not-added-interest-off",
    ),
    pytest.param(
        replace(interest_row(True, NEW, None, None), trashed_interest_removals={IGID: NEW}),
        "4.1-trashed-interest-removal",
        (data_put(interests={IID: False}),),
        id="4.1-trashed-interest-removal-tie-goes-to-civicrm",
    ),
    pytest.param(
        replace(interest_row(True, NEW, None, None), trashed_interest_removals={IGID: OLD}),
        "5.3-I3",
        (SetGroupStatus(CID, IGID, "Added"),),
        id="4.1-trashed-interest-removal-older-than-tick-tick-wins",
    ),
    pytest.param(
        replace(interest_row(False, OLD, None, None), trashed_interest_removals={IGID: NEW}),
        "4.1-trashed-interest-removal",
        (),
        id="4.1-trashed-interest-removal-interest-already-off",
    ),
    pytest.param(
        replace(interest_row(True, OLD, "Added", OLD), trashed_interest_removals={IGID: NEW}),
        "4.1-trashed-interest-removal",
        (SetGroupStatus(CID, IGID, "Removed"), data_put(interests={IID: False})),
        id="4.1-trashed-interest-removal-outranks-co-owner-older-state",
    ),
    pytest.param(
        replace(interest_row(True, OLD, "Added", None), trashed_interest_removals={IGID: NEW}),
        "4.1-trashed-interest-removal",
        (SetGroupStatus(CID, IGID, "Removed"), data_put(interests={IID: False})),
        id="4.1-trashed-interest-removal-outranks-co-owner-undated-state",
    ),
    pytest.param(
        replace(interest_row(True, OLD, "Added", NEWER), trashed_interest_removals={IGID: NEW}),
        "5.3-I2-equal",
        (),
        id="4.1-trashed-interest-removal-co-owner-later-add-wins",
    ),
    pytest.param(
        replace(interest_row(None, None, None, None), trashed_interest_removals={IGID: NEW}),
        "5.3-I1-no-data",
        (),
        id="4.1-trashed-interest-removal-no-mc-data-left-alone",
    ),
]


@pytest.mark.parametrize(("member", "rule", "actions"), INTEREST_CASES)
def test_interest_table(member: MemberRow, rule: str, actions: tuple[Action, ...]) -> None:
    decision = reconcile_member(member, POLICY)
    assert [o.rule for o in decision.interests] == [rule]
    assert decision.actions == actions


def test_interest_uses_its_own_change_time_not_last_changed() -> None:
    """v2 per-field times: a name change at Mailchimp (last_changed NEW) does not make
    Mailchimp win an interest it last changed at OLD (seed §12)."""
    member = interest_row(True, OLD, "Removed", T + timedelta(minutes=30), mc_at=NEW)
    assert reconcile_member(member, POLICY).actions == (data_put(interests={IID: False}),)


def test_interest_falls_back_to_last_changed() -> None:
    member = interest_row(True, None, "Removed", OLD, mc_at=NEW)
    assert reconcile_member(member, POLICY).actions == (SetGroupStatus(CID, IGID, "Added"),)


def test_prefer_settles_an_interest_tie_and_never_a_known_order() -> None:
    policy = AudiencePolicy(group_id=GID, interest_groups={IID: IGID}, prefer="civicrm")
    tie = interest_row(True, T, "Removed", T)
    assert reconcile_member(tie, policy).actions == (data_put(interests={IID: False}),)
    newer_at_mailchimp = interest_row(True, NEW, "Removed", OLD)
    assert reconcile_member(newer_at_mailchimp, policy).actions == (
        SetGroupStatus(CID, IGID, "Added"),
    )


@pytest.mark.parametrize(
    "member",
    [
        pytest.param(
            interest_row(True, NEW, "Removed", OLD, mc="subscribed", sub="Removed", **B),
            id="5.3-skipped-when-unsubscribing-B5",
        ),
        pytest.param(
            interest_row(True, NEW, "Removed", OLD, mc="unsubscribed", **A),
            id="5.3-skipped-when-removed-A2",
        ),
        pytest.param(
            interest_row(True, NEW, "Removed", OLD, is_opt_out=True), id="5.3-skipped-privacy-flags"
        ),
    ],
)
def test_interests_only_while_subscribed(member: MemberRow) -> None:
    decision = reconcile_member(member, POLICY)
    assert decision.interests == ()
    assert not any(isinstance(a, SetGroupStatus) and a.group_id == IGID for a in decision.actions)


def test_new_member_gets_civicrm_interests_in_create_body() -> None:
    member = interest_row(None, None, "Added", OLD, mc=None)
    assert reconcile_member(member, POLICY).actions == (put("subscribed", interests={IID: True}),)


def test_resubscribe_carries_interests_in_one_body() -> None:
    member = interest_row(False, OLD, "Added", NEW, mc="unsubscribed", **B)
    assert reconcile_member(member, POLICY).actions == (put("subscribed", interests={IID: True}),)


def test_mc_newer_subscription_and_interest_both_update_civicrm() -> None:
    member = interest_row(True, NEW, "Removed", OLD, sub="Removed", **A)
    assert reconcile_member(member, POLICY).actions == (ADD, SetGroupStatus(CID, IGID, "Added"))


# ---- §10 merge fields: CiviCRM → Mailchimp only, while subscribed -------------------------------


@pytest.mark.parametrize(
    ("mc", "sub", "merge", "actions"),
    [
        pytest.param(
            "subscribed", "Added", ({"FNAME": "Ann"}, {"FNAME": "Ann"}), (), id="10-equal-nothing"
        ),
        pytest.param(
            "subscribed",
            "Added",
            ({"FNAME": "An"}, {"FNAME": "Ann"}),
            (data_put(merge_fields={"FNAME": "Ann"}),),
            id="10-differ-pushed",
        ),
        pytest.param(
            "pending",
            "Added",
            ({"FNAME": "Ann"}, {"FNAME": ""}),
            (),
            id="10-empty-civicrm-value-never-wipes",
        ),
        pytest.param(
            "subscribed",
            "Removed",
            ({"FNAME": "An"}, {"FNAME": "Ann"}),
            (put("unsubscribed"),),
            id="10-not-sent-when-unsubscribing",
        ),
        pytest.param(
            None,
            "Added",
            ({}, {"FNAME": "Ann"}),
            (put("subscribed", merge_fields={"FNAME": "Ann"}),),
            id="10-in-create-body",
        ),
    ],
)
def test_merge_fields(mc: str | None, sub: str, merge: Any, actions: tuple[Action, ...]) -> None:
    decision = reconcile_member(row(mc, sub, merge=merge, **B), AudiencePolicy(group_id=GID))
    assert decision.actions == actions


def test_a_data_update_never_creates_a_member() -> None:
    """A pending member's name change: no status (a status named again would send another
    confirmation) and no `status_if_new` (a member deleted or moved since the read would be
    created afresh, pending or subscribed)."""
    decision = reconcile_member(
        row("pending", "Added", merge=({}, {"FNAME": "Ann"})), AudiencePolicy(group_id=GID)
    )
    update = decision.mailchimp_update
    assert update is not None
    assert "status" not in update.body and "status_if_new" not in update.body


# ---- §4.4 best email -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("emails", "best"),
    [
        pytest.param(
            [EmailRecord("p@x.org", is_primary=True), EmailRecord("b@x.org", is_bulkmail=True)],
            "b@x.org",
            id="4.4-bulk-before-primary",
        ),
        pytest.param(
            [EmailRecord("o@x.org"), EmailRecord("p@x.org", is_primary=True)],
            "p@x.org",
            id="4.4-primary-before-other",
        ),
        pytest.param(
            [
                EmailRecord("b@x.org", on_hold=1, is_bulkmail=True),
                EmailRecord("p@x.org", is_primary=True),
            ],
            "p@x.org",
            id="4.4-bulk-on-hold-skipped",
        ),
        pytest.param(
            [EmailRecord("p@x.org", on_hold=2, is_primary=True)],
            None,
            id="4.4-opt-out-hold-never-used",
        ),
        pytest.param([EmailRecord(""), EmailRecord("o@x.org")], "o@x.org", id="4.4-empty-skipped"),
        pytest.param(
            [EmailRecord("first@x.org"), EmailRecord("second@x.org")],
            "first@x.org",
            id="4.4-ties-keep-caller-order",
        ),
        pytest.param([EmailRecord(" sp@x.org ")], "sp@x.org", id="4.4-whitespace-trimmed"),
        pytest.param([], None, id="4.4-none"),
    ],
)
def test_choose_best_email(emails: list[EmailRecord], best: str | None) -> None:
    assert choose_best_email(emails) == best


# ---- §4.2 matching, §4.3 creation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidates", "expected"),
    [
        pytest.param([Candidate(9)], Match(9, MatchRule.SOLE_OWNER), id="4.2-1-sole-owner"),
        pytest.param(
            [Candidate(9), Candidate(9, in_group=True)],
            Match(9, MatchRule.SOLE_OWNER),
            id="4.2-1-sole-owner-several-records",
        ),
        pytest.param(
            [Candidate(9), Candidate(3, is_deleted=True, in_group=True)],
            Match(9, MatchRule.SOLE_OWNER),
            id="4.2-1-deleted-owner-ignored",
        ),
        pytest.param(
            [Candidate(2), Candidate(9, in_group=True), Candidate(5, in_group=True)],
            Match(5, MatchRule.IN_GROUP),
            id="4.2-2-lowest-id-added-to-group",
        ),
        pytest.param(
            [
                Candidate(2),
                Candidate(8, has_group_history=True),
                Candidate(6, has_group_history=True),
            ],
            Match(6, MatchRule.WITH_HISTORY),
            id="4.2-3-lowest-id-with-group-history",
        ),
        pytest.param(
            [Candidate(9), Candidate(4)], Match(4, MatchRule.LOWEST_ID), id="4.2-4-lowest-id"
        ),
        pytest.param(
            [Candidate(1, is_deleted=True), Candidate(2, is_deleted=True)],
            None,
            id="4.2-only-deleted-none",
        ),
        pytest.param([], None, id="4.2-no-owner"),
    ],
)
def test_matching_order(candidates: list[Candidate], expected: Match | None) -> None:
    assert choose_contact(candidates) == expected


@pytest.mark.parametrize(
    ("status", "create"),
    [
        ("subscribed", True),
        ("pending", True),
        ("unsubscribed", False),
        ("cleaned", False),
        ("archived", False),
        ("transactional", False),
        (None, False),
    ],
    ids=lambda v: f"4.3-{v}",
)
def test_contacts_created_only_for_subscribed_or_pending(status: str | None, create: bool) -> None:
    assert should_create_contact(status) is create


@pytest.mark.parametrize(
    ("status", "subscribed_at", "removed_at", "create"),
    [
        ("subscribed", OLD, NEW, False),
        ("pending", OLD, NEW, False),
        ("subscribed", NEW, NEW, False),  # a tie goes to CiviCRM
        ("subscribed", None, OLD, False),  # an unknown Mailchimp time loses
        ("subscribed", NEW, OLD, True),
        ("subscribed", OLD, None, True),  # trash alone is no choice (seed §4.1)
        ("unsubscribed", NEW, OLD, False),
    ],
    ids=[
        "removal-newer",
        "removal-newer-than-pending",
        "tie",
        "subscribe-time-unknown",
        "subscribe-newer",
        "no-removal",
        "not-subscribed",
    ],
)
def test_no_contact_created_over_a_newer_removal_by_a_trashed_contact(
    status: str, subscribed_at: datetime | None, removed_at: datetime | None, create: bool
) -> None:
    """A contact created for the member would be Added: not when a trashed owner of the
    address was removed from the group later than the subscribe (DESIGN §4)."""
    assert should_create_contact(status, subscribed_at, removed_at) is create


@pytest.mark.parametrize(
    ("after", "by", "status_time", "status_after", "order"),
    [
        (None, None, OLD, None, None),
        (NEW, NEWER, OLD, None, TrashedFlagOrder.FLAG_LATER),
        (OLD, NEW, OLD, None, TrashedFlagOrder.FLAG_LATER),  # a tie goes to CiviCRM
        (OLD, NEW, NEWER, None, TrashedFlagOrder.SUBSCRIBE_LATER),
        (OLD, NEW, NEW, None, TrashedFlagOrder.UNKNOWN),  # may be set in the same second
        (None, NEWER, OLD, None, TrashedFlagOrder.UNKNOWN),  # never seen unflagged
        (OLD, NEWER, NEW, None, TrashedFlagOrder.UNKNOWN),
        (None, OLD, NEWER, NEW, TrashedFlagOrder.SUBSCRIBE_LATER),
        (None, NEW, NEWER, OLD, TrashedFlagOrder.UNKNOWN),  # status changed after OLD, by NEWER
        (NEW, NEWER, None, None, TrashedFlagOrder.FLAG_LATER),  # unknown Mailchimp time loses
        # A possible round trip: known at OLD, or changed again after NEWER (seed 203).
        (None, NEW, OLD, NEWER, TrashedFlagOrder.UNKNOWN),
        (None, OLD, NEW, NEWER, TrashedFlagOrder.SUBSCRIBE_LATER),  # later either way
    ],
)
def test_order_of_a_trashed_contacts_privacy_flag(
    after: datetime | None,
    by: datetime | None,
    status_time: datetime | None,
    status_after: datetime | None,
    order: TrashedFlagOrder | None,
) -> None:
    """Trashing moves a contact's modified_date: its flag was set after mcsync last saw it
    unflagged and by the flag's upper bound. Only a known order acts (DESIGN §4)."""
    assert trashed_flag_order(after, by, status_time, status_after) == order
    if order is not None:
        create = should_create_contact("subscribed", status_time, None, order)
        assert create is (order == TrashedFlagOrder.SUBSCRIBE_LATER)


# ---- §5.5 email changes in CiviCRM --------------------------------------------------------------

NEW_EMAIL = "ann.new@example.org"
BULK_NEW = (EmailRecord(EMAIL, is_primary=True), EmailRecord(NEW_EMAIL, is_bulkmail=True))


@pytest.mark.parametrize(
    ("member", "change"),
    [
        pytest.param(
            row("subscribed", "Added", emails=BULK_NEW),
            ChangeMemberEmail(EMAIL, NEW_EMAIL),
            id="5.5-best-email-differs-patched",
        ),
        pytest.param(
            row("subscribed", "Added", emails=(EmailRecord(EMAIL.upper(), is_primary=True),)),
            None,
            id="5.5-case-only-difference-ignored",
        ),
        pytest.param(
            row("pending", "Added", emails=BULK_NEW), None, id="5.5-only-subscribed-members"
        ),
        pytest.param(
            row("cleaned", "Added", emails=BULK_NEW), None, id="5.5-cleaned-cannot-change"
        ),
        pytest.param(
            row("subscribed", "Added", emails=HELD), None, id="5.5-no-usable-email-no-change"
        ),
        pytest.param(
            row(
                "subscribed",
                "Added",
                emails=BULK_NEW,
                siblings=(Sibling(NEW_EMAIL, "unsubscribed"),),
            ),
            None,
            id="5.5-new-address-has-own-member",
        ),
        pytest.param(
            row("subscribed", "Added", emails=BULK_NEW, do_not_email=True),
            None,
            id="5.5-privacy-flagged-no-change",
        ),
    ],
)
def test_email_change(member: MemberRow, change: ChangeMemberEmail | None) -> None:
    assert decide_email_change(member, POLICY) == change


# ---- §5.4 / §7 batch results, compliance → pending ----------------------------------------------

COMPLIANCE = "Member In Compliance State"


@pytest.mark.parametrize(
    ("sent", "code", "title", "detail", "kind", "reason", "blocks"),
    [
        pytest.param(body("subscribed"), 200, "", "", "ok", None, False, id="7-200-ok"),
        pytest.param(
            body("subscribed"),
            400,
            COMPLIANCE,
            "in a compliance state",
            "retry",
            None,
            False,
            id="5.4-compliance-on-subscribed-retries-pending",
        ),
        pytest.param(
            body("pending"),
            400,
            COMPLIANCE,
            "in a compliance state",
            "failed",
            Reason.COMPLIANCE,
            True,
            id="5.4-compliance-on-pending-retry-fails-once",
        ),
        pytest.param(
            body("subscribed"),
            400,
            "Forgotten Email Not Subscribed",
            "",
            "failed",
            Reason.FORGOTTEN,
            True,
            id="5.4-forgotten-email-permanent",
        ),
        pytest.param(
            body("subscribed"),
            400,
            "Invalid Resource",
            f"{EMAIL} looks fake or invalid, please enter a real email address.",
            "failed",
            Reason.INVALID_EMAIL,
            True,
            id="5.4-invalid-email",
        ),
        pytest.param(
            body("subscribed"),
            400,
            "Member Exists",
            "",
            "failed",
            Reason.MEMBER_EXISTS,
            False,
            id="5.4-member-exists",
        ),
        pytest.param(
            body("subscribed"),
            400,
            "Invalid Resource",
            "Your merge fields were invalid.",
            "failed",
            Reason.MAILCHIMP_ERROR,
            False,
            id="5.4-other-error-recorded",
        ),
        pytest.param(
            body("unsubscribed"),
            500,
            "Internal Server Error",
            "",
            "failed",
            Reason.MAILCHIMP_ERROR,
            False,
            id="7-server-error-recorded",
        ),
    ],
)
def test_apply_batch_result(
    sent: dict[str, Any],
    code: int,
    title: str,
    detail: str,
    kind: str,
    reason: Reason | None,
    blocks: bool,
) -> None:
    outcome = apply_batch_result(sent, code, title=title, detail=detail)
    assert outcome.kind == kind
    if reason is None:
        assert outcome.failure is None
    else:
        assert outcome.failure is not None
        assert (outcome.failure.reason, outcome.failure.blocks_resubscribe) == (reason, blocks)
        assert (outcome.failure.title, outcome.failure.detail, outcome.failure.status_code) == (
            title,
            detail,
            code,
        )


def test_compliance_retry_body_keeps_data_and_asks_pending() -> None:
    sent = body("subscribed", interests={IID: True}, merge_fields={"FNAME": "Ann"})
    outcome = apply_batch_result(sent, 400, title=COMPLIANCE)
    assert outcome.retry_body == body(
        "pending", interests={IID: True}, merge_fields={"FNAME": "Ann"}
    )


def test_success_with_other_status_asks_for_recheck() -> None:
    """A write that leaves the member cleaned: reconcile again, so the email goes on hold."""
    assert apply_batch_result(body("subscribed"), 200, member_status="cleaned").recheck
    assert not apply_batch_result(body("subscribed"), 200, member_status="subscribed").recheck


# ---- issue #10 and "unsubscribe aborts update": the queue --------------------------------------


def test_queued_pending_is_never_replaced_by_subscribed() -> None:
    """testBatchWebhookHandlesComplianceFailures: the pending retry is still unsubmitted when
    the row is reconciled again; the new subscribe replaces it but stays pending."""
    member = interest_row(False, OLD, "Added", NEW, mc="unsubscribed")
    decision = reconcile_member(member, POLICY)
    same_retry = QueuedUpdate(41, body("pending", interests={IID: True}))
    assert plan_queue([same_retry], decision) == QueuePlan()
    older_retry = QueuedUpdate(42, body("pending"))
    assert plan_queue([older_retry], decision) == QueuePlan(
        (AbortUpdate(42, ABORT_SUPERSEDED),), put("pending", interests={IID: True})
    )


def test_keep_pending_only_turns_subscribed_into_pending() -> None:
    queued = [QueuedUpdate(1, body("pending"))]
    assert keep_pending(queued, put("subscribed")) == put("pending")
    assert keep_pending(queued, put("unsubscribed")) == put("unsubscribed")
    assert keep_pending([QueuedUpdate(1, body("unsubscribed"))], put("subscribed")) == put(
        "subscribed"
    )


@pytest.mark.parametrize(
    "member",
    [
        pytest.param(
            row("unsubscribed", "Added", **A), id="unsubscribe-at-mc-aborts-unsubmitted-subscribe"
        ),
        pytest.param(
            row("unsubscribed", "Removed", **B), id="civi-removal-aborts-unsubmitted-subscribe"
        ),
        pytest.param(row("cleaned", "Added", **A), id="cleaned-aborts-unsubmitted-subscribe"),
    ],
)
def test_not_subscribed_aborts_every_unsubmitted_update(member: MemberRow) -> None:
    queued = [
        QueuedUpdate(1, body("subscribed")),
        QueuedUpdate(2, {"email_address": EMAIL, "interests": {IID: True}}),
    ]
    plan = plan_queue(queued, reconcile_member(member, POLICY))
    assert plan.abort == (
        AbortUpdate(1, ABORT_NOT_SUBSCRIBED),
        AbortUpdate(2, ABORT_NOT_SUBSCRIBED),
    )
    assert plan.enqueue is None


def test_unsubscribe_decision_replaces_queued_subscribe() -> None:
    plan = plan_queue(
        [QueuedUpdate(1, body("subscribed"))],
        reconcile_member(row("subscribed", "Removed"), POLICY),
    )
    assert plan == QueuePlan((AbortUpdate(1, ABORT_NOT_SUBSCRIBED),), put("unsubscribed"))


def test_stale_queued_updates_superseded_when_already_in_sync() -> None:
    """A pending retry would demote a member who re-subscribed meanwhile; a queued interest
    value would overwrite the member's newer choice (it is recomputed from current state)."""
    stale_retry = QueuedUpdate(1, body("pending"))
    stale_interest = QueuedUpdate(2, {**data_put(interests={IID: True}).body})
    member = interest_row(False, NEW, "Removed", OLD)  # MC newer: the member chose False
    plan = plan_queue([stale_retry, stale_interest], reconcile_member(member, POLICY))
    assert plan == QueuePlan(
        (AbortUpdate(1, ABORT_SUPERSEDED), AbortUpdate(2, ABORT_SUPERSEDED)), None
    )


def test_identical_unsubmitted_update_is_kept_not_requeued() -> None:
    same = QueuedUpdate(5, body("subscribed"))
    plan = plan_queue([same], reconcile_member(row("unsubscribed", "Added"), POLICY))
    assert plan == QueuePlan()


def test_an_unorderable_conflict_is_reported_unless_a_side_is_preferred() -> None:
    """A Mailchimp unsubscribe known only to lie between OLD and NEWER, and a CiviCRM Add at
    NEW inside that window: `latest` cannot order them and leaves both alone (reported);
    `prefer` names the winner."""
    member = row("unsubscribed", "Added", mc_at=NEWER, civi_at=NEW)
    member = dataclasses.replace(
        member, mailchimp=dataclasses.replace(member.mailchimp, status_changed_after=OLD)
    )
    latest = decide_subscription(member, AudiencePolicy(group_id=GID))
    assert (latest.rule, latest.actions, latest.reason) == (
        "order-unknown",
        (),
        Reason.ORDER_UNKNOWN,
    )
    mailchimp = decide_subscription(member, AudiencePolicy(group_id=GID, prefer="mailchimp"))
    assert mailchimp.actions == (REMOVE,)
    civicrm = decide_subscription(member, AudiencePolicy(group_id=GID, prefer="civicrm"))
    assert civicrm.actions == (put("subscribed"),)


def test_agreeing_sides_need_no_order() -> None:
    """The same window as above, but both sides say "in": nothing to write, nothing to
    report, whatever the order."""
    member = row("subscribed", "Added", mc_at=NEWER, civi_at=NEW)
    member = dataclasses.replace(
        member, mailchimp=dataclasses.replace(member.mailchimp, status_changed_after=OLD)
    )
    decision = decide_subscription(member, AudiencePolicy(group_id=GID))
    assert (decision.actions, decision.reason) == ((), None)
