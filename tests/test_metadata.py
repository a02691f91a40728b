"""Metadata: EXIF, XMP and Photoshop thumbnails (uncloaked copies) removed, the IPTC record carried into JPEGs and
PNGs."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, IptcImagePlugin, TiffImagePlugin

from cloak import metadata
from cloak.imageio import load_artwork, save_artwork

TIFF_NS = "http://ns.adobe.com/tiff/1.0/"
THUMB = b"\xff\xd8THUMBNAIL-OF-THE-UNCLOAKED-PICTURE\xff\xd9"


def exif_with_thumbnail(endian: str = "<", thumb: bytes | None = THUMB) -> bytes:
    """An EXIF block (APP1 payload) with IFD0 holding an Artist tag and, when ``thumb`` is given, an IFD1 that
    points at it, as cameras and Photoshop write them."""
    artist = b"Ada Painter\x00"
    ifd0 = 8
    ifd1 = ifd0 + 2 + 12 + 4
    artist_at = ifd1 + (2 + 2 * 12 + 4 if thumb is not None else 0)
    thumb_at = artist_at + len(artist)
    out = (b"II" if endian == "<" else b"MM") + struct.pack(endian + "HI", 42, ifd0)
    out += struct.pack(endian + "H", 1) + struct.pack(endian + "HHII", 0x013B, 2, len(artist), artist_at)
    out += struct.pack(endian + "I", ifd1 if thumb is not None else 0)
    if thumb is not None:
        out += struct.pack(endian + "H", 2)
        out += struct.pack(endian + "HHII", 0x0201, 4, 1, thumb_at)
        out += struct.pack(endian + "HHII", 0x0202, 4, 1, len(thumb))
        out += struct.pack(endian + "I", 0)
    out += artist + (thumb or b"")
    return b"Exif\x00\x00" + out


def iptc_record(**datasets: bytes) -> bytes:
    """An IPTC-IIM record 2 (application record): ``by_line`` (2:80) and ``copyright`` (2:116) datasets."""
    numbers = {"by_line": 80, "copyright": 116, "caption": 120}
    return b"".join(b"\x1c\x02" + bytes([numbers[k]]) + struct.pack(">H", len(v)) + v for k, v in datasets.items())


def xmp_packet(body: str, prefix: str = "xmp") -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'<rdf:Description rdf:about="" xmlns:{prefix}="http://ns.adobe.com/xap/1.0/" '
        'xmlns:xmpGImg="http://ns.adobe.com/xap/1.0/g/img/" xmlns:dc="http://purl.org/dc/elements/1.1/">'
        f"{body}</rdf:Description></rdf:RDF></x:xmpmeta>\n"
        + " " * 64
        + '\n<?xpacket end="w"?>'
    ).encode("utf-8")


RIGHTS = '<dc:rights><rdf:Alt><rdf:li xml:lang="x-default">(c) Ada Painter</rdf:li></rdf:Alt></dc:rights>'
THUMBNAILS = (
    "<{p}:Thumbnails><rdf:Alt><rdf:li rdf:parseType=\"Resource\"><xmpGImg:width>256</xmpGImg:width>"
    "<xmpGImg:image>VEhVTUJOQUlMLU9GLVRIRS1VTkNMT0FLRUQtUElDVFVSRQ==</xmpGImg:image></rdf:li></rdf:Alt>"
    "</{p}:Thumbnails>"
)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_exif_thumbnail_is_found_in_either_byte_order(endian: str) -> None:
    assert metadata.exif_has_thumbnail(exif_with_thumbnail(endian))
    assert not metadata.exif_has_thumbnail(exif_with_thumbnail(endian, thumb=None))
    assert metadata.exif_has_thumbnail(exif_with_thumbnail(endian)[6:])  # PNG eXIf chunks carry no "Exif" prefix


def test_exif_written_by_pillow_has_no_thumbnail_and_garbage_is_not_one() -> None:
    exif = Image.Exif()
    exif[0x013B] = "Ada Painter"
    assert not metadata.exif_has_thumbnail(exif.tobytes())
    # Pillow writes IFD0 and its sub-directories only: re-serialising drops IFD1, which imageio relies on.
    reloaded = Image.Exif()
    reloaded.load(exif_with_thumbnail())
    rewritten = reloaded.tobytes()
    assert not metadata.exif_has_thumbnail(rewritten) and THUMB not in rewritten and b"Ada Painter" in rewritten
    for junk in (b"", b"Exif\x00\x00", b"XX\x00\x2a\x00\x00\x00\x08", b"II\x2a\x00\xff\xff\x00\x00"):
        assert not metadata.exif_has_thumbnail(junk)


@pytest.mark.parametrize("prefix", ["xmp", "xap"])
def test_xmp_thumbnails_are_removed_and_the_rest_kept_byte_for_byte(prefix: str) -> None:
    packet = xmp_packet(RIGHTS + THUMBNAILS.format(p=prefix), prefix)
    cleaned, removed = metadata.xmp_without_thumbnails(packet)
    assert removed
    assert cleaned == xmp_packet(RIGHTS, prefix)
    assert b"VEhVTUJOQUlM" not in cleaned


def test_xmp_thumbnails_as_an_attribute_or_empty_element_are_removed() -> None:
    attribute = xmp_packet(RIGHTS).replace(b'rdf:about=""', b'rdf:about="" xmp:Thumbnails="VEhVTUI="')
    assert metadata.xmp_without_thumbnails(attribute) == (xmp_packet(RIGHTS), True)
    empty = xmp_packet(RIGHTS + "<xmp:Thumbnails />")
    assert metadata.xmp_without_thumbnails(empty) == (xmp_packet(RIGHTS), True)


def test_xmp_without_thumbnails_or_not_well_formed_is_left_alone() -> None:
    plain = xmp_packet(RIGHTS)
    assert metadata.xmp_without_thumbnails(plain) == (plain, False)
    broken = xmp_packet(RIGHTS + THUMBNAILS.format(p="xmp")).replace(b"</dc:rights>", b"")
    assert metadata.xmp_without_thumbnails(broken) == (broken, False)
    # another namespace's "Thumbnails" is not the XMP basic one and stays
    other = xmp_packet(RIGHTS + '<dc:Thumbnails>x</dc:Thumbnails>')
    assert metadata.xmp_without_thumbnails(other) == (other, False)


def _jpeg(**options: object) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def test_jpeg_with_resources_carries_iptc_and_keeps_everything_else() -> None:
    record = iptc_record(by_line=b"Ada Painter", copyright=b"(c) 2026 Ada Painter")
    exif = Image.Exif()
    exif[0x013B] = "Ada Painter"
    original = _jpeg(exif=exif.tobytes(), comment=b"hello", icc_profile=b"\x00" * 128)
    written = metadata.jpeg_with_resources(original, {0x0404: record, 0x040A: b"\x01"})
    with Image.open(io.BytesIO(written)) as im, Image.open(io.BytesIO(original)) as before:
        info = IptcImagePlugin.getiptcinfo(im)
        assert info == {(2, 80): b"Ada Painter", (2, 116): b"(c) 2026 Ada Painter"}
        assert im.info["photoshop"][0x040A] == b"\x01"
        assert np.array_equal(np.asarray(im), np.asarray(before))
        assert im.info["exif"] == before.info["exif"] and im.info["comment"] == b"hello"
        assert im.info["icc_profile"] == before.info["icc_profile"]
    # The segment goes after the application segments, before the first table
    assert written.index(b"Photoshop 3.0") < written.index(b"\xff\xdb") and written.index(b"Exif") < written.index(
        b"Photoshop 3.0"
    )
    assert metadata.jpeg_with_resources(original, {}) == original


def test_resource_block_pads_odd_data_and_jpeg_errors_are_clear() -> None:
    block = metadata.resource_block({0x040B: b"abc"})
    assert block == b"8BIM\x04\x0b\x00\x00\x00\x00\x00\x03abc\x00"
    with pytest.raises(ValueError, match="start-of-image"):
        metadata.jpeg_with_resources(b"\x89PNG", {0x0404: b"x"})
    with pytest.raises(ValueError, match="more than one JPEG segment"):
        metadata.jpeg_with_resources(_jpeg(), {0x0404: b"x" * 70000})


# End to end through cloak.imageio: what an artist's exported file carries, and what its cloaked copy does.

PREVIEW = b"PHOTOSHOP-PREVIEW-OF-THE-UNCLOAKED-PICTURE"


def _exported_jpeg(path: Path) -> None:
    """A JPEG as Photoshop exports one: EXIF with a thumbnail, XMP with a thumbnail, and a Photoshop block holding
    the IPTC record, the copyright flag and a preview."""
    pixels = np.random.default_rng(1).integers(0, 256, (23, 37, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    xmp = xmp_packet(RIGHTS + THUMBNAILS.format(p="xmp"))
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif_with_thumbnail(), xmp=xmp)
    record = iptc_record(by_line=b"Ada Painter", copyright=b"(c) 2026 Ada Painter")
    resources = {0x0404: record, 0x040A: b"\x01", 0x040C: PREVIEW}
    path.write_bytes(metadata.jpeg_with_resources(buffer.getvalue(), resources))


@pytest.mark.parametrize("fmt", ["jpeg", "png", "webp"])
def test_cloaked_copy_keeps_the_rights_and_carries_no_uncloaked_preview(tmp_path: Path, fmt: str) -> None:
    _exported_jpeg(tmp_path / "in.jpg")
    art = load_artwork(tmp_path / "in.jpg")
    notes = " | ".join(art.notes)
    assert "preview thumbnails removed from the XMP, Photoshop and EXIF data: each is a small uncloaked copy" in notes
    assert "IPTC record (File Info) is written back into PNG and JPEG outputs; WebP cannot hold it" in notes
    out = tmp_path / f"out.{fmt}"
    save_artwork(out, art.rgb, art, format=fmt)
    data = out.read_bytes()
    for preview in (THUMB, PREVIEW, b"VEhVTUJOQUlM", b"Thumbnails"):
        assert preview not in data
    with Image.open(out) as im:
        assert im.getexif()[0x013B] == "Ada Painter"
        assert b"(c) Ada Painter" in im.info["xmp"]
        iptc = IptcImagePlugin.getiptcinfo(im) if fmt == "jpeg" else None
        profile = im.info.get("Raw profile type iptc") if fmt == "png" else None
    record = iptc_record(by_line=b"Ada Painter", copyright=b"(c) 2026 Ada Painter")
    if fmt == "jpeg":
        assert iptc == {(2, 80): b"Ada Painter", (2, 116): b"(c) 2026 Ada Painter"}
        assert b"Photoshop 3.0" in data and data.count(b"8BIM") == 2  # the IPTC record and the copyright flag
    if fmt == "png":  # where ExifTool reads a PNG's IPTC: Photoshop resource blocks in ImageMagick's hex text
        raw = metadata.raw_profile(profile)
        assert raw is not None and metadata.photoshop_resources(raw) == {0x0404: record, 0x040A: b"\x01"}
        again = load_artwork(out)  # and back into a JPEG from the cloaked PNG
        assert again.photoshop == ((0x0404, record), (0x040A, b"\x01"))
        assert not any(key.startswith("Raw profile type") for key, _ in again.text)  # written once, not twice
        save_artwork(tmp_path / "again.jpg", again.rgb, again, format="jpeg")
        with Image.open(tmp_path / "again.jpg") as im:
            assert IptcImagePlugin.getiptcinfo(im) == {(2, 80): b"Ada Painter", (2, 116): b"(c) 2026 Ada Painter"}
    if fmt == "webp":
        assert record not in data


def test_iptc_from_a_tiff_reaches_a_jpeg_output_and_plain_files_get_no_notes(tmp_path: Path) -> None:
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    ifd[34377] = metadata.resource_block({0x0404: iptc_record(copyright=b"(c) Ada"), 0x0409: PREVIEW})
    ifd.tagtype[34377] = 1  # BYTE, as Photoshop writes it
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "in.tif", tiffinfo=ifd)
    art = load_artwork(tmp_path / "in.tif")
    assert art.photoshop == ((0x0404, iptc_record(copyright=b"(c) Ada")),)
    assert "preview thumbnail removed from the Photoshop data: each is a small uncloaked copy of the picture" in (
        art.notes
    )
    save_artwork(tmp_path / "out.jpg", art.rgb, art, format="jpeg")
    with Image.open(tmp_path / "out.jpg") as im:
        assert IptcImagePlugin.getiptcinfo(im) == {(2, 116): b"(c) Ada"}
    assert PREVIEW not in (tmp_path / "out.jpg").read_bytes()
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "plain.jpg", exif=exif_with_thumbnail(thumb=None))
    plain = load_artwork(tmp_path / "plain.jpg")
    assert plain.notes == () and plain.photoshop == ()
    assert plain.exif == exif_with_thumbnail(thumb=None)  # nothing to remove: the block is kept byte for byte


def test_xmp_upright_sets_the_tiff_orientation_to_1_and_nothing_else() -> None:
    element = _xmp_with_orientation(element="<tiff:Orientation>6</tiff:Orientation>")
    assert metadata.xmp_upright(element) == element.replace(b">6<", b">1<")
    attribute = _xmp_with_orientation(attribute='tiff:Orientation="8"')
    assert metadata.xmp_upright(attribute) == attribute.replace(b'tiff:Orientation="8"', b'tiff:Orientation="1"')
    other = xmp_packet(RIGHTS + "<dc:Orientation>6</dc:Orientation>")  # not the TIFF namespace's
    assert metadata.xmp_upright(other) is other


def _imagemagick_profile(name: str, data: bytes) -> str:
    """A PNG text chunk as ImageMagick writes a binary profile: name, length, then hex in lines of 72."""
    hexed = data.hex()
    return f"\n{name}\n{len(data):8d}\n" + "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72)) + "\n"


def test_raw_profile_reads_imagemagick_chunks_and_refuses_others() -> None:
    data = exif_with_thumbnail()
    assert metadata.raw_profile(_imagemagick_profile("exif", data)) == data
    for bad in ("", "exif", "\nexif\n   12\nzz\n", "\nexif\n   99\n4578\n"):
        assert metadata.raw_profile(bad) is None


def _exif_upright_6() -> bytes:
    """An EXIF block with the Artist tag and Orientation 6 (the picture is stored turned a quarter)."""
    exif = Image.Exif()
    exif[0x013B] = "Ada Painter"
    exif[0x0112] = 6
    return exif.tobytes()


def _xmp_with_orientation(element: str = "", attribute: str = "") -> bytes:
    packet = xmp_packet(RIGHTS + element)
    return packet.replace(b'rdf:about=""', f'rdf:about="" xmlns:tiff="{TIFF_NS}" {attribute}'.encode())


def test_turned_upright_pictures_get_xmp_orientation_1(tmp_path: Path) -> None:
    xmp = _xmp_with_orientation(element="<tiff:Orientation>6</tiff:Orientation>")
    pixels = np.zeros((4, 6, 3), np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.jpg", exif=_exif_upright_6(), xmp=xmp)
    art = load_artwork(tmp_path / "in.jpg")
    assert art.size == (4, 6) and art.xmp == xmp.replace(b">6<", b">1<")
    save_artwork(tmp_path / "out.jpg", art.rgb, art, format="jpeg")
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.getexif()[0x0112] == 1 and b"<tiff:Orientation>1</tiff:Orientation>" in im.info["xmp"]


def test_imagemagick_png_exif_is_carried_as_exif_without_its_thumbnail(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", _imagemagick_profile("exif", exif_with_thumbnail()))
    info.add_text("Copyright", "(c) Ada Painter")
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "in.png", pnginfo=info)
    art = load_artwork(tmp_path / "in.png")
    assert any(note.startswith("preview thumbnail removed from the EXIF data") for note in art.notes)
    assert art.text == (("Copyright", "(c) Ada Painter"),)  # the hex copy is not carried as text
    save_artwork(tmp_path / "out.png", art.rgb, art)
    assert THUMB not in (tmp_path / "out.png").read_bytes()
    with Image.open(tmp_path / "out.png") as im:
        assert im.getexif()[0x013B] == "Ada Painter" and "Raw profile type exif" not in im.info


def test_photoshop_resources_parse_names_and_padding_and_refuse_junk() -> None:
    named = b"8BIM\x04\x04\x03abc" + struct.pack(">I", 3) + b"xyz\x00"  # name "abc": 4 bytes with its length, even
    named += b"8BIM\x04\x0c\x00\x00" + struct.pack(">I", 2) + b"th"
    assert metadata.photoshop_resources(named) == {0x0404: b"xyz", 0x040C: b"th"}
    built = metadata.resource_block({0x0404: b"abc", 0x040C: PREVIEW})
    assert metadata.photoshop_resources(built) == {0x0404: b"abc", 0x040C: PREVIEW}
    for junk in (b"8BI", b"8BIM\x04\x04", b"XXXX" + built[4:]):
        assert metadata.photoshop_resources(junk) is None
    assert metadata.raw_profile(metadata.raw_profile_text("8bim", built)) == built


def test_imagemagick_png_profiles_lose_their_previews_and_keep_the_rest(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    record = iptc_record(copyright=b"(c) Ada Painter")
    xmp = xmp_packet(RIGHTS + THUMBNAILS.format(p="xmp"))
    info = PngImagePlugin.PngInfo()
    block = metadata.resource_block({0x0404: record, 0x040C: PREVIEW})
    info.add_text("Raw profile type 8bim", _imagemagick_profile("8bim", block))
    info.add_text("Raw profile type xmp", _imagemagick_profile("xmp", xmp))
    info.add_text("Raw profile type iptc", _imagemagick_profile("iptc", record))
    info.add_text("Raw profile type APP1", _imagemagick_profile("APP1", exif_with_thumbnail()))
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "in.png", pnginfo=info)
    art = load_artwork(tmp_path / "in.png")
    notes = " | ".join(art.notes)
    assert "thumbnails removed from the Photoshop, XMP and EXIF data: each is a small uncloaked copy" in notes
    save_artwork(tmp_path / "out.png", art.rgb, art)
    with Image.open(tmp_path / "out.png") as im:
        text = {k: metadata.raw_profile(v) for k, v in im.info.items() if k.startswith("Raw profile type")}
    assert metadata.photoshop_resources(text["Raw profile type 8bim"]) == {0x0404: record}
    assert text["Raw profile type xmp"] == xmp_packet(RIGHTS)
    assert text["Raw profile type iptc"] == metadata.resource_block({0x0404: record})  # as ExifTool writes it
    app1 = text["Raw profile type APP1"]
    assert app1 is not None and not metadata.exif_has_thumbnail(app1) and THUMB not in app1 and b"Ada Painter" in app1


def test_a_pngs_iptc_profile_is_read_as_resource_blocks_or_a_bare_record(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    record = iptc_record(copyright=b"(c) Ada Painter")
    assert metadata.iptc_profile_resources(record) == {0x0404: record}
    block = metadata.resource_block({0x0404: record, 0x0409: PREVIEW, 0x0BB7: b"print settings"})
    assert metadata.iptc_profile_resources(block) == {0x0404: record, 0x0409: PREVIEW, 0x0BB7: b"print settings"}
    assert metadata.iptc_profile_resources(b"not a profile") is None
    # In a PNG: the rights are kept, the preview and the editor's settings are not; a chunk that cannot be read
    # stays the text it was.
    for name, profile, kept in (
        ("blocks.png", _imagemagick_profile("iptc", block), ((0x0404, record),)),
        ("bare.png", _imagemagick_profile("iptc", record), ((0x0404, record),)),
        ("junk.png", "\niptc\n   4\nzzzz\n", ()),
    ):
        info = PngImagePlugin.PngInfo()
        info.add_text("Raw profile type iptc", profile)
        Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / name, pnginfo=info)
        art = load_artwork(tmp_path / name)
        assert art.photoshop == kept
        save_artwork(tmp_path / f"out-{name}", art.rgb, art)
        with Image.open(tmp_path / f"out-{name}") as im:
            written = im.info["Raw profile type iptc"]
        if kept:
            assert metadata.raw_profile(written) == metadata.resource_block(dict(kept))
            assert PREVIEW not in (tmp_path / f"out-{name}").read_bytes()
        else:
            assert written == profile
    assert "preview thumbnail removed from the Photoshop data" in " ".join(load_artwork(tmp_path / "blocks.png").notes)


def test_an_iptc_record_too_large_for_a_jpeg_segment_still_reaches_png_outputs(tmp_path: Path) -> None:
    from PIL import PngImagePlugin

    caption = b"x" * 30000  # an IIM dataset holds at most 32767 bytes; three of them overflow a 64 KiB segment
    record = b"".join(b"\x1c\x02\x78" + struct.pack(">H", len(caption)) + caption for _ in range(3))
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type iptc", _imagemagick_profile("iptc", record))
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "in.png", pnginfo=info)
    art = load_artwork(tmp_path / "in.png")
    assert "written back into PNG outputs only: it is too large for one JPEG segment" in " ".join(art.notes)
    save_artwork(tmp_path / "out.png", art.rgb, art)
    with Image.open(tmp_path / "out.png") as im:
        assert metadata.raw_profile(im.info["Raw profile type iptc"]) == metadata.resource_block({0x0404: record})
    save_artwork(tmp_path / "out.jpg", art.rgb, art, format="jpeg")  # saved, without the record
    assert caption not in (tmp_path / "out.jpg").read_bytes()
