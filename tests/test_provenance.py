"""Provenance evidence read from real files made by the real libraries (tests/provenance_files.py).

Proves: C2PA manifests signed here with c2pa-python and a test certificate chain are read with their
signer, issuer, actions, digital source type and ingredients; validation says valid / trusted (with
GANORIGIN_C2PA_TRUST_ANCHORS) / unknown signer / hash mismatch (pixels changed after signing) /
signature broken, each with its strength; a damaged manifest is "unreadable manifest" while the other
kinds of evidence still report; a remote manifest is never fetched. XMP DigitalSourceType (attribute
and element forms), EXIF camera and software fields, and the generator settings of AUTOMATIC1111,
Forge, ComfyUI, NovelAI, InvokeAI, SwarmUI, Midjourney and DALL·E are found, without the prompt
unless asked. The SD 1.x / 2.x / SDXL watermarks embedded with invisible-watermark read back (the
reader's votes equal the library's decoder's), and what a JPEG re-save does to them is measured. An
image with nothing says so in the documented words; hostile text chunks and XMP cost only their own
reading. Predictions of paths and bytes carry provenance (PIL images and arrays: None), the original
JSON is unchanged, the extended JSON and the model service carry it; the CLI's ``provenance``
command needs no weights and ``predict`` has provenance columns. When ../shared or the C2PA public
test files (C2PA_PUBLIC_TESTFILES) are present, they are read too.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import c2pa
import numpy as np
import pytest
from PIL import Image

from ganorigin import images
from ganorigin.errors import ImageTooLargeError, InvalidImageError
from ganorigin.images import load_image
from ganorigin.provenance import NOTHING_FOUND, STRONG, TRUST_ANCHORS_ENV, WEAK, read_provenance
from ganorigin.provenance.credentials import EDITED_AFTER_SIGNING
from ganorigin.provenance.watermarks import FOUND_AT, MARKS, block_bits, bit_votes, read_watermarks
from provenance_files import (
    embed_sd1,
    embed_sdxl,
    encode,
    flip_scan_byte,
    garble_png,
    make_chain,
    manifest,
    picture,
    png_with_text,
    sign,
    xmp_packet,
)

A1111 = ("a portrait of an astronaut, detailed\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M, "
         "Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model hash: 6ce0161689, "
         'Model: v1-5-pruned-emaonly, Lora hashes: "detail: 1a2b, style: 3c4d", Version: v1.10.1')
PROMPT = "a portrait of an astronaut, detailed"


@pytest.fixture(scope="module")
def lab():
    """The signer whose root a trust list may name."""
    return make_chain("Example AI Lab", "Example Image Model signer")


@pytest.fixture(scope="module")
def stranger():
    return make_chain("Unknown Signer Co", "Somebody")


@pytest.fixture(scope="module")
def ai_jpeg(lab) -> bytes:
    source = encode(picture(384), "JPEG", quality=90)
    return sign(source, "image/jpeg", lab, manifest(source_type="trainedAlgorithmicMedia", agent="Example Diffusion 3"))


@pytest.fixture
def trust(monkeypatch, tmp_path):
    """Configure GANORIGIN_C2PA_TRUST_ANCHORS with a chain's root."""

    def configure(chain):
        anchors = tmp_path / "anchors.pem"
        anchors.write_bytes(chain.root_pem)
        monkeypatch.setenv(TRUST_ANCHORS_ENV, str(anchors))

    return configure


# --- C2PA Content Credentials ----------------------------------------------------------------------------------

