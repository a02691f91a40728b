"""Metadata blocks that `cloak.imageio` carries from an artwork to its cloaked copy, byte-level parts.

Three jobs, all about what an artist expects of a protected file:

- **No unprotected copy rides along.** Cameras, Photoshop and Lightroom embed a small preview of the picture in
  the EXIF block (its second image directory, IFD1), in the XMP packet (``xmp:Thumbnails``) and in the Photoshop
  resource block (resources 0x0409 and 0x040C). Written back unchanged, the cloaked file would carry an uncloaked
  miniature of the artwork. `exif_has_thumbnail` finds the EXIF one (`cloak.imageio` then writes the EXIF block
  again without it), `xmp_without_thumbnails` removes the XMP ones, and only rights resources are taken from the
  Photoshop block. ImageMagick keeps the same blocks in a PNG as hex text (`raw_profile`, `raw_profile_text`); their
  previews go too (`photoshop_resources` reads the Photoshop one).
- **The IPTC record is kept.** Editors' "File Info" (creator, copyright notice, caption, keywords) lives in the
  IPTC-IIM record inside the Photoshop resource block of a JPEG's APP13 segment. Pillow reads that block but cannot
  write it; `jpeg_with_resources` adds it to a JPEG Pillow has written. A PNG holds it in a "Raw profile type
  iptc" text chunk, where ExifTool writes and reads it (ExifTool's PNG tag documentation, TextualData), as Photoshop
  resource blocks or a bare IPTC-IIM record (`iptc_profile_resources`).
- **The metadata agrees with the upright pixels.** `xmp_upright` sets the XMP copy of the EXIF orientation to 1
  once the pixels are turned, and `raw_profile` reads the EXIF block ImageMagick keeps in a PNG as hex text, so that
  it is written back once, as EXIF, not again as text with its old orientation and its thumbnail.

Formats follow the specifications: TIFF 6.0 section 2 (the EXIF block is a little TIFF file: header, then image
file directories of 12-byte entries, each directory ending in the offset of the next), CIPA DC-008 (EXIF; IFD1
holds the thumbnail), Adobe's Photoshop File Formats Specification ("Image Resource Blocks": ``8BIM``, a 2-byte
id, an even-padded Pascal name, a 4-byte size, data padded to even length) and ITU-T T.81 (JPEG markers).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from xml.etree import ElementTree

IPTC_RESOURCE = 0x0404
"""The Photoshop resource that holds the IPTC-IIM record (Photoshop File Formats Specification, Image Resource IDs)."""

RIGHTS_RESOURCES: tuple[int, ...] = (IPTC_RESOURCE, 0x040A, 0x040B)
"""Photoshop resources carried to JPEG and PNG outputs: the IPTC-IIM record, the copyright flag and the URL. The
others (thumbnails, slices, print settings, layer state) describe the editor's document, and two are uncloaked
previews."""

JPEG_SEGMENT_BYTES = 0xFFFF - 2
"""The most data one JPEG marker segment holds: its 16-bit length field counts itself (ITU-T T.81, B.1.1.4)."""

_PHOTOSHOP_SIGNATURE = b"Photoshop 3.0\x00"
_XMP_NS = "http://ns.adobe.com/xap/1.0/"
_TIFF_NS = "http://ns.adobe.com/tiff/1.0/"


def exif_has_thumbnail(raw: bytes) -> bool:
    """Whether an EXIF block links a second image directory (IFD1, where the thumbnail lives).

    Args:
        raw: the block as Pillow reads it, with or without the ``Exif\\0\\0`` prefix of a JPEG's APP1 segment.

    Returns:
        True when IFD0's next-directory offset is non-zero. A block too short or malformed to tell gives False.
    """
    data = raw[6:] if raw.startswith(b"Exif\x00\x00") else raw
    if data[:2] == b"II":
        endian = "<"
    elif data[:2] == b"MM":
        endian = ">"
    else:
        return False
    try:
        (ifd0,) = struct.unpack_from(endian + "I", data, 4)
        (entries,) = struct.unpack_from(endian + "H", data, ifd0)
        (following,) = struct.unpack_from(endian + "I", data, ifd0 + 2 + 12 * entries)
    except struct.error:
        return False
    return following != 0


def xmp_without_thumbnails(xmp: bytes) -> tuple[bytes, bool]:
    """The XMP packet with its ``xmp:Thumbnails`` properties (base64 previews of the picture) removed.

    The packet is edited as text, so everything else in it stays byte for byte, and the result is checked to be
    well-formed XML. A packet that is not well-formed to begin with is returned unchanged.

    Args:
        xmp: the packet as read from the file.

    Returns:
        ``(packet, removed)``: the packet to write and whether any thumbnail was taken out.
    """
    text = xmp.decode("utf-8", errors="replace")
    if "Thumbnails" not in text or not _well_formed(text):
        return xmp, False
    edited = text
    # The prefix bound to the XMP basic namespace is usually "xmp" (older files: "xap"); it is looked up.
    for prefix in _prefixes(text, _XMP_NS):
        tag = re.escape(prefix) + r":Thumbnails"
        # element form <xmp:Thumbnails>...</xmp:Thumbnails> (or empty), then attribute form xmp:Thumbnails="..."
        edited = re.sub(r"<" + tag + r"(?:\s[^>]*?)?(?:/>|>.*?</" + tag + r"\s*>)", "", edited, flags=re.DOTALL)
        edited = re.sub(r"\s" + tag + r"\s*=\s*(\"[^\"]*\"|'[^']*')", "", edited)
    if edited == text or not _well_formed(edited):
        return xmp, False
    return edited.encode("utf-8"), True


def xmp_upright(xmp: bytes) -> bytes:
    """The XMP packet with its ``tiff:Orientation`` set to 1, for pixels that have been turned upright.

    Editors copy the EXIF orientation into the XMP; left at its old value, a program that reads the XMP one would
    turn the already upright picture again. Other bytes stay as they are.
    """
    text = xmp.decode("utf-8", errors="replace")
    edited = text
    for prefix in _prefixes(text, _TIFF_NS):
        tag = re.escape(prefix) + r":Orientation"
        edited = re.sub(r"(<" + tag + r"\s*>)\s*\d+\s*(</" + tag + r"\s*>)", r"\g<1>1\g<2>", edited)
        edited = re.sub(r"(\s" + tag + r"\s*=\s*[\"'])\d+([\"'])", r"\g<1>1\g<2>", edited)
    return xmp if edited == text else edited.encode("utf-8")


def raw_profile(text: str) -> bytes | None:
    """The bytes of an ImageMagick "Raw profile type ..." PNG text chunk (a name line, a length line, then hex), or
    None when it is not one."""
    lines = text.strip().split("\n")
    try:
        length = int(lines[1])
        data = bytes.fromhex("".join(lines[2:]))
    except (IndexError, ValueError):
        return None
    return data if len(data) == length else None


def raw_profile_text(name: str, data: bytes) -> str:
    """``data`` as ImageMagick writes a binary profile into a PNG text chunk: name, length, hex in lines of 72."""
    hexed = data.hex()
    lines = "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72))
    return f"\n{name}\n{len(data):8d}\n{lines}\n"


PREVIEW_RESOURCES: frozenset[int] = frozenset({0x0409, 0x040C})
"""Photoshop resources that hold a thumbnail of the picture (Photoshop File Formats Specification, Image Resource
IDs): uncloaked copies, never carried."""


def photoshop_resources(block: bytes) -> dict[int, bytes] | None:
    """The resources of a Photoshop image resource block (``8BIM`` records), id -> data; None when malformed."""
    out: dict[int, bytes] = {}
    at = 0
    try:
        while at < len(block):
            if block[at : at + 4] != b"8BIM":
                return None
            (rid,) = struct.unpack_from(">H", block, at + 4)
            name_length = block[at + 6]
            at += 6 + 1 + name_length
            at += at % 2  # the Pascal name, length byte included, is padded to an even length
            (size,) = struct.unpack_from(">I", block, at)
            out[rid] = block[at + 4 : at + 4 + size]
            at += 4 + size + size % 2
    except (struct.error, IndexError):
        return None
    return out


def iptc_profile_resources(data: bytes) -> dict[int, bytes] | None:
    """The Photoshop resources of an IPTC profile ("Raw profile type iptc" in a PNG), id -> data: the profile is
    either Photoshop resource blocks (as ExifTool writes it) or a bare IPTC-IIM record (as ImageMagick may), which
    is the IPTC resource 0x0404. None when it is neither."""
    if data.startswith(b"8BIM"):
        return photoshop_resources(data)
    return {IPTC_RESOURCE: data} if data.startswith(b"\x1c") else None


def _prefixes(text: str, namespace: str) -> set[str]:
    """The prefixes an XMP packet binds to ``namespace``."""
    return set(re.findall(r'xmlns:([\w.-]+)\s*=\s*["\']' + re.escape(namespace) + r'["\']', text))


def _well_formed(text: str) -> bool:
    # An XMP packet is wrapped in <?xpacket ...?> processing instructions and may be padded with whitespace; the
    # x:xmpmeta element (or a bare rdf:RDF) between them is the XML document.
    start = text.find("<x:xmpmeta")
    end = text.rfind("</x:xmpmeta>")
    if start < 0 or end < 0:
        start, end = text.find("<rdf:RDF"), text.rfind("</rdf:RDF>")
        if start < 0 or end < 0:
            return False
        end += len("</rdf:RDF>")
    else:
        end += len("</x:xmpmeta>")
    try:
        ElementTree.fromstring(text[start:end])
    except ElementTree.ParseError:
        return False
    return True


def resource_block(resources: Mapping[int, bytes]) -> bytes:
    """Photoshop image resource blocks for ``resources`` (id -> data), in id order, each with an empty name."""
    out = bytearray()
    for rid in sorted(resources):
        data = resources[rid]
        out += b"8BIM" + struct.pack(">H", rid) + b"\x00\x00" + struct.pack(">I", len(data)) + data
        if len(data) % 2:
            out += b"\x00"
    return bytes(out)


def fits_one_segment(resources: Mapping[int, bytes]) -> bool:
    """Whether ``resources`` fit in the one APP13 segment `jpeg_with_resources` writes."""
    return len(_PHOTOSHOP_SIGNATURE) + len(resource_block(resources)) <= JPEG_SEGMENT_BYTES


def jpeg_with_resources(jpeg: bytes, resources: Mapping[int, bytes]) -> bytes:
    """A JPEG file with an APP13 Photoshop segment holding ``resources``, after its other application segments.

    Args:
        jpeg: a complete JPEG file without an APP13 Photoshop segment (as Pillow writes them).
        resources: Photoshop resource id -> data, e.g. ``{0x0404: iptc_record}``. Empty: ``jpeg`` is returned.

    Returns:
        The new file's bytes.

    Raises:
        ValueError: ``jpeg`` does not start with a JPEG's start-of-image marker, or the resources do not fit in
            one 64 KiB segment.
    """
    if not resources:
        return jpeg
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file: it does not start with the start-of-image marker FFD8")
    payload = _PHOTOSHOP_SIGNATURE + resource_block(resources)
    if not fits_one_segment(resources):
        raise ValueError(f"the Photoshop resources take {len(payload)} bytes, more than one JPEG segment holds")
    segment = b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload
    at = _after_app_segments(jpeg)
    return jpeg[:at] + segment + jpeg[at:]


def _after_app_segments(jpeg: bytes) -> int:
    """Offset of the first marker after SOI that is not an application segment (APP0-APP15) or a comment."""
    at = 2
    while at + 4 <= len(jpeg) and jpeg[at] == 0xFF and (0xE0 <= jpeg[at + 1] <= 0xEF or jpeg[at + 1] == 0xFE):
        (length,) = struct.unpack_from(">H", jpeg, at + 2)
        at += 2 + length
    return at
