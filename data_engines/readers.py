"""Readers of public annotation formats into the sample schema (see docs/data.md), and a writer.

Every reader turns its format into candidate samples; one shared pass (``_Validator``) then checks
each image and each object against the image and drops what is invalid, counting the reason in a
``ReadReport``. Nothing invalid is kept silently and no bad record crashes the read.

Formats: ``coco``, ``lvis``, ``odvg``, ``refcoco``, ``rexomni_eval``, ``omnilabel``, ``d3`` and
``jsonl`` (this project's own sample schema). ``read_dataset`` detects the format when not told.

Image paths in the samples are the annotation's paths joined to ``image_root`` (default: the
folder of the annotation file).
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from .masks import mask_bbox, polygons_to_mask, rle_decode, rle_encode

FORMATS = ("coco", "lvis", "odvg", "refcoco", "rexomni_eval", "omnilabel", "d3", "jsonl")

# A box may overshoot the image by this many pixels (rounding in the annotation tools) and is then
# clipped; farther out it is an annotation error and the object is dropped.
BORDER_TOLERANCE = 1.0

# Drop reasons (one wording each, so reports of different readers add up).
MISSING_IMAGE = "image: missing image file"
CORRUPT_IMAGE = "image: corrupt image"
SIZE_MISMATCH = "image: size differs from the annotation"
UNKNOWN_SIZE = "image: unknown size"
BAD_RECORD = "image: malformed record"
MALFORMED_BOX = "object: malformed box"
NEGATIVE_SIZE = "object: negative size"
EMPTY_BOX = "object: zero-area box"
OUTSIDE = "object: box outside image"
UNKNOWN_CATEGORY = "object: unknown category"
MISSING_PHRASE = "object: no phrase"
BAD_MASK = "object: malformed mask"
MALFORMED_OBJECT = "object: malformed record"
CROWD = "object: crowd region"


@dataclass
class ReadReport:
    """What a read kept and what it dropped, per reason."""

    format: str
    path: str
    samples: int = 0
    objects: int = 0
    dropped: Counter = field(default_factory=Counter)

    def drop(self, reason: str, n: int = 1) -> None:
        if n > 0:
            self.dropped[reason] += n

    @property
    def dropped_objects(self) -> int:
        return sum(n for r, n in self.dropped.items() if r.startswith("object:"))

    @property
    def dropped_images(self) -> int:
        return sum(n for r, n in self.dropped.items() if r.startswith("image:"))

    def to_dict(self) -> dict:
        return {"format": self.format, "path": self.path, "samples": self.samples, "objects": self.objects,
                "dropped": dict(sorted(self.dropped.items()))}

    def __str__(self) -> str:
        lines = [f"{self.path} ({self.format}): kept {self.samples} images, {self.objects} objects; "
                 f"dropped {self.dropped_images} images, {self.dropped_objects} objects"]
        lines += [f"  dropped {n:>7}  {reason}" for reason, n in sorted(self.dropped.items())]
        return "\n".join(lines)


# --------------------------------------------------------------------------- entry points


def read_dataset(path: str | os.PathLike, format: str | None = None, image_root: str | None = None,
                 check_images: bool = True, **options) -> tuple[list[dict], ReadReport]:
    """Read an annotation file (or folder) into samples of the sample schema.

    ``check_images`` opens each image header: a missing or unreadable file drops the sample, and
    images without a size in the annotation get it from the file. ``options`` go to the format's
    reader (``split`` for refcoco, ``masks=False`` to skip rasterising COCO polygons).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset path {path!r} does not exist")
    format = format or detect_format(path)
    if format not in READERS:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {FORMATS}")
    if image_root is None:
        image_root = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    report = ReadReport(format, path)
    validator = _Validator(image_root, check_images, report)
    from tqdm import tqdm

    samples = []
    candidates = READERS[format](path, report, **options)
    for candidate in tqdm(candidates, desc=f"read {os.path.basename(path)}", unit="image", disable=None, leave=False):
        sample = validator(candidate)
        if sample is not None:
            sample.setdefault("source", format)
            samples.append(sample)
    _JSON_CACHE.clear()  # a COCO-sized file should not stay in memory after the read
    return samples, report


def write_samples(samples: Iterable[dict], path: str | os.PathLike) -> int:
    """Write samples as JSON Lines (one image per line); returns the number written."""
    n = 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
            n += 1
    return n


