"""Errors a user sees. Each message names what is wrong and how to fix it."""


class PrefectMLError(Exception):
    """Base class of every error prefect-ml raises on bad input or a handled fault."""


class ComponentError(PrefectMLError, ValueError):
    """A component definition (YAML or Python) is invalid."""


class StepInputError(PrefectMLError, ValueError):
    """A component was called with inputs that do not match its spec."""


class StepFailed(PrefectMLError, RuntimeError):
    """A step's command exited non-zero (or was killed)."""

    def __init__(self, message: str, exit_code: int | None = None, last_lines: list[str] | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.last_lines = last_lines or []


class StorageError(PrefectMLError):
    """A URI cannot be read or written."""


class GateError(PrefectMLError, ValueError):
    """A gate cannot be evaluated (missing metric, bad operator)."""


class RegistrationError(PrefectMLError):
    """A model cannot be registered."""


class InfrastructureError(PrefectMLError):
    """Infrastructure cannot be resolved or cannot start a step."""


class EnvironmentSpecError(PrefectMLError):
    """An environment spec is invalid or cannot be built."""


class DataAssetError(PrefectMLError, LookupError):
    """A data asset is unknown, or its data changed since registration."""
