"""Domain errors. Each names the gRPC status it maps to, so domain code never imports gRPC."""


class PirmError(Exception):
    """Base of the errors our services report to clients; `status` is a grpc.StatusCode name.
    `retry_after_s`: when the call may succeed if made again (a quota that resets, a phase that
    opens), sent as trailing metadata `retry-after-s`."""

    status = "INTERNAL"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Trailing metadata sent with the status (machine-readable hints)."""
        if self.retry_after_s is None:
            return ()
        return (("retry-after-s", f"{self.retry_after_s:.0f}"),)


class InvalidArgument(PirmError):
    status = "INVALID_ARGUMENT"


class MemoryLimitExceeded(InvalidArgument):
    """A model needs more memory than the challenge allows (3.5 GB on a 1280x720 image)."""


class NotFound(PirmError):
    status = "NOT_FOUND"


class AlreadyExists(PirmError):
    status = "ALREADY_EXISTS"


class FailedPrecondition(PirmError):
    status = "FAILED_PRECONDITION"


class ResourceExhausted(PirmError):
    status = "RESOURCE_EXHAUSTED"


class Unavailable(PirmError):
    status = "UNAVAILABLE"


class DeadlineExceeded(PirmError):
    """A call got no answer within its deadline."""

    status = "DEADLINE_EXCEEDED"


class Aborted(PirmError):
    """Work that was started and lost, and is not started again (see the message)."""

    status = "ABORTED"


class Cancelled(PirmError):
    """The caller gave up on the work (a cancelled job, a cancelled call): it was stopped."""

    status = "CANCELLED"


class Unauthenticated(PirmError):
    """No token, or one this service does not know."""

    status = "UNAUTHENTICATED"


class PermissionDenied(PirmError):
    """A known caller asking for what its role does not allow."""

    status = "PERMISSION_DENIED"
