"""No person leaks: mask hold over missed detections, edges, zones, scene cuts, two thresholds."""

from fractions import Fraction

import cv2
import numpy as np
import pytest
from helpers import LEAK_SHARE, shown_share

from anonengine.background import BackgroundModel
from anonengine.compositor import JOINT_COLOR, LIMB_COLOR, Compositor
from anonengine.config import AnonymizerConfig, BackgroundConfig, CameraConfig, EngineConfig, MaskConfig
from anonengine.detections import Detections
from anonengine.detector import PersonDetector
from anonengine.errors import InputError
from anonengine.inline import run_inline
from anonengine.masks import dilated_boxes
from anonengine.sample import make_sample
from anonengine.video import VideoReader

MISSED = range(20, 26)  # the detector sees nothing in these frames, persons in view


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_sample(tmp_path_factory.mktemp("privacy_clip"), width=640, height=360, frames=32)


def leaks(clip, out_path, frames):
    """(frame, actor, share) for each person whose distinctive pixels still show in the output."""
    bg = clip.true_background().astype(int)
    found = []
    for src, dst, persons in zip(VideoReader(str(clip.video)), VideoReader(str(out_path)), clip.boxes()):
        if src.seq not in frames:
            continue
        for p in persons:
            share = shown_share(src.image, dst.image, bg, p["box"])
            if share > LEAK_SHARE:
                found.append((src.seq, p["actor"], round(share, 3)))
    return found


def run_blind(clip, tmp_path, models_dir, monkeypatch, hold: bool, zones=None):
    """Anonymizes the clip with a detector that returns nothing on the MISSED frames."""
    real_detect = PersonDetector.detect
    calls = {"n": 0}

    def blind_detect(self, frames):
        found = real_detect(self, frames)
        if not frames[0].any():
            return found  # the torch backend's warm-up on a blank image, not a video frame
        first = calls["n"]  # frames come one at a time or in batches (engine.max_batch): count frames
        calls["n"] += len(frames)
        return [Detections.empty(d.frame_shape) if first + i in MISSED else d for i, d in enumerate(found)]

    monkeypatch.setattr(PersonDetector, "detect", blind_detect)
    cfg = EngineConfig(cameras=[CameraConfig(name="c", source=str(clip.video), output=str(tmp_path / "out.mp4"),
                                             privacy_zones=zones or [])])
    cfg.anonymizer.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.anonymizer.detector.device = "cpu"
    cfg.anonymizer.detector.stride = 1  # every frame goes to the (blind) detector
    cfg.anonymizer.hold.enabled = hold
    cfg.anonymizer.hold.lookahead_frames = cfg.anonymizer.hold.recording_lookahead_frames = 0  # the hold alone
    run_inline(cfg)
    return tmp_path / "out.mp4"


def test_detector_blind_for_six_frames_leaks_nothing_with_mask_hold(clip, tmp_path, models_dir, monkeypatch):
    out = run_blind(clip, tmp_path, models_dir, monkeypatch, hold=True)
    assert leaks(clip, out, range(32)) == []


def test_without_mask_hold_the_same_blind_frames_do_leak(clip, tmp_path, models_dir, monkeypatch):
    """The control: proves the case above is a real miss that only the hold covers. (Later frames leak
    too: while blind, the background model learnt the persons, and then pastes them back.)"""
    out = run_blind(clip, tmp_path, models_dir, monkeypatch, hold=False)
    assert set(MISSED) <= {frame for frame, _, _ in leaks(clip, out, range(32))}


def test_privacy_zone_is_hidden_in_every_frame():
    """A zone is never learnt as background, so whatever is in it never shows, from the first frame on."""
    cfg = AnonymizerConfig()
    zone = [[(0.5, 0.5), (0.9, 0.5), (0.9, 0.9), (0.5, 0.9)]]
    compositor = Compositor(cfg, zone)
    for i in range(10):
        frame = np.full((200, 300, 3), 90, np.uint8)
        frame[110:170, 160:260] = (20 * i, 250, 30)  # something private in the zone, changing
        out = compositor.process(frame, Detections.empty((200, 300)))
        assert (np.abs(out[100:180, 150:270].astype(int) - 90).max(axis=2) < 12).all(), f"frame {i}"
        assert (out[:90] == 90).all()  # the rest untouched


