"""Paired Mailchimp/CiviCRM data for the demo, tests and benchmarks, deterministic for a seed.

``generate`` first draws every person's attributes into compact arrays (a few bytes each, so a
million people fit in ~20 MB), then streams them into the simulators' bulk seeding methods. The
default mix is what a real organisation has after years of imperfect syncing: most people on both
sides, some on one side only, every Mailchimp status, CiviCRM Added/Removed with history, and the
odd cases the sync rules exist for (shared emails, trashed/deceased/opted-out contacts, emails on
hold, a second email subscribed, mixed-case emails, unicode names). ``agree=True`` gives the
already-in-sync audience of the "full" benchmark. ``mutate`` makes a share of people change
their minds on each side, as churn between two sync runs.
"""

from __future__ import annotations

import random
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import compress
from typing import Any

from mcsync.sim.civicrm import CiviSim
from mcsync.sim.mailchimp import MailchimpSim

# (display, ascii for the email) — unicode names on purpose.
FIRST_NAMES = (
    ("Anna", "anna"), ("José", "jose"), ("Zoë", "zoe"), ("李", "li"), ("Mohammed", "mohammed"),
    ("Siobhán", "siobhan"), ("Łukasz", "lukasz"), ("Chloé", "chloe"), ("Olu", "olu"),
    ("Priya", "priya"), ("Björn", "bjorn"), ("Mary", "mary"), ("David", "david"),
    ("Nguyễn", "nguyen"), ("Fatima", "fatima"), ("Sam", "sam"), ("Renée", "renee"),
    ("Tomás", "tomas"), ("Aiko", "aiko"), ("Grace", "grace"),
)  # fmt: skip
LAST_NAMES = (
    ("Smith", "smith"), ("García", "garcia"), ("O'Brien", "obrien"), ("王", "wang"),
    ("Müller", "muller"), ("Okafor", "okafor"), ("Nowak", "nowak"), ("Jones", "jones"),
    ("Dubois", "dubois"), ("Kowalska", "kowalska"), ("Ahmed", "ahmed"), ("Sørensen", "sorensen"),
    ("Brown", "brown"), ("Tanaka", "tanaka"), ("Patel", "patel"), ("Ó Súilleabháin", "osullivan"),
)  # fmt: skip
DOMAINS = ("example.org", "example.com", "example.net", "mail.example.org")
INTEREST_NAMES = ("Events", "Campaign news", "Local groups", "Volunteering", "Fundraising",
                  "Research", "Press releases", "Youth")  # fmt: skip
MC_STATUSES = ("subscribed", "unsubscribed", "cleaned", "pending", "transactional", "archived")
# Cumulative thresholds of the Mailchimp status mix (subscribed 72%, unsubscribed 10%, ...).
_MC_MIX = (0.72, 0.82, 0.86, 0.90, 0.95, 1.0)
DEFAULT_ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)
# Ages are drawn as 16-bit numbers of units spanning two years; the unit is about 16 minutes.
_AGE_UNIT = 730 * 86400 // 65536
# CiviCRM history dates come in four waves (days before the anchor): old imports to recent edits.
_HISTORY_WAVES = (600, 365, 120, 30)

BOTH, MC_ONLY, CIVI_ONLY = 0, 1, 2
NONE, ADDED, REMOVED = 0, 1, 2
NO_MC = 255

# Odd-case flags on a person's CiviCRM contact (and their Mailchimp member, for the email ones).
DECEASED, NO_EMAIL_OK, OPT_OUT, DELETED = 1, 2, 4, 8
HOLD_BOUNCE, HOLD_OPT_OUT, MIXED_CIVI, MIXED_MC = 16, 32, 64, 128
SHARED, SECOND_EMAIL, HISTORY, NAME_DRIFT, NO_EMAIL = 256, 512, 1024, 2048, 4096
# (flag, chance among people with a contact) for the non-agreeing mix.
_ODD_CASES = (
    (DECEASED, 0.01), (NO_EMAIL_OK, 0.015), (OPT_OUT, 0.015), (DELETED, 0.01),
    (HOLD_BOUNCE, 0.01), (HOLD_OPT_OUT, 0.003), (MIXED_CIVI, 0.03), (SHARED, 0.01),
)  # fmt: skip
# (flag, chance among people on both sides).
_BOTH_SIDES_CASES = ((MIXED_MC, 0.02), (SECOND_EMAIL, 0.005), (NAME_DRIFT, 0.03))
_UNSYNCABLE = DECEASED | NO_EMAIL_OK | OPT_OUT | DELETED | HOLD_BOUNCE | HOLD_OPT_OUT | NO_EMAIL


