"""Errors the engine raises for bad input; each names the offending field."""


class InvalidRequest(ValueError):
    """A request or setting is invalid; `field` names what to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ConfigError(InvalidRequest):
    """An engine setting is unknown or out of range."""


def require(ok: bool, field: str, message: str, error: type = InvalidRequest) -> None:
    """Raise `error(field, message)` unless `ok`: the one way settings and requests are checked."""
    if not ok:
        raise error(field, message)
