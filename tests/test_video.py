"""Video: real clips made here with PyAV from ../shared/data/dev faces, analysed frame by frame.

Proves that a clip alternating a real face and a StyleGAN2 face gets a timeline that switches at
the seconds where the faces switch, and a verdict read from the right frames; that MP4/H.264,
WebM/VP9, MOV, MKV/VP8 without a declared duration, AVI/MPEG-4 and GIF decode into the same evenly
sampled frames, variable frame rates by their timestamps and rotated clips upright; that an empty,
truncated, audio-only, frameless, too long, too large or hugely declared file is refused with a
clear message (the same on Python, the CLI, REST and gradio_client); and that mutated video bytes
never crash, hang or blow up the decoder's memory.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap
from fractions import Fraction

import av
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app_server import ROOT, main_server
from ganorigin import InvalidImageError, InvalidVideoError, Prediction, VideoPrediction, VideoTooLargeError
from ganorigin.cli import main
from ganorigin.video import FrameResult, VideoInfo, decode, sample_frames
from video_files import RATE, SIDE, grey_seconds, write_clip

def level(image: Image.Image) -> int:
    return int(np.asarray(image).mean())


# --- decoding -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, codec, pix_fmt, seekable", [
    ("mp4", "libx264", "yuv420p", True),
    ("webm", "libvpx-vp9", "yuv420p", True),
    ("mov", "libx264", "yuv420p", True),
    ("matroska", "libvpx", "yuv420p", False),  # no duration in the header: measured from the packets
    ("avi", "mpeg4", "yuv420p", True),
    ("gif", "gif", "rgb8", True),
])
def test_every_container_gives_the_first_frame_and_one_a_second(fmt, codec, pix_fmt, seekable):
    data = write_clip(grey_seconds(4), fmt=fmt, codec=codec, pix_fmt=pix_fmt, size=(64, 48), seekable=seekable)
    info, frames = sample_frames(data)
    frames = list(frames)
    assert info.container == fmt, "the file's own container, not the demuxer's family (mov reads mp4)"
    assert info.duration == pytest.approx(4.0, abs=0.25) and (info.width, info.height) == (64, 48)
    assert [f.time for f in frames] == pytest.approx([0, 1, 2, 3], abs=0.01)
    assert [level(f.image) for f in frames] == pytest.approx([0, 40, 80, 120], abs=12), "each second's own frame"


@pytest.mark.parametrize("durations, want", [
    ((500, 1500), [(0, 0), (0.5, 60)]),  # the second picture is on screen at 1 s and 2 s: not skipped
    ((500, 3000, 1000), [(0, 0), (0.5, 60), (3.5, 120)]),  # on screen at 1, 2 and 3 s: sampled once
    ((100, 100, 100, 6000), [(0, 0), (0.3, 180)]),  # a long last frame: the clip is whole, not "cut off"
])
def test_a_frame_held_on_screen_is_sampled(durations, want):
    """A GIF's (or slideshow's) frame that stays on screen across sampling times with no other frame there."""
    pictures = [Image.new("RGB", (32, 32), (60 * i,) * 3) for i in range(len(durations))]
    buffer = io.BytesIO()
    pictures[0].save(buffer, "GIF", save_all=True, append_images=pictures[1:], duration=list(durations), loop=0)
    _, frames = sample_frames(buffer.getvalue())
    got = [(f.time, level(f.image)) for f in frames]
    assert [t for t, _ in got] == pytest.approx([t for t, _ in want], abs=0.01)
    assert [v for _, v in got] == pytest.approx([v for _, v in want], abs=3)


def test_a_clip_whose_sound_runs_on_after_its_picture_is_whole():
    """WebM states one duration for all its tracks: 5 s of sound over 2 s of picture is not a cut-off clip."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="webm") as container:
        video, audio = container.add_stream("libvpx-vp9", rate=RATE), container.add_stream("libopus", rate=48000)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        for level in range(0, 2 * RATE):
            container.mux(video.encode(av.VideoFrame.from_image(Image.new("RGB", (32, 32), (20 * level,) * 3))))
        container.mux(video.encode())
        for i in range(5 * 50):  # 5 s of 20 ms frames
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="fltp", layout="mono")
            sound.sample_rate, sound.pts = 48000, i * 960
            container.mux(audio.encode(sound))
        container.mux(audio.encode())
    info, frames = sample_frames(buffer.getvalue())
    assert info.duration == pytest.approx(5.0, abs=0.1)
    assert [f.time for f in frames][:2] == pytest.approx([0, 1], abs=0.01)


