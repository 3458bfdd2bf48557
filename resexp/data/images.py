"""Image files: finding them under a class-per-folder root, checking them, decoding them.

Rules (documented for users in conf/data/image_folder.yaml):
- every visible sub-folder of data.root is a class, sorted by name; its images may sit in nested folders;
- only files with a known image extension count (IMAGE_EXTENSIONS, any case); everything else
  (README.txt, .DS_Store, hidden files and folders, files directly in the root) is ignored silently;
- a class folder without images is an error naming it (an empty class would change the label space);
- links are followed, but never into the root itself (a loop) or twice to one folder or file; a class
  folder that is a link to another class folder is an error naming both;
- every image is decoded once at start-up (a thread pool; JPEGs at reduced scale) so that a corrupt,
  truncated or empty file is found before training: data.on_bad_file=error stops with its path,
  data.on_bad_file=skip warns once and leaves it out; the result is cached per file (path, size,
  mtime: resexp/data/scan_cache.py), so a later start re-checks only new and changed files;
- any mode is converted to the set's channels: 16-bit grey is scaled to 8 bits, CMYK and palettes are
  converted, transparent pixels are composited onto white.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch import Tensor

from resexp.errors import DataError, error_line

log = logging.getLogger("resexp.data")

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
_SCAN_DRAFT = (64, 64)  # JPEGs are checked at up to 1/8 scale: the whole stream is still read


def _visible(name: str) -> bool:
    return not name.startswith(".")


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


class Seen:
    """What one walk over a data root has reached, by real identity (device, inode): a folder or a
    file reached through links a second time is not counted again."""

    def __init__(self):
        self.dirs: dict[tuple[int, int], str] = {}
        self.files: dict[tuple[int, int], str] = {}
        self.duplicates: list[tuple[str, str]] = []  # (path skipped, the path counted)
        self.stats: dict[str, tuple[int, int]] = {}  # file path -> (size, mtime_ns): the scan cache's key


def _identity(path: str | os.PathLike, seen: Seen | None = None) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows links: the identity of what the path leads to
    except OSError:
        return None  # a dangling link: left in, so that the bad-file scan names it
    if seen is not None:
        seen.stats[str(path)] = (st.st_size, st.st_mtime_ns)
    return st.st_dev, st.st_ino


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def image_files(folder: Path, root: Path | None = None, seen: Seen | None = None) -> list[Path]:
    """image_files_str as Paths."""
    return [Path(p) for p in image_files_str(folder, root, seen)]


def image_files_str(folder: Path, root: Path | None = None, seen: Seen | None = None) -> list[str]:
    """Image files under folder, recursively (hidden files and folders and other extensions
    skipped), sorted by their POSIX path: the same order on every machine.

    Links are followed, but a linked folder that resolves inside `root` (default: folder) is skipped
    with a warning: it is a loop (`ln -s .. loop`) or a second copy of images already counted, and
    following it would repeat files, or label another class's files as this one. No real folder is
    walked twice and no file counted twice (`seen` carries that across the class folders of a root)."""
    inside = os.path.realpath(root if root is not None else folder)
    seen = seen if seen is not None else Seen()
    found = []
    # strings, not Paths: pathlib costs several times the walk itself on a million files
    for dirpath, dirnames, filenames in os.walk(str(folder), followlinks=True):
        here = _identity(dirpath)
        if here in seen.dirs:  # two links to one folder outside the root
            log.warning(f"skipping folder {dirpath}: it is the folder {seen.dirs[here]}, already read")
            dirnames[:] = []
            continue
        seen.dirs[here] = dirpath
        keep = []
        for d in dirnames:
            full = os.path.join(dirpath, d)
            if not _visible(d):
                continue
            if os.path.islink(full) and _within(os.path.realpath(full), inside):
                log.warning(f"skipping linked folder {full} -> {os.path.realpath(full)}: it points inside "
                            f"{inside}, so it is a loop or a second copy of images counted elsewhere")
                continue
            keep.append(d)
        dirnames[:] = sorted(keep)  # the first path to a file is the one counted: same on every machine
        for f in sorted(filenames):
            if not (_visible(f) and f[f.rfind("."):].lower() in IMAGE_EXTENSIONS):  # splitext, faster
                continue
            path = dirpath + os.sep + f
            key = _identity(path, seen)
            if key is not None and key in seen.files:
                seen.duplicates.append((path, seen.files[key]))
                continue
            if key is not None:
                seen.files[key] = path
            found.append(path)
    return sorted(found, key=lambda p: p.replace(os.sep, "/")) if os.sep != "/" else sorted(found)


def class_folders(root: Path, set_name: str) -> list[str]:
    """The sorted class folder names under root (a cheap listing: no file inside is read)."""
    if not root.exists():
        raise DataError(
            f"data.root {root} does not exist (data={set_name}): pass data.root=/path/to/images, "
            "a folder with one sub-folder per class"
        )
    if not root.is_dir():
        raise DataError(f"data.root {root} is not a folder (data={set_name}): it must hold one sub-folder per class")
    names = sorted(e.name for e in os.scandir(root) if _visible(e.name) and e.is_dir())
    if not names:
        raise DataError(
            f"data.root {root} has no class folders (data={set_name}): expected {root}/<class name>/<images>, "
            "one sub-folder per class"
        )
    return names


def _check_distinct(root: Path, names: list[str]) -> None:
    """A class folder that is (a link to) another class folder, or to a folder inside one, would be a
    silent copy of that class under a second label."""
    owner: dict[str, str] = {}  # real path -> the first class folder there
    real = {n: os.path.realpath(root / n) for n in names}
    for name in names:
        if real[name] in owner:
            other = owner[real[name]]
            raise DataError(
                f"class folders {root / other} and {root / name} are the same folder ({real[name]}): its images "
                f"would be counted under two classes; remove the link or give each class its own images"
            )
        owner[real[name]] = name
    for name in names:
        for parent in Path(real[name]).parents:  # a few levels: no pairwise comparison of all classes
            if str(parent) in owner:
                raise DataError(
                    f"class folder {root / name} is a folder inside class folder {root / owner[str(parent)]} "
                    f"({real[name]}): its images would be counted under two classes; remove the link"
                )


def list_images(root: Path, set_name: str, seen: Seen | None = None) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(relative POSIX path, label)]) in a machine-independent order: sorted paths.
    `seen.stats` gets every listed file's (size, mtime_ns) from the stat the listing makes anyway."""
    names = class_folders(root, set_name)
    _check_distinct(root, names)
    files: list[tuple[str, int]] = []
    empty = []
    seen = seen if seen is not None else Seen()
    for label, name in enumerate(names):
        found = image_files_str(root / name, root=root, seen=seen)
        if not found:
            empty.append(str(root / name))
        cut = len(str(root).rstrip(os.sep)) + 1
        files.extend((p[cut:].replace(os.sep, "/"), label) for p in found)
    if empty:
        raise DataError(
            f"class folder(s) without images under data.root {root}: {', '.join(empty)}; every sub-folder is a "
            f"class, so add images ({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder(s)"
        )
    if seen.duplicates:
        again, first = seen.duplicates[0]
        log.warning(f"{len(seen.duplicates)} image file(s) under data.root {root} are reached twice through "
                    f"links and counted once (e.g. {again} is {first})")
    return names, files


