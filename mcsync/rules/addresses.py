"""The one rule for comparing email addresses (issue 10.8).

Mailchimp keys a member by the MD5 of its lower-cased address (reference/mailchimp-api.md,
"subscriber hash"), so two spellings that lower-case alike are one member. mcsync compares
addresses the same way everywhere: in Python with ``fold_email`` and in the staging DB with the
SQL function of the same name, which ``Staging`` registers on its connection. SQLite's
built-in ``lower`` function folds ASCII letters only (it turns ``'ÄNNE@x'`` into ``'Änne@x'``), so
it is never used on addresses.
"""

from __future__ import annotations


def fold_email(address: str) -> str:
    """The form two addresses are compared in: surrounding blanks dropped, every letter
    lower-cased (Unicode, like Mailchimp's subscriber hash), nothing else changed."""
    return address.strip().lower()
