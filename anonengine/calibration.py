"""INT8 for the OpenVINO backend: the FP32 export quantized with NNCF, calibrated on generated frames.

The calibration frames come from `anonengine.sample.render_frames` (generated scenes with persons
walking over them, at varied sizes and places), never from the real images the accuracy tests use.
Each frame goes through the same letterbox, colour order and scaling as Ultralytics' predictor, so
the activation ranges NNCF measures are those the model sees at run time. As Ultralytics' own INT8
export does, the detection head (its sigmoids, box decoding and DFL) stays in floating point:
quantizing it costs the boxes and scores most of their accuracy.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from pathlib import Path

import numpy as np
import yaml

from anonengine.errors import ModelError

CALIBRATION_FRAMES = 32
CALIBRATION_SEED = 1000  # scenes apart from the sample clip's (seed 0), so calibration is not the demo
PAD = 114  # Ultralytics' letterbox grey


def require_nncf() -> None:
    """A one-line ModelError when NNCF, which the INT8 quantization needs, is not installed."""
    import importlib.util

    if importlib.util.find_spec("nncf") is None:
        raise ModelError(
            "detector.int8 needs NNCF to quantize the model: pip install 'anonengine[int8]' (or pip install nncf), "
            "or turn detector.int8 off"
        )


def import_nncf():
    """`nncf`, without its usage telemetry (`backends.import_without_telemetry`)."""
    from anonengine.backends import import_without_telemetry

    return import_without_telemetry("nncf")


def calibration_frames(shape: tuple[int, int], count: int = CALIBRATION_FRAMES, seed: int = CALIBRATION_SEED):
    """`count` generated BGR frames, twice the size of the input `shape` (h, w) and of its aspect.

    Scenes change every few frames; in each, the three sprite persons get random heights (a quarter to
    nine tenths of the frame) and paths, some entering or leaving at the edges.
    """
    from anonengine.sample import ACTORS, render_frames

    rng = np.random.default_rng(seed)
    height, width = 2 * shape[0], 2 * shape[1]
    frames: list[np.ndarray] = []
    per_scene = 4
    for scene in range(-(-count // per_scene)):
        actors = tuple(
            (sprite, float(rng.uniform(0.25, 0.9)), tuple(rng.uniform(-0.05, 1.05, 2)), tuple(rng.uniform(-0.05, 1.05, 2)))
            for sprite, *_ in ACTORS
        )
        clip = render_frames(width, height, per_scene, seed=seed + scene, actors=actors,
                             pan=float(rng.uniform(0.0, 0.3)))
        frames += [image for image, _, _ in clip]
    return frames[:count]


def preprocess(frame: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The model's input for a BGR frame: 1x3xHxW float32 RGB in 0..1, letterboxed exactly like Ultralytics'
    predictor does for an exported model of fixed input `shape` (h, w)."""
    from ultralytics.data.augment import LetterBox

    image = LetterBox(shape, auto=False, stride=32)(image=frame)
    return np.ascontiguousarray(image[..., ::-1].transpose(2, 0, 1)[None], dtype=np.float32) / 255.0


def head_scope(ov_model):
    """Names of the detection head's operations, which stay in floating point (as in Ultralytics' exporter)."""
    nncf = import_nncf()

    operations = ov_model.get_ordered_ops()
    sigmoids = [op.get_friendly_name() for op in operations if op.get_type_name() == "Sigmoid"]
    if not sigmoids:
        return None
    head = sigmoids[-1].split("/", 1)[0]
    return nncf.IgnoredScope(
        names=[
            op.get_friendly_name()
            for op in operations
            if op.get_type_name() == "Sigmoid" or op.get_friendly_name().startswith((f"{head}/", f"{head}.dfl"))
        ]
    )


def quantize_openvino(fp32_dir: Path, out_dir: Path, shape: tuple[int, int]) -> None:
    """Writes into `out_dir` the INT8 version of the FP32 OpenVINO export in `fp32_dir` (input `shape`)."""
    require_nncf()
    # NNCF imports torch's extension builder, which warns about a CUDA_HOME without CUDA: not ours to show.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    nncf = import_nncf()
    import openvino as ov

    xml = next(Path(fp32_dir).glob("*.xml"))
    model = ov.Core().read_model(str(xml))
    data = [preprocess(frame, shape) for frame in calibration_frames(shape)]
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf.set_log_level(logging.ERROR)  # a line per operation left in floating point, otherwise
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # and NNCF's progress bars
            quantized = nncf.quantize(
                model,
                nncf.Dataset(data),
                preset=nncf.QuantizationPreset.MIXED,
                subset_size=len(data),
                ignored_scope=head_scope(model),
            )
    finally:
        nncf.set_log_level(level)
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(out_dir / xml.name), compress_to_fp16=False)
    for extra in Path(fp32_dir).iterdir():  # metadata.yaml: task, names, stride, imgsz for Ultralytics' loader
        if extra.suffix not in (".xml", ".bin"):
            shutil.copy2(extra, out_dir / extra.name)
    meta_file = out_dir / "metadata.yaml"
    if meta_file.exists():  # say what it is, as Ultralytics' own INT8 export does
        meta = yaml.safe_load(meta_file.read_text())
        if isinstance(meta.get("args"), dict):
            meta["args"]["quantize"] = 8
            meta_file.write_text(yaml.safe_dump(meta, sort_keys=False))
