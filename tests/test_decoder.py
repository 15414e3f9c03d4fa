"""Where video is decoded (`sources.decoder`): NVDEC on a GPU gives the frames the CPU decoder gives.

NVDEC hands frames over as NV12 (the chroma planes interleaved), the CPU decoder as yuv420p; both are
turned to BGR by OpenCV, and H.264 decoders are exact by the standard, so the engine sees the same pixels
either way. On a machine without a CUDA device (this one), `auto` decodes on the CPU and `cuda` is one
line (tests/test_cli_errors.py); on one with a device, the same tests compare NVDEC's frames with the CPU's.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from anonengine.config import SourcesConfig
from anonengine.sample import write_portrait_video
from anonengine.sources import classify
from anonengine.video import VideoReader, decoding_device, open_source, to_bgr


def test_nv12_frames_become_the_same_bgr_as_the_cpu_decoders_yuv420p(small_sample_clip):
    with open_source(classify(str(small_sample_clip.video)), SourcesConfig(decoder="cpu")) as container:
        frames = list(container.decode(video=0))
    assert frames and frames[0].format.name == "yuv420p"
    for frame in frames:
        nv12 = frame.reformat(format="nv12")  # the same samples, the chroma interleaved as NVDEC gives them
        assert nv12.format.name == "nv12"
        assert np.array_equal(to_bgr(nv12), to_bgr(frame))


@pytest.mark.parametrize("stored", ["upright", "rotate 90"])
def test_auto_decodes_the_frames_the_cpu_decodes(stored, small_sample_clip, tmp_path):
    """Frames, timestamps and orientation: NVDEC's frames must come down with their display matrix, or a
    portrait video reaches the detector on its side."""
    video = str(small_sample_clip.video)
    filmed = [f.image for f in VideoReader(video)]
    if stored == "rotate 90":
        video = str(write_portrait_video(filmed, tmp_path / "phone.mp4"))
    auto = VideoReader(video, sources_cfg=SourcesConfig(decoder="auto"))
    cpu = VideoReader(video, sources_cfg=SourcesConfig(decoder="cpu"))
    assert (auto.info.width, auto.info.height) == (cpu.info.width, cpu.info.height) == (320, 192)
    try:
        pairs = list(zip(auto, cpu, strict=True))
    finally:
        auto.close()
        cpu.close()
    assert len(pairs) == 8
    for a, c in pairs:
        assert (a.seq, a.pts) == (c.seq, c.pts)
        assert np.array_equal(a.image, c.image), f"frame {a.seq} differs between {decoding_device('auto')} and cpu"
    # upright, as filmed (x264 at crf 12 moves a level or two; the next frame filmed is 9 to 13 away)
    assert all(np.abs(f.astype(int) - a.image).mean() < 4 for f, (a, _) in zip(filmed, pairs))


@pytest.mark.parametrize("decoder", ["cuda", "cuda:0", "cuda:7"])
def test_a_cuda_decoder_is_opened_or_refused_in_one_line(decoder):
    from anonengine.errors import ConfigError

    if decoding_device("auto") == "cpu":
        with pytest.raises(ConfigError, match=rf"^sources\.decoder {decoder}: FFmpeg cannot open that CUDA device"):
            decoding_device(decoder)
    elif decoder != "cuda:7":
        assert decoding_device(decoder) == "cuda:0"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_phone_photos_exif_turn_is_taken_as_opencv_shows_it(orientation, tmp_path):
    """FFmpeg 8.1 gives a photo's EXIF block as a frame's side data, which PyAV 18 cannot name, and then
    reads none: every phone photo (EXIF of a turn, or of GPS only) failed as an internal error in the
    audit and with `--output-video x.mp4`. The turn is read from the EXIF then, as OpenCV's imread shows it."""
    from PIL import Image

    from anonengine.sample import assets_dir

    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x8825] = {2: (1.0, 2.0, 3.0)}  # a GPS block, as phones write
    path = tmp_path / "phone.jpg"
    Image.open(assets_dir() / "bus.jpg").save(path, exif=exif.tobytes(), quality=95)
    shown = cv2.imread(str(path))
    (frame,) = list(VideoReader(str(path)))
    assert frame.image.shape == shown.shape
    assert np.abs(frame.image.astype(int) - shown).mean() < 2
