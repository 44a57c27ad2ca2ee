"""A clip through the image pipeline: sampled frames, analysed in batches, gathered into one result."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Optional

from PIL import ImageOps

from ..errors import InvalidImageError, InvalidVideoError
from .decode import DEFAULT_FPS, DEFAULT_MAX_FRAMES, VideoInput, sample_frames, sampling_interval
from .result import FrameResult, VideoPrediction

if TYPE_CHECKING:
    from ..pipeline import GANOrigin

THUMBNAIL_SIDE = 192  # kept per frame for the page's strip of suspicious frames; the frame itself is dropped

Progress = Callable[[int, int], None]  # (frames analysed, frames expected)


def analyse_video(model: "GANOrigin", video: VideoInput, *, fps: float = DEFAULT_FPS,
                  max_frames: int = DEFAULT_MAX_FRAMES, threshold: Optional[float] = None, batch_size: int = 8,
                  align: Optional[bool] = None, progress: Optional[Progress] = None) -> VideoPrediction:
    """Sample ``video`` (see :func:`~ganorigin.video.sample_frames`) and run ``model.predict_batch``
    on its frames, ``batch_size`` at a time; at most one batch of frames is held at once.

    Raises:
        InvalidVideoError: the clip cannot be read, or is over the limits.
    """
    info, frames = sample_frames(video, fps=fps, max_frames=max_frames)
    interval = sampling_interval(info.duration, fps, max_frames)
    expected = min(max_frames, math.floor(info.duration / interval + 1e-6) + 1)
    results: list[FrameResult] = []
    while batch := list(itertools.islice(frames, batch_size)):
        predictions = model.predict_batch([f.image for f in batch], threshold=threshold, batch_size=batch_size,
                                          align=align)
        for frame, prediction in zip(batch, predictions):
            if isinstance(prediction, InvalidImageError):
                raise InvalidVideoError(f"The frame at {frame.time:.2f} s cannot be analysed: {prediction}")
            thumbnail = ImageOps.contain(frame.image, (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
            results.append(FrameResult(frame.time, replace(prediction, attributed_image=None), thumbnail))
        if progress is not None:
            progress(len(results), max(expected, len(results)))
    return VideoPrediction(tuple(results), results[0].prediction.threshold, info, interval)
