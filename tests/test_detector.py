"""Detection with the real pose model, and the seg path on the real segmentation architecture."""

import itertools
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from anonengine import models
from anonengine.config import AnonymizerConfig
from anonengine.detections import Detections, box_iou
from anonengine.detector import PersonDetector, cpu_threads, merge
from anonengine.sample import assets_dir
from anonengine.stages import DetectStage


def pose_config(models_dir) -> AnonymizerConfig:
    cfg = AnonymizerConfig()
    cfg.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.detector.device = "cpu"
    return cfg


@pytest.fixture(scope="module")
def pose_detector(models_dir):
    return PersonDetector(pose_config(models_dir))


@pytest.fixture(scope="module")
def detect_stage(models_dir):
    stage = DetectStage(pose_config(models_dir))
    stage.setup()
    return stage


def test_four_persons_in_bus_jpg(pose_detector):
    image = cv2.imread(str(assets_dir() / "bus.jpg"))
    (det,) = pose_detector.detect([image])
    assert len(det) == 4
    assert det.masks is None
    assert det.keypoints.shape == (4, 17, 3)
    visible = (det.keypoints[:, :, 2] > 0.5).sum(axis=1)
    assert (visible >= 5).sum() >= 3  # real skeletons (the 4th person is cut by the image edge)
    assert np.all(det.boxes[:, [0, 2]] <= image.shape[1]) and np.all(det.boxes[:, [1, 3]] <= image.shape[0])


def test_two_persons_in_zidane_jpg_in_one_batch_with_bus(pose_detector):
    images = [cv2.imread(str(assets_dir() / n)) for n in ("zidane.jpg", "bus.jpg")]
    dets = pose_detector.detect(images)
    assert [len(d) for d in dets] == [2, 4]
    assert dets[0].frame_shape == images[0].shape[:2]


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_a_panoramas_persons_are_looked_for_at_a_16_9_frames_height(backend, models_dir):
    """A 2274x300 strip of real photos (a panoramic camera): at 640 on its long side the detector saw it 84 px
    tall and found 6 of its 18 persons; its short side is looked at as a 16:9 frame's at least (here its own
    300 px), as one batch size for torch too."""
    from anonengine.backends import letterbox_shape

    bus, zidane = (cv2.imread(str(assets_dir() / name)) for name in ("bus.jpg", "zidane.jpg"))
    tiles = [cv2.resize(bus, (225, 300)), cv2.resize(zidane, (533, 300))]
    panorama = np.hstack([tiles[i % 2] for i in range(6)])[:, :2274]
    cfg = pose_config(models_dir)
    cfg.detector.backend = backend
    (found,) = PersonDetector(cfg).detect([panorama])
    assert len(found) >= 15
    assert np.all(found.boxes[:, 2] <= 2274) and np.all(found.boxes[:, 3] <= 300)
    assert letterbox_shape((300, 2274), 640) == (320, 2304)
    assert letterbox_shape((720, 1280), 640) == (384, 640) and letterbox_shape((1920, 1080), 640) == (640, 384)
    assert letterbox_shape((1080, 2560), 640) == (384, 864)  # 21:9: its short side as 16:9's, 360
    assert letterbox_shape((36, 64), 640) == (384, 640)  # a small frame is still looked at at imgsz


@pytest.mark.parametrize("pixel_aspect", [Fraction(64, 45), Fraction(4, 3)], ids=["PAL 16:9 DVD", "HDV"])
def test_squeezed_persons_are_looked_for_as_a_player_shows_them(pixel_aspect, detect_stage):
    """Anamorphic video stores the picture squeezed across, its pixels wider than tall. As stored, the detector
    found 3 of bus.jpg's 4 persons at either shape; shown square (`as_shown`), all 4, where the square photo has
    them, given back in the stored pixels."""
    stage = detect_stage
    image = cv2.imread(str(assets_dir() / "bus.jpg"))
    h, w = image.shape[:2]
    squeezed = cv2.resize(image, (round(w / pixel_aspect), h), interpolation=cv2.INTER_AREA)
    (square,) = stage.process([image])
    (found,) = stage.process([squeezed], [pixel_aspect])
    assert found.frame_shape == squeezed.shape[:2]
    assert len(found) == len(square) == 4
    expected = square.boxes * np.float32([squeezed.shape[1] / w, 1, squeezed.shape[1] / w, 1])
    overlap = box_iou(expected, found.boxes).max(axis=1)
    assert overlap.min() > 0.5  # the 4th, cut by the photo's edge, moves most
    assert overlap[square.scores > 0.8].min() > 0.9


