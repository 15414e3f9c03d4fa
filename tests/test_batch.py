"""Batches (`run --video-source DIR --output-dir OUT`) on real files: a mirrored tree of videos and photos,
a manifest that makes a rerun skip what is done and redo what changed, a SIGTERM that leaves no half file
under a final name, one line per failed file, and the source's audio and tags (location stripped)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers import LEAK_SHARE, shown_share

from anonengine.audio import CarryPolicy, carry_over, is_location_tag, kept_tags
from anonengine.batch import find_jobs
from anonengine.cli import is_batch_source
from anonengine.errors import ConfigError
from anonengine.manifest import MANIFEST_NAME, Manifest
from anonengine.sample import assets_dir, make_sample, render_frames

WIDTH, HEIGHT, FRAMES = 160, 96, 12
FAST = ("--imgsz", "320", "--device", "cpu", "--quiet")
CREATION_TIME = "2024-05-01T10:00:00.000000Z"
PARIS = "+48.8584+002.2945/"


# --- inputs --------------------------------------------------------------------------------------


def with_audio_and_tags(video: Path, out: Path, tags: dict[str, str], audio: bool = True,
                        audio_first: bool = False) -> Path:
    """A copy of `video` (packets unchanged) with a 440 Hz AAC track (stream 0 with `audio_first`) and the
    given container tags."""
    movflags = {"movflags": "use_metadata_tags"} if any(k.startswith("com.") for k in tags) else {}
    with av.open(str(video)) as inp, av.open(str(out), "w", format="mp4", options=movflags) as dst:
        dst.metadata.update(tags)
        vin = inp.streams.video[0]
        # Every stream is added before the first packet is muxed.
        vout = None if audio_first else dst.add_stream_from_template(vin)
        if audio:
            aout = dst.add_stream("aac", rate=48000, layout="mono")
            aout.time_base = aout.codec_context.time_base = Fraction(1, 48000)
        vout = vout or dst.add_stream_from_template(vin)
        for packet in inp.demux(vin):
            if packet.dts is not None:
                packet.stream = vout
                dst.mux(packet)
        if audio:
            seconds = float(vin.duration * vin.time_base) if vin.duration else FRAMES / 25
            t = np.arange(int(48000 * seconds), dtype=np.float32) / 48000
            frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t))[None].astype(np.float32),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, 0, Fraction(1, 48000)
            for packet in [*aout.encode(frame), *aout.encode(None)]:
                dst.mux(packet)
    return out


def audio_packets(path: Path) -> list[tuple[int, bytes]]:
    with av.open(str(path)) as c:
        return [(p.pts, bytes(p)) for p in c.demux(c.streams.audio[0]) if p.size]


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        return [round(float(f.time), 4) for f in c.decode(c.streams.video[0])]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    """Media made once: a clip, a photo with its true background (generated) and one from zidane.jpg, and
    a clip with audio, a creation time and location tags."""
    base = tmp_path_factory.mktemp("media")
    clip = make_sample(base / "clip", width=WIDTH, height=HEIGHT, frames=FRAMES)
    image, background, persons = next(render_frames(320, 192, 1))
    zidane = cv2.imread(str(assets_dir() / "zidane.jpg"))
    zidane = cv2.resize(zidane, (320, round(320 * zidane.shape[0] / zidane.shape[1])), interpolation=cv2.INTER_AREA)
    tags = {"creation_time": CREATION_TIME, "title": "Trip", "location": PARIS, "location-eng": PARIS,
            "com.apple.quicktime.location.ISO6709": PARIS, "com.apple.quicktime.make": "Apple"}
    return {"clip": clip.video, "photo": image, "background": background, "persons": persons, "zidane": zidane,
            "voiced": with_audio_and_tags(clip.video, base / "voiced.mp4", tags)}


def make_tree(root: Path, inputs: dict, clips: int = 2) -> Path:
    """videos (.mp4 and .mov) and photos (PNG, JPEG) in subfolders, and a file that is neither."""
    (root / "day1" / "cam").mkdir(parents=True)
    for i in range(clips):
        shutil.copy(inputs["clip"], root / f"clip{i}.mp4")
    shutil.copy(inputs["clip"], root / "day1" / "cam" / "phone.mov")
    shutil.copy(inputs["voiced"], root / "day1" / "voiced.mp4")
    cv2.imwrite(str(root / "day1" / "street.png"), inputs["photo"])
    cv2.imwrite(str(root / "day1" / "cam" / "zidane.jpg"), inputs["zidane"], [cv2.IMWRITE_JPEG_QUALITY, 95])
    (root / "notes.txt").write_text("not media\n")
    return root


MIRRORED = {"clip0.mp4": "clip0.mp4", "clip1.mp4": "clip1.mp4", "day1/cam/phone.mov": "day1/cam/phone.mp4",
            "day1/voiced.mp4": "day1/voiced.mp4", "day1/street.png": "day1/street.png",
            "day1/cam/zidane.jpg": "day1/cam/zidane.jpg"}


def cli_env(models_dir: Path) -> dict[str, str]:
    """The environment `anonengine_cli` gives its runs, for the ones that outlive a test function."""
    return {k: v for k, v in os.environ.items() if k != "ANONENGINE_DEBUG"} | {"ANONENGINE_MODELS": str(models_dir)}


def records(out: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    return {r["input"]: r for r in lines if "input" in r}


def final_outputs(out: Path) -> set[str]:
    """Files under a final name: not hidden, not partial, not the manifest."""
    return {p.relative_to(out).as_posix() for p in out.rglob("*")
            if p.is_file() and not p.name.startswith(".") and ".partial" not in p.name and p.name != MANIFEST_NAME}


@pytest.fixture(scope="module")
def first_run(inputs, models_dir, tmp_path_factory):
    from conftest import CLI_TIMEOUT_S

    base = tmp_path_factory.mktemp("batch")
    tree = make_tree(base / "in", inputs)
    out = base / "out"
    # `--http off` says what a batch does anyway: it was refused as a single file's flag.
    result = subprocess.run([sys.executable, "-m", "anonengine.cli", "run", "--video-source", str(tree),
                             "--output-dir", str(out), "--http", "off", *FAST], check=False, env=cli_env(models_dir),
                            capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
    return tree, out, result


# --- the first run -------------------------------------------------------------------------------


def test_tree_is_mirrored_videos_to_mp4_photos_in_their_format(first_run):
    tree, out, result = first_run
    assert result.returncode == 0, result.stderr
    assert "6 file(s) anonymized, 0 skipped" in result.stdout
    assert final_outputs(out) == set(MIRRORED.values())
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or ".partial" in p.name], "leftovers"
    for rel, output in MIRRORED.items():
        if output.endswith(".mp4"):
            assert frame_times(out / output) == frame_times(tree / rel), f"{output}: frames or times differ"
    assert cv2.imread(str(out / "day1" / "street.png")).shape == (192, 320, 3)
    assert (out / "day1" / "cam" / "zidane.jpg").read_bytes()[:2] == b"\xff\xd8"  # still a JPEG


def test_manifest_records_each_file_with_its_fingerprint_and_settings(first_run):
    tree, out, _ = first_run
    found = records(out)
    assert set(found) == set(MIRRORED)
    settings = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()
                if "settings_key" in json.loads(line)]
    assert len(settings) == 1 and settings[0]["settings"]["audio"] == "drop"
    for rel, record in found.items():
        source = tree / rel
        assert record["output"] == MIRRORED[rel]
        assert (record["size"], record["mtime_ns"]) == (source.stat().st_size, source.stat().st_mtime_ns)
        assert record["sha256"].startswith("sha256:") and record["settings"] == settings[0]["settings_key"]
        assert record["frames"] == (1 if rel.endswith((".png", ".jpg")) else FRAMES)


def test_photo_persons_are_hidden_by_the_fill_and_drawn(first_run, inputs, models_dir):
    """A photo has no history: what was behind a person is the fill of never-seen pixels. No person's
    pixels come out as photographed (against the true background), the skeletons are drawn, and the
    audit's adversary finds nobody over unchanged pixels, in the generated street or in zidane.jpg."""
    from ultralytics import YOLO

    from anonengine.audit import UNCHANGED_SHARE, adversary_finds, unchanged_share
    from anonengine.compositor import JOINT_COLOR

    _, out, _ = first_run
    street = cv2.imread(str(out / "day1" / "street.png"))
    for person in inputs["persons"]:
        assert shown_share(inputs["photo"], street, inputs["background"], person["box"]) <= LEAK_SHARE, person
    joints = np.all(np.abs(street.astype(int) - JOINT_COLOR) < 30, axis=2)
    assert joints.sum() > 20, "no skeleton drawn"
    model = YOLO(str(models_dir / "yolo11n-pose.pt"), task="pose")
    zidane = cv2.imread(str(out / "day1" / "cam" / "zidane.jpg"))
    for original, anonymized in ((inputs["photo"], street), (inputs["zidane"], zidane)):
        finds = adversary_finds(model, anonymized, 640, 0.2, "cpu", True)
        leaks = [box for box, _, _ in finds if unchanged_share(original, anonymized, box) >= UNCHANGED_SHARE]
        assert not leaks, leaks
    assert np.abs(zidane.astype(int) - inputs["zidane"]).max(axis=2).mean() > 5, "zidane.jpg left as it was"


