"""Errors a user can act on. The CLI prints each as one line and exits non-zero."""


class AnonError(Exception):
    """Base of every error that is reported to the user as one line."""

    exit_code = 2


class ConfigError(AnonError):
    """The configuration or a command-line value is invalid."""


class InputError(AnonError):
    """The video source is missing, unreadable, undecodable or empty."""


class SourceNotOpenable(InputError):
    """The source as named cannot be opened, whenever tried: an unknown protocol, no such device or path on
    the server, credentials refused. `anonengine run` does not wait for a live source that answers so."""


class UnknownProtocol(SourceNotOpenable):
    """FFmpeg has no such protocol or format (`rtps://`, a typo): no retry can mend it, so an engine's camera
    fails at once, where for a camera that answers otherwise it tries on."""


class OutputError(AnonError):
    """The output cannot be written."""


class ResourceError(AnonError):
    """The machine lacks what the run needs: shared memory for the frames."""


class ModelError(AnonError):
    """A model file is missing, corrupt or of the wrong kind."""


class DetectionError(AnonError):
    """The detector failed on a frame; the frame must not be emitted raw."""


def first_line(exc: BaseException) -> str:
    """What a library's exception says, as one line: its message's first line, or its type when it has none."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
