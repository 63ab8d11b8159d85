"""Talking to the two APIs: the retrying HTTP session, the response classifier, connection slots,
redaction, and the Mailchimp and CiviCRM clients."""