def iter_jsonl(path: str, report: ReadReport | None = None) -> Iterator[dict]:
    """Records of a JSON Lines file; an unparsable line is counted (when a report is given) and skipped."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if report is None:
                    raise ValueError(f"{path}:{line_no}: not valid JSON") from None
                report.drop(BAD_RECORD)
                continue
            if isinstance(record, dict):
                yield record
            elif report is not None:
                report.drop(BAD_RECORD)


def detect_format(path: str) -> str:
    """Guess the format from the file's layout and first record; raises if nothing fits."""
    if os.path.isdir(path):
        names = os.listdir(path)
        if {"sentences.pkl", "annotations.pkl", "images.pkl", "groups.pkl"} <= set(names):
            return "d3"
        if any(n.startswith("refs") and n.endswith(".p") for n in names):
            return "refcoco"
        raise ValueError(f"cannot tell the dataset format of folder {path!r}; pass format=")
    if path.endswith((".p", ".pkl")):
        return "refcoco"
    if path.endswith(".jsonl"):
        first = next(iter_jsonl(path, ReadReport("?", path)), None) or {}
        if "image_path" in first and ("gt" in first or "gt_mask" in first):
            return "rexomni_eval"
        if "filename" in first and ("detection" in first or "grounding" in first):
            return "odvg"
        if "image" in first and "objects" in first:
            return "jsonl"
        raise ValueError(f"cannot tell the format of {path!r} from its first record keys {sorted(first)[:8]}")
    data = _load_json(path)
    if isinstance(data, dict) and "descriptions" in data:
        return "omnilabel"
    if isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data):
        images = data["images"][:50]
        if any("neg_category_ids" in im or ("coco_url" in im and "file_name" not in im) for im in images):
            return "lvis"
        return "coco"
    raise ValueError(f"cannot tell the dataset format of {path!r}; pass format=")


_JSON_CACHE: dict[str, Any] = {}


def _load_json(path: str) -> Any:
    # detect_format and the reader both need the file: parse it once.
    key = os.path.abspath(path)
    if key not in _JSON_CACHE:
        _JSON_CACHE.clear()
        try:
            with open(path, encoding="utf-8") as f:
                _JSON_CACHE[key] = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
    return _JSON_CACHE[key]


# --------------------------------------------------------------------------- validation


class _Validator:
    """Checks a candidate sample's image and objects; returns the clean sample or None."""

    def __init__(self, image_root: str, check_images: bool, report: ReadReport):
        self.image_root, self.check_images, self.report = image_root, check_images, report

    def __call__(self, sample: dict) -> dict | None:
        report = self.report
        if not isinstance(sample.get("image"), str) or not sample["image"]:
            report.drop(BAD_RECORD)
            return None
        sample["image"] = os.path.join(self.image_root, sample["image"])
        if not self._check_image(sample):
            return None
        width, height = sample["width"], sample["height"]
        objects = []
        for obj in sample.get("objects", []):
            reason = _clean_object(obj, width, height)
            if reason:
                report.drop(reason)
                sample.pop("exhaustive", None)  # an object left out: the labels are no longer complete
            else:
                objects.append(obj)
        sample["objects"] = objects
        negatives = sample.get("negatives")
        if negatives:
            boxes = []
            for box in negatives.get("boxes", []):
                box, reason = _clean_box(box, width, height)
                if reason:
                    report.drop(reason.replace("object:", "object: negative box,"))
                else:
                    boxes.append(box)
            negatives["boxes"] = boxes
            sample["negatives"] = {k: v for k, v in negatives.items() if v}
            if not sample["negatives"]:
                del sample["negatives"]
        report.samples += 1
        report.objects += len(objects)
        return sample

    def _check_image(self, sample: dict) -> bool:
        report, path = self.report, sample["image"]
        size = (sample.get("width"), sample.get("height"))
        if self.check_images:
            if not os.path.isfile(path):
                report.drop(MISSING_IMAGE)
                return False
            try:
                with Image.open(path) as im:
                    file_size = im.size
                    im.verify()
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                report.drop(CORRUPT_IMAGE)
                return False
            if size[0] is None or size[1] is None:
                size = file_size
            elif tuple(int(s) for s in size) != file_size:
                report.drop(SIZE_MISMATCH)
                return False
        try:
            width, height = int(size[0]), int(size[1])
        except (TypeError, ValueError):
            report.drop(UNKNOWN_SIZE)
            return False
        if width <= 0 or height <= 0:
            report.drop(UNKNOWN_SIZE)
            return False
        sample["width"], sample["height"] = width, height
        return True