def test_weak_person_is_hidden_but_gets_no_skeleton():
    """Two thresholds: what scores above the mask threshold is hidden; only confident persons are drawn."""
    cfg = AnonymizerConfig()
    cfg.hold.enabled = False
    cfg.pose.thickness = 0.02
    frame = np.full((200, 300, 3), 90, np.uint8)
    frame[50:150, 100:160] = 250
    kps = np.zeros((1, 17, 3), np.float32)
    kps[0, :, :2] = np.stack([np.linspace(110, 150, 17), np.linspace(60, 140, 17)], axis=1)
    kps[0, :, 2] = 0.99
    for score, drawn in ((0.2, False), (0.9, True)):
        det = Detections((200, 300), np.array([[100, 50, 160, 150]], np.float32), np.array([score], np.float32), kps)
        out = Compositor(cfg).process(frame, det)
        assert (out[50:150, 100:160] == 250).all(axis=2).mean() < 0.01
        limb = sum((np.abs(out.astype(int) - color).max(axis=2) < 40).sum() for color in (LIMB_COLOR, JOINT_COLOR))
        assert (limb > 20) == drawn, (score, limb)


def test_a_tracked_persons_box_never_shrinks_faster_than_they_move():
    """Where two persons overlap the detector's box for the one behind can shrink at once (5 px of a
    40-px-wide person in the engine's live test): they are still hidden where they were a frame ago."""
    from anonengine.config import HoldConfig
    from anonengine.tracking import MaskHold

    hold = MaskHold(HoldConfig())
    kps = np.zeros((1, 17, 3), np.float32)
    wide = np.array([[100, 50, 140, 160]], np.float32)
    for _ in range(3):
        hold.update(Detections((200, 300), wide, np.array([0.9], np.float32), kps))
    narrow = np.array([[100, 50, 123, 160]], np.float32)
    held = hold.update(Detections((200, 300), narrow, np.array([0.9], np.float32), kps))
    assert held.boxes[:, 2].max() >= 139  # the last frame's right edge is hidden too
    assert (held.scores[1:] == 0).all()  # as a box-only person: hidden, never drawn


def test_box_at_the_frame_edge_is_extended_to_the_edge():
    cfg = MaskConfig(box_margin=0.0, min_margin_px=0, edge_snap=0.05)
    boxes = np.array([[8, 100, 60, 200], [300, 10, 390, 290]], np.float32)
    grown = dilated_boxes(boxes, (300, 400), cfg)
    assert grown[0].tolist() == [0, 100, 60, 200]  # a shoulder cut by the left edge
    assert grown[1].tolist() == [300, 0, 400, 300]


def test_frames_between_detections_are_not_learnt_into_the_background():
    """Between detections the mask is a guess from the boxes on either side: a person it missed (here one
    who was not there at the last detection) must not be learnt, and so later pasted over someone else."""
    cfg = AnonymizerConfig()
    cfg.background.fill = "solid"
    compositor = Compositor(cfg)
    street = np.full((120, 160, 3), 90, np.uint8)
    compositor.process(street, Detections.empty((120, 160)))
    stranger = street.copy()
    stranger[30:90, 100:130] = (0, 0, 255)  # came in after the detection, and away from its boxes
    compositor.process(stranger, Detections.undetected((120, 160)))
    assert not ((compositor.background.render()[..., 2] > 200).any())
    # The camera's place still follows every frame; a detected frame is learnt from as before.
    compositor.process(street, Detections.empty((120, 160)))
    assert (compositor.background.render() == 90).all()


def test_scene_cut_resets_the_background():
    model = BackgroundModel(BackgroundConfig(alpha=0.05, fill="solid"))
    first = np.full((120, 160, 3), 40, np.uint8)
    empty = np.zeros((120, 160), np.uint8)
    model.update(first, empty)
    assert model.update(first, empty) is False
    second = np.full((120, 160, 3), 200, np.uint8)
    person = empty.copy()
    person[30:90, 40:80] = 255
    assert model.update(second, person) is True
    image = model.render()
    assert (image[30:90, 40:80] == 128).all()  # never seen in the new scene: filled, not the old scene
    assert (image[0:20, 0:20] == 200).all()


