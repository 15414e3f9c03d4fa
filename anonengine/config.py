"""One validated schema for everything the engine can be told.

Every field has a default, a description and bounds, and unknown keys are rejected, so a typo in a
YAML file is an error that names the key instead of a silently ignored setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from anonengine.errors import ConfigError, raise_all
from anonengine.paths import (
    OUTPUT_CONTAINERS,
    PHOTO_SUFFIXES,
    ROTATIONS,
    URL_SCHEME,
    as_text,
    in_sequence,
    is_sequence,
    partial_metadata_path,
    partial_path,
)

DEFAULT_POSE_MODEL = "yolo11n-pose.pt"
DEFAULT_SEG_MODEL = "yolo11n-seg.pt"


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _file_name(value, handler):
    """A path as the system gives it: a name whose bytes are not UTF-8 (an old archive's Latin-1 `café.mp4`)
    comes as surrogate escapes, which pydantic's text refuses ("unable to parse raw data as a unicode
    string": every such file of a batch failed as an internal error). Checked as text with those bytes
    replaced, kept as given, so that the file it names is the one opened."""
    try:
        return handler(value)
    except ValidationError:
        if not isinstance(value, str) or as_text(value) == value:
            raise
        handler(as_text(value))
        return value


FileName = Annotated[str, WrapValidator(_file_name)]


# Above this a person the detector found, scored as most persons are, is left as filmed: a user's
# `--person-conf 1` hid nobody, and the run said it anonymized every frame.
MOST_PERSON_CONF = 0.5


# The input the pose models were trained at. Below it the detector misses persons it finds there, near ones too: a red
# team's street (640x360) showed a standing half-body figure 198 px tall in 250 of 250 frames at 480 and 320, found
# in every frame at 640; its brisk clip leaked 48 and 60 (frame, person) pairs at 480 and 320 against 25.
TRAINED_IMGSZ = 640


def small_input_warning(detector: DetectorConfig) -> str | None:
    """What a run at a detector input under `TRAINED_IMGSZ` says when it is done (None: nothing)."""
    if detector.imgsz >= TRAINED_IMGSZ:
        return None
    return (f"detector.imgsz {detector.imgsz} is under the {TRAINED_IMGSZ} the pose model was trained at: it misses "
            f"persons it finds at {TRAINED_IMGSZ}, near ones too (README, Speed); check the output with anonengine audit")


class DetectorConfig(StrictModel):
    pose_model: str = Field(DEFAULT_POSE_MODEL, description="YOLO pose model: keypoints, and person boxes for `bbox`.")
    seg_model: str = Field(DEFAULT_SEG_MODEL, description="YOLO segmentation model, used by the `seg` method.")
    bbox_model: str | None = Field(
        None, description="Optional separate YOLO detection model for `bbox`; by default the pose model's boxes serve."
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?|\d+)$", description="auto, cpu or cuda:N.")
    imgsz: int = Field(
        640, ge=32, le=4096, multiple_of=32,
        description="Detector input size in pixels (the frame's long side is scaled to it). The pose model misses "
        "persons under about 70 to 100 px tall in this input: at 640 a fifth of a 16:9 frame's height. Raise it "
        "for wide shots (960: about twice the detector's time, 1280: 4 times; README, Privacy).",
    )
    photo_max_imgsz: int = Field(
        4096, ge=32, le=8192, multiple_of=32,
        description="A photo larger than the detector's input is also looked at closer, up to this size, for the "
        "persons too small for the first look (a 12-MP phone photo at 960 and 3840: persons from about 100 px tall, "
        "not 400; about 2 s more a photo on 2 CPU cores). Its size, or less, turns it off.",
    )
    backend: Literal["auto", "torch", "onnx", "openvino", "tensorrt"] = Field(
        "auto",
        description="Inference backend; exported models are cached next to the weights. auto: TensorRT (else "
        "half-precision torch) on CUDA, OpenVINO (else torch) on CPU.",
    )
    person_conf: float = Field(
        0.15, ge=0.0, le=1.0,
        description=f"Minimum score for a person to be masked (lower hides more); at most {MOST_PERSON_CONF}.",
    )
    iou: float = Field(0.6, gt=0.0, le=1.0, description="Non-maximum suppression IoU threshold.")
    half: bool = Field(True, description="Half precision where the device supports it (CUDA).")
    int8: bool = Field(
        False,
        description="OpenVINO on CPU: the pose model in INT8, quantized with NNCF, calibrated once on generated "
        "frames and cached like any export (faster; its detections are checked against FP32 in the tests). "
        "A segmentation or detection model stays FP32.",
    )
    threads: int = Field(
        0, ge=0, le=256,
        description="CPU inference threads; 0 = every core this process may use when it runs alone (--inline, "
        "batch), half of them shared among the engine's detect workers (at least 1 each), whose compositors and "
        "encoders run beside them.",
    )
    stride: int = Field(
        3, ge=1, le=30,
        description="Detect on every Nth frame at most; the boxes of the detections on either side (held by "
        "the tracker) hide persons on the frames between (needs hold.enabled with hold_frames >= stride and "
        "lookahead_frames >= stride - 1). 3 (adaptive) is checked by bench/privacy.py and the tests; fixed 3 "
        "can show two persons crossing fast; 1 detects every frame (README).",
    )
    stride_mode: Literal["adaptive", "fixed"] = Field(
        "adaptive",
        description="adaptive: every frame while the last detection shows persons entering, leaving or "
        "appearing (or failed), and where part of the picture changed at once or something came away from the "
        "persons known; every 2nd while someone moves fast or persons overlap; every `stride`-th otherwise. "
        "fixed: every `stride`-th frame always (a person cut in between detections shows).",
    )

    @model_validator(mode="after")
    def _hides_what_it_finds(self):
        if self.person_conf > MOST_PERSON_CONF:
            raise ValueError(f"person_conf {self.person_conf} would leave persons the detector found as filmed (most "
                             f"score 0.3 to 0.9): at most {MOST_PERSON_CONF}; lower hides more (the default 0.15)")
        return self


class MaskConfig(StrictModel):
    box_margin: float = Field(
        0.08, ge=0.0, le=1.0, description="Box dilation, as a share of the box's size, on each side."
    )
    seg_inflate: float = Field(
        0.012, ge=0.0, le=0.2, description="Segmentation mask inflation radius, as a share of the frame diagonal."
    )
    min_margin_px: int = Field(4, ge=0, le=256, description="Smallest dilation or inflation in pixels.")
    edge_snap: float = Field(
        0.03, ge=0.0, le=0.5,
        description="A box this close to a frame edge (share of the frame size) is extended to the edge: the "
        "part of a person entering or leaving that the detector cannot see is hidden too.",
    )
    feather: float = Field(
        0.01, ge=0.0, le=0.2, description="Width of the soft edge outside the mask, as a share of the frame diagonal."
    )
    motion: Literal["off", "touching", "all"] = Field(
        "touching",
        description="What moves where the background model has seen the scene, and the detector's persons do "
        "not explain: touching = hidden where joined to a hidden person, within their height of their box (a "
        "leg of someone behind them, a hand past their box, a bag, a shadow); all = also every other moving patch "
        "(someone the detector missed altogether; cars and trees too); off = only the detector's persons.",
    )


class BackgroundConfig(StrictModel):
    alpha: float = Field(
        0.05, ge=0.0, le=1.0,
        description="Learning rate of the running-average background (seed's --alpha), per frame learnt from: "
        "those the detector looked at (detector.stride); the others' masks are guesses.",
    )
    adopt_after: int = Field(
        8, ge=0, le=10000,
        description="A still camera's background takes on at once a change that lasted this many frames learnt "
        "from, away from persons (a door opened, a car gone, a light switched on), where `alpha` would take "
        "seconds; 0 = at `alpha` only.",
    )
    fill: Literal["mirror", "inpaint", "solid"] = Field(
        "mirror",
        description="How background never seen free of persons is filled: the seen background on either side "
        "mirrored into it (its texture goes on), inpainted from its edges (smooth, streaky), or a flat grey. "
        "Never the person's own pixels.",
    )
    cut_threshold: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Share of the seen background that must change at once to count as a scene cut, which "
        "resets the model (0 = never).",
    )
    fill_scale: int = Field(
        320, ge=32, le=4096, description="Width in pixels at which unseen areas are inpainted (speed)."
    )
    follow_camera: bool = Field(
        True,
        description="Follow the camera's motion (pan, tilt, zoom, shake), estimated from person-free pixels, so "
        "the background neither smears nor ghosts when the camera moves; a still camera costs about 1 ms a frame.",
    )
    resample: Literal["linear", "cubic", "lanczos"] = Field(
        "lanczos",
        description="How a moving camera's frames are resampled into the background and drawn back: lanczos "
        "keeps fine texture sharpest on shaking or panning cameras (a pure shift is done separably: about 3% "
        "of a 720p command's time over linear), and a zoom or roll is done bicubic (OpenCV's Lanczos warp: 72 "
        "against 14 ms a 720p frame); linear is cheaper still; a still camera is never resampled.",
    )
    device: str = Field(
        "cpu", pattern=r"^(cpu|cuda(:\d+)?)$",
        description="Where the model's pixels live: cpu (OpenCV) or cuda[:N], PyTorch tensors on that GPU, for "
        "GPU servers where compositing on the CPU is the limit: a frame goes up once, the regions are blended "
        "there and come down. The same model (its geometry is the CPU model's code): equal to it within a grey "
        "level but for a pixel now and then where sampling rounds the other way, tested on CPU tensors; on an "
        "H200, 21.7 against 63.1 ms a 1080p frame learnt and three regions drawn (README, Speed).",
    )
    future_frames: int = Field(
        50, ge=0, le=1000,
        description="A recording (a file, not live) is also filled from what the camera sees after each frame: "
        "a frame goes out once this many frames after it were learnt, so a person standing where nothing was "
        "seen yet is replaced by what was behind them once they left. 0 = off. Live sources never wait.",
    )
    future_memory_mb: int = Field(
        256, ge=1, le=65536,
        description="Most memory the frames waiting for their future may take per camera (fewer frames wait "
        "when they are large: 4K waits 10); the capture's shared memory holds as much again.",
    )

    def frames_ahead(self, live: bool, width: int, height: int) -> int:
        """How many later frames a frame of this stream waits for before it is drawn."""
        if live:
            return 0
        return min(self.future_frames, self.future_memory_mb * 2**20 // (width * height * 3))


class PoseDrawConfig(StrictModel):
    enabled: bool = Field(True, description="Draw the COCO-17 skeleton over anonymized persons.")
    keypoint_conf: float = Field(
        0.5, ge=0.0, le=1.0, description="Minimum keypoint confidence to draw it (seed's --pose-conf-threshold)."
    )
    thickness: float = Field(0.004, gt=0.0, le=0.05, description="Line width as a share of the frame diagonal.")
    person_conf: float = Field(
        0.4, ge=0.0, le=1.0, description="Minimum person score to draw a skeleton (higher than the mask's)."
    )


class HoldConfig(StrictModel):
    enabled: bool = Field(True, description="Keep hiding tracked persons the detector lost for a few frames.")
    hold_frames: int = Field(15, ge=0, le=1000, description="Frames a lost person stays hidden.")
    grow_per_frame: float = Field(
        0.06, ge=0.0, le=1.0, description="Growth of a held box per lost frame, as a share of its size."
    )
    track_thresh: float = Field(
        0.25, ge=0.0, le=1.0,
        description="Score from which a detection starts a track; a person hidden below it (detector.person_conf) "
        "starts a weak one: held where predicted, not grown.",
    )
    still_frames: int = Field(
        750, ge=0, le=1_000_000,
        description="Frames a tracked person the detector lost stays hidden while their place still looks as when "
        "last detected (someone standing still who scores low: turned away, half hidden, blending in); counted "
        "from their last detection. 0: only hold_frames.",
    )
    lookahead_frames: int = Field(
        8, ge=0, le=250,
        description="Delay output by this many frames so a person is also hidden in the frames just before "
        "the detector first finds them (entering, late detection). Adds this much latency.",
    )
    recording_lookahead_frames: int = Field(
        24, ge=0, le=250,
        description="The look-ahead of a recording (a file, not a live camera): the larger of this and "
        "lookahead_frames. Its frames wait for the ones after them anyway (background.future_frames); a person "
        "entering slowly at an edge shows a sliver for longer than 8 frames. Found beyond lookahead_frames, a "
        "person is hidden where their path traced back puts them.",
    )


class AnonymizerConfig(StrictModel):
    """What happens to each frame (the engine's and the inline path's common settings)."""

    method: Literal["bbox", "seg"] = Field("bbox", description="bbox: dilated boxes (fast); seg: inflated outlines.")
    detector: DetectorConfig = Field(default_factory=DetectorConfig)
    mask: MaskConfig = Field(default_factory=MaskConfig)
    background: BackgroundConfig = Field(default_factory=BackgroundConfig)
    pose: PoseDrawConfig = Field(default_factory=PoseDrawConfig)
    hold: HoldConfig = Field(default_factory=HoldConfig)
    on_detector_error: Literal["stop", "obscure"] = Field(
        "stop",
        description="A frame whose detection failed: stop the run, or emit it fully obscured. Never raw.",
    )

    def lookahead(self, live: bool) -> int:
        """The frames after a frame whose detections hide persons in it before they are found (`hold`)."""
        return self.hold.lookahead_frames if live else max(self.hold.lookahead_frames,
                                                            self.hold.recording_lookahead_frames)

    @model_validator(mode="after")
    def _stride_needs_the_hold(self):
        # The default stride (3) needs what a config may turn off or shorten (the hold, the look-ahead, for the
        # lowest latency): then the default is the largest stride they allow (1: every frame). A stride set
        # explicitly is checked below.
        if "stride" not in self.detector.model_fields_set:
            allowed = min(self.hold.hold_frames, self.hold.lookahead_frames + 1) if self.hold.enabled else 1
            self.detector.stride = max(1, min(self.detector.stride, allowed))
        if self.detector.stride > 1 and not (self.hold.enabled and self.hold.hold_frames >= self.detector.stride):
            raise ValueError(
                f"detector.stride {self.detector.stride} needs hold.enabled with hold.hold_frames >= "
                f"{self.detector.stride}: the frames between detections are hidden by the held boxes"
            )
        if self.hold.lookahead_frames < self.detector.stride - 1:
            raise ValueError(
                f"detector.stride {self.detector.stride} needs hold.lookahead_frames >= {self.detector.stride - 1}: "
                "a frame between detections is hidden by the detections on either side of it"
            )
        return self


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
NVENC_PRESETS = ("p1", "p2", "p3", "p4", "p5", "p6", "p7")


class EncoderConfig(StrictModel):
    codec: str = Field(
        "libx264", description="PyAV/FFmpeg video encoder: libx264, libx265, or on an NVIDIA GPU h264_nvenc, hevc_nvenc."
    )
    preset: str | None = Field(
        None,
        description="Speed preset: ultrafast..veryslow for libx264/libx265, p1 (fastest)..p7 for NVENC; "
        "None: superfast, or p4 for NVENC. On 720p anonymized street footage at crf 18, superfast takes 43% "
        "less CPU than veryfast for files 13% larger and 0.6 dB less PSNR; ultrafast 2.5 times as large.",
    )
    crf: int = Field(18, ge=0, le=51, description="Constant quality (x264/x265 crf, NVENC cq); lower is better.")
    max_bitrate_kbps: int | None = Field(
        None, ge=1, le=1_000_000,
        description="Caps the bitrate (VBV: maxrate, with a buffer of two seconds' worth) while keeping the "
        "constant quality below it; None = uncapped.",
    )
    keyframe_interval: int = Field(
        0, ge=0, le=10_000, description="Frames between keyframes (seeking, joining a stream); 0 = encoder default."
    )
    threads: int = Field(0, ge=0, le=256, description="Encoder threads; 0 = the encoder chooses.")
    segment_s: float = Field(
        60, gt=0, le=86400,
        description="The engine records each camera in fragmented-MP4 segments of about this length: every frame "
        "is on disk (and playable) as soon as it leaves the encoder, so a stage's death loses nothing.",
    )
    keep_segments: bool = Field(
        False,
        description="Keep the segments as the recording, in the folder named after the output without its "
        "suffix (an NVR: `rec/cam1.mp4` -> `rec/cam1/`). False: joined into the output at the end (remuxed).",
    )
    retain_hours: float | None = Field(
        None, gt=0, description="With keep_segments: segments older than this are deleted, oldest first."
    )
    retain_gb: float | None = Field(
        None, gt=0, description="With keep_segments: the oldest segments are deleted while a camera's exceed this."
    )

    @property
    def is_nvenc(self) -> bool:
        return self.codec.endswith("_nvenc")

    @property
    def speed_preset(self) -> str:
        # superfast: the real-time default (x264 is a fifth of a 2-core machine's work at veryfast); a
        # recording kept for long is a `preset: veryfast` (or slower) away from smaller files.
        return self.preset or ("p4" if self.is_nvenc else "superfast")

    @model_validator(mode="after")
    def _retention_needs_kept_segments(self):
        if (self.retain_hours or self.retain_gb) and not self.keep_segments:
            raise ValueError("retain_hours and retain_gb apply to kept segments: set keep_segments: true")
        return self

    @model_validator(mode="after")
    def _preset_fits_the_codec(self):
        if self.preset is None:
            return self
        known = NVENC_PRESETS if self.is_nvenc else X264_PRESETS if self.codec.startswith("libx26") else None
        if known is not None and self.preset not in known:
            raise ValueError(f"preset {self.preset!r} is not one of {self.codec}'s: {', '.join(known)}")
        return self


def error_text(err: dict) -> str:
    """A pydantic error's message: the sentence our validators raise as they wrote it (pydantic prefixes it with
    "Value error, "), else pydantic's own."""
    return str(err["ctx"]["error"]) if err["type"] == "value_error" and "ctx" in err else err["msg"]


