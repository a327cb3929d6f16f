"""Fuzz table for `lineguard data import` (every importer) and `lineguard data validate`: generated bad
files (truncated, zero-byte, wrong magic, huge headers and bombs, odd modes), odd file names, hostile paths
and symlinks, malformed XML / YAML / label files / manifests / class files. See fuzz_harness.py for the
checks every case gets."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytest
from fuzz_harness import (
    CLASSES,
    IMG,
    MUTATIONS,
    Case,
    Ctx,
    Mutation,
    Setup,
    execute,
    good_jpeg,
    good_png,
    image_size,
    imagefolder_src,
    import_argv,
    magnetic_tile_src,
    make_fifo,
    mask_png,
    mvtec_src,
    place_target,
    sha,
    symlink,
    voc_src,
    voc_xml,
    write,
    write_dataset,
    write_manifest,
    yolo_src,
)

CASES: List[Case] = []

BAD = {"bad": {0: "reject"}, "ok": {0: "import"}, "either": {0: "account"}}
ALONE = {"bad": {2: "error"}, "ok": {0: "import"}, "either": {0: "account", 2: "error"}}


def add(cid: str, category: str, build: Callable[[Ctx], Setup]) -> None:
    CASES.append(Case(cid, category, build))


# --------------------------------------------------------------------------- 1. file mutations x importer positions

POSITIONS = [("imagefolder", "image"), ("imagefolder", "alone"), ("magnetic-tile", "image"),
             ("magnetic-tile", "mask"), ("magnetic-tile", "alone"), ("mvtec", "image"), ("mvtec", "mask"),
             ("mvtec", "alone"), ("voc", "image"), ("voc", "alone"), ("yolo", "image"), ("yolo", "alone")]
HEAVY_POSITIONS = {("imagefolder", "image"), ("magnetic-tile", "mask"), ("mvtec", "alone"), ("yolo", "image")}


def _mutation_case(layout: str, position: str, m: Mutation) -> Callable[[Ctx], Setup]:
    kind = "mask" if position == "mask" else "image"

    def build(ctx: Ctx) -> Setup:
        src, target = place_target(layout, ctx, position, m.make(kind, ctx.rng), m.suffix)
        out = ctx.root / "out"
        validity = m.valid_for(kind)
        if position == "alone":
            return Setup(import_argv(src, out), ALONE[validity], (target.name, str(src)), out=out)
        return Setup(import_argv(src, out), BAD[validity], (target.name,), out=out)

    return build


for _layout, _pos in POSITIONS:
    for _m in MUTATIONS:
        if _m.heavy and (_layout, _pos) not in HEAVY_POSITIONS:
            continue
        add(f"import-{_layout}-{_pos}-{_m.name}", f"import-file:{_layout}", _mutation_case(_layout, _pos, _m))


# --------------------------------------------------------------------------- 2. odd file names

ODD_NAMES: Dict[str, str] = {
    "space": "with space",
    "unicode": "\u00fcn\u00efc\u00f8d\u00e9_\u65e5\u672c\u8a9e",
    "emoji": "emoji_\U0001f642",
    "dash": "-leading-dash",
    "long250": "L" * 250,
    "newline": "new\nline",
    "cr": "carriage\rreturn",
    "tab": "tab\there",
    "markup": "[bold]markup[red]",
    "backslash": "back\\slash",
    "quotes": "quote'\"s",
    "percent": "pct%s%d{0}",
    "glob": "glob*?[ab]",
    "dots": "trailing.dots..",
    "nonutf8": os.fsdecode(b"bad\xff\xfename"),
    "shell": "#hash$HOME;rm -rf",
    "ansi": "\x1b[31mred",
}
# Names a lineguard id may refuse (control characters, backslashes, > 200 bytes, not UTF-8): imported or rejected
# with a reason, never dropped or a crash. Every other odd name must be imported.
MAY_REFUSE = {"long250", "newline", "cr", "tab", "backslash", "nonutf8", "ansi"}
PATH_NAMES = {"markup-path": "[/]markup"}  # a rich closing tag: only as a path (a file name cannot hold "/")


def _xml_safe(name: str) -> bool:
    return all(c in "\t\n" or (c >= " " and not ("\ud800" <= c <= "\udfff")) for c in name)


def _odd_name_case(position: str, label: str, name: str) -> Callable[[Ctx], Setup]:
    want = {0: "account"} if label in MAY_REFUSE else {0: "import"}

    def build(ctx: Ctx) -> Setup:
        out = ctx.root / "out"
        if position == "imagefolder-file":
            src = imagefolder_src(ctx)
            write(src / "scratch" / f"{name}.png", good_png(ctx.rng))
            return Setup(import_argv(src, out), want, (name,), out=out)
        if position == "imagefolder-class":
            src = imagefolder_src(ctx)
            for i in range(2):
                write(src / name / f"c{i}.png", good_png(ctx.rng))
            return Setup(import_argv(src, out, as_json=False), want, (name,), out=out)
        if position == "imagefolder-copy":
            src = imagefolder_src(ctx)
            write(src / "scratch" / f"{name}.png", good_png(ctx.rng))
            return Setup(import_argv(src, out, "--copy"), want, (name,), out=out)
        if position == "imagefolder-bad-human":
            src = imagefolder_src(ctx)
            write(src / "scratch" / f"{name}.png", b"")
            return Setup(import_argv(src, out, as_json=False), {0: "reject"}, (name,), out=out)
        if position == "voc":
            src = voc_src(ctx)
            write(src / "JPEGImages" / f"{name}.jpg", good_jpeg(ctx.rng))
            filename = f"{name}.jpg" if _xml_safe(name) else None
            write(src / "Annotations" / f"{name}.xml", voc_xml(filename, [("scratch", 2, 2, 12, 12)]))
            return Setup(import_argv(src, out), want, (name,), out=out)
        if position == "yolo":
            src = yolo_src(ctx)
            write(src / "images" / "train" / f"{name}.png", good_png(ctx.rng))
            write(src / "labels" / "train" / f"{name}.txt", "0 0.5 0.5 0.5 0.5\n")
            return Setup(import_argv(src, out), want, (name,), out=out)
        if position == "mvtec-class":
            src = mvtec_src(ctx)
            write(src / "test" / name / "000.png", good_png(ctx.rng))
            write(src / "ground_truth" / name / "000_mask.png", mask_png())
            return Setup(import_argv(src, out, as_json=False), want, (name,), out=out)
        if position == "magnetic-tile-file":
            src = magnetic_tile_src(ctx)
            write(src / "MT_Crack" / "Imgs" / f"{name}.jpg", good_jpeg(ctx.rng))
            write(src / "MT_Crack" / "Imgs" / f"{name}.png", mask_png())
            return Setup(import_argv(src, out), want, (name,), out=out)
        if position == "src-folder-error":  # nothing usable: the error line names the oddly named source
            src = ctx.root / name
            write(src / "good" / "empty.png", b"")
            return Setup(import_argv(src, out, as_json=False), {2: "error"}, (name,), out=out)
        if position == "validate-human":
            ds = ctx.root / "ds"
            recs = write_dataset(ds, ctx.rng)
            write(ds / "images" / f"{name}.png", b"")
            recs[1]["image"] = f"images/{name}.png"
            write_manifest(ds, recs)
            return Setup(["data", "validate", str(ds)], {1: "invalid"}, (name,))
        raise ValueError(position)

    return build


ODD_POSITIONS = ["imagefolder-file", "imagefolder-class", "imagefolder-copy", "imagefolder-bad-human", "voc", "yolo",
                 "mvtec-class", "magnetic-tile-file", "src-folder-error", "validate-human"]
for _pos in ODD_POSITIONS:
    _names = {**ODD_NAMES, **PATH_NAMES} if _pos in ("src-folder-error", "validate-human") else ODD_NAMES
    for _label, _name in _names.items():
        if _pos == "validate-human" and _label == "nonutf8":
            continue  # a UTF-8 manifest cannot name it
        add(f"name-{_pos}-{_label}", "odd-name", _odd_name_case(_pos, _label, _name))


# --------------------------------------------------------------------------- 3. hostile paths, symlinks, special files

def _hostile(cid: str, build: Callable[[Ctx], Setup]) -> None:
    add(f"path-{cid}", "hostile-path", build)


def _outside_image(ctx: Ctx, name: str = "o.png", label: Optional[str] = None) -> Path:
    p = write(ctx.root / "outside" / name, good_png(ctx.rng))
    if label is not None:
        write(p.with_suffix(".txt"), label)
    return p


def _if_link(link: str, target: Callable[[Ctx], Any], expect: Dict[int, str], names: Sequence[str],
             isolate: bool = False) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        src = imagefolder_src(ctx)
        symlink(src / "scratch" / link, target(ctx))
        return Setup(import_argv(src, ctx.root / "out"), expect, names, out=ctx.root / "out", isolate=isolate)

    return build


_hostile("imagefolder-symlink-outside", _if_link("link.png", lambda c: _outside_image(c), {0: "account"},
                                                 ("link.png", "o.png")))
_hostile("imagefolder-dangling-symlink", _if_link("dangling.png", lambda c: c.root / "nowhere.png",
                                                  {0: "reject"}, ("dangling.png",)))
_hostile("imagefolder-symlink-loop", _if_link("loop.png", lambda c: c.root / "src" / "scratch" / "loop.png",
                                              {0: "reject"}, ("loop.png",)))
_hostile("imagefolder-symlink-passwd", _if_link("passwd.png", lambda c: "/etc/passwd", {0: "reject"},
                                                ("passwd.png", "/etc/passwd")))
_hostile("imagefolder-symlink-devzero", _if_link("zero.png", lambda c: "/dev/zero", {0: "reject"},
                                                 ("zero.png", "/dev/zero"), isolate=True))


def _if_fifo(ctx: Ctx) -> Setup:
    src = imagefolder_src(ctx)
    make_fifo(src / "scratch" / "pipe.png")
    return Setup(import_argv(src, ctx.root / "out"), {0: "reject"}, ("pipe.png",), out=ctx.root / "out",
                 isolate=True)


_hostile("imagefolder-fifo", _if_fifo)


def _if_class_link(ctx: Ctx) -> Setup:
    src = imagefolder_src(ctx)
    for i in range(2):
        write(ctx.root / "outside_class" / f"x{i}.png", good_png(ctx.rng))
    symlink(src / "linked", ctx.root / "outside_class")
    return Setup(import_argv(src, ctx.root / "out"), {0: "account"}, ("linked", "outside_class"), out=ctx.root / "out")


_hostile("imagefolder-class-symlink-outside", _if_class_link)


def _mask_special(layout: str, make: Callable[[Ctx, Path], Any], expect: Dict[int, str], isolate: bool
                  ) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        if layout == "magnetic-tile":
            src = magnetic_tile_src(ctx)
            write(src / "MT_Crack" / "Imgs" / "t.jpg", good_jpeg(ctx.rng))
            mask = src / "MT_Crack" / "Imgs" / "t.png"
            names = ("t.png", "t.jpg")
        else:
            src = mvtec_src(ctx)
            write(src / "test" / "crack" / "t.png", good_png(ctx.rng))
            mask = src / "ground_truth" / "crack" / "t_mask.png"
            names = ("t_mask.png",) if expect == {0: "reject"} else ("t_mask.png", "t.png")
        make(ctx, mask)
        return Setup(import_argv(src, ctx.root / "out"), expect, names, out=ctx.root / "out", isolate=isolate)

    return build


_hostile("magnetic-tile-mask-devzero", _mask_special("magnetic-tile", lambda c, p: symlink(p, "/dev/zero"),
                                                     {0: "account"}, True))
_hostile("magnetic-tile-mask-fifo", _mask_special("magnetic-tile", lambda c, p: make_fifo(p), {0: "account"}, True))
_hostile("mvtec-mask-passwd", _mask_special("mvtec", lambda c, p: symlink(p, "/etc/passwd"), {0: "reject"}, False))
_hostile("mvtec-mask-dangling", _mask_special("mvtec", lambda c, p: symlink(p, c.root / "gone.png"),
                                              {0: "account"}, False))
_hostile("mvtec-mask-directory", _mask_special("mvtec", lambda c, p: p.mkdir(parents=True), {0: "account"}, False))


def _yolo_list(lines: Any, expect: Dict[int, str], names: Sequence[str], isolate: bool = False,
               extra: Optional[Callable[[Ctx, Path], None]] = None) -> Callable[[Ctx], Setup]:
    """data.yaml's train split is a list file (``lines``); its val split is the good images/train."""
    def build(ctx: Ctx) -> Setup:
        src = yolo_src(ctx, yaml_text="train: train.txt\nval: images/train\nnames: [scratch]\n")
        if extra is not None:
            extra(ctx, src)
        write(src / "train.txt", lines)
        return Setup(import_argv(src, ctx.root / "out"), expect, names, out=ctx.root / "out", isolate=isolate)

    return build