def test_a_change_of_light_keeps_hidden_whom_the_hold_hides():
    """A red team's clip fading in from black: the background changed so much at frame 10 that it was taken for a
    scene cut, which drops the persons the hold keeps hidden; a standing person the dark frames had let the
    detector find only weakly came out as filmed (a leg and shoe, in the 8 frames after). The same scene in
    another light is no cut (`test_background`): the hold keeps them."""
    from anonengine.sample import make_street

    street = make_street(320, 180)
    person = street.copy()
    person[40:170, 200:240] = (0, 0, 255)  # a red coat with yellow stripes: unlike anything of the street
    person[40:170:8, 200:240] = (0, 255, 255)
    box = np.array([[200, 40, 240, 170]], np.float32)
    found = Detections((180, 320), box, np.array([0.9], np.float32), np.zeros((1, 17, 3), np.float32))
    compositor = Compositor(AnonymizerConfig())
    for _ in range(6):
        compositor.process(person, found)
    for _ in range(4):  # the camera's exposure halves; the detector misses the person meanwhile
        darker = cv2.convertScaleAbs(person, alpha=0.45)
        out = compositor.process(darker, Detections.empty((180, 320)))
        assert shown_share(darker, out, cv2.convertScaleAbs(street, alpha=0.45), (200, 40, 240, 170)) <= LEAK_SHARE