@pytest.mark.parametrize("pixel_aspect", [Fraction(1, 2), Fraction(4, 1)], ids=["1:2", "4:1"])
def test_persons_in_a_video_tagged_far_from_square_are_looked_for_as_stored_too(pixel_aspect, detect_stage):
    """A video tagged 1:2 or 4:1 (mis-tagged, or filmed so) was looked at as shown only, its persons stretched
    past what the detector finds: a user's 1:2 clip showed its standing figure in all 75 frames. Here bus.jpg
    stored as it is, tagged so: its 4 persons are found as the untagged photo's."""
    stage = detect_stage
    image = cv2.imread(str(assets_dir() / "bus.jpg"))
    (square,) = stage.process([image])
    (found,) = stage.process([image], [pixel_aspect])
    assert found.frame_shape == image.shape[:2]
    assert box_iou(square.boxes, found.boxes).max(axis=1).min() > 0.9


def test_a_16_9_picture_in_standard_definition_whose_tag_was_lost_is_looked_at_as_16_9_too(detect_stage,
                                                                                           monkeypatch):
    """A 16:9 street stored at 720x576 in square pixels (a DVD's or a capture card's copy that lost its 64:45 tag):
    its persons 1.42 times as tall as they are. A user's trial: a walker found in 6 of 75 frames, shown in the
    others, the audit passing it. Looked at as a 16:9 player shows it too, the persons are found as in 16:9."""
    from anonengine import video
    from anonengine.sample import render_frames

    street = (("zidane", 0.95, (0.30, 0.50), (0.42, 0.50)), ("bus_left", 0.60, (0.05, 0.55), (0.85, 0.55)),
              ("bus_right", 0.50, (0.72, 0.58), (0.72, 0.58)), ("bus_left", 0.20, (0.95, 0.45), (0.45, 0.45)),
              ("zidane", 0.14, (0.60, 0.42), (0.15, 0.42)))
    scale = np.float32([720 / 640, 576 / 360] * 2)
    frames = [(cv2.resize(image, (720, 576), interpolation=cv2.INTER_AREA),
               [np.float32(p["box"]) * scale for p in persons])
              for image, _, persons in itertools.islice(render_frames(640, 360, 75, actors=street, scene="street",
                                                                      pan=0.15, shake=1.5), 0, 75, 5)]

    def missed() -> int:
        """Persons of the truth no box found covers half of, across and down, in every frame."""
        count = 0
        for image, truth in frames:
            (found,) = detect_stage.process([image])
            for t in truth:
                across = np.minimum(found.boxes[:, 2], t[2]) - np.maximum(found.boxes[:, 0], t[0])
                down = np.minimum(found.boxes[:, 3], t[3]) - np.maximum(found.boxes[:, 1], t[1])
                count += not ((across > 0.5 * (t[2] - t[0])) & (down > 0.5 * (t[3] - t[1]))).any()
        return count

    assert video.wide_tag_lost((576, 720, 3), Fraction(1)) == Fraction(64, 45)
    assert video.wide_tag_lost((576, 720, 3), Fraction(64, 45)) is None  # tagged: shown so already
    assert video.wide_tag_lost((360, 640, 3), Fraction(1)) is None
    with_look = missed()
    monkeypatch.setattr(video, "wide_tag_lost", lambda *_: None)
    without = missed()
    assert without >= 8 and with_look <= without / 2, (with_look, without)