def _clean_box(box: Any, width: int, height: int) -> tuple[list[float] | None, str | None]:
    """A pixel xyxy box checked against the image: (clipped box, None) or (None, drop reason)."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError):
        return None, MALFORMED_BOX
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None, MALFORMED_BOX
    if x1 < x0 or y1 < y0:
        return None, NEGATIVE_SIZE
    if x1 == x0 or y1 == y0:
        return None, EMPTY_BOX
    t = BORDER_TOLERANCE
    if x0 < -t or y0 < -t or x1 > width + t or y1 > height + t:
        return None, OUTSIDE
    return [max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))], None


def _clean_object(obj: dict, width: int, height: int) -> str | None:
    """Checks (and clips) an object in place; returns a drop reason or None."""
    if obj.pop("_unknown_category", False):
        return UNKNOWN_CATEGORY
    if not isinstance(obj.get("phrase"), str) or not obj["phrase"].strip():
        return MISSING_PHRASE
    obj["phrase"] = obj["phrase"].strip()
    if obj.get("mask") is not None:
        mask = obj["mask"]
        if not isinstance(mask, dict) or list(mask.get("size", [])) != [height, width]:
            return BAD_MASK
    if obj.get("bbox") is None and obj.get("mask") is not None:
        try:
            obj["bbox"] = mask_bbox(rle_decode(obj["mask"]))
        except ValueError:
            return BAD_MASK
        if obj["bbox"] is None:
            return EMPTY_BOX
    if obj.get("bbox") is not None:
        box, reason = _clean_box(obj["bbox"], width, height)
        if reason:
            return reason
        obj["bbox"] = box
    elif obj.get("point") is None and obj.get("polygon") is None:
        return MALFORMED_BOX
    for key in ("point",):
        if obj.get(key) is not None:
            x, y = obj[key]
            t = BORDER_TOLERANCE
            if not (-t <= x <= width + t and -t <= y <= height + t):
                return OUTSIDE
    return None


def xywh_to_xyxy(box: Any) -> Any:
    """COCO ``[x, y, w, h]`` -> ``[x0, y0, x1, y1]``; anything malformed passes through for the validator."""
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        return box
    return [x, y, x + w, y + h]


def category_phrase(name: str) -> str:
    """A category name as the readers write it: LVIS's ``aerosol_can`` -> ``aerosol can``."""
    return " ".join(str(name).replace("_", " ").split())


