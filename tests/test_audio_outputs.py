"""`--audio keep` into every container the engine writes (MP4, MOV, Matroska, MPEG-TS), for common codecs.

A user's trial found PCM audio kept into a `.ts` written as a `bin_data` data stream (exit 0, the sound
silently lost: MPEG-TS has no stream type for it), and Opus into a `.mov` refused by FFmpeg only after the
run, leaving a silent video at the final name (exit 2). `check_audio_fits` now refuses such a pair before
any work, one line; it must agree with what a real remux gives, pair by pair. What FFmpeg (PyAV's, 8.x)
gave when tried:

            MP4   MOV   MKV   TS
  aac       yes   yes   yes   yes
  mp3       yes   yes   yes   yes
  opus      yes   no    yes   yes
  pcm_s16le yes   yes   yes   data
  ac3       yes   yes   yes   yes
  flac      yes   no    yes   data
  vorbis    yes   no    yes   data
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import av
import pytest

from anonengine import audio as audio_module
from anonengine.audio import CarryPolicy, carry_over, check_audio_fits, finish_single_file
from anonengine.config import CameraConfig
from anonengine.errors import OutputError

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="the inputs are made by the ffmpeg command")

FAST = ("--imgsz", "320", "--device", "cpu", "--quiet")
ENCODERS = {"aac": "aac", "mp3": "libmp3lame", "opus": "libopus", "pcm_s16le": "pcm_s16le", "ac3": "ac3",
            "flac": "flac", "vorbis": "libvorbis"}
SUFFIXES = (".mp4", ".mov", ".mkv", ".ts")
# Pairs a user's trial met, which must stay refused whatever else FFmpeg comes to take.
REFUSED = {("pcm_s16le", ".ts"), ("opus", ".mov"), ("pcm_s16le", ".mp4")}
# Pairs FFmpeg writes and reads back, refused for the players that do not read them (`audio._cannot_hold`).
FEW_PLAYERS = {("pcm_s16le", ".mp4")}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The sample clip (640x360, 24 frames at 24/s) with 1 s of 440 Hz sine in each codec, in Matroska,
    which holds them all; codecs this ffmpeg cannot encode are left out."""
    from anonengine.sample import make_sample

    base = tmp_path_factory.mktemp("audio_outputs")
    clip = make_sample(base / "sample", width=640, height=360, frames=24, fps=24)
    made = {}
    for codec, encoder in ENCODERS.items():
        path = base / f"{codec}.mkv"
        done = subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(clip.video), "-f", "lavfi", "-i",
                               "sine=frequency=440:sample_rate=48000:duration=1", "-map", "0:v", "-map", "1:a",
                               "-c:v", "copy", "-c:a", encoder, str(path)], check=False, capture_output=True)
        if done.returncode == 0:
            made[codec] = path
    made["video"] = clip.video
    return made


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size] if c.streams.audio else []


def written_audio(path: Path) -> list[str]:
    """What a file's streams other than its video are, as its demuxer reads them: `audio:CODEC` or `data`."""
    with av.open(str(path)) as c:
        return [f"audio:{s.codec_context.codec.id}" if s.type == "audio" else s.type
                for s in c.streams if s.type != "video"]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("codec", list(ENCODERS))
def test_the_check_agrees_with_a_real_remux(codec, suffix, sources, tmp_path, monkeypatch):
    """Where the check lets audio through, `carry_over` copies every packet as that codec's audio; where
    it refuses, a remux without it fails or writes no audio (a data stream), and with it nothing is written."""
    if codec not in sources:
        pytest.skip(f"this ffmpeg has no {ENCODERS[codec]} encoder")
    source, video = sources[codec], sources["video"]
    with av.open(str(source)) as c:
        codec_id = c.streams.audio[0].codec_context.codec.id
    output = tmp_path / f"out{suffix}"
    try:
        check_audio_fits(source, output)
        fits = True
    except OutputError as exc:
        fits = False
        line = str(exc)
        assert "\n" not in line and codec in line and "--audio drop" in line
    if (codec, suffix) in REFUSED:
        assert not fits

    if fits:
        assert carry_over(video, source, output, CarryPolicy("keep")) == len(audio_packets(source))
        assert written_audio(output) == [f"audio:{codec_id}"]
        copied, original = audio_packets(output), audio_packets(source)
        # Unchanged: MPEG-TS carries AAC with an ADTS header before each packet (the muxer adds it).
        assert len(copied) == len(original) and all(c.endswith(o) for c, o in zip(copied, original, strict=True))
    else:
        with pytest.raises(OutputError):
            carry_over(video, source, output, CarryPolicy("keep"))
        assert list(tmp_path.iterdir()) == []
        # Without the check, FFmpeg refuses the pair or writes the audio as something no player plays, or as
        # what few players read.
        monkeypatch.setattr(audio_module, "check_audio_fits", lambda *_: None)
        try:
            carry_over(video, source, output, CarryPolicy("keep"))
        except OutputError:
            assert not output.exists()
        else:
            assert (f"audio:{codec_id}" not in written_audio(output)) == ((codec, suffix) not in FEW_PLAYERS)


