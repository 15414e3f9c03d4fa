"""Inference backends: PyTorch as loaded, or the same model exported to OpenVINO, ONNX or TensorRT.

An exported model has a fixed input shape. Each camera's frames letterbox to one shape at a given
`imgsz` (640x384 for 16:9 at 640), so a model is exported per shape on first use and cached next to
the weights under a key of (weights hash, shape, batch, precision). A square export would spend two
fifths of its work on padding for 16:9 video. For OpenVINO, Ultralytics exports the model once with
dynamic input sizes (about 6 s: PyTorch, tracing, conversion), and each shape is that model fixed to
the shape by OpenVINO itself (0.1 s, neither PyTorch nor Ultralytics imported; the same outputs to the
bit as Ultralytics' export at that shape): a photo archive of many aspect ratios, or a new camera, no
longer waits for an export each. ONNX and TensorRT are exported per shape through Ultralytics. With
`int8` (OpenVINO only), the dynamic FP32 model is quantized once with NNCF, calibrated on generated
frames at the 16:9 shape of `imgsz` (`anonengine.calibration`), and fixed per shape the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import yaml

from anonengine import models
from anonengine.detections import NUM_KEYPOINTS, Detections
from anonengine.errors import ModelError, first_line

log = logging.getLogger(__name__)

SUFFIX = {"openvino": "_openvino_model", "onnx": ".onnx", "tensorrt": ".engine"}
EXPORT_DIR = ".exports"
DYNAMIC = None  # the "shape" of the OpenVINO model of any input size, from which each shape's is made
CALIBRATION_FRAME = (720, 1280)  # INT8 is calibrated at this frame's input shape (most cameras' 16:9)
STRIDE = 32
SHORT_SIDE_SHARE = 9 / 16  # of imgsz: the least a frame's short side is looked at with (a 16:9 frame's)


def choose_backend(backend: str, device: str) -> str:
    """`auto`: TensorRT, else half-precision torch, on CUDA; OpenVINO on CPU where installed, else torch."""
    if backend != "auto":
        return backend
    if device.startswith("cuda"):
        return "tensorrt" if _importable("tensorrt") else "torch"
    return "openvino" if _importable("openvino") else "torch"


def check_int8(backend: str) -> None:
    """A one-line ModelError unless INT8 can be had: the OpenVINO backend (resolved), with NNCF installed."""
    if backend != "openvino":
        raise ModelError(
            f"detector.int8 needs the openvino backend (CPU), not {backend}: set detector.backend to openvino "
            "(or auto on a CPU), or turn detector.int8 off"
        )
    from anonengine.calibration import require_nncf

    require_nncf()


def letterbox_shape(frame_shape: tuple[int, int], imgsz: int) -> tuple[int, int]:
    """The detector's input (h, w) for a frame: long side to `detector_long_side`, sides up to a stride multiple."""
    h, w = frame_shape
    r = detector_long_side(frame_shape, imgsz) / max(h, w)
    return (math.ceil(round(h * r) / STRIDE) * STRIDE, math.ceil(round(w * r) / STRIDE) * STRIDE)


def detector_long_side(frame_shape: tuple[int, int], imgsz: int) -> int:
    """The long side a frame is looked at with: `imgsz`, or more for a frame wider (or taller) than 16:9, so that
    its short side is never shrunk more than a 16:9 frame's is (`SHORT_SIDE_SHARE` of `imgsz`), up to the frame's
    own size. A 3000x300 panorama at 640 was looked at 640x64, its persons 250 px tall shrunk to 53: none found,
    all shown, in every frame; it is looked at whole now (3008x320, 4 times the work of a 16:9 frame)."""
    long_side, short_side = max(frame_shape), max(1, min(frame_shape))
    wanted = math.ceil(imgsz * SHORT_SIDE_SHARE * long_side / short_side)
    return max(imgsz, min(wanted, math.ceil(long_side / STRIDE) * STRIDE))


