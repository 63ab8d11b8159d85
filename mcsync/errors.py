"""mcsync's one exception tree; ``cli.py`` maps it to exit codes in one place.

    McsyncError
    ├── ConfigError          bad or incomplete configuration / usage        -> exit 2
    ├── BudgetExhausted      the run's --max-time is used up (progress kept) -> exit 0
    ├── AudienceBusy         another run holds the audience's lease          -> exit 0
    ├── MassChangeBrake      a run would remove too much; nothing written     -> exit 1
    ├── StorageError         the state DB or mcsync's slot directory is unusable -> exit 1
    └── ApiError             a remote API said no (after retries, if any)     -> exit 1
        ├── AuthError        401/403: wrong key, data centre or permissions
        ├── NotFoundError    404: the list, member, entity or endpoint is not there
        ├── BadResponse      not the JSON we expected (HTML page, truncated body, odd shape)
        │   ├── ResponseTooLarge  an answer (or batch results unpacked) above mcsync's caps
        │   └── UnreadableResults  a batch's results file that downloads but does not parse
        └── RetriesExhausted 429/5xx/network errors that outlasted retries or the budget

Messages name the thing that failed and what would fix it, and never contain secrets.
"""

from __future__ import annotations


class McsyncError(Exception):
    """Base of every error mcsync raises on purpose."""


class ConfigError(McsyncError):
    """Configuration or usage problems; ``problems`` lists each as 'key.path: message'."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class BudgetExhausted(McsyncError):
    """The run reached its deadline; everything done so far is saved."""


class AudienceBusy(McsyncError):
    """Another mcsync process holds this audience's lease."""


class MassChangeBrake(McsyncError):
    """A run would unsubscribe/remove more than allowed; nothing was written."""


class StorageError(McsyncError):
    """A local file or directory failed: the state DB (disk full, locked, corrupt) or the
    connection-slot directory. A ``state_db`` path that cannot be used at all is a
    ``ConfigError`` instead."""


class ApiError(McsyncError):
    """A remote API refused a request. ``service`` is 'Mailchimp <account>' or 'CiviCRM'."""

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        status: int | None = None,
        title: str | None = None,
        detail: str | None = None,
    ):
        self.service = service
        self.status = status
        self.title = title
        self.detail = detail
        super().__init__(f"{service}: {message}" if service else message)


class AuthError(ApiError):
    """401/403: the key, data centre, site key or permissions are wrong."""


class NotFoundError(ApiError):
    """404: the resource does not exist (or the URL is wrong)."""


class BadResponse(ApiError):
    """The response was not the JSON shape expected: an HTML error page, truncated JSON..."""


class ResponseTooLarge(BadResponse):
    """An answer larger than any the API sends (or batch results that unpack to more): not
    read, and asking again gives the same."""


class UnreadableResults(BadResponse):
    """A batch's results archive that arrived but holds no readable JSON results (a broken
    archive, invalid JSON, not an array of objects). Downloading again may help once; after a
    few tries the batch is given up (see ``stages.batches``)."""


class RetriesExhausted(ApiError):
    """Retriable failures (429, 5xx, timeouts, dropped connections) outlasted retries/budget."""
