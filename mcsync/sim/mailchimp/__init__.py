"""A stateful simulator of the Mailchimp Marketing API v3, faithful where mcsync depends on it.

Facts come from ``reference/mailchimp-api.md`` and the official spec
(``mailchimp/marketing-api.json``): member statuses and the rules between them (compliance state,
cleaned, forgotten emails, archiving by DELETE), ``last_changed`` windows and offset paging,
``fields``/``exclude_fields``, bulk subscribe, interests, merge fields, list webhooks, tags and
batch operations (see :mod:`mcsync.sim.mailchimp.batches`). Errors are problem documents like
Mailchimp's. Members live in an in-memory SQLite table (see the storage notes in :mod:`.storage`) so
a million-member list pages in time proportional to the page, not the list.

Choices where the sources are silent: ``since_*``/``before_*`` filters are strict (after, before;
times have whole seconds); without ``status`` the member list leaves archived members out; the
default order is the order members were added; ``interests`` is absent from members of a list
without interests; new lists get Mailchimp's default merge fields (FNAME, LNAME, ADDRESS, PHONE,
BIRTHDAY); a write that changes nothing, and any tag change, leaves ``last_changed`` alone.

A member's activity feed (``GET /lists/{id}/members/{hash}/activity-feed``) holds the status
changes made since the simulator started (``unsub`` and ``generic_signup`` events with their
times), newest first; seeded history has none.

Not modelled: campaigns, segments, notes, opens and clicks, marketing permissions, ecommerce, the
hosted signup form (use :meth:`MailchimpSim.confirm_member` / :meth:`set_member_status` for what
a person does there), webhook deliveries, and the one-batch-at-a-time rule. Emails are not sent,
but the double opt-in emails Mailchimp would send are recorded: every API write that sets a
member's status to ``pending`` sends one, also to a member already pending (that is how the
confirmation is re-sent), in :attr:`MailchimpSim.confirmation_emails`. Batch results are served
at a pre-signed link, as object storage does: its query carries a signature that is checked.

The parts, one module each (:class:`MailchimpSim` in :mod:`.sim` combines their classes):
``model`` (constants, errors, list settings), ``storage`` (the members table), ``state`` (the
shared state and state helpers, the typed base), ``seeding`` (seeding and inspection), ``lists``
(account, lists, list webhooks), ``member_reads``, ``member_writes``, ``fields`` (merge fields,
interests), ``batches`` (the batch queue), ``helpers`` (module helpers), and ``sim`` (the HTTP
entry point, routing and the batch endpoints).
"""

from mcsync.sim.mailchimp.model import subscriber_hash
from mcsync.sim.mailchimp.sim import MailchimpSim

__all__ = ["MailchimpSim", "subscriber_hash"]
