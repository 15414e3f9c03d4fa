"""The background model must never show a person, even one in view from the first frame."""

import numpy as np

from anonengine.background import BackgroundModel
from anonengine.config import BackgroundConfig


def scene(h=60, w=80):
    y, x = np.mgrid[0:h, 0:w]
    return np.dstack([x * 3 % 256, y * 4 % 256, (x + y) % 256]).astype(np.uint8)


def test_person_in_view_from_first_frame_is_never_pasted_back():
    bg = BackgroundModel(BackgroundConfig(fill="inpaint"))
    frame = scene()
    frame[20:40, 30:50] = (0, 0, 255)  # a red "person" standing still
    mask = np.zeros(frame.shape[:2], np.uint8)
    mask[18:42, 28:52] = 255
    for _ in range(5):
        bg.update(frame, mask)
        image = bg.render()
        red = (image[..., 2] > 200) & (image[..., 0] < 50) & (image[..., 1] < 50)
        assert not red[18:42, 28:52].any()
    assert not bg.seen[18:42, 28:52].any()


def test_solid_fill_for_never_seen_pixels():
    bg = BackgroundModel(BackgroundConfig(fill="solid"))
    frame = scene()
    mask = np.zeros(frame.shape[:2], np.uint8)
    mask[10:20, 10:20] = 255
    bg.update(frame, mask)
    assert np.all(bg.render()[10:20, 10:20] == 128)


def test_background_is_learnt_where_seen_and_frozen_under_the_mask():
    bg = BackgroundModel(BackgroundConfig(alpha=0.5))
    true = scene()
    person = true.copy()
    person[0:30] = 0  # person covers the top half at first
    top = np.zeros(true.shape[:2], np.uint8)
    top[0:30] = 255
    bg.update(person, top)
    bottom = 255 - top
    moved = true.copy()
    moved[30:] = 0  # then moves to the bottom half
    bg.update(moved, bottom)
    image = bg.render()
    np.testing.assert_array_equal(image, true)  # first sight is copied, frozen under the person after
    brighter = np.clip(true.astype(int) + 20, 0, 255).astype(np.uint8)
    bg.update(brighter, np.zeros_like(top))
    diff = bg.render().astype(int) - true.astype(int)
    assert 8 <= np.median(diff[brighter > true]) <= 11  # follows lighting at the learning rate 0.5