def test_signed_ai_credentials_are_strong_evidence(ai_jpeg):
    result = read_provenance(ai_jpeg)
    cc = result.content_credentials
    assert cc.found and cc.validation == "valid" and cc.validation_state == "Valid"
    assert cc.digital_source_type == "trainedAlgorithmicMedia" and cc.ai_generated
    assert cc.actions == ("c2pa.created",) and cc.software_agent == "Example Diffusion 3"
    assert (cc.issuer, cc.signer) == ("Example AI Lab", "Example Image Model signer")
    assert cc.claim_generator == "GANOrigin tests 1.0"
    assert cc.status_codes == ("signingCredential.untrusted",) and cc.problems == () and not cc.trust_list
    assert cc.strength == STRONG and result.strength == STRONG and result.ai_generated
    assert result.summary.startswith("Signed Content Credentials say AI-generated")
    assert "Example AI Lab" in result.summary and "not checked against a trust list" in result.summary


def test_signed_camera_credentials_are_strong_but_not_ai(lab):
    signed = sign(encode(picture(320, 1), "JPEG"), "image/jpeg", lab, manifest(source_type="digitalCapture"))
    result = read_provenance(signed)
    assert result.strength == STRONG and not result.ai_generated
    assert result.content_credentials.digital_source_type == "digitalCapture"
    assert "captured by a camera" in result.summary


def test_a_configured_trust_list_makes_the_signer_trusted(ai_jpeg, lab, trust):
    trust(lab)
    cc = read_provenance(ai_jpeg).content_credentials
    assert cc.trust_list and cc.validation == "trusted" and cc.validation_state == "Trusted"
    assert cc.status_codes == () and cc.strength == STRONG and "(a trusted signer)" in cc.says


def test_a_signer_missing_from_the_trust_list_is_weak(stranger, lab, trust):
    trust(lab)
    signed = sign(encode(picture(320, 2), "JPEG"), "image/jpeg", stranger, manifest(source_type="trainedAlgorithmicMedia"))
    result = read_provenance(signed)
    cc = result.content_credentials
    assert cc.validation == "valid" and "signingCredential.untrusted" in cc.status_codes
    assert any("unknown signer" in p for p in cc.problems)
    assert cc.strength == WEAK and result.strength == WEAK and result.ai_generated
    assert "NOT on the configured trust list" in result.summary and "Unknown Signer Co" in result.summary


def test_unusable_trust_anchors_are_named_without_their_path(ai_jpeg, tmp_path, monkeypatch):
    for content in (None, b"not a certificate"):
        anchors = tmp_path / "secret-folder" / "anchors.pem"
        if content is not None:
            anchors.parent.mkdir(exist_ok=True)
            anchors.write_bytes(content)
        monkeypatch.setenv(TRUST_ANCHORS_ENV, str(anchors))
        result = read_provenance(ai_jpeg)
        error = result.content_credentials.error
        assert error.startswith(f"the trust anchors in {TRUST_ANCHORS_ENV} could not be used") and "secret" not in error
        assert not result.content_credentials.found and result.watermarks.marks  # the other kinds still read


def test_pixels_changed_after_signing_are_a_hash_mismatch(ai_jpeg):
    tampered = flip_scan_byte(ai_jpeg)
    assert np.any(np.asarray(load_image(tampered)) != np.asarray(load_image(ai_jpeg))), "the pixels must change"
    result = read_provenance(tampered)
    cc = result.content_credentials
    assert cc.validation == "invalid" and "assertion.dataHash.mismatch" in cc.status_codes
    assert EDITED_AFTER_SIGNING in cc.problems
    assert cc.strength == WEAK and cc.ai_generated and result.strength == WEAK
    assert "changed after it was signed" in result.summary


def test_a_broken_signature_is_reported_as_such(ai_jpeg):
    data = bytearray(ai_jpeg)
    # COSE_Sign1 ends: null payload (0xF6), then the 64-byte ES256 signature (0x58 0x40 ...).
    at = data.find(b"\xf6\x58\x40", data.find(b"c2pa.signature")) + 3
    data[at] ^= 0x01
    cc = read_provenance(bytes(data)).content_credentials
    assert "claimSignature.mismatch" in cc.status_codes and "assertion.dataHash.mismatch" not in cc.status_codes
    assert any(p.startswith("signature broken") for p in cc.problems) and cc.strength == WEAK


