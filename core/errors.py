"""Errors the core raises on purpose; the server maps each class to one gRPC status code."""

from __future__ import annotations


class CovisitError(Exception):
    """Base of the errors below."""


class InvalidArgument(CovisitError, ValueError):
    """Bad input; `path` names it in the request (e.g. "k", "events[3].timestamp")."""

    def __init__(self, path: str, message: str):
        self.path = self.field = path
        self.message = message
        super().__init__(f"{path}: {message}")

    def within(self, prefix: str, note: str = "") -> InvalidArgument:
        """The same error, one level down a request (e.g. "requests[2]." + path)."""
        return InvalidArgument(prefix + self.path, self.message + note)


class NotFound(CovisitError, LookupError):
    """A named thing (model version, request id) that does not exist."""


class FailedPrecondition(CovisitError):
    """A legal request the current state does not allow."""


class Unavailable(CovisitError):
    """Not ready to answer yet (e.g. no model loaded)."""
