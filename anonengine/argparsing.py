"""The argument parser of every anonengine command and stage process (a usage error is one line), and the
log level they all take from ANONENGINE_LOG_LEVEL."""

from __future__ import annotations

import argparse
import logging
import os

from anonengine.errors import ConfigError
from anonengine.paths import redacted

LOG_LEVEL_VARIABLE = "ANONENGINE_LOG_LEVEL"  # every process's log level: the command's and its stages'
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump)."""

    def error(self, message: str):
        if message.endswith("expected one argument"):
            # A value that begins with a dash (`--video-source -dash.mp4`) is taken for a flag.
            message += " (a value beginning with '-' is given as --flag=VALUE, or a file as ./-name)"
        self.exit(2, f"{self.prog}: error: {message}\n")


class Redacting(logging.Formatter):
    """A formatter whose lines (and tracebacks) have the URLs' passwords as `***` (`paths.redacted`)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        return redacted(self.inner.format(record))


def redact_logs() -> None:
    """Every line the process logs from now on without the passwords of the URLs in it: a camera's URL, in a
    failure to open it, went into every log (and on to whatever collects them)."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler.formatter, Redacting):
            handler.setFormatter(Redacting(handler.formatter))


def log_level_from_env() -> str | None:
    """ANONENGINE_LOG_LEVEL as `logging` spells it (`warning` gives WARNING), or None when unset or empty.

    Checked once, by the command, before any process starts: the stage processes read the variable as
    `logging` does, and a level it does not know was a traceback in each of them, restarted until the
    engine gave up ("encode0 died 6 times").
    """
    given = os.environ.get(LOG_LEVEL_VARIABLE, "").strip()
    if not given:
        return None
    if given.upper() not in LOG_LEVELS:
        raise ConfigError(f"{LOG_LEVEL_VARIABLE}={given!r} is not a log level: use one of {', '.join(LOG_LEVELS)}")
    return given.upper()


def frame_rate(text: str) -> float:
    """A frame rate given on the command line: a number or a fraction (NTSC's 30000/1001), above 0."""
    from anonengine.config import frame_rate as parsed

    try:
        return parsed(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