def _segmentation_mask(segmentation: Any, height: int | None, width: int | None) -> dict | None:
    """COCO segmentation (polygons, RLE or uncompressed RLE) -> compressed RLE in the schema form."""
    if not segmentation or not height or not width:
        return None
    try:
        if isinstance(segmentation, list):
            return rle_encode(polygons_to_mask(segmentation, height, width))
        if isinstance(segmentation, dict):
            if isinstance(segmentation.get("counts"), list):
                return rle_encode(rle_decode(segmentation))
            counts = segmentation["counts"]
            return {"size": [int(v) for v in segmentation["size"]],
                    "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}
    except (ValueError, KeyError, TypeError):
        return {"size": [-1, -1], "counts": ""}  # marked malformed; the validator drops the object
    return None


# --------------------------------------------------------------------------- COCO and LVIS


def _read_coco(path: str, report: ReadReport, masks: bool = True, keep_crowd: bool = False,
               lvis: bool = False) -> Iterator[dict]:
    data = _load_json(path)
    categories = {c["id"]: c for c in data.get("categories", [])}
    names = {cid: category_phrase(c.get("name", "")) for cid, c in categories.items()}
    by_image = defaultdict(list)
    for ann in data.get("annotations", []):
        by_image[ann.get("image_id")].append(ann)
    for image in data.get("images", []):
        file_name = image.get("file_name")
        if not file_name and image.get("coco_url"):
            # LVIS lists COCO images by URL: .../train2017/000000391895.jpg -> train2017/000000391895.jpg
            file_name = "/".join(image["coco_url"].split("/")[-2:])
        height, width = image.get("height"), image.get("width")
        objects = []
        for ann in by_image.get(image.get("id"), []):
            if ann.get("iscrowd") and not keep_crowd:
                report.drop(CROWD)
                continue
            category = categories.get(ann.get("category_id"))
            obj: dict[str, Any] = {"phrase": names.get(ann.get("category_id"), ""),
                                   "bbox": xywh_to_xyxy(ann.get("bbox"))}
            if ann.get("area") is not None:
                obj["area"] = float(ann["area"])  # COCO sizes objects (APs/m/l) by this polygon area
            if ann.get("iscrowd"):
                obj["iscrowd"] = 1
            if category is None:
                obj["_unknown_category"] = True
            elif masks and ann.get("segmentation"):
                obj["mask"] = _segmentation_mask(ann["segmentation"], height, width)
            if category is not None and ann.get("keypoints") and category.get("keypoints"):
                obj["keypoints"] = _coco_keypoints(ann["keypoints"], category["keypoints"])
            objects.append(obj)
        sample = {"image": file_name, "width": width, "height": height, "objects": objects}
        # Which phrases are verified on this image: every category for COCO (exhaustive), the
        # present ones plus the verified-absent ones for LVIS (not exhaustive).
        if lvis:
            verified = {o["phrase"] for o in objects if o["phrase"]}
            verified |= {names[c] for c in image.get("neg_category_ids", []) if c in names}
            sample["categories"] = sorted(verified)
            # categories whose absence elsewhere on the image was not checked: evaluation ignores them
            not_exhaustive = [names[c] for c in image.get("not_exhaustive_category_ids", []) if c in names]
            if not_exhaustive:
                sample["not_exhaustive_categories"] = sorted(not_exhaustive)
        else:
            sample["categories"] = sorted(set(names.values()))
            # Every instance of every category is labelled, except inside crowd regions: such an image
            # can teach naming everything in it (data_engines.tasks' detect_all). LVIS never is.
            if not any(ann.get("iscrowd") for ann in by_image.get(image.get("id"), [])):
                sample["exhaustive"] = True
        yield sample


def _coco_keypoints(flat: list, names: list[str]) -> dict:
    """COCO ``[x, y, v] * K`` -> ``{name: [x, y]}`` for the labelled joints (v > 0)."""
    points = {}
    for i, name in enumerate(names):
        x, y, v = flat[3 * i: 3 * i + 3]
        if v > 0:
            points[category_phrase(name)] = [float(x), float(y)]
    return points


def _read_lvis(path: str, report: ReadReport, **options) -> Iterator[dict]:
    return _read_coco(path, report, lvis=True, **options)


# --------------------------------------------------------------------------- ODVG


def _read_odvg(path: str, report: ReadReport, label_map: str | dict | None = None) -> Iterator[dict]:
    """ODVG JSONL: ``detection.instances`` (bbox xyxy, label, category) or ``grounding.regions``."""
    if isinstance(label_map, str):
        with open(label_map, encoding="utf-8") as f:
            label_map = json.load(f)
    label_map = {str(k): v for k, v in (label_map or {}).items()}
    for record in iter_jsonl(path, report):
        objects = []
        if "detection" in record:
            for inst in (record["detection"] or {}).get("instances", []):
                name = inst.get("category") or label_map.get(str(inst.get("label")))
                obj = {"phrase": category_phrase(name) if name else "", "bbox": inst.get("bbox")}
                if not name:
                    obj["_unknown_category"] = True
                objects.append(obj)
        elif "grounding" in record:
            for region in (record["grounding"] or {}).get("regions", []):
                # a region may list several boxes for one phrase
                boxes = region.get("bbox")
                boxes = boxes if boxes and isinstance(boxes[0], (list, tuple)) else [boxes]
                objects += [{"phrase": region.get("phrase", ""), "bbox": b} for b in boxes]
        sample = {"image": record.get("filename"), "width": record.get("width"), "height": record.get("height"),
                  "objects": objects}
        if "grounding" in record and record["grounding"].get("caption"):
            sample["caption"] = record["grounding"]["caption"]
        yield sample


# --------------------------------------------------------------------------- pickles


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _DataUnpickler(pickle.Unpickler):
    """Builds plain data only: every global (any class or callable) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise _RefusedGlobal(f"{module}.{name}")


def load_data_pickle(path: str | os.PathLike) -> Any:
    """Load a pickle that holds only lists, dicts, strings and numbers (RefCOCO's refs, D3's tables).

    These files are downloaded from the web, and a plain ``pickle.load`` runs whatever code a crafted
    file names. Plain data needs no class or function, so any reference to one is refused with a
    ``ValueError`` before it is called. Python 2 pickles load as with ``pickle.load`` (ASCII strings)."""
    with open(path, "rb") as f:
        try:
            return _DataUnpickler(f).load()
        except _RefusedGlobal as e:
            raise ValueError(f"{path}: refused to load '{e}' (loading a class or function could run code); "
                             "an annotation pickle holds only lists, dicts, strings and numbers") from None


# --------------------------------------------------------------------------- RefCOCO


def _read_refcoco(path: str, report: ReadReport, split: str | None = None, masks: bool = True) -> Iterator[dict]:
    """``refs(*).p`` (a pickled list of refs) with ``instances.json`` beside it; one sample per image,
    one object per referring sentence."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
        refs_files = sorted(n for n in os.listdir(path) if n.startswith("refs") and n.endswith(".p"))
        path = os.path.join(path, refs_files[0])
    refs = load_data_pickle(path)
    instances_path = os.path.join(folder, "instances.json")
    if not os.path.exists(instances_path):
        raise FileNotFoundError(f"refcoco needs {instances_path} next to {path}")
    instances = _load_json(instances_path)
    images = {im["id"]: im for im in instances["images"]}
    anns = {a["id"]: a for a in instances["annotations"]}
    by_image: dict[Any, list[dict]] = defaultdict(list)
    for ref in refs:
        if split is not None and ref.get("split") != split:
            continue
        ann = anns.get(ref.get("ann_id"))
        image = images.get(ref.get("image_id"))
        if image is None:
            report.drop(BAD_RECORD)
            continue
        for sentence in ref.get("sentences", []):
            phrase = sentence.get("sent") or sentence.get("raw") or ""
            obj: dict[str, Any] = {"phrase": phrase, "bbox": xywh_to_xyxy(ann["bbox"]) if ann else None}
            if ann is None:
                obj["_unknown_category"] = True
            elif masks and ann.get("segmentation"):
                obj["mask"] = _segmentation_mask(ann["segmentation"], image.get("height"), image.get("width"))
            by_image[image["id"]].append(obj)
    for image_id, objects in by_image.items():
        image = images[image_id]
        yield {"image": image["file_name"], "width": image.get("width"), "height": image.get("height"),
               "objects": objects}


# --------------------------------------------------------------------------- released Rex-Omni eval


def _read_rexomni_eval(path: str, report: ReadReport) -> Iterator[dict]:
    """One record per image: ``image_path``, ``categories``, ``gt`` {category: [xyxy, ...]} or
    ``gt_mask`` {category: [RLE, ...]}, ``dataset_name``, ``task_name``, ``visual_prompt``."""
    for record in iter_jsonl(path, report):
        objects = []
        for category, boxes in (record.get("gt") or {}).items():
            objects += [{"phrase": category, "bbox": box} for box in boxes or []]
        for category, rles in (record.get("gt_mask") or {}).items():
            for rle in rles if isinstance(rles, list) else [rles]:
                objects.append({"phrase": category, "mask": _normalise_rle(rle)})
        sample = {"image": record.get("image_path"), "width": record.get("width") or record.get("image_width"),
                  "height": record.get("height") or record.get("image_height"), "objects": objects,
                  "categories": list(record.get("categories") or []),
                  "task_name": record.get("task_name"), "dataset_name": record.get("dataset_name")}
        if record.get("visual_prompt") is not None:
            sample["visual_prompt"] = record["visual_prompt"]
        if record.get("dataset_name"):
            sample["source"] = record["dataset_name"]
        yield sample


def _normalise_rle(rle: Any) -> Any:
    if isinstance(rle, dict) and isinstance(rle.get("counts"), list):
        try:
            return rle_encode(rle_decode(rle))
        except ValueError:
            return {"size": [-1, -1], "counts": ""}
    return rle


# --------------------------------------------------------------------------- OmniLabel


def _read_omnilabel(path: str, report: ReadReport) -> Iterator[dict]:
    """COCO-like JSON with ``descriptions`` (id, text, image_ids); annotations name ``description_ids``.
    A description in an image's label space without a box there is verified absent."""
    data = _load_json(path)
    texts = {d["id"]: d["text"] for d in data.get("descriptions", [])}
    label_space = defaultdict(list)
    for d in data.get("descriptions", []):
        for image_id in d.get("image_ids", []):
            label_space[image_id].append(d["text"])
    by_image = defaultdict(list)
    for ann in data.get("annotations", []):
        by_image[ann.get("image_id")].append(ann)
    for image in data.get("images", []):
        objects = []
        for ann in by_image.get(image["id"], []):
            for did in ann.get("description_ids", []):
                obj = {"phrase": texts.get(did, ""), "bbox": xywh_to_xyxy(ann.get("bbox"))}
                if did not in texts:
                    obj["_unknown_category"] = True
                objects.append(obj)
        yield {"image": image.get("file_name"), "width": image.get("width"), "height": image.get("height"),
               "objects": objects, "categories": sorted(set(label_space.get(image["id"], [])))}


# --------------------------------------------------------------------------- D3


def _read_d3(path: str, report: ReadReport, masks: bool = True) -> Iterator[dict]:
    """The D3 annotation folder (images.pkl, annotations.pkl, sentences.pkl, groups.pkl, each a dict
    id -> record). Each image is asked the sentences of its group (the intra-group protocol)."""
    tables = {}
    for name in ("images", "annotations", "sentences", "groups"):
        tables[name] = load_data_pickle(os.path.join(path, f"{name}.pkl"))
    sentences, groups, annotations = tables["sentences"], tables["groups"], tables["annotations"]
    for image in tables["images"].values():
        height, width = image.get("height"), image.get("width")
        objects = []
        for anno_id in image.get("anno_id", []):
            ann = annotations.get(anno_id)
            if ann is None:
                report.drop(MALFORMED_OBJECT)
                continue
            for sent_id in _as_list(ann.get("sent_id")):
                sentence = sentences.get(sent_id)
                obj: dict[str, Any] = {"phrase": sentence["raw_sent"] if sentence else "",
                                       "bbox": xywh_to_xyxy(ann.get("bbox"))}
                if sentence is None:
                    obj["_unknown_category"] = True
                elif masks and ann.get("segmentation"):
                    seg = ann["segmentation"]
                    if isinstance(seg, list) and seg and isinstance(seg[0], dict):
                        seg = seg[0]  # D3 stores the RLE inside a one-element list
                    obj["mask"] = _segmentation_mask(seg, height, width)
                objects.append(obj)
        asked = []
        for group_id in _as_list(image.get("group_id")):
            group = groups.get(group_id, {})
            asked += [sentences[s]["raw_sent"] for s in group.get("inner_sent_id", []) if s in sentences]
        yield {"image": image.get("file_name"), "width": width, "height": height, "objects": objects,
               "categories": sorted(set(asked) | {o["phrase"] for o in objects if o["phrase"]})}


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, set)) else [value]


