"""The Image tab's input on the page: what it shows of an upload the browser cannot draw."""

from __future__ import annotations

import json

# A format the browser cannot draw (TIFF in Chromium and Firefox) leaves a broken picture in the Image tab's input,
# although the file is analysed as it is: the input says so instead, until a picture it can draw comes.
NO_PREVIEW = "This browser cannot show this image (a TIFF, say); it is analysed as it was uploaded."
IMAGE_PAGE_JS = """() => {
    const note = (img) => img.parentElement?.querySelector(":scope > .no-preview");
    document.addEventListener("error", (event) => {
        const img = event.target;
        if (!(img instanceof HTMLImageElement) || !img.closest("#face-image") || note(img)) return;
        const text = document.createElement("div");
        text.className = "no-preview";
        text.textContent = __NO_PREVIEW__;
        img.style.visibility = "hidden";
        img.after(text);
    }, true);
    document.addEventListener("load", (event) => {
        const img = event.target;
        if (!(img instanceof HTMLImageElement) || !img.closest("#face-image")) return;
        note(img)?.remove();
        img.style.visibility = "";
    }, true);
}""".replace("__NO_PREVIEW__", json.dumps(NO_PREVIEW))
