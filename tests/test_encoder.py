"""Encoder settings: rate control that holds, and encoders that cannot start fail before any work."""

from fractions import Fraction

import av
import numpy as np
import pytest

from anonengine.config import EncoderConfig
from anonengine.errors import OutputError
from anonengine.video import VideoWriter


def noisy_frames(count, h=360, w=640):
    rng = np.random.default_rng(0)
    for _ in range(count):
        yield rng.integers(0, 256, (h, w, 3), np.uint8)  # incompressible: the encoder must obey the cap


def bitrate_kbps(path, seconds):
    return path.stat().st_size * 8 / 1000 / seconds


def test_max_bitrate_caps_a_hard_clip_and_constant_quality_alone_does_not(tmp_path):
    fps, count = 25, 150
    sizes = {}
    for name, cap in (("capped", 300), ("uncapped", None)):
        cfg = EncoderConfig(preset="ultrafast", crf=18, max_bitrate_kbps=cap)
        writer = VideoWriter(tmp_path / f"{name}.mp4", 320, 240, Fraction(fps), Fraction(1, fps), cfg)
        for i, image in enumerate(noisy_frames(count, 240, 320)):
            writer.write(image, i)
        writer.close()
        sizes[name] = bitrate_kbps(tmp_path / f"{name}.mp4", count / fps)
    assert sizes["capped"] < 300 * 1.5  # over 6 s, the 2 s buffer adds a third at most
    assert sizes["uncapped"] > 3 * sizes["capped"]


def test_keyframe_interval_is_kept(tmp_path):
    cfg = EncoderConfig(preset="ultrafast", keyframe_interval=10)
    writer = VideoWriter(tmp_path / "gop.mp4", 320, 240, Fraction(25), Fraction(1, 25), cfg)
    for i, image in enumerate(noisy_frames(30, 240, 320)):
        writer.write(image, i)
    writer.close()
    with av.open(str(tmp_path / "gop.mp4")) as container:
        keyframes = [i for i, packet in enumerate(container.demux(video=0)) if packet.is_keyframe]
    assert keyframes[:3] == [0, 10, 20]


def test_preset_of_another_encoder_is_a_config_error():
    with pytest.raises(ValueError, match="not one of h264_nvenc's"):
        EncoderConfig(codec="h264_nvenc", preset="veryfast")
    assert EncoderConfig(codec="h264_nvenc").speed_preset == "p4"


def test_an_encoder_that_cannot_start_fails_before_any_frame_and_leaves_nothing(tmp_path):
    if "h264_nvenc" not in av.codecs_available:
        pytest.skip("this PyAV build has no NVENC")
    try:
        VideoWriter(tmp_path / "x.mp4", 320, 240, Fraction(25), Fraction(1, 25), EncoderConfig(codec="h264_nvenc")).abort()
        pytest.skip("NVENC works on this machine")
    except OutputError as exc:
        assert "encoder 'h264_nvenc' cannot start" in str(exc)
    assert list(tmp_path.iterdir()) == []
