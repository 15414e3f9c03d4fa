"""The background model on a GPU (`background.device: cuda`), tested here on CPU tensors (this machine has no
GPU): the same frames and person masks through the OpenCV model and the PyTorch one give the same pictures,
exactly while the camera stands still, within a grey level or so when it moves (OpenCV rounds positions to
1/32 px and learns from uint8 resampled frames; the tensors do neither), but for a pixel now and then where
nearest-neighbour sampling of what was seen rounds the other way."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from anonengine.background import BackgroundModel
from anonengine.background_torch import TorchBackgroundModel
from anonengine.compositor import Compositor
from anonengine.config import AnonymizerConfig, BackgroundConfig
from anonengine.detections import Detections
from anonengine.errors import ConfigError
from anonengine.sample import render_frames

WIDTH, HEIGHT, FRAMES = 240, 144, 24
CAMERAS = {
    "still": {},
    "shake": {"shake": 2.0, "scene": "street"},
    "pan": {"pan": 0.3, "scene": "street"},
    "zoom": {"zoom": 1.3, "scene": "street"},
    "cut": {"cut_at": 12},
}


def person_mask(persons, shape) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    for person in persons:
        x0, y0, x1, y1 = (round(v) for v in person["box"])
        mask[max(0, y0 - 5) : y1 + 5, max(0, x0 - 5) : x1 + 5] = 255
    return mask


@pytest.mark.parametrize("resample", ["linear", "cubic", "lanczos"])
@pytest.mark.parametrize("camera", list(CAMERAS))
def test_the_tensor_model_draws_what_the_opencv_model_draws(camera, resample):
    cfg = BackgroundConfig(resample=resample)
    opencv, tensors = BackgroundModel(cfg, keep_frames=6), TorchBackgroundModel(cfg, keep_frames=6, device="cpu")
    differences, views = [], []
    for image, _, persons in render_frames(WIDTH, HEIGHT, FRAMES, **CAMERAS[camera]):
        mask = person_mask(persons, image.shape)
        assert opencv.update(image, mask) == tensors.update(image, mask)  # the same scene cuts
        views.append((opencv.view, tensors.view))
        # The whole frame, a region, and a frame 6 back as a recording's waits for its future.
        for box, (view_a, view_b) in ((None, views[-1]), ((30, 20, 170, 130), views[-1]), (None, views[0])):
            drawn = opencv.render(box, view_a), tensors.render(box, view_b)
            assert drawn[0].shape == drawn[1].shape and drawn[1].dtype == np.uint8
            differences.append(np.abs(drawn[0].astype(int) - drawn[1]).max(axis=2))
        views = views[-7:]
    differences = np.stack([d.ravel() for d in differences if d.shape == differences[0].shape])
    if camera in ("still", "cut"):
        assert differences.max() == 0
    else:
        # Measured: 0.1 on average (shake, zoom; 0 for a pan by whole pixels), 0.3 for a zoom in Lanczos, whose
        # general warp OpenCV does with its 1/32-px table (0.13% of pixels then more than 2 off).
        assert differences.mean() < 0.35, differences.mean()
        assert (differences > 2).mean() < 0.002, f"{(differences > 2).mean():.2%} of pixels off by more than 2"
    assert (opencv.seen == tensors.seen).mean() > 0.999


def test_the_tensor_model_takes_on_lasting_changes_and_guards_as_opencv_does():
    """A door opened away from the person (`background.adopt_after`), and a successor's guard (`guard`: first
    learnt only away from persons): the same pixels (within the running average's rounding: a grey level), the
    same seen places."""
    from test_background import door_frames

    cfg = BackgroundConfig(cut_threshold=0)
    for guarded in (0, 10):
        opencv, tensors = BackgroundModel(cfg), TorchBackgroundModel(cfg, device="cpu")
        opencv.guard(guarded)
        tensors.guard(guarded)
        for frame, mask, _ in door_frames(opened_at=3, frames=13):
            opencv.update(frame, mask)
            tensors.update(frame, mask)
            assert np.abs(opencv.render().astype(int) - tensors.render()).max() <= 1
            assert np.array_equal(opencv.seen, tensors.seen)
        assert np.array_equal(opencv.render(), tensors.render())  # the door copied by both


@pytest.mark.parametrize("camera", ["still", "shake"])
def test_the_tensor_model_tells_what_moves_as_opencv_does(camera):
    """`moving` (what `mask.motion` hides) from the tensors' samples: the same cells but now and then one at the
    threshold, where the shaking camera's resampling rounds the other way."""
    cfg = BackgroundConfig()
    opencv, tensors = BackgroundModel(cfg), TorchBackgroundModel(cfg, device="cpu")
    told, differ = 0, 0
    for image, _, persons in render_frames(WIDTH, HEIGHT, FRAMES, **CAMERAS[camera]):
        found = person_mask([p for p in persons if p["actor"] != persons[0]["actor"]], image.shape)  # one missed
        assert opencv.place(image, found) == tensors.place(image, found)
        moving = opencv.moving(image), tensors.moving(image)
        assert (moving[0] is None) == (moving[1] is None)
        if moving[0] is not None:
            told += np.count_nonzero(moving[0])
            differ += np.count_nonzero(moving[0] != moving[1])
        opencv.learn(image, found)
        tensors.learn(image, found)
    assert told > 50  # the missed person, moving
    assert differ <= (0 if camera == "still" else 0.02 * told), (differ, told)


def test_the_tensor_model_blends_as_opencv_does():
    """The blend of a region on the device (the frame's pixels up, the blended ones down) gives the very
    pixels OpenCV's blendLinear gives with the same background: soft edges, the background alone where the
    mask is whole, the frame untouched where it is empty; into a region of the frame (a strided view)."""
    cfg = BackgroundConfig()
    opencv, tensors = BackgroundModel(cfg), TorchBackgroundModel(cfg, device="cpu")
    rng = np.random.default_rng(3)
    for image, _, persons in render_frames(WIDTH, HEIGHT, 6):
        mask = person_mask(persons, image.shape)
        opencv.update(image, mask)
        tensors.update(image, mask)
    box = (30, 20, 170, 130)
    alpha = rng.integers(0, 256, (box[3] - box[1], box[2] - box[0]), np.uint8)
    alpha[:30], alpha[-30:] = 0, 255
    frame = rng.integers(0, 256, (HEIGHT, WIDTH, 3), np.uint8)
    blended = [frame.copy(), frame.copy()]
    for model, out in zip((opencv, tensors), blended):
        model.blend_into(out[box[1]:box[3], box[0]:box[2]], box, model.view, alpha)
    assert np.array_equal(blended[0], blended[1])
    region = blended[1][box[1]:box[3], box[0]:box[2]]
    assert np.array_equal(region[:30], frame[box[1]:box[1] + 30, box[0]:box[2]])
    assert np.array_equal(region[-30:], tensors.render(box)[-30:])
    outside = np.ones(frame.shape[:2], bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert np.array_equal(blended[1][outside], frame[outside])


def test_a_compositor_with_the_tensor_model_anonymizes_as_with_opencv():
    """Masks, regions and skeletons are the compositor's own (CPU) code; the background it draws from lives
    on the device, and so does the blend."""
    cfg = AnonymizerConfig()
    opencv, tensors = Compositor(cfg), Compositor(cfg)
    tensors.background = TorchBackgroundModel(cfg.background, device="cpu")
    worst = 0
    for image, _, persons in render_frames(WIDTH, HEIGHT, FRAMES, shake=1.5, scene="street"):
        boxes = np.array([p["box"] for p in persons], np.float32).reshape(-1, 4)
        keypoints = np.zeros((len(boxes), 17, 3), np.float32)
        keypoints[:, :, 0] = ((boxes[:, 0] + boxes[:, 2]) / 2)[:, None]
        keypoints[:, :, 1] = np.linspace(boxes[:, 1] + 5, boxes[:, 3] - 5, 17).T
        keypoints[:, :, 2] = 0.9
        found = Detections(image.shape[:2], boxes, np.full(len(boxes), 0.9, np.float32), keypoints)
        out = opencv.process(image, found), tensors.process(image, found)
        worst = max(worst, int(np.percentile(np.abs(out[0].astype(int) - out[1]), 99.9)))
    assert worst <= 2


def test_a_gpu_that_is_not_there_is_one_clear_error():
    cfg = AnonymizerConfig()
    cfg.background.device = "cuda:7"
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ConfigError, match=r"background.device cuda:7: no such CUDA device"):
        Compositor(cfg)


def test_the_tensor_model_relights_a_scene_as_the_opencv_model_does():
    """An exposure jump and a fade in (`test_background`): the same decisions, the same relit pixels."""
    import cv2
    from test_background import in_light

    from anonengine.sample import make_street

    street = make_street(WIDTH, HEIGHT)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[30:130, 150:180] = 255
    opencv, tensors = BackgroundModel(BackgroundConfig()), TorchBackgroundModel(BackgroundConfig(), device="cpu")
    lights = [1.0] * 4 + [0.45] * 3 + list(np.linspace(0.1, 1.0, 12))
    for share in lights:
        image = in_light(street, share)
        assert opencv.update(image, mask) is False and tensors.update(image, mask) is False
        drawn = opencv.render().astype(int), tensors.render().astype(int)
        assert np.abs(drawn[0] - drawn[1]).max() <= 1
    other = cv2.flip(street, 0)
    assert opencv.update(other, mask) is True and tensors.update(other, mask) is True
