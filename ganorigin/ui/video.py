"""The page's Video tab: a clip analysed frame by frame, its verdict, a timeline and the most suspicious frames.

The clip is never read whole: the handler opens the uploaded file (uploads only, as every input)
and the video gate decodes frames from it as they are analysed.
"""

from __future__ import annotations

import html
import json

import gradio as gr
import pandas as pd

from ..errors import GANOriginError, InvalidVideoError
from ..images import IMAGE_HEADER_BYTES, is_still_image
from ..result import DEFAULT_THRESHOLD
from ..serving.rest import NO_VIDEO as NO_VIDEO_UPLOADED
from ..serving.service import ModelService
from ..serving.uploads import open_upload, reject_upload
from ..verdict import AI_GENERATED, COMMFOR_THRESHOLD, REAL, UNSURE
from ..video import (DEFAULT_FPS, DEFAULT_MAX_FRAMES, MAX_VIDEO_BYTES, MAX_VIDEO_FRAMES, MAX_VIDEO_PIXELS,
                     MAX_VIDEO_SECONDS, VIDEO_EXTENSIONS, VideoPrediction, sample_frames)
from .cards import CARD_CLASSES
from .common import (IMAGE_NOT_VIDEO, drop_input_and_settle, gpu, model_error, threshold_in_range, user_error,
                     user_threshold)

NO_VIDEO = "Upload or record a video first."
LIMITS = (f"Limits: {MAX_VIDEO_BYTES / 2**20:g} MiB, {MAX_VIDEO_SECONDS / 60:g} min, "
          f"{MAX_VIDEO_PIXELS / 1e6:g} megapixels per frame, {MAX_VIDEO_FRAMES} frames; MP4, MOV, WebM, MKV, AVI or GIF. "
          f"The first frame and then {DEFAULT_FPS:g} frame a second are analysed (at most {DEFAULT_MAX_FRAMES}, "
          "spread evenly over longer clips).")
STRIP_LABEL = "Most suspicious frames (time · P(fake))"
EMPTY_CARD = "<div id='video-card'><h3>No video analysed yet</h3><div>Upload or record a clip and press Analyse video.</div></div>"
UFD_SERIES, COMMFOR_SERIES, THRESHOLD_SERIES = "GAN detector", "any generator", "threshold"  # short: one row
COMMFOR_THRESHOLD_SERIES = "its threshold"  # the any-generator detector's, in a paler shade of its colour
NO_FACE_SERIES, NO_FACE_COLOUR = "no face found", "#98a2b3"
# Each analysed frame is also drawn as a short vertical tick on its detector's line, in the line's colour (not in
# the legend): a line through a single point is not drawn at all, as in a clip of one frame.
TICK_SERIES = {UFD_SERIES: "GAN detector, frame", COMMFOR_SERIES: "any generator, frame"}
TICK_HALF_HEIGHT = 0.05  # in P(fake)
TIMELINE_COLOURS = {UFD_SERIES: "#d92d20", COMMFOR_SERIES: "#6172f3", THRESHOLD_SERIES: "#101828",
                    COMMFOR_THRESHOLD_SERIES: "#a4bcfd", NO_FACE_SERIES: NO_FACE_COLOUR}
