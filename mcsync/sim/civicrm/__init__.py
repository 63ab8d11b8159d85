"""A stateful simulator of CiviCRM APIv4 over REST, faithful where mcsync depends on it.

It reproduces ``reference/civicrm-api.md`` §1 and the checklist in §5.2: the route forms
(path, WordPress ``q=``, Joomla ``task=``, multi-call), authx (``X-Civi-Auth``, ``Authorization``,
``_authx``, legacy ``api_key``/``key``; guards; 401 text/plain), route permission (403 HTML),
the CSRF rule (400 JSON), GET-only-for-get* (405), maintenance (503), the success envelope with
its ``count`` quirk, the debug-visible and masked error envelopes, and the data model: contacts
with trash and ``modified_date`` bumps, emails with one primary per contact and holds, groups
(smart, nested), GroupContact writes that always log SubscriptionHistory, merges and deletes.

State lives in an in-memory SQLite database guarded by ``lock``; queries are translated by
:mod:`mcsync.sim.civicrm.query` into parameterised SQL with indexes, so paged reads stay
O(page) on a million contacts. Faults (5xx pages, drops, slowness) are injected by
:mod:`mcsync.sim.faults` around ``handle``, not here.

The parts, one module each (:class:`CiviSim` in :mod:`.sim` combines their classes): ``model``
(routes, actions, params, :class:`ApiUser`), ``schema`` (the tables and field definitions),
``query`` (APIv4 queries as SQL), ``state`` (the shared state and data-model behaviour, the typed
base), ``seeding`` (configuration and seeding), ``execution`` (API execution), ``helpers``
(module helpers), and ``sim`` (the HTTP front door).
"""

from mcsync.sim.civicrm.model import ApiUser
from mcsync.sim.civicrm.sim import CiviSim

__all__ = ["ApiUser", "CiviSim"]
