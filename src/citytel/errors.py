"""The errors citytel raises, in one small hierarchy."""

from __future__ import annotations

from citytel.domain import Reason


class CitytelError(Exception):
    """Base class of every error citytel raises on purpose."""


class ConfigurationError(CitytelError):
    """The settings or a file they point to cannot be used."""


class RejectedMessage(CitytelError):
    """An MQTT message that cannot become readings; it goes to the dead-letter store.

    Attributes:
        reason: a stable code (``invalid_json``, ``out_of_range``, ...) to filter and count by.
        detail: a sentence a person can act on.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail = detail


class StorageError(CitytelError):
    """The database refused or failed an operation."""


class TransientStorageError(StorageError):
    """A database failure that goes away by itself: reconnect and retry."""


class IngestFailed(CitytelError):
    """Ingestion cannot go on in this process: it exits non-zero so that its supervisor restarts it.

    Raised when even isolating a failing batch message by message fails, so that a broken
    worker never stays alive and idle while holding its messages unacknowledged.
    """


class MqttProtocolError(CitytelError):
    """The broker sent something an MQTT 5 client must not accept; the connection is dropped.

    Attributes:
        reason: the DISCONNECT reason code the client sends before closing (0x81 malformed
            packet, 0x82 protocol error).
    """

    def __init__(self, message: str, reason: int = 0x81) -> None:
        super().__init__(message)
        self.reason = reason


class NotFoundError(CitytelError):
    """A container, spot or zone that citytel does not know."""

    def __init__(self, what: str, key: str) -> None:
        message = f"no {what} with id {key!r}"
        super().__init__(message)
        self.what = what
        self.key = key


class InvalidQueryError(CitytelError):
    """A request whose parameters are well-formed but make no sense together."""


class ConflictError(CitytelError):
    """A request that would duplicate something that must be unique, such as a key's name."""


class SaturatedError(CitytelError):
    """Expensive work already at its bound in this process (HTTP 429 with ``Retry-After``)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotAuthenticatedError(CitytelError):
    """No API key, or one that is unknown or revoked (HTTP 401)."""


class MissingScopeError(CitytelError):
    """A valid API key without the scope a route needs (HTTP 403)."""

    def __init__(self, scope: str) -> None:
        message = f"this API key does not have the '{scope}' scope this request needs"
        super().__init__(message)
        self.scope = scope