@pytest.mark.parametrize(("codec", "suffix"), sorted(REFUSED))
def test_a_codec_the_container_cannot_hold_is_refused_before_any_work(codec, suffix, sources, anonengine_cli,
                                                                    tmp_path):
    """Before: PCM into .ts exited 0 with the sound as a data stream; Opus into .mov anonymized every frame,
    then failed and left a silent video at the final name."""
    if codec not in sources:
        pytest.skip(f"this ffmpeg has no {ENCODERS[codec]} encoder")
    out = tmp_path / "out"
    out.mkdir()
    result = anonengine_cli("run", "--video-source", sources[codec], "--output-video", out / f"clip{suffix}",
                            "--audio", "keep", *FAST)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "cannot hold the" in lines[0] and codec in lines[0], result.stderr
    assert "frames anonymized" not in result.stderr
    assert list(out.iterdir()) == []


def test_a_batch_that_cannot_keep_a_files_audio_advises_what_the_user_can_do(sources, anonengine_cli, tmp_path):
    """A batch writes MP4: told "a .mov or .mkv can hold it", a user could not choose one there. The file alone
    can be anonymized into one, and following that advice keeps the audio."""
    if "pcm_s16le" not in sources:
        pytest.skip("this ffmpeg has no pcm_s16le encoder")
    (tmp_path / "in").mkdir()
    shutil.copy(sources["pcm_s16le"], tmp_path / "in" / "clip.mov")
    result = anonengine_cli("run", "--video-source", "in", "--output-dir", "out", "--audio", "keep", *FAST,
                            cwd=tmp_path)
    assert result.returncode == 1
    (failed,) = [line for line in result.stderr.splitlines() if line.startswith("anonengine: failed: clip.mov: ")]
    advised = re.search(r"anonymized alone, --output-video (clip_anonymized\.\w+) can hold it, or --audio drop", failed)
    assert advised, failed
    alone = anonengine_cli("run", "--video-source", "in/clip.mov", "--output-video", advised[1], "--audio", "keep",
                           *FAST, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert audio_packets(tmp_path / advised[1]) == audio_packets(sources["pcm_s16le"])


def test_a_codec_the_container_can_hold_is_copied_through_the_cli(sources, anonengine_cli, tmp_path):
    """PCM, which MPEG-TS cannot hold, goes into Matroska packet for packet."""
    if "pcm_s16le" not in sources:
        pytest.skip("this ffmpeg has no pcm_s16le encoder")
    output = tmp_path / "clip.mkv"
    result = anonengine_cli("run", "--inline", "--video-source", sources["pcm_s16le"], "--output-video", output,
                            "--audio", "keep", *FAST)
    assert result.returncode == 0, result.stderr
    assert audio_packets(output) == audio_packets(sources["pcm_s16le"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mkv"]


def test_a_failed_audio_copy_leaves_nothing_at_the_final_name(sources, tmp_path, monkeypatch):
    """When carrying the audio over fails once the video is written (here FFmpeg's own refusal, the check
    taken away), the silent video does not stay at the final name: it is removed with its metadata, as a
    failed run's output is, and the error is one line."""
    if "opus" not in sources:
        pytest.skip("this ffmpeg has no libopus encoder")
    output, metadata = tmp_path / "clip.mov", tmp_path / "clip.jsonl"
    camera = CameraConfig(source=str(sources["opus"]), output=str(output), metadata=str(metadata))
    monkeypatch.setattr(audio_module, "check_audio_fits", lambda *_: None)
    finish = finish_single_file(camera, CarryPolicy("keep"))
    shutil.copy(sources["video"], output)  # what the run wrote: the anonymized video, without audio
    metadata.write_text("{}\n")
    with pytest.raises(OutputError) as failed:
        finish()
    assert "\n" not in str(failed.value) and str(failed.value).endswith("clip.mov removed")
    assert list(tmp_path.iterdir()) == []


def test_a_batch_refuses_a_file_whose_audio_mp4_cannot_hold_before_its_frames(sources, models_dir, tmp_path):
    """An IP camera's mu-law sound cannot go into a batch's MP4 unchanged: the file failed only after all its
    frames were anonymized. It fails first now, one line, none of its frames anonymized."""
    from anonengine.batch import FileRunner, Job
    from anonengine.config import EngineConfig
    from anonengine.errors import AnonError

    source = tmp_path / "door.mkv"
    done = subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(sources["video"]), "-f", "lavfi", "-i",
                           "sine=frequency=440:sample_rate=8000:duration=1", "-map", "0:v", "-map", "1:a",
                           "-c:v", "copy", "-c:a", "pcm_mulaw", str(source)], check=False, capture_output=True)
    if done.returncode != 0:
        pytest.skip("this ffmpeg has no pcm_mulaw encoder")
    cfg = EngineConfig(cameras=[CameraConfig(name="cam0", source=str(source))])
    cfg.anonymizer.detector.pose_model = str(models_dir / "yolo11n-pose.pt")
    cfg.anonymizer.detector.device, cfg.anonymizer.detector.imgsz = "cpu", 320
    frames = []
    runner = FileRunner(cfg, CarryPolicy("keep"), on_frame=lambda: frames.append(1))
    try:
        with pytest.raises(AnonError, match="cannot hold the pcm_mulaw audio of door.mkv"):
            runner.run(Job(source, "door.mkv", tmp_path / "out" / "door.mp4"))
    finally:
        runner.close()
    assert frames == [] and not (tmp_path / "out" / "door.mp4").exists()


def test_subtitles_left_out_are_said_by_a_run_and_a_batch(sources, anonengine_cli, tmp_path):
    """A source's subtitles (`John Smith, 12 Elm St` in an archivist's trial) are never carried over, which was
    right, but went without a word, unlike its audio."""
    (tmp_path / "subs.srt").write_text("1\n00:00:00,000 --> 00:00:00,900\nJohn Smith, 12 Elm St\n")
    (tmp_path / "in").mkdir()
    with_subs = tmp_path / "in" / "talk.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(sources["video"]), "-i", str(tmp_path / "subs.srt"),
                    "-map", "0:v", "-map", "1:s", "-c:v", "copy", "-c:s", "srt", str(with_subs)], check=True)
    single = anonengine_cli("run", "--video-source", with_subs, "--output-video", tmp_path / "talk.mp4", *FAST)
    batch = anonengine_cli("run", "--video-source", tmp_path / "in", "--output-dir", tmp_path / "out", *FAST)
    line = "subtitles left out (srt; their text may name people; the output has none)"
    assert single.returncode == 0 and f"anonengine: talk.mkv: {line}" in single.stderr, single.stderr
    assert batch.returncode == 0 and f"anonengine: talk.mkv: {line}" in batch.stderr, batch.stderr


