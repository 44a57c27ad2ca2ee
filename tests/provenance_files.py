"""Real provenance fixtures, made by the real libraries: C2PA-signed files (c2pa-python, with test
certificate chains from ``cryptography``), SD / SDXL watermarks (invisible-watermark's encoder,
called the way diffusers and CompVis call it), PNG text chunks and XMP packets (Pillow)."""

from __future__ import annotations

import datetime
import io
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Optional

import c2pa
import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image, PngImagePlugin

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SDXL_BITS = [int(bit) for bit in bin(0b101100111110110010010000011110111011000110011110)[2:]]


@dataclass(frozen=True)
class Chain:
    """A test root CA and an end-entity signing certificate it issued."""

    root_pem: bytes
    chain_pem: bytes  # end entity, then root
    key_pem: bytes

    def signer(self) -> c2pa.Signer:
        return c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg=b"es256", sign_cert=self.chain_pem,
                                                         private_key=self.key_pem, ta_url=None))


def make_chain(organisation: str, common_name: str) -> Chain:
    """An ES256 root CA and a C2PA-acceptable signing certificate (emailProtection EKU)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root_name = _name(f"{organisation} Test Root CA", organisation)

    def certificate(subject, public_key, ca: bool):
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(root_name).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                         encipher_only=False, decipher_only=False), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        return builder.sign(root_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    root = certificate(root_name, root_key.public_key(), ca=True)
    leaf = certificate(_name(common_name, organisation), key.public_key(), ca=False)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Chain(root, leaf + root, key_pem)


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation)])


def manifest(*, source_type: Optional[str], action: str = "c2pa.created", agent: Optional[str] = None,
             title: str = "image") -> dict:
    """A manifest definition with one action; "c2pa.opened" opens the ingredient labelled "parent"."""
    entry = {"action": action}
    if action == "c2pa.opened":
        entry["parameters"] = {"ingredientIds": ["parent"]}
    if source_type:
        entry["digitalSourceType"] = IPTC + source_type
    if agent:
        entry["softwareAgent"] = {"name": agent}
    return {"claim_generator_info": [{"name": "GANOrigin tests", "version": "1.0"}], "title": title,
            "assertions": [{"label": "c2pa.actions", "data": {"actions": [entry]}}]}


def sign(data: bytes, mime: str, chain: Chain, definition: dict, ingredient: Optional[bytes] = None) -> bytes:
    """``data`` with a C2PA manifest built from ``definition`` (and ``ingredient``, a signed parent) embedded."""
    out = io.BytesIO()
    with c2pa.Builder(definition) as builder:
        if ingredient is not None:
            builder.add_ingredient(json.dumps({"title": "parent.jpg", "relationship": "parentOf", "label": "parent"}), mime,
                                   io.BytesIO(ingredient))
        builder.sign(chain.signer(), mime, io.BytesIO(data), out)
    return out.getvalue()


def flip_scan_byte(jpeg: bytes) -> bytes:
    """A JPEG with one bit of its entropy-coded pixels changed (markers left intact)."""
    data = bytearray(jpeg)
    at = data.rfind(b"\xff\xda") + 400
    while data[at] in (0xFF, 0xFE) or data[at - 1] == 0xFF:
        at += 1
    data[at] ^= 0x01
    return bytes(data)


def garble_png(png: bytes, marker: bytes, seed: int = 0) -> bytes:
    """``png`` with the 100 bytes that start 40 bytes after ``marker`` replaced by noise, and that
    chunk's CRC fixed: a well-formed PNG whose chunk content is garbage."""
    data, pos = bytearray(png), 8
    at = data.find(marker) + 40
    while pos + 12 + struct.unpack(">I", data[pos : pos + 4])[0] <= at:
        pos += 12 + struct.unpack(">I", data[pos : pos + 4])[0]
    data[at : at + 100] = np.random.default_rng(seed).integers(0, 256, 100, dtype=np.uint8).tobytes()
    end = pos + 8 + struct.unpack(">I", data[pos : pos + 4])[0]
    data[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(data[pos + 4 : end])))
    return bytes(data)


def picture(size: int = 512, seed: int = 0, width: Optional[int] = None) -> np.ndarray:
    """A synthetic RGB picture, gradients plus noise, HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    width = width or size
    y, x = np.mgrid[0:size, 0:width]
    base = np.stack([x * 200 / width, y * 200 / size, (x + y) * 100 / (size + width)], axis=-1)
    return np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kwargs)
    return buf.getvalue()


def png_with_text(rgb: np.ndarray, texts: dict, *, itxt: tuple = (), **options) -> bytes:
    """A PNG with tEXt chunks ``texts`` and iTXt chunks for the keys in ``itxt`` (compressed); ``options``
    go to Pillow's PNG writer (e.g. ``exif``)."""
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        if key in itxt:
            info.add_itxt(key, value, zip=True)
        else:
            info.add_text(key, value)
    return encode(rgb, "PNG", pnginfo=info, **options)


def xmp_packet(*, source_type: Optional[str] = None, creator_tool: Optional[str] = None, as_elements: bool = False,
               extra: str = "") -> bytes:
    """An XMP packet the way Adobe tools write it: properties as attributes, or as child elements."""
    props = {}
    if source_type:
        props["Iptc4xmpExt:DigitalSourceType"] = IPTC + source_type
    if creator_tool:
        props["xmp:CreatorTool"] = creator_tool
    if as_elements:
        attributes, children = "", "".join(f"<{k}>{v}</{k}>" for k, v in props.items())
    else:
        attributes, children = "".join(f' {k}="{v}"' for k, v in props.items()), ""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'xmlns:tiff="http://ns.adobe.com/tiff/1.0/"{attributes}>{children}{extra}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode("utf-8")


def embed_sdxl(rgb: np.ndarray) -> np.ndarray:
    """SDXL's watermark as diffusers' StableDiffusionXLWatermarker applies it: float pixels, RGB->BGR,
    encode, back to RGB; then the pipeline's rounding to uint8."""
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", SDXL_BITS)
    bgr = rgb.astype(np.float32)[:, :, ::-1]
    marked = encoder.encode(np.ascontiguousarray(bgr), "dwtDct")[:, :, ::-1]
    return np.clip(np.round(marked), 0, 255).astype(np.uint8)


def embed_sd1(rgb: np.ndarray) -> np.ndarray:
    """Stable Diffusion 1.x's watermark as CompVis' txt2img.py applies it (uint8 BGR)."""
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", "StableDiffusionV1".encode("utf-8"))
    return np.ascontiguousarray(encoder.encode(np.ascontiguousarray(rgb[:, :, ::-1]), "dwtDct")[:, :, ::-1])