def test_audio_dropped_by_default_with_one_line(first_run):
    _, out, result = first_run
    said = [line for line in result.stderr.splitlines() if "audio dropped" in line]
    assert len(said) == 1 and "day1/voiced.mp4" in said[0], result.stderr
    with av.open(str(out / "day1" / "voiced.mp4")) as c:
        assert not c.streams.audio
    assert records(out)["day1/voiced.mp4"]["audio"] == "dropped"


def test_location_and_free_text_tags_left_out_creation_time_and_make_kept(first_run):
    """Free text may name the persons the video no longer shows (a privacy red team's file was titled "Surveillance
    of John Smith", its comment a phone number): by default only when and with what it was filmed is kept."""
    _, out, result = first_run
    with av.open(str(out / "day1" / "voiced.mp4")) as c:
        tags = dict(c.metadata)
    assert tags["creation_time"] == CREATION_TIME and tags["com.apple.quicktime.make"] == "Apple"
    assert "title" not in tags
    assert not [k for k, v in tags.items() if is_location_tag(k, v)], tags
    assert PARIS not in (out / "day1" / "voiced.mp4").read_bytes().decode("latin-1")
    said = [line for line in result.stderr.splitlines() if "tags left out" in line]
    assert len(said) == 1 and "day1/voiced.mp4" in said[0] and "(title:" in said[0], result.stderr
    assert "--tags all" in said[0] and "location" not in said[0]


@pytest.mark.parametrize("policy", ["basic", "all", "none"])
def test_the_tag_policy_decides_which_tags_an_output_takes_a_streams_title_too(policy, inputs, tmp_path):
    source = tmp_path / "named.mp4"
    with_audio_and_tags(inputs["clip"], source, {"creation_time": CREATION_TIME, "title": "Surveillance of John Smith",
                                                 "comment": "phone 555 0100", "location": PARIS,
                                                 "com.apple.quicktime.model": "X1"})
    with av.open(str(source)) as c:
        assert c.metadata["title"].startswith("Surveillance")
    named = tmp_path / "named_voice.mkv"  # Matroska keeps a stream's title
    with av.open(str(source)) as inp, av.open(str(named), "w") as dst:
        dst.metadata.update(inp.metadata)
        pairs = {s.index: dst.add_stream_from_template(s) for s in inp.streams}
        pairs[inp.streams.audio[0].index].metadata["title"] = "Jane voice"
        for packet in inp.demux():
            if packet.dts is not None:
                packet.stream = pairs[packet.stream.index]
                dst.mux(packet)
    output = tmp_path / "out.mkv"
    carry_over(inputs["clip"], named, output, CarryPolicy("keep", policy))
    with av.open(str(output)) as c:
        tags = {k.lower(): v for k, v in c.metadata.items()}
        stream_title = c.streams.audio[0].metadata.get("title")
    assert PARIS not in output.read_bytes().decode("latin-1")
    if policy == "none":
        assert "creation_time" not in tags and "com.apple.quicktime.model" not in tags
    else:
        assert tags["com.apple.quicktime.model"] == "X1" and "creation_time" in tags
    free = {"title": tags.get("title"), "comment": tags.get("comment"), "stream": stream_title}
    if policy == "all":
        assert free == {"title": "Surveillance of John Smith", "comment": "phone 555 0100", "stream": "Jane voice"}
    else:
        assert free == {"title": None, "comment": None, "stream": None}


# --- reruns --------------------------------------------------------------------------------------


def test_rerun_skips_everything_then_redoes_a_changed_file(first_run, inputs, anonengine_cli, tmp_path):
    tree, out, _ = first_run
    work = tmp_path / "out"
    shutil.copytree(out, work)
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    started = time.monotonic()
    again = anonengine_cli("run", "--video-source", tree, "--output-dir", work, *FAST)
    assert again.returncode == 0 and "0 file(s) anonymized, 6 skipped" in again.stdout, again.stdout + again.stderr
    assert time.monotonic() - started < 20
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()} == before, "a skipped file was written"

    # A copy of the archive: one input changed; one only touched (same content: its hash says it is done); the
    # rest as they were. The changed one's output is another file's copy (the first archive's, still there):
    # refused until it is removed, then redone.
    changed = tmp_path / "in"
    shutil.copytree(tree, changed)
    cv2.imwrite(str(changed / "day1" / "street.png"), inputs["photo"][::-1].copy())
    os.utime(changed / "clip1.mp4", ns=(time.time_ns(), time.time_ns()))
    refused = anonengine_cli("run", "--video-source", changed, "--output-dir", work, *FAST)
    assert refused.returncode == 2 and "day1/street.png is the anonymized copy of " in refused.stderr, refused.stderr
    (work / "day1" / "street.png").unlink()
    redo = anonengine_cli("run", "--video-source", changed, "--output-dir", work, *FAST)
    assert redo.returncode == 0 and "1 file(s) anonymized, 5 skipped" in redo.stdout, redo.stdout + redo.stderr
    assert (work / "day1" / "street.png").is_file()
    assert records(work)["day1/street.png"]["size"] == (changed / "day1" / "street.png").stat().st_size

    # Settings that change the output redo every file.
    photos = anonengine_cli("run", "--video-source", str(changed / "day1" / "*.png"), "--output-dir",
                            tmp_path / "png", *FAST)
    assert "1 file(s) anonymized" in photos.stdout, photos.stderr
    crf = anonengine_cli("run", "--video-source", str(changed / "day1" / "*.png"), "--output-dir",
                         tmp_path / "png", "--crf", "30", *FAST)
    assert "1 file(s) anonymized, 0 skipped" in crf.stdout, crf.stderr
    assert (tmp_path / "png" / "street.png").is_file()  # mirrored from the glob's folder


