"""Errors the engine raises for bad input; each names the offending field."""


class InvalidRequest(ValueError):
    """A request or setting is invalid; `field` names what to fix."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ConfigError(InvalidRequest):
    """An engine setting is unknown or out of range."""