def test_audit_finds_persons_in_the_original_and_none_in_the_anonymized(small_sample_clip, models_dir, tmp_path):
    from anonengine.audit import audit, write_worst_frames

    cfg = EngineConfig(cameras=[CameraConfig(name="c", source=str(small_sample_clip.video),
                                             output=str(tmp_path / "out.mp4"))])
    cfg.anonymizer.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.anonymizer.detector.device = "cpu"
    run_inline(cfg)
    model = str(models_dir / "yolo11n-pose.pt")
    clean = audit(str(small_sample_clip.video), str(tmp_path / "out.mp4"), model, imgsz=640, device="cpu")
    assert clean.frames == 8 and clean.flagged == [] and clean.leak_rate == 0
    # What the clean report cannot speak for: persons too small for the adversary at its input size.
    info = VideoReader(str(small_sample_clip.video)).info
    assert clean.shown_size == (info.width, info.height)
    assert clean.smallest_person == -(-90 * max(info.width, info.height) // 640)
    raw = audit(str(small_sample_clip.video), str(small_sample_clip.video), model, imgsz=640, device="cpu",
                augment=False)
    assert raw.leak_rate == 1.0
    # The two given the other way round: the raw footage's persons stand over pixels that differ from its
    # "original" (the anonymized copy), and passed as skeletons, 0 leaks (a user's trial).
    swapped = audit(str(tmp_path / "out.mp4"), str(small_sample_clip.video), model, imgsz=640, device="cpu",
                    augment=False)
    assert swapped.leak_rate >= 0.75 and swapped.drawn_persons == len(swapped.flagged)
    sheet = write_worst_frames(raw, tmp_path / "worst.png")
    assert sheet is not None and sheet.stat().st_size > 10_000

    # Frames it cannot compare: before, either video's frames past the other's end went unaudited, unsaid.
    def first_five(video: str, path) -> str:
        from anonengine.config import EncoderConfig
        from anonengine.video import VideoWriter

        frames = list(VideoReader(video))[:5]
        writer = VideoWriter(path, info.width, info.height, info.rate, info.time_base, EncoderConfig(crf=8))
        for frame in frames:
            writer.write(frame.image, frame.pts)
        writer.close()
        return str(path)

    cut = audit(str(small_sample_clip.video), first_five(str(tmp_path / "out.mp4"), tmp_path / "cut.mp4"), model,
                imgsz=640, device="cpu")
    assert (cut.frames, cut.cut_short, cut.flagged) == (5, True, [])
    with pytest.raises(InputError, match="goes on after the 5 frames of .*: it is not that original's anonymized"):
        audit(first_five(str(small_sample_clip.video), tmp_path / "orig5.mp4"), str(tmp_path / "out.mp4"), model,
              imgsz=640, device="cpu")


def test_the_audit_looks_at_a_panorama_as_the_run_does(models_dir, tmp_path):
    """A 3000x300 strip of real photos at the adversary's 960 was 960x96 to it: it found 11 of the raw
    footage's persons, and could see no one under 282 px tall (a panorama's output, whose persons the run
    had shown, passed). It looks at it as the run does (`detector_long_side`), whole: 22, from 90 px."""
    from anonengine.audit import audit
    from anonengine.sample import assets_dir
    from anonengine.video import VideoWriter

    bus, zidane = (cv2.imread(str(assets_dir() / name)) for name in ("bus.jpg", "zidane.jpg"))
    tiles = [cv2.resize(bus, (225, 300)), cv2.resize(zidane, (533, 300))]
    panorama = np.hstack([tiles[i % 2] for i in range(8)])[:, :3000]
    raw = tmp_path / "panorama.mp4"
    writer = VideoWriter(raw, 3000, 300, Fraction(25), Fraction(1, 12800))
    for n in range(2):
        writer.write(panorama, 512 * n)
    writer.close()
    report = audit(str(raw), str(raw), str(models_dir / "yolo11n-pose.pt"), device="cpu", augment=False)
    assert report.leak_rate == 1.0 and report.closest == 3008 and report.smallest_person <= 100
    assert min(len(frame.persons) for frame in report.flagged) >= 18


def rendered_clip(path, actors, frames: int, scene: str = "studio", light: float | np.ndarray = 1.0,
                  noise: float = 0.0) -> list:
    """`render_frames` (image, true background, persons) of a 640x360 clip, written near lossless to `path`; `light`:
    the share of its light kept (a scene at night), the same everywhere or pixel by pixel (360x640); `noise`: a
    sensor's, its standard deviation in grey levels (the images only)."""
    from fractions import Fraction

    from anonengine.config import EncoderConfig
    from anonengine.sample import render_frames
    from anonengine.video import VideoWriter

    gain = np.broadcast_to(np.float32(light), (360, 640))[..., None]
    sensor = np.random.default_rng(7)
    rendered = [(np.clip(image * gain + sensor.normal(0, noise, image.shape), 0, 255).astype(np.uint8),
                 np.clip(background * gain, 0, 255).astype(np.uint8), persons)
                for image, background, persons in render_frames(640, 360, frames, actors=actors, scene=scene)]
    writer = VideoWriter(path, 640, 360, Fraction(25), Fraction(1, 25), EncoderConfig(preset="medium", crf=8))
    for i, (image, _, _) in enumerate(rendered):
        writer.write(image, i)
    writer.close()
    return rendered


def test_persons_in_a_dark_scene_are_looked_for_brightened(models_dir, anonengine_cli, tmp_path):
    """A red team's street at night (a fifth of its light, mean luma 22): a dark-suited person standing still, whom
    the pose model found at no score as it is, came out as filmed in 75 of 75 frames; brightened (gamma 0.5) they
    are found at 0.47 to 0.65. A dark picture is looked at brightened, by the run and by the audit's adversary (at a
    tenth of the light it found that person as filmed at no score either, and passed a raw video)."""
    from anonengine.audit import audit
    from anonengine.sample import ACTORS
    from anonengine.stages import has_much_dark

    rendered_clip(tmp_path / "night.mp4", ACTORS, 12, scene="street", light=0.1)
    raw = audit(str(tmp_path / "night.mp4"), str(tmp_path / "night.mp4"), str(models_dir / "yolo11n-pose.pt"),
                device="cpu")
    assert all(any(p.get("view") == "brightened" for p in f.persons) for f in raw.flagged) and raw.leak_rate == 1
    first = next(iter(VideoReader(str(tmp_path / "night.mp4")))).image
    assert has_much_dark(first) and not has_much_dark(cv2.convertScaleAbs(first, alpha=10))  # daylight as it is
    result = anonengine_cli("run", "--video-source", tmp_path / "night.mp4", "--output-video", tmp_path / "out.mp4",
                            "--device", "cpu", "--http", "off", "--quiet")
    assert result.returncode == 0, result.stderr
    report = audit(str(tmp_path / "night.mp4"), str(tmp_path / "out.mp4"), str(models_dir / "yolo11n-pose.pt"),
                   device="cpu", augment=False)
    assert report.leak_rate == 0, [(f.index, f.persons) for f in report.flagged]


@pytest.mark.slow  # 34 s here: its darker twin (a dark scene) stays in the default run
def test_persons_in_the_dark_beside_a_street_lamp_are_looked_for_brightened(models_dir, anonengine_cli, tmp_path):
    """A night team's street lamp (a glow at the top, the sides at a tenth of the light): the lamp lifts the mean
    luma to 71, over the 60 the first dark look switched on, while a person stood in the dark at the side, found at
    0.00 to 0.05 as filmed: shown in 73 of 100 frames (the audit, on the mean's switch too, flagged 2; looking
    brightened, 34). The share of dark pixels decides now, and the picture is looked at as filmed and brightened
    (without that look, this clip's audit flags that person brightened, 0.24)."""
    from anonengine.audit import audit
    from anonengine.sample import ACTORS
    from anonengine.stages import has_much_dark

    yy, xx = np.mgrid[0:360, 0:640].astype(np.float32)
    lamp = 0.10 + 3.6 * np.exp(-(((xx - 320) / 160) ** 2 + (yy / 160) ** 2))
    rendered = rendered_clip(tmp_path / "lamp.mp4", ACTORS, 30, scene="street", light=lamp, noise=4)
    first = next(iter(VideoReader(str(tmp_path / "lamp.mp4")))).image
    assert cv2.cvtColor(first, cv2.COLOR_BGR2GRAY).mean() > 60 and has_much_dark(first)
    result = anonengine_cli("run", "--video-source", tmp_path / "lamp.mp4", "--output-video", tmp_path / "out.mp4",
                            "--device", "cpu", "--http", "off", "--quiet")
    assert result.returncode == 0, result.stderr
    report = audit(str(tmp_path / "lamp.mp4"), str(tmp_path / "out.mp4"), str(models_dir / "yolo11n-pose.pt"),
                   device="cpu")
    # Looking brightened, the audit's adversary also finds the dark's sensor noise now and then, over pixels left as
    # filmed (a 14-px sliver of the bus at the frame's edge, at 0.23, in one frame of one encoding): its finds on the
    # clip's persons are the leaks.
    on_persons = [(f.index, find) for f in report.flagged for find in f.persons
                  if any(mostly_inside(find["box"], person["box"]) for person in rendered[f.index][2])]
    assert on_persons == [], report.flagged


def mostly_inside(box, person_box) -> bool:
    """Whether at least half of `box` (xyxy) lies within `person_box`."""
    x0, y0 = max(box[0], person_box[0]), max(box[1], person_box[1])
    x1, y1 = min(box[2], person_box[2]), min(box[3], person_box[3])
    return max(0, x1 - x0) * max(0, y1 - y0) >= 0.5 * (box[2] - box[0]) * (box[3] - box[1])


def frames_showing_someone(rendered: list, output) -> set[int]:
    """The output's frames where more than 1% of someone's own pixels (those 40 levels off the true background)
    come out as filmed (within 12)."""
    shown = set()
    for (image, scene, persons), out in zip(rendered, VideoReader(str(output))):
        for person in persons:
            x0, y0, x1, y1 = person["box"]
            box = (slice(y0, y1), slice(x0, x1))
            them = np.abs(image[box].astype(int) - scene[box].astype(int)).max(axis=2) > 40
            same = np.abs(out.image[box].astype(int) - image[box].astype(int)).max(axis=2) < 12
            if them.sum() >= 50 and (them & same).sum() > 0.01 * them.sum():
                shown.add(out.seq)
    return shown


def run_file(source, output, models_dir, look_ahead: int, stride: int | None = None) -> None:
    """Anonymizes a file inline with the look-ahead `look_ahead` (a recording's too) and `stride`."""
    cfg = EngineConfig(cameras=[CameraConfig(name="c", source=str(source), output=str(output))])
    cfg.anonymizer.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.anonymizer.detector.device = "cpu"
    cfg.anonymizer.hold.lookahead_frames = min(look_ahead, cfg.anonymizer.hold.lookahead_frames)
    cfg.anonymizer.hold.recording_lookahead_frames = look_ahead
    if stride is not None:
        cfg.anonymizer.detector.stride = stride
    run_inline(cfg)


@pytest.mark.parametrize(("lookahead", "stride"), [(0, 1), (8, 1), (8, 2)])
def test_persons_entering_at_the_edges_are_hidden_with_lookahead(tmp_path, models_dir, lookahead, stride):
    """Walking in from both edges: the frames before the detector finds them leak without look-ahead,
    and none with it (the inline path, the engine's reference), also when detecting every 2nd frame."""
    actors = (("bus_left", 0.60, (-0.10, 0.55), (0.45, 0.55)), ("zidane", 0.45, (1.10, 0.40), (0.62, 0.40)))
    rendered = rendered_clip(tmp_path / "entering.mp4", actors, 48)
    run_file(tmp_path / "entering.mp4", tmp_path / "out.mp4", models_dir, lookahead, stride)
    leaked = frames_showing_someone(rendered, tmp_path / "out.mp4")
    assert (leaked == set()) if lookahead else leaked, sorted(leaked)


def test_a_recordings_longer_look_ahead_hides_a_person_stepping_in_slowly(tmp_path, models_dir):
    """A large person stepping in at the right edge at 1.5 px a frame: a sliver of them is in the picture for
    more frames before they are first found than a live camera's look-ahead (8) covers, and was shown. A
    recording's frames wait for 50 frames anyway: its look-ahead reaches 24, tracing the person back along
    their path (held at the edge instead, a slow entry's ghost came back: test_tracking)."""
    rendered = rendered_clip(tmp_path / "stepping_in.mp4", (("zidane", 0.55, (1.10, 0.45), (0.88, 0.45)),), 96,
                             scene="street")
    shown = {}
    for look_ahead in (8, 24):
        run_file(tmp_path / "stepping_in.mp4", tmp_path / "out.mp4", models_dir, look_ahead)
        shown[look_ahead] = frames_showing_someone(rendered, tmp_path / "out.mp4")
    before_found = {5, 6}  # the sliver's frames the live look-ahead leaves out (found from frame 10)
    assert before_found <= shown[8] and not before_found & shown[24] and shown[24] <= shown[8], shown


def test_detecting_every_other_frame_leaks_nothing(clip, tmp_path, models_dir):
    """detector.stride 2: the frames between detections are hidden by the tracker's held boxes."""
    cfg = EngineConfig(cameras=[CameraConfig(name="c", source=str(clip.video), output=str(tmp_path / "out.mp4"))])
    cfg.anonymizer.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.anonymizer.detector.device = "cpu"
    cfg.anonymizer.detector.stride = 2
    (result,) = run_inline(cfg)
    assert result.frames == 32
    assert leaks(clip, tmp_path / "out.mp4", range(32)) == []


def test_a_stride_without_the_hold_is_refused():
    with pytest.raises(ValueError, match="detector.stride 3 needs hold.enabled"):
        AnonymizerConfig.model_validate({"detector": {"stride": 3}, "hold": {"enabled": False}})


def standing_person() -> tuple[np.ndarray, np.ndarray, Detections, Detections]:
    """A textured 320x240 scene, a frame of it with a real person standing at x 130-190, y 60-180, their
    detection, and a detection that missed them."""
    from anonengine.sample import assets_dir

    person = cv2.resize(cv2.imread(str(assets_dir() / "zidane.jpg"))[:, 300:800], (60, 120))
    scene = cv2.GaussianBlur(np.random.default_rng(1).integers(60, 200, (240, 320, 3)).astype(np.uint8), (0, 0), 2)
    frame = scene.copy()
    frame[60:180, 130:190] = person
    box = np.array([[125, 55, 195, 185]], np.float32)
    found = Detections((240, 320), box, np.array([0.9], np.float32), np.zeros((1, 17, 3), np.float32))
    return scene, frame, found, Detections.empty((240, 320))


def test_a_person_learnt_while_missed_is_not_drawn_over_themselves_once_found():
    """Someone standing still whom the detector misses at first (small, half hidden) is learnt into the
    background; found later, they were hidden behind their own picture: a soak at imgsz 320 showed a person
    the detector had found in 1238 of 1240 frames. The model forgets the places of persons found looking as
    it learnt them (filled from around instead), and keeps what it learnt behind a person in front of it."""
    scene, frame, found, _ = standing_person()
    compositor = Compositor(AnonymizerConfig())
    for _ in range(30):  # missed: learnt where they stand
        compositor.process(frame, Detections.empty((240, 320)))
    out = compositor.process(frame, found)
    assert shown_share(frame, out, scene, [130, 60, 190, 180]) <= LEAK_SHARE
    # A person found in front of a place learnt without them: that place is kept, and drawn in their stead.
    compositor = Compositor(AnonymizerConfig())
    for _ in range(30):
        compositor.process(scene, Detections.empty((240, 320)))
    out = compositor.process(frame, found)
    assert np.abs(out[70:170, 140:180].astype(int) - scene[70:170, 140:180]).mean() < 3


def test_a_live_cameras_standing_person_found_late_is_hidden_by_the_look_ahead_not_drawn_back():
    """Live, a frame is drawn before the frames of its look-ahead are learnt: someone standing whom the detector
    first finds a few frames on (at imgsz 320, a still figure of the sample until frame 43) was hidden there by
    the look-ahead, and drawn back from the model, which had learnt them: 8 frames as filmed each time (a user's
    trial). The model is checked against the later frame's pixels; a place the person has not reached yet,
    which looks as learnt in this frame too, keeps its background."""
    scene, frame, found, missed = standing_person()

    def drawn(filmed: list[np.ndarray], later: np.ndarray) -> np.ndarray:
        """The last frame of `filmed` as a live camera's compositor draws it, the person found 3 frames on."""
        compositor = Compositor(AnonymizerConfig())
        for image in filmed[:-1]:
            compositor.render(image, compositor.learn(image, missed))
        future = [missed, missed, found]
        learnt = compositor.learn(filmed[-1], missed, future,
                                  lambda ahead, b: later[b[1] : b[3], b[0] : b[2]] if ahead == 3 else None)
        return compositor.render(filmed[-1], learnt)

    out = drawn([frame] * 30, later=frame)  # stood there, missed all along
    assert shown_share(frame, out, scene, [130, 60, 190, 180]) <= LEAK_SHARE
    out = drawn([scene] * 30, later=frame)  # walks in: not there yet, their place drawn as learnt
    assert np.abs(out[60:180, 130:190].astype(int) - scene[60:180, 130:190]).mean() < 2


def test_a_recordings_frame_drawn_after_a_miss_taught_the_person_again_does_not_show_them():
    """A recording's frame is drawn once the frames after it were learnt: a miss among those taught the person
    found in it to the background again, and that frame drew them over themselves (47 frames of the soak's
    clip, found in each). It is checked again as it is drawn."""
    scene, frame, found, missed = standing_person()
    compositor = Compositor(AnonymizerConfig(), future_frames=3)
    for _ in range(30):
        compositor.render(frame, compositor.learn(frame, missed))
    learnt = compositor.learn(frame, found)  # found: their place forgotten
    for _ in range(3):
        compositor.learn(frame, missed)  # missed again: taught again, before this frame is drawn
    out = compositor.render(frame, learnt)
    assert shown_share(frame, out, scene, [130, 60, 190, 180]) <= LEAK_SHARE


def test_the_audit_advises_a_turn_only_for_persons_found_only_turned():
    """A copy of an upright original, audited: 19 of its 48 frames were said to show a person "found only upside
    down", and the user told to run again with `--rotate 180`, where the upside-down view had seen a part of a
    person found upright too (a user's evaluation of the audit). Only a turned find that no upright one holds
    counts."""
    from anonengine.audit import AuditFrame, AuditReport

    upright = {"box": [100, 40, 160, 300], "score": 0.9}
    part_seen_turned = {"box": [110, 150, 158, 296], "score": 0.4, "view": "upside down"}
    elsewhere_turned = {"box": [400, 40, 460, 300], "score": 0.8, "view": "upside down"}
    report = AuditReport("a.mp4", "b.mp4", 3, 0.2, 960, flagged=[
        AuditFrame(0, 0.0, [upright, part_seen_turned]),
        AuditFrame(1, 0.04, [upright, elsewhere_turned]),
        AuditFrame(2, 0.08, [elsewhere_turned])])
    assert report.found_turned[180] == 2 and report.upside_down == 2


def test_the_audit_takes_no_logo_for_a_person_upside_down_and_an_upside_down_photo_is_hidden(
        models_dir, anonengine_cli, tmp_path):
    """Its upside-down view took the bus's leaf logo for a person (0.21 to 0.37): 16 of 39 outputs of an
    archivist's trial failed, each told to run again with --rotate 180. Footage that is upside down (its
    persons 0.86 and more there) is still found so by the audit; and the run itself looks at a photo upside
    down too: bus.jpg turned over came out with 3 of its 4 persons shown."""
    from anonengine.audit import audit
    from anonengine.sample import assets_dir

    bus = cv2.imread(str(assets_dir() / "bus.jpg"))
    cv2.imwrite(str(tmp_path / "bus.png"), bus)
    cv2.imwrite(str(tmp_path / "turned.png"), bus[::-1, ::-1].copy())
    for name in ("bus", "turned"):
        result = anonengine_cli("run", "--video-source", tmp_path / f"{name}.png", "--output-video",
                                tmp_path / f"{name}_out.png", "--device", "cpu", "--quiet")
        assert result.returncode == 0, result.stderr
    model = str(models_dir / "yolo11n-pose.pt")
    upright = audit(str(tmp_path / "bus.png"), str(tmp_path / "bus_out.png"), model, device="cpu")
    assert upright.flagged == [] and upright.upside_down == 0
    raw = audit(str(tmp_path / "turned.png"), str(tmp_path / "turned.png"), model, device="cpu")
    assert raw.leak_rate == 1.0 and raw.upside_down == 1
    turned = audit(str(tmp_path / "turned.png"), str(tmp_path / "turned_out.png"), model, device="cpu")
    assert turned.leak_rate == 0 and turned.upside_down == 0


@pytest.mark.parametrize(("degrees", "said"), [(180, "upside down"),
                                               pytest.param(90, "on their side", marks=pytest.mark.slow)])  # 50 s
def test_a_video_that_plays_upside_down_or_on_its_side_is_hidden_and_said(degrees, said, models_dir, anonengine_cli,
                                                                          tmp_path):
    """A video upside down (a camera mounted so, a phone's whose turn was lost) came out with every person the
    pose model missed upside down shown, exit 0 (an archivist's trial: 24 of 24 frames); on its side, the demo
    clip showed a person lying so in 48 of 48 frames. A camera's first frames are looked at each one more way
    round, then one frame in 25 the next way, and every frame for 250 the way that showed a person."""
    from anonengine.audit import audit
    from anonengine.config import EncoderConfig
    from anonengine.video import VideoWriter, turn

    clip = make_sample(tmp_path / "clip", width=640, height=360, frames=30)
    info = VideoReader(str(clip.video)).info
    size = (info.height, info.width) if degrees == 90 else (info.width, info.height)
    writer = VideoWriter(tmp_path / "turned.mp4", *size, info.rate, info.time_base, EncoderConfig(crf=8))
    for frame in VideoReader(str(clip.video)):
        writer.write(np.ascontiguousarray(turn(frame.image, degrees)), frame.pts)
    writer.close()
    back = 360 - degrees  # what turns the video upright again
    for mode in ("--inline", "--http"):
        out = tmp_path / f"out{mode}.mp4"
        extra = ("--inline",) if mode == "--inline" else ("--http", "off")
        result = anonengine_cli("run", "--video-source", tmp_path / "turned.mp4", "--output-video", out,
                                "--device", "cpu", *extra)
        assert result.returncode == 0, result.stderr
        assert f"persons found {said}" in result.stderr and f"--rotate {back}" in result.stderr, result.stderr
        report = audit(str(tmp_path / "turned.mp4"), str(out), str(models_dir / "yolo11n-pose.pt"), imgsz=640,
                       device="cpu")
        assert report.leak_rate <= 0.1, (mode, [f.index for f in report.flagged])
        # Against the truth, every person every frame: the adversary, too, misses persons turned (the sample clip
        # at 320x192, 300 frames, tagged to play on its side: a person standing still from its first frame was
        # shown in every frame, the audit finding him in 87; fixed in DetectStage._turned, not reproduced here).
        background = clip.true_background().astype(int)
        shown = [(src.seq, p["actor"]) for src, dst, persons in zip(VideoReader(str(clip.video)),
                                                                     VideoReader(str(out)), clip.boxes())
                 for p in persons
                 if shown_share(src.image, turn(dst.image, back), background, p["box"]) > LEAK_SHARE]
        assert len(shown) <= 0.1 * info.frames, (mode, shown)
    if degrees == 90:
        # The adversary looks on either side too: persons lying so that it missed upright, mirrored and upside down
        # (the demo clip on its side: 10 more finds in 9 of 48 frames, at imgsz 960), and says how to turn them.
        raw = anonengine_cli("audit", tmp_path / "turned.mp4", tmp_path / "turned.mp4", "--imgsz", "640",
                             "--pose-model", models_dir / "yolo11n-pose.pt", "--device", "cpu")
        assert raw.returncode == 1 and f"found only in the picture turned {back} degrees" in raw.stdout, raw.stdout
        assert f"--rotate {back}" in raw.stdout
