"""Errors a user can act on.  The CLI prints their message on one line, without a traceback."""


class VlmCompressError(Exception):
    """Base of every error caused by the user's input rather than by a bug."""


class ConfigError(VlmCompressError, ValueError):
    """A config key, a method knob or a spec is wrong; the message names it and what is allowed."""


class ModelLoadError(VlmCompressError):
    """A model could not be loaded (missing path, no network for a hub id, unsupported family)."""


class StoreError(VlmCompressError):
    """A run's store or output folder cannot be used: damaged, written by something else,
    read-only, full, or held by another run."""


class OutputBusyError(StoreError):
    """Another vlmcompress process holds the output folder's lock."""
