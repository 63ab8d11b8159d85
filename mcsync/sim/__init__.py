"""Stateful simulators of the Mailchimp Marketing API and CiviCRM APIv4.

Each simulator is a plain object with ``handle(SimRequest) -> SimResponse``; ``transport``
wraps one for in-process httpx use and ``server`` serves one over HTTP on 127.0.0.1.
"""
