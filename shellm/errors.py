"""
The errors a client can see.  Handlers and providers raise these; one place
(L{shellm.http.api}) turns them into a status and a JSON body.
"""

from __future__ import annotations


class ShellmError(Exception):
    """
    A failure with a stable code, an HTTP status and a message that is safe
    to show a client: never raw CLI output, upstream bodies or secrets.
    """

    status = 500
    code = "internal_error"
    #: Provider-side failures may be retried on another provider.
    provider_side = False

    def __init__(self, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def to_json(self) -> dict:
        body: dict[str, object] = {"error": self.code, "message": self.message}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


class InvalidRequest(ShellmError):
    status = 400
    code = "invalid_request"


class NotFound(ShellmError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ShellmError):
    status = 405
    code = "method_not_allowed"


class RequestTooLarge(ShellmError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(ShellmError):
    status = 415
    code = "unsupported_media_type"


class RateLimited(ShellmError):
    status = 429
    code = "rate_limited"


class QueueFull(ShellmError):
    status = 429
    code = "queue_full"


class CliFailed(ShellmError):
    status = 502
    code = "cli_failed"
    provider_side = True


class ProviderUnavailable(ShellmError):
    status = 503
    code = "provider_unavailable"
    provider_side = True


class NotLoggedIn(ProviderUnavailable):
    """
    The CLI runs but has no usable credentials.
    """


class Timeout(ShellmError):
    status = 504
    code = "timeout"
    provider_side = True


class InternalError(ShellmError):
    status = 500
    code = "internal_error"
