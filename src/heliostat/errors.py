"""Domain errors. Protocol layers map each kind to their own status (gRPC code, HTTP status).

Every error names the request field it is about, when there is one, so a client can tell what to
fix.
"""

from __future__ import annotations


class HeliostatError(Exception):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class InvalidArgument(HeliostatError):
    """The request is malformed or a value is nonsensical."""


class OutOfRange(HeliostatError):
    """A value is well-formed but outside what the data allows (a tile off the image grid)."""


class NotFound(HeliostatError):
    """The image, source or object asked for does not exist (or is not visible to the caller)."""


class ResourceExhausted(HeliostatError):
    """The request exceeds a configured limit."""


class FailedPrecondition(HeliostatError):
    """The system is not in a state to serve this (a file changed since it was indexed)."""


class DataLoss(HeliostatError):
    """Stored data is corrupt or unreadable."""