def test_a_malformed_manifest_is_unreadable_and_the_rest_still_reports(lab):
    marked = embed_sd1(picture(512, 3))
    signed = sign(png_with_text(marked, {"parameters": A1111}), "image/png", lab,
                  manifest(source_type="trainedAlgorithmicMedia"))
    result = read_provenance(garble_png(signed, b"c2pa.claim"))
    cc = result.content_credentials
    assert cc.found and cc.says.startswith("unreadable manifest") and cc.error and cc.strength == WEAK
    assert result.generator_settings.found and result.generator_settings.model == "v1-5-pruned-emaonly"
    assert result.watermarks.found and result.strength == WEAK


def test_an_ai_generated_ingredient_is_named(ai_jpeg, lab):
    edited = sign(encode(picture(320, 4), "JPEG"), "image/jpeg", lab,
                  manifest(source_type=None, action="c2pa.opened"), ingredient=ai_jpeg)
    cc = read_provenance(edited).content_credentials
    assert cc.actions == ("c2pa.opened",) and cc.digital_source_type is None
    assert cc.ingredients == ({"title": "parent.jpg", "relationship": "parentOf",
                               "digital_source_type": "trainedAlgorithmicMedia"},)
    assert cc.ai_generated and cc.strength == STRONG and "an ingredient ('parent.jpg') is AI-generated" in cc.says


def test_a_remote_manifest_is_never_fetched(lab):
    requests = []

    class Recorder(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        out = io.BytesIO()
        with c2pa.Builder(manifest(source_type="trainedAlgorithmicMedia")) as builder:
            builder.set_no_embed()
            builder.set_remote_url(f"http://127.0.0.1:{server.server_port}/manifest.c2pa")
            builder.sign(lab.signer(), "image/jpeg", io.BytesIO(encode(picture(300), "JPEG")), out)
        cc = read_provenance(out.getvalue()).content_credentials
    finally:
        server.shutdown()
    assert cc.found and "stored remotely; not fetched" in cc.says and requests == []


def test_public_c2pa_test_files_agree_with_c2patool():
    """The C2PA organisation's public test files (CC BY-SA 4.0; C2PA_PUBLIC_TESTFILES names a checkout)."""
    root = os.environ.get("C2PA_PUBLIC_TESTFILES")
    if not root or not (Path(root) / "image" / "jpeg").is_dir():
        pytest.skip("C2PA_PUBLIC_TESTFILES does not name a checkout of c2pa-org/public-testfiles")
    folder = Path(root) / "image" / "jpeg"
    expected = {"adobe-20220124-E-dat-CA.jpg": "assertion.dataHash.mismatch",
                "adobe-20220124-E-sig-CA.jpg": "claimSignature.mismatch",
                "adobe-20220124-E-uri-CA.jpg": "assertion.hashedURI.mismatch"}
    for name, code in expected.items():
        report = json.loads((folder / "manifests" / name[:-4] / "manifest_store.json").read_text())
        assert code in [s["code"] for s in report["validation_status"]], "c2patool's own report names it"
        cc = read_provenance(folder / name).content_credentials
        assert code in cc.status_codes and cc.validation == "invalid" and cc.strength == WEAK, name
    intact = read_provenance(folder / "adobe-20220124-C.jpg").content_credentials
    assert intact.validation == "valid" and intact.strength == STRONG and "c2pa.created" in intact.actions
    assert not read_provenance(folder / "adobe-20220124-A.jpg").content_credentials.found


# --- XMP / EXIF -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("as_elements", [False, True], ids=["attributes", "elements"])
def test_xmp_digital_source_type(as_elements):
    packet = xmp_packet(source_type="trainedAlgorithmicMedia", creator_tool="Example Studio 2", as_elements=as_elements)
    for data in (encode(picture(300), "JPEG", xmp=packet),
                 png_with_text(picture(300), {"XML:com.adobe.xmp": packet.decode()}, itxt=("XML:com.adobe.xmp",)),
                 encode(picture(300), "WEBP", xmp=packet)):
        result = read_provenance(data)
        meta = result.metadata
        assert meta.digital_source_type == "trainedAlgorithmicMedia" and meta.creator_tool == "Example Studio 2"
        assert meta.ai_generated and meta.strength == WEAK and meta.error is None
        assert result.strength == WEAK and result.summary.startswith("Unsigned metadata says AI-generated")


def test_exif_camera_and_software():
    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = "Canon", "Canon EOS R5", "Adobe Lightroom 13.1"
    for data in (encode(picture(300), "JPEG", exif=exif), encode(picture(300), "PNG", exif=exif),
                 encode(picture(300), "WEBP", exif=exif)):
        meta = read_provenance(data).metadata
        assert meta.camera == "Canon Canon EOS R5" and meta.software == "Adobe Lightroom 13.1"
        assert meta.strength == WEAK and not meta.ai_generated and meta.generator is None
        assert "names the camera Canon Canon EOS R5" in meta.says


def test_a_generator_named_in_creator_tool_counts_as_ai():
    meta = read_provenance(encode(picture(300), "JPEG", xmp=xmp_packet(creator_tool="Adobe Firefly"))).metadata
    assert meta.generator == "Adobe Firefly" and meta.ai_generated and "names the AI generator Adobe Firefly" in meta.says


def test_xmp_with_a_dtd_is_refused_unparsed():
    laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i else "&lol;" * 10}">' for i in range(9))
              + ']><x:xmpmeta xmlns:x="adobe:ns:meta/">&lol8;</x:xmpmeta>').encode()
    start = time.perf_counter()
    result = read_provenance(encode(picture(300), "JPEG", xmp=laughs))
    assert time.perf_counter() - start < 10  # liveness: a billion laughs would not finish
    assert "declares a DTD" in result.metadata.error and not result.metadata.found


