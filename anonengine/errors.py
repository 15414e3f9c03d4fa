"""Errors a user can act on. The CLI prints each as one line and exits non-zero."""

from __future__ import annotations

from collections.abc import Iterable


class AnonError(Exception):
    """Base of every error that is reported to the user as one line."""

    exit_code = 2

    def lines(self) -> list[str]:
        """What the CLI prints, one line each: this error's one."""
        return [str(self)]


class Problems(AnonError):
    """Several of the user's errors found in one pass (a config's schema, `launch --validate-config`), so that a
    config with several mistakes is mended in one run, not one run each. The CLI prints each as its own line;
    elsewhere (a reply, a log) it is one line, the problems joined by "; "."""

    def __init__(self, problems: list[AnonError]):
        super().__init__("; ".join(str(problem) for problem in problems))
        self.problems = problems
        self.exit_code = max(problem.exit_code for problem in problems)

    def lines(self) -> list[str]:
        return [line for problem in self.problems for line in problem.lines()]


def raise_all(problems: Iterable[AnonError]) -> None:
    """Raises what checks found: nothing for none, the one problem itself, or Problems for several."""
    found = list(problems)
    if len(found) == 1:
        raise found[0]
    if found:
        raise Problems(found)


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


class StartAfresh(Exception):
    """A stage cannot go on in its process (a live source's reading thread stuck inside FFmpeg, which nothing
    interrupts): it exits, said in one line, for the launcher to start it again. Not the user's error."""


def first_line(exc: BaseException) -> str:
    """What a library's exception says, as one line: its message's first line, or its type when it has none."""
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