# --- interruptions and failures ------------------------------------------------------------------


def test_sigterm_mid_job_leaves_no_half_file_and_the_rerun_resumes(inputs, models_dir, anonengine_cli, tmp_path):
    """Stopped once the first file is recorded, the job ends within the next one: the finished files keep
    their outputs and records, the one in flight leaves nothing, and the same command does the rest."""
    clips, length = 6, 32
    tree = tmp_path / "in"
    tree.mkdir()
    longer = make_sample(tmp_path / "long", width=WIDTH, height=HEIGHT, frames=length).video
    for i in range(clips):
        shutil.copy(longer, tree / f"clip{i}.mp4")
    out = tmp_path / "out"
    job = subprocess.Popen([sys.executable, "-m", "anonengine.cli", "run", "--video-source", str(tree),
                            "--output-dir", str(out), *FAST], env=cli_env(models_dir), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and job.poll() is None:
        if (out / MANIFEST_NAME).exists() and len(records(out)) >= 1:
            break
        time.sleep(0.02)
    time.sleep(0.15)  # into the next file
    job.send_signal(signal.SIGTERM)
    stdout, stderr = job.communicate(timeout=30)
    assert job.returncode == 128 + signal.SIGTERM, stdout + stderr
    assert "interrupted by SIGTERM" in stderr
    done = records(out)
    assert 1 <= len(done) < clips, "the signal should have come mid-job"
    assert final_outputs(out) == {r["output"] for r in done.values()}, "a final name without its record"
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or ".partial" in p.name], "leftovers"
    for record in done.values():
        assert len(frame_times(out / record["output"])) == length

    resumed = anonengine_cli("run", "--video-source", tree, "--output-dir", out, *FAST)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{clips - len(done)} file(s) anonymized, {len(done)} skipped" in resumed.stdout
    assert final_outputs(out) == {f"clip{i}.mp4" for i in range(clips)}


def test_a_corrupt_file_fails_with_one_line_and_the_others_are_done(inputs, anonengine_cli, tmp_path):
    tree = tmp_path / "in"
    (tree / "sub").mkdir(parents=True)
    shutil.copy(inputs["clip"], tree / "good.mp4")
    (tree / "sub" / "broken.mp4").write_bytes(inputs["clip"].read_bytes()[:700])
    (tree / "sub" / "noise.mp4").write_bytes(os.urandom(4000))
    cv2.imwrite(str(tree / "sub" / "photo.png"), inputs["photo"])
    out = tmp_path / "out"
    result = anonengine_cli("run", "--video-source", tree, "--output-dir", out, *FAST)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("anonengine: failed:")]
    assert sorted(line.split()[2] for line in failed) == ["sub/broken.mp4:", "sub/noise.mp4:"], result.stderr
    assert "2 file(s) anonymized, 0 skipped (done before), 2 failed" in result.stdout
    assert final_outputs(out) == {"good.mp4", "sub/photo.png"}
    assert set(records(out)) == {"good.mp4", "sub/photo.png"}


def test_a_jpeg_cut_short_is_named_and_hidden_files_left_out_are_said(inputs, anonengine_cli, tmp_path):
    """A JPEG cut short was anonymized with its lower part grey, and only libjpeg's line said anything, naming
    no file; a video in a hidden folder was left out without a word (a user's trial)."""
    tree = tmp_path / "in"
    (tree / ".thumbnails").mkdir(parents=True)
    whole = cv2.imencode(".jpg", inputs["zidane"])[1].tobytes()
    (tree / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    shutil.copy(inputs["clip"], tree / ".thumbnails" / "clip.mp4")
    out = tmp_path / "out"
    result = anonengine_cli("run", "--video-source", tree, "--output-dir", out, *FAST)
    assert result.returncode == 0, result.stderr
    assert f"{tree / 'cut.jpg'} is cut short (a copy stopped midway?)" in result.stderr
    assert "1 video(s) or photo(s) under hidden names left out (such as .thumbnails/clip.mp4)" in result.stderr
    assert "1 file(s) anonymized, 0 skipped (done before), 0 failed; 1 frame in" in result.stdout
    assert final_outputs(out) == {"cut.jpg"}


# --- audio kept ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batch", "inline", "engine"])
def test_audio_keep_copies_the_packets_unchanged(mode, inputs, anonengine_cli, tmp_path):
    source = inputs["voiced"]
    if mode == "batch":
        (tmp_path / "in").mkdir()
        shutil.copy(source, tmp_path / "in" / "voiced.mp4")
        args = ["--video-source", tmp_path / "in", "--output-dir", tmp_path / "out"]
        output = tmp_path / "out" / "voiced.mp4"
    else:
        output = tmp_path / "voiced.mp4"
        args = ["--video-source", source, "--output-video", output] + (["--inline"] if mode == "inline" else [])
    result = anonengine_cli("run", *args, "--audio", "keep", *FAST)
    assert result.returncode == 0, result.stderr
    assert "audio dropped" not in result.stderr
    assert audio_packets(output) == audio_packets(source)
    assert frame_times(output) == frame_times(source)
    with av.open(str(output)) as c:
        assert c.metadata["creation_time"] == CREATION_TIME
        assert not [k for k, v in c.metadata.items() if is_location_tag(k, v)]
    assert sorted(p.name for p in output.parent.iterdir() if p.name.startswith(".")) == []


def test_audio_kept_from_a_source_whose_stream_0_is_audio(inputs, tmp_path):
    """Stream indexes belong to each file: the source's audio at index 0 is not the video's 0."""
    source = with_audio_and_tags(inputs["clip"], tmp_path / "audio_first.mp4", {}, audio_first=True)
    with av.open(str(source)) as c:
        assert c.streams[0].type == "audio"
    output = tmp_path / "out.mp4"
    copied = carry_over(inputs["clip"], source, output, CarryPolicy("keep"))
    assert copied == len(audio_packets(source)) and audio_packets(output) == audio_packets(source)
    assert frame_times(output) == frame_times(inputs["clip"])
    assert not (tmp_path / "out.partial.mp4").exists()


# --- pieces --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "value", "location"), [
    ("location", PARIS, True), ("location-eng", PARIS, True), ("com.apple.quicktime.location.ISO6709", PARIS, True),
    ("com.android.gps", "x", True), ("comment", "+40.6892-074.0445/", True), ("creation_time", CREATION_TIME, False),
    ("title", "Trip", False), ("com.apple.quicktime.make", "Apple", False),
])
def test_location_tags_are_told_apart(key, value, location):
    assert is_location_tag(key, value) is location
    assert (key in kept_tags({key: value}, "all")) is not location