def _fifo_item(ctx: Ctx, src: Path) -> None:
    make_fifo(src / "images" / "p" / "pipe.png")
    write(src / "labels" / "p" / "pipe.txt", "0 0.5 0.5 0.2 0.2\n")


def _devzero_item(ctx: Ctx, src: Path) -> None:
    symlink(src / "images" / "z" / "z.png", "/dev/zero")
    write(src / "labels" / "z" / "z.txt", "0 0.5 0.5 0.2 0.2\n")


def _outside_item(ctx: Ctx, src: Path) -> None:
    _outside_image(ctx, label="0 0.5 0.5 0.2 0.2\n")


_hostile("yolo-list-dotdot", _yolo_list("../outside/o.png\n", {0: "account"}, ("o.png",), extra=_outside_item))
_hostile("yolo-list-etc-passwd", _yolo_list("/etc/passwd\n", {0: "reject"}, ("passwd",)))
_hostile("yolo-list-dev-zero", _yolo_list("/dev/zero\n", {0: "reject"}, ("zero",), isolate=True))
_hostile("yolo-list-fifo", _yolo_list("images/p/pipe.png\n", {0: "reject"}, ("pipe.png",), isolate=True,
                                      extra=_fifo_item))
_hostile("yolo-list-symlink-devzero", _yolo_list("images/z/z.png\n", {0: "reject"}, ("z.png",), isolate=True,
                                                 extra=_devzero_item))
