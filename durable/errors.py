"""The durable error tree, and the one place that maps SQLSTATEs to it.

Every df.* function raises with a stable SQLSTATE of durable's own class
``DF``; each code has exactly one class here (a test keeps this file, the
install script and docs/errors.md in step).  An unknown ``DF`` code falls back
to :class:`DurableError`.
"""

from __future__ import annotations

from typing import ClassVar


class DurableError(Exception):
    """durable failed."""

    sqlstate: ClassVar[str | None] = None

    def __init__(self, message: str | None = None, *, sqlstate: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        if sqlstate is not None:
            self.sqlstate_seen = sqlstate

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidInputError(DurableError):
    """An argument to a df.* function is invalid."""

    sqlstate = "DF001"


class InvalidGraphError(DurableError):
    """The workflow graph is invalid."""

    sqlstate = "DF002"


class NotFoundError(DurableError):
    """The instance does not exist or is not visible to this role."""

    sqlstate = "DF003"


class ConflictError(DurableError):
    """The row changed since it was read (resource_version mismatch)."""

    sqlstate = "DF004"

    def __init__(self, message: str | None = None, *, current_version: int | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.current_version = current_version


class SubmitterRefusedError(DurableError):
    """This role may not submit workflows."""

    sqlstate = "DF005"


class IdSpaceExhaustedError(DurableError):
    """No free instance id could be claimed."""

    sqlstate = "DF006"


class NotSupportedError(DurableError):
    """This feature is not supported yet."""

    sqlstate = "DF007"


class InstanceFinishedError(DurableError):
    """The instance has already finished."""

    sqlstate = "DF008"


class LimitExceededError(DurableError):
    """A limit was exceeded."""

    sqlstate = "DF009"


class InvalidCursorError(DurableError):
    """The pagination cursor is invalid."""

    sqlstate = "DF010"


class WaitTimeoutError(DurableError):
    """Timed out waiting for an instance."""

    sqlstate = "DF011"


class SchemaVersionError(DurableError):
    """The database schema version does not match this package."""

    sqlstate = "DF012"


class InWorkflowError(DurableError):
    """This function cannot be called inside a workflow."""

    sqlstate = "DF013"


class LeaseLostError(DurableError):
    """The worker no longer holds the lease on this work (fenced)."""

    sqlstate = "DF014"


class StepError(DurableError):
    """A workflow step failed."""

    sqlstate = "DF015"


class InternalRollbackMarker(DurableError):
    """Internal: df.explain's rollback marker (caught inside the function, never reaches a caller)."""

    sqlstate = "DF099"


_BY_SQLSTATE: dict[str, type[DurableError]] = {}


def _register() -> None:
    stack: list[type[DurableError]] = [DurableError]
    while stack:
        cls = stack.pop()
        if cls.sqlstate:
            if cls.sqlstate in _BY_SQLSTATE:
                raise RuntimeError(f"duplicate SQLSTATE {cls.sqlstate}")
            _BY_SQLSTATE[cls.sqlstate] = cls
        stack.extend(cls.__subclasses__())


_register()


def class_for_sqlstate(sqlstate: str | None) -> type[DurableError] | None:
    """The durable class for a SQLSTATE, or None when it is not one of ours."""
    if not sqlstate:
        return None
    if sqlstate in _BY_SQLSTATE:
        return _BY_SQLSTATE[sqlstate]
    if sqlstate.startswith("DF"):
        return DurableError
    return None


def all_sqlstates() -> dict[str, type[DurableError]]:
    return dict(_BY_SQLSTATE)