def test_a_part_of_persons_found_upright_seen_upside_down_hides_it_and_sets_no_watch_off(detect_stage, caplog):
    """The street clip's frame 65 (bench/perf.py's, as rendered): the person filling the frame is found upright
    as three overlapping boxes, and turned over his legs score 0.71 as a person. That find set off the watch
    (every frame looked at twice for 250 frames: the detector's work on the clip doubled with --int8) and told
    the user to turn the video round. It is hidden still, and neither now; a person found upside down only
    still sets it off (tests/test_privacy.py)."""
    from anonengine.sample import render_frames

    street = (("zidane", 0.95, (0.30, 0.50), (0.42, 0.50)), ("bus_left", 0.60, (0.05, 0.55), (0.85, 0.55)),
              ("bus_right", 0.50, (0.72, 0.58), (0.72, 0.58)), ("bus_left", 0.20, (0.95, 0.45), (0.45, 0.45)),
              ("zidane", 0.14, (0.60, 0.42), (0.15, 0.42)))
    frames = render_frames(1280, 720, 200, actors=street, scene="street", pan=0.15, shake=1.5)
    image = next(itertools.islice(frames, 65, None))[0]
    (upright,) = detect_stage.detector.detect([image])
    (turned,) = detect_stage.detector.detect([np.ascontiguousarray(image[::-1, ::-1])])
    legs = turned.confident(0.5).turned_back(180)
    assert len(legs) == 1 and box_iou(legs.boxes, upright.boxes).max() < 0.7  # not any one upright box
    (found,) = detect_stage.process([image], cameras=["street65"])
    assert len(found) == len(upright) + 1 and box_iou(legs.boxes, found.boxes).max() == pytest.approx(1)
    assert detect_stage.turned_watch["street65", 180] == 0 and "upside down" not in caplog.text


class AnsweringDetector:
    """Gives the persons it is told, one answer a call (a frame's upright look, then its turned ones)."""

    def __init__(self, *answers: list[tuple[list[float], float]]) -> None:
        self.answers = list(answers)

    def detect(self, images, imgsz=None):
        persons = self.answers.pop(0)
        boxes = np.float32([box for box, _ in persons]).reshape(-1, 4)
        return [Detections(images[0].shape[:2], boxes, np.float32([score for _, score in persons]),
                           np.zeros((len(persons), 17, 3), np.float32))]


def test_a_person_found_narrow_upright_and_whole_upside_down_sets_no_watch_off(models_dir, caplog):
    """An operator's live bus camera (bus.jpg cropped, 320x180, frame 81; the boxes the pose model gave): the
    person cut by the right edge, found upright as a narrow box (0.41), was found whole upside down (0.60), 34%
    of it under the upright boxes. Every live run said "persons found upside down" and looked at every frame
    twice for 250 frames. The whole box is hidden; the watch stays off. A find under none of them sets it off."""
    upright = [([22.0, 72.5, 79.5, 179.0], 0.91), ([91.3, 75.5, 135.1, 179.5], 0.86),
               ([287.4, 61.8, 320.0, 178.5], 0.41), ([0.0, 65.5, 15.8, 180.0], 0.17)]
    whole = ([0.0, 0.0, 63.5, 178.0], 0.60)  # as found in the picture turned over: x 256.5..320, y 2..180
    stage = DetectStage(pose_config(models_dir))
    stage.detector = AnsweringDetector(upright, [whole])  # upright, then upside down (a first frame's first look)
    image = np.full((180, 320, 3), 128, np.uint8)  # grey: a black picture is looked at brightened too
    (found,) = stage.process([image], cameras=["bus"])
    assert len(found) == 5 and found.boxes[4].tolist() == [256.5, 2.0, 320.0, 180.0]
    assert stage.turned_watch["bus", 180] == 0 and "upside down" not in caplog.text
    stage.detector = AnsweringDetector(upright[:2], [whole])  # the edge's person missed upright: upside down only
    stage.since_turned_look["bus"], stage.next_turn["bus"] = 24, 3  # the next look, upside down again
    (found,) = stage.process([image], cameras=["bus"])
    assert len(found) == 3 and stage.turned_watch["bus", 180] == 250
    # Watched: every frame looked at upside down too. Found only so in a third frame, and in more than half of
    # those that showed anyone, they are said with the advice.
    for frame in range(2):
        assert "upside down" not in caplog.text
        stage.detector = AnsweringDetector(upright[:2], [whole])
        (found,) = stage.process([image], cameras=["bus"])
        assert len(found) == 3
    assert "bus: persons found upside down" in caplog.text and "rotate: 180" in caplog.text


