"""Every error the library raises on purpose. Leaf module: stdlib only.

Each message names the bad value and says how to fix it. The CLI turns these
into one-line messages; the library never prints or exits on its own.
"""


class CharedError(Exception):
    """Base class of all chared_flows errors."""


class ConfigError(CharedError, ValueError):
    """A parameter, spec or file has a bad value."""


class ModelLoadError(CharedError):
    """A model spec could not be resolved or loaded."""


class UnsupportedTokenizerError(CharedError):
    """The tokenizer's family is not one whose token bytes we can recover exactly."""


class ContextWindowError(CharedError, ValueError):
    """A prompt does not fit a member's context window."""


class DecodingError(CharedError):
    """The decoding loop reached a state it cannot continue from."""


class TemplateError(CharedError, ValueError):
    """A prompt template is malformed, missing, or missing variables."""


class WorkflowError(CharedError, ValueError):
    """A workflow file is malformed or refers to something unknown."""


class TrackingError(CharedError):
    """A tracking backend failed in a way that cannot be deferred."""


class MissingExtraError(CharedError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, module: str, extra: str):
        super().__init__(
            f"{module!r} is not installed; install it with: pip install 'chared-flows[{extra}]'"
        )
        self.module = module
        self.extra = extra


class SandboxUnavailableError(CharedError):
    """Generated code would run without the sandbox (bubblewrap missing or not working)."""


class BackendError(CharedError):
    """A member's backend (an inference server, a native library) failed; the message says what to start or fix."""