TIMELINE_COLOURS.update({TICK_SERIES[s]: TIMELINE_COLOURS[s] for s in TICK_SERIES})
# What the Video tab's input takes: every file the library reads as a video, GIF included. Gradio's video input
# only lets through files the browser types video/*; the page's ``js`` gives it the others under such a type,
# so that the upload check (the video gate) decides, with its own message.
VIDEO_FILE_TYPES = ("video/*", ".gif", *sorted(VIDEO_EXTENSIONS))
# The page's ``js``. The browser cannot play some clips we accept, nor any we refuse; Gradio would then add its
# own "Video not playable" message (before ours, or over a clip we can analyse) and leave an "Error" badge on the
# input: the upload check says what is wrong instead. A file chosen or dropped on the Video tab's input that the
# browser does not type video/* (a GIF, an image, anything) is given to it as video/*, which Gradio would refuse
# with "Invalid file type", and its file chooser offers VIDEO_FILE_TYPES. And a video dropped or chosen on the
# Image tab's input (which Gradio would refuse likewise) is taken to the Video tab's input instead.
VIDEO_PAGE_JS = """() => {
    const accepted = __VIDEO_FILE_TYPES__;
    document.addEventListener("error", (event) => {
        if (event.target instanceof HTMLVideoElement && event.target.closest("#video-input")) event.stopPropagation();
    }, true);
    const isVideo = (file) => file.type.startsWith("video/");
    const videoOf = (files) => [...(files || [])].find(isVideo);
    const giveVideo = (input, file) => {
        const files = new DataTransfer();
        files.items.add(isVideo(file) ? file : new File([file], file.name, {type: "video/x-unchecked"}));
        input.files = files.files;
        input.dispatchEvent(new Event("change", {bubbles: true}));
    };
    const toVideoTab = (file) => {
        [...document.querySelectorAll("button[role=tab]")].find((tab) => tab.textContent.trim() === "Video")?.click();
        const started = Date.now();
        const give = () => {
            const input = document.querySelector("#video-input input[type=file]");
            if (!input) return Date.now() - started < 10000 && setTimeout(give, 100);
            giveVideo(input, file);
        };
        give();
    };
    document.addEventListener("drop", (event) => {
        const file = event.target.closest?.("#face-image") && videoOf(event.dataTransfer?.files);
        if (!file) return;
        event.preventDefault();
        event.stopPropagation();
        toVideoTab(file);
    }, true);
    document.addEventListener("change", (event) => {
        const input = event.target;
        const file = input.closest?.("#face-image") && input.type === "file" && videoOf(input.files);
        if (!file) return;
        event.stopPropagation();
        input.value = "";
        toVideoTab(file);
    }, true);
    document.addEventListener("click", (event) => {
        const input = event.target.closest?.("#video-input")?.querySelector("input[type=file]");
        if (input) input.accept = accepted;
    }, true);
    document.addEventListener("drop", (event) => {
        const file = event.target.closest?.("#video-input") && event.dataTransfer?.files?.[0];
        const input = file && !isVideo(file) && document.querySelector("#video-input input[type=file]");
        if (!input) return;
        event.preventDefault();
        event.stopPropagation();
        // An empty drop where this one was aimed ends Gradio's dragging state.
        event.target.dispatchEvent(new DragEvent("drop", {bubbles: true, dataTransfer: new DataTransfer()}));
        giveVideo(input, file);
    }, true);
    document.addEventListener("change", (event) => {
        const input = event.target;
        const file = input.closest?.("#video-input") && input.type === "file" && input.files?.[0];
        if (!file || isVideo(file)) return;
        event.stopPropagation();
        giveVideo(input, file);
    }, true);
}""".replace("__VIDEO_FILE_TYPES__", json.dumps(",".join(VIDEO_FILE_TYPES)))
_CARD_COLOURS = {AI_GENERATED: ("#fdecea", "#f5b7b1"), REAL: ("#e8f6ee", "#a9dfbf"), UNSURE: ("#fef6e7", "#f7d08a")}


