"""The background model must never show a person, even one in view from the first frame."""

import cv2
import numpy as np

from anonengine.background import BackgroundModel
from anonengine.config import BackgroundConfig
from anonengine.sample import ACTORS, render_frames


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
    # No cut: the person leaping from one half to the other in a frame, nothing else seen, is what a cut looks like.
    bg = BackgroundModel(BackgroundConfig(alpha=0.5, cut_threshold=0))
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


def test_a_model_taking_over_learns_no_strip_of_a_person_just_outside_their_mask():
    """A mask drawn too tight (the detector's box of a person half behind another) leaves a strip of them outside
    it. A compositor's successor starts a new model, which copied the strip as the background at once and
    mirrored it into the hole: after a kill -9, a shoe shown beside the person it belonged to (the dead model had
    learnt that place before the person came). A model that takes over (`guard`) first learns pixels away from
    persons; once the person has gone, there too. A camera's own first model learns as before."""
    h, w = 360, 640
    true = scene(h, w)
    true[..., 2] //= 2  # no red in it
    filmed = true.copy()
    filmed[100:300, 200:280] = (0, 0, 255)  # the person, red
    mask = np.zeros((h, w), np.uint8)
    mask[100:300, 200:268] = 255  # 12 px too narrow on the right
    first = BackgroundModel(BackgroundConfig(cut_threshold=0))
    first.update(filmed, mask)
    assert (first.render()[..., 2] > 200).any()  # what a camera's start risks, and the bench's fill keeps
    bg = BackgroundModel(BackgroundConfig(cut_threshold=0))
    bg.guard(frames=10)
    bg.update(filmed, mask)
    assert not (bg.render()[..., 2] > 200).any(), "the strip was learnt and drawn into the hole"
    assert not bg.seen[100:300, 260:290].any()
    far = bg.seen.copy()
    far[60:340, 160:310] = 255
    assert far.all(), "pixels away from the person were not learnt"
    bg.update(true, np.zeros((h, w), np.uint8))  # the person left
    np.testing.assert_array_equal(bg.render(), true)


def door_frames(h=360, w=640, opened_at=5, frames=20, walker=False, next_to_person=False):
    """A still street: a person standing (masked), a door that opens at `opened_at` (its planks become a dark
    interior) either far from the person or just beside them; optionally someone the detector misses walking
    past the door from the 4th frame. Yields (frame, person mask, the true background)."""
    rng = np.random.default_rng(1)
    true = scene(h, w)
    opened = true.copy()
    door = (slice(100, 300), slice(200, 280)) if next_to_person else (slice(100, 300), slice(420, 500))
    opened[door] = rng.integers(0, 40, (200, 80, 3), np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[80:320, 100:200] = 255
    for i in range(frames):
        background = opened if i >= opened_at else true
        frame = background.copy()
        frame[100:300, 120:180] = (30, 200, 30)  # the person, green
        if walker and i >= 3:
            x = 380 + 12 * (i - 3)
            frame[120:300, x:x + 40] = (200, 60, 200)
        yield frame, mask, background


def test_a_still_camera_takes_on_a_lasting_change_at_once():
    """A door opened away from anyone: the model copies it once it has lasted `adopt_after` frames learnt from,
    where the running average would show the closed door through it for seconds (live, the fill of someone
    passing in front of it showed the door closed)."""
    door = slice(100, 300), slice(420, 500)
    for adopt_after, most_off in ((8, 0), (0, 30)):
        bg = BackgroundModel(BackgroundConfig(cut_threshold=0, adopt_after=adopt_after))
        for frame, mask, truth in door_frames(opened_at=5, frames=13):
            bg.update(frame, mask)
        off = np.abs(bg.render()[door].astype(int) - truth[door]).max()
        assert (off == 0) if most_off == 0 else (off > most_off), (adopt_after, off)


def test_no_lasting_change_is_taken_beside_a_person_or_from_someone_walking():
    """Beside a person (within FIRST_SEEN_GUARD of their mask) a change may be a strip of them the mask left
    out: the running average alone learns it. Someone the detector misses walking past changes each place for a
    few frames (a person 40 px wide, 12 px a frame): nothing of them is copied (and a trace of them
    the running average took is copied over once the place is itself again for long)."""
    beside, further = (slice(100, 300), slice(200, 220)), (slice(100, 300), slice(230, 280))  # 22 px: 3% of 734
    plain = BackgroundModel(BackgroundConfig(cut_threshold=0, adopt_after=0))
    bg = BackgroundModel(BackgroundConfig(cut_threshold=0))
    for frame, mask, truth in door_frames(opened_at=2, frames=16, next_to_person=True):
        plain.update(frame, mask)
        bg.update(frame, mask)
    np.testing.assert_array_equal(bg.render()[beside], plain.render()[beside])
    exact = (bg.render()[further] == truth[further]).all(axis=2)
    assert exact.mean() > 0.95, exact.mean()  # but cells whose change is slight (under CHANGE_LEVELS)
    plain = BackgroundModel(BackgroundConfig(cut_threshold=0, adopt_after=0))
    bg = BackgroundModel(BackgroundConfig(cut_threshold=0))
    for frame, mask, truth in door_frames(opened_at=100, frames=20, walker=True):
        plain.update(frame, mask)
        bg.update(frame, mask)
        # Where the running average took a little of them, the place back to itself for long is copied: better.
        off, plain_off = (np.abs(m.render().astype(int) - truth).max(axis=2) for m in (bg, plain))
        assert (off <= plain_off).all()


def test_no_lasting_change_is_taken_beside_a_person_in_a_partial_cell_at_the_frames_edge():
    """A frame 367 px wide: its last 7 columns make no whole 8-px cell, and a person entering there (6 px of them
    masked, the mask 8 px too tight) was beside no cell that counted: the strip of them outside the mask was
    copied into the model (a review). Partial cells are judged by the pixels they have."""
    h, w = 200, 367
    true = scene(h, w)
    plain, bg = (BackgroundModel(BackgroundConfig(cut_threshold=0, adopt_after=a)) for a in (0, 8))
    for i in range(14):
        frame, mask = true.copy(), np.zeros((h, w), np.uint8)
        if i >= 2:
            frame[60:180, w - 14:] = (30, 200, 30)
            mask[60:180, w - 6:] = 255
        plain.update(frame, mask)
        bg.update(frame, mask)
    np.testing.assert_array_equal(bg.render()[60:180, w - 14 : w - 6], plain.render()[60:180, w - 14 : w - 6])


def test_a_camera_that_shook_once_and_stands_still_again_takes_on_a_lasting_change():
    """One sub-pixel shake leaves a still camera's frames at a fractional place on the canvas for good: a lasting
    change is looked for wherever the frame stays put, resampled or not (a review: adoption was off after one)."""
    import cv2

    h, w = 240, 320
    rng = np.random.default_rng(0)
    still = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), np.uint8), (5, 5), 0)
    shaken = cv2.warpAffine(still, np.float32([[1, 0, 0.6], [0, 1, 0.4]]), (w, h), borderMode=cv2.BORDER_REFLECT)
    door, inner = (slice(40, 120), slice(200, 280)), (slice(44, 116), slice(204, 276))  # its edge is resampled
    for adopt_after, most_off in ((8, 2), (0, 20)):
        bg = BackgroundModel(BackgroundConfig(cut_threshold=0, adopt_after=adopt_after))
        for i in range(20):
            frame = (still if i < 3 else shaken).copy()
            if i >= 7:
                frame[door] = 20
            bg.update(frame, np.zeros((h, w), np.uint8))
        assert bg._placement(bg.view) is None  # resampled onto the canvas
        off = np.abs(bg.render()[inner].astype(int) - 20).max()  # twice resampled: within 2 levels
        assert (off <= most_off) if adopt_after else (off > most_off), (adopt_after, off)