class ExportedModels:
    """One exported model per input shape, exported on first use and cached on disk."""

    def __init__(
        self, weights: str, task: str, backend: str, imgsz: int, half: bool, int8: bool = False, threads: int = 0
    ) -> None:
        if models.is_architecture(weights):
            raise ModelError(f"backend {backend} needs trained weights, not an architecture ({weights})")
        if int8:
            check_int8(backend)
        self.weights, self.task, self.backend, self.imgsz, self.half = Path(weights), task, backend, imgsz, half
        self.int8, self.threads = int8, threads
        self._models: dict[tuple[int, int], object] = {}
        self._threaded: dict[tuple[int, int], object] = {}  # shape -> the predictor given `threads`

    def model_for(self, frame_shape: tuple[int, int], imgsz: int | None = None):
        """The model of this frame's input shape (its long side to `imgsz`, default the detector's): an
        `OpenVinoPose` for OpenVINO pose models, else Ultralytics' YOLO over the export."""
        shape = letterbox_shape(frame_shape, imgsz or self.imgsz)
        model = self._models.get(shape)
        if model is None:
            if self.backend == "openvino" and self.task == "pose":
                model = self._openvino_pose(shape)
            else:
                model = ultralytics_yolo()(str(self.export(shape)), task=self.task)
            self._models[shape] = model
        return model, shape

    def _openvino_pose(self, shape: tuple[int, int]) -> OpenVinoPose:
        """The pose model of input `shape`. A cached model OpenVINO cannot read (torn by a disk that filled up,
        a copy cut short) is a cache's miss: made again, from the dynamic model, then from the weights."""
        for suspects in ([], [shape], [shape, DYNAMIC]):
            for cached in suspects:
                self._discard(cached)
            try:
                return OpenVinoPose(self.export(shape), shape, self.threads)
            except (RuntimeError, ModelError) as exc:  # OpenVINO's errors are RuntimeErrors
                # OpenVINO's first line names its source file; its last says what is wrong.
                failure = [line for line in str(exc).splitlines() if line.strip()][-1:] or [type(exc).__name__]
                log.warning("the cached OpenVINO model of %s at %dx%d cannot be loaded (%s); making it again",
                            self.weights.name, shape[1], shape[0], failure[0])
        raise ModelError(f"OpenVINO cannot load {self.weights.name} at {shape[1]}x{shape[0]}, even made again: "
                         f"{failure[0]}")

    def _discard(self, shape: tuple[int, int] | None) -> None:
        target = self.cache_path(shape)
        with in_turn(target.parent / f"{target.name}.lock"):
            shutil.rmtree(target, ignore_errors=True)
            shutil.rmtree(compiled_cache(target), ignore_errors=True)

    def runs_directly(self, frame_shape: tuple[int, int]) -> bool:
        """Whether frames of this shape run without Ultralytics: an OpenVINO pose model made by an earlier run,
        or its dynamic model, which OpenVINO fixes to the shape alone (the cache's key holds the weights' hash,
        so this very file was checked then)."""
        shape = letterbox_shape(frame_shape, self.imgsz)
        return self.backend == "openvino" and self.task == "pose" and (
            self.cache_path(shape).exists() or self.cache_path(DYNAMIC).exists())

    def after_predict(self, model, shape: tuple[int, int]) -> None:
        """Applies `threads` to the predictor Ultralytics built at the first predict (or rebuilt since)."""
        if isinstance(model, OpenVinoPose):
            return  # compiled with them
        if self.backend == "openvino" and self.threads and self._threaded.get(shape) is not model.predictor:
            use_openvino_threads(model, self.cache_path(shape), self.threads)
            self._threaded[shape] = model.predictor

    @functools.cached_property
    def _digest(self) -> str:
        return models.sha256(self.weights)[:12]

    @property
    def calibration_shape(self) -> tuple[int, int]:
        """The input INT8 is calibrated at, whatever shapes it then runs at: most cameras' 16:9 at `imgsz`."""
        return letterbox_shape(CALIBRATION_FRAME, self.imgsz)

    def cache_path(self, shape: tuple[int, int] | None) -> Path:
        """Where the model of input `shape` (h, w) is kept; `DYNAMIC`: the OpenVINO model of any size (INT8's
        named by the shape it was calibrated at)."""
        digest = self._digest
        precision = "int8" if self.int8 else "fp16" if self.half else "fp32"
        if shape is not DYNAMIC:
            size = f"{shape[0]}x{shape[1]}"
        else:
            size = "dynamic-calibrated{}x{}".format(*self.calibration_shape) if self.int8 else "dynamic"
        key = f"{self.weights.stem}-{digest}-{size}-b1-{precision}"
        return self.weights.parent / EXPORT_DIR / f"{key}{SUFFIX[self.backend]}"

    def export(self, shape: tuple[int, int]) -> Path:
        target = self.cache_path(shape)
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        # Several detector processes may start at once: one exports, the others wait and reuse it.
        with in_turn(target.parent / f"{target.name}.lock"):
            if not target.exists():
                self._export_to(target, shape)
        return target

    def _export_to(self, target: Path, shape: tuple[int, int]) -> None:
        if self.backend == "openvino":
            self._fix_shape(target, shape)
        else:
            self._ultralytics_export(target, shape)

    def _dynamic(self) -> Path:
        """The OpenVINO model of any input size, made once: Ultralytics' export, or for INT8 that quantized."""
        dynamic = self.cache_path(DYNAMIC)
        if not dynamic.exists():
            dynamic.parent.mkdir(parents=True, exist_ok=True)
            with in_turn(dynamic.parent / f"{dynamic.name}.lock"):
                if not dynamic.exists():
                    if self.int8:
                        self._quantize_to(dynamic)
                    else:
                        self._ultralytics_export(dynamic, self.calibration_shape, dynamic=True)
        return dynamic

    def _fix_shape(self, target: Path, shape: tuple[int, int]) -> None:
        """The OpenVINO model of input `shape`: the dynamic model fixed to it. OpenVINO folds the shape through
        the graph (the head's anchor grid included), which is what Ultralytics' export at that shape traces: the
        same outputs, without PyTorch, in 0.1 s against about 6 (and for INT8, 20 s of calibration more)."""
        dynamic = self._dynamic()
        ov = openvino_runtime()
        failure = f"cannot make the {shape[1]}x{shape[0]} OpenVINO model of {self.weights.name}"
        with work_folder(target, failure) as work:
            xml = next(dynamic.glob("*.xml"))
            model = ov.Core().read_model(xml)
            model.reshape([1, 3, *shape])
            ov.save_model(model, str(work / xml.name), compress_to_fp16=False)  # as read: fp16 weights stay so
            # Ultralytics' loader reads the input size and whether it is dynamic here (its letterbox follows).
            meta = yaml.safe_load((dynamic / "metadata.yaml").read_text())
            meta["imgsz"] = list(shape)
            if isinstance(meta.get("args"), dict):
                meta["args"]["dynamic"] = False
            (work / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
            work.rename(target)

    def _ultralytics_export(self, target: Path, shape: tuple[int, int], dynamic: bool = False) -> None:
        """Ultralytics' export of the weights to `target`, traced at input `shape`; `dynamic`: for any size."""
        YOLO = ultralytics_yolo()

        with work_folder(target, f"cannot export {self.weights.name} to {self.backend}") as work:
            staged = work / self.weights.name
            shutil.copy2(self.weights, staged)
            if dynamic:
                log.info("exporting %s to %s for every input size (once; cached in %s)", self.weights.name,
                         self.backend, target.parent)
            else:
                log.info("exporting %s to %s at %dx%d (once; cached in %s)", self.weights.name, self.backend,
                         shape[1], shape[0], target.parent)
            fmt = {"openvino": "openvino", "onnx": "onnx", "tensorrt": "engine"}[self.backend]
            if fmt == "openvino":
                openvino_converter()
            ultralytics_log = logging.getLogger("ultralytics")
            level = ultralytics_log.level
            ultralytics_log.setLevel(logging.WARNING)  # the exporter's pages of progress are not ours to show
            try:
                with warnings.catch_warnings():  # tracing warnings about Ultralytics' own code
                    warnings.simplefilter("ignore")
                    produced = YOLO(str(staged), task=self.task).export(
                        format=fmt, imgsz=list(shape), quantize=16 if self.half else None, batch=1, verbose=False,
                        dynamic=dynamic,
                    )
            finally:
                ultralytics_log.setLevel(level)
            Path(produced).rename(target)

    def _quantize_to(self, target: Path) -> None:
        """INT8 from the FP32 dynamic model, calibrated at `calibration_shape`, for every input size."""
        from anonengine.calibration import quantize_openvino

        fp32 = ExportedModels(str(self.weights), self.task, self.backend, self.imgsz, half=False)._dynamic()
        shape = self.calibration_shape
        with work_folder(target, f"cannot quantize {self.weights.name} to INT8") as work:
            log.info("quantizing %s to INT8 on generated %dx%d frames (once; cached in %s)", self.weights.name,
                     shape[1], shape[0], target.parent)
            quantize_openvino(fp32, work, shape)
            work.rename(target)


class OpenVinoPose:
    """An exported YOLO pose model run on OpenVINO directly, with Ultralytics' pre- and post-processing
    redone in NumPy and OpenCV (letterbox, grey 114 padding, RGB 0..1; confidence filter, NMS, back
    to frame coordinates): the same boxes, scores and keypoints (tested to 1e-3 px), 1 to 2 ms a 720p
    frame less on 2 cores, and no PyTorch or Ultralytics to import before the first frame."""

    def __init__(self, folder: Path, shape: tuple[int, int], threads: int = 0) -> None:
        core = openvino_runtime().Core()
        config = {"INFERENCE_NUM_THREADS": threads} if threads else {}
        xml = next(Path(folder).glob("*.xml"))
        compiled = compiled_cache(Path(folder))
        if os.access(compiled.parent, os.W_OK):
            # OpenVINO keeps the compiled model (keyed by its own version, the device and the settings) and loads
            # it next time: 0.12 against 0.27 s before a detector's first frame, on 2 cores. Detect workers
            # starting at once take turns, so that none reads a blob another is writing.
            compiled.mkdir(exist_ok=True)
            config["CACHE_DIR"] = str(compiled)
            with in_turn(compiled / "lock"):
                self.compiled = core.compile_model(str(xml), "CPU", config)
        else:
            self.compiled = core.compile_model(core.read_model(xml), "CPU", config)
        self.shape = shape  # the export's input (h, w)

    def _fit(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """Ultralytics' letterbox of an h x w frame into the input: its resized (w, h) and the padding
        (left, top, right, bottom); each side rounded on its own, as Ultralytics does."""
        input_h, input_w = self.shape
        r = min(input_h / h, input_w / w)
        size = (max(round(w * r), 1), max(round(h * r), 1))
        dw, dh = (input_w - size[0]) / 2, (input_h - size[1]) / 2
        return size, (round(dw - 0.1), round(dh - 0.1), round(dw + 0.1), round(dh + 0.1))

    def detect(self, image: np.ndarray, conf: float, iou: float, max_det: int = 300) -> Detections:
        h, w = image.shape[:2]
        size, (left, top, right, bottom) = self._fit(h, w)
        fitted = image if size == (w, h) else cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        fitted = cv2.copyMakeBorder(fitted, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(114, 114, 114))
        blob = cv2.dnn.blobFromImage(fitted, 1 / 255, swapRB=True)  # 1x3xHxW RGB float32
        rows = self.compiled(blob)[0][0].T  # anchors x (cx, cy, w, h, person score, 17 x (x, y, conf))
        rows = rows[rows[:, 4] > conf]
        if not len(rows):
            return Detections.empty((h, w))
        rows = rows[np.argsort(-rows[:, 4], kind="stable")]
        xywh = np.column_stack([rows[:, :2] - rows[:, 2:4] / 2, rows[:, 2:4]])
        kept = np.array(cv2.dnn.NMSBoxes(xywh.tolist(), rows[:, 4].tolist(), conf, iou), int).reshape(-1)[:max_det]
        rows = rows[kept]
        boxes = np.column_stack([rows[:, :2] - rows[:, 2:4] / 2, rows[:, :2] + rows[:, 2:4] / 2])
        keypoints = rows[:, 5:].reshape(-1, NUM_KEYPOINTS, 3).copy()
        # Back to the frame: each side's own gain, from the letterbox's rounded size (as Ultralytics does).
        limit = np.float32([w, h])
        gain, pad = np.float32(size) / limit, np.float32([left, top])
        boxes = ((boxes.reshape(-1, 2, 2) - pad) / gain).clip(0, limit).reshape(-1, 4)
        keypoints[..., :2] = ((keypoints[..., :2] - pad) / gain).clip(0, limit)
        return Detections((h, w), boxes.astype(np.float32), rows[:, 4].astype(np.float32),
                          keypoints.astype(np.float32))


@contextlib.contextmanager
def work_folder(target: Path, failure: str):
    """An empty folder beside `target` to make it in (what is made is renamed out of it), removed afterwards. An
    error inside, but a ModelError, becomes one: `failure: <its first line>` (exporters, NNCF and OpenVINO
    raise many types; the user needs one line)."""
    work = target.parent / f"{target.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        yield work
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - see above
        raise ModelError(f"{failure}: {first_line(exc)}") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def in_turn(lock_path: Path):
    """Detector processes starting at once take turns here (a blocking lock on `lock_path`, which the kernel
    drops if its holder dies)."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def compiled_cache(export: Path) -> Path:
    """Where OpenVINO keeps an export compiled for this CPU: beside it (the export's folder holds what the
    exporter made, and is copied whole to quantize it)."""
    return export.with_name(f"{export.name}.compiled")


def use_openvino_threads(model, path: Path, threads: int) -> None:
    """Recompiles a loaded OpenVINO YOLO model for `threads` inference threads, unless it has them.

    Ultralytics compiles for every core. Beside the engine's other stages on a small CPU that loses:
    a parallel step waits for whichever of its threads was preempted.
    """
    auto = getattr(model.predictor, "model", None)
    backend = getattr(auto, "backend", auto)  # Ultralytics 8.4 keeps it in AutoBackend.backend, 8.3 in AutoBackend
    compile_model = getattr(backend, "compile_model", None)
    if not isinstance(compile_model, functools.partial) or getattr(backend, "ov_compiled_model", None) is None:
        raise ModelError("cannot set detector.threads for OpenVINO with this Ultralytics version: set it to 0")
    if backend.ov_compiled_model.get_property("INFERENCE_NUM_THREADS") == threads:
        return
    ov = openvino_runtime()
    # Ultralytics' own device and settings (precision hints on ARM, say), plus the thread count; kept
    # for its later recompiles too.
    config = {**compile_model.keywords.get("config", {}), "INFERENCE_NUM_THREADS": threads}
    backend.compile_model = functools.partial(compile_model, config=config)
    backend.ov_compiled_model = backend.compile_model(ov.Core().read_model(next(path.glob("*.xml"))))


def ultralytics_yolo():
    """Ultralytics' YOLO class, its usage analytics off in this process. Ultralytics sends Google Analytics an
    event at each prediction's start and each export (its `sync` setting, on by default, when online and
    outside tests): a privacy tool does not tell a third party when it is used. Turned off here, not in the
    user's Ultralytics settings file, which their other uses of Ultralytics keep."""
    from ultralytics import YOLO
    from ultralytics.utils import events

    events.events.enabled = False
    return YOLO


def openvino_runtime():
    """`openvino`, imported without its model converter.

    `import openvino` imports the converter too, when it can; the converter's import sends a usage event to
    Google Analytics (openvino-telemetry, on unless the user opted out) from a process it starts. A privacy
    tool's detector does not report its every start to a third party (nor wait 0.1 s for the converter). An
    export needs the converter and imports it then (`openvino_converter`)."""
    if "openvino" not in sys.modules:
        sys.modules["openvino.tools.ovc"] = None  # `import openvino` goes on without what it cannot import
        try:
            import openvino  # noqa: F401
        finally:
            del sys.modules["openvino.tools.ovc"]
    return sys.modules["openvino"]


def openvino_converter() -> None:
    """Makes `openvino.convert_model` (what Ultralytics' OpenVINO export calls) there after `openvino_runtime`,
    without its telemetry (`import_without_telemetry`)."""
    ov = openvino_runtime()
    if not hasattr(ov, "convert_model"):
        ov.convert_model = import_without_telemetry("openvino.tools.ovc").convert_model


def import_without_telemetry(module: str):
    """`module` (OpenVINO's model converter, NNCF), imported with openvino-telemetry unimportable: each takes
    its telemetry stub then, which sends nothing. Otherwise each export and quantization is reported to Google
    Analytics (on unless the user opted out; off only in CI): a privacy tool does not tell a third party when
    it is used. Nor does it wait on it: openvino-telemetry 2025.2 sends from processes forked off a thread,
    which on a machine offline were left asleep for good, holding the files open when they forked (an export's
    lock among them: the next export in that process waited for ever)."""
    if module not in sys.modules:
        telemetry = sys.modules.get("openvino_telemetry")
        sys.modules["openvino_telemetry"] = None
        try:
            __import__(module)
        finally:
            if telemetry is None:
                del sys.modules["openvino_telemetry"]
            else:
                sys.modules["openvino_telemetry"] = telemetry
    return sys.modules[module]


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