@pytest.mark.parametrize(("turned", "advice"), [(90, "turning it (--rotate 270, or the camera's rotate: 270)"),
                                                 (180, "not turning it (--rotate 0, or the camera's rotate: 0)")])
def test_the_turn_advised_counts_from_the_sources_picture(turned, advice, models_dir, caplog):
    """A user's trial: run with --rotate 90, persons found upside down were advised --rotate 180, a turn of the
    picture the detector looked at, not of the source's: followed, the advice came back the other way."""
    upright = [([22.0, 72.5, 79.5, 179.0], 0.91), ([91.3, 75.5, 135.1, 179.5], 0.86)]
    whole = ([0.0, 0.0, 63.5, 178.0], 0.60)
    stage = DetectStage(pose_config(models_dir))
    image = np.full((180, 320, 3), 128, np.uint8)
    for _ in range(3):
        stage.since_turned_look["bus"], stage.next_turn["bus"] = 24, 3  # the next look, upside down
        stage.detector = AnsweringDetector(upright, [whole])
        stage.process([image], cameras=["bus"], turned=[turned])
    assert "bus: persons found upside down" in caplog.text and advice in caplog.text, caplog.text


def test_a_person_an_upright_camera_missed_found_upside_down_is_hidden_without_advice_to_turn_it(models_dir, caplog):
    """A soak's live street camera (trialS B, 640x360, frame 159; the boxes the pose model gave): a walker cut
    by the right edge was missed upright, beside a person found at 0.89, and found upside down at 0.54. The log
    told the operator to turn the camera over (`--rotate 180`): turned, an upright camera's persons would be
    missed. The walker is hidden and watched for, as before; the advice waits for footage that shows its persons
    only turned in most frames."""
    upright = [([10.0, 126.0, 73.0, 305.0], 0.89)]
    walker = ([28.0, 55.0, 93.0, 271.0], 0.54)  # as found in the picture turned over: x 547..612, y 89..305
    stage = DetectStage(pose_config(models_dir))
    image = np.full((360, 640, 3), 128, np.uint8)
    stage.since_turned_look["B"], stage.next_turn["B"] = 24, 3  # the next look, upside down
    stage.detector = AnsweringDetector(upright, [walker])
    (found,) = stage.process([image], cameras=["B"])
    assert found.boxes[-1].tolist() == [547.0, 89.0, 612.0, 305.0] and stage.turned_watch["B", 180] == 250
    for frame in range(40):  # the watch's frames: found upright again, nobody else upside down; once more at 20
        # (and one frame in 25 on a side as well: nobody)
        stage.detector = AnsweringDetector(upright, [walker] if frame in (10, 20) else [], [])
        (found,) = stage.process([image], cameras=["B"])
        assert len(found) == 1 + (frame in (10, 20))
    assert stage.turned_tally["B", 180] == [3, 41] and "upside down" not in caplog.text
    # The watch over, the camera is turned over (months later): counted from the watch that starts then.
    stage.turned_watch["B", 180] = 0
    for frame in range(3):
        stage.since_turned_look["B"], stage.next_turn["B"] = 24, 3  # looked at upside down (the first; then watched)
        stage.detector = AnsweringDetector([], [walker], [], [])
        stage.process([image], cameras=["B"])
    assert stage.turned_tally["B", 180] == [3, 3] and "B: persons found upside down" in caplog.text