# --------------------------------------------------------------------------- our own schema


def _read_jsonl(path: str, report: ReadReport) -> Iterator[dict]:
    for record in iter_jsonl(path, report):
        if not isinstance(record.get("objects"), list):
            report.drop(BAD_RECORD)
            continue
        objects = [o for o in record["objects"] if isinstance(o, dict)]
        report.drop(MALFORMED_OBJECT, len(record["objects"]) - len(objects))
        record["objects"] = objects
        yield record


READERS: dict[str, Callable[..., Iterable[dict]]] = {
    "coco": _read_coco,
    "lvis": _read_lvis,
    "odvg": _read_odvg,
    "refcoco": _read_refcoco,
    "rexomni_eval": _read_rexomni_eval,
    "omnilabel": _read_omnilabel,
    "d3": _read_d3,
    "jsonl": _read_jsonl,
}


def sample_vocabulary(samples: Iterable[dict]) -> list[str]:
    """Every phrase of a set of samples (objects and verified categories), sorted."""
    vocab = set()
    for s in samples:
        vocab.update(o["phrase"] for o in s["objects"])
        vocab.update(s.get("categories", []))
    return sorted(vocab)


__all__ = ["FORMATS", "ReadReport", "category_phrase", "read_dataset", "write_samples", "detect_format", "iter_jsonl",
           "sample_vocabulary", "xywh_to_xyxy"]
