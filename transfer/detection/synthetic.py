"""Tiny detection data sets in the GENUINE VOC and COCO formats, for tests and CPU benchmarks.

No machine here can download VOC or COCO, so this writes small look-alikes that the engines' own
loaders and evaluators read unchanged: ``VOC2007``/``VOC2012`` (Annotations/*.xml with 1-based
pixel boxes, ImageSets/Main/*.txt, JPEGImages/*.jpg) and ``coco`` (instances_{train,val}2017.json
with all 80 categories, polygon masks for instances and uncompressed-RLE masks for crowd regions,
{train,val}2017/*.jpg). Each class is drawn as one (shape, colour) pair -- rectangles, ellipses,
triangles -- on a textured background, so a detector can learn them in a few hundred iterations.

Run: ``python -m transfer.detection.synthetic ROOT [--voc] [--coco] [--size 128] ...``
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from transfer.detection.datasets import COCO_CATEGORIES, VOC_CLASSES

MARKER = ".us3l-synthetic"  # written in each generated folder: only such folders are replaced
SHAPES = ("rectangle", "ellipse", "triangle")
COLOURS = ((220, 40, 40), (40, 190, 60), (40, 80, 230), (235, 215, 40), (210, 50, 200),
           (40, 210, 220), (245, 140, 20))
COCO_DEFAULT_CLASSES = ("person", "car", "dog", "cat", "bird", "bus", "bottle", "chair")


@dataclass
class Obj:
    """One drawn object: its class, its polygon (x, y pairs in pixel-edge coordinates) and the
    exact pixels it covers."""
    cls: str
    polygon: list[float]
    mask: np.ndarray  # bool (h, w)
    crowd: bool = False


def appearance(index: int) -> tuple[str, tuple[int, int, int]]:
    """The (shape, colour) of the ``index``-th class of a data set (unique for up to 21)."""
    if index >= len(SHAPES) * len(COLOURS):
        raise ValueError(f"at most {len(SHAPES) * len(COLOURS)} classes can be told apart")
    return SHAPES[index % len(SHAPES)], COLOURS[index // len(SHAPES)]


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted low-frequency noise plus stripes and grain: texture without saturated colour."""
    coarse = rng.uniform(70, 180, size=(max(2, h // 16), max(2, w // 16), 1))
    tint = rng.uniform(-15, 15, size=(1, 1, 3))
    base = np.asarray(Image.fromarray((coarse[..., 0]).astype(np.uint8)).resize(
        (w, h), Image.BILINEAR), dtype=np.float32)[..., None] + tint
    theta, period = rng.uniform(0, math.pi), rng.uniform(6, 20)
    yy, xx = np.mgrid[0:h, 0:w]
    stripes = 18 * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
    img = base + stripes[..., None] + rng.normal(0, 8, size=(h, w, 3))
    return np.clip(img, 0, 255)


def _polygon(rng: np.random.Generator, shape: str, x0: float, y0: float, bw: float, bh: float
             ) -> list[float]:
    if shape == "rectangle":
        pts = [(x0, y0), (x0 + bw, y0), (x0 + bw, y0 + bh), (x0, y0 + bh)]
    elif shape == "ellipse":
        cx, cy, rx, ry = x0 + bw / 2, y0 + bh / 2, bw / 2, bh / 2
        pts = [(cx + rx * math.cos(t), cy + ry * math.sin(t))
               for t in np.linspace(0, 2 * math.pi, 32, endpoint=False)]
    else:  # triangle: flat base, apex anywhere along the top
        apex = x0 + rng.uniform(0.2, 0.8) * bw
        pts = [(x0, y0 + bh), (x0 + bw, y0 + bh), (apex, y0)]
    return [round(float(v), 2) for p in pts for v in p]


def _raster(polygon: list[float], h: int, w: int) -> np.ndarray:
    canvas = Image.new("L", (w, h), 0)
    ImageDraw.Draw(canvas).polygon(list(zip(polygon[0::2], polygon[1::2])), fill=1)
    return np.asarray(canvas, dtype=bool)


def _free(occupied: np.ndarray, x0: int, y0: int, x1: int, y1: int, margin: int = 3) -> bool:
    h, w = occupied.shape
    return not occupied[max(0, y0 - margin):min(h, y1 + margin),
                        max(0, x0 - margin):min(w, x1 + margin)].any()


def draw_image(rng: np.random.Generator, classes: tuple[str, ...], size: int,
               max_objects: int = 3, crowd_prob: float = 0.0) -> tuple[np.ndarray, list[Obj]]:
    """One image (uint8 HxWx3) and its objects; objects never overlap, so masks are exact."""
    w = int(rng.integers(size * 3 // 4, size + 1))
    h = int(rng.integers(size * 3 // 4, size + 1))
    img = _background(rng, h, w)
    occupied = np.zeros((h, w), dtype=bool)
    objects: list[Obj] = []
    # >= 36 px: mmdet's VOC config ignores boxes under 32 px (bbox_min_size)
    lo = max(36, int(0.3 * min(h, w)))
    hi = max(lo + 1, int(0.6 * min(h, w)))
    wanted = int(rng.integers(1, max_objects + 1))
    for _ in range(50 * wanted):
        if len(objects) == wanted:
            break
        k = int(rng.integers(len(classes)))
        bw, bh = rng.uniform(lo, hi), rng.uniform(lo, hi)
        x0, y0 = rng.uniform(1, w - bw - 1), rng.uniform(1, h - bh - 1)
        if not _free(occupied, int(x0), int(y0), int(x0 + bw) + 1, int(y0 + bh) + 1):
            continue
        shape, _ = appearance(k)
        poly = _polygon(rng, shape, x0, y0, bw, bh)
        mask = _raster(poly, h, w)
        occupied |= mask
        objects.append(Obj(classes[k], poly, mask))
    if crowd_prob and rng.uniform() < crowd_prob:
        crowd = _crowd(rng, classes, occupied)
        if crowd is not None:
            occupied |= crowd.mask
            objects.append(crowd)
    for obj in objects:
        _, colour = appearance(classes.index(obj.cls))
        shade = np.asarray(colour, dtype=np.float32) + rng.normal(0, 12, size=(h, w, 3))
        img[obj.mask] = shade[obj.mask]
    return np.clip(img, 0, 255).astype(np.uint8), objects


def _crowd(rng: np.random.Generator, classes: tuple[str, ...], occupied: np.ndarray) -> Obj | None:
    """A COCO-style crowd region: a cluster of small blobs of one class, one RLE mask."""
    h, w = occupied.shape
    cw, ch = int(min(48, w * 0.4)), int(min(36, h * 0.3))
    for _ in range(30):
        x0, y0 = int(rng.integers(1, w - cw - 1)), int(rng.integers(1, h - ch - 1))
        if _free(occupied, x0, y0, x0 + cw, y0 + ch):
            break
    else:
        return None
    k = int(rng.integers(len(classes)))
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(3, 6))):
        r = rng.uniform(4, 7)
        cx, cy = rng.uniform(x0 + r, x0 + cw - r), rng.uniform(y0 + r, y0 + ch - r)
        mask |= _raster(_polygon(rng, "ellipse", cx - r, cy - r, 2 * r, 2 * r), h, w)
    return Obj(classes[k], [], mask, crowd=True)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths starting with a run of zeros)."""
    flat = np.asfortranarray(mask).reshape(-1, order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _save_jpg(img: np.ndarray, path: Path) -> None:
    Image.fromarray(img).save(path, quality=92)


def _voc_xml(folder: str, image_id: str, img: np.ndarray, objects: list[Obj]) -> ET.ElementTree:
    """A VOC annotation: boxes are 1-based inclusive pixel indices, like the real files."""
    h, w = img.shape[:2]
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    source = ET.SubElement(root, "source")
    ET.SubElement(source, "database").text = "us3l synthetic"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        rows, cols = np.flatnonzero(obj.mask.any(1)), np.flatnonzero(obj.mask.any(0))
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj.cls
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = "0"
        ET.SubElement(node, "difficult").text = "0"
        box = ET.SubElement(node, "bndbox")
        for tag, value in (("xmin", cols[0] + 1), ("ymin", rows[0] + 1),
                           ("xmax", cols[-1] + 1), ("ymax", rows[-1] + 1)):
            ET.SubElement(box, tag).text = str(int(value))
    ET.indent(root)
    return ET.ElementTree(root)


def write_voc_year(out: Path, year: int, splits: dict[str, int], rng: np.random.Generator,
                   size: int, classes: tuple[str, ...] = VOC_CLASSES) -> dict[str, int]:
    """``out`` = .../VOC<year>; ``splits`` = {"trainval": n, "test": n} (2012: trainval only)."""
    folder = f"VOC{year}"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    counter, lists = 0, {}
    per_class: dict[str, dict[str, list[str]]] = {}
    for split, n in splits.items():
        ids = []
        for _ in range(n):
            counter += 1
            image_id = f"{counter:06d}" if year == 2007 else f"{year}_{counter:06d}"
            img, objects = draw_image(rng, classes, size)
            _save_jpg(img, out / "JPEGImages" / f"{image_id}.jpg")
            _voc_xml(folder, image_id, img, objects).write(out / "Annotations" / f"{image_id}.xml")
            ids.append(image_id)
            present = {o.cls for o in objects}
            for cls in classes:
                per_class.setdefault(cls, {}).setdefault(split, []).append(
                    f"{image_id} {1 if cls in present else -1:>2d}")
        lists[split] = ids
    if "trainval" in lists:  # the official sets also have train/val halves
        lists["train"], lists["val"] = lists["trainval"][0::2], lists["trainval"][1::2]
    main = out / "ImageSets" / "Main"
    for split, ids in lists.items():
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    for cls, by_split in per_class.items():
        for split, lines in by_split.items():
            (main / f"{cls}_{split}.txt").write_text("".join(f"{line}\n" for line in lines))
    return {split: len(ids) for split, ids in lists.items()}


def _coco_json(rng: np.random.Generator, image_dir: Path, n: int, size: int,
               classes: tuple[str, ...], first_id: int, crowd_prob: float) -> dict:
    from pycocotools import mask as mask_utils

    name_to_id = {name: cid for cid, name, _ in COCO_CATEGORIES}
    images, annotations = [], []
    for image_id in range(first_id, first_id + n):
        img, objects = draw_image(rng, classes, size, crowd_prob=crowd_prob)
        h, w = img.shape[:2]
        file_name = f"{image_id:012d}.jpg"
        _save_jpg(img, image_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w,
                       "license": 1, "date_captured": "2017-01-01 00:00:00"})
        for obj in objects:
            if obj.crowd:
                segmentation = uncompressed_rle(obj.mask)
                rle = mask_utils.frPyObjects(segmentation, h, w)
            else:
                segmentation = [obj.polygon]
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
            annotations.append({
                "id": len(annotations) + 1 + first_id * 100, "image_id": image_id,
                "category_id": name_to_id[obj.cls], "segmentation": segmentation,
                "area": float(mask_utils.area(rle)),
                "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
                "iscrowd": int(obj.crowd)})
    return {
        "info": {"description": "us3l synthetic COCO-format data", "version": "1.0", "year": 2017},
        "licenses": [{"id": 1, "name": "CC0", "url": ""}],
        "images": images, "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": sup}
                       for cid, name, sup in COCO_CATEGORIES],
    }


def write_coco(out: Path, splits: dict[str, int], rng: np.random.Generator, size: int,
               classes: tuple[str, ...] = COCO_DEFAULT_CLASSES, crowd_prob: float = 0.3
               ) -> dict[str, int]:
    """``out`` = .../coco; ``splits`` = {"train": n, "val": n} -> instances_{split}2017.json."""
    known = {name for _, name, _ in COCO_CATEGORIES}
    unknown = sorted(set(classes) - known)
    if unknown:
        raise ValueError(f"{unknown} are not COCO categories")
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {}
    for index, (split, n) in enumerate(splits.items()):
        image_dir = out / f"{split}2017"
        image_dir.mkdir(exist_ok=True)
        data = _coco_json(rng, image_dir, n, size, classes, first_id=1 + index * 100000,
                          crowd_prob=crowd_prob)
        (out / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
        counts[split] = n
    return counts


def _replace(final: Path, build) -> dict:
    """Write a folder in a temp sibling, then swap it in; never clobber a non-synthetic folder."""
    if final.exists() and not (final / MARKER).is_file():
        raise FileExistsError(f"{final} exists and was not written by this generator; "
                              f"choose another root (real data is never overwritten)")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        result = build(tmp)
        (tmp / MARKER).write_text("generated by transfer.detection.synthetic\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def make_voc(root: str | Path, n_trainval07: int = 16, n_test07: int = 16,
             n_trainval12: int = 16, size: int = 128, seed: int = 0) -> dict:
    """VOC2007 (trainval + test) and VOC2012 (trainval) with all 20 VOC classes."""
    root = Path(root)
    out = {}
    for year, splits in ((2007, {"trainval": n_trainval07, "test": n_test07}),
                         (2012, {"trainval": n_trainval12})):
        rng = np.random.default_rng([seed, year])
        out[f"VOC{year}"] = _replace(root / f"VOC{year}",
                                     lambda tmp: write_voc_year(tmp, year, splits, rng, size))
    return out


def make_coco(root: str | Path, n_train: int = 16, n_val: int = 16, size: int = 128,
              seed: int = 0, classes: tuple[str, ...] = COCO_DEFAULT_CLASSES,
              crowd_prob: float = 0.3) -> dict:
    """coco/ with train2017 and val2017 (all 80 categories listed, ``classes`` drawn)."""
    rng = np.random.default_rng([seed, 2017])
    return {"coco": _replace(Path(root) / "coco", lambda tmp: write_coco(
        tmp, {"train": n_train, "val": n_val}, rng, size, classes, crowd_prob))}


def main(argv: list[str] | None = None) -> int:
    from pretrain import cli
    parser = cli.ArgumentParser(prog="python -m transfer.detection.synthetic",
                                description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="data root (what $DETECTRON2_DATASETS will point at)")
    parser.add_argument("--voc", action="store_true", help="write VOC2007 and VOC2012")
    parser.add_argument("--coco", action="store_true", help="write coco/")
    parser.add_argument("--train", type=cli.int_at_least(1), default=16,
                        help="images per training split")
    parser.add_argument("--test", type=cli.int_at_least(1), default=16,
                        help="images in VOC2007 test / val2017")
    parser.add_argument("--size", type=cli.int_at_least(64), default=128,
                        help="longest image side in pixels")
    parser.add_argument("--seed", type=cli.int_at_least(0), default=0)
    args = parser.parse_args(argv)
    if not (args.voc or args.coco):
        args.voc = args.coco = True
    from transfer.pipeline import output_folder_problem
    problem = output_folder_problem(args.root)
    if problem:
        print(f"{parser.prog}: error: {args.root}: {problem}; pass another root", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    try:
        if args.voc:
            print(make_voc(args.root, args.train, args.test, args.train, args.size, args.seed))
        if args.coco:
            print(make_coco(args.root, args.train, args.test, args.size, args.seed))
    except (FileExistsError, ValueError) as err:
        print(f"{parser.prog}: error: {cli.one_line(err)}", file=sys.stderr)
        return cli.EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    from pretrain import cli as _cli
    sys.exit(_cli.run(main, "python -m transfer.detection.synthetic"))
