"""Domain errors. Each names the gRPC status it maps to, so domain code never imports gRPC."""


class PirmError(Exception):
    """Base of the errors our services report to clients; `status` is a grpc.StatusCode name."""

    status = "INTERNAL"


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