def test_a_batchs_files_are_each_looked_at_turned_anew_and_named_in_the_advice(models_dir, caplog):
    """A batch runs its files one after another under one camera name: the advice to turn a video named no file
    ("cam0: persons found on their side", an archivist's trial: which of 25?), and the tally and watch of one
    file ran on into the next, whose own persons found only turned went unsaid."""
    walker = ([28.0, 55.0, 93.0, 271.0], 0.54)
    stage = DetectStage(pose_config(models_dir))
    image = np.full((360, 640, 3), 128, np.uint8)
    for name in ("day1/a.mp4", "day2/b.mp4"):
        stage.begin("cam0", name)
        for frame in range(3):
            stage.since_turned_look["cam0"], stage.next_turn["cam0"] = 24, 3  # the next look, upside down
            stage.detector = AnsweringDetector([], [walker], [], [])
            stage.process([image], cameras=["cam0"])
        assert stage.turned_tally["cam0", 180] == [3, 3]
        assert f"{name}: persons found upside down" in caplog.text
    assert "cam0: persons found" not in caplog.text


def test_pulled_pose_model_is_the_official_file(models_dir):
    assert models.sha256(models_dir / "yolo11n-pose.pt") == models.KNOWN_SHA256["yolo11n-pose.pt"]


def test_seg_path_on_real_architecture_with_random_weights(models_dir):
    """RANDOM WEIGHTS: no segmentation weights can be had offline, so this builds Ultralytics'
    real yolo11n-seg architecture from its YAML. It checks shapes and plumbing, not accuracy."""
    cfg = AnonymizerConfig(method="seg")
    cfg.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.detector.seg_model = "yolo11n-seg.yaml"
    cfg.detector.device = "cpu"
    cfg.detector.imgsz = 320
    cfg.detector.person_conf = 0.0001  # random weights score low; take whatever they give
    detector = PersonDetector(cfg)
    image = cv2.imread(str(assets_dir() / "bus.jpg"))
    (det,) = detector.detect([image])
    h, w = image.shape[:2]
    assert det.masks is not None and det.masks.shape[1:] == (h, w)
    assert det.masks.dtype == bool and det.keypoints.shape == (len(det), 17, 3)
    # Every person the real pose model sees is kept, with or without an outline (fail closed).
    assert len(det) >= 4


def test_merge_keeps_pose_persons_the_outline_model_missed():
    shape = (100, 100)
    masks = np.zeros((1, *shape), bool)
    masks[0, 10:50, 10:30] = True
    seg = Detections(shape, np.array([[10, 10, 30, 50]], np.float32), np.array([0.9], np.float32),
                     np.zeros((1, 17, 3), np.float32), masks)
    pose = Detections(shape, np.array([[11, 10, 30, 50], [60, 20, 90, 95]], np.float32),
                      np.array([0.8, 0.7], np.float32), np.ones((2, 17, 3), np.float32))
    merged = merge(seg, pose)
    assert len(merged) == 2
    assert not merged.masks[1].any()
    np.testing.assert_array_equal(merged.boxes[1], [60, 20, 90, 95])


def test_detections_reject_malformed_fields_with_a_clear_message():
    with pytest.raises(ValueError, match=r"Detections.keypoints: expected ndarray \(1, 17, 3\)"):
        Detections((10, 10), np.zeros((1, 4), np.float32), np.zeros(1, np.float32), np.zeros((1, 5, 3), np.float32))


@pytest.mark.parametrize("backend", ["openvino", "onnx"])
def test_backends_agree_with_torch_on_real_images(models_dir, backend):
    """Same persons found, boxes IoU >= 0.9, on the real-image tests; exported once per input shape."""
    import importlib.util

    if backend == "onnx" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed (optional backend)")
    results = {}
    for name in ("torch", backend):
        cfg = pose_config(models_dir)
        cfg.detector.backend = name
        detector = PersonDetector(cfg)
        results[name] = [detector.detect([cv2.imread(str(assets_dir() / n))])[0] for n in ("bus.jpg", "zidane.jpg")]
    for ref, other in zip(results["torch"], results[backend]):
        assert len(ref) == len(other)
        assert box_iou(ref.boxes, other.boxes).max(axis=1).min() >= 0.9
    assert list((models_dir / ".exports").glob("yolo11n-pose-*-640x480-b1-fp32*"))  # bus.jpg's own shape