_hostile("yolo-list-missing-file", _yolo_list("images/none/nothere.png\n", {0: "reject"}, ("nothere.png",)))
_hostile("yolo-list-directory", _yolo_list("images/adir.png\n", {0: "reject"}, ("adir.png",),
                                           extra=lambda c, s: (s / "images" / "adir.png").mkdir()))
_hostile("yolo-list-nul-byte", _yolo_list("images/train/a\x00.png\n", {0: "reject"}, ("a\x00.png",)))
_hostile("yolo-list-5000-char-line", _yolo_list("images/" + "x" * 5000 + ".png\n", {0: "reject"}, ("x" * 50,)))
_hostile("yolo-list-non-utf8", _yolo_list(b"images/train/a.png\n\xff\xfe\n", {0: "reject", 2: "error"},
                                          ("train.txt",)))
_hostile("yolo-list-windows-path", _yolo_list("C:\\data\\a.jpg\n", {0: "reject"}, ("C:\\data",)))
_hostile("yolo-list-url", _yolo_list("http://example.com/a.jpg\n", {0: "reject"}, ("example.com",)))
_hostile("yolo-list-tilde", _yolo_list("~/a.png\n", {0: "reject"}, ("~/a.png",)))
_hostile("yolo-list-duplicates-blank-lines", _yolo_list("images/train/a.png\n\n   \nimages/train/a.png\n", {0: "ok"},
                                                        ()))


def _yolo_dir_loop(ctx: Ctx) -> Setup:
    src = yolo_src(ctx)
    symlink(src / "images" / "train" / "loop", src / "images" / "train")
    return Setup(import_argv(src, ctx.root / "out"), {0: "ok"}, (), out=ctx.root / "out")


_hostile("yolo-images-symlink-loop", _yolo_dir_loop)


def _out_case(make_out: Callable[[Ctx], Path], names: Sequence[str]) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        src = imagefolder_src(ctx)
        out = make_out(ctx)
        nm = tuple(str(out) if n == "OUT" else n for n in names)
        return Setup(import_argv(src, out), {2: "error"}, nm)  # out=None: nothing may change

    return build


_hostile("out-is-src", _out_case(lambda c: c.root / "src", ("OUT",)))
_hostile("out-is-file", _out_case(lambda c: write(c.root / "outfile.txt", "x"), ("outfile.txt",)))
_hostile("out-under-file", _out_case(lambda c: write(c.root / "outfile.txt", "x") / "sub", ("outfile.txt",)))
_hostile("out-dangling-symlink", _out_case(lambda c: symlink(c.root / "outlink", c.root / "gone"), ("outlink",)))


def _src_case(make_src: Callable[[Ctx], Path], names: Callable[[Path], Sequence[str]], *extra: str
              ) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        src = make_src(ctx)
        return Setup(import_argv(src, ctx.root / "out", *extra), {2: "error"}, names(src), out=ctx.root / "out")

    return build


_hostile("src-is-file", _src_case(lambda c: write(c.root / "src.txt", "x"), lambda s: (s.name,)))
_hostile("src-missing", _src_case(lambda c: c.root / "nosuchsrc", lambda s: (s.name,)))
_hostile("src-fifo", _src_case(lambda c: make_fifo(c.root / "srcpipe"), lambda s: (s.name,)))
_hostile("src-dev-null", _src_case(lambda c: Path("/dev/null"), lambda s: ("/dev/null",)))
_hostile("src-empty-folder", _src_case(lambda c: (c.root / "src").mkdir() or c.root / "src", lambda s: (str(s),)))
_hostile("src-format-bogus", _src_case(imagefolder_src, lambda s: ("bogus",), "--format", "bogus"))
_hostile("src-ok-class-bogus", _src_case(imagefolder_src, lambda s: ("nosuchclass",), "--ok-class", "nosuchclass"))
_hostile("src-mvtec-ok-class-other", _src_case(mvtec_src, lambda s: (str(s), "other"), "--ok-class", "other"))
for _fmt in ("magnetic-tile", "mvtec", "voc", "yolo"):
    _hostile(f"format-{_fmt}-on-imagefolder", _src_case(imagefolder_src, lambda s: (str(s),), "--format", _fmt))
_hostile("format-imagefolder-on-voc", _src_case(voc_src, lambda s: (str(s),), "--format", "imagefolder"))
_hostile("format-mvtec-on-voc", _src_case(voc_src, lambda s: (str(s),), "--format", "mvtec"))


# --------------------------------------------------------------------------- 4. malformed VOC XML

LOL = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
BILLION_LAUGHS = (f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY lol0 "lol">{LOL}]><annotation>'
                  "<filename>target.jpg</filename><object><name>&lol9;</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                  "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
QUADRATIC = (f'<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY a "{"x" * 50000}">]><annotation>'
             f"<filename>target.jpg</filename><object><name>{'&a;' * 50000}</name></object></annotation>")
XXE = ('<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY x SYSTEM "file:///etc/passwd">]><annotation>'
       "<filename>target.jpg</filename><object><name>&x;</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax>"
       "<ymax>5</ymax></bndbox></object></annotation>")


def _box(a: Any, b: Any, c: Any, d: Any, name: str = "dent") -> str:
    return voc_xml("target.jpg", [(name, a, b, c, d)])


def _obj(inner: str) -> str:
    return f"<annotation><filename>target.jpg</filename><object>{inner}</object></annotation>"


BBOX = "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox>"

