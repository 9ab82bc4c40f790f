"""The package's exceptions: one base class, the format errors the test
vectors name, and one class per gRPC status code.

A call that reached the daemon (or failed on the way) raises a subclass of
:class:`RpcError` chosen by its status code, so callers write
``except kmsd.NotFound`` rather than comparing codes. Format errors carry no
detail that depends on secrets; :class:`AuthenticationError` carries none
at all.
"""
import grpc

__all__ = [
    "KmsdError",
    "SettingsError",
    "FormatError",
    "MalformedError",
    "TruncatedError",
    "AuthenticationError",
    "UnexpectedKeyError",
    "JwsError",
    "RpcError",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
    "from_grpc",
]

OTP_HEADER = "x-kmsd-otp"
APPROVAL_HEADER = "x-kmsd-approval-id"
SECOND_FACTOR_HEADER = "x-kmsd-second-factor"


class KmsdError(Exception):
    """Base class of every exception this package raises on purpose."""


class SettingsError(KmsdError):
    """The client cannot be configured: a variable is missing, an address or
    a certificate file is unusable. The message names which and what to do."""


class JwsError(KmsdError):
    """A JWS cannot be made (a header the helper refuses, a key that does not
    sign) or is not valid (malformed, wrong ``alg``, unknown ``crit``, or a
    signature that does not verify). :mod:`kmsd.jws`."""


class FormatError(KmsdError):
    """An envelope or stream cannot be opened (or a message cannot be
    sealed). ``kind`` is the name docs/formats.md's test vectors use."""

    kind = "format"


class MalformedError(FormatError):
    """The header breaks the format: unknown format or algorithm byte, a
    length out of range, an invalid key name, an empty final segment after a
    non-empty one."""

    kind = "malformed"


class TruncatedError(FormatError):
    """The input ends inside its header, or leaves no room for a tag (no
    segment at all, a final segment shorter than 16 bytes)."""

    kind = "truncated"


class AuthenticationError(FormatError):
    """A tag did not verify: the data, its header, its associated data, the
    order or number of a stream's segments, or the data key is wrong.
    Deliberately without detail."""

    kind = "authentication"

    def __init__(self, message="authentication failed"):
        super().__init__(message)


class UnexpectedKeyError(KmsdError):
    """``open`` was given a blob naming a key outside ``expected_keys``;
    refused before any call to the daemon."""

    def __init__(self, key_name):
        super().__init__(f"the data names key {key_name!r}, which is not one of the expected keys")
        self.key_name = key_name


class RpcError(KmsdError):
    """A failed gRPC call. Subclasses name the status code.

    Attributes: ``code`` (a :class:`grpc.StatusCode`), ``details`` (the
    daemon's message), ``request_id`` (the ``x-request-id`` the call was made
    with, to find it in the daemon's log and audit trail), ``endpoint`` (the
    address that answered last), ``trailing_metadata`` (a dict).
    """

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, details, *, code=None, request_id=None, endpoint=None, trailing_metadata=None):
        if code is not None:
            self.code = code
        self.details = details or ""
        self.request_id = request_id
        self.endpoint = endpoint
        self.trailing_metadata = dict(trailing_metadata or {})
        name = self.code.name if isinstance(self.code, grpc.StatusCode) else str(self.code)
        super().__init__(f"{name}: {self.details}" + (f" (request id {request_id})" if request_id else ""))

    @property
    def code_name(self):
        """The canonical name of the status code (``NOT_FOUND``)."""
        return self.code.name


class Cancelled(RpcError):
    code = grpc.StatusCode.CANCELLED


class Unknown(RpcError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(RpcError):
    """Bad input, including a ciphertext that does not open under the key
    and associated data given."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(RpcError):
    """The call's deadline (``timeout``) passed, retries included."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(RpcError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RpcError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(RpcError):
    """The caller's identity may not do this (policy)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(RpcError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RpcError):
    """The key or version is in a state that forbids the call, or the call
    created a dual-control request (``approval_id``)."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    @property
    def approval_id(self):
        """The id of the dual-control request the call created, if any."""
        return self.trailing_metadata.get(APPROVAL_HEADER)


class Aborted(RpcError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(RpcError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(RpcError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(RpcError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(RpcError):
    """No endpoint answered (after the retries, for data-path calls)."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(RpcError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(RpcError):
    code = grpc.StatusCode.UNAUTHENTICATED

    @property
    def needs_second_factor(self):
        """The call needs an officer's one-time code and none was sent:
        retry with ``otp=...``."""
        return SECOND_FACTOR_HEADER in self.trailing_metadata


_BY_CODE = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}


def from_grpc(err, *, request_id=None, endpoint=None):
    """The typed exception for a :class:`grpc.RpcError` (the one place
    where status codes become classes)."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    trailing = {}
    if hasattr(err, "trailing_metadata"):
        for k, v in err.trailing_metadata() or ():
            trailing[k] = v
    cls = _BY_CODE.get(code, RpcError)
    return cls(details, code=code, request_id=request_id, endpoint=endpoint, trailing_metadata=trailing)
