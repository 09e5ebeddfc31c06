"""One exception tree for heron-edge; adapters translate library errors into these at the boundary."""
from __future__ import annotations


class HeronError(Exception):
    """Base of every error heron-edge raises on purpose."""


class ConfigError(HeronError, ValueError):
    """A configuration (environment, scenario, gateway) is invalid; the message names the field."""


class ActionError(HeronError, ValueError):
    """An action has the wrong shape, is outside its space, or is not finite."""


class MessageError(HeronError, ValueError):
    """A wire message could not be decoded or validated (not JSON, wrong schema, unknown kind, expired)."""


class BrokerError(HeronError, ConnectionError):
    """The message broker is unreachable, refused us, or the connection was lost."""


class DeviceError(HeronError):
    """A field device (Modbus) did not answer, answered an exception, or is not what we expected."""


class ScenarioError(ConfigError):
    """A scenario cannot be loaded or run (unknown name, missing or unreadable file, bad TOML, invalid field,
    unknown profile); a ConfigError, so the CLI exits 2 with the message."""


class UsageError(HeronError, RuntimeError):
    """An object was used out of order: a step before ``reset()`` or after the episode ended, a role before
    its ``start()``; the message says what to call first."""


class RunError(HeronError, RuntimeError):
    """A run of several processes (SIL) failed: a process exited early, or a file it must write never came."""
