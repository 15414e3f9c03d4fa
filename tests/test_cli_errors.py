"""Bad input to `anonengine run` fails cleanly: one line on stderr, a non-zero exit, no traceback,
no hang, and no file left behind that could pass for a finished output (video, metadata or `.partial`).

Also: a detector failure never lets a raw frame out (stop: no output; obscure: grey frames).
"""

from __future__ import annotations

import os
import stat
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from anonengine.compositor import OBSCURED_GREY
from anonengine.config import CameraConfig, EngineConfig
from anonengine.errors import DetectionError
from anonengine.video import VideoWriter

SAMPLE_FRAMES = 8  # small_sample_clip's length
# The single-process path. The multi-process engine (`run` without --inline) should meet the same
# contract; add it here once its stages report a failed camera as one line without waiting.
RUN_MODE = []
ERROR_PREFIXES = ("anonengine: error:", "anonengine run: error:")


# --- building broken inputs from the sample clip -------------------------------------------------


def remux(src: Path, dst: Path, movflags: str) -> Path:
    """Copies the video packets of `src` into a new MP4 with the given `movflags` (no re-encode)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": movflags}) as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        for packet in inp.demux(in_stream):
            if packet.dts is None:  # the flush packet
                continue
            packet.stream = out_stream
            out.mux(packet)
    return dst


def packet_spans(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of each video packet in the file."""
    with av.open(str(path)) as c:
        return [(p.pos, p.size) for p in c.demux(c.streams.video[0]) if p.size]


def truncate_copy(src: Path, dst: Path, length: int) -> Path:
    dst.write_bytes(src.read_bytes()[:length])
    return dst


def decodable_frames(path: Path) -> int:
    """How many frames FFmpeg itself decodes from `path` before it stops (errors count as the end)."""
    count = 0
    try:
        with av.open(str(path)) as c:
            for _ in c.decode(c.streams.video[0]):
                count += 1
    except av.FFmpegError:
        pass
    return count