# (id, xml text or bytes or builder, expect, names (None: target.xml / target.jpg by expect), isolate, forbid)
XML_CASES: List[tuple] = [
    ("unclosed", "<annotation><filename>target.jpg</filename><object><name>dent", {0: "reject"}),
    ("empty", "", {0: "reject"}),
    ("binary", lambda rng: rng.bytes(3000), {0: "reject"}),
    ("non-utf8", b'<?xml version="1.0" encoding="utf-8"?><annotation><filename>t\xff.jpg</filename></annotation>',
     {0: "reject"}),
    ("billion-laughs", BILLION_LAUGHS, {0: "reject"}, None, True),
    ("quadratic-blowup", QUADRATIC, {0: "reject"}, None, True),
    ("xxe-etc-passwd", XXE, {0: "reject"}, None, False, ("root:",)),
    ("deep-nesting-50000", "<annotation>" + "<a>" * 50000 + "</a>" * 50000 + "</annotation>", {0: "account"},
     ("target.xml", "target.jpg")),
    ("nan-coordinate", _box("nan", 1, 10, 10), {0: "reject"}),
    ("inf-coordinate", _box(1, 1, "inf", 10), {0: "reject"}),
    ("minus-inf-coordinate", _box("-inf", 1, 10, 10), {0: "reject"}),
    ("1e309-coordinate", _box(1, 1, "1e309", 10), {0: "reject"}),
    ("1e308-coordinate", _box(1, 1, "1e308", 10), {0: "account"}, ("target.xml", "target.jpg")),
    ("negative-box", _box(-50, -50, -10, -10), {0: "account"}, ("target.xml", "target.jpg")),
    ("missing-bndbox", _obj("<name>dent</name>"), {0: "reject"}),
    ("missing-name", _obj(BBOX), {0: "reject"}),
    ("empty-name", _obj("<name>  </name>" + BBOX), {0: "reject"}),
    ("non-numeric", _box("12px", 1, 20, 20), {0: "reject"}),
    ("hex-number", _box("0x10", 1, 20, 20), {0: "reject"}),
    ("comma-decimal", _box("10,5", 1, 20, 20), {0: "reject"}),
    ("inverted-box", _box(30, 30, 10, 10), {0: "reject"}),
    ("one-pixel-box", _box(5, 5, 5, 5), {0: "import"}),
    ("object-named-ok", _box(1, 1, 5, 5, name="ok"), {2: "error"}, "src"),
    ("object-name-markup", _box(1, 1, 5, 5, name="[/]dent"), {0: "import"}),
    ("object-name-newline", _box(1, 1, 5, 5, name="de\nnt"), {0: "import"}),
    ("filename-dotdot", voc_xml("../../outside/o.jpg", [("dent", 1, 1, 5, 5)]), {0: "reject"},
     ("target.xml", "../../outside/o.jpg"), False, ("o.jpg",)),
    ("filename-etc-passwd", voc_xml("/etc/passwd", [("dent", 1, 1, 5, 5)]), {0: "reject"},
     ("target.xml", "passwd"), False, ("passwd",)),
    ("filename-dev-zero", voc_xml("/dev/zero", [("dent", 1, 1, 5, 5)]), {0: "account"},
     ("target.xml", "target.jpg", "zero"), True),
    ("filename-fifo", voc_xml("pipe.jpg", [("dent", 1, 1, 5, 5)]), {0: "account"},
     ("target.xml", "target.jpg", "pipe.jpg"), True),
    ("filename-symlink-outside", voc_xml("link.jpg", [("dent", 1, 1, 5, 5)]), {0: "account"},
     ("target.xml", "link.jpg", "o.jpg")),
    ("filename-nul-char-ref", voc_xml("a&#0;b.jpg", [("dent", 1, 1, 5, 5)]).replace("&amp;#0;", "&#0;"),
     {0: "reject"}),
    ("internal-entity", '<!DOCTYPE annotation [<!ENTITY d "dent">]>' + _box(1, 1, 5, 5, name="&d;").replace(
        "&amp;d;", "&d;"), {0: "import"}),
    ("utf16-with-bom", ('<?xml version="1.0" encoding="utf-16"?>' + _box(1, 1, 5, 5)).encode("utf-16"),
     {0: "import"}),
    ("root-not-annotation", "<foo><filename>target.jpg</filename><object><name>dent</name>" + BBOX +
     "</object></foo>", {0: "account"}, ("target.xml", "target.jpg")),
    ("3000-objects", voc_xml("target.jpg", [("dent", i % 40 + 1, 1, i % 40 + 5, 9) for i in range(3000)]),
     {0: "import"}),
]


def _xml_case(text: Any, expect: Dict[int, str], names: Any, isolate: bool, forbid: Sequence[str], human: bool
              ) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        src = voc_src(ctx)
        write(src / "JPEGImages" / "target.jpg", good_jpeg(ctx.rng))
        write(ctx.root / "outside" / "o.jpg", good_jpeg(ctx.rng))
        if isolate:
            make_fifo(src / "JPEGImages" / "pipe.jpg")
        symlink(src / "JPEGImages" / "link.jpg", ctx.root / "outside" / "o.jpg")
        write(src / "Annotations" / "target.xml", text(ctx.rng) if callable(text) else text)
        if names == "src":
            nm: Sequence[str] = (str(src), "target.xml")
        elif names is None:
            nm = ("target.jpg",) if set(expect.values()) == {"import"} else ("target.xml",)
        else:
            nm = names
        return Setup(import_argv(src, ctx.root / "out", as_json=not human), expect, nm, out=ctx.root / "out",
                     isolate=isolate, forbid=forbid)

    return build


for _row in XML_CASES:
    _cid, _text, _expect, *_rest = _row
    _names = _rest[0] if _rest else None
    _isolate = _rest[1] if len(_rest) > 1 else False
    _forbid = _rest[2] if len(_rest) > 2 else ()
    add(f"xml-{_cid}", "voc-xml", _xml_case(_text, _expect, _names, _isolate, _forbid, human="markup" in _cid))


# --------------------------------------------------------------------------- 5. malformed YOLO data.yaml

ALIAS = "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
ALIAS_BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + ALIAS
OUTSIDE_YOLO = "outside-yolo"