def test_openvino_keeps_the_compiled_model_and_finds_the_same_persons(models_dir, tmp_path, monkeypatch):
    """A detector's start loads the model OpenVINO compiled last time (kept beside the export) rather than
    compiling it again; where the export's folder is read-only it compiles, and nothing changes."""
    import shutil

    from anonengine.backends import ExportedModels, OpenVinoPose, compiled_cache

    bus = cv2.imread(str(assets_dir() / "bus.jpg"))
    cfg = AnonymizerConfig().detector
    found = []
    for run in range(2):
        exported = ExportedModels(str(models_dir / "yolo11n-pose.pt"), "pose", "openvino", cfg.imgsz, half=False)
        model, _ = exported.model_for(bus.shape[:2])
        found.append(model.detect(bus, cfg.person_conf, cfg.iou))
        if run == 0:
            folder = exported.cache_path(exported.model_for(bus.shape[:2])[1])
            blobs = [p for p in compiled_cache(folder).iterdir() if p.suffix == ".blob"]
            assert {p.name for p in folder.iterdir()} == {"metadata.yaml", "yolo11n-pose.xml", "yolo11n-pose.bin"}
            assert blobs, "OpenVINO kept no compiled model"
    # A read-only models folder (a shared one): compiled each time, nothing written.
    shared = tmp_path / "shared"
    shutil.copytree(folder, shared)
    monkeypatch.setattr("anonengine.backends.os.access", lambda path, mode: False)
    direct = OpenVinoPose(shared, model.shape).detect(bus, cfg.person_conf, cfg.iou)
    assert not compiled_cache(shared).exists()
    for other in (found[1], direct):
        assert len(other) == len(found[0]) == 4
        np.testing.assert_allclose(other.boxes, found[0].boxes, atol=1e-3)
        np.testing.assert_allclose(other.keypoints, found[0].keypoints, atol=1e-3)


@pytest.mark.parametrize("torn", [["shape"], ["shape", "dynamic"]], ids=["its-shape", "and-the-dynamic-model"])
def test_a_torn_cached_model_is_made_again_and_finds_the_same_persons(torn, models_dir, tmp_path, caplog):
    """A cached OpenVINO model cut short (a disk that filled up, a copy stopped midway), with no compiled copy
    to fall back on: before, every detector start crashed on it (the engine gave up after 6 restarts,
    `--inline` was an internal error); now it is made again, from the dynamic model or, that torn too, from
    the weights."""
    import shutil

    from anonengine.backends import DYNAMIC, ExportedModels, compiled_cache

    bus = cv2.imread(str(assets_dir() / "bus.jpg"))
    cfg = AnonymizerConfig().detector
    intact = ExportedModels(str(models_dir / "yolo11n-pose.pt"), "pose", "openvino", cfg.imgsz, half=False)
    model, shape = intact.model_for(bus.shape[:2])
    expected = model.detect(bus, cfg.person_conf, cfg.iou)
    weights = tmp_path / "yolo11n-pose.pt"
    shutil.copy2(models_dir / "yolo11n-pose.pt", weights)
    copy = ExportedModels(str(weights), "pose", "openvino", cfg.imgsz, half=False)
    for key in (shape, DYNAMIC):
        shutil.copytree(intact.cache_path(key), copy.cache_path(key))
    for key in [{"shape": shape, "dynamic": DYNAMIC}[name] for name in torn]:
        (bin_file,) = copy.cache_path(key).glob("*.bin")
        bin_file.write_bytes(bin_file.read_bytes()[:100_000])
    assert not compiled_cache(copy.cache_path(shape)).exists()
    with caplog.at_level("WARNING", logger="anonengine.backends"):
        remade, _ = copy.model_for(bus.shape[:2])
    assert "Incorrect weights in bin file" in caplog.text
    found = remade.detect(bus, cfg.person_conf, cfg.iou)
    assert len(found) == len(expected) == 4
    np.testing.assert_allclose(found.boxes, expected.boxes, atol=1e-3)