def video_tab(service: ModelService) -> None:
    """Build the tab's components and events; call inside ``with gr.Tab(...)`` of the page's Blocks.
    Also registers the ``/predict_video`` API (the clip's JSON)."""

    @gpu
    def _predict(file: dict, threshold, commfor_threshold, progress=None) -> VideoPrediction:
        threshold, commfor_threshold = user_threshold(threshold), user_threshold(commfor_threshold, COMMFOR_THRESHOLD)

        def analyse(stream):
            with stream:
                return service.predict_video(stream, threshold, progress)

        return _with_video(file, analyse).with_threshold(threshold, commfor_threshold)

    def analyse(video: dict | None, threshold: float, commfor_threshold: float = COMMFOR_THRESHOLD,
                progress=gr.Progress()):
        def report(done: int, expected: int) -> None:
            progress((done, expected), desc="Analysing frames", unit="frames")

        progress(0, desc="Reading the video")
        result = _predict(_video_file(video), threshold, commfor_threshold, report)
        return (*_views(result), result)

    def rederive(result: VideoPrediction | None, threshold, commfor_threshold):
        """The last clip's views under new thresholds, without a new analysis; a value typed outside 0..1 is
        put back in range."""
        threshold, fixed = threshold_in_range(threshold, DEFAULT_THRESHOLD)
        commfor_threshold, commfor_fixed = threshold_in_range(commfor_threshold, COMMFOR_THRESHOLD)
        views = (gr.skip(),) * 4 if result is None else _views(result.with_threshold(threshold, commfor_threshold))
        return (*views, threshold if fixed else gr.skip(), commfor_threshold if commfor_fixed else gr.skip())

    def predict_api(file: dict | None, threshold: float = DEFAULT_THRESHOLD,
                    commfor_threshold: float = COMMFOR_THRESHOLD) -> dict:
        return _predict(_video_file(file, missing=NO_VIDEO_UPLOADED), threshold, commfor_threshold).to_dict()

    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=300):
            video = gr.Video(sources=["upload", "webcam"], label="Video clip", height=320, elem_id="video-input")
            threshold = gr.Slider(0.0, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Threshold on P(fake)",
                                  info="A frame at or above this is called GAN-generated (original: 0.89).")
            commfor_threshold = gr.Slider(0.0, 1.0, value=COMMFOR_THRESHOLD, step=0.01, label="Any-generator threshold",
                                          info="A frame whose Community Forensics probability is at or above this is "
                                               "called AI-generated (authors': 0.5).")
            analyse_btn = gr.Button("Analyse video", variant="primary", size="lg")
            gr.Markdown(LIMITS, elem_id="video-limits")
        with gr.Column(scale=6, min_width=300):
            card = gr.HTML(EMPTY_CARD, label="Video verdict")
            timeline = gr.LinePlot(x="time", y="probability", color="series", y_lim=[0, 1], x_title="time (s)",
                                   x_axis_format="~g", y_title="P(fake)", color_title=" ",
                                   label="Timeline — red: GAN detector, black: its threshold; blue: any-generator "
                                         "detector, pale blue: its threshold; grey: no face found",
                                   elem_id="video-timeline", color_map=TIMELINE_COLOURS)
            # Whole thumbnails at their grid size, each with its caption, however few there are.
            strip = gr.Gallery(label=STRIP_LABEL, columns=5, height=200,
                               object_fit="contain", fit_columns=False, elem_id="video-frames", allow_preview=False,
                               buttons=[])
            with gr.Accordion("JSON (POST /predict/video's answer)", open=False):
                as_json = gr.JSON(label="POST /predict/video")
    last = gr.State()
    api_file = gr.File(visible=False, label="video")
    api_json = gr.JSON(visible=False, label="video prediction")

    views = [card, timeline, strip, as_json]
    video.upload(check_upload, video, api_visibility="private", preprocess=False
                 ).failure(lambda: None, outputs=video, api_visibility="private", queue=False)
    video.change(lambda: (EMPTY_CARD, None, None, None, None), outputs=[*views, last], api_visibility="private",
                 queue=False)
    thresholds = [threshold, commfor_threshold]
    analyse_btn.click(analyse, [video, *thresholds], [*views, last], api_name="analyse_video",
                      api_visibility="undocumented", preprocess=False, show_progress_on=card
                      ).failure(drop_input_and_settle(EMPTY_CARD, service), outputs=[video, card],
                                api_visibility="private", queue=False)
    for slider in thresholds:
        slider.change(rederive, [last, *thresholds], [*views, *thresholds], api_visibility="private", preprocess=False,
                      concurrency_limit=None)
    api_file.change(predict_api, [api_file, *thresholds], api_json, api_name="predict_video", preprocess=False)


def check_upload(video: dict | None) -> None:
    """An upload goes through the video gate at once (its header, then its first frame), so a clip we
    cannot read is refused with the reason before *Analyse video*."""
    if video:
        _with_video(_video_file(video), _first_frame)


def _first_frame(stream) -> None:
    with stream:
        _, frames = sample_frames(stream, max_frames=1)
        try:
            next(frames, None)
        finally:
            frames.close()


def _video_file(value, missing: str = NO_VIDEO) -> dict:
    """The uploaded file of a Video component's value (``{"video": file, ...}``) or of a File's."""
    file = value.get("video", value) if isinstance(value, dict) else value
    if not file:
        raise user_error(missing, "No video")
    return file


def _with_video(file: dict, task):
    """``task(open file)`` on the upload; a video the gate refuses is deleted at once, and expected
    failures become messages for the person."""
    try:
        return task(open_upload(file, InvalidVideoError))
    except InvalidVideoError as e:
        message = IMAGE_NOT_VIDEO if _is_image(file) else str(e)
        reject_upload(file, message)
        raise user_error(message, "This video cannot be analysed") from e
    except GANOriginError as e:
        raise model_error(e) from e


def _is_image(file: dict) -> bool:
    """Whether an upload the video gate refused opens as a still image."""
    try:
        with open_upload(file, InvalidVideoError) as stream:
            return is_still_image(stream.read(IMAGE_HEADER_BYTES))
    except InvalidVideoError:
        return False


def _views(result: VideoPrediction) -> tuple:
    """Card, timeline, strip of the most suspicious frames, JSON."""
    return _card(result), _timeline(result), _strip(result), result.to_dict()


