"""Masks decide what is hidden: their growth must be round, proportional, and never soft inside."""

import cv2
import numpy as np
import pytest

from anonengine.config import MaskConfig
from anonengine.detections import Detections
from anonengine.masks import box_mask, dilated_boxes, inflate, person_mask, soft_alpha, soft_regions


def disc(shape, center, radius):
    m = np.zeros(shape, np.uint8)
    cv2.circle(m, center, radius, 255, -1)
    return m


@pytest.mark.parametrize("radius,grow", [(20, 5), (40, 12), (10, 30)])
def test_distance_transform_inflation_grows_a_disc_by_the_radius(radius, grow):
    """Inflating a disc by d gives the disc of radius r+d: round growth, not the square of a dilation."""
    shape = (200, 200)
    inflated = inflate(disc(shape, (100, 100), radius), grow)
    expected = disc(shape, (100, 100), radius + grow)
    differing = np.count_nonzero(inflated != expected)
    assert differing <= 2 * np.pi * (radius + grow) * 1.5  # only a one-pixel rim may differ
    assert np.all(inflated[disc(shape, (100, 100), radius) > 0] == 255)


def test_inflation_of_two_synthetic_person_masks_covers_both_and_the_gap_between_close_ones():
    shape = (120, 200)
    masks = np.zeros((2, *shape), bool)
    masks[0, 20:100, 30:60] = True
    masks[1, 20:100, 66:96] = True  # 6 px gap
    det = Detections(shape, np.array([[30, 20, 60, 100], [66, 20, 96, 100]], np.float32),
                     np.array([0.9, 0.8], np.float32), np.zeros((2, 17, 3), np.float32), masks)
    cfg = MaskConfig(seg_inflate=0.02, min_margin_px=0)  # radius = 0.02 * diag(233) = 4.7 px
    mask = person_mask(det, "seg", cfg)
    assert np.all(mask[masks.any(axis=0)] == 255)
    assert np.all(mask[50, 60:66] == 255)  # the gap closes from both sides
    assert mask[50, 100] == 0 and mask[50, 10] == 0  # growth stays bounded


def test_seg_method_hides_a_person_without_an_outline_by_its_box():
    """A person found by the pose model but missed by the segmentation model is still hidden."""
    shape = (100, 100)
    det = Detections(shape, np.array([[10, 10, 40, 90]], np.float32), np.array([0.9], np.float32),
                     np.zeros((1, 17, 3), np.float32), np.zeros((1, *shape), bool))
    mask = person_mask(det, "seg", MaskConfig())
    assert np.all(mask[10:90, 10:40] == 255)


def test_box_dilation_scales_with_box_size_and_clips_to_frame():
    cfg = MaskConfig(box_margin=0.1, min_margin_px=2)
    boxes = np.array([[100, 100, 200, 300], [0, 0, 10, 10]], np.float32)
    grown = dilated_boxes(boxes, (400, 400), cfg)
    assert grown[0].tolist() == [90, 80, 210, 320]
    assert grown[1].tolist() == [0, 0, 12, 12]
    assert box_mask(boxes, (400, 400), cfg)[80:320, 90:210].all()


def test_feather_is_outside_the_hard_mask():
    """Alpha is exactly 255 on every hidden pixel: feathering never lets a person's edge show."""
    hard = np.zeros((240, 320), np.uint8)
    hard[60:180, 100:200] = 255
    alpha = soft_alpha(hard, MaskConfig(feather=0.02))
    assert np.all(alpha[hard > 0] == 255)
    assert alpha[120, 205] > 0  # soft edge outside
    assert alpha[120, 300] == 0


def test_regions_cover_every_hidden_pixel_without_overlap_and_skip_the_space_between_persons():
    """Two persons at opposite corners: two small regions, not their union box (most of the frame)."""
    hard = np.zeros((720, 1283), np.uint8)  # width not a multiple of the feather's downscale
    hard[40:300, 30:160] = 255
    hard[450:719, 1100:1283] = 255  # touches the right and bottom edges
    regions = soft_regions(hard, MaskConfig(feather=0.01))
    assert len(regions) == 2
    covered = np.zeros(hard.shape, np.uint8)
    for region in regions:
        assert region.alpha.shape == (region.y1 - region.y0, region.x1 - region.x0)
        covered[region.slices] += 1
        assert np.all(region.alpha[hard[region.slices] > 0] == 255)
    assert covered.max() == 1  # disjoint: no pixel is blended twice
    assert covered[hard > 0].all()
    assert covered.sum() < 0.2 * hard.size
    alpha = soft_alpha(hard, MaskConfig(feather=0.01))
    assert 0 < alpha[170, 170] < 255  # soft edge just right of the first person
    assert alpha[170, 260] == 0


def test_regions_never_overlap():
    hard = np.zeros((240, 320), np.uint8)
    hard[20:100, 20:120] = 255
    hard[90:200, 110:300] = 255  # overlaps the first: one connected part
    hard[210:230, 10:30] = 255  # apart
    regions = soft_regions(hard, MaskConfig(feather=0.02))
    boxes = sorted(r.box for r in regions)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def test_blend_is_exactly_the_background_where_hidden_and_the_frame_where_not():
    from anonengine.compositor import blend_into

    values = np.arange(256, dtype=np.uint8)
    frame = np.dstack([np.tile(values, (256, 1))] * 3)  # every value against every other
    background = np.ascontiguousarray(frame.transpose(1, 0, 2))
    for a, expected in ((255, background), (0, frame)):
        out = frame.copy()
        blend_into(out, background, np.full((256, 256), a, np.uint8))
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("column", range(500, 504))
def test_an_outline_mapped_to_fewer_stored_pixels_keeps_every_part(column):
    """Anamorphic video is detected stretched (1024 columns shown for 720 stored) and its outlines given back in
    the stored pixels: a part a stored pixel holds any of stays (averaged and rounded, a 1-pixel-wide arm was
    lost wherever it covered less than half of a stored pixel)."""
    masks = np.zeros((1, 8, 1024), bool)
    masks[0, :, column] = True
    shown = Detections((8, 1024), np.float32([[column, 0, column + 1, 8]]), np.ones(1, np.float32),
                       np.zeros((1, 17, 3), np.float32), masks)
    stored = shown.resized((8, 720))
    assert stored.masks[0].all(axis=0).sum() >= 1
    x = column * 720 / 1024
    assert np.flatnonzero(stored.masks[0, 0]).min() <= x < np.flatnonzero(stored.masks[0, 0]).max() + 1
    np.testing.assert_allclose(stored.boxes[0], [x, 0, (column + 1) * 720 / 1024, 8], rtol=1e-5)
