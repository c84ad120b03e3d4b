"""Every error shardc raises for a user's mistake or an unsupported construct."""


class Error(Exception):
    """Base of all shardc errors: names the op, tensor, spec or file at fault."""


class UnsupportedOpError(Error):
    """A framework op or construct that shardc cannot map or compile."""


class ShardingError(Error):
    """A bad mesh, spec or sharding."""


class IRError(Error):
    """A malformed IR graph or IR text (verifier and parser)."""
