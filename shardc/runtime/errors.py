"""Errors the runtime raises: a rank that failed (raised, died or hung) and a result that does not
match the unsharded reference. Both derive from shardc.Error."""
from __future__ import annotations

from ..errors import Error


class RankError(Error):
    """A rank of a distributed run failed: `rank`, `kind` ("raised", "died", "hung"), and what it
    was doing (`doing`: the op or collective, with its model source line)."""

    def __init__(self, message: str, rank: int | None = None, kind: str = "raised",
                 doing: str | None = None, details: str = ""):
        super().__init__(message)
        self.rank = rank
        self.kind = kind
        self.doing = doing
        self.details = details


class RankTimeoutError(RankError):
    """The run did not finish within its time limit (a rank hung, or waits on one that did)."""


class CheckError(Error):
    """An engine's result differs from the reference beyond the dtype's tolerance; the message
    holds the table of errors per output, `report` the rows."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