def test_openvino_runs_on_the_configured_number_of_threads(models_dir):
    """On a small CPU the detector must leave cores to the other stages: detector.threads holds."""
    cfg = pose_config(models_dir)
    cfg.detector.backend = "openvino"
    cfg.detector.threads = 1
    detector = PersonDetector(cfg)
    (det,) = detector.detect([cv2.imread(str(assets_dir() / "bus.jpg"))])
    assert len(det) == 4
    model, _ = detector.pose.model_for((1080, 810))
    assert model.compiled.get_property("INFERENCE_NUM_THREADS") == 1


def test_the_engine_detector_leaves_half_the_cores_to_the_other_stages(models_dir):
    """detector.threads 0: every core run alone (--inline); beside the engine's compositors and encoders,
    half of them (2 cores: one thread took 65 ms of CPU an inference against 86 on two)."""
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(3, 0.5) == 3  # set: as set
    assert cpu_threads(0, 1.0) == 0  # all cores: the backend's own default
    assert cpu_threads(0, 0.5) == (0 if cores == 1 else cores // 2)
    assert cpu_threads(0, 0.01) == (0 if cores == 1 else 1)
    if cores < 2:
        pytest.skip("one core: nothing to leave")
    cfg = pose_config(models_dir)
    cfg.detector.backend = "openvino"
    detector = PersonDetector(cfg, cpu_share=0.5)
    (det,) = detector.detect([cv2.imread(str(assets_dir() / "bus.jpg"))])
    assert len(det) == 4
    model, _ = detector.pose.model_for((1080, 810))
    assert model.compiled.get_property("INFERENCE_NUM_THREADS") == cores // 2


def test_openvino_pose_run_directly_equals_ultralytics_own_predictor(models_dir):
    """The detector runs OpenVINO pose exports itself (no Ultralytics predictor per frame): the same
    persons, boxes, scores and keypoints as Ultralytics gives from the same export, on real images and
    generated street frames of three sizes."""
    from ultralytics import YOLO

    from anonengine.backends import ExportedModels, OpenVinoPose
    from anonengine.sample import render_frames

    cfg = AnonymizerConfig().detector
    exported = ExportedModels(str(models_dir / "yolo11n-pose.pt"), "pose", "openvino", cfg.imgsz, half=False)
    images = [cv2.imread(str(assets_dir() / n)) for n in ("bus.jpg", "zidane.jpg")]
    images += [frame for frame, _, _ in render_frames(1280, 720, 2, scene="street")]
    images += [frame for frame, _, _ in render_frames(333, 250, 1)]  # odd sizes pad unevenly
    for image in images:
        direct, shape = exported.model_for(image.shape[:2])
        assert isinstance(direct, OpenVinoPose)
        (reference,) = YOLO(str(exported.export(shape)), task="pose").predict(
            image, imgsz=list(shape), conf=cfg.person_conf, iou=cfg.iou, classes=[0], verbose=False)
        ours, theirs = direct.detect(image, cfg.person_conf, cfg.iou), Detections.from_ultralytics(reference)
        assert len(ours) == len(theirs) > 0
        order, their_order = np.argsort(-ours.scores), np.argsort(-theirs.scores)
        np.testing.assert_allclose(ours.scores[order], theirs.scores[their_order], atol=1e-6)
        np.testing.assert_allclose(ours.boxes[order], theirs.boxes[their_order], atol=1e-3)
        np.testing.assert_allclose(ours.keypoints[order], theirs.keypoints[their_order], atol=1e-3)


@pytest.mark.slow  # two exports, one in a fresh interpreter: 19 to 32 s here
def test_the_detector_runs_openvino_without_its_telemetry(models_dir, tmp_path):
    """`import openvino` imports its model converter, whose import sends a usage event to Google Analytics
    from a process of its own. The detector runs a cached export without the converter, and makes a new
    input size from the dynamic export without it (nor PyTorch); an export in the same process (weights not
    exported before) still finds it, without the telemetry (which sent from processes it forked, left asleep
    here offline, holding the export's lock). In a fresh interpreter, as a detect stage."""
    import shutil

    from anonengine.backends import ExportedModels, letterbox_shape

    weights, fresh = tmp_path / "yolo11n-pose.pt", tmp_path / "fresh" / "yolo11n-pose.pt"  # caches of their own
    shutil.copy2(models_dir / "yolo11n-pose.pt", weights)
    fresh.parent.mkdir()
    shutil.copy2(models_dir / "yolo11n-pose.pt", fresh)
    ExportedModels(str(weights), "pose", "openvino", 320, half=False).export(letterbox_shape((192, 320), 320))
    child = f"""
import sys
import cv2
from anonengine.backends import ExportedModels, OpenVinoPose
models = ExportedModels({str(weights)!r}, "pose", "openvino", 320, half=False)
image = cv2.imread({str(assets_dir() / "bus.jpg")!r})
model, _ = models.model_for((192, 320))
assert isinstance(model, OpenVinoPose)
assert "openvino_telemetry" not in sys.modules and "openvino.tools.ovc" not in sys.modules
model, shape = models.model_for(image.shape[:2])  # not cached: made from the dynamic export
assert shape == (320, 256) and len(model.detect(image, 0.25, 0.7)) > 0
assert not {{"openvino_telemetry", "openvino.tools.ovc", "torch", "ultralytics"}} & set(sys.modules)
model, _ = ExportedModels({str(fresh)!r}, "pose", "openvino", 320, half=False).model_for(image.shape[:2])
assert len(model.detect(image, 0.25, 0.7)) > 0  # exported here, through the converter
import multiprocessing
assert sys.modules.get("openvino_telemetry") is None and not multiprocessing.active_children()  # nothing sent
"""
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]


