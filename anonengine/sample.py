"""A sample clip with ground truth, made from images that ship with Ultralytics.

Real persons cut from `bus.jpg` and `zidane.jpg` move over a generated static scene; one stands still
from the first frame (the case the seed gets wrong). Since the scene is known, tests and benchmarks can
check both that persons are gone and that what replaced them is the true background.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from anonengine.config import EncoderConfig
from anonengine.video import VideoWriter

# Tight person boxes (x0, y0, x1, y1) in the Ultralytics assets, found once with yolo11n-pose.
PERSON_SPRITES = {
    "bus_left": ("bus.jpg", (48, 400, 224, 906)),
    "bus_right": ("bus.jpg", (669, 388, 810, 878)),
    "zidane": ("zidane.jpg", (744, 37, 1142, 710)),
}

# Each actor: sprite, height as a share of the frame, start and end centre (shares of width/height).
ACTORS = (
    ("bus_right", 0.55, (0.80, 0.58), (0.80, 0.58)),  # stands still from frame 0
    ("bus_left", 0.60, (0.15, 0.55), (0.58, 0.55)),  # walks right
    ("zidane", 0.45, (0.55, 0.38), (0.22, 0.42)),  # walks left
)

TIME_BASE = Fraction(1, 12800)


@dataclass(frozen=True)
class SampleClip:
    video: Path
    background: Path
    truth: Path

    def boxes(self) -> list[list[dict]]:
        """Per frame: the persons in view, each {"actor", "box": [x0, y0, x1, y1], "still"}."""
        return json.loads(self.truth.read_text())["frames"]

    def true_background(self) -> np.ndarray:
        return cv2.imread(str(self.background))


def assets_dir() -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets"


def make_scene(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A static, textured scene with no person in it: wall, floor, tiles, objects, fine noise."""
    rng = np.random.default_rng(seed)
    scene = np.zeros((height, width, 3), np.uint8)
    horizon = int(height * 0.45)
    wall = np.linspace((170, 190, 205), (120, 140, 160), horizon).astype(np.uint8)
    scene[:horizon] = wall[:, None, :]
    floor = np.linspace((90, 110, 120), (50, 70, 80), height - horizon).astype(np.uint8)
    scene[horizon:] = floor[:, None, :]
    tile = max(8, width // 24)
    for x in range(0, width, tile):
        cv2.line(scene, (x, horizon), (int(width / 2 + (x - width / 2) * 1.8), height), (40, 55, 60), 1)
    for i in range(1, 6):
        y = horizon + int((height - horizon) * (i / 6) ** 1.6)
        cv2.line(scene, (0, y), (width, y), (40, 55, 60), 1)
    for _ in range(7):  # windows and posters on the wall
        x0 = int(rng.uniform(0, width * 0.9))
        y0 = int(rng.uniform(horizon * 0.1, horizon * 0.6))
        w, h = int(rng.uniform(0.05, 0.14) * width), int(rng.uniform(0.12, 0.3) * horizon)
        color = tuple(int(c) for c in rng.integers(30, 230, 3))
        cv2.rectangle(scene, (x0, y0), (x0 + w, y0 + h), color, -1)
        cv2.rectangle(scene, (x0, y0), (x0 + w, y0 + h), (30, 30, 30), 2)
    noise = rng.normal(0, 4, scene.shape)
    return np.clip(scene + noise, 0, 255).astype(np.uint8)


# Person-free parts of bus.jpg (x0, y0, x1, y1), stacked into a street: facade, bus side, pavement.
STREET_BANDS = ((0, 0, 810, 225, 0.38), (350, 232, 660, 700, 0.34), (80, 912, 810, 1080, 0.28))


def make_street(width: int, height: int) -> np.ndarray:
    """A static street with real textures (brick, windows, a bus, cobbles) cut from `bus.jpg` where
    nobody stands; bands mirrored side by side to any width."""
    image = cv2.imread(str(assets_dir() / "bus.jpg"))
    if image is None:
        raise FileNotFoundError(f"Ultralytics asset bus.jpg not found in {assets_dir()}")
    rows = []
    heights = [round(share * height) for *_, share in STREET_BANDS]
    heights[-1] = height - sum(heights[:-1])
    for (x0, y0, x1, y1, _), band_height in zip(STREET_BANDS, heights):
        crop = image[y0:y1, x0:x1]
        band = cv2.resize(crop, (max(1, round(crop.shape[1] * band_height / crop.shape[0])), band_height),
                          interpolation=cv2.INTER_AREA)
        tiles = [band if i % 2 == 0 else band[:, ::-1] for i in range(width // band.shape[1] + 1)]
        rows.append(np.hstack(tiles)[:, :width])
    return np.ascontiguousarray(np.vstack(rows))


def _load_sprite(name: str, height: int) -> np.ndarray:
    file, (x0, y0, x1, y1) = PERSON_SPRITES[name]
    image = cv2.imread(str(assets_dir() / file))
    if image is None:
        raise FileNotFoundError(f"Ultralytics asset {file} not found in {assets_dir()}")
    crop = image[y0:y1, x0:x1]
    width = max(2, round(crop.shape[1] * height / crop.shape[0]))
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA)


def camera_path(width: int, height: int, frames: int, seed: int = 0, pan: float = 0.0, shake: float = 0.0,
                zoom: float = 1.0) -> list[np.ndarray]:
    """Per frame, the 2x3 matrix from a frame pixel to the scene's (see `render_frames`)."""
    jitter = np.random.default_rng(seed + 1000).uniform(-shake, shake, (frames, 2)) if shake else np.zeros((frames, 2))
    centre = np.float64([width / 2, height / 2])
    path = []
    for i in range(frames):
        t = i / max(1, frames - 1)
        scale = 1 + (zoom - 1) * t
        shift = centre - centre / scale - jitter[i] / scale + (round(pan * width * t), 0)
        path.append(np.float64([[1 / scale, 0, shift[0]], [0, 1 / scale, shift[1]]]))
    return path


def render_frames(width: int, height: int, frames: int, seed: int = 0, actors=ACTORS, pan: float = 0.0,
                  cut_at: int | None = None, shake: float = 0.0, zoom: float = 1.0, scene: str = "studio"):
    """Yields (image, true background, persons) for each frame.

    `actors`: (sprite, height share, start centre, end centre[, (t0, t1)[, frames]]), centres in shares of
    the frame; the person stands at the start until t0, walks to the end by t1 (shares of the clip, default
    0 and 1) and stays there; with `frames`, they are in those frames only (cut in). A centre outside 0..1
    puts the person partly or wholly out of the picture (entering, leaving). `pan`: the camera turns over the
    clip by this share of the frame width.
    `cut_at`: from that frame on, the other scene. `shake`: a hand-held camera, each frame shifted by up
    to this many pixels (sub-pixel, at random). `zoom`: the camera zooms in to this factor by the end.
    `scene`: "studio" (generated) or "street" (real textures, `make_street`). Persons' boxes are
    clipped to the frame; persons out of the picture are not listed.
    """
    path = camera_path(width, height, frames, seed, pan, shake, zoom)
    canvas_width = width + round(pan * width)
    scenes = [make_scene(canvas_width, height, seed), make_street(canvas_width, height)]
    if scene == "street":
        scenes.reverse()
    if cut_at is None:
        scenes.pop()
    sprites = []
    for name, hf, start, end, *timing in actors:
        walk, shown = timing[0] if timing else (0.0, 1.0), timing[1] if len(timing) > 1 else None
        sprites.append((name, _load_sprite(name, round(hf * height)), start, end, walk, shown))
    for i in range(frames):
        t = i / max(1, frames - 1)
        canvas = scenes[1 if cut_at is not None and i >= cut_at else 0]
        to_scene = path[i]
        if np.allclose(to_scene[:, :2], np.eye(2)) and np.allclose(to_scene[:, 2], np.round(to_scene[:, 2])):
            x, y = np.round(to_scene[:, 2]).astype(int)
            view = np.ascontiguousarray(canvas[y : y + height, x : x + width])
        else:
            view = cv2.warpAffine(canvas, to_scene, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REFLECT)
        image = view.copy()
        persons = []
        scale = 1 / to_scene[0, 0]
        centre = np.float64([width / 2, height / 2])
        jitter = centre - centre / scale + (round(pan * width * t), 0) - to_scene[:, 2]  # the shake, x scale
        for name, sprite, start, end, (t0, t1), shown in sprites:
            if shown is not None and i not in shown:
                continue
            if scale != 1:
                sprite = cv2.resize(sprite, (max(2, round(sprite.shape[1] * scale)), max(2, round(sprite.shape[0] * scale))),
                                    interpolation=cv2.INTER_AREA)
            sh, sw = sprite.shape[:2]
            walked = _walked(t, t0, t1)
            at = (np.float64(start) + (np.float64(end) - start) * walked) * (width, height)
            at = (at - centre) * scale + centre + jitter
            x0, y0 = round(at[0] - sw / 2), round(at[1] - sh / 2)
            vx0, vy0, vx1, vy1 = max(0, x0), max(0, y0), min(width, x0 + sw), min(height, y0 + sh)
            if vx1 <= vx0 or vy1 <= vy0:
                continue
            image[vy0:vy1, vx0:vx1] = sprite[vy0 - y0 : vy1 - y0, vx0 - x0 : vx1 - x0]
            # Still: where they were the frame before (in the scene: a shaking camera moves everybody).
            still = start == end or (i > 0 and walked == _walked((i - 1) / max(1, frames - 1), t0, t1))
            persons.append({"actor": name, "box": [vx0, vy0, vx1, vy1], "still": still})
        yield image, view, persons


def _walked(t: float, t0: float, t1: float) -> float:
    return min(1.0, max(0.0, (t - t0) / max(1e-9, t1 - t0)))


def write_portrait_video(frames: list[np.ndarray], path: Path, rate: int = 25, crf: int = 12) -> Path:
    """H.264 MP4 of upright `frames` as a phone filming in portrait stores them: on their side, under a
    "rotate 90" display matrix that turns them back on playback."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": "veryfast"})
        stream.height, stream.width = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        stream.set_display_rotation(90)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.rot90(image, -1)), format="bgr24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_sample(
    out_dir: Path, width: int = 640, height: int = 360, frames: int = 48, fps: int = 25, seed: int = 0,
    actors=ACTORS, scene: str = "studio", **camera,
) -> SampleClip:
    """Writes sample.mp4 (near-lossless H.264), background.png and truth.json into `out_dir`;
    `camera`: pan, shake, zoom as `render_frames` takes them (background.png is then the last frame's)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clip = SampleClip(out_dir / "sample.mp4", out_dir / "background.png", out_dir / "truth.json")
    writer = VideoWriter(clip.video, width, height, Fraction(fps), TIME_BASE, EncoderConfig(preset="medium", crf=8))
    truth = []
    ticks = int(1 / (fps * TIME_BASE))
    try:
        for i, (image, background, persons) in enumerate(render_frames(width, height, frames, seed, actors,
                                                                         scene=scene, **camera)):
            writer.write(image, i * ticks)
            truth.append(persons)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    cv2.imwrite(str(clip.background), background)
    clip.truth.write_text(json.dumps({"width": width, "height": height, "fps": fps, "frames": truth}))
    return clip
