"""The agent's error hierarchy: callers catch by kind, every message says what to do."""

from __future__ import annotations

from .protocol import Gate


class AgentError(Exception):
    """Base of everything the agent raises on purpose."""


class TransportError(AgentError):
    """The server or the broker could not be reached, or answered with an error status."""


class ArtifactError(AgentError):
    """A downloaded file is not what the manifest promised (size, SHA-256, format)."""


class StorageError(AgentError):
    """The device's own storage refused a write (full, over quota, read-only, failing).

    Never the model's fault: an update that meets it ends on the ``disk`` gate and may be
    tried again once there is room.
    """


class GateError(AgentError):
    """A model failed a validation gate; ``gate`` names which one (it goes into the report)."""

    def __init__(self, gate: Gate, message: str) -> None:
        super().__init__(f"{gate}: {message}")
        self.gate = gate


class ConfigError(AgentError):
    """The agent's configuration or profile is invalid."""