def test_malformed_xmp_is_an_error_not_an_exception():
    broken = xmp_packet(source_type="trainedAlgorithmicMedia")[:-40]
    result = read_provenance(encode(picture(300), "JPEG", xmp=broken))
    assert result.metadata.error.startswith("XMP unreadable") and not result.metadata.found


# --- generator settings -----------------------------------------------------------------------------------------

def test_automatic1111_parameters_without_and_with_the_prompt():
    data = png_with_text(picture(300), {"parameters": A1111})
    gen = read_provenance(data).generator_settings
    assert gen.generator.startswith("AUTOMATIC1111") and gen.model == "v1-5-pruned-emaonly"
    assert gen.settings == {"steps": "30", "sampler": "DPM++ 2M", "scheduler": "Karras", "cfg_scale": "7",
                            "seed": "1234", "size": "512x512", "model_hash": "6ce0161689", "version": "v1.10.1"}
    assert gen.prompt is None and PROMPT not in json.dumps(read_provenance(data).to_dict())
    assert gen.source == "PNG text 'parameters'" and gen.strength == WEAK and gen.ai_generated
    assert read_provenance(data, include_prompt=True).generator_settings.prompt == PROMPT


def test_forge_and_a1111_in_a_jpeg_user_comment():
    forge = A1111.replace("Version: v1.10.1", "Version: f2.0.1v1.10.1-previous-313-g8a042934")
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + forge.encode("utf-16-be")
    gen = read_provenance(encode(picture(300), "JPEG", exif=exif)).generator_settings
    assert gen.generator == "Forge" and gen.model == "v1-5-pruned-emaonly" and gen.source == "EXIF UserComment"