@dataclass
class People:
    """Per-person attributes as compact arrays, indexed by person number."""

    first: bytearray = field(default_factory=bytearray)  # index in FIRST_NAMES
    last: bytearray = field(default_factory=bytearray)  # index in LAST_NAMES
    side: bytearray = field(default_factory=bytearray)
    mc_status: bytearray = field(default_factory=bytearray)  # index in MC_STATUSES or NO_MC
    civi_status: bytearray = field(default_factory=bytearray)  # NONE, ADDED or REMOVED
    flags: array[int] = field(default_factory=lambda: array("H"))
    mc_interests: bytearray = field(default_factory=bytearray)  # bit i = interest i
    civi_interests: bytearray = field(default_factory=bytearray)
    age: array[int] = field(default_factory=lambda: array("H"))  # in _AGE_UNITs before anchor
    contact_ids: array[int] = field(default_factory=lambda: array("q"))  # 0 = no contact

    def __len__(self) -> int:
        return len(self.side)

    def email(self, i: int) -> str:
        """The person's canonical (lower-case) email; unique per person."""
        return f"{FIRST_NAMES[self.first[i]][1]}.{LAST_NAMES[self.last[i]][1]}{i}@{DOMAINS[i & 3]}"

    def last_changed(self, i: int, anchor: datetime) -> datetime:
        return anchor - timedelta(seconds=self.age[i] * _AGE_UNIT + i % _AGE_UNIT)

    def names(self, i: int) -> tuple[str, str]:
        return FIRST_NAMES[self.first[i]][0], LAST_NAMES[self.last[i]][0]


@dataclass
class AudienceSpec:
    """What ``generate`` made: ids to configure mcsync with, and counts to assert on."""

    list_id: str
    group_id: int
    interest_ids: dict[str, int]  # Mailchimp interest id -> CiviCRM group id
    interest_category_id: str
    merge_fields: dict[str, str]  # Mailchimp merge tag -> CiviCRM contact field
    members: int
    anchor: datetime
    counts: dict[str, int] = field(default_factory=dict)
    people: People = field(default_factory=People, repr=False)

    def audience_config(self, account: str = "main") -> dict[str, Any]:
        """The ``[[audience]]`` table of an mcsync config for this audience."""
        return {
            "account": account,
            "list_id": self.list_id,
            "group_id": self.group_id,
            "interests": dict(self.interest_ids),
            "merge_fields": dict(self.merge_fields),
        }


def generate(
    mc: MailchimpSim,
    civi: CiviSim,
    *,
    api_key: str,
    members: int,
    seed: int = 1,
    overlap: float = 0.7,
    agree: bool = False,
    interests: int = 2,
    list_name: str = "Newsletter",
    anchor: datetime = DEFAULT_ANCHOR,
) -> AudienceSpec:
    """Create a Mailchimp audience and its CiviCRM groups, then ``members`` people on them.

    Dates (``last_changed``, history) fall in the two years before ``anchor``, so a simulator
    whose clock reads earlier than it should pass an earlier ``anchor``.
    """
    if members < 0 or not 0.0 <= overlap <= 1.0:
        raise ValueError("members must be >= 0 and overlap between 0 and 1")
    if not 0 <= interests <= len(INTEREST_NAMES):
        raise ValueError(f"interests must be between 0 and {len(INTEREST_NAMES)}")
    rng = random.Random(seed)
    spec = _create_containers(mc, civi, api_key, interests, list_name, anchor)
    spec.members = members
    mc_interest_ids = list(spec.interest_ids)
    spec.people = _draw_people(rng, members, overlap, agree, len(mc_interest_ids))
    mc.seed_members(spec.list_id, _mailchimp_rows(spec, mc_interest_ids))
    _seed_civicrm(civi, spec, rng)
    spec.counts = _count(spec)
    return spec


