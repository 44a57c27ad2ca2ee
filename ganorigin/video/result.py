"""What a video analysis returns: one row per sampled frame and one robust verdict for the clip."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np
from PIL import Image

from ..result import UNKNOWN_GAN, Prediction
from ..verdict import OTHER_GENERATOR, UNSURE, ReadsVerdict
from .decode import VideoInfo

HIGH_QUANTILE = 0.9  # the clip's score: a fake stretch of a tenth of the clip is enough to reach it
DECISIVE_FRAMES = 5


@dataclass(frozen=True)
class FrameResult:
    """One sampled frame: its time (seconds from the first frame), the image pipeline's result on
    it, and a small picture of it for the page."""

    time: float
    prediction: Prediction
    thumbnail: Optional[Image.Image] = field(default=None, compare=False, repr=False)

    @property
    def face_found(self) -> Optional[bool]:
        """Whether face alignment found a face; None when alignment was off (not known)."""
        faces = self.prediction.faces_found
        return None if faces is None else faces > 0

    def to_dict(self) -> dict:
        p = self.prediction
        return {"time": self.time, "fake_probability": p.fake_probability, "is_fake": p.is_fake,
                "commfor_probability": p.commfor_probability, "attribution": p.attribution,
                "attribution_probabilities": p.attribution_probabilities, "face_found": self.face_found}


@dataclass(frozen=True)
class VideoPrediction(ReadsVerdict):
    """A clip's result. The verdict is read over the frames with a face (all frames when face
    detection is off, or when no frame has a face): their median P(fake) says whether the clip is
    fake throughout, their 90th percentile (the clip's ``fake_probability``) whether a stretch of it is.
    The clip's scores are read as an image's are (:mod:`ganorigin.verdict`): "unsure" within a detector's band
    around its threshold, or when the degradation gate trips on most of the judged frames."""

    frames: tuple  # FrameResult, in time order
    threshold: float
    info: VideoInfo
    interval: float  # seconds between sampled frames

    def __post_init__(self):
        if not self.frames:
            raise ValueError("A VideoPrediction needs at least one frame.")

    @property
    def judged_frames(self) -> tuple:
        """The frames the verdict is read over: those with a face, or all when none is known to have one."""
        with_face = tuple(f for f in self.frames if f.face_found is not False)
        return with_face or self.frames

    @property
    def frames_without_face(self) -> tuple:
        return tuple(f for f in self.frames if f.face_found is False)

    def _scores(self, key: str) -> Optional[np.ndarray]:
        values = [f.prediction.detector_scores.get(key, (None,))[0] for f in self.judged_frames]
        return None if None in values else np.asarray(values, dtype=float)

    @property
    def median_probability(self) -> float:
        """Median UFD P(fake) over the judged frames."""
        return float(np.median(self._scores("ufd")))

    @property
    def fake_probability(self) -> float:
        """The clip's score: the 90th percentile of UFD's P(fake) over the judged frames."""
        return float(np.quantile(self._scores("ufd"), HIGH_QUANTILE))

    @property
    def commfor_probability(self) -> Optional[float]:
        """The same percentile of Community Forensics' P(fake); None when it did not run."""
        scores = self._scores("commfor")
        return None if scores is None else float(np.quantile(scores, HIGH_QUANTILE))

    @property
    def commfor_threshold(self) -> float:
        return self.frames[0].prediction.commfor_threshold

    @property
    def is_fake(self) -> bool:
        return self.fake_probability >= self.threshold

    @property
    def fake_frames(self) -> tuple:
        """The judged frames UFD calls fake at this threshold."""
        return tuple(f for f in self.judged_frames if f.prediction.fake_probability >= self.threshold)

    @property
    def commfor_frames(self) -> tuple:
        """The judged frames Community Forensics calls AI-generated (none when it did not run)."""
        return tuple(f for f in self.judged_frames if f.prediction.commfor_probability is not None
                     and f.prediction.commfor_probability >= self.commfor_threshold)

    @property
    def fake_fraction(self) -> float:
        """Share of the judged frames called fake."""
        return len(self.fake_frames) / len(self.judged_frames)

    @property
    def attribution_probabilities(self) -> dict:
        """GAN -> share of the vote: each fake frame votes with its attribution probabilities,
        weighted by its P(fake); without fake frames, the judged frames vote (the closest GAN)."""
        votes: dict = {}
        for p, weight in self._voters():
            for name, share in p.attribution_probabilities.items():
                votes[name] = votes.get(name, 0.0) + weight * share
        return votes

    @property
    def unknown(self) -> bool:
        """Whether the voting frames, weighted as in the vote, mostly answer "Unknown GAN" (the open-set rule)."""
        return sum(weight for p, weight in self._voters() if p.unknown) > 0.5

    @property
    def attribution(self) -> str:
        """The GAN with the largest share of the vote, or "Unknown GAN" when :attr:`unknown`."""
        if self.unknown:
            return UNKNOWN_GAN
        votes = self.attribution_probabilities
        return max(votes, key=votes.get)

    def _voters(self) -> list:
        """(prediction, weight) of each frame that votes on the attribution, weights summing to one: the fake
        frames, else the judged frames, by P(fake) (equally where every P(fake) is 0)."""
        voters = [f.prediction for f in self.fake_frames or self.judged_frames]
        total = sum(p.fake_probability for p in voters)
        return [(p, p.fake_probability / total if total > 0 else 1.0 / len(voters)) for p in voters]

    @property
    def decisive_frames(self) -> tuple:
        """The frames that drove the verdict: the judged frames with the highest P(fake) of
        :attr:`decisive_detector`, at most five."""
        ranked = sorted(self.judged_frames, key=lambda f: -self.decisive_score(f))
        return tuple(ranked[:DECISIVE_FRAMES])

    @property
    def decisive_detector(self) -> str:
        """``"commfor"`` where Community Forensics alone calls the clip AI-generated, else ``"ufd"``."""
        return "commfor" if self.verdict_by == ("commfor",) else "ufd"

    def decisive_score(self, frame: FrameResult) -> float:
        """A frame's P(fake) from :attr:`decisive_detector`."""
        p = frame.prediction
        return p.commfor_probability if self.decisive_detector == "commfor" else p.fake_probability

    @property
    def detector_scores(self) -> dict:
        """Detector key -> ``(clip score, threshold, band)``, as an image's ``Prediction.detector_scores``."""
        first = self.frames[0].prediction
        scores = {"ufd": (self.fake_probability, self.threshold, first.ufd_band)}
        if self.commfor_probability is not None:
            scores["commfor"] = (self.commfor_probability, self.commfor_threshold, first.commfor_band)
        return scores

    @property
    def degradation_reasons(self) -> tuple:
        """Why most judged frames are too degraded to judge (each frame's gate, as an image's), with how many; empty
        when at most half of them are."""
        degraded = [f.prediction.degradation_reasons for f in self.judged_frames if f.prediction.degradation_reasons]
        if 2 * len(degraded) <= len(self.judged_frames):
            return ()
        reasons = dict.fromkeys(reason for frame in degraded for reason in frame)  # each once, in order
        return (f"{', '.join(reasons)} in {len(degraded)} of {len(self.judged_frames)} {self._judged_words}",)

    @property
    def _judged_words(self) -> str:
        return "frames with a face" if any(f.face_found for f in self.judged_frames) else "frames"

    @property
    def verdict_text(self) -> str:
        """E.g. "AI-generated — StyleGAN2 (4 of 10 frames with a face called GAN-generated)", "Unsure — ..." or
        "Real"."""
        verdict, by, reasons = self._overall
        if verdict == UNSURE:
            return f"Unsure — {'; '.join(reasons)}"
        if not by:
            return "Real"
        judged = self._judged_words
        if "ufd" in by:
            return (f"AI-generated — {self.attribution} ({len(self.fake_frames)} of {len(self.judged_frames)} "
                    f"{judged} called GAN-generated)")
        return (f"{OTHER_GENERATOR} ({len(self.commfor_frames)} of {len(self.judged_frames)} {judged} called "
                "AI-generated by Community Forensics)")

    @property
    def face_note(self) -> str:
        """Which frames the verdict was read over, in words."""
        missing = len(self.frames_without_face)
        if all(f.face_found is None for f in self.frames):
            return "Face detection was off; every frame was judged."
        if missing == len(self.frames):
            return "No face was found in any frame; every frame was judged."
        if missing:
            return f"No face in {missing} of {len(self.frames)} frames; they are listed, not judged."
        return "A face was found in every frame."

    @property
    def sampling_note(self) -> str:
        """How many frames were sampled and how many had no face, e.g. "6 frames sampled, 2 without a face"."""
        sampled = f"{len(self.frames)} frame{'s' if len(self.frames) != 1 else ''} sampled"
        if all(f.face_found is None for f in self.frames):
            return f"{sampled} (face detection off)"
        return f"{sampled}, {len(self.frames_without_face)} without a face"

    def with_threshold(self, threshold: float, commfor_threshold: Optional[float] = None) -> "VideoPrediction":
        """The same analysis read at another threshold, and at another threshold for Community Forensics
        when ``commfor_threshold`` is given (no new forward pass)."""
        changes = {"threshold": threshold}
        if commfor_threshold is not None:
            changes["commfor_threshold"] = commfor_threshold
        frames = tuple(replace(f, prediction=replace(f.prediction, **changes)) for f in self.frames)
        return replace(self, frames=frames, threshold=threshold)

    def to_dict(self, frames: bool = True) -> dict:
        """The clip's verdict and scores as JSON; ``frames`` adds one row per sampled frame."""
        result = {
            "verdict": {"label": self.verdict, "text": self.verdict_text, "by": list(self.verdict_by),
                        "unsure_reasons": list(self.unsure_reasons)},
            "fake_probability": self.fake_probability,
            "median_fake_probability": self.median_probability,
            "quantile": HIGH_QUANTILE,
            "is_fake": self.is_fake,
            "threshold": self.threshold,
            "commfor_probability": self.commfor_probability,
            "commfor_threshold": self.commfor_threshold,
            "fake_frame_fraction": self.fake_fraction,
            "commfor_frames": len(self.commfor_frames),
            "attribution": self.attribution,
            "unknown": self.unknown,
            "attribution_probabilities": self.attribution_probabilities,
            "frames_analysed": len(self.frames),
            "frames_judged": len(self.judged_frames),
            "face_note": self.face_note,
            "frames_without_face": [f.time for f in self.frames_without_face],
            "decisive_frames": [f.time for f in self.decisive_frames],
            "interval": self.interval,
            "video": self.info.to_dict(),
        }
        if frames:
            result["frames"] = [f.to_dict() for f in self.frames]
        return result
