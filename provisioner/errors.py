"""The one error tree, three outcomes: ``UserError`` (message, location, hint, exit 1, never a
traceback); ``ApiError`` and ``TransportError`` (the API or the network said no: exit 1, with the
requestId); anything else is a bug (one line, the redacted traceback in a crash file). No error here is
ever built from a secret value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Location:
    """Where a problem is: file and line, the template it came from, the instance, the path inside it."""

    file: str | None = None
    line: int | None = None
    template: str | None = None
    template_line: int | None = None
    instance: str | None = None
    path: str | None = None

    def format(self) -> str:
        template = f"{self.template}:{self.template_line}" if self.template_line else self.template
        parts = [
            f"{self.file}:{self.line}" if self.file and self.line else self.file,
            f"(template {template})" if self.template else None,
            f"instance={self.instance}" if self.instance else None,
            self.path,
        ]
        return " ".join(p for p in parts if p)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input. Validation collects these and reports them all."""

    message: str
    location: Location = field(default_factory=Location)
    hint: str | None = None

    def format(self) -> str:
        where = self.location.format()
        hint = f" (hint: {self.hint})" if self.hint else ""
        return (f"{where}: {self.message}" if where else self.message) + hint

    def to_json(self) -> dict:
        where = {"templateLine" if k == "template_line" else k: v for k, v in asdict(self.location).items()}
        return {"severity": "error", "message": self.message, "hint": self.hint, **where}


class ProvisionerError(Exception):
    """Base of every error provisioner raises on purpose."""


class UserError(ProvisionerError):
    """Bad input or bad usage: message, location, hint. Never shown with a traceback."""

    def __init__(self, message: str, location: Location | None = None, hint: str | None = None):
        super().__init__(message)
        self.problem = Problem(message, location or Location(), hint)

    def __str__(self) -> str:
        return self.problem.format()


class ValidationFailed(UserError):
    """Several problems found at once, reported together."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__(f"{len(problems)} problem(s) found")


class Interrupted(ProvisionerError):
    """SIGINT or SIGTERM arrived: no new request starts."""

    def __init__(self, signum: int, sent: bool = True):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum
        self.sent = sent  # False: raised before the request left (a create then certainly made nothing)


class ApiError(ProvisionerError):
    """The API answered with an error status. ``message`` is the API's own, already cut short."""

    retryable = False  # 429 and 5xx may be tried again

    def __init__(self, status: int, message: str, request_id: str | None, method: str, path: str):
        super().__init__(message)
        self.status = status
        self.message = message
        self.request_id = request_id
        self.method = method
        self.path = path
        self.retry_after: float | None = None  # seconds, from the answer's Retry-After
        self.hint: str | None = None
        self.raw_message = ""  # the API's own message, unshortened (for "No instances found")

    def __str__(self) -> str:
        request = f" (requestId {self.request_id})" if self.request_id else ""
        hint = f" (hint: {self.hint})" if self.hint else ""
        return f"{self.method} {self.path}: HTTP {self.status}: {self.message}{request}{hint}"


class BadRequest(ApiError): ...  # 400


class Unauthorized(ApiError): ...  # 401 or 403: the run stops, naming the variables to check, never their values


class NotFound(ApiError): ...  # 404


class Conflict(ApiError): ...  # 409


class RateLimited(ApiError):  # 429
    retryable = True


class ServerError(ApiError):  # 5xx
    retryable = True


class WaitTooLong(RateLimited):
    """The API asked every request to wait (Retry-After) longer than the run's retry budget: the run stops at once."""

    def __init__(self, wait: float, budget: float, method: str, path: str):
        message = f"the API asked to wait {wait:.0f} s (Retry-After), longer than the retry budget of {budget:g} s"
        super().__init__(429, message, None, method, path)
        self.retry_after = float("inf")


class TransportError(ProvisionerError):
    """No usable HTTP answer: connection refused or reset, timeout, response lost. ``ambiguous``: the
    request may have been processed (sent, then reset or timed out); such a create is looked up before
    it is tried again."""

    def __init__(self, message: str, ambiguous: bool, *, retryable: bool = True, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.ambiguous = ambiguous
        self.retryable = retryable
        self.hint = hint
        self.method: str | None = None  # the request, once the client knows it failed
        self.path: str | None = None
        self.url: str | None = None

    def __str__(self) -> str:
        where = f"{self.url or ''}{self.path or ''}"
        text = f"{self.method} {where}: {self.message}" if self.method else self.message
        return f"{text} (hint: {self.hint})" if self.hint else text


class AmbiguousCreate(ProvisionerError):
    """A create may or may not have happened: the caller must look the instance up before retrying."""

    def __init__(self, cause: Exception, answered: bool = False):
        super().__init__(f"create outcome unknown: {cause}")
        self.cause = cause
        # The server answered (a 5xx, or a 2xx without an instance): it is done with the request,
        # so the instance can be looked up at once. Without an answer it may still be working on it.
        self.answered = answered


class SendLater(ProvisionerError):
    """A create the API refused with 429 (so not made): to be sent again once ``at`` (``time.monotonic()``)
    has passed, from the back of the queue, its worker free meanwhile. ``attempt``: attempts since ``started``."""

    def __init__(self, attempt: int, started: float, at: float):
        super().__init__(f"refused with 429 at attempt {attempt}: sent again later")
        self.attempt, self.started, self.at = attempt, started, at


class InconsistentListing(ProvisionerError):
    """A listing that cannot be trusted (repeated ids or pages, malformed items, a wrong count): nothing
    may be created, replaced or deleted from it."""

    def __init__(self, message: str):
        super().__init__(f"the instance listing is inconsistent: {message}")


class CredentialsRefused(UserError):
    """401/403 from the API: the run stops, naming the variables to check and never their values."""

    def __init__(self, target: str, sources: str, cause: ApiError):
        request = f", requestId {cause.request_id}" if cause.request_id else ""
        super().__init__(
            f"target {target!r}: the API refused the credentials (HTTP {cause.status}{request})",
            hint=f"check {sources}",
        )
