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
    #: Whether a provider-side failure counts against the provider's circuit:
    #: not when the request itself caused it, or SheLLM stopped the call.
    blames_provider = True

    def __init__(self, message: str, retry_after: int | None = None, *, blames_provider: bool | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        if blames_provider is not None:
            self.blames_provider = blames_provider
        #: Set when SheLLM already did what a client's retry would do (its
        #: own fallback ran): then no retry can help.
        self.retry_would_help: bool | None = None
        #: The subscription windows the failed run reported (L{QuotaWindow}s).
        self.quota: tuple = ()

    @property
    def should_retry(self) -> bool | None:
        """
        What the C{x-should-retry} header tells the OpenAI and Anthropic
        SDKs (which otherwise retry every 5xx twice): yes after
        C{retry_after} where waiting can help (queues, rate limits, an open
        circuit), no for every other server-side failure (a timeout, a
        missing login, a failure after fallback), nothing for client errors.
        """
        if self.retry_would_help is not None:
            return self.retry_would_help
        if self.retry_after is not None:
            return True
        if self.status >= 500:
            return False
        return None

    def to_json(self) -> dict:
        body: dict[str, object] = {"error": self.code, "message": self.message}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return body


class InvalidRequest(ShellmError):
    status = 400
    code = "invalid_request"


class InvalidField(InvalidRequest):
    """
    A 400 that knows which request field is wrong (OpenAI's C{param}).
    """

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class NotFound(ShellmError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ShellmError):
    status = 405
    code = "method_not_allowed"


class RequestTimeout(ShellmError):
    """
    The request (line, headers and body) did not arrive in time.
    """

    status = 408
    code = "request_timeout"


class RequestTooLarge(ShellmError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(ShellmError):
    status = 415
    code = "unsupported_media_type"


class HeadersTooLarge(ShellmError):
    status = 431
    code = "headers_too_large"


class RateLimited(ShellmError):
    status = 429
    code = "rate_limited"


class QuotaExhausted(ShellmError):
    """
    A provider's subscription window is spent until it resets: SheLLM did
    not call it (or it refused for that reason).  Another provider may
    answer; the provider is not at fault, so its circuit is untouched.
    """

    status = 429
    code = "quota_exhausted"
    provider_side = True
    blames_provider = False

    @property
    def should_retry(self) -> bool | None:
        # The SDKs wait at most about a minute whatever Retry-After says: a
        # retry before an hours-away reset would only be refused again.
        return self.retry_after is not None and self.retry_after <= 60


class QueueFull(ShellmError):
    status = 429
    code = "queue_full"


class ProviderFailed(ShellmError):
    """
    A provider (a CLI or an HTTP API) failed to answer.  The wire code
    predates HTTP providers; clients match on it, so it stays.
    """

    status = 502
    code = "cli_failed"
    provider_side = True


class InvalidOutput(ShellmError):
    """
    The answer did not follow the requested schema (or called a function
    wrongly), even after one repair attempt.
    """

    status = 502
    code = "invalid_output"


class UpstreamRejected(ShellmError):
    """
    The provider's upstream refused the request itself (a 4xx relayed by a
    CLI: too long, malformed): another try, here or elsewhere, would fare
    no better, and the provider is not at fault.
    """

    status = 400
    code = "upstream_rejected"


class ProviderUnavailable(ShellmError):
    status = 503
    code = "provider_unavailable"
    provider_side = True


class NotLoggedIn(ProviderUnavailable):
    """
    The CLI runs but has no usable credentials.
    """


class ShuttingDown(ProviderUnavailable):
    """
    SheLLM is stopping: the request was refused, or its call stopped at the
    drain deadline.  Another node (or this one, restarted) can answer it.
    """

    blames_provider = False


class Timeout(ShellmError):
    status = 504
    code = "timeout"
    provider_side = True


class InternalError(ShellmError):
    status = 500
    code = "internal_error"


class StoreUnavailable(ShellmError):
    """
    The state store (the database behind SHELLM_DB) cannot be reached now.
    """

    status = 503
    code = "store_unavailable"