def test_a_quicktime_timecode_is_kept_as_the_videos_and_left_out_with_tags_none(sources, anonengine_cli, tmp_path):
    """QuickTime keeps a timecode with the video (and its `tmcd` track), not with the file: it was left out without a
    word, even with `--tags all` (a user's trial). It is kept as the anonymized video's, as `basic` keeps when the
    recording was made."""
    source = tmp_path / "timecoded.mov"
    with av.open(str(sources["video"])) as inp, av.open(str(source), "w") as dst:
        video = dst.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 640, 360, "yuv420p"
        video.metadata["timecode"] = "01:00:00:00"
        for i, decoded in enumerate(inp.decode(video=0)):
            frame = av.VideoFrame.from_ndarray(decoded.to_ndarray(format="bgr24"), format="bgr24")
            frame.pts = i
            dst.mux(video.encode(frame))
        dst.mux(video.encode(None))

    def timecodes(path: Path) -> list[str | None]:
        with av.open(str(path)) as c:
            return [s.metadata.get("timecode") for s in c.streams]

    assert timecodes(source) == ["01:00:00:00", "01:00:00:00"]  # the video's, and its tmcd track's
    for name, tags in (("out.mov", "basic"), ("out.mp4", "basic"), ("none.mov", "none")):
        output = tmp_path / name
        result = anonengine_cli("run", "--inline", "--video-source", source, "--output-video", output, "--tags", tags,
                                *FAST)
        assert result.returncode == 0, result.stderr
        assert timecodes(output) == (["01:00:00:00", "01:00:00:00"] if tags == "basic" else [None]), name


def test_a_damaged_audio_packet_is_left_out_and_said_not_the_whole_output_removed(sources, tmp_path, caplog):
    """Bit rot in an MPEG-TS recording hit an AAC packet's header (its sampling rate index made invalid): MP4's
    muxer refused the packet, and with `--audio keep` the output, its frames all anonymized, was removed (an
    archivist's trial). The packet is left out and said; the rest of the sound is copied."""
    if "aac" not in sources:
        pytest.skip("this ffmpeg has no aac encoder")
    recording = tmp_path / "recording.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(sources["aac"]), "-c", "copy", "-f", "mpegts", str(recording)],
                   check=True)
    data = bytearray(recording.read_bytes())
    headers = [m.start() for m in re.finditer(rb"\xff\xf1", bytes(data))]  # ADTS: each AAC packet's sync word
    data[headers[len(headers) // 2] + 2] |= 0x3C  # sampling frequency index 15: none
    recording.write_bytes(bytes(data))
    whole = len(audio_packets(recording))
    with caplog.at_level(logging.WARNING, logger="anonengine.audio"):
        copied = carry_over(sources["video"], recording, tmp_path / "out.mp4", CarryPolicy("keep"))
    assert whole - 4 <= copied < whole and copied == len(audio_packets(tmp_path / "out.mp4"))
    assert f"recording.ts: {whole - copied} damaged audio packet(s) left out" in caplog.text
