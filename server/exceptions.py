"""Domain errors: what services raise when they refuse or cannot serve a request. They know nothing of HTTP;
server/errors.py is the one place that maps them to a status and the error envelope."""

from __future__ import annotations


class ServiceError(Exception):
    """A request refused or not served. `param` names the offending field; `retry_after_s` says when to retry."""

    def __init__(self, message: str, *, param: str | None = None, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequest(ServiceError):
    """The request is malformed, or asks for something this server does not do."""


class AuthenticationFailed(ServiceError):
    """No usable credentials; the message stays vague whatever the cause."""


class Forbidden(ServiceError):
    """The caller is known but may not do this."""


class NotFound(ServiceError):
    """No such thing, or not the caller's: the two look the same."""


class Conflict(ServiceError):
    """The request clashes with the current state."""


class ConversationBusy(Conflict):
    """A reply is still being generated in this conversation."""


class ConversationFull(Conflict):
    """The conversation holds as many messages or bytes as it may: a new one must be started."""


class PayloadTooLarge(ServiceError):
    """The request body is over the configured size."""


class RateLimited(ServiceError):
    """A per-caller limit is spent; retry after `retry_after_s`."""


class Unavailable(ServiceError):
    """A part the request needs (engine, database, limiter storage) is not answering, or the server is full."""


class Overloaded(Unavailable):
    """Global admission control: too many generations in flight."""