def test_comfyui_prompt_and_workflow():
    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
              "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
              "3": {"class_type": "KSampler", "inputs": {"seed": 42, "steps": 25, "cfg": 6.5, "sampler_name": "euler",
                                                         "scheduler": "normal", "model": ["4", 0]}}}
    workflow = {"nodes": [{"type": "UNETLoader", "widgets_values": ["flux1-dev.safetensors", "default"]}]}
    gen = read_provenance(png_with_text(picture(300), {"prompt": json.dumps(prompt),
                                                       "workflow": json.dumps(workflow)})).generator_settings
    assert gen.generator == "ComfyUI" and gen.model == "sd_xl_base_1.0.safetensors"
    assert gen.settings == {"seed": "42", "steps": "25", "cfg_scale": "6.5", "sampler": "euler", "scheduler": "normal"}
    only_workflow = read_provenance(png_with_text(picture(300), {"workflow": json.dumps(workflow)})).generator_settings
    assert only_workflow.generator == "ComfyUI" and only_workflow.model == "flux1-dev.safetensors"


@pytest.mark.parametrize("texts, generator, model", [
    ({"Software": "NovelAI", "Source": "NovelAI Diffusion V4.5 4BDE2A90",
      "Comment": json.dumps({"prompt": PROMPT, "steps": 28, "sampler": "k_euler_ancestral", "scale": 5, "seed": 7})},
     "NovelAI", "NovelAI Diffusion V4.5 4BDE2A90"),
    ({"invokeai_metadata": json.dumps({"positive_prompt": PROMPT, "seed": 3, "steps": 30,
                                       "model": {"name": "juggernautXL_v9", "base": "sdxl"}})},
     "InvokeAI", "juggernautXL_v9"),
    ({"parameters": json.dumps({"sui_image_params": {"prompt": PROMPT, "model": "flux1-schnell", "seed": 9}})},
     "SwarmUI", "flux1-schnell"),
    ({"parameters": json.dumps({"prompt": PROMPT, "base_model": "juggernautXL_v8Rundiffusion.safetensors",
                                "version": "Fooocus v2.5.5"})},
     "Fooocus", "juggernautXL_v8Rundiffusion.safetensors"),
    ({"Description": f"{PROMPT} --ar 3:2 --v 6.1 Job ID: 2c8e4b9a-1f2e-4d3c-9b8a-7f6e5d4c3b2a", "Author": "someone"},
     "Midjourney", "Midjourney v6.1"),
    ({"Description": "DALL·E 2024-05-01 10.00.00 - a portrait of an astronaut"}, "DALL·E", None),
], ids=["novelai", "invokeai", "swarmui", "fooocus", "midjourney", "dalle"])
def test_generator_settings_of_other_tools(texts, generator, model):
    gen = read_provenance(png_with_text(picture(300), texts)).generator_settings
    assert (gen.generator, gen.model) == (generator, model) and gen.ai_generated and gen.prompt is None
    assert read_provenance(png_with_text(picture(300), texts), include_prompt=True).generator_settings.prompt


def test_hostile_text_chunks_cost_only_their_own_reading():
    nested = "[" * 200_000 + "]" * 200_000  # past the JSON parser's recursion limit
    bomb = "x" * (64 * 2**20)  # inflates to 64 MiB from about 64 KB
    long_line = "Steps: 20, " + "Seed: 1, " * 200_000  # 1.8 MB of settings
    start = time.perf_counter()
    hostile = read_provenance(png_with_text(picture(300), {"prompt": nested, "workflow": bomb}, itxt=("workflow",)))
    long = read_provenance(png_with_text(picture(300), {"parameters": long_line}))
    assert time.perf_counter() - start < 20  # liveness
    assert not hostile.generator_settings.found and hostile.generator_settings.error is None
    assert "inflates past" in hostile.metadata.error
    assert long.generator_settings.settings == {"steps": "20", "seed": "1"}


# --- invisible watermarks ---------------------------------------------------------------------------------------

def _library_bits(rgb: np.ndarray, bits: int, dtype) -> np.ndarray:
    from imwatermark import WatermarkDecoder

    return np.asarray(WatermarkDecoder("bits", bits).decode(np.ascontiguousarray(rgb[:, :, ::-1]).astype(dtype), "dwtDct"))