def _holds_photo(source: str) -> bool:
    from anonengine.media import holds_photo  # it reads the file: imported where a photo's output is named

    return holds_photo(source)


def _same_file(source: str, target: str) -> bool:
    """Whether `target` names the file `source` names (a URL other than file:// names none), or one of its
    photos where `source` is an image sequence."""
    scheme = URL_SCHEME.match(source)
    if scheme and scheme.group(1).lower() != "file":
        return False
    source = source[scheme.end():] if scheme else source
    if is_sequence(source) and in_sequence(source, target):
        return True
    try:
        if Path(source).resolve() == Path(target).resolve():
            return True
        return Path(target).exists() and Path(source).exists() and Path(source).samefile(target)
    except OSError:
        return False


def _in_the_frame(point: tuple[float, float]) -> tuple[float, float]:
    if not all(0.0 <= share <= 1.0 for share in point):
        raise ValueError(f"[{point[0]}, {point[1]}] is outside the frame: a privacy zone's points are shares of "
                         "the frame's width and height, 0..1")
    return point


def _a_polygon(zone: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(zone) < 3:
        raise ValueError(f"{len(zone)} points: a privacy zone is a polygon of at least 3 [x, y] points")
    return zone


def frame_rate(value):
    """A frame rate as a number, or written as one or a fraction (NTSC's 30000/1001); ValueError for one that is
    none or not above 0."""
    if not isinstance(value, str):
        return value
    try:
        rate = Fraction(value.strip())
    except (ValueError, ZeroDivisionError):
        rate = None
    if rate is None or rate <= 0:
        raise ValueError(f"{value!r} is no frame rate: give frames a second above 0, such as 25, 29.97 or 30000/1001")
    return float(rate)


# A zone of 2 points hid nothing, one reaching outside 0..1 was cut at the frame's edge: both passed silently.
PrivacyZone = Annotated[list[Annotated[tuple[float, float], AfterValidator(_in_the_frame)]], AfterValidator(_a_polygon)]


def _webcam_index(value):
    """A webcam's index as YAML gives it unquoted (`source: 0`, as the README writes it): a number, which was
    refused ("Input should be a valid string")."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else value


class CameraConfig(StrictModel):
    name: str = Field("cam0", pattern=r"^[A-Za-z0-9_-]{1,32}$", description="Camera name, unique in the engine.")
    source: Annotated[FileName, BeforeValidator(_webcam_index)] = Field(
        ..., min_length=1, description="Video file, image sequence (`frames/%06d.png`: photos numbered so, read as a "
        "video), webcam index (0) or stream URL.")
    output: FileName | None = Field(
        None, description="Anonymized video file to write, in the container its suffix names (`.mp4`, `.m4v`, `.mov`, "
        "`.mkv`, `.ts`; none: MP4); none = tap only.")
    metadata: FileName | None = Field(None, description="Per-frame JSON-lines metadata file to write.")
    live: bool | None = Field(
        None,
        description="Treat the source as a live camera (never wait, drop the oldest frame when full); a file "
        "is then read at its own frame rate. None: files and recordings are not; cameras and streams always are.",
    )
    stream: bool | None = Field(
        None,
        description="Whether an http(s) source is a live stream (read for ever, reconnected) rather than a "
        "recording (read once to its end); None: the engine's launcher asks it once. Other sources: unused.",
    )
    rtsp_transport: Literal["tcp", "udp"] = Field(
        "tcp", description="RTSP over TCP (through firewalls and NAT, no loss) or UDP (lower latency, may lose)."
    )
    rotate: Literal[ROTATIONS] = Field(
        0,
        description="Degrees to turn the picture clockwise so that people stand upright (a camera mounted upside "
        "down: 180), after the turn its container asks for: the detector misses most persons upside down or on "
        "their side, and the output is written turned.",
    )
    fps: Annotated[float, BeforeValidator(frame_rate)] | None = Field(
        None, gt=0, le=1000, description="An image sequence's frame rate (none: 25; 30000/1001 too); a video keeps "
        "its own.")
    privacy_zones: list[PrivacyZone] = Field(
        default_factory=list,
        description="Polygons always hidden, as [x, y] points in shares of the frame width and height (0..1), of "
        "the picture as `rotate` turns it (redraw them when you change it).",
    )

    @model_validator(mode="after")
    def _outputs_are_not_the_source(self):
        """Writing over the source destroys the original footage (a symbolic or hard link to it too)."""
        for field, working in (("output", partial_path), ("metadata", partial_metadata_path)):
            target = getattr(self, field)
            if target and not Path(target).name:  # `.`, `/`: its working file's name is made from it
                raise ValueError(f"{field} {target} is a folder: give a file's name")
            if target and _same_file(self.source, target):
                itself = "one of the source's photos" if is_sequence(self.source) else "the source itself"
                raise ValueError(f"{field} {target} is {itself}: writing it would destroy the original")
            # An earlier run's working file is set aside (renamed) before the run: the source itself went so.
            # (A source that is not there has nothing to lose: "video source not found" says what is wrong.)
            if target and working(target).exists() and _same_file(self.source, str(working(target))):
                raise ValueError(f"{field} {target} is written as {working(target).name} until complete, which is "
                                 f"the source itself: give the {field} another name")
        if self.output and self.metadata and _same_file(self.output, self.metadata):
            raise ValueError(f"metadata {self.metadata} is the output video itself: give it a name of its own "
                             f"(such as {Path(self.output).with_suffix('.jsonl').name})")
        if self.fps is not None and not is_sequence(self.source):
            raise ValueError(f"fps {self.fps:g}: the frame rate of an image sequence (`frames/%06d.png`); "
                             f"{self.source} keeps its own")
        if self.output and is_sequence(self.output):
            raise ValueError(f"output {self.output}: an image sequence is read, not written: name a video "
                             "(.mp4, .m4v, .mov, .mkv or .ts)")
        suffix = Path(self.output).suffix.lower() if self.output else ""
        if suffix not in OUTPUT_CONTAINERS and not (suffix in PHOTO_SUFFIXES and _holds_photo(self.source)):
            kinds = ", ".join(s for s in OUTPUT_CONTAINERS if s)
            raise ValueError(f"output {self.output}: a video is written as {kinds} (its name says which), not {suffix}")
        return self


class SourcesConfig(StrictModel):
    """How sources are decoded, and how live ones (cameras, stream URLs) are opened and kept: they reconnect
    for ever."""

    decoder: str = Field(
        "auto",
        pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Where video is decoded: cpu; cuda[:N], NVDEC on that GPU (the frames come down to memory "
        "for the stages; a stream NVDEC cannot decode is decoded on the CPU); auto, cuda:0 where FFmpeg can "
        "open it, else cpu.",
    )

    connect_timeout_s: float = Field(
        10, gt=0, le=600, description="Longest wait to open a live source (`anonengine run` on a URL gives up then)."
    )
    stall_s: float = Field(
        20, gt=0, le=3600, description="A live source that sends no frame for this long is reconnected (Frigate: 20 s)."
    )
    reconnect_initial_s: float = Field(1, gt=0, le=3600, description="First wait before reconnecting.")
    reconnect_max_s: float = Field(30, gt=0, le=86400, description="The wait doubles up to this.")
    reconnect_jitter: float = Field(
        0.25, ge=0, le=1, description="Each wait is stretched by up to this share at random (no lockstep)."
    )
    buffer_s: float = Field(
        1.0, ge=0, le=60,
        description="A live source's frames wait up to this long while the engine is behind (at most what its frame "
        "rate, up to 120, gives for this long, at least 4 frames, and 256 MB), the oldest dropped past it: a network "
        "delivers a stream in bursts (HTTP, RTSP over TCP), faster than the engine takes them for a moment. Adds "
        "at most this much latency.",
    )


AUTO_TAP = "ipc"  # the tap's socket in the instance's own folder of the run folder


class TapConfig(StrictModel):
    endpoint: str = Field(
        AUTO_TAP,
        description="ZeroMQ PUB endpoint of anonymized frames: ipc = a socket in the instance's folder, which "
        "only the run folder's owner can enter; ipc://PATH; tcp://HOST:PORT, which needs CURVE keys "
        "(curve_server_key, curve_clients); '' = off.",
    )
    curve_server_key: str | None = Field(
        None, description="The tap's CURVE key pair: the server's .key_secret file (`anonengine keys`)."
    )
    curve_clients: str | None = Field(
        None, description="Folder of the public .key files of the clients allowed to subscribe (CURVE)."
    )
    format: Literal["raw", "jpeg"] = Field("jpeg", description="Frame payload: raw BGR bytes or JPEG.")
    jpeg_quality: int = Field(85, ge=1, le=100, description="JPEG quality of tapped frames.")
    hwm: int = Field(8, ge=1, le=10000, description="Frames queued per subscriber before it misses frames.")

    @property
    def curve(self) -> bool:
        return bool(self.curve_server_key)

    @model_validator(mode="after")
    def _tcp_needs_curve(self):
        # The tap's headers carry every person's box and keypoints: off this host, only to listed clients.
        endpoint = self.endpoint
        if endpoint not in ("", AUTO_TAP) and not endpoint.startswith(("ipc://", "tcp://")):
            raise PydanticCustomError("tap_endpoint", "tap.endpoint '{endpoint}' is not ipc, ipc://PATH, "
                                      "tcp://HOST:PORT or '' (off)", {"endpoint": endpoint})
        if bool(self.curve_server_key) != bool(self.curve_clients):
            raise PydanticCustomError("tap_curve", "tap.curve_server_key and tap.curve_clients go together "
                                      "(make key pairs with `anonengine keys DIR --name NAME`)")
        if endpoint.startswith("tcp://") and not self.curve:
            raise PydanticCustomError(
                "tap_curve", "a tcp:// tap needs tap.curve_server_key and tap.curve_clients (make key pairs "
                "with `anonengine keys DIR --name NAME`), or use the ipc tap (endpoint: ipc)")
        return self


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def split_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT' (IPv6 as '[::1]:8080') -> (host, port); ValueError says what is expected."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8080) or 'off', got {listen!r}")
    return host, int(port)


class HttpConfig(StrictModel):
    listen: str = Field(
        "127.0.0.1:8080",
        description="HOST:PORT of the metrics (/metrics), health (/healthz, /readyz) and preview page (/); 'off' = none.",
    )
    token_file: str | None = Field(
        None, description="File holding the token every request but /healthz and /readyz must carry (Authorization: "
        "Bearer, or ?token= once in a browser); required when listen is not on 127.0.0.1, ::1 or localhost.",
    )
    preview_fps: float = Field(4, gt=0, le=30, description="Frames a second each preview tile shows, at most.")
    preview_width: int = Field(640, ge=64, le=3840, description="Preview images are scaled down to this width.")

    @field_validator("listen")
    @classmethod
    def _listen_is_an_address(cls, listen: str) -> str:
        if listen != "off":  # said of `listen` itself, on its own line (it had been said of `http`, a line above)
            split_listen(listen)
        return listen

    @model_validator(mode="after")
    def _reachable_needs_a_token(self):
        if self.listen != "off":
            host, _ = split_listen(self.listen)
            if host not in LOOPBACK_HOSTS and not self.token_file:
                raise ValueError(f"http.listen {self.listen} is reachable from other hosts: set http.token_file "
                                 "(`anonengine run --http-token-file`: a file holding a long random token) or listen "
                                 "on 127.0.0.1")
        return self


class RuntimeConfig(StrictModel):
    run_dir: str = Field(
        "",
        description="Folder of the engine's local sockets, one folder per instance, made mode 0700 and refused "
        "if others may enter it; '' = $XDG_RUNTIME_DIR/anonengine, /run/anonengine for root, else "
        "/tmp/anonengine-<uid>.",
    )
    instance: str = Field(
        "", pattern=r"^[A-Za-z0-9]{0,24}$", description="Engine instance id; '' = chosen by the launcher."
    )
    ring_slots: int = Field(
        24, ge=2, le=256,
        description="Shared-memory frame slots per camera and stage: the frames a camera may have in flight. "
        "The look-ahead holds lookahead_frames of them; the rest absorb the stages' jitter (a live camera "
        "drops frames when none is free). 720p: 2.8 MB a slot, two rings per camera.",
    )
    detect_workers: int = Field(1, ge=1, le=64, description="Detector processes sharing the load.")
    composite_workers: int = Field(
        1, ge=1, le=64,
        description="Compositor processes; each camera belongs to one (its background model lives there).",
    )
    encode_workers: int = Field(
        1, ge=1, le=64,
        description="Encoder processes, at most composite_workers: compositor N's cameras go to encoder N mod "
        "encode_workers. With more than one, the tap is relayed by the launcher (`anonengine launch`/`run`; "
        "stages started one by one, as under honcho, then have no tap).",
    )
    max_batch: int = Field(
        4, ge=1, le=64,
        description="Most frames the detector runs at once: across cameras in the engine; a file's own frames "
        "in --inline, a batch and a Ray worker (at stride 1; a live source's one at a time).",
    )
    max_wait_ms: float = Field(5, ge=0, le=1000, description="Longest wait for a batch to fill.")
    redeliver_after_s: float = Field(
        20, gt=0, le=3600, description="A frame not done after this long is sent to the detectors again."
    )
    deadline_s: float = Field(
        60, gt=0, le=3600,
        description="A file frame whose detections are this late is emitted as `late_frames` says (covers a "
        "detector restart: keep it above redeliver_after_s plus a model load).",
    )
    live_deadline_s: float = Field(2, gt=0, le=3600, description="The same deadline for live sources.")
    late_frames: Literal["obscure", "drop"] = Field(
        "obscure", description="A frame past its deadline is fully obscured or dropped; never emitted raw."
    )
    restart_limit: int = Field(5, ge=0, le=1000, description="Restarts of one stage within a minute before giving up.")
    stall_s: float = Field(
        10, gt=0, le=3600,
        description="A stage that sends no heartbeat for this long (hung: a stuck driver, a deadlock) is killed "
        "and restarted (Frigate: 10 s for detectors). Heartbeats start once a stage is set up.",
    )
    stop_timeout_s: float = Field(20, gt=0, le=600, description="Grace period for a stage to drain on stop.")
    exit_when_done: bool = Field(False, description="Stop the engine once every camera's stream has ended.")
    stats_interval_s: float = Field(2, gt=0, le=3600, description="How often stages report their counters.")


class EngineConfig(StrictModel):
    anonymizer: AnonymizerConfig = Field(default_factory=AnonymizerConfig)
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    engine: RuntimeConfig = Field(default_factory=RuntimeConfig)
    sources: SourcesConfig = Field(default_factory=SourcesConfig)
    tap: TapConfig = Field(default_factory=TapConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    cameras: list[CameraConfig] = Field(default_factory=list, description="Cameras to anonymize.")

    @model_validator(mode="after")
    def _lookahead_fits_the_rings(self):
        if self.anonymizer.hold.lookahead_frames > self.engine.ring_slots - 2:
            raise ValueError(
                f"anonymizer.hold.lookahead_frames ({self.anonymizer.hold.lookahead_frames}) needs "
                f"engine.ring_slots of at least lookahead + 2 ({self.engine.ring_slots} set)"
            )
        return self

    @model_validator(mode="after")
    def _every_encoder_gets_cameras(self):
        if self.engine.encode_workers > self.engine.composite_workers:
            raise ValueError(
                f"engine.encode_workers ({self.engine.encode_workers}) above engine.composite_workers "
                f"({self.engine.composite_workers}): encoders get their cameras from compositors, some would idle"
            )
        return self

    @model_validator(mode="after")
    def _unique_camera_names(self):
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        return self


def load_yaml(path: Path, model: type[BaseModel]) -> BaseModel:
    """Loads and validates a YAML file; errors name the key and its line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x}): save the file "
                          "as UTF-8") from None
    try:
        data = yaml.compose(text)
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}".replace("\n", " ")) from None
    # Every mistake found, one line each (a key given twice, then what the schema refuses): a config with several
    # was mended one run at a time.
    problems = [ConfigError(f"{path}: line {line}: {key}: duplicate key (first at line {first}; YAML would keep only "
                            "the last): give it once") for key, line, first in _duplicate_keys(data)]
    try:
        validated = model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # A misspelt key (`sorce:`) also makes its right spelling "missing": the unknown key is the mistake, said
        # alone (a review: "cameras.0.source: Field required" came first, at its parent's line).
        misspelt = {tuple(err["loc"][:-1]) for err in errors if err["type"] == "extra_forbidden"}
        errors = [err for err in errors if err["type"] != "missing" or tuple(err["loc"][:-1]) not in misspelt]
        located = sorted(((_line_of(data, err["loc"]), err) for err in errors), key=lambda pair: pair[0] or 0)
        for line, err in located:  # in the file's order (a key that is missing goes by its parent's line)
            where = f"line {line}: " if line else ""
            loc = ".".join(str(p) for p in err["loc"]) or "(top)"
            problems.append(ConfigError(f"{path}: {where}{loc}: {error_text(err)}"))
    raise_all(problems)
    return validated


