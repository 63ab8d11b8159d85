"""The Mailchimp Marketing API v3 simulator (:class:`MailchimpSim`), a package of its parts."""

from mcsync.sim.mailchimp.sim import MailchimpSim, subscriber_hash

__all__ = ["MailchimpSim", "subscriber_hash"]