def cut_after_packet(src: Path, dst: Path, index: int, mid_packet: bool) -> Path:
    """A copy of `src` ending after packet `index`, or halfway through it; FFmpeg still decodes some frames."""
    pos, size = packet_spans(src)[index]
    truncate_copy(src, dst, pos + (size // 2 if mid_packet else size))
    # The case is about a file that starts fine and ends early; make sure the cut gives just that.
    assert 0 < decodable_frames(dst) < SAMPLE_FRAMES, "the cut should leave some, not all, frames decodable"
    return dst


def missing_input(tmp: Path, clip) -> tuple[list, str]:
    return ["--video-source", tmp / "no_such_video.mp4"], "not found"


def input_is_a_folder(tmp: Path, clip) -> tuple[list, str]:
    (tmp / "folder.mp4").mkdir()
    return ["--video-source", tmp / "folder.mp4"], "not a file"


def text_renamed_mp4(tmp: Path, clip) -> tuple[list, str]:
    fake = tmp / "notes.mp4"
    fake.write_text("this is a text file, not a video\n" * 20)
    return ["--video-source", fake], "cannot open video"


def truncated_moov_at_end(tmp: Path, clip) -> tuple[list, str]:
    # A plain MP4 keeps its index (moov) at the end: cut it off and nothing can be opened.
    data = clip.video.read_bytes()
    assert data.rfind(b"moov") > data.find(b"mdat"), "sample clip is expected to have its moov at the end"
    cut = truncate_copy(clip.video, tmp / "cut_end.mp4", len(data) // 2)
    return ["--video-source", cut], "without its index (no moov box)"  # FFmpeg: "Invalid data found"


def empty_file(tmp: Path, clip) -> tuple[list, str]:
    (tmp / "empty.mp4").touch()
    return ["--video-source", tmp / "empty.mp4"], "the file is empty (0 bytes)"


def truncated_faststart_between_frames(tmp: Path, clip) -> tuple[list, str]:
    # moov first: the index promises 8 frames, the data holds fewer; FFmpeg raises no error itself.
    fast = remux(clip.video, tmp / "fast.mp4", "+faststart")
    cut = cut_after_packet(fast, tmp / "fast_cut.mp4", 4, mid_packet=False)
    return ["--video-source", cut], "truncated"


def truncated_faststart_mid_frame(tmp: Path, clip) -> tuple[list, str]:
    fast = remux(clip.video, tmp / "fast.mp4", "+faststart")
    cut = cut_after_packet(fast, tmp / "fast_cut.mp4", 4, mid_packet=True)
    return ["--video-source", cut], "truncated"


def truncated_fragmented_mid_frame(tmp: Path, clip) -> tuple[list, str]:
    # A fragmented MP4 has no total frame count, only the short last packet shows the cut. (Cut exactly
    # between fragments it is a valid, shorter file: nothing can tell, so that is not tested.)
    frag = remux(clip.video, tmp / "frag.mp4", "frag_every_frame+empty_moov+default_base_moof")
    cut = cut_after_packet(frag, tmp / "frag_cut.mp4", 4, mid_packet=True)
    return ["--video-source", cut], "truncated"


def zero_frame_video(tmp: Path, clip) -> tuple[list, str]:
    path = tmp / "empty.mp4"
    with av.open(str(path), "w") as c:
        stream = c.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 192, "yuv420p"
        c.start_encoding()  # writes the header; no frame is ever encoded
    assert path.is_file()
    return ["--video-source", path], "no video stream"


def unknown_method(tmp: Path, clip) -> tuple[list, str]:
    return ["--video-source", clip.video, "--method", "pixelate"], "invalid choice"


def missing_model(tmp: Path, clip) -> tuple[list, str]:
    return ["--video-source", clip.video, "--pose-model", "/nonexistent/x.pt"], "model file not found"


def model_named_as_no_model(tmp: Path, clip) -> tuple[list, str]:
    """Taken for an export, it was exported again from itself, failed three times in long lines, and left a
    `.exports` folder beside it (a user's trial: /etc/passwd as the pose model made /etc/.exports)."""
    (tmp / "weights").mkdir()
    (tmp / "weights" / "fake").write_text("x")
    return ["--video-source", clip.video, "--pose-model", tmp / "weights" / "fake"], "is no model file Ultralytics reads"


class _OpensAFile:
    """Unpickled, it creates a file: weights that run code when loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def look_alike_weights(tmp: Path, clip) -> tuple[list, str]:
    """A file named like the official weights that is not them is refused before anything loads it (had
    it been unpickled, it would have left a file in tmp, which the test would find)."""
    import torch

    (tmp / "weights").mkdir()
    torch.save({"model": _OpensAFile(tmp / "unpickled")}, tmp / "weights" / "yolo11n-pose.pt")
    return ["--video-source", clip.video, "--pose-model", tmp / "weights" / "yolo11n-pose.pt"], "not the official"


def output_in_missing_folder(tmp: Path, clip) -> tuple[list, str]:
    return ["--video-source", clip.video, "--output-video", tmp / "no_such_dir" / "out.mp4"], "does not exist"


def output_under_proc(tmp: Path, clip) -> tuple[list, str]:
    return ["--video-source", clip.video, "--output-video", "/proc/nope/out.mp4"], "does not exist"


def output_under_a_file(tmp: Path, clip) -> tuple[list, str]:
    (tmp / "plain_file").write_text("x")
    return ["--video-source", clip.video, "--output-video", tmp / "plain_file" / "out.mp4"], "does not exist"


def output_folder_not_writable(tmp: Path, clip) -> tuple[list, str]:
    # Tests run as root, which chmod does not stop; /proc refuses new files even to root.
    probe = Path("/proc/anonengine_probe")
    try:
        probe.open("wb").close()
    except OSError:
        pass
    else:
        probe.unlink()
        pytest.skip("/proc accepts new files on this machine")
    return ["--video-source", clip.video, "--output-video", "/proc/anonengine_out.mp4"], "cannot write"


def output_is_a_folder(tmp: Path, clip) -> tuple[list, str]:
    (tmp / "out.mp4").mkdir()
    return ["--video-source", clip.video, "--output-video", tmp / "out.mp4"], "folder"


def metadata_in_missing_folder(tmp: Path, clip) -> tuple[list, str]:
    return ["--video-source", clip.video, "--metadata", tmp / "no_such_dir" / "meta.jsonl"], "meta.jsonl"


def metadata_is_a_folder(tmp: Path, clip) -> tuple[list, str]:
    (tmp / "meta.jsonl").mkdir()
    return ["--video-source", clip.video, "--metadata", tmp / "meta.jsonl"], "meta.jsonl"


def output_named_for_another_format(tmp: Path, clip) -> tuple[list, str]:
    """An animated GIF cannot hold H.264: it was written as an MP4 under the name out.gif."""
    return ["--video-source", clip.video, "--output-video", tmp / "out.gif"], "not .gif"


def output_named_avi(tmp: Path, clip) -> tuple[list, str]:
    """AVI counts frames and keeps no time: the engine's join failed on it ("h264 bitstream malformed"), and
    --inline's wrote 20 empty chunks a frame (time base 1/600)."""
    return ["--video-source", clip.video, "--output-video", tmp / "out.avi"], "not .avi"


def alpha_out_of_range(tmp: Path, clip) -> tuple[list, str]:
    return ["--video-source", clip.video, "--alpha", "2"], "alpha"


def imgsz_not_a_number(tmp: Path, clip) -> tuple[list, str]:
    return ["--video-source", clip.video, "--imgsz", "big"], "invalid int value"


def cuda_decoder_not_here(tmp: Path, clip) -> tuple[list, str]:
    from anonengine.video import decoding_device

    if decoding_device("auto") != "cpu":
        pytest.skip("FFmpeg decodes on a CUDA device here")
    return ["--video-source", clip.video, "--decoder", "cuda"], "sources.decoder cuda"


BAD_RUNS = [
    missing_input,
    input_is_a_folder,
    text_renamed_mp4,
    truncated_moov_at_end,
    empty_file,
    truncated_faststart_between_frames,
    truncated_faststart_mid_frame,
    truncated_fragmented_mid_frame,
    zero_frame_video,
    unknown_method,
    missing_model,
    model_named_as_no_model,
    look_alike_weights,
    output_in_missing_folder,
    output_under_proc,
    output_under_a_file,
    output_folder_not_writable,
    output_is_a_folder,
    metadata_in_missing_folder,
    metadata_is_a_folder,
    output_named_for_another_format,
    output_named_avi,
    alpha_out_of_range,
    imgsz_not_a_number,
    cuda_decoder_not_here,
]


# --- the CLI cases -------------------------------------------------------------------------------


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def option(args: list, name: str):
    return Path(args[args.index(name) + 1]) if name in args else None


@pytest.mark.parametrize("bad_run", BAD_RUNS, ids=lambda f: f.__name__)
def test_bad_run_fails_with_one_line_and_leaves_no_output(bad_run, small_sample_clip, anonengine_cli, tmp_path):
    args, expected = bad_run(tmp_path, small_sample_clip)
    # Every run asks for a video and metadata in tmp_path unless the case names its own paths.
    if "--output-video" not in args:
        args += ["--output-video", tmp_path / "out.mp4"]
    if "--metadata" not in args:
        args += ["--metadata", tmp_path / "out.jsonl"]
    output, metadata = option(args, "--output-video"), option(args, "--metadata")
    before = files_under(tmp_path)

    result = anonengine_cli("run", *RUN_MODE, "--quiet", "--imgsz", "320", *args, cwd=tmp_path)

    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith(ERROR_PREFIXES), lines[0]
    assert expected.lower() in lines[0].lower(), lines[0]
    # Nothing new at all: no output, no metadata, no `.partial`, no default `<stem>_anonymized.mp4`.
    assert files_under(tmp_path) == before
    for path in (output, metadata):  # may lie outside tmp_path
        assert not path.is_file(), f"{path} left behind"
        if path.parent.is_dir():
            assert not list(path.parent.glob("*.partial*")), f"a .partial file left next to {path}"


def test_python_dash_m_runs_the_cli(anonengine_cli):
    result = anonengine_cli("--help", timeout=30)
    assert result.returncode == 0 and "usage: anonengine" in result.stdout


# --- a failing detector, in process --------------------------------------------------------------


def flaky_detect_after_first_frame(monkeypatch, frame_shape: tuple[int, int]) -> None:
    """Makes PersonDetector.detect raise on every video frame after the first (warm-up calls pass, and the first
    frame's two looks: upright, then upside down)."""
    from anonengine.detector import PersonDetector

    real_detect = PersonDetector.detect
    video_calls = 0

    def detect(self, frames):
        nonlocal video_calls
        if frames and frames[0].shape[:2] == frame_shape:  # the warm-up frame is imgsz x imgsz
            video_calls += 1
            if video_calls > 2:
                raise RuntimeError("simulated detector crash")
        return real_detect(self, frames)

    monkeypatch.setattr(PersonDetector, "detect", detect)


def inline_config(clip, models_dir: Path, out_dir: Path, on_detector_error: str) -> EngineConfig:
    camera = CameraConfig(
        name="t", source=str(clip.video), output=str(out_dir / "out.mp4"), metadata=str(out_dir / "out.jsonl")
    )
    cfg = EngineConfig(cameras=[camera])
    cfg.anonymizer.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.anonymizer.detector.device = "cpu"
    cfg.anonymizer.detector.imgsz = 320
    cfg.anonymizer.on_detector_error = on_detector_error
    cfg.engine.max_batch = 1  # a file's frames one at a time: the detector fails from its second frame on
    return cfg


def test_detector_failure_with_stop_raises_and_writes_nothing(small_sample_clip, models_dir, tmp_path, monkeypatch):
    from anonengine.inline import run_inline

    flaky_detect_after_first_frame(monkeypatch, (192, 320))
    cfg = inline_config(small_sample_clip, models_dir, tmp_path, "stop")

    with pytest.raises(DetectionError, match="simulated detector crash"):
        run_inline(cfg)

    assert files_under(tmp_path) == set()  # no video, no metadata, no .partial files


def test_detector_failure_with_obscure_emits_grey_frames_never_raw(
    small_sample_clip, models_dir, tmp_path, monkeypatch
):
    from anonengine.inline import run_inline

    flaky_detect_after_first_frame(monkeypatch, (192, 320))
    cfg = inline_config(small_sample_clip, models_dir, tmp_path, "obscure")

    (result,) = run_inline(cfg)

    assert (result.frames, result.obscured) == (SAMPLE_FRAMES, SAMPLE_FRAMES - 1)
    with av.open(str(tmp_path / "out.mp4")) as c:
        frames = [f.to_ndarray(format="bgr24").astype(int) for f in c.decode(c.streams.video[0])]
    assert len(frames) == SAMPLE_FRAMES
    assert np.abs(frames[0] - OBSCURED_GREY).max() > 50, "frame 0 was detected: it is a picture, not grey"
    for index, frame in enumerate(frames[1:], start=1):
        # Uniform grey within codec rounding: not one pixel of the raw frame survives.
        assert np.abs(frame - OBSCURED_GREY).max() <= 3, f"frame {index} is not uniformly grey"


# --- regression: a valid source must not fail on write ------------------------------------------


def test_output_takes_a_millisecond_time_base(tmp_path):
    """Matroska/WebM sources count pts in 1/1000 s; MP4 rewrites the stream's time base to 1/16000 when it
    writes its header, and pts read back in that time base used to fail with "Invalid argument"."""
    rate, time_base, count = Fraction(25), Fraction(1, 1000), 60
    writer = VideoWriter(tmp_path / "ms.mp4", 64, 48, rate, time_base)
    for i in range(count):
        writer.write(np.full((48, 64, 3), i * 4, np.uint8), pts=i * 40)
    path = writer.close()

    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        times = [float(f.pts * stream.time_base) for f in c.decode(stream)]
    assert times == pytest.approx([i * 0.04 for i in range(count)])



def test_models_live_in_the_users_cache_unless_the_folder_has_its_own(tmp_path, monkeypatch):
    """A run from any folder made a `models/` there, with a copy of the weights and the exports (41 to 182 MB
    each): outside this project's checkout they go to the user's cache."""
    from anonengine import models

    monkeypatch.delenv("ANONENGINE_MODELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    assert models.models_dir() == tmp_path / "cache/anonengine/models"
    (tmp_path / "models").mkdir()
    assert models.models_dir() == Path("models")
    monkeypatch.setenv("ANONENGINE_MODELS", str(tmp_path / "mine"))
    assert models.models_dir() == tmp_path / "mine"


def test_a_bare_model_name_found_in_the_working_folder_is_said(models_dir, tmp_path, monkeypatch, caplog):
    """torch unpickles weights (code): a bare name picked up from whatever folder the engine was started
    in is not taken silently; `./NAME` says the user meant it, and `models/` is the quiet place."""
    import shutil

    from anonengine import models

    shutil.copy(models_dir / "yolo11n-pose.pt", tmp_path / "yolo11n-pose.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANONENGINE_MODELS", str(models_dir))
    with caplog.at_level("WARNING", logger="anonengine.models"):
        assert models.resolve("yolo11n-pose.pt") == "yolo11n-pose.pt"
    assert [r.getMessage() for r in caplog.records] == [
        f"model yolo11n-pose.pt: using the file of that name in the working folder {tmp_path} (write "
        f"./yolo11n-pose.pt to mean it, or put it in {models_dir}/)"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="anonengine.models"):
        models.resolve("./yolo11n-pose.pt")
        (tmp_path / "yolo11n-pose.pt").unlink()
        assert models.resolve("yolo11n-pose.pt") == str(models_dir / "yolo11n-pose.pt")
    assert caplog.records == []


# --- outputs that would destroy something: the source, a device, a link --------------------------


def _source_copy(tmp: Path, clip, name: str = "in.mp4") -> Path:
    source = tmp / name
    source.write_bytes(Path(clip.video).read_bytes())
    return source


def _output_at(tmp: Path, source: Path, kind: str) -> tuple[list, str]:
    if kind == "the source":
        return ["--output-video", source], "is the source itself"
    if kind == "a link to the source":
        (tmp / "link.mp4").symlink_to(source)
        return ["--output-video", tmp / "link.mp4"], "is the source itself"
    if kind == "a hard link to the source":
        os.link(source, tmp / "hard.mp4")
        return ["--output-video", tmp / "hard.mp4"], "is the source itself"
    if kind == "the source as the output's working file":  # set aside as an earlier run's: the source renamed
        return ["--output-video", tmp / "in.mp4"], "is written as in.partial.mp4 until complete, which is the source"
    if kind == "metadata over the source":
        return ["--output-video", tmp / "out.mp4", "--metadata", source], "is the source itself"
    if kind == "metadata over the output":  # the video was written, then replaced by the metadata: exit 0
        return ["--output-video", tmp / "out.mp4", "--metadata", tmp / "out.mp4"], "is the output video itself"
    if kind == "a pipe":
        os.mkfifo(tmp / "pipe.mp4")
        return ["--output-video", tmp / "pipe.mp4"], "not a regular file"
    if kind == "metadata into a pipe":
        os.mkfifo(tmp / "pipe.jsonl")
        return ["--output-video", tmp / "out.mp4", "--metadata", tmp / "pipe.jsonl"], "not a regular file"
    (tmp / "other.mp4").write_bytes(b"kept")
    (tmp / "link.mp4").symlink_to(tmp / "other.mp4")
    return ["--output-video", tmp / "link.mp4"], "symbolic link"


@pytest.mark.parametrize("kind", ["the source", "a link to the source", "a hard link to the source",
                                  "the source as the output's working file", "metadata over the source", "metadata over the output", "a pipe",
                                  "metadata into a pipe", "a link elsewhere"])
@pytest.mark.parametrize("inline", [False, True], ids=["engine", "inline"])
def test_an_output_that_would_destroy_something_is_refused_and_all_stays_as_it_was(
        kind, inline, small_sample_clip, anonengine_cli, tmp_path):
    """Before, `--output-video` naming the source replaced the original footage with its anonymized copy
    (through a link too), and one naming a device or a pipe, or a link, was replaced by a video file (run
    as root, /dev/null became one)."""
    working = kind == "the source as the output's working file"
    source = _source_copy(tmp_path, small_sample_clip, "in.partial.mp4" if working else "in.mp4")
    args, expected = _output_at(tmp_path, source, kind)
    before = {p: (p.is_symlink(), stat.S_IFMT(p.lstat().st_mode), p.read_bytes() if p.is_file() else None)
              for p in tmp_path.iterdir()}

    result = anonengine_cli("run", "--video-source", source, "--quiet", *args, *(["--inline"] if inline else []),
                            cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(ERROR_PREFIXES) and expected in line, line
    after = {p: (p.is_symlink(), stat.S_IFMT(p.lstat().st_mode), p.read_bytes() if p.is_file() else None)
             for p in tmp_path.iterdir()}
    assert after == before


@pytest.mark.parametrize("args,said", [
    (("run", "--video-source", ""), "--video-source is empty"),
    (("sample", "--frames", "0"), "--frames and --fps: 1 or more"),
    (("sample", "--width", "321", "--height", "179"), "even sizes of 64 pixels or more"),
    (("sample", "--out", "taken.mp4"), "a folder to write in, not a file"),
    (("run", "--video-source", "videos", "--output-dir", "videos"), "is videos or holds it"),
    (("run", "--video-source", "videos", "--output-dir", "."), "is videos or holds it"),
    (("sample", "--out", "taken.mp4/sub"), "cannot write in taken.mp4/sub: Not a directory"),
    (("run", "--video-source", "taken.mp4", "--output-video", "."), "output . is a folder: give a file's name"),
    # Said by the flag given, not the config's place ("invalid anonymizer.detector.imgsz")
    (("run", "--video-source", "taken.mp4", "--imgsz", "100"), "error: --imgsz 100: Input should be a multiple of 32"),
    (("run", "--video-source", "taken.mp4", "--alpha", "nan"), "error: --alpha nan: Input should be a finite number"),
    (("run", "--video-source", "taken.mp4", "--output-video", ""), "--output-video is empty"),  # the default name was used
], ids=["empty source", "sample frames 0", "sample odd size", "sample out a file", "batch into its source",
        "batch around its source", "sample out under a file", "output the current folder", "imgsz", "alpha nan",
        "empty output"])
def test_what_the_sample_and_a_batch_cannot_do_is_one_line(args, said, small_sample_clip, anonengine_cli, tmp_path):
    """Before: internal errors (sample --frames 0: UnboundLocalError; --out a file: FileExistsError), and a
    batch written into its own source folder said "no videos or photos in videos"."""
    (tmp_path / "taken.mp4").write_bytes(b"x")
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(Path(small_sample_clip.video).read_bytes())
    before = files_under(tmp_path)
    result = anonengine_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(ERROR_PREFIXES) and said in line, line
    assert files_under(tmp_path) == before


# --- the environment and flags that `run` cannot honour -------------------------------------------


@pytest.mark.parametrize("command", ["run", "run --inline", "run a batch", "launch"])
def test_a_log_level_logging_does_not_know_is_one_line_before_anything_starts(
        command, small_sample_clip, models_dir, anonengine_cli, tmp_path, monkeypatch):
    """ANONENGINE_LOG_LEVEL=bogus was read by each stage process alone: 21 ValueError tracebacks, then
    "encode0 died 6 times", exit 2; `--inline` never looked at it. It is checked once, by the command."""
    import yaml
    from test_engine import engine_config

    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(Path(small_sample_clip.video).read_bytes())
    one_file = ["--video-source", tmp_path / "videos" / "a.mp4", "--output-video", tmp_path / "o.mp4", "--quiet"]
    args = {"run": ["run", *one_file],
            "run --inline": ["run", "--inline", *one_file],
            "run a batch": ["run", "--video-source", tmp_path / "videos", "--output-dir", tmp_path / "out", "--quiet"],
            "launch": ["launch", tmp_path / "engine.yaml"]}[command]
    cfg = engine_config(tmp_path, models_dir, {"lobby": tmp_path / "videos" / "a.mp4"})
    (tmp_path / "engine.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    before = files_under(tmp_path)
    monkeypatch.setenv("ANONENGINE_LOG_LEVEL", "bogus")

    result = anonengine_cli(*args, cwd=tmp_path)

    assert result.returncode == 2, result.stderr
    said = "ANONENGINE_LOG_LEVEL='bogus' is not a log level: use one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
    assert result.stderr.strip().splitlines() == [f"anonengine: error: {said}"], result.stderr
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("inline", [False, True], ids=["engine", "inline"])
def test_the_log_level_is_every_process_s_in_any_case(inline, small_sample_clip, anonengine_cli, tmp_path,
                                                      monkeypatch):
    """`--inline` ignored ANONENGINE_LOG_LEVEL (its INFO line came out at ERROR), and the stages took only
    `logging`'s own spelling: `error` was a traceback in each of them."""
    monkeypatch.setenv("ANONENGINE_LOG_LEVEL", "error")
    # The engine's without HTTP: another engine on this host holding the default address is a warning.
    result = anonengine_cli("run", *(["--inline"] if inline else ["--http", "off"]), "--quiet", "--imgsz", "320",
                            "--video-source", small_sample_clip.video, "--output-video", tmp_path / "o.mp4",
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    assert (tmp_path / "o.mp4").is_file()


@pytest.mark.parametrize("flags,said", [
    (["--inline", "--tap", "ipc"], "--tap needs the engine, which --inline does without: run without --inline"),
    (["--inline", "--http", "127.0.0.1:{port}"],
     "--http needs the engine, which --inline does without: run without --inline"),
    (["--output-dir", "{tmp}/out", "--camera", "lobby"],
     "--camera is for a single file, not a batch (--output-dir): its files are named by their paths"),
    (["--person-conf", "1"], "person_conf 1.0 would leave persons the detector found as filmed (most score 0.3 "
     "to 0.9): at most 0.5; lower hides more (the default 0.15)"),
], ids=["inline tap", "inline http", "batch camera", "person conf 1"])
def test_a_flag_the_run_would_leave_out_is_refused(flags, said, small_sample_clip, anonengine_cli, tmp_path):
    """`run --inline --tap ipc` and `--inline --http HOST:PORT` ran without a tap or a server, exit 0; a
    batch's `--camera` named nothing (its files are named by their paths, and it writes no metadata);
    `--person-conf 1` hid nobody, exit 0."""
    from helpers import free_port

    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(Path(small_sample_clip.video).read_bytes())
    batch = "--output-dir" in flags
    flags = [flag.format(port=free_port(), tmp=tmp_path) for flag in flags]
    where = ["--video-source", tmp_path / "videos"] if batch else \
        ["--video-source", tmp_path / "videos" / "a.mp4", "--output-video", tmp_path / "o.mp4"]
    before = files_under(tmp_path)
    result = anonengine_cli("run", "--quiet", *where, *flags, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"anonengine: error: {said}"], result.stderr
    assert files_under(tmp_path) == before


def test_run_help_names_every_output_container_and_what_a_detector_error_does(anonengine_cli):
    """`--output-video` was "anonymized MP4 to write" though .mkv, .mov and .ts are written as such, and
    `--on-detector-error` said nothing."""
    from anonengine.paths import OUTPUT_CONTAINERS

    result = anonengine_cli("run", "--help", timeout=30)
    assert result.returncode == 0
    text = " ".join(result.stdout.split("\noptions:\n", 1)[-1].split())  # the options, not the usage
    assert "anonymized MP4" not in text
    output = text[text.index("--output-video FILE "):text.index("--method {bbox,seg} bbox")]
    assert all(suffix in output for suffix in OUTPUT_CONTAINERS if suffix), output
    errors = text[text.index("--on-detector-error {stop,obscure} "):text.index("--crf CRF")]
    assert "stop (default)" in errors and "obscure" in errors.split("{stop,obscure}", 1)[1], errors


def test_output_read_by_a_reader_that_left_ends_quietly(small_sample_clip, tmp_path):
    """`anonengine status | head -3` ended with "internal error: BrokenPipeError": the reader had left, nothing
    was wrong. Exit 128 + SIGPIPE, as a shell's own commands, and no error said."""
    import signal
    import subprocess
    import sys

    config = tmp_path / "engine.yaml"
    config.write_text(f"cameras:\n  - name: a\n    source: {small_sample_clip.video}\n"
                      f"    output: {tmp_path / 'o.mp4'}\n")
    reader, writer = os.pipe()
    os.close(reader)  # gone before the first line
    try:
        result = subprocess.run([sys.executable, "-m", "anonengine.cli", "launch", "--validate-config", str(config)],
                                stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(writer)
    # (Its notes may come before: a fresh checkout's model is yet to be copied from the installed package.)
    assert result.returncode == 128 + signal.SIGPIPE and "error" not in result.stderr, result.stderr


def test_a_missing_source_is_said_missing_whatever_its_name(anonengine_cli, tmp_path):
    """A source that is not there, named as its output's working file would be (`a.partial.mp4` for `a.mp4`), was
    refused as that clash (a first-time user's trial): nothing to destroy; the one line says it is missing."""
    result = anonengine_cli("run", "--video-source", tmp_path / "a.partial.mp4", "--output-video", tmp_path / "a.mp4",
                            "--inline", "--quiet")
    assert result.returncode == 2
    missing = f"anonengine: error: video source not found: {tmp_path / 'a.partial.mp4'}"
    assert result.stderr.strip().splitlines() == [missing], result.stderr


def test_a_name_beginning_with_a_dash_is_told_how_to_give_it(anonengine_cli, tmp_path):
    """argparse takes `-dash.mp4` for a flag: "expected one argument" alone left an archivist guessing."""
    result = anonengine_cli("run", "--video-source", "-dash.mp4", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip() == (
        "anonengine run: error: argument --video-source: expected one argument (a value beginning with '-' is given "
        "as --flag=VALUE, or a file as ./-name)"), result.stderr


@pytest.mark.parametrize("inline", [False, True], ids=["engine", "inline"])
def test_a_run_at_a_detector_input_under_640_says_what_it_misses(inline, small_sample_clip, anonengine_cli, tmp_path):
    """`--imgsz 480` showed a near person (198 px of a 360-px frame) in 250 of 250 frames, exit 0, without a word (a
    red team's trial); the README said only that far persons leak at 512."""
    mode = ["--inline"] if inline else ["--http", "off"]
    result = anonengine_cli("run", *mode, "--quiet", "--imgsz", "320", "--video-source", small_sample_clip.video,
                            "--output-video", tmp_path / "o.mp4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    said = result.stderr.strip().splitlines()[-1]
    assert said.startswith("anonengine: detector.imgsz 320 is under the 640") and "anonengine audit" in said, said