def _duplicate_keys(node, where: tuple[str, ...] = (),
                    seen: set[int] | None = None) -> Iterator[tuple[str, int, int]]:
    """Each key given twice in one mapping of a composed YAML document, as (dotted path, its line, the line of its
    first): PyYAML keeps the last silently."""
    seen = set() if seen is None else seen
    if node is None or id(node) in seen:  # an alias: its node is checked where it is defined
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], int] = {}  # (tag, text): `1` and `"1"` are two keys
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                if (key.tag, key.value) in first:
                    yield ".".join((*where, key.value)), key.start_mark.line + 1, first[key.tag, key.value]
                else:
                    first[key.tag, key.value] = key.start_mark.line + 1
            yield from _duplicate_keys(value, (*where, str(key.value)), seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, (*where, str(index)), seen)


def _line_of(node, loc) -> int | None:
    """Line (1-based) of the YAML node at a pydantic error location, or of its closest parent."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == str(key)]
            if not match:
                return line
            k, node = match[0]
            line = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


__all__ = [
    "AnonymizerConfig",
    "CameraConfig",
    "EngineConfig",
    "HoldConfig",
    "BackgroundConfig",
    "DetectorConfig",
    "EncoderConfig",
    "MaskConfig",
    "PoseDrawConfig",
    "RuntimeConfig",
    "StrictModel",
    "TapConfig",
    "load_yaml",
]