def _create_containers(
    mc: MailchimpSim,
    civi: CiviSim,
    api_key: str,
    interests: int,
    list_name: str,
    anchor: datetime,
) -> AudienceSpec:
    mc.add_account(api_key)
    list_id = mc.add_list(api_key, list_name)
    category_id = mc.add_interest_category(list_id, "Topics")
    group_id = civi.add_group(f"{list_name} (Mailchimp)")
    interest_ids: dict[str, int] = {}
    for name in INTEREST_NAMES[:interests]:
        interest_id = mc.add_interest(list_id, category_id, name)
        interest_ids[interest_id] = civi.add_group(f"{list_name}: {name}")
    return AudienceSpec(
        list_id=list_id,
        group_id=group_id,
        interest_ids=interest_ids,
        interest_category_id=category_id,
        merge_fields={"FNAME": "first_name", "LNAME": "last_name"},
        members=0,
        anchor=anchor,
    )


def _byte_table(value_of: Callable[[float], int]) -> bytes:
    """A ``bytes.translate`` table turning a uniform random byte into a drawn value."""
    return bytes(value_of((b + 0.5) / 256) for b in range(256))


def _draw_people(rng: random.Random, n: int, overlap: float, agree: bool, k: int) -> People:
    """Draw the population column by column from random bytes (C speed, ~1 s per million)."""
    nf, nl, top = len(FIRST_NAMES), len(LAST_NAMES), 1 << k
    people = People(
        first=bytearray(rng.randbytes(n).translate(_byte_table(lambda u: int(u * nf)))),
        last=bytearray(rng.randbytes(n).translate(_byte_table(lambda u: int(u * nl)))),
        age=array("H", rng.randbytes(2 * n)),
        mc_interests=bytearray(rng.randbytes(n).translate(_byte_table(lambda u: int(u * top)))),
        flags=array("H", bytes(2 * n)),
        contact_ids=array("q", bytes(8 * n)),
    )
    if agree:  # everyone subscribed at Mailchimp and Added in CiviCRM, same interests
        people.side = bytearray(n)
        people.mc_status = bytearray(n)
        people.civi_status = bytearray([ADDED]) * n
        people.civi_interests = bytearray(people.mc_interests)
        return people
    edges = (overlap, (1 + overlap) / 2)
    people.side = side = bytearray(
        rng.randbytes(n).translate(_byte_table(lambda u: bisect_right(edges, u)))
    )
    mc_status = bytearray(
        rng.randbytes(n).translate(_byte_table(lambda u: bisect_right(_MC_MIX, u)))
    )
    rolls = rng.randbytes(n)
    people.civi_status = bytearray(
        [_CIVI_TABLE[(s * 6 + m) << 8 | r] for s, m, r in zip(side, mc_status, rolls, strict=True)]
    )
    for i in compress(range(n), side.translate(_IS_CIVI_ONLY)):
        mc_status[i] = NO_MC
    people.mc_status = mc_status
    people.civi_interests = bytearray(people.mc_interests)
    for i in rng.sample(range(n), n // 10):  # interests that drifted apart
        people.civi_interests[i] = rng.randrange(top)
    _draw_odd_cases(people, rng)
    return people


def _draw_odd_cases(people: People, rng: random.Random) -> None:
    """Flag a fixed share of the right people with each odd case."""
    n = len(people)
    side, flags = people.side, people.flags
    contacts = [i for i in range(n) if side[i] != MC_ONLY]

    def flag_share(candidates: list[int], flag: int, chance: float) -> None:
        for i in rng.sample(candidates, round(chance * len(candidates))):
            flags[i] |= flag

    for flag, chance in _ODD_CASES:
        flag_share(contacts, flag, chance)
    both = [i for i in contacts if side[i] == BOTH]
    for flag, chance in _BOTH_SIDES_CASES:
        flag_share(both, flag, chance)
    cleaned = MC_STATUSES.index("cleaned")
    # Cleaned at Mailchimp and already put on hold by an earlier sync.
    flag_share([i for i in contacts if people.mc_status[i] == cleaned], HOLD_BOUNCE, 0.5)
    flag_share([i for i in contacts if side[i] == CIVI_ONLY], NO_EMAIL, 0.01)
    flag_share([i for i in contacts if people.civi_status[i] == REMOVED], HISTORY, 0.05)
    flag_share([i for i in range(n) if side[i] == MC_ONLY], MIXED_MC, 0.03)
    email_cases = HOLD_BOUNCE | HOLD_OPT_OUT | MIXED_CIVI | SHARED | SECOND_EMAIL
    for i in contacts:
        if flags[i] & NO_EMAIL:
            flags[i] &= ~email_cases


def _civi_status(side: int, mc_status: int, roll: float) -> int:
    """Mostly agreeing with Mailchimp, with the drift that a sync has to settle."""
    if side == MC_ONLY:
        return NONE
    if side == CIVI_ONLY:
        return ADDED if roll < 0.75 else REMOVED
    name = MC_STATUSES[mc_status]
    if name in ("subscribed", "pending"):
        return ADDED if roll < 0.9 else REMOVED if roll < 0.95 else NONE
    if name == "unsubscribed":
        return REMOVED if roll < 0.7 else ADDED if roll < 0.9 else NONE
    if name == "cleaned":
        return ADDED if roll < 0.5 else REMOVED if roll < 0.8 else NONE
    return NONE if roll < 0.6 else REMOVED if roll < 0.8 else ADDED


# CiviCRM status by (side, Mailchimp status, random byte), for the column-wise draw.
_CIVI_TABLE = bytes(
    _civi_status(side, status, (roll + 0.5) / 256)
    for side in (BOTH, MC_ONLY, CIVI_ONLY)
    for status in range(len(MC_STATUSES))
    for roll in range(256)
)
_IS_CIVI_ONLY = bytes(int(b == CIVI_ONLY) for b in range(256))


def _mixed_case(email: str) -> str:
    local, _, domain = email.partition("@")
    return ".".join(p.capitalize() for p in local.split(".")) + "@" + domain.upper()


def _mailchimp_rows(
    spec: AudienceSpec, interest_ids: list[str]
) -> Iterator[tuple[str, str, dict[str, Any], dict[str, bool], datetime]]:
    """Members for ``seed_members``; equal merge/interest dicts are shared (read-only) objects."""
    people, anchor = spec.people, spec.anchor
    second = timedelta(seconds=1)
    interest_maps = [
        {iid: bool(bits >> n & 1) for n, iid in enumerate(interest_ids)}
        for bits in range(1 << len(interest_ids))
    ]
    # Merge fields and email prefixes per (first, last) name pair, drifted names apart.
    pairs = [(f, n) for f in range(len(FIRST_NAMES)) for n in range(len(LAST_NAMES))]
    merges = [{"FNAME": FIRST_NAMES[f][0], "LNAME": LAST_NAMES[n][0]} for f, n in pairs]
    drifted = [{"FNAME": FIRST_NAMES[f][0][0] + ".", "LNAME": LAST_NAMES[n][0]} for f, n in pairs]
    prefixes = [f"{FIRST_NAMES[f][1]}.{LAST_NAMES[n][1]}" for f, n in pairs]
    width, unit = len(LAST_NAMES), _AGE_UNIT
    second_emails: list[int] = []
    first, last, flags_of, age, bits = (people.first, people.last, people.flags, people.age,
                                        people.mc_interests)  # fmt: skip
    for i, status in enumerate(people.mc_status):
        if status == NO_MC:
            continue
        flags = flags_of[i]
        pair = first[i] * width + last[i]
        email = f"{prefixes[pair]}{i}@{DOMAINS[i & 3]}"
        yield (
            _mixed_case(email) if flags & MIXED_MC else email,
            MC_STATUSES[status],
            drifted[pair] if flags & NAME_DRIFT else merges[pair],
            interest_maps[bits[i]],
            anchor - (age[i] * unit + i % unit) * second,
        )
        if flags & SECOND_EMAIL:
            second_emails.append(i)
    for i in second_emails:  # the same person subscribed again with a work address
        pair = first[i] * width + last[i]
        changed = people.last_changed(i, anchor) + (anchor - people.last_changed(i, anchor)) / 2
        yield (_second_email(people, i), "subscribed", merges[pair], interest_maps[0], changed)


def _second_email(people: People, i: int) -> str:
    return people.email(i).replace("@", ".work@", 1)


def _civi_rows(spec: AudienceSpec, indices: Iterable[int]) -> Iterator[dict[str, Any]]:
    """Rows for ``seed_contacts``; equal ``groups`` dicts are shared (read-only) objects."""
    people = spec.people
    interest_groups = list(spec.interest_ids.values())
    group_maps: dict[tuple[int, int], dict[int, str]] = {}
    for status in (NONE, ADDED, REMOVED):
        for bits in range(1 << len(interest_groups)) if status == ADDED else (0,):
            found: dict[int, str] = {}
            if status != NONE:
                found[spec.group_id] = "Added" if status == ADDED else "Removed"
            for n, group in enumerate(interest_groups):
                if bits >> n & 1:
                    found[group] = "Added"
            group_maps[status, bits] = found
    first_names = [name for name, _ in FIRST_NAMES]
    last_names = [name for name, _ in LAST_NAMES]
    first, last, flags_of = people.first, people.last, people.flags
    civi_status, civi_interests = people.civi_status, people.civi_interests
    for i in indices:
        flags = flags_of[i]
        # History-rich people get their group rows from set_group_status afterwards.
        status = NONE if flags & HISTORY else civi_status[i]
        row: dict[str, Any] = {
            "first_name": first_names[first[i]],
            "last_name": last_names[last[i]],
            "groups": group_maps[status, civi_interests[i] if status == ADDED else 0],
        }
        if flags:
            if not flags & NO_EMAIL:
                email = people.email(i)
                row["email"] = _mixed_case(email) if flags & MIXED_CIVI else email
                if flags & (HOLD_BOUNCE | HOLD_OPT_OUT):
                    row["on_hold"] = 1 if flags & HOLD_BOUNCE else 2
            for flag, name in _CONTACT_FIELDS:
                if flags & flag:
                    row[name] = True
        else:
            row["email"] = people.email(i)
        yield row


_CONTACT_FIELDS = ((DECEASED, "is_deceased"), (NO_EMAIL_OK, "do_not_email"),
                   (OPT_OUT, "is_opt_out"), (DELETED, "is_deleted"))  # fmt: skip


def _seed_civicrm(civi: CiviSim, spec: AudienceSpec, rng: random.Random) -> None:
    """Seed contacts in waves (one history date each), then the few hand-made odd cases."""
    people = spec.people
    waves = len(_HISTORY_WAVES)
    for wave, days in enumerate(_HISTORY_WAVES):
        chosen = [i for i in range(wave, len(people), waves) if people.side[i] != MC_ONLY]
        when = spec.anchor - timedelta(days=days)
        rows = _civi_rows(spec, chosen)
        for i, contact_id in zip(chosen, civi.seed_contacts(rows, when=when), strict=True):
            people.contact_ids[i] = contact_id
    shared = [i for i in range(len(people)) if people.flags[i] & SHARED]
    duplicates = []
    for i in shared:  # a second contact (partner, old record) using the same address
        first, last = people.names(i)
        row: dict[str, Any] = {"first_name": first if rng.random() < 0.5 else "", "last_name": last,
                               "email": people.email(i)}  # fmt: skip
        if rng.random() < 0.3:
            row["is_deleted"] = True
        elif rng.random() < 0.4:
            row["groups"] = {spec.group_id: "Added"}
        duplicates.append(row)
    civi.seed_contacts(duplicates, when=spec.anchor - timedelta(days=200))
    for i in range(len(people)):
        flags, contact_id = people.flags[i], people.contact_ids[i]
        if flags & SECOND_EMAIL and contact_id:
            civi.add_email(contact_id, _second_email(people, i), is_primary=False)
        if flags & HISTORY and contact_id:  # joined, then left: two history rows
            joined = spec.anchor - timedelta(days=500 + rng.randrange(200))
            civi.set_group_status(contact_id, spec.group_id, "Added", when=joined)
            left = joined + timedelta(days=rng.randrange(1, 400))
            civi.set_group_status(contact_id, spec.group_id, "Removed", when=left)


def _count(spec: AudienceSpec) -> dict[str, int]:
    """What was generated, by side, status and odd case (C-speed counting over the arrays)."""
    people = spec.people
    counts: dict[str, int] = {}
    for side, name in enumerate(("both", "mailchimp_only", "civicrm_only")):
        counts[name] = people.side.count(side)
    for status, name in enumerate(MC_STATUSES):
        counts["mailchimp_" + name] = people.mc_status.count(status)
    for status, name in enumerate(_CIVI_STATUS_NAMES):
        counts[name] = people.civi_status.count(status)
    counts["civicrm_no_group"] -= counts["mailchimp_only"]
    by_flags = Counter(people.flags)
    for name, flag in _FLAG_NAMES:
        counts[name] = sum(n for flags, n in by_flags.items() if flags & flag)
    counts["mailchimp_subscribed"] += counts["second_email"]
    counts["mailchimp_members"] = sum(counts["mailchimp_" + s] for s in MC_STATUSES)
    counts["civicrm_contacts"] = len(people) - counts["mailchimp_only"] + counts["shared_email"]
    return counts


_CIVI_STATUS_NAMES = ("civicrm_no_group", "civicrm_added", "civicrm_removed")
_FLAG_NAMES = (
    ("deceased", DECEASED), ("do_not_email", NO_EMAIL_OK), ("is_opt_out", OPT_OUT),
    ("deleted", DELETED), ("on_hold_bounce", HOLD_BOUNCE), ("on_hold_opt_out", HOLD_OPT_OUT),
    ("mixed_case_civicrm", MIXED_CIVI), ("mixed_case_mailchimp", MIXED_MC),
    ("shared_email", SHARED), ("second_email", SECOND_EMAIL), ("history", HISTORY),
    ("name_drift", NAME_DRIFT), ("no_email", NO_EMAIL),
)  # fmt: skip


def mutate(
    mc: MailchimpSim, civi: CiviSim, spec: AudienceSpec, *, share: float, seed: int
) -> dict[str, int]:
    """Make ``share`` of the audience change on each side, as people and staff do between runs.

    Mailchimp: half the changes are unsubscribes, 30% new sign-ups, 20% interest edits.
    CiviCRM: 40% removals from the group, 30% additions (existing contacts, or new ones), 30%
    name edits. Only people whose current state allows the change are picked, so the counts
    returned may fall a little short on tiny audiences.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError("share must be between 0 and 1")
    rng = random.Random(seed)
    target = round(share * spec.members)
    counts = Counter[str]()
    people = spec.people
    interest_ids = list(spec.interest_ids)
    existing = len(people)

    def pick(accept: Any, wanted: int) -> list[int]:
        chosen: set[int] = set()
        for _ in range(wanted * 20 + 20):
            if len(chosen) >= wanted or not existing:
                break
            i = rng.randrange(existing)
            if i not in chosen and accept(i):
                chosen.add(i)
        return sorted(chosen)

    def subscribed_at_mc(i: int) -> bool:
        member = mc.member(spec.list_id, people.email(i)) if people.mc_status[i] != NO_MC else None
        return member is not None and member["status"] == "subscribed"

    def in_group(i: int) -> bool:
        cid = people.contact_ids[i]
        return bool(cid) and civi.group_status(cid, spec.group_id) == "Added"

    def can_join(i: int) -> bool:
        cid = people.contact_ids[i]
        return (bool(cid) and not people.flags[i] & _UNSYNCABLE
                and civi.group_status(cid, spec.group_id) != "Added")  # fmt: skip

    mc_unsubscribe = round(target * 0.5)
    mc_new = round(target * 0.3)
    for i in pick(subscribed_at_mc, mc_unsubscribe + round(target * 0.2)):
        if counts["mailchimp_unsubscribed"] < mc_unsubscribe:
            mc.set_member_status(spec.list_id, people.email(i), "unsubscribed")
            counts["mailchimp_unsubscribed"] += 1
        else:
            flipped = rng.randrange(len(interest_ids)) if interest_ids else None
            if flipped is not None:
                member = mc.member(spec.list_id, people.email(i)) or {}
                current = bool(member.get("interests", {}).get(interest_ids[flipped]))
                mc.edit_member(spec.list_id, people.email(i),
                               interests={interest_ids[flipped]: not current})  # fmt: skip
                counts["mailchimp_interest_edits"] += 1
    civi_remove, civi_add = round(target * 0.4), round(target * 0.3)
    for i in pick(in_group, civi_remove):
        civi.set_group_status(people.contact_ids[i], spec.group_id, "Removed")
        counts["civicrm_removed"] += 1
    joiners = pick(can_join, civi_add - civi_add // 3)
    for i in joiners:
        civi.set_group_status(people.contact_ids[i], spec.group_id, "Added")
        counts["civicrm_added"] += 1

    def editable(i: int) -> bool:
        return bool(people.contact_ids[i]) and not people.flags[i] & DELETED

    for i in pick(editable, round(target * 0.3)):
        last = people.names(i)[1]
        civi.update_contact(people.contact_ids[i], last_name=f"{last}-{rng.choice(LAST_NAMES)[0]}")
        counts["civicrm_name_edits"] += 1
    # Newcomers: Mailchimp sign-ups (no contact yet) and contacts added to the group by staff.
    new_civi = civi_add - len(joiners)
    for n in range(mc_new + new_civi):
        people.first.append(rng.randrange(len(FIRST_NAMES)))
        people.last.append(rng.randrange(len(LAST_NAMES)))
        people.age.append(0)
        bits = rng.randrange(1 << len(interest_ids))
        on_mc = n < mc_new
        people.side.append(MC_ONLY if on_mc else CIVI_ONLY)
        people.mc_status.append(0 if on_mc else NO_MC)
        people.civi_status.append(NONE if on_mc else ADDED)
        people.flags.append(0)
        people.mc_interests.append(bits)
        people.civi_interests.append(bits)
        people.contact_ids.append(0)
    newcomers = range(existing, len(people))
    interest_maps = [
        {iid: bool(bits >> k & 1) for k, iid in enumerate(interest_ids)}
        for bits in range(1 << len(interest_ids))
    ]
    signups = [i for i in newcomers if people.side[i] == MC_ONLY]
    mc.seed_members(spec.list_id, [
        (people.email(i), "subscribed", dict(zip(("FNAME", "LNAME"), people.names(i), strict=True)),
         interest_maps[people.mc_interests[i]], None)
        for i in signups
    ])  # fmt: skip
    counts["mailchimp_new"] += len(signups)
    joined = [i for i in newcomers if people.side[i] == CIVI_ONLY]
    for i, contact_id in zip(joined, civi.seed_contacts(_civi_rows(spec, joined)), strict=True):
        people.contact_ids[i] = contact_id
    counts["civicrm_added"] += len(joined)
    counts["civicrm_new_contacts"] += len(joined)
    return dict(counts)