def _card(result: VideoPrediction) -> str:
    background, border = _CARD_COLOURS[result.verdict]
    kind = CARD_CLASSES.get(result.verdict, "unsure")
    lines = [
        f"GAN detector (UniversalFakeDetect): clip score {result.fake_probability:.3f} (90th percentile of P(fake)), "
        f"median {result.median_probability:.3f} — threshold {result.threshold:.2f}; "
        f"{len(result.fake_frames)} of {len(result.judged_frames)} judged frames called GAN-generated "
        f"({result.fake_fraction:.0%})",
    ]
    if result.commfor_probability is not None:
        lines.append(f"Any-generator detector (Community Forensics): clip score {result.commfor_probability:.3f} — "
                     f"threshold {result.commfor_threshold:.2f}; {len(result.commfor_frames)} of "
                     f"{len(result.judged_frames)} judged frames called AI-generated")
    lines += [f"One frame every {result.interval:g} s: {result.sampling_note}", result.face_note]
    if result.frames_without_face:
        lines.append("No face at " + ", ".join(f"{f.time:g} s" for f in result.frames_without_face))
    body = "".join(f"<div>{html.escape(line)}</div>" for line in lines)
    return (f"<div id='video-card' class='{kind}' style='border-radius:12px;padding:14px 18px;"
            f"background:{background};border:1px solid {border}'><h3 style='margin:0 0 6px 0'>"
            f"{html.escape(result.verdict_text)}</h3>{body}</div>")


def _timeline(result: VideoPrediction) -> gr.LinePlot:
    """Each detector's P(fake) over time, a tick at each frame; the threshold; the frames without a face.
    The time axis reaches a sampling interval at least (one frame) and leaves a margin, so no tick is cut by it."""
    rows = [(f.time, f.prediction.fake_probability, UFD_SERIES) for f in result.frames]
    rows += [(f.time, f.prediction.commfor_probability, COMMFOR_SERIES) for f in result.frames
             if f.prediction.commfor_probability is not None]
    rows += _frame_ticks(rows)
    end = max(result.frames[-1].time, result.info.duration, result.interval)
    rows += [(0.0, result.threshold, THRESHOLD_SERIES), (end, result.threshold, THRESHOLD_SERIES)]
    if result.commfor_probability is not None:
        rows += [(0.0, result.commfor_threshold, COMMFOR_THRESHOLD_SERIES),
                 (end, result.commfor_threshold, COMMFOR_THRESHOLD_SERIES)]
    rows += _no_face_marks(result)
    series = (UFD_SERIES, THRESHOLD_SERIES, COMMFOR_SERIES, COMMFOR_THRESHOLD_SERIES, NO_FACE_SERIES)
    legend = [s for s in series if s in {r[2] for r in rows}]
    caption = (f"P(fake) of each analysed frame (a tick) over time; the black line is the GAN detector's threshold "
               f"{result.threshold:.2f}"
               + (f", the pale blue one the any-generator detector's {result.commfor_threshold:.2f}"
                  if result.commfor_probability is not None else "")
               + ("; grey lines mark the frames without a face (their scores are drawn, but the verdict leaves "
                  "them out). " if result.frames_without_face and len(result.judged_frames) < len(result.frames)
                  else "; grey lines mark the frames without a face. " if result.frames_without_face else ". ")
               + result.face_note)
    margin = end * 0.02
    return gr.LinePlot(pd.DataFrame(rows, columns=["time", "probability", "series"]), caption=caption,
                       colors_in_legend=legend, x_lim=[-margin, end + margin])


def _frame_ticks(points: list) -> list:
    """A vertical tick through each (time, probability, series) point, in the series' tick series; an empty value
    between two ticks keeps them apart."""
    rows = []
    for series, tick in TICK_SERIES.items():
        for time, probability, _ in (point for point in points if point[2] == series):
            if rows and rows[-1][2] == tick:
                rows.append(((rows[-1][0] + time) / 2, None, tick))
            rows += [(time, probability - TICK_HALF_HEIGHT, tick), (time, probability + TICK_HALF_HEIGHT, tick)]
    return rows


def _no_face_marks(result: VideoPrediction) -> list:
    """A grey line from top to bottom at each frame without a face; an empty value between two lines
    breaks the series there, so that nothing joins them."""
    rows = []
    for frame in result.frames_without_face:
        if rows:
            rows.append(((rows[-1][0] + frame.time) / 2, None, NO_FACE_SERIES))
        rows += [(frame.time, 0.0, NO_FACE_SERIES), (frame.time, 1.0, NO_FACE_SERIES)]
    return rows


def _strip(result: VideoPrediction) -> dict:
    """The gallery's update: the decisive frames, each captioned with its time and the deciding detector's P(fake)
    (short enough for a fifth of the column), and a label that names that detector."""
    label = STRIP_LABEL if result.decisive_detector == "ufd" else STRIP_LABEL.replace("P(fake)", "any-generator P(fake)")
    return gr.update(value=[(f.thumbnail, f"{f.time:g} s · {result.decisive_score(f):.3f}")
                            for f in result.decisive_frames if f.thumbnail is not None], label=label)