# ------------------------------------------------------------------------------------------ decode
def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> 'RGB' (channels=3) or 'L' (channels=1)."""
    target = "RGB" if channels == 3 else "L"
    mode = img.mode
    if mode == target and "transparency" not in img.info:
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0  # 16-bit range -> 8-bit
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    elif mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img if img.mode == target else img.convert(target)


def open_image(path: str | os.PathLike, channels: int, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode a file fully (a truncated file raises) into 'RGB' or 'L'. `draft` lets JPEG decode at
    a reduced scale that is still at least that size (much faster for large photos)."""
    im = Image.open(path)
    out = None
    try:
        if draft is not None:
            im.draft("RGB" if channels == 3 else "L", draft)
        im.load()  # a single-frame file is closed here; the pixels stay
        out = to_channels(im, channels)
    finally:
        if out is not im:
            im.close()
    return out


def _check(path: Path, channels: int) -> str | None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone relaxed PIL globally: we still want to see truncation
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        open_image(path, channels, _SCAN_DRAFT)
        return None
    except Exception as e:  # noqa: BLE001 - any failure to decode makes the file unusable
        if os.path.getsize(path) == 0:
            return f"{type(e).__name__}: empty file (0 bytes)"
        return error_line(e, limit=None)


def find_bad_images(paths: Sequence[Path], channels: int, threads: int | None = None) -> list[tuple[Path, str]]:
    """Decode every file once (a thread pool: PIL releases the GIL while decoding); the failures."""
    if not paths:
        return []
    threads = threads or min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda p: _check(p, channels), paths, chunksize=16))
    return [(p, err) for p, err in zip(paths, results, strict=True) if err is not None]


def report_bad(bad: list[tuple[Path, str]], root: Path, policy: str) -> None:
    """data.on_bad_file: error -> DataError listing the first files; skip -> one warning."""
    if not bad:
        return
    shown = "; ".join(f"{p} ({err})" for p, err in bad[:3]) + ("; ..." if len(bad) > 3 else "")
    if policy == "error":
        raise DataError(
            f"{len(bad)} unreadable image file(s) under data.root {root}: {shown}. Fix or delete them, "
            "or pass data.on_bad_file=skip to train without them"
        )
    log.warning(f"skipping {len(bad)} unreadable image file(s) under {root} (data.on_bad_file=skip): {shown}")


def decode_tensor(blob: bytes, channels: int) -> Tensor:
    """Encoded bytes -> uint8 [C, H, W]: JPEGs by torchvision.io.decode_jpeg (about 2x PIL's decode +
    conversion per core, benchmarks/RESULTS.md), anything else by PIL with open_image's conversions."""
    if blob[:3] == b"\xff\xd8\xff":
        import warnings

        import torchvision.io as tio

        with warnings.catch_warnings():  # deprecated since torchvision 0.29 in favour of TorchCodec
            warnings.simplefilter("ignore", DeprecationWarning)
            mode = tio.ImageReadMode.RGB if channels == 3 else tio.ImageReadMode.GRAY
            return tio.decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=mode)
    import io

    return pil_to_uint8(open_image(io.BytesIO(blob), channels))


def pil_to_uint8(img: Image.Image) -> Tensor:
    """PIL 'RGB' / 'L' -> uint8 [C, H, W]."""
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()