def test_long_clips_are_sampled_evenly_within_max_frames():
    info, frames = sample_frames(write_clip(grey_seconds(6), size=(32, 32)), fps=5, max_frames=3)
    assert [f.time for f in frames] == pytest.approx([0, 2, 4], abs=0.01)


def test_a_variable_frame_rate_is_sampled_by_timestamps():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=1000)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for ms in (0, 100, 150, 1300, 2050, 2900):
            frame = av.VideoFrame.from_image(Image.new("RGB", (32, 32), (ms // 12,) * 3))
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    _, frames = sample_frames(buffer.getvalue())
    assert [f.time for f in frames] == pytest.approx([0, 1.3, 2.05], abs=0.002)


@pytest.mark.parametrize("rotation, white_at", [(90, (0, 32)), (-90, (31, 32)), (180, (16, 31))])
def test_rotation_metadata_is_applied(rotation, white_at):
    top_white = Image.new("RGB", (64, 32))
    top_white.paste((255, 255, 255), (0, 0, 64, 16))
    _, frames = sample_frames(write_clip([(top_white, 1)], size=(64, 32), rotation=rotation))
    frame = next(frames).image
    assert frame.size == ((32, 64) if rotation % 180 else (64, 32)), "width and height swap on a quarter turn"
    x, y = white_at
    assert min(frame.getpixel((x, y))) > 200, "the clip's top edge is where the display matrix puts it"


def _audio_only() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def _frameless() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        container.start_encoding()  # the header and trailer, no frame
    return buffer.getvalue()


def _cut(data: bytes, kept: float) -> bytes:
    """The first ``kept`` of a clip's bytes, as an interrupted download leaves it."""
    return data[: int(len(data) * kept)]


def _huge_gif() -> bytes:
    data = bytearray(write_clip(grey_seconds(1), fmt="gif", codec="gif", pix_fmt="rgb8", size=(32, 32)))
    data[6:10] = (16000).to_bytes(2, "little") * 2  # the logical screen: 16000 x 16000 = 256 megapixels
    return bytes(data)


BAD_VIDEOS = {
    "empty": (lambda: b"", InvalidVideoError, "The file is empty (0 bytes)."),
    "text": (lambda: b"hello, this is not a video at all", InvalidVideoError, "not a video we can read"),
    "truncated": (lambda: write_clip(grey_seconds(2), size=(32, 32))[:600], InvalidVideoError,
                  "The video could not be decoded; it may be truncated or corrupt."),
    "cut off after its index": (lambda: _cut(write_clip(grey_seconds(5), size=(64, 64), faststart=True), 0.9),
                                InvalidVideoError, "of the 5.0 s its header declares; it may be truncated or corrupt."),
    "cut off inside its index": (lambda: _cut(write_clip(grey_seconds(5), size=(64, 64)), 0.6), InvalidVideoError,
                                 "The video could not be decoded; it may be truncated or corrupt."),
    "audio only": (_audio_only, InvalidVideoError, "no video stream"),
    "zero length": (_frameless, InvalidVideoError, "holds no frames"),
    "huge declared resolution": (_huge_gif, VideoTooLargeError, "256.0 megapixels"),
}


@pytest.mark.parametrize("name", BAD_VIDEOS)
def test_a_bad_video_is_refused_with_a_clear_message(name):
    make, error, message = BAD_VIDEOS[name]
    with pytest.raises(error) as caught:
        _, frames = sample_frames(make())
        list(frames)
    assert message in str(caught.value)
    if name == "truncated":
        assert str(caught.value) == message, "our words only, not the decoder's"


def test_limits_on_duration_frames_and_bytes(monkeypatch, tmp_path):
    data = write_clip(grey_seconds(3), size=(32, 32))
    monkeypatch.setattr(decode, "MAX_VIDEO_SECONDS", 2.0)
    with pytest.raises(VideoTooLargeError, match="3 s long; the limit is 2 s"):
        sample_frames(data)
    monkeypatch.setattr(decode, "MAX_VIDEO_SECONDS", 300.0)
    monkeypatch.setattr(decode, "MAX_VIDEO_FRAMES", 10)
    with pytest.raises(VideoTooLargeError, match="more than 10 frames"):
        sample_frames(data)
    monkeypatch.setattr(decode, "MAX_VIDEO_FRAMES", 18_000)
    _, frames = sample_frames(data)  # a header that understates: the limits hold while decoding too
    monkeypatch.setattr(decode, "MAX_VIDEO_FRAMES", 5)
    with pytest.raises(VideoTooLargeError, match="more than 5 frames"):
        list(frames)
    monkeypatch.setattr(decode, "MAX_VIDEO_FRAMES", 18_000)
    _, frames = sample_frames(data)
    monkeypatch.setattr(decode, "MAX_VIDEO_SECONDS", 1.5)
    with pytest.raises(VideoTooLargeError, match="the limit is 1.5 s"):
        list(frames)
    monkeypatch.setattr(decode, "MAX_VIDEO_BYTES", 2**20 // 2)
    (tmp_path / "clip.mp4").write_bytes(data + bytes(2**20))  # padding after the clip: the size alone decides
    with pytest.raises(VideoTooLargeError, match=r"larger than the 0.5 MiB limit"):
        sample_frames(tmp_path / "clip.mp4")


FUZZ = textwrap.dedent("""
    import random, resource, sys, time
    from ganorigin.video import sample_frames
    from ganorigin.errors import InvalidVideoError
    seeds, CASES = [open(p, "rb").read() for p in sys.argv[1:]], 160
    rng = random.Random(0)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    outcomes, slowest = {"frames": 0, "refused": 0}, 0.0
    for i in range(CASES):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 12)):
            at = rng.randrange(len(data))
            kind = rng.random()
            if kind < 0.6:
                data[at] = rng.randrange(256)
            elif kind < 0.8:
                data[at:at + rng.randint(1, 64)] = b""
            else:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        started = time.monotonic()
        try:
            _, frames = sample_frames(bytes(data), fps=5)
            sum(1 for _ in frames)
            outcomes["frames"] += 1
        except InvalidVideoError:
            outcomes["refused"] += 1
        slowest = max(slowest, time.monotonic() - started)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(outcomes["frames"], outcomes["refused"], round(slowest, 3), (peak - baseline) // 1024)
""")


def test_mutated_video_bytes_never_crash_hang_or_blow_up_memory(tmp_path):
    seeds = []
    for fmt, codec, pix_fmt in (("mp4", "libx264", "yuv420p"), ("webm", "libvpx-vp9", "yuv420p"),
                                ("gif", "gif", "rgb8")):
        seeds.append(tmp_path / f"seed.{fmt}")
        seeds[-1].write_bytes(write_clip(grey_seconds(2), fmt=fmt, codec=codec, pix_fmt=pix_fmt, size=(48, 32)))
    # A child process: a crash in FFmpeg would kill it (not pytest), and a hang meets the timeout.
    done = subprocess.run([sys.executable, "-c", FUZZ, *map(str, seeds)], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, f"the decoder crashed or raised something else:\n{done.stderr[-3000:]}"
    decoded, refused, slowest, extra_mb = done.stdout.split()
    assert int(decoded) + int(refused) == 160 and int(refused) > 0 and int(decoded) > 0
    assert float(slowest) < 20, "no mutated file takes long"
    assert int(extra_mb) < 300, "memory stays bounded"


# --- the clip's verdict --------------------------------------------------------------------------------------

def _frame(time, p, *, faces=1, probabilities=(0.2, 0.7, 0.1), commfor=None, bands=(0.0, 0.0), degraded=()):
    prediction = Prediction(p, 0.5, ("progan", "stylegan2", "stylegan3"), probabilities, faces_found=faces,
                            commfor_probability=commfor, ufd_band=bands[0], commfor_band=bands[1],
                            degradation_reasons=degraded)
    return FrameResult(time, prediction)


def _clip(frames, threshold=0.5) -> VideoPrediction:
    info = VideoInfo("mov", "h264", 64, 64, float(len(frames)), 1.0)
    return VideoPrediction(tuple(frames), threshold, info, 1.0).with_threshold(threshold)


def test_the_clip_answers_unknown_gan_when_its_voting_frames_mostly_do():
    """The open-set rule holds for a clip as for an image: fake frames weighted by P(fake) decide."""
    from dataclasses import replace as swap

    from ganorigin.result import UNKNOWN_GAN
    from ganorigin.video.rows import video_rows

    def unknown(frame):
        return swap(frame, prediction=swap(frame.prediction, unknown=True))

    clip = _clip([unknown(_frame(0, 0.9)), unknown(_frame(1, 0.8)), _frame(2, 0.7), _frame(3, 0.1)])
    assert clip.unknown and clip.attribution == UNKNOWN_GAN
    assert clip.verdict_text.startswith(f"AI-generated — {UNKNOWN_GAN} (3 of 4")
    assert clip.to_dict()["unknown"] is True and clip.to_dict()["attribution"] == UNKNOWN_GAN
    [row] = video_rows("clip.mp4", clip, ["progan", "stylegan2", "stylegan3"])
    assert row["unknown"] is True and row["attribution"] == UNKNOWN_GAN
    assert clip.attribution_probabilities["StyleGAN2"] == pytest.approx(0.7)  # the vote's shares stay
    mostly_known = _clip([unknown(_frame(0, 0.6)), _frame(1, 0.9), _frame(2, 0.8), unknown(_frame(3, 0.1))])
    assert not mostly_known.unknown and mostly_known.attribution == "StyleGAN2"


def test_the_verdict_reads_frames_with_a_face_and_reports_the_others():
    clip = _clip([_frame(0, 0.1), _frame(1, 0.95, faces=0), _frame(2, 0.2), _frame(3, 0.3), _frame(4, 0.8)])
    assert [f.time for f in clip.judged_frames] == [0, 2, 3, 4]
    assert [f.time for f in clip.frames_without_face] == [1]
    assert clip.median_probability == pytest.approx(0.25)
    assert clip.fake_probability == pytest.approx(np.quantile([0.1, 0.2, 0.3, 0.8], 0.9))
    assert clip.is_fake and clip.fake_fraction == pytest.approx(0.25)
    assert [f.time for f in clip.decisive_frames][:2] == [4, 3], "the faceless 0.95 frame does not drive it"
    answer = clip.to_dict()
    assert answer["frames_without_face"] == [1] and answer["frames"][1]["face_found"] is False
    assert "No face in 1 of 5 frames" in answer["face_note"]
    assert not clip.with_threshold(0.9).is_fake, "the same analysis read at a higher threshold"


def test_frame_rows_mark_the_frames_the_clips_verdict_leaves_out():
    from ganorigin.video.rows import video_rows

    labels = ["progan", "stylegan2", "stylegan3"]
    clip = _clip([_frame(0, 0.1), _frame(1, 0.95, faces=0), _frame(2, 0.8)])
    rows = video_rows("clip.mp4", clip, labels, frames=True)
    assert [row["path"] for row in rows] == ["clip.mp4#t=0", "clip.mp4#t=1", "clip.mp4#t=2"]
    left_out = [row["verdict_text"].endswith("(no face found: left out of the clip's verdict)") for row in rows]
    assert left_out == [False, True, False]
    faceless = _clip([_frame(0, 0.1, faces=0), _frame(1, 0.9, faces=0)])  # no face anywhere: every frame counts
    assert not any("left out" in row["verdict_text"] for row in video_rows("c.mp4", faceless, labels, frames=True))


def test_the_clips_row_says_how_many_frames_were_sampled_and_how_many_had_no_face():
    from ganorigin.video.rows import video_rows

    labels = ["progan", "stylegan2", "stylegan3"]
    clip = _clip([_frame(0, 0.1), _frame(1, 0.95, faces=0), _frame(2, 0.8), _frame(3, 0.2, faces=0)])
    assert clip.sampling_note == "4 frames sampled, 2 without a face"
    [row] = video_rows("clip.mp4", clip, labels)
    assert row["verdict_text"] == f"{clip.verdict_text}; 4 frames sampled, 2 without a face"
    assert _clip([_frame(0, 0.1)]).sampling_note == "1 frame sampled, 0 without a face"
    assert _clip([_frame(0, 0.1, faces=None)]).sampling_note == "1 frame sampled (face detection off)"


def test_attribution_is_a_vote_weighted_by_fake_probability_over_fake_frames():
    clip = _clip([_frame(0, 0.6, probabilities=(0.9, 0.05, 0.05)), _frame(1, 0.99, probabilities=(0.1, 0.8, 0.1)),
                  _frame(2, 0.1, probabilities=(0.0, 0.0, 1.0))])
    votes = clip.attribution_probabilities
    assert votes["ProGAN"] == pytest.approx((0.6 * 0.9 + 0.99 * 0.1) / 1.59)
    assert votes["StyleGAN3"] == pytest.approx((0.6 * 0.05 + 0.99 * 0.1) / 1.59), "the real frame has no vote"
    assert clip.attribution == "StyleGAN2" and clip.verdict_text.startswith("AI-generated — StyleGAN2 (2 of 3")


def test_a_clip_only_community_forensics_calls_generated_counts_its_frames_not_ufds():
    clip = _clip([_frame(0, 0.1, commfor=0.9), _frame(1, 0.2, commfor=0.8), _frame(2, 0.1, commfor=0.3),
                  _frame(3, 0.9, faces=0, commfor=0.9)])
    assert clip.verdict_by == ("commfor",) and not clip.fake_frames
    assert [f.time for f in clip.commfor_frames] == [0, 1], "judged frames at or over its threshold"
    assert clip.verdict_text == ("AI-generated — not one of the known GANs (diffusion or other) (2 of 3 frames with a "
                                 "face called AI-generated by Community Forensics)")
    assert clip.to_dict(frames=False)["commfor_frames"] == 2
    assert clip.decisive_detector == "commfor" and [f.time for f in clip.decisive_frames] == [0, 1, 2], (
        "the frames that drove its verdict: Community Forensics' highest, not UFD's")
    strip = _strip_of(clip)
    assert [t.split(" · ")[1] for _, t in strip["value"]] == ["0.900", "0.800", "0.300"]
    assert strip["label"] == "Most suspicious frames (time · any-generator P(fake))"
    assert _clip([_frame(0, 0.9, commfor=0.9), _frame(1, 0.1, commfor=0.9)]).verdict_text.endswith(
        "(1 of 2 frames with a face called GAN-generated)"), "UFD's verdict counts UFD's frames"


def test_a_clip_read_at_another_any_generator_threshold_counts_and_decides_by_it():
    clip = _clip([_frame(0, 0.1, commfor=0.45), _frame(1, 0.2, commfor=0.3)])
    assert clip.verdict == "real" and clip.commfor_threshold == 0.5
    lowered = clip.with_threshold(0.89, commfor_threshold=0.4)
    assert lowered.verdict_by == ("commfor",) and [f.time for f in lowered.commfor_frames] == [0]
    assert lowered.to_dict(frames=False)["commfor_threshold"] == 0.4 and lowered.threshold == 0.89
    assert lowered.with_threshold(0.89).commfor_threshold == 0.4, "left as it was when not given"
    assert clip.commfor_threshold == 0.5, "the clip read is not changed"


def _strip_of(clip: VideoPrediction):
    """The page's strip of decisive frames, each given a thumbnail."""
    from dataclasses import replace as swap

    from ganorigin.ui.video import _strip

    frames = tuple(swap(f, thumbnail=Image.new("RGB", (8, 8))) for f in clip.frames)
    return _strip(swap(clip, frames=frames))


def test_a_clip_score_inside_a_detectors_band_is_unsure_as_an_images_is():
    """UFD's band 0.05 around 0.5 and Community Forensics' 0.1: the clip's scores (90th percentiles) are read as an
    image's are, so a clip is AI-generated only where a detector is confident."""
    def clip(ufd, commfor):
        bands = (0.05, 0.1)
        return _clip([_frame(0, ufd, commfor=commfor, bands=bands), _frame(1, 0.0, commfor=0.0, bands=bands)])

    close = clip(0.56, 0.1)  # the clip's UFD score: 0.9 of the way from 0 to 0.56, inside 0.45-0.55
    assert close.fake_probability == pytest.approx(0.504) and close.is_fake, "over the threshold, as the original reads it"
    assert close.verdict == "unsure" and close.verdict_by == ()
    assert close.unsure_reasons == ("UniversalFakeDetect (GAN detector) scored 0.50, within 0.05 of its threshold 0.5",)
    assert close.verdict_text == f"Unsure — {close.unsure_reasons[0]}"
    assert close.to_dict(frames=False)["verdict"]["unsure_reasons"] == list(close.unsure_reasons)
    assert clip(0.65, 0.1).verdict == "AI-generated" and clip(0.65, 0.1).verdict_by == ("ufd",)
    assert clip(0.1, 0.62).verdict == "unsure", "Community Forensics' clip score 0.558, within its 0.1"
    assert clip(0.1, 0.7).verdict_by == ("commfor",) and clip(0.1, 0.1).verdict == "real"


def test_a_clip_whose_frames_are_mostly_degraded_is_unsure_and_says_why():
    small = ("small image (128 px on the short side)",)
    degraded = _clip([_frame(0, 0.9, degraded=small), _frame(1, 0.9, degraded=small), _frame(2, 0.9)])
    assert degraded.verdict == "unsure" and degraded.verdict_by == () and degraded.is_fake
    assert degraded.verdict_text == "Unsure — small image (128 px on the short side) in 2 of 3 frames with a face"
    half = _clip([_frame(0, 0.9, degraded=small), _frame(1, 0.9)])
    assert half.verdict == "AI-generated", "half the frames degraded: the others are judged"
    faceless = _frame(2, 0.9, faces=0, degraded=small)
    assert _clip([_frame(0, 0.9, degraded=small), _frame(1, 0.9), faceless]).verdict == "AI-generated", (
        "a frame left out of the verdict does not count")


def test_a_small_clip_is_unsure_as_its_frame_is(model, dev_images, tmp_path):
    """The newcomer's case: a 128 px clip of one face was called AI-generated while the same frame as an image
    was "unsure"; now both say why, in the same words (the clip in Python and in the CLI's row)."""
    from ganorigin.video.rows import video_rows

    face = Image.open(dev_images["real"][0]).convert("RGB").resize((128, 128))
    image = model.predict(face)
    assert image.verdict == "unsure" and "small image (128 px on the short side)" in image.unsure_reasons
    path = tmp_path / "small.mp4"
    path.write_bytes(write_clip([(face, 2)], size=(128, 128)))
    clip = model.predict_video(path)
    assert clip.verdict == "unsure" and clip.verdict_by == ()
    assert clip.unsure_reasons[0].startswith("small image (128 px on the short side) in ")
    [row] = video_rows(path, clip, list(model.attributor.labels))
    assert row["verdict"] == "unsure" and row["unsure_reasons"] == clip.unsure_reasons[0]


def test_without_face_detection_every_frame_is_judged():
    clip = _clip([_frame(0, 0.1, faces=None), _frame(1, 0.2, faces=None)])
    assert len(clip.judged_frames) == 2 and clip.verdict == "real" and "Face detection was off" in clip.face_note


@pytest.fixture(scope="module")
def switch_clip(model, dev_images):
    """A real face for 2 s, a StyleGAN2 face for 2 s, the real face again for 2 s, and a threshold
    between the two faces' scores (the test weights are random: which scores higher is arbitrary)."""
    def as_frame(path):
        return Image.open(path).convert("RGB").resize((SIDE, SIDE))

    real = [as_frame(p) for p in dev_images["real"][:4]]
    gan = [as_frame(p) for p in dev_images["stylegan2"][:4]]
    scores = [r.fake_probability for r in model.predict_batch(real + gan, align=False)]
    gap, i, j = max((abs(scores[i] - scores[4 + j]), i, j) for i in range(4) for j in range(4))
    threshold = (scores[i] + scores[4 + j]) / 2
    gan_higher = scores[4 + j] > scores[i]
    clip = write_clip([(real[i], 2), (gan[j], 2), (real[i], 2)])
    return clip, threshold, gan_higher, gap


def test_the_timeline_switches_where_the_faces_switch(model, switch_clip):
    clip, threshold, gan_higher, gap = switch_clip
    assert gap > 0.05, "the two faces score apart"
    result = model.predict_video(clip, threshold=threshold, batch_size=4)
    assert [f.time for f in result.frames] == pytest.approx([0, 1, 2, 3, 4, 5], abs=0.01)
    called = [f.prediction.is_fake for f in result.frames]
    gan_seconds = [False, False, True, True, False, False]
    assert called == (gan_seconds if gan_higher else [not g for g in gan_seconds])
    assert result.is_fake and [f.face_found for f in result.frames] == [True] * 6
    assert all(f.prediction.is_fake for f in result.decisive_frames[:2]), "the frames called fake drove it"
    assert result.fake_fraction == pytest.approx(2 / 6 if gan_higher else 4 / 6)
    answer = json.loads(json.dumps(result.to_dict()))
    assert answer["verdict"]["label"] == result.verdict and len(answer["frames"]) == 6


# --- every entry point -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(weights_env, hub):
    return main_server(weights_env, hub)


def test_the_same_clip_gives_the_same_answer_on_python_rest_and_gradio_client(server, model, switch_clip, tmp_path):
    clip, threshold, _, _ = switch_clip
    path = tmp_path / "switch.mp4"
    path.write_bytes(clip)
    want = model.predict_video(path, threshold=threshold).to_dict()
    rest = httpx.post(f"{server.url}/predict/video", files={"video": ("switch.mp4", clip, "video/mp4")},
                      data={"threshold": str(threshold)}, timeout=240)
    assert rest.status_code == 200, rest.text
    gradio = Client(server.url, verbose=False).predict(handle_file(str(path)), threshold, api_name="/predict_video")
    for got in (rest.json(), gradio):
        assert set(got) == set(want) and got["frames"][0].keys() == want["frames"][0].keys()
        assert got["verdict"] == want["verdict"] and got["decisive_frames"] == want["decisive_frames"]
        assert got["fake_probability"] == pytest.approx(want["fake_probability"], abs=1e-5)
        assert [f["fake_probability"] for f in got["frames"]] == pytest.approx(
            [f["fake_probability"] for f in want["frames"]], abs=1e-5)


def test_the_any_generator_threshold_reaches_the_clips_verdict_on_rest_and_gradio_client(server, model, switch_clip,
                                                                                        tmp_path):
    clip, threshold, _, _ = switch_clip
    path = tmp_path / "switch.mp4"
    path.write_bytes(clip)
    read = model.predict_video(path, threshold=1.0)
    for commfor_threshold in (0.0, 1.0):
        want = read.with_threshold(1.0, commfor_threshold).to_dict()
        rest = httpx.post(f"{server.url}/predict/video", files={"video": ("switch.mp4", clip, "video/mp4")},
                          data={"threshold": "1", "commfor_threshold": str(commfor_threshold)}, timeout=240)
        assert rest.status_code == 200, rest.text
        gradio = Client(server.url, verbose=False).predict(handle_file(str(path)), 1.0, commfor_threshold,
                                                           api_name="/predict_video")
        for got in (rest.json(), gradio):
            assert got["commfor_threshold"] == commfor_threshold and got["verdict"] == want["verdict"]
            assert got["commfor_frames"] == want["commfor_frames"]
    assert want["commfor_frames"] == 0 and read.with_threshold(1.0, 0.0).verdict_by == ("commfor",), (
        "every frame over a threshold of 0, none over 1")
    response = httpx.post(f"{server.url}/predict/video", files={"video": ("switch.mp4", clip, "video/mp4")},
                          data={"commfor_threshold": "2"}, timeout=60)
    assert response.status_code == 422 and response.json() == {
        "error": "The threshold is a probability from 0 to 1; got 2."}


def test_a_bad_video_gets_the_same_message_on_every_entry_point(server, model, weights_dir, tmp_path, capsys,
                                                                 monkeypatch, weights_env):
    path = tmp_path / "voice.mp4"
    path.write_bytes(_audio_only())
    with pytest.raises(InvalidVideoError) as python:
        model.predict_video(path)
    message = str(python.value)
    assert message == "The file has no video stream (audio only?); nothing to analyse."

    rest = httpx.post(f"{server.url}/predict/video", files={"video": ("voice.mp4", path.read_bytes(), "video/mp4")},
                      timeout=60)
    assert rest.status_code == 422 and rest.json() == {"error": message}
    with pytest.raises(AppError) as gradio:
        Client(server.url, verbose=False).predict(handle_file(str(path)), api_name="/predict_video")
    assert str(gradio.value) == message

    for name, value in weights_env.items():
        monkeypatch.setenv(name, value)
    status = main(["predict", str(path), "--no-progress", "--offline"])
    row = json.loads(capsys.readouterr().out)
    assert status == 1 and row["error"] == f"{path}: {message}"
    assert "Traceback" not in server.logs() and str(tmp_path) not in server.logs()


def test_gradio_takes_uploads_up_to_the_video_limit(server):
    from ganorigin.images import MAX_IMAGE_BYTES

    assert server.get_json("/config")["max_file_size"] == max(MAX_IMAGE_BYTES, decode.MAX_VIDEO_BYTES)


def test_rest_without_a_video_says_so(server):
    response = httpx.post(f"{server.url}/predict/video", data={"threshold": "0.5"}, timeout=30)
    assert response.status_code == 400
    assert response.json() == {"error": "No video uploaded: send it in the multipart field 'video'."}
    response = httpx.post(f"{server.url}/predict/video", files={"image": ("clip.mp4", b"\0" * 64, "video/mp4")},
                          timeout=30)  # under /predict's field name
    assert response.status_code == 400 and "multipart field 'video'" in response.json()["error"]


def test_the_cli_mixes_images_and_videos_in_one_csv(model, switch_clip, dev_images, tmp_path, monkeypatch,
                                                    weights_env, capsys):
    clip, threshold, _, _ = switch_clip
    (tmp_path / "switch.mp4").write_bytes(clip)
    face = dev_images["stylegan2"][0]
    for name, value in weights_env.items():
        monkeypatch.setenv(name, value)
    common = ["--no-progress", "--offline", "--threshold", str(threshold), "--format", "csv"]
    assert main(["predict", str(face), str(tmp_path / "switch.mp4"), *common]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[2].startswith(str(tmp_path / "switch.mp4") + ",")
    want = model.predict_video(tmp_path / "switch.mp4", threshold=threshold)
    assert f"{want.fake_probability}" in lines[2] and want.verdict_text in lines[2]

    assert main(["predict", str(tmp_path / "switch.mp4"), *common, "--frames"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [f"{tmp_path / 'switch.mp4'}#t={t}" for t in range(6)]

    folder = tmp_path / "folder"  # a folder is searched for videos as well as images
    (folder / "clips").mkdir(parents=True)
    (folder / "clips" / "switch.mp4").write_bytes(clip)
    shutil.copyfile(face, folder / face.name)
    assert main(["predict", str(folder), *common]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert sorted(r.split(",")[0] for r in rows) == sorted([str(folder / "clips" / "switch.mp4"), str(folder / face.name)])


def test_images_and_videos_are_told_apart_by_their_bytes_not_their_names(model, switch_clip, dev_images, tmp_path,
                                                                          monkeypatch, weights_env, capsys):
    clip, threshold, _, _ = switch_clip
    face = dev_images["stylegan2"][0]
    with pytest.raises(InvalidImageError) as image_api:
        model.predict(clip)
    assert str(image_api.value) == "This file is a video, not an image: use predict_video()."
    with pytest.raises(InvalidVideoError) as video_api:
        model.predict_video(face)
    assert str(video_api.value) == "This file is an image, not a video: use predict()."
    with open(face, "rb") as f:  # a caller's file object: read, then left where it was
        with pytest.raises(InvalidVideoError, match="an image, not a video"):
            model.predict_video(f)

    (tmp_path / "clip.png").write_bytes(clip)  # misnamed: the CLI goes by the bytes
    shutil.copyfile(face, tmp_path / "face.mp4")
    for name, value in weights_env.items():
        monkeypatch.setenv(name, value)
    common = ["--no-progress", "--offline", "--threshold", str(threshold), "--format", "csv"]
    assert main(["predict", str(tmp_path / "clip.png"), str(tmp_path / "face.mp4"), *common]) == 0
    rows = {row.split(",")[0]: row for row in capsys.readouterr().out.splitlines()[1:]}
    want_clip = model.predict_video(clip, threshold=threshold)
    want_face = model.predict(face, threshold=threshold)
    assert want_clip.verdict_text in rows[str(tmp_path / "clip.png")]
    assert f"{want_face.fake_probability}" in rows[str(tmp_path / "face.mp4")]


def test_the_video_tab_states_the_limits():
    from ganorigin.ui.video import LIMITS

    assert f"{decode.MAX_VIDEO_BYTES / 2**20:g} MiB" in LIMITS and "5 min" in LIMITS


def test_frames_keep_only_thumbnails(model, switch_clip):
    clip, threshold, _, _ = switch_clip
    result = model.predict_video(clip, threshold=threshold, max_frames=2)
    assert len(result.frames) == 2 and [f.time for f in result.frames] == pytest.approx([0, 3], abs=0.01)
    assert all(max(f.thumbnail.size) <= 192 and f.prediction.attributed_image is None for f in result.frames)


def test_a_file_object_is_read_and_left_open_for_its_owner():
    file = io.BytesIO(write_clip(grey_seconds(2), size=(32, 32)))
    _, frames = sample_frames(file)
    assert len(list(frames)) == 2 and not file.closed
