"""Video: a clip analysed frame by frame, with one verdict and a timeline.

:func:`sample_frames` is the gate (limits from the header, then streaming, evenly spaced frames);
:func:`analyse_video` runs the image pipeline on them; :class:`VideoPrediction` is the result.
"""

from .analyse import analyse_video
from .decode import (DEFAULT_FPS, DEFAULT_MAX_FRAMES, MAX_VIDEO_BYTES, MAX_VIDEO_FRAMES, MAX_VIDEO_PIXELS,
                     MAX_VIDEO_SECONDS, VIDEO_EXTENSIONS, SampledFrame, VideoInfo, VideoInput, is_video,
                     sample_frames, video_too_large)
from .result import FrameResult, VideoPrediction

__all__ = ["DEFAULT_FPS", "DEFAULT_MAX_FRAMES", "FrameResult", "MAX_VIDEO_BYTES", "MAX_VIDEO_FRAMES", "MAX_VIDEO_PIXELS",
           "MAX_VIDEO_SECONDS", "SampledFrame", "VIDEO_EXTENSIONS", "VideoInfo", "VideoInput", "VideoPrediction",
           "analyse_video", "is_video", "sample_frames", "video_too_large"]
