"""INT8 OpenVINO (NNCF, calibrated on generated frames) against FP32 OpenVINO on the real-image tests."""

import sys

import cv2
import numpy as np
import pytest

from anonengine.config import AnonymizerConfig
from anonengine.detections import box_iou
from anonengine.detector import PersonDetector
from anonengine.errors import ModelError
from anonengine.sample import assets_dir

IMAGES = ("bus.jpg", "zidane.jpg")


def _config(models_dir, backend: str, int8: bool) -> AnonymizerConfig:
    cfg = AnonymizerConfig()
    cfg.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.detector.device = "cpu"
    cfg.detector.backend = backend
    cfg.detector.int8 = int8
    return cfg


@pytest.mark.slow  # one NNCF calibration: 23 to 31 s here
def test_int8_openvino_finds_the_persons_fp32_finds(models_dir):
    """Same persons (all, and those confident enough for a skeleton), boxes IoU >= 0.9, keypoints close;
    quantized once (calibrated at 16:9, 384x640) and fixed to each input shape (bus.jpg 640x480, zidane.jpg
    384x640), all cached as int8."""
    results = {}
    for int8 in (False, True):
        detector = PersonDetector(_config(models_dir, "openvino", int8))
        results[int8] = [detector.detect([cv2.imread(str(assets_dir() / n))])[0] for n in IMAGES]
    confident = AnonymizerConfig().pose.person_conf
    for name, ref, int8 in zip(IMAGES, results[False], results[True]):
        assert len(int8) == len(ref) > 0, name
        assert (int8.scores >= confident).sum() == (ref.scores >= confident).sum(), name
        iou = box_iou(ref.boxes, int8.boxes)
        assert iou.max(axis=1).min() >= 0.9 and iou.max(axis=0).min() >= 0.9, (name, iou)
        for i, j in enumerate(iou.argmax(axis=1)):
            a, b = ref.keypoints[i], int8.keypoints[j]
            seen = (a[:, 2] > 0.5) & (b[:, 2] > 0.5)
            if seen.any():
                height = ref.boxes[i, 3] - ref.boxes[i, 1]
                assert np.linalg.norm(a[seen, :2] - b[seen, :2], axis=1).mean() < 0.05 * height, (name, i)
    exports = models_dir / ".exports"
    assert list(exports.glob("yolo11n-pose-*-640x480-b1-int8_openvino_model"))
    assert list(exports.glob("yolo11n-pose-*-384x640-b1-int8_openvino_model"))
    assert len(list(exports.glob("yolo11n-pose-*-dynamic-calibrated384x640-b1-int8_openvino_model"))) == 1


def test_int8_with_the_torch_backend_is_a_one_line_error(models_dir):
    with pytest.raises(ModelError) as error:
        PersonDetector(_config(models_dir, "torch", True))
    message = str(error.value)
    assert "\n" not in message
    assert "detector.int8 needs the openvino backend" in message and "not torch" in message


def test_int8_without_nncf_is_a_one_line_error(models_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "nncf", None)  # find_spec("nncf") now answers None: not installed
    with pytest.raises(ModelError) as error:
        PersonDetector(_config(models_dir, "openvino", True))
    message = str(error.value)
    assert "\n" not in message
    assert "pip install 'anonengine[int8]'" in message


def test_nncf_reports_nothing_to_a_third_party():
    """NNCF sends each quantization to Google Analytics (openvino-telemetry) unless in CI or under pytest:
    imported the way the INT8 path imports it, outside pytest, it takes its stub."""
    import os
    import subprocess

    code = ("import sys\n"
            "from anonengine.calibration import import_nncf\n"
            "import_nncf()\n"
            "import nncf.telemetry.wrapper as wrapper\n"
            "print(type(wrapper.telemetry).__name__, 'openvino_telemetry' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NNCF_")}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                            check=True)
    assert result.stdout.split() == ["MagicMock", "False"], result.stdout + result.stderr