def test_a_new_input_size_is_the_dynamic_export_fixed_to_it_and_equals_ultralytics_export_at_it(models_dir, tmp_path):
    """Each input size's OpenVINO model is the one dynamic export, fixed to the size by OpenVINO (0.1 s, where
    Ultralytics' export took about 6): its outputs equal those of Ultralytics' export at that size."""
    import shutil

    import yaml
    from ultralytics import YOLO

    from anonengine.backends import DYNAMIC, ExportedModels, openvino_runtime

    shape = (320, 256)  # bus.jpg's at 320, portrait
    exported = ExportedModels(str(models_dir / "yolo11n-pose.pt"), "pose", "openvino", 320, half=False)
    ours = exported.export(shape)
    assert exported.cache_path(DYNAMIC).is_dir()
    staged = tmp_path / "yolo11n-pose.pt"
    shutil.copy2(models_dir / "yolo11n-pose.pt", staged)
    theirs = Path(YOLO(str(staged), task="pose").export(format="openvino", imgsz=list(shape), batch=1, verbose=False))
    core = openvino_runtime().Core()
    bus = cv2.imread(str(assets_dir() / "bus.jpg"))
    blob = cv2.dnn.blobFromImage(cv2.resize(bus, shape[::-1]), 1 / 255, swapRB=True)
    outputs = [core.compile_model(str(next(folder.glob("*.xml"))), "CPU")(blob)[0] for folder in (ours, theirs)]
    assert outputs[0].shape == outputs[1].shape == (1, 56, shape[0] * shape[1] // 32**2 * 21)
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-4)
    ours_meta, theirs_meta = (yaml.safe_load((f / "metadata.yaml").read_text()) for f in (ours, theirs))
    for meta in (ours_meta, theirs_meta):
        del meta["date"]
    assert ours_meta == theirs_meta


def test_ultralytics_sends_no_usage_analytics():
    """Ultralytics sends Google Analytics an event at each prediction's start and export when its `sync` setting
    is on (the default) and it is online, outside tests: the engine's process turns that off for itself."""
    from ultralytics.utils import events

    from anonengine.backends import ultralytics_yolo

    events.events.enabled = True  # as online, with `sync` on, outside a test
    ultralytics_yolo()
    assert events.events.enabled is False