def test_a_person_missed_standing_and_taken_on_is_forgotten_once_found():
    """A person the detector misses while they stand is a lasting change too (the frame shows them anyway);
    once found, the model forgets their place (`forget_where_learnt`): never drawn over them."""
    bg = BackgroundModel(BackgroundConfig(cut_threshold=0))
    box = (420, 100, 500, 300)
    for frame, mask, truth in door_frames(opened_at=100, frames=12):
        frame[100:300, 420:500] = np.random.default_rng(2).integers(0, 255, (200, 80, 3), np.uint8)
        bg.update(frame, mask)
    assert bg.seen[150:250, 440:480].all() and (bg.render()[100:300, 420:500] == frame[100:300, 420:500]).all()
    assert bg.forget_where_learnt(frame, np.array([box], np.float32)) == 1
    assert not bg.seen[100:300, 420:500].any()


# --- the camera moves (issue 11): the model follows it, in scene coordinates -----------------------


def _learn(frames, follow: bool) -> tuple[BackgroundModel, list[float]]:
    """Runs the model over generated frames (persons masked with a margin); returns it and, per frame,
    its mean error against the true background on the pixels it has seen."""
    model = BackgroundModel(BackgroundConfig(follow_camera=follow))
    errors = []
    for image, truth, persons in frames:
        mask = np.zeros(image.shape[:2], np.uint8)
        for p in persons:
            x0, y0, x1, y1 = p["box"]
            mask[max(0, y0 - 8) : y1 + 8, max(0, x0 - 8) : x1 + 8] = 255
        model.update(image, mask)
        seen = model.seen > 0
        errors.append(float(np.abs(model.render().astype(int) - truth)[seen].mean()))
    return model, errors


def test_a_still_camera_gets_exactly_the_plain_running_average():
    frames = list(render_frames(320, 180, 30, actors=ACTORS))
    followed, _ = _learn(frames, follow=True)
    plain, _ = _learn(frames, follow=False)
    np.testing.assert_array_equal(followed.render(), plain.render())
    np.testing.assert_array_equal(followed.seen, plain.seen)


