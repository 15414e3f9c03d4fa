"""A batch's record of finished files, in its output folder: what makes a rerun resume.

One JSON line per finished file, appended (and fsynced) once its output has its final name: the input
(path relative to the batch's root, size, mtime, sha256), the output, and the settings that shape the
output. A rerun skips an input whose record matches and whose output is still there; it redoes one whose
content or settings changed. A torn last line (a job killed while writing it) is ignored, so a killed
job loses at most the files it had in flight.

The input's size and mtime decide alone when both match (no reading); otherwise its sha256 does, so a
file only touched or copied is not redone. sha256 reads about 600 MB/s on one core of the 2-core
development machine: a 4 GB recording costs 7 s to hash, against an hour or more to anonymize.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from anonengine.errors import OutputError

log = logging.getLogger(__name__)

MANIFEST_NAME = "anonengine-manifest.jsonl"


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def settings_key(settings: dict) -> str:
    """A short, stable digest of the settings (canonical JSON)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Fingerprint:
    """What identifies an input's content: size and mtime (cheap), and its hash (read when they differ)."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> Fingerprint:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns)


@dataclass
class Record:
    input: str  # relative to the batch's root, with forward slashes
    output: str  # relative to the output folder
    size: int
    mtime_ns: int
    sha256: str
    settings: str  # settings_key of the settings it was made with
    frames: int
    audio: str  # "kept", "dropped" or "none"
    seconds: float
    finished: str  # UTC, ISO 8601
    source: str = ""  # the input's absolute path ("" in records from before it was kept)
    output_size: int = -1  # the output's size when done (-1: not kept): one damaged or cut since is redone
    damage: str = ""  # what the input lost to damage (pictures that could not be decoded, holes): "" where nothing

    def made_from_elsewhere(self, path: Path, output: Path) -> bool:
        """Whether the output this record made, still there, came from another input than `path`, itself still
        there: a second archive anonymized into the same folder would replace it."""
        if not self.source or not output.is_file():
            return False
        try:
            return not os.path.samefile(self.source, path)
        except OSError:
            return False  # the earlier input gone (the archive moved): the same archive, by its name

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.size, self.mtime_ns)


class ManifestUnwritable(OutputError):
    """The manifest cannot be written (a full disk, a permission taken away mid-batch)."""


class Manifest:
    """The records of `folder`'s manifest file, the last one of each input winning."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        self.records: dict[str, Record] = {}
        self.settings: dict[str, dict] = {}  # settings_key -> the settings, as first written
        self._torn = False  # the file ends mid-line: the next record starts on a line of its own
        if self.path.exists():
            self._read()

    def _read(self) -> None:
        try:
            text = self.path.read_text(errors="replace")
        except OSError as exc:  # a folder of that name, a file this user may not read: it was an internal error
            raise OutputError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        self._torn = bool(text) and not text.endswith("\n")
        lines = [line for line in text.splitlines() if line.strip()]
        for line in lines:
            try:
                entry = json.loads(line)
                if "settings_key" in entry:  # a settings line: what a key stands for, for people reading it
                    self.settings.setdefault(entry["settings_key"], entry["settings"])
                    continue
                record = Record(**entry)
            except (ValueError, TypeError, KeyError):
                continue  # a torn line (a batch killed as it wrote), or a line of another version
            self.records[record.input] = record
        if len(lines) > self._torn and not self.records and not self.settings:
            # Overwritten with something else: every file was done again without a word (a user's trial)
            log.warning("%s holds no record this version reads: every file is done again", self.path)

    def done(self, rel: str, path: Path, settings: str, output: Path) -> tuple[bool, str | None]:
        """(whether `rel` is done with these settings, its sha256 if it had to be read).

        Done: a record with these settings, the output still there, and the input the same: same size and
        mtime, or else the same content."""
        record = self.records.get(rel)
        if record is None or record.settings != settings or not output.is_file():
            return False, None
        if record.output_size >= 0 and output.stat().st_size != record.output_size:
            return False, None  # damaged or cut since (a copy stopped midway): it was skipped as done
        if Fingerprint.of(path) == record.fingerprint:
            return True, None
        digest = file_sha256(path)
        return digest == record.sha256, digest

    def add(self, record: Record, settings: dict | None = None) -> None:
        """Appends a record, durably; with `settings`, also what its key stands for (once per key)."""
        lines = [""] if self._torn else []
        if settings is not None and record.settings not in self.settings:
            self.settings[record.settings] = settings
            lines.append(json.dumps({"settings_key": record.settings, "settings": settings}, sort_keys=True))
        lines.append(json.dumps(asdict(record)))
        try:
            with open(self.path, "a") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:  # every file after would be done for nothing: the batch stops (an internal error before)
            raise ManifestUnwritable(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._torn = False
        self.records[record.input] = record


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = ["MANIFEST_NAME", "Fingerprint", "Manifest", "Record", "file_sha256", "settings_key", "utc_now"]