@pytest.mark.parametrize(("spec", "batch"), [
    ("rtsp://cam/stream?channel=1", False), ("0", False), ("clips/*.mp4", True), ("clips/day?", True),
])
def test_urls_and_webcams_are_no_batch(spec, batch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_batch_source(spec) is batch


def test_inputs_with_one_output_name_are_refused_all_at_once(tmp_path):
    """Said one pair a run, an archive's clashes took as many runs to find (a trial: three runs for two)."""
    for name in ("a.mp4", "a.mov", "clip.mkv", "clip.mov", "clip.ts"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(ConfigError) as refused:
        find_jobs(str(tmp_path), tmp_path / "out")
    assert str(refused.value) == (f"a.mov and a.mp4 would both be written to {tmp_path / 'out' / 'a.mp4'}; clip.mkv, "
                                  f"clip.mov and clip.ts would all be written to {tmp_path / 'out' / 'clip.mp4'}: "
                                  "rename one of each")


def test_a_file_named_as_the_other_kind_is_taken_for_what_it_holds_and_a_link_to_nothing_fails(
        inputs, anonengine_cli, tmp_path):
    """An archivist's trial: a crowd's JPEG named `.mp4` went the videos' way (one frame detected at the videos'
    640, never looked at closer: 20 persons shown, exit 0); a video named `.jpg` came out as its first frame alone;
    a link to a disk not mounted was left out without a word. Now the photo is a photo (the very pixels of the
    same photo named `.png`), the video a video, each said; the link fails, named, and the batch exits 1. A photo
    given alone with a video's name for its output is anonymized as a photo too, and written as one frame."""
    source = tmp_path / "in"
    source.mkdir()
    cv2.imwrite(str(source / "shot.png"), inputs["zidane"])
    shutil.copy(source / "shot.png", source / "misnamed.mp4")
    shutil.copy(inputs["clip"], source / "clip.jpg")
    (source / "offline.mp4").symlink_to(tmp_path / "unmounted" / "clip.mp4")
    result = anonengine_cli("run", "--video-source", "in", "--output-dir", "out", *FAST, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    out = tmp_path / "out"
    assert final_outputs(out) == {"shot.png", "misnamed.png", "clip.mp4"}
    assert "batch: misnamed.mp4 holds a photo, not a video as its name says: anonymized as a photo -> misnamed.png" \
        in result.stderr
    assert "batch: clip.jpg holds a video, not a photo as its name says: anonymized as a video -> clip.mp4" \
        in result.stderr
    assert (f"failed: offline.mp4: a link to {tmp_path / 'unmounted' / 'clip.mp4'}, which is not there (a disk not "
            "mounted?)") in result.stderr
    photo = cv2.imread(str(out / "shot.png"))
    assert changed(photo, inputs) and np.array_equal(cv2.imread(str(out / "misnamed.png")), photo)
    with av.open(str(out / "clip.mp4")) as container:
        assert container.streams.video[0].frames == FRAMES
    alone = anonengine_cli("run", "--video-source", "in/misnamed.mp4", *FAST, cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert np.array_equal(cv2.imread(str(tmp_path / "misnamed_anonymized.png")), photo)
    as_video = anonengine_cli("run", "--video-source", "in/shot.png", "--output-video", "one.mp4", *FAST, cwd=tmp_path)
    assert as_video.returncode == 0, as_video.stderr
    with av.open(str(tmp_path / "one.mp4")) as container:
        (frame,) = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    replaced = np.abs(photo.astype(int) - inputs["zidane"]).max(axis=2) > 30  # where the photo's persons were
    to_photo, to_original = (np.abs(frame.astype(int) - image)[replaced].mean() for image in (photo, inputs["zidane"]))
    assert replaced.mean() > 0.05 and to_photo < 4 < 4 * to_photo < to_original  # the photo's anonymization


def test_videos_named_otherwise_are_found_by_their_content(inputs, tmp_path):
    """A batch took its videos by suffix alone: a `.gif`, a `.vob`, a camera's `.MOD` or a file named without
    one stayed as filmed while the summary said nothing failed. A file named neither video nor photo is now
    opened, and taken when it holds a video stream; text, and a song with its cover picture, are not."""
    source = tmp_path / "in"
    source.mkdir()
    for name in ("clip.mp4", "CAMERA.MOD", "recording"):
        shutil.copy(inputs["clip"], source / name)
    (source / "README").write_text("what this folder holds\n")
    (source / "notes.txt").write_text("not media\n")
    with av.open(str(source / "song.m4b"), "w", format="mp4") as song:  # a picture attached to sound
        sound = song.add_stream("aac", rate=48000, layout="mono")
        cover = song.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 64, 64, "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="bgr24").reformat(
            format="yuvj420p")
        picture.pts = 0
        song.mux([*cover.encode(picture), *cover.encode(None)])
        tone = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        tone.sample_rate, tone.pts = 48000, 0
        song.mux([*sound.encode(tone), *sound.encode(None)])
    jobs = find_jobs(str(source), tmp_path / "out")
    assert sorted(job.rel for job in jobs) == ["CAMERA.MOD", "clip.mp4", "recording"]
    assert sorted(job.output.name for job in jobs) == ["CAMERA.mp4", "clip.mp4", "recording.mp4"]
    # A glob's matches are told apart as a folder's files are (the song and the text were failed files).
    assert sorted(job.rel for job in find_jobs(str(source / "*"), tmp_path / "out")) == [job.rel for job in jobs]


def test_a_torn_manifest_line_is_ignored_and_the_next_record_stays_whole(tmp_path):
    from anonengine.manifest import Record

    record = Record("a.mp4", "a.mp4", 1, 2, "sha256:x", "k", 3, "none", 0.1, "t")
    manifest = Manifest(tmp_path)
    manifest.add(record)
    with open(manifest.path, "a") as f:
        f.write('{"input": "b.mp4", "outp')  # killed while writing
    again = Manifest(tmp_path)
    assert set(again.records) == {"a.mp4"}
    again.add(Record("c.mp4", "c.mp4", 1, 2, "sha256:y", "k", 3, "none", 0.1, "t"))
    assert set(Manifest(tmp_path).records) == {"a.mp4", "c.mp4"}


def test_a_manifest_holding_no_record_is_said_and_a_torn_first_line_is_not(tmp_path, caplog):
    """A user's trial: a manifest overwritten with something else was taken for an empty one, every file done
    again without a word. A batch killed as it wrote its first record left a torn line: nothing to say."""
    (tmp_path / MANIFEST_NAME).write_text("garbage here\n")
    with caplog.at_level("WARNING", logger="anonengine.manifest"):
        assert Manifest(tmp_path).records == {}
        assert "holds no record this version reads: every file is done again" in caplog.text
        caplog.clear()
        (tmp_path / MANIFEST_NAME).write_text('{"input": "b.mp4", "outp')
        assert Manifest(tmp_path).records == {} and caplog.text == ""


def test_one_photo_given_to_run_comes_out_a_photo_treated_as_a_batch_treats_it(inputs, anonengine_cli, tmp_path):
    """Before, `run --video-source photo.jpg` wrote a one-frame MP4, detected at the videos' size; a photo's
    persons have no other frame to be caught in. `--output-video NAME.mp4` still asks for a video."""
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "IMG_1.jpg"), inputs["zidane"])
    result = anonengine_cli("run", "--video-source", "in/IMG_1.jpg", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    photo = cv2.imread(str(tmp_path / "IMG_1_anonymized.jpg"))
    batch = anonengine_cli("run", "--video-source", "in", "--output-dir", "out", "--quiet", cwd=tmp_path)
    assert batch.returncode == 0, batch.stderr
    assert np.array_equal(photo, cv2.imread(str(tmp_path / "out" / "IMG_1.jpg")))  # the batch's very photo
    assert np.abs(photo.astype(int) - inputs["zidane"]).max(axis=2).mean() > 5, "left as it was"
    video = anonengine_cli("run", "--video-source", "in/IMG_1.jpg", "--output-video", "one.mp4", "--quiet",
                           cwd=tmp_path)
    assert video.returncode == 0, video.stderr
    with av.open(str(tmp_path / "one.mp4")) as container:
        assert container.streams.video[0].frames == 1
    refused = anonengine_cli("run", "--video-source", "in/IMG_1.jpg", "--metadata", "m.jsonl", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "anonengine: error: --metadata is for videos, not a photo (in/IMG_1.jpg)")


def test_photos_of_other_formats_are_anonymized_and_those_it_cannot_read_are_reported(inputs, anonengine_cli,
                                                                                      tmp_path):
    """WebP, TIFF, BMP, AVIF and JPEG 2000 come out in their format; an iPhone's HEIC (or a camera's raw file) is
    a failed file, one line each and exit 1. Before, both were left out silently: the summary said the folder
    was done while their persons stayed as taken. (An AVIF was a video of one frame, detected at 640.)"""
    names = ("a.webp", "b.tif", "c.bmp", "d.avif", "e.jp2")
    (tmp_path / "in").mkdir()
    for name in names:
        cv2.imwrite(str(tmp_path / "in" / name), inputs["zidane"])
    (tmp_path / "in" / "IMG_0001.HEIC").write_bytes(b"\0\0\0\x18ftypheic")  # what OpenCV cannot read
    (tmp_path / "in" / "notes.txt").write_text("not a photo")
    result = anonengine_cli("run", "--video-source", "in", "--output-dir", "out", "--quiet", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    failed = [line for line in result.stderr.splitlines() if "failed" in line]  # (a first export says so too)
    assert failed == ["anonengine: failed: IMG_0001.HEIC: cannot read .heic photos (HEIF or a camera's raw format): "
                      "convert them to JPEG first, then run the batch again"], result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix != ".jsonl") == list(names)
    for name in names:
        out = cv2.imread(str(tmp_path / "out" / name))
        assert np.abs(out.astype(int) - inputs["zidane"]).max(axis=2).mean() > 5, f"{name} left as it was"


def test_a_large_photos_small_persons_are_looked_at_closer_and_hidden(models_dir, anonengine_cli, tmp_path):
    """A photo is detected with its long side at 960: a 12-MP phone photo shrunk 4 times, its persons under about
    400 px tall were missed and came out as photographed (a user's 48-MP crowd: 140 of 145 shown). It is looked at
    again closer (`detector.photo_max_imgsz`). Here: bus.jpg in 32 tiles (3200x2136), its persons 230 to 330 px
    tall, each tile's persons known from bus.jpg itself."""
    from anonengine.audit import UNCHANGED_SHARE, unchanged_share
    from anonengine.config import AnonymizerConfig
    from anonengine.stages import DetectStage

    bus = cv2.imread(str(assets_dir() / "bus.jpg"))
    tile_w, tile_h = 400, 534
    tile = cv2.resize(bus, (tile_w, tile_h), interpolation=cv2.INTER_AREA)
    photo = np.tile(tile, (4, 8, 1))
    cv2.imwrite(str(tmp_path / "crowd.jpg"), photo, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cfg = AnonymizerConfig()
    cfg.detector.pose_model, cfg.detector.imgsz = str(models_dir / "yolo11n-pose.pt"), 640
    detect = DetectStage(cfg)
    detect.setup()
    (in_tile,) = detect.process([tile])
    whole = in_tile.boxes[(in_tile.boxes[:, 3] - in_tile.boxes[:, 1]) > 0.4 * tile_h]  # not the sliver at the edge
    assert len(whole) >= 3
    truth = [box + [x, y, x, y] for y in range(0, 4 * tile_h, tile_h) for x in range(0, 8 * tile_w, tile_w)
             for box in whole]
    cfg.detector.imgsz = 960  # a photo's first look
    (first_look,) = detect.process([photo])
    assert len(first_look) < len(truth) / 2, "the first look finds them: make the persons smaller"

    result = anonengine_cli("run", "--video-source", tmp_path / "crowd.jpg", "--output-video", tmp_path / "out.jpg",
                            "--quiet")
    assert result.returncode == 0, result.stderr
    out = cv2.imread(str(tmp_path / "out.jpg"))
    shown = [box for box in truth if unchanged_share(photo, out, box) >= UNCHANGED_SHARE]
    assert not shown, f"{len(shown)} of {len(truth)} persons shown"
    # The audit looks as closely: it finds them all on the photo itself, none shown on the output.
    from anonengine.audit import audit

    model = str(models_dir / "yolo11n-pose.pt")
    itself = audit(str(tmp_path / "crowd.jpg"), str(tmp_path / "crowd.jpg"), model, augment=False, device="cpu")
    assert len(itself.flagged[0].persons) >= 0.9 * len(truth) and itself.closest == 3200
    assert not audit(str(tmp_path / "crowd.jpg"), str(tmp_path / "out.jpg"), model, augment=False, device="cpu").flagged


def test_a_photo_of_several_pictures_says_the_others_are_left_out(inputs, anonengine_cli, tmp_path):
    """A multi-page TIFF came out as its first page, the others gone without a word."""
    pages = [inputs["zidane"], cv2.flip(inputs["zidane"], 1), inputs["zidane"]]
    assert cv2.imwritemulti(str(tmp_path / "scan.tiff"), pages)
    result = anonengine_cli("run", "--video-source", tmp_path / "scan.tiff", "--output-video", tmp_path / "out.tiff",
                            "--quiet")
    assert result.returncode == 0, result.stderr
    assert "scan.tiff: 3 pictures; the first is anonymized, the others are left out" in result.stderr
    assert cv2.imcount(str(tmp_path / "out.tiff")) == 1


def test_a_photos_transparent_part_stays_transparent(inputs, anonengine_cli, tmp_path):
    """An RGBA PNG came out opaque: what lay under its transparent part (a cut-out's old background, an
    edit's hidden parts) came out with it. Its alpha is kept; the persons are hidden all the same."""
    rgba = cv2.cvtColor(inputs["zidane"], cv2.COLOR_BGR2BGRA)
    rgba[:, : rgba.shape[1] // 3, 3] = 0  # the left third transparent
    cv2.imwrite(str(tmp_path / "cut.png"), rgba)
    result = anonengine_cli("run", "--video-source", tmp_path / "cut.png", "--output-video", tmp_path / "out.png",
                            "--quiet")
    assert result.returncode == 0, result.stderr
    out = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == rgba.shape and np.array_equal(out[..., 3], rgba[..., 3])
    assert np.abs(out[..., :3].astype(int) - inputs["zidane"]).max(axis=2).mean() > 5, "left as it was"


def test_a_photo_keeps_its_depth_and_its_grey_and_a_jpeg_named_heic_is_read(inputs, anonengine_cli, tmp_path):
    """A 16-bit PNG came out 8-bit and a grey JPEG as three equal channels; a JPEG named `.heic` (as messengers
    and phones' exports name them) was refused as HEIF. The pixels left as they were keep their 16 bits; those
    changed are the 8-bit anonymization's, brought to 16 bits."""
    zidane = inputs["zidane"]
    low_byte = np.indices(zidane.shape).sum(axis=0).astype(np.uint16) % 256  # what 8 bits would lose
    deep = zidane.astype(np.uint16) * 256 + low_byte
    grey = cv2.cvtColor(zidane, cv2.COLOR_BGR2GRAY)
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "eight.png"), zidane)
    cv2.imwrite(str(tmp_path / "in" / "deep.png"), deep)
    cv2.imwrite(str(tmp_path / "in" / "grey.png"), grey)
    cv2.imwrite(str(tmp_path / "in" / "grey16.png"), grey.astype(np.uint16) * 257)
    (tmp_path / "in" / "IMG_2.heic").write_bytes(cv2.imencode(".jpg", zidane)[1].tobytes())
    result = anonengine_cli("run", "--video-source", "in", "--output-dir", "out", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    def out(name):
        return cv2.imread(str(tmp_path / "out" / name), cv2.IMREAD_UNCHANGED)

    eight, deep_out = out("eight.png"), out("deep.png")
    assert deep_out.dtype == np.uint16 and deep_out.shape == deep.shape
    assert np.abs((deep_out >> 8).astype(int) - eight).max() <= 1  # the same anonymization
    kept = np.all(eight == zidane, axis=2)
    assert 0.2 < kept.mean() < 0.95 and np.array_equal(deep_out[kept], deep[kept])
    assert out("grey.png").ndim == 2 and out("grey16.png").ndim == 2 and out("grey16.png").dtype == np.uint16
    assert np.abs(out("grey.png").astype(int) - grey).mean() > 5, "left as it was"
    heic = tmp_path / "out" / "IMG_2.heic"
    assert heic.read_bytes().startswith(b"\xff\xd8\xff")  # a JPEG still, as it came
    assert np.abs(cv2.imread(str(heic)).astype(int) - zidane).max(axis=2).mean() > 5, "left as it was"


def zidane_jpeg(inputs) -> bytes:
    return cv2.imencode(".jpg", inputs["zidane"], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def changed(image: np.ndarray, inputs) -> bool:
    return image is not None and np.abs(image.astype(int) - inputs["zidane"]).max(axis=2).mean() > 5


def test_photos_named_otherwise_are_photos_by_their_name_or_their_content(inputs, anonengine_cli, tmp_path):
    """A JPEG named `.jfif` or `.jpe`, a camera's `IMG_0001` without a suffix, a TGA (which only FFmpeg reads)
    and a `.ppm` went the videos' way: one-frame MP4s detected at the videos' size, a user's 3200x2136 crowd
    shown whole, with exit 0. Each is a photo now, written in what it holds (a TGA as PNG)."""
    source = tmp_path / "in"
    source.mkdir()
    jpeg = zidane_jpeg(inputs)
    for name in ("a.jfif", "b.jpe", "IMG_0001"):
        (source / name).write_bytes(jpeg)
    cv2.imwrite(str(source / "d.ppm"), inputs["zidane"])
    height, width = inputs["zidane"].shape[:2]
    with av.open(str(source / "c.tga"), "w", format="image2", options={"update": "1"}) as tga:
        stream = tga.add_stream("targa", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "bgr24"
        tga.mux([*stream.encode(av.VideoFrame.from_ndarray(inputs["zidane"], format="bgr24")), *stream.encode(None)])
    jobs = find_jobs(str(source), tmp_path / "out")
    assert {job.rel: (job.output.name, job.photo) for job in jobs} == {
        "a.jfif": ("a.jfif", True), "b.jpe": ("b.jpe", True), "IMG_0001": ("IMG_0001", True),
        "c.tga": ("c.png", True), "d.ppm": ("d.ppm", True)}
    result = anonengine_cli("run", "--video-source", "in", "--output-dir", "out", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    for name in ("a.jfif", "IMG_0001"):
        assert (out / name).read_bytes()[:3] == b"\xff\xd8\xff", f"{name} is not the JPEG it was"
    assert (out / "c.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("a.jfif", "b.jpe", "IMG_0001", "c.png", "d.ppm"):
        image = cv2.imdecode(np.frombuffer((out / name).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == inputs["zidane"].shape and changed(image, inputs), f"{name} left as it was"
    alone = anonengine_cli("run", "--video-source", "in/IMG_0001", "--quiet", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    assert (tmp_path / "IMG_0001_anonymized").read_bytes() == (out / "IMG_0001").read_bytes()


def test_names_not_in_utf8_are_anonymized_in_a_batch_and_refused_by_the_engine_in_one_line(inputs, anonengine_cli,
                                                                                            tmp_path):
    """An old archive's Latin-1 names: OpenCV took a photo's name as UTF-8 and crashed the process (a segfault,
    no summary, the files after it never done, on every run); a video's failed as an internal error."""
    source = tmp_path / "in"
    source.mkdir()
    photo, video = source / os.fsdecode(b"caf\xe9.jpg"), source / os.fsdecode(b"r\xe9union.mp4")
    photo.write_bytes(zidane_jpeg(inputs))
    shutil.copy(inputs["clip"], video)
    shutil.copy(inputs["clip"], source / "z.mp4")
    result = anonengine_cli("run", "--video-source", "in", "--output-dir", "out", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3 file(s) anonymized" in result.stdout
    out = tmp_path / "out"
    assert changed(cv2.imdecode(np.frombuffer((out / photo.name).read_bytes(), np.uint8), cv2.IMREAD_COLOR), inputs)
    with av.open(str(out / video.name)) as container:
        assert container.streams.video[0].frames == FRAMES
    engine = anonengine_cli("run", "--video-source", video, "--output-video", tmp_path / "e.mp4", *FAST)
    assert engine.returncode == 2 and engine.stderr.strip() == (
        "anonengine: error: camera cam0: the source " + str(source) + "/r\ufffdunion.mp4 is not named in UTF-8 (an "
        "old archive's Latin-1?), which the engine's processes cannot pass on: rename it, or run with --inline")
    inline = anonengine_cli("run", "--video-source", video, "--output-video", tmp_path / "i.mp4", "--inline", *FAST)
    assert inline.returncode == 0, inline.stderr


def test_a_name_near_the_longest_a_file_may_have_is_anonymized(inputs, anonengine_cli, tmp_path):
    """Its working files' names, 20 characters longer, were too long: "internal error: OSError: [Errno 36] File
    name too long" on every run. They are shortened (with a digest) where they must be."""
    source = tmp_path / "in"
    source.mkdir()
    shutil.copy(inputs["clip"], source / ("v" * 245 + ".mp4"))
    (source / ("p" * 245 + ".jpg")).write_bytes(zidane_jpeg(inputs))
    result = anonengine_cli("run", "--video-source", "in", "--output-dir", "out", *FAST, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.name != MANIFEST_NAME) == [
        "p" * 245 + ".jpg", "v" * 245 + ".mp4"]


def mounted(tmp_path: Path, *args: str) -> bool:
    """Whether `mount ARGS` worked here (root in a container that lets it)."""
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def test_an_output_folder_that_is_the_source_by_another_path_is_refused(inputs, anonengine_cli, tmp_path):
    """A batch told its source and output apart by their names: with the source folder mounted again elsewhere
    (a bind mount, a share mounted twice) as the output, each output was written over its input, then the inputs
    were taken for changed and removed: every original lost. Folders are compared as folders now."""
    source, other = tmp_path / "in", tmp_path / "again"
    source.mkdir()
    other.mkdir()
    shutil.copy(inputs["clip"], source / "clip.mp4")
    (source / "photo.jpg").write_bytes(zidane_jpeg(inputs))
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    if not mounted(tmp_path, "--bind", str(source), str(other)):
        pytest.skip("bind mounts are not permitted here")
    try:
        for spec, where in (("in", ""), ("in/*.jpg", ", where in/*.jpg finds its files")):
            result = anonengine_cli("run", "--video-source", spec, "--output-dir", "again", *FAST, cwd=tmp_path)
            assert result.returncode == 2 and result.stderr.strip() == (
                f"anonengine: error: --output-dir again is in or holds it{where}: give a "
                "folder outside it"), result.stderr
    finally:
        subprocess.run(["umount", str(other)], check=False)
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before


def test_an_output_folder_in_the_source_holding_originals_is_refused_and_a_new_one_works(inputs, anonengine_cli,
                                                                                        tmp_path):
    """A user's trial: `--output-dir arcT/sub` of `arcT/`, whose sub/p.jpg was an original, left it out (taken for an
    output) and wrote p.jpg's output over it, exit 0. An output folder in the source holds only what a batch wrote
    there; one made for the outputs is taken, and its outputs left out again the next time."""
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    (source / "p.jpg").write_bytes(zidane_jpeg(inputs))
    cv2.imwrite(str(source / "sub" / "p.jpg"), inputs["photo"])
    before = {p: p.read_bytes() for p in source.rglob("*") if p.is_file()}
    for spec in ("in", "in/**/*.jpg"):
        result = anonengine_cli("run", "--video-source", spec, "--output-dir", "in/sub", *FAST, cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.strip() == (
            "anonengine: error: --output-dir in/sub is in in and holds 1 video(s) or photo(s) no batch wrote there "
            "(such as sub/p.jpg): they would be left out, and written over; give a folder outside in, or a new one"
        ), result.stderr
    assert {p: p.read_bytes() for p in source.rglob("*") if p.is_file()} == before
    for done, skipped in ((2, 0), (0, 2)):
        result = anonengine_cli("run", "--video-source", "in", "--output-dir", "in/anonymized", *FAST, cwd=tmp_path)
        assert result.returncode == 0 and f"{done} file(s) anonymized, {skipped} skipped" in result.stdout, result
    assert final_outputs(source / "anonymized") == {"p.jpg", "sub/p.jpg"}


def test_a_batch_on_ray_skips_what_a_local_one_did(inputs, anonengine_cli, tmp_path):
    """A user's trial: the settings key of a batch on Ray named the models by their absolute paths, a local
    batch's by the names given: each redid the other's files ("the same resume rules hold", the README says)."""
    pytest.importorskip("ray")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "p.jpg").write_bytes(zidane_jpeg(inputs))
    local = anonengine_cli("run", "--video-source", "in", "--output-dir", "out", *FAST, cwd=tmp_path)
    assert local.returncode == 0 and "1 file(s) anonymized, 0 skipped" in local.stdout, local
    on_ray = anonengine_cli("run", "--video-source", "in", "--output-dir", "out", "--ray", "local", *FAST,
                            cwd=tmp_path)
    assert on_ray.returncode == 0 and "0 file(s) anonymized, 1 skipped" in on_ray.stdout, on_ray


def test_a_full_disk_stops_the_batch_and_a_read_only_one_is_one_line(inputs, anonengine_cli, tmp_path):
    """On a full disk every file after the first failed the same way, each after its work, a line each (an
    archive's hours); a read-only output folder was an internal error. Both end in one line now."""
    source, small = tmp_path / "in", tmp_path / "small"
    source.mkdir()
    small.mkdir()
    for n in range(4):
        shutil.copy(inputs["clip"], source / f"clip{n}.mp4")
    if not mounted(tmp_path, "-t", "tmpfs", "-o", "size=60k", "tmpfs", str(small)):
        pytest.skip("tmpfs mounts are not permitted here")
    try:
        full = anonengine_cli("run", "--video-source", "in", "--output-dir", "small/out", *FAST, cwd=tmp_path)
        subprocess.run(["mount", "-o", "remount,ro", str(small)], check=True)
        read_only = anonengine_cli("run", "--video-source", "in", "--output-dir", "small/other", *FAST, cwd=tmp_path)
    finally:
        subprocess.run(["umount", str(small)], check=False)
    assert full.returncode == 1
    failed = [line for line in full.stderr.splitlines() if line.startswith("anonengine: failed:")]
    assert len(failed) == 1 and "No space left on device" in failed[0], full.stderr
    assert re.search(r"cannot write small/out/clip\d\.mp4: No space", failed[0]), failed  # not its staged file, hidden
    assert full.stderr.splitlines()[-1].startswith("anonengine: stopped: the disk of small/out is full; "), full.stderr
    assert read_only.returncode == 2 and read_only.stderr.strip() == (
        "anonengine: error: cannot write small/other: Read-only file system"), read_only.stderr


def test_a_manifest_that_cannot_be_written_mid_batch_stops_it_in_one_line(inputs, models_dir, tmp_path):
    """A permission taken away from the manifest mid-batch (a user's trial: `chattr +i`) ended the batch as an
    "internal error: PermissionError", with no summary. It stops the batch now, said with what is left; the file
    whose record failed is redone by the next run."""
    source = tmp_path / "in"
    source.mkdir()
    for n in range(4):
        shutil.copy(inputs["clip"], source / f"clip{n}.mp4")
    manifest = tmp_path / "out" / MANIFEST_NAME
    proc = subprocess.Popen([sys.executable, "-m", "anonengine.cli", "run", "--video-source", "in", "--output-dir",
                             "out", *FAST], cwd=tmp_path, env=cli_env(models_dir), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (manifest.exists() and '"input"' in manifest.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    manifest.unlink()
    manifest.mkdir()  # a first record is in: the next one cannot be written
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr, stderr
    assert stderr.splitlines()[-1] == (f"anonengine: stopped: cannot write out/{MANIFEST_NAME}: Is a directory; 3 file(s) "
                                       "not done (the first of them anonymized, not recorded). Make it writable, then "
                                       "run the same command again (what is recorded is kept)"), stderr
    again = subprocess.run([sys.executable, "-m", "anonengine.cli", "run", "--video-source", "in", "--output-dir",
                            "out", *FAST], cwd=tmp_path, env=cli_env(models_dir), capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.strip() == (
        f"anonengine: error: cannot read out/{MANIFEST_NAME}: Is a directory"), again.stderr  # not "internal error"


def test_linked_folders_are_taken_once_each_and_a_link_back_up_is_no_loop(inputs, tmp_path):
    """A folder reached by a symbolic link (an archive's second disk) was left out without a word while the
    summary counted the rest; a glob's `**` followed a link back up 40 folders deep, one file 40 outputs. A file
    reached by several paths is done under the one without links."""
    source, disk = tmp_path / "in", tmp_path / "disk2"
    (source / "day1").mkdir(parents=True)
    disk.mkdir()
    shutil.copy(inputs["clip"], source / "day1" / "a.mp4")
    shutil.copy(inputs["clip"], disk / "b.mp4")
    (source / "disk2").symlink_to(disk)
    (source / "day1" / "loop").symlink_to("..")
    (source / ".snapshot").symlink_to("day1")  # a hidden way to the same folder: it is done by its own path
    (source / "zz.mp4").symlink_to("day1/a.mp4")  # a shorter way to a file (a user's trial: done as zz.mp4)
    by_folder = find_jobs(str(source), tmp_path / "out")
    assert sorted(job.rel for job in by_folder) == ["day1/a.mp4", "disk2/b.mp4"]
    by_glob = find_jobs(str(source / "**" / "*.mp4"), tmp_path / "out")
    assert sorted(job.rel for job in by_glob) == ["day1/a.mp4", "disk2/b.mp4"]


def test_a_second_archive_into_the_same_folder_is_refused_and_a_damaged_output_is_redone(inputs, anonengine_cli,
                                                                                         tmp_path):
    """Two archives' `clip.mp4` into one output folder: the second replaced the first's anonymized copy, exit 0.
    An output damaged after it was done (a copy cut short) was skipped as done on every rerun."""
    for archive in ("x", "y"):
        (tmp_path / archive).mkdir()
        shutil.copy(inputs["clip"] if archive == "x" else inputs["voiced"], tmp_path / archive / "clip.mp4")
    first = anonengine_cli("run", "--video-source", "x", "--output-dir", "out", *FAST, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    done = (tmp_path / "out" / "clip.mp4").read_bytes()
    second = anonengine_cli("run", "--video-source", "y", "--output-dir", "out", *FAST, cwd=tmp_path)
    assert second.returncode == 2 and second.stderr.strip() == (
        f"anonengine: error: out/clip.mp4 is the anonymized copy of {tmp_path / 'x' / 'clip.mp4'} (an earlier "
        "batch), not of y/clip.mp4: give another --output-dir, or remove out/clip.mp4 to replace it")
    assert (tmp_path / "out" / "clip.mp4").read_bytes() == done
    (tmp_path / "out" / "clip.mp4").write_bytes(done[: len(done) // 2])
    again = anonengine_cli("run", "--video-source", "x", "--output-dir", "out", *FAST, cwd=tmp_path)
    assert again.returncode == 0 and "1 file(s) anonymized, 0 skipped" in again.stdout, again.stdout
    with av.open(str(tmp_path / "out" / "clip.mp4")) as container:
        assert container.streams.video[0].frames == FRAMES


def test_files_neither_video_nor_photo_are_said_to_be_left_out(first_run):
    """They were missing from the mirrored tree, and counted nowhere (an archivist's trial)."""
    _, _, result = first_run
    assert "batch: 1 other file(s), neither video nor photo, left out (such as notes.txt)" in result.stderr


def test_a_video_or_photo_named_as_it_is_is_told_by_its_first_bytes_without_ffmpeg(inputs, tmp_path):
    """Told apart by what it holds, every run's source was opened with FFmpeg, whose import (PyAV, OpenCV, NumPy:
    0.36 s here) then came before the engine's fork server started. A file whose name and first bytes agree is
    not opened; MP4, Matroska, MPEG-TS and JPEG are told by their bytes, as an AVIF (ISO media too) is a photo."""
    shutil.copy(inputs["clip"], tmp_path / "a.mp4")
    for name, fmt in (("b.mkv", "matroska"), ("c.ts", "mpegts")):
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(inputs["clip"]), "-c", "copy", "-f", fmt, str(tmp_path / name)],
                       check=True)
    (tmp_path / "d.jpg").write_bytes(zidane_jpeg(inputs))
    script = ("import sys; from pathlib import Path; from anonengine.media import media_kind, sniffed_kind; "
              "print([(media_kind(Path(p)), sniffed_kind(Path(p))) for p in sys.argv[1:]], 'av' in sys.modules)")
    paths = [str(tmp_path / name) for name in ("a.mp4", "b.mkv", "c.ts", "d.jpg")]
    done = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ("[('video', 'video'), ('video', 'video'), ('video', 'video'), ('photo', 'photo')] "
                                   "False"), done


def test_a_cameras_mjpeg_without_a_suffix_is_a_video_not_its_first_picture(inputs, tmp_path):
    """JPEGs one after another start as a photo does: taken for one by its first bytes, a camera's MJPEG came
    out as its first frame alone."""
    from anonengine.media import holds_photo, media_kind

    with av.open(str(tmp_path / "cam"), "w", format="mjpeg") as mjpeg:
        stream = mjpeg.add_stream("mjpeg", rate=25)
        height, width = inputs["zidane"].shape[:2]
        stream.width, stream.height, stream.pix_fmt = width, height, "yuvj420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(inputs["zidane"], format="bgr24").reformat(format="yuvj420p")
            mjpeg.mux(stream.encode(frame))
        mjpeg.mux(stream.encode(None))
    (tmp_path / "IMG_0001").write_bytes(zidane_jpeg(inputs))
    assert (media_kind(tmp_path / "cam"), media_kind(tmp_path / "IMG_0001")) == ("video", "photo")
    assert not holds_photo(str(tmp_path / "cam")) and holds_photo(str(tmp_path / "IMG_0001"))


def test_a_damaged_file_is_anonymized_but_for_what_it_lost_and_its_record_says_so(inputs, anonengine_cli, tmp_path):
    """Bit rot in an archive: one packet's NAL length overwritten. The file was refused whole; it comes out but
    for the picture lost, and the batch's summary and the file's manifest record tell it apart from a whole one
    (an archivist's trial: damaged and whole outputs looked alike)."""
    tree = tmp_path / "in"
    tree.mkdir()
    shutil.copy(inputs["clip"], tree / "good.mp4")
    with av.open(str(inputs["clip"])) as clip:
        packets = sorted((p for p in clip.demux(video=0) if p.size), key=lambda p: p.pts)
    data = bytearray(inputs["clip"].read_bytes())
    data[packets[3].pos : packets[3].pos + 4] = b"\x7f\xff\xff\xff"
    (tree / "rotten.mp4").write_bytes(bytes(data))
    out = tmp_path / "out"
    result = anonengine_cli("run", "--video-source", tree, "--output-dir", out, *FAST)
    assert result.returncode == 0, result.stderr
    assert '2 file(s) anonymized (1 damaged: see "damage" in the manifest), 0 skipped' in result.stdout, result.stdout
    # Told in the batch's own words: the lines had begun `anonengine.video:`, the reader's module.
    told = [line for line in result.stderr.splitlines() if "rotten.mp4" in line]
    assert told and all(line.startswith(f"anonengine: {tree / 'rotten.mp4'}: ") for line in told), result.stderr
    done = records(out)
    assert done["good.mp4"]["damage"] == "" and done["good.mp4"]["frames"] == FRAMES
    assert done["rotten.mp4"]["damage"].startswith(f"1 of its {FRAMES} pictures could not be decoded"), done
    assert done["rotten.mp4"]["frames"] == FRAMES - 1