# (id, data.yaml text/bytes, expect, names: "yaml" (data.yaml) | "src" (data.yaml or the source), isolate)
YAML_CASES: List[tuple] = [
    ("empty-file", "", {2: "error"}, "src"),
    ("a-list", "- a\n- b\n", {2: "error"}, "src"),
    ("a-scalar", "hello\n", {2: "error"}, "src"),
    ("null", "~\n", {2: "error"}, "src"),
    ("names-missing", "train: images/train\n", {2: "error"}, "src"),
    ("names-null", "train: images/train\nnames:\n", {2: "error"}, "yaml"),
    ("names-int", "train: images/train\nnames: 5\n", {2: "error"}, "yaml"),
    ("names-empty-list", "train: images/train\nnames: []\n", {2: "error"}, "yaml"),
    ("names-duplicate", "train: images/train\nnames: [a, a]\n", {2: "error"}, "yaml"),
    ("names-blank", "train: images/train\nnames: ['', b]\n", {2: "error"}, "yaml"),
    ("names-non-int-keys", "train: images/train\nnames: {a: x}\n", {2: "error"}, "yaml"),
    ("names-float-key", "train: images/train\nnames: {0.5: scratch}\n", {0: "ok", 2: "error"}, "yaml"),
    ("names-list-value", "train: images/train\nnames: {1: [1, 2]}\n", {0: "ok", 2: "error"}, "yaml"),
    ("names-dict-value", "train: images/train\nnames: {0: {a: b}}\n", {0: "ok", 2: "error"}, "yaml"),
    ("names-ok-class", "train: images/train\nnames: [scratch, ok]\n", {2: "error"}, "yaml"),
    ("tab-indent", "train: images/train\nnames:\n\t- scratch\n", {2: "error"}, "yaml"),
    ("binary", b"\x00\xff\xfe\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, {2: "error"}, "yaml"),
    ("non-utf8", b"train: images/train\nnames: [scr\xffatch]\n", {2: "error"}, "yaml"),
    ("python-tag", "train: images/train\nnames: !!python/object/apply:os.system ['true']\n", {2: "error"}, "yaml"),
    ("multi-document", "train: images/train\nnames: [scratch]\n---\nnames: [b]\n", {2: "error"}, "yaml"),
    ("nesting-5000", "train: images/train\nnames: " + "[" * 5000 + "]" * 5000 + "\n", {2: "error"}, "yaml"),
    ("alias-bomb-names", ALIAS_BOMB + "train: images/train\nnames: {0: *i}\n", {2: "error"}, "yaml", True),
    ("alias-bomb-train", ALIAS_BOMB + "train: *i\nnames: [scratch]\n", {2: "error"}, "yaml", True),
    ("train-dev-zero", "train: /dev/zero\nval: images/train\nnames: [scratch]\n", {0: "reject", 2: "error"},
     ("zero", "data.yaml"), True),
    ("train-fifo-list", "train: list.txt\nval: images/train\nnames: [scratch]\n", {0: "reject", 2: "error"},
     ("list.txt",), True),
    ("train-is-an-image", "train: images/other/x.png\nval: images/train\nnames: [scratch]\n",
     {0: "reject", 2: "error"}, ("x.png",)),
    ("train-int", "train: 5\nval: images/train\nnames: [scratch]\n", {0: "reject"}, "yaml"),
    ("train-mapping", "train: {a: b}\nval: images/train\nnames: [scratch]\n", {0: "reject", 2: "error"}, "yaml"),
    ("train-missing-folder", "train: images/nope\nval: images/train\nnames: [scratch]\n", {0: "reject"}, "yaml"),
    ("path-etc", "path: /etc\ntrain: images/train\nnames: [scratch]\n", {0: "ok"}, "yaml"),
    ("path-outside", f"path: ../{OUTSIDE_YOLO}\ntrain: images/train\nnames: [scratch]\n", {0: "ok", 2: "error"},
     "src"),
    ("path-int", "path: 123\ntrain: images/train\nnames: [scratch]\n", {0: "ok"}, "yaml"),
    ("utf8-bom", "\ufefftrain: images/train\nnames: [scratch]\n", {0: "ok"}, "yaml"),
    ("crlf", "train: images/train\r\nnames: [scratch]\r\n", {0: "ok"}, "yaml"),
]


def _yaml_case(text: Any, expect: Dict[int, str], names: Any, isolate: bool) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        src = yolo_src(ctx)
        write(src / "data.yaml", text)
        write(src / "images" / "other" / "x.png", good_png(ctx.rng))
        if isolate:
            make_fifo(src / "list.txt")
        other = ctx.root / OUTSIDE_YOLO
        write(other / "images" / "train" / "o.png", good_png(ctx.rng))
        write(other / "labels" / "train" / "o.txt", "0 0.5 0.5 0.2 0.2\n")
        nm = {"yaml": ("data.yaml",), "src": ("data.yaml", str(src))}.get(names, names) if isinstance(names, str) \
            else names
        return Setup(import_argv(src, ctx.root / "out"), expect, nm, out=ctx.root / "out", isolate=isolate)

    return build


for _row in YAML_CASES:
    _cid, _text, _expect, _names, *_rest = _row
    add(f"yaml-{_cid}", "yolo-yaml", _yaml_case(_text, _expect, _names, bool(_rest and _rest[0])))


def _yaml_file_special(make: Callable[[Path], Any], isolate: bool = False) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        src = yolo_src(ctx)
        (src / "data.yaml").unlink()
        make(src / "data.yaml")
        return Setup(import_argv(src, ctx.root / "out"), {2: "error"}, ("data.yaml", str(src)),
                     out=ctx.root / "out", isolate=isolate)

    return build


add("yaml-data-yaml-is-a-folder", "yolo-yaml", _yaml_file_special(lambda p: p.mkdir()))
add("yaml-data-yaml-dangling-symlink", "yolo-yaml", _yaml_file_special(lambda p: symlink(p, p.parent / "gone.yaml")))
add("yaml-data-yaml-dev-zero", "yolo-yaml", _yaml_file_special(lambda p: symlink(p, "/dev/zero"), isolate=True))
add("yaml-data-yaml-fifo", "yolo-yaml", _yaml_file_special(make_fifo, isolate=True))


# --------------------------------------------------------------------------- 6. YOLO label files

POLYGON_2000 = "0 " + " ".join(f"{0.5 + 0.4 * math.cos(t / 318.3):.5f} {0.5 + 0.4 * math.sin(t / 318.3):.5f}"
                               for t in range(2000)) + "\n"
LABEL_CASES: List[tuple] = [
    ("nan", "0 nan 0.5 0.1 0.1\n", "bad"),
    ("inf", "0 0.5 inf 0.1 0.1\n", "bad"),
    ("minus-inf", "0 -inf 0.5 0.1 0.1\n", "bad"),
    ("1e308-size", "0 0.5 0.5 1e308 0.1\n", "bad"),
    ("1e400-coordinate", "0 1e400 0.5 0.1 0.1\n", "bad"),
    ("extra-column", "0 0.5 0.5 0.1 0.1 0.3\n", "bad"),
    ("odd-polygon", "0 0.1 0.1 0.9 0.1 0.1 0.9 0.5\n", "bad"),
    ("class-minus-one", "-1 0.5 0.5 0.1 0.1\n", "bad"),
    ("class-99", "99 0.5 0.5 0.1 0.1\n", "bad"),
    ("class-1.5", "1.5 0.5 0.5 0.1 0.1\n", "bad"),
    ("class-nan", "nan 0.5 0.5 0.1 0.1\n", "bad"),
    ("class-inf", "inf 0.5 0.5 0.1 0.1\n", "bad"),
    ("class-1e30", "1e30 0.5 0.5 0.1 0.1\n", "bad"),
    ("commas", "0,0.5,0.5,0.1,0.1\n", "bad"),
    ("class-name", "scratch 0.5 0.5 0.1 0.1\n", "bad"),
    ("zero-width", "0 0.5 0.5 0 0.1\n", "bad"),
    ("negative-size", "0 0.5 0.5 -0.1 0.1\n", "bad"),
    ("outside", "0 1.5 0.5 0.1 0.1\n", "bad"),
    ("polygon-outside", "0 0.1 0.1 2.0 0.1 0.1 0.9\n", "bad"),
    ("nul-byte", "0 0.5\x00 0.5 0.1 0.1\n", "bad"),
    ("non-utf8", b"0 0.5 0.5 0.1 0.1\n\xff\xfe\n", "bad"),
    ("class-only", "0\n", "bad"),
    ("good-then-bad", "0 0.5 0.5 0.1 0.1\n0 0.5 0.5\n", "bad"),
    ("hex-float", "0 0x1p-1 0.5 0.1 0.1\n", "bad"),
    ("crlf", "0 0.5 0.5 0.2 0.2\r\n", "ok"),
    ("tabs", "0\t0.5\t0.5\t0.2\t0.2\n", "ok"),
    ("whitespace-only", "  \n\n \t\n", "ok"),
    ("scientific", "0 5e-1 5e-1 2e-1 2e-1\n", "ok"),
    ("class-as-float", "0.0 0.5 0.5 0.2 0.2\n", "ok"),
    ("plus-signs", "+0 +0.5 +0.5 +0.2 +0.2\n", "ok"),
    ("within-tolerance", "0 0.5 0.5 1.01 0.2\n", "ok"),
    ("polygon-2000-points", POLYGON_2000, "ok"),
    ("20000-boxes", "0 0.5 0.5 0.2 0.2\n" * 20000, "ok"),
    ("utf8-bom", "\ufeff0 0.5 0.5 0.2 0.2\n", "either"),
    ("degenerate-polygon", "0 0.5 0.5 0.5 0.5 0.5 0.5\n", "either"),
]


def _label_case(text: Any, validity: str) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        src = yolo_src(ctx)
        write(src / "images" / "train" / "target.png", good_png(ctx.rng))
        write(src / "labels" / "train" / "target.txt", text)
        names = {"bad": ("target.txt",), "ok": ("target.png",), "either": ("target.png", "target.txt")}[validity]
        return Setup(import_argv(src, ctx.root / "out"), BAD[validity], names, out=ctx.root / "out")

    return build


for _cid, _text, _validity in LABEL_CASES:
    add(f"label-{_cid}", "yolo-label", _label_case(_text, _validity))


def _label_special(make: Callable[[Path], Any], isolate: bool = False) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        src = yolo_src(ctx)
        write(src / "images" / "train" / "target.png", good_png(ctx.rng))
        make(src / "labels" / "train" / "target.txt")
        return Setup(import_argv(src, ctx.root / "out"), {0: "reject"}, ("target.png", "target.txt"),
                     out=ctx.root / "out", isolate=isolate)

    return build


add("label-is-a-folder", "yolo-label", _label_special(lambda p: p.mkdir()))
add("label-dangling-symlink", "yolo-label", _label_special(lambda p: symlink(p, p.parent / "gone.txt")))
add("label-symlink-dev-zero", "yolo-label", _label_special(lambda p: symlink(p, "/dev/zero"), isolate=True))
add("label-fifo", "yolo-label", _label_special(make_fifo, isolate=True))


# --------------------------------------------------------------------------- 7. an existing data set in --out

def _existing_out(make_src: Callable[[Ctx], Path], *extra: str, overwrite: bool = True, expect: Any = None
                  ) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        out = ctx.root / "existing"
        write_dataset(out, ctx.rng)
        src = make_src(ctx)
        args = (*extra, "--overwrite") if overwrite else extra
        names = (str(src), "existing", *(e for e in extra if not e.startswith("-")))  # or the bad option value
        return Setup(import_argv(src, out, *args), expect or {2: "error"}, names, out=out)

    return build


def _only(layout: str, data: bytes = b"") -> Callable[[Ctx], Path]:
    return lambda ctx: place_target(layout, ctx, "alone", data, ".png")[0]


def _broken_yaml(ctx: Ctx) -> Path:
    return yolo_src(ctx, yaml_text="names: [scratch\n")


def _broken_xml_only(ctx: Ctx) -> Path:
    src = voc_src(ctx, others=False)
    write(src / "JPEGImages" / "t.jpg", good_jpeg(ctx.rng))
    write(src / "Annotations" / "t.xml", "<annotation><object>")
    return src


def _empty_src(ctx: Ctx) -> Path:
    (ctx.root / "src").mkdir()
    return ctx.root / "src"


for _layout in ("imagefolder", "magnetic-tile", "mvtec", "voc", "yolo"):
    add(f"existing-out-overwrite-{_layout}-nothing-usable", "existing-output", _existing_out(_only(_layout)))
add("existing-out-overwrite-yolo-broken-yaml", "existing-output", _existing_out(_broken_yaml))
add("existing-out-overwrite-voc-broken-xml-only", "existing-output", _existing_out(_broken_xml_only))
add("existing-out-overwrite-no-layout", "existing-output", _existing_out(_empty_src))
add("existing-out-overwrite-src-missing", "existing-output", _existing_out(lambda c: c.root / "nosuchsrc"))
add("existing-out-overwrite-format-bogus", "existing-output", _existing_out(imagefolder_src, "--format", "bogus"))
add("existing-out-overwrite-ok-class-bogus", "existing-output", _existing_out(imagefolder_src, "--ok-class", "nope"))
add("existing-out-overwrite-copy-nothing-usable", "existing-output", _existing_out(_only("imagefolder"), "--copy"))
add("existing-out-no-overwrite", "existing-output", _existing_out(imagefolder_src, overwrite=False))
add("existing-out-overwrite-good-src", "existing-output", _existing_out(imagefolder_src, expect={0: "ok"}))


# --------------------------------------------------------------------------- 8. data validate

def _validate(ds: Path, as_json: bool = True) -> List[str]:
    return ["data", "validate", str(ds), *(["--json"] if as_json else []), "-q"]


VALIDITY = {"bad": {1: "invalid"}, "ok": {0: "ok"}, "either": {0: "ok", 1: "invalid"}}


def _validate_mutation(m: Mutation, kind: str) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        ds = ctx.root / "ds"
        recs = write_dataset(ds, ctx.rng)
        data = m.make(kind, ctx.rng)
        if kind == "image":
            rel = f"images/target{m.suffix}"
            size = image_size(data) or (IMG, IMG)
            recs[1].update(image=rel, sha256=sha(data), width=size[0], height=size[1])
        else:
            rel = "masks/target.png"
            recs[0]["mask"] = rel
        write(ds / rel, data)
        write_manifest(ds, recs)
        return Setup(_validate(ds), VALIDITY[m.valid_for(kind)], (Path(rel).name,))

    return build


for _kind in ("image", "mask"):
    for _m in MUTATIONS:
        add(f"validate-{_kind}-{_m.name}", f"validate-{_kind}", _validate_mutation(_m, _kind))


def _manifest_case(change: Callable[[Ctx, Path, List[Any]], Optional[List[Any]]], expect: Dict[int, str],
                   names: Sequence[str], isolate: bool = False, raw: Optional[Callable[[Ctx, Path], bytes]] = None
                   ) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        ds = ctx.root / "ds"
        recs: List[Any] = list(write_dataset(ds, ctx.rng))
        if raw is not None:
            write(ds / "manifest.jsonl", raw(ctx, ds))
        else:
            new = change(ctx, ds, recs)
            write_manifest(ds, recs if new is None else new)
        return Setup(_validate(ds), expect, names, isolate=isolate)

    return build


def _set(i: int, **kw: Any) -> Callable[[Ctx, Path, List[Any]], None]:
    def change(ctx: Ctx, ds: Path, recs: List[Any]) -> None:
        recs[i].update(kw)

    return change


def _drop(i: int, key: str) -> Callable[[Ctx, Path, List[Any]], None]:
    def change(ctx: Ctx, ds: Path, recs: List[Any]) -> None:
        del recs[i][key]

    return change


def _outside_record(ctx: Ctx, ds: Path, recs: List[Any]) -> None:
    """Record i1 names ../outside.png, beside the data set (another image than the manifest's sha256)."""
    write(ds.parent / "outside.png", good_png(ctx.rng))
    recs[1]["image"] = "../outside.png"


def _line(text: str, at: int = 1) -> Callable[[Ctx, Path, List[Any]], List[Any]]:
    return lambda ctx, ds, recs: [*recs[:at], text, *recs[at + 1:]]


def _raw_lines(recs_bytes: Callable[[List[bytes]], bytes]) -> Callable[[Ctx, Path], bytes]:
    def raw(ctx: Ctx, ds: Path) -> bytes:
        lines = (ds / "manifest.jsonl").read_bytes().splitlines()
        return recs_bytes(lines)

    return raw


def _file_at(rel: str, make: Callable[[Path], Any], i: int = 1, key: str = "image"
             ) -> Callable[[Ctx, Path, List[Any]], None]:
    def change(ctx: Ctx, ds: Path, recs: List[Any]) -> None:
        make(ds / rel)
        recs[i][key] = rel

    return change


M = "manifest.jsonl"
MANIFEST_CASES: List[tuple] = [
    ("non-utf8-line", None, {2: "error"}, (M,), False,
     _raw_lines(lambda ls: b"\n".join([*ls, b'{"id": "\xff\xfe"}']) + b"\n")),
    ("truncated-line", None, {2: "error"}, (M,), False, _raw_lines(lambda ls: b"\n".join(ls)[:-40])),
    ("not-json", _line("hello world"), {2: "error"}, (M,)),
    ("json-array", _line("[1, 2, 3]"), {2: "error"}, (M,)),
    ("json-null", _line("null"), {2: "error"}, (M,)),
    ("json-nesting-100000", _line("[" * 100000 + "]" * 100000), {2: "error"}, (M,)),
    ("width-string", _set(1, width="abc"), {2: "error"}, (M,)),
    ("width-negative", _set(1, width=-1), {2: "error"}, (M,)),
    ("width-fraction", _set(1, width=48.5), {2: "error"}, (M,)),
    ("width-nan", None, {2: "error"}, (M,), False,
     _raw_lines(lambda ls: b"\n".join(ls).replace(b'"width": 48', b'"width": NaN', 1) + b"\n")),
    ("width-10e30", _set(1, width=10 ** 30), {1: "invalid", 2: "error"}, (M, "i1.png")),
    ("id-int", _set(1, id=5), {2: "error"}, (M,)),
    ("extra-key", _set(1, colour="red"), {2: "error"}, (M,)),
    ("sha256-missing", _drop(1, "sha256"), {2: "error"}, (M,)),
    ("sha256-not-hex", _set(1, sha256="xyz"), {2: "error"}, (M,)),
    ("sha256-mismatch", _set(1, sha256="0" * 64), {1: "invalid"}, ("i1.png",)),
    ("size-mismatch", _set(1, width=50), {1: "invalid"}, ("i1.png",)),
    ("label-unknown", _set(1, label="nosuchclass"), {1: "invalid"}, ("i1.png",)),
    ("label-int", _set(1, label=3), {2: "error"}, (M,)),
    ("duplicate-id", _set(1, id="i0"), {1: "invalid"}, ("i0",)),
    ("split-bogus", _set(1, split="training"), {2: "error"}, (M,)),
    ("fold-string", _set(1, fold="x"), {2: "error"}, (M,)),
    ("source-bogus", _set(1, source="scraped"), {2: "error"}, (M,)),
    ("origin-not-object", _set(1, origin="importer"), {2: "error"}, (M,)),
    ("image-etc-passwd", _set(1, image="/etc/passwd"), {1: "invalid"}, ("passwd",)),
    ("image-dotdot-outside", _outside_record, {1: "invalid"}, ("outside.png",)),
    ("image-dev-zero", _set(1, image="/dev/zero"), {1: "invalid"}, ("/dev/zero",), True),
    ("image-fifo", _file_at("images/pipe.png", make_fifo), {1: "invalid"}, ("pipe.png",), True),
    ("image-is-a-folder", _file_at("images/adir.png", lambda p: p.mkdir()), {1: "invalid"}, ("adir.png",)),
    ("image-nul-byte", _set(1, image="images/i\x001.png"), {1: "invalid", 2: "error"}, ("i\x001.png", "i\\u00001",
                                                                                        M)),
    ("image-empty-string", _set(1, image=""), {1: "invalid", 2: "error"}, ("ds", M)),
    ("image-missing", _set(1, image="images/gone.png"), {1: "invalid"}, ("gone.png",)),
    ("image-dangling-symlink", _file_at("images/dangling.png", lambda p: symlink(p, p.parent / "gone.png")),
     {1: "invalid"}, ("dangling.png",)),
    ("image-5000-char-name", _set(1, image="images/" + "x" * 5000 + ".png"), {1: "invalid"}, ("x" * 50,)),
    ("mask-missing", _set(0, mask="masks/gone.png"), {1: "invalid"}, ("gone.png",)),
    ("mask-wrong-size", _file_at("masks/small.png", lambda p: write(p, mask_png(16, 16)), i=0, key="mask"),
     {1: "invalid"}, ("small.png",)),
    ("mask-dev-zero", _set(0, mask="/dev/zero"), {1: "invalid"}, ("/dev/zero",), True),
    ("box-nan", None, {2: "error"}, (M,), False, _raw_lines(
        lambda ls: b"\n".join(ls).replace(b'"label": "dent"', b'"label": "dent", "boxes": [{"label": "dent", '
                                          b'"x0": NaN, "y0": 0, "x1": 5, "y1": 5}]', 1) + b"\n")),
    ("box-infinite", None, {1: "invalid", 2: "error"}, (M, "i0"), False, _raw_lines(
        lambda ls: b"\n".join(ls).replace(b'"label": "dent"', b'"label": "dent", "boxes": [{"label": "dent", '
                                          b'"x0": 0, "y0": 0, "x1": Infinity, "y1": 5}]', 1) + b"\n")),
    ("box-outside-image", _set(0, boxes=[{"label": "dent", "x0": 0, "y0": 0, "x1": 1e6, "y1": 5}]),
     {0: "ok", 1: "invalid"}, ("i0", "i0.png")),
    ("zero-byte-manifest", None, {0: "ok", 2: "error"}, (M,), False, lambda ctx, ds: b""),
    ("utf8-bom", None, {0: "ok", 2: "error"}, (M,), False, _raw_lines(lambda ls: b"\xef\xbb\xbf" + b"\n".join(ls))),
    ("crlf", None, {0: "ok"}, (), False, _raw_lines(lambda ls: b"\r\n".join(ls) + b"\r\n")),
]

for _row in MANIFEST_CASES:
    _cid, _change, _expect, _names, *_rest = _row
    _isolate = _rest[0] if _rest else False
    _raw = _rest[1] if len(_rest) > 1 else None
    add(f"validate-manifest-{_cid}", "validate-manifest", _manifest_case(_change, _expect, _names, _isolate, _raw))


def _ds_file_case(name: str, make: Callable[[Ctx, Path], Any], expect: Optional[Dict[int, str]] = None,
                  names: Optional[Sequence[str]] = None, isolate: bool = False) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        ds = ctx.root / "ds"
        write_dataset(ds, ctx.rng)
        (ds / name).unlink()
        make(ctx, ds / name)
        return Setup(_validate(ds), expect or {2: "error"}, names or (name,), isolate=isolate)

    return build


def _text(t: Any) -> Callable[[Ctx, Path], Any]:
    return lambda ctx, p: write(p, t)


CLASSES_CASES: List[tuple] = [
    ("a-list", _text("- dent\n- ok\n")),
    ("zero-byte", _text("")),
    ("ok-class-a-list", _text("format: lineguard-dataset\nversion: 1\nclasses: [dent, scratch, ok]\n"
                              "ok_class: [ok]\n")),  # (no ok_class at all is a defect-type set: valid)
    ("ok-class-unknown", _text("format: lineguard-dataset\nversion: 1\nclasses: [dent, scratch, ok]\n"
                               "ok_class: good\n")),
    ("version-2", _text("format: lineguard-dataset\nversion: 2\nclasses: [dent, scratch, ok]\nok_class: ok\n")),
    ("format-other", _text("format: coco\nversion: 1\nclasses: [dent, scratch, ok]\nok_class: ok\n")),
    ("duplicate-classes", _text("format: lineguard-dataset\nversion: 1\nclasses: [dent, dent, ok]\nok_class: ok\n")),
    ("empty-classes", _text("format: lineguard-dataset\nversion: 1\nclasses: []\nok_class: ok\n")),
    ("int-classes", _text("format: lineguard-dataset\nversion: 1\nclasses: [1, 2, 3]\nok_class: 3\n")),
    ("non-utf8", _text(b"format: lineguard-dataset\nversion: 1\nclasses: [d\xffent, scratch, ok]\nok_class: ok\n")),
    ("binary", lambda ctx, p: write(p, ctx.rng.bytes(2000))),
    ("tab-indent", _text("format: lineguard-dataset\nversion: 1\nclasses:\n\t- dent\nok_class: ok\n")),
    ("python-tag", _text("format: lineguard-dataset\nversion: 1\nclasses: !!python/object/apply:os.system ['true']\n"
                         "ok_class: ok\n")),
    ("nesting-5000", _text("classes: " + "[" * 5000 + "]" * 5000 + "\nok_class: ok\n")),
    ("alias-bomb", _text(ALIAS_BOMB + "format: lineguard-dataset\nversion: 1\nclasses: *i\nok_class: ok\n"), True),
    ("is-a-folder", lambda ctx, p: p.mkdir()),
    ("dangling-symlink", lambda ctx, p: symlink(p, p.parent / "gone.yaml")),
    ("fifo", lambda ctx, p: make_fifo(p), True),
]
for _row in CLASSES_CASES:
    _cid, _make, *_rest = _row
    add(f"validate-classes-{_cid}", "validate-classes",
        _ds_file_case("classes.yaml", _make, isolate=bool(_rest and _rest[0])))

add("validate-rejects-malformed-line", "validate-manifest",
    _ds_file_case("rejects.jsonl", _text('{"path": 1}\n'), {1: "invalid", 2: "error"}, ("rejects.jsonl",)))
add("validate-rejects-non-utf8", "validate-manifest",
    _ds_file_case("rejects.jsonl", _text(b'{"path": "\xff", "reason": "x"}\n'), {0: "ok", 2: "error"},
                  ("rejects.jsonl",)))
add("validate-manifest-is-a-folder", "validate-manifest",
    _ds_file_case("manifest.jsonl", lambda ctx, p: p.mkdir(), {2: "error"}, (M,)))
add("validate-manifest-fifo", "validate-manifest",
    _ds_file_case("manifest.jsonl", lambda ctx, p: make_fifo(p), {2: "error"}, (M,), isolate=True))


def _root_case(make: Callable[[Ctx], Path], names: Callable[[Path], Sequence[str]]) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        ds = make(ctx)
        return Setup(_validate(ds), {2: "error"}, names(ds))

    return build


add("validate-root-missing", "validate-root", _root_case(lambda c: c.root / "nods", lambda d: (d.name,)))
add("validate-root-is-a-file", "validate-root", _root_case(lambda c: write(c.root / "ds.txt", "x"),
                                                           lambda d: (d.name,)))
add("validate-root-fifo", "validate-root", _root_case(lambda c: make_fifo(c.root / "dspipe"), lambda d: (d.name,)))
add("validate-root-empty-folder", "validate-root", _root_case(lambda c: (c.root / "ds").mkdir() or c.root / "ds",
                                                              lambda d: (str(d),)))
add("validate-root-an-import-source", "validate-root", _root_case(imagefolder_src, lambda d: (str(d),)))


def _valid_control(ctx: Ctx) -> Setup:
    ds = ctx.root / "ds"
    write_dataset(ds, ctx.rng, n=6)
    return Setup(_validate(ds), {0: "ok"}, ())


add("validate-control-valid", "validate-root", _valid_control)


def _import_control(layout: str) -> Callable[[Ctx], Setup]:
    def build(ctx: Ctx) -> Setup:
        src = place_target(layout, ctx, "image", good_png(ctx.rng), ".png")[0]
        return Setup(import_argv(src, ctx.root / "out"), {0: "import"}, ("target",), out=ctx.root / "out")

    return build


for _layout in ("imagefolder", "magnetic-tile", "mvtec", "voc", "yolo"):
    add(f"import-{_layout}-control-valid", f"import-file:{_layout}", _import_control(_layout))

assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
assert CLASSES  # the hand-written data sets' classes (dent, scratch, ok)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch,
                   fuzz_log: List[Dict[str, Any]], fuzz_assets_factory: Any) -> None:
    execute(case, tmp_path, capsys, monkeypatch, fuzz_log, fuzz_assets_factory)


def test_case_count() -> None:
    print(f"fuzz (data): {len(CASES)} cases")
    assert len(CASES) >= 300