def test_a_panning_camera_neither_smears_nor_ghosts_the_background():
    frames = list(render_frames(640, 360, 96, actors=ACTORS, pan=1.0))  # 6.7 px a frame, 3 canvas moves
    _, fixed = _learn(frames, follow=False)
    _, followed = _learn(frames, follow=True)
    # Measured: 9.6 grey levels off at the end without following the camera, 1.0 with it.
    assert fixed[-1] > 5 and max(followed) < 2.5, (fixed[-1], max(followed))


def test_a_shaking_camera_keeps_its_background_in_place():
    frames = list(render_frames(640, 360, 60, actors=ACTORS, shake=4.0))
    _, fixed = _learn(frames, follow=False)
    _, followed = _learn(frames, follow=True)
    assert np.mean(followed[10:]) < 0.6 * np.mean(fixed[10:]), (np.mean(followed[10:]), np.mean(fixed[10:]))


def test_a_person_walking_with_the_pan_is_never_pasted_into_the_background():
    """Persons who move with the camera stay in the same place in the frame: their pixels must never
    become background, however the model is warped."""
    frames = list(render_frames(640, 360, 60, actors=ACTORS, pan=0.5))
    model, _ = _learn(frames, follow=True)
    image, truth, persons = frames[-1]
    out = model.render()
    for p in persons:
        x0, y0, x1, y1 = p["box"]
        region = (slice(y0, y1), slice(x0, x1))
        person = np.abs(image[region].astype(int) - truth[region]).max(axis=2) > 40
        shown = np.abs(out[region].astype(int) - image[region]).max(axis=2) < 12
        assert (person & shown).sum() <= 0.01 * person.sum()


def test_a_person_a_panning_camera_followed_unfound_is_forgotten_where_learnt_beside_them_once_found():
    """An operator's live street camera (640x360, panning 1 px a frame): a person it followed (still in the
    picture) was missed for their first 16 frames, learnt into the background as the pan went on (copied where
    first seen, then beside), and once found was 16 to 33 px from that copy: the model forgot only their own
    place, and drew the copy back into the masks of those who passed for 4 s. It is looked for around them."""
    frames = list(render_frames(640, 360, 24, actors=(("bus_right", 0.5, (0.72, 0.58), (0.72, 0.58)),),
                                scene="street", pan=0.075))  # 2 px a frame
    model = BackgroundModel(BackgroundConfig())
    for image, _, _ in frames[:16]:  # missed: nothing masked
        model.update(image, np.zeros(image.shape[:2], np.uint8))
    image, _, (person,) = frames[16]
    x0, y0, x1, y1 = box = person["box"]
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[y0 - 8 : y1 + 8, x0 - 8 : x1 + 8] = 255
    model.update(image, mask)
    middle = image[y0 + (y1 - y0) // 4 : y1 - (y1 - y0) // 4, x0 + (x1 - x0) // 4 : x1 - (x1 - x0) // 4]

    def copy_nearby() -> float:  # the best match of the person's middle in the model around their box
        around = model.render((x0 - (x1 - x0), y0 - 20, x1 + (x1 - x0), y1 + 20))
        grey = [cv2.cvtColor(a, cv2.COLOR_BGR2GRAY) for a in (around, middle)]
        return float(cv2.matchTemplate(*grey, cv2.TM_CCOEFF_NORMED).max())

    assert copy_nearby() > 0.85  # measured 0.89, 33 px to the left
    assert model.forget_where_learnt(image, np.float32([box]), nearby=np.array([True])) >= 1
    assert copy_nearby() < 0.7  # measured 0.60: what is left, mixed into the street they passed
    for image, _, _ in frames[17:]:  # found from now on: nothing of them learnt again
        model.update(image, mask)
        model.forget_where_learnt(image, np.float32([box]))
    assert copy_nearby() < 0.7


def in_light(image: np.ndarray, share: float) -> np.ndarray:
    return cv2.convertScaleAbs(image, alpha=share)


def test_the_same_scene_in_another_light_is_relit_not_cut():
    """A fade from black and a camera's exposure jump changed most of the seen background at once and were taken
    for cuts (a red team's clips: at frames 10 and 22 of a 30-frame fade, and at the jump): the model started
    afresh, and the compositor dropped the persons its hold kept hidden. The same scene's pixels follow the
    model's, in another light: the model takes that light on, keeps what it saw, and it is no cut. Another
    scene still is."""
    from anonengine.sample import make_street

    street = make_street(320, 180)
    person = np.zeros((180, 320), np.uint8)
    person[40:170, 200:240] = 255
    model = BackgroundModel(BackgroundConfig(alpha=0.05, fill="solid"))
    for _ in range(5):
        assert model.update(street, person) is False
    darker = in_light(street, 0.45)
    assert model.update(darker, person) is False  # 87% of the seen pixels 40 levels darker, or more
    drawn = model.render().astype(int)
    seen = model.seen > 0
    assert not seen[40:170, 200:240].any()  # nothing seen under the person, before or since
    assert np.abs(drawn - darker)[seen].mean() < 2, np.abs(drawn - darker)[seen].mean()
    for share in np.linspace(0.1, 1.0, 20):  # a fade in
        assert model.update(in_light(street, share), person) is False
    other = cv2.flip(make_street(320, 180), 0)  # another place: the street upside down
    assert model.update(other, person) is True
