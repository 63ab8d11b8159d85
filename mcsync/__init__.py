"""mcsync: keep Mailchimp audiences in sync with CiviCRM mailing groups."""

__version__ = "0.1.0"