@pytest.mark.parametrize("seed", range(3))
def test_the_reader_votes_exactly_as_invisible_watermark_decodes(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(256, 700, 2)
    for rgb in (picture(int(height), seed, int(width)), embed_sdxl(picture(int(height), seed, int(width))),
                embed_sd1(picture(int(height), seed, int(width)))):
        for name, mark in MARKS.items():
            assert np.array_equal(bit_votes(block_bits(rgb, "8-bit"), len(mark)), _library_bits(rgb, len(mark), np.uint8))
            assert np.array_equal(bit_votes(block_bits(rgb, "float"), len(mark)), _library_bits(rgb, len(mark), np.float32))


@pytest.mark.parametrize("embed, name, convention", [(embed_sdxl, "SDXL", "float"),
                                                     (embed_sd1, "Stable Diffusion 1.x", "8-bit")])
def test_embedded_watermarks_are_found_and_a_jpeg_resave_erases_them(embed, name, convention):
    marked = embed(picture(512, 5, 640))
    result = read_provenance(encode(marked, "PNG"))
    reading = next(r for r in result.watermarks.marks if r.name == name)
    assert reading.found and reading.convention == convention and reading.agreeing_bits >= FOUND_AT[name]
    assert result.watermarks.strength == WEAK and result.strength == WEAK and result.ai_generated
    assert f"invisible {name} watermark found" in result.summary
    resaved = next(r for r in read_provenance(encode(marked, "JPEG", quality=90)).watermarks.marks if r.name == name)
    print(f"\n{name}: {reading.agreement:.0%} of bits agree losslessly, {resaved.agreement:.0%} after a JPEG re-save at q90")
    assert not resaved.found and resaved.agreeing_bits < reading.agreeing_bits


def test_unmarked_and_small_images():
    clean = read_provenance(encode(picture(512, 6), "PNG")).watermarks
    assert not clean.found and "absence proves nothing" in clean.says
    assert all(r.agreeing_bits < FOUND_AT[r.name] for r in clean.marks)
    small = read_provenance(encode(picture(200), "PNG")).watermarks
    assert "not checked" in small.says and small.marks == ()
    narrow = {r.name: r for r in read_provenance(encode(picture(400, 0, 200), "PNG")).watermarks.marks}
    assert narrow["SDXL"].agreeing_bits is None and narrow["Stable Diffusion 1.x"].agreeing_bits is not None


def test_a_20_megapixel_image_reads_a_bounded_band():
    image = Image.fromarray(np.tile(picture(500, 7, 1000), (10, 5, 1)))  # 5000 x 5000
    marks = read_watermarks(image)
    assert 0 < marks.rows_read * image.width <= 2_000_000 and marks.rows_read % 8 == 0


def test_dev_images_are_not_reported_as_marked(dev_sample):
    for path in dev_sample:
        assert not read_provenance(path).watermarks.found, path.name


# --- summary, input errors, the pipeline ------------------------------------------------------------------------

def test_nothing_found_says_so():
    result = read_provenance(encode(picture(300), "PNG"))
    assert result.strength == "none" and result.summary == NOTHING_FOUND and not result.ai_generated
    assert NOTHING_FOUND == "No provenance found — most platforms strip it; this says nothing either way."


def test_strongest_evidence_leads_the_summary(lab):
    data = sign(png_with_text(picture(300), {"parameters": A1111}), "image/png", lab,
                manifest(source_type="trainedAlgorithmicMedia"))
    result = read_provenance(data)
    assert result.strength == STRONG
    first, second = result.summary.split("; Unsigned generator settings")
    assert first.startswith("Signed Content Credentials say AI-generated") and "v1-5-pruned-emaonly" in second


def test_input_errors_are_the_gates_errors(tmp_path, monkeypatch):
    with pytest.raises(InvalidImageError, match="No image file named 'missing.png'"):
        read_provenance(tmp_path / "missing.png")
    with pytest.raises(InvalidImageError, match="empty"):
        read_provenance(b"")
    with pytest.raises(InvalidImageError, match="not an image we can read"):  # no image format's signature
        read_provenance(b"hello, this is text, not an image\n" * 10)
    for fmt in ("BMP", "GIF", "TIFF"):  # every format the gate decodes is read, with or without evidence in it
        assert read_provenance(encode(picture(64), fmt)).strength == "none"
    cut = encode(picture(300), "PNG")[:100]  # a damaged image is read as far as it goes, not refused
    assert "not an image" not in read_provenance(cut).summary and read_provenance(cut).watermarks.error
    jpeg = encode(picture(300), "JPEG")
    cut_jpeg = read_provenance(jpeg[: len(jpeg) // 3])  # its header whole, its pixels cut: not "nothing found"
    assert cut_jpeg.summary == ("No provenance found where the file could be read (the image could not be decoded; it "
                                "may be truncated or corrupt); the rest is unknown.")
    assert cut_jpeg.watermarks.says == "not checked: the image could not be decoded; it may be truncated or corrupt"
    tiny = read_provenance(encode(picture(1), "PNG")).watermarks  # whole and valid: the gate's own reason, not "corrupt"
    assert tiny.says == "not checked: the image is 1x1 pixels; at least 16x16 is needed" and tiny.error in tiny.says
    with monkeypatch.context() as patched:
        patched.setattr(images, "MAX_IMAGE_PIXELS", 300 * 300 - 1)
        huge = read_provenance(encode(picture(300), "PNG")).watermarks
    assert huge.says == "not checked: the image is 300x300 = 0.1 megapixels; the limit is 0.089999 megapixels"
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 1000)
    with pytest.raises(ImageTooLargeError, match="limit"):
        read_provenance(encode(picture(300), "PNG"))


def test_predictions_carry_provenance_for_files_and_bytes_only(model, ai_jpeg, tmp_path):
    path = tmp_path / "signed.jpg"
    path.write_bytes(ai_jpeg)
    from_path, from_bytes = model.predict(path), model.predict(ai_jpeg)
    assert from_path.provenance == from_bytes.provenance and from_path.provenance.strength == STRONG
    assert model.predict(load_image(ai_jpeg)).provenance is None
    assert model.predict(np.asarray(load_image(ai_jpeg))).provenance is None
    batch = model.predict_batch([path, b"not an image", load_image(ai_jpeg)])
    assert batch[0].provenance == from_path.provenance and isinstance(batch[1], InvalidImageError)
    assert batch[2].provenance is None


def test_the_original_json_is_unchanged_and_the_extended_one_carries_provenance(model, ai_jpeg):
    result = model.predict(ai_jpeg)
    bare = replace(result, provenance=None)
    for threshold in (0.0, 1.0):  # both branches of the original JSON
        assert json.dumps(replace(result, threshold=threshold).to_dict()) == json.dumps(
            replace(bare, threshold=threshold).to_dict())
    extended = result.to_dict(extended=True)
    assert extended["provenance"] == result.provenance.to_dict() and extended["provenance"]["strength"] == STRONG
    assert json.loads(json.dumps(extended))["provenance"]["content_credentials"]["issuer"] == "Example AI Lab"
    assert bare.to_dict(extended=True)["provenance"] is None


def test_the_service_returns_provenance(model, ai_jpeg):
    from ganorigin.serving.service import ModelService

    service = ModelService(lambda: model).start()
    assert service.wait(60) == "ready"
    assert service.predict(ai_jpeg).provenance.content_credentials.issuer == "Example AI Lab"


# --- command line -----------------------------------------------------------------------------------------------

def test_cli_provenance_command_needs_no_weights(ai_jpeg, tmp_path, capsys):
    from ganorigin.cli import main

    folder = tmp_path / "images"
    (folder / "bad").mkdir(parents=True)
    (folder / "signed.jpg").write_bytes(ai_jpeg)
    (folder / "a1111.png").write_bytes(png_with_text(picture(300), {"parameters": A1111}))
    (folder / "plain.png").write_bytes(encode(picture(300), "PNG"))
    (folder / "bad" / "empty.png").write_bytes(b"")
    with pytest.raises(SystemExit) as help_exit:
        main(["provenance", "--help"])
    help_text = capsys.readouterr().out
    assert help_exit.value.code == 0 and "--prompt" in help_text and "--weights" not in help_text
    assert main(["provenance", str(folder), "--format", "csv", "--no-progress"]) == 1  # one file failed
    rows = {Path(r["path"]).name: r for r in csv.DictReader(capsys.readouterr().out.splitlines())}
    assert list(next(iter(rows.values()))) == ["path", "strength", "summary", "content_credentials", "metadata",
                                               "generator_settings", "watermarks", "error"]
    assert rows["signed.jpg"]["strength"] == STRONG and "Example AI Lab" in rows["signed.jpg"]["content_credentials"]
    assert rows["a1111.png"]["strength"] == WEAK and "v1-5-pruned-emaonly" in rows["a1111.png"]["summary"]
    assert rows["plain.png"]["summary"] == NOTHING_FOUND and not rows["plain.png"]["error"]
    assert rows["empty.png"]["error"] == f"{folder / 'bad' / 'empty.png'}: The file is empty (0 bytes)."
    assert rows["empty.png"]["strength"] == ""
    out = tmp_path / "rows.jsonl"
    assert main(["provenance", str(folder / "a1111.png"), "--prompt", "--out", str(out), "--no-progress"]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["details"]["generator_settings"]["prompt"] == PROMPT and row["error"] is None


def test_cli_predict_has_provenance_columns(ai_jpeg, weights_dir, weights_env, monkeypatch, tmp_path, capsys):
    from ganorigin.cli import main

    for name, value in weights_env.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "signed.jpg").write_bytes(ai_jpeg)
    assert main(["predict", str(tmp_path / "signed.jpg"), "--weights", str(weights_dir), "--offline",
                 "--no-progress"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["provenance_strength"] == STRONG and row["provenance"].startswith("Signed Content Credentials say AI")


def test_chunk_walks_follow_png_crcs_and_webp_padding_and_name_a_truncated_chunk():
    """The PNG walk steps over each chunk's CRC, the WebP walk over the pad byte of an odd-sized chunk;
    a chunk cut short is named, and the walk stops there."""
    import struct
    import zlib

    from ganorigin.provenance.containers import read_container

    def png_chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
           + png_chunk(b"tEXt", b"Software\x00Example 1") + png_chunk(b"tEXt", b"Comment\x00two"))
    container = read_container(png)
    assert container.texts == [("Software", "Example 1"), ("Comment", "two")] and container.problems == []
    cut = read_container(png[:-6])
    assert cut.texts == [("Software", "Example 1")] and cut.problems == ["PNG chunk 'tEXt' is truncated"]
    plain = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(plain, "PNG")
    damaged = read_provenance(plain.getvalue()[:-30])  # a truncated file: its summary must not read as complete
    assert damaged.strength == "none" and damaged.summary != NOTHING_FOUND
    assert damaged.summary.startswith("No provenance found where the file could be read (PNG chunk")

    exif = b"MM\x00*\x00\x00\x00\x08\x00\x00\x00\x00\x00"  # a TIFF header with no tags
    chunks = b"ODD " + struct.pack("<I", 3) + b"abc\x00" + b"EXIF" + struct.pack("<I", len(exif)) + exif
    webp = b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks
    assert read_container(webp).exif == exif and read_container(webp).problems == []
    cut = read_container(webp[:-2])
    assert cut.exif is None and cut.problems == ["WebP chunk 'EXIF' is truncated"]
