"""Exceptions with messages meant for people: what was expected, what was got, what to do."""

from __future__ import annotations


class CloakError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(CloakError, ValueError):
    """A parameter is out of range or of the wrong kind."""


class ImageError(CloakError, ValueError):
    """An input image cannot be read or is of a kind we do not handle; the message names the file."""


class ModelNotFoundError(CloakError, RuntimeError):
    """Model weights are neither cached nor reachable; the message names the model and the way out."""
