"""Readers of public formats: each is fed a small file written in the real format, with a few
invalid annotations planted, and must keep the good ones, drop the bad ones and count why."""

import json
import pickle

import numpy as np
import pytest
from PIL import Image
from rexomni.data_engines import readers
from rexomni.data_engines.masks import deepest_point, mask_bbox, polygons_to_mask, rle_decode, rle_encode
from rexomni.data_engines.readers import read_dataset, write_samples


@pytest.fixture
def images(tmp_path):
    """Three 64x48 images (a.png, b.png, c.png), a corrupt one (bad.png); m.png is never written."""
    for name in ("a", "b", "c"):
        Image.new("RGB", (64, 48), (10, 20, 30)).save(tmp_path / f"{name}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    return tmp_path


def _coco(lvis=False):
    images = [
        {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
        {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
        {"id": 3, "file_name": "m.png", "width": 64, "height": 48},     # missing file
        {"id": 4, "file_name": "bad.png", "width": 64, "height": 48},   # corrupt file
    ]
    if lvis:
        for im in images:
            im["coco_url"] = "http://images.example/train2017/" + im.pop("file_name")
            im["neg_category_ids"] = [2]
            im["not_exhaustive_category_ids"] = [1] if im["id"] == 1 else []
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 20], "iscrowd": 0, "area": 190.5,
         "segmentation": [[2, 3, 12, 3, 12, 23, 2, 23]]},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 40, 20, 20], "iscrowd": 0},   # outside
        {"id": 3, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5], "iscrowd": 0},       # unknown category
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5, -3, 4], "iscrowd": 0},      # negative size
        {"id": 5, "image_id": 2, "category_id": 2, "bbox": [0, 0, 64, 48], "iscrowd": 0,
         "keypoints": [10, 10, 2, 0, 0, 0], "num_keypoints": 1},
        {"id": 6, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1},       # crowd
        {"id": 7, "image_id": 3, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
    ]
    cats = [{"id": 1, "name": "traffic_light" if lvis else "traffic light"},
            {"id": 2, "name": "person", "keypoints": ["nose", "left_eye"]}]
    return {"images": images, "annotations": anns, "categories": cats}


def test_coco_reader_keeps_valid_and_counts_drops(images):
    (images / "instances.json").write_text(json.dumps(_coco()))
    samples, report = read_dataset(images / "instances.json")
    assert report.format == "coco"
    assert [s["image"].endswith(n) for s, n in zip(samples, ("a.png", "b.png"))] == [True, True]
    a, b = samples
    assert a["objects"][0]["phrase"] == "traffic light"
    assert a["objects"][0]["bbox"] == [2.0, 3.0, 12.0, 23.0]
    assert a["objects"][0]["area"] == 190.5  # COCO's own area sizes objects for APs/m/l
    assert mask_bbox(rle_decode(a["objects"][0]["mask"])) == [2.0, 3.0, 13.0, 24.0]  # polygon edge pixels included
    assert b["objects"][0]["keypoints"] == {"nose": [10.0, 10.0]}  # the unlabelled eye is left out
    assert a["categories"] == ["person", "traffic light"]  # COCO is exhaustive: every category verified
    assert report.dropped == {readers.OUTSIDE: 1, readers.UNKNOWN_CATEGORY: 1, readers.NEGATIVE_SIZE: 1,
                              readers.CROWD: 1, readers.MISSING_IMAGE: 1, readers.CORRUPT_IMAGE: 1}
    assert (report.samples, report.objects) == (2, 2)
    assert "dropped" in str(report)


def test_lvis_reader_uses_urls_and_verified_negatives(images):
    (images / "train2017").mkdir()
    for n in ("a", "b"):
        (images / f"{n}.png").rename(images / "train2017" / f"{n}.png")
    (images / "lvis.json").write_text(json.dumps(_coco(lvis=True)))
    samples, report = read_dataset(images / "lvis.json")
    assert report.format == "lvis"
    assert samples[0]["objects"][0]["phrase"] == "traffic light"
    assert samples[0]["categories"] == ["person", "traffic light"]  # present + neg_category_ids
    assert samples[0]["not_exhaustive_categories"] == ["traffic light"]
    assert "not_exhaustive_categories" not in samples[1]
    assert report.dropped[readers.MISSING_IMAGE] == 2  # m.png and bad.png are not under train2017/


def test_unchecked_images_are_trusted(images):
    (images / "instances.json").write_text(json.dumps(_coco()))
    samples, report = read_dataset(images / "instances.json", check_images=False, masks=False)
    assert len(samples) == 4 and readers.MISSING_IMAGE not in report.dropped
    assert all("mask" not in o for s in samples for o in s["objects"])


def test_odvg_detection_and_grounding(images):
    records = [
        {"filename": "a.png", "height": 48, "width": 64,
         "detection": {"instances": [{"bbox": [1, 2, 30, 40], "label": 0, "category": "dog"},
                                     {"bbox": [1, 2, 30, 40], "label": 7},                      # no name
                                     {"bbox": [10, 10, 5, 20], "label": 0, "category": "dog"}]}},  # x1 < x0
        {"filename": "b.png", "height": 48, "width": 64,
         "grounding": {"caption": "a red ball and a cat", "regions": [
             {"bbox": [[1, 1, 9, 9], [20, 20, 30, 30]], "phrase": "a red ball"},
             {"bbox": [0, 0, 90, 40], "phrase": "a cat"}]}},                                      # outside
    ]
    (images / "odvg.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{broken\n")
    samples, report = read_dataset(images / "odvg.jsonl", label_map={"0": "dog"})
    assert report.format == "odvg"
    assert [o["phrase"] for o in samples[0]["objects"]] == ["dog"]
    assert [o["bbox"] for o in samples[1]["objects"]] == [[1, 1, 9, 9], [20, 20, 30, 30]]
    assert samples[1]["caption"] == "a red ball and a cat"
    assert report.dropped == {readers.UNKNOWN_CATEGORY: 1, readers.NEGATIVE_SIZE: 1, readers.OUTSIDE: 1,
                              readers.BAD_RECORD: 1}


def test_refcoco_pickle_with_instances(images):
    folder = images / "refcoco"
    folder.mkdir()
    instances = {"images": [{"id": 1, "file_name": "../a.png", "width": 64, "height": 48},
                            {"id": 2, "file_name": "../m.png", "width": 64, "height": 48}],
                 "annotations": [{"id": 11, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20],
                                  "segmentation": [[4, 4, 24, 4, 24, 24, 4, 24]], "iscrowd": 0},
                                 {"id": 12, "image_id": 2, "category_id": 1, "bbox": [4, 4, 20, 20], "iscrowd": 0}],
                 "categories": [{"id": 1, "name": "person"}]}
    refs = [{"ref_id": 0, "ann_id": 11, "image_id": 1, "split": "val", "category_id": 1,
             "sentences": [{"sent": "man on the left", "raw": "Man on the left."}, {"sent": "left guy"}]},
            {"ref_id": 1, "ann_id": 99, "image_id": 1, "split": "val", "sentences": [{"sent": "ghost"}]},
            {"ref_id": 2, "ann_id": 12, "image_id": 2, "split": "val", "sentences": [{"sent": "nobody"}]},
            {"ref_id": 3, "ann_id": 11, "image_id": 1, "split": "train", "sentences": [{"sent": "train only"}]}]
    (folder / "instances.json").write_text(json.dumps(instances))
    with open(folder / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    samples, report = read_dataset(folder, split="val", image_root=str(folder))
    assert report.format == "refcoco"
    assert [o["phrase"] for o in samples[0]["objects"]] == ["man on the left", "left guy"]
    assert samples[0]["objects"][0]["bbox"] == [4.0, 4.0, 24.0, 24.0]
    point = deepest_point(rle_decode(samples[0]["objects"][0]["mask"]))
    assert 12 <= point[0] <= 16 and 12 <= point[1] <= 16
    assert report.dropped == {readers.UNKNOWN_CATEGORY: 1, readers.MISSING_IMAGE: 1}


def test_rexomni_eval_keeps_the_question(images):
    mask = np.zeros((48, 64), bool)
    mask[10:20, 30:50] = True
    records = [
        {"image_path": "a.png", "categories": ["cat", "dog"], "gt": {"cat": [[1, 1, 10, 10]], "dog": []},
         "dataset_name": "COCO", "task_name": "box"},
        {"image_path": "b.png", "categories": ["cat"], "gt_mask": {"cat": [rle_encode(mask)]},
         "dataset_name": "COCO", "task_name": "point"},
        {"image_path": "c.png", "categories": ["cat"], "gt": {"cat": [[-20, 1, 10, 10]]},
         "dataset_name": "COCO", "task_name": "box"},
        {"image_path": "m.png", "categories": ["cat"], "gt": {"cat": []}, "dataset_name": "COCO", "task_name": "box"},
    ]
    (images / "eval.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    samples, report = read_dataset(images / "eval.jsonl")
    assert report.format == "rexomni_eval"
    assert samples[0]["categories"] == ["cat", "dog"] and samples[0]["task_name"] == "box"
    assert (samples[0]["width"], samples[0]["height"]) == (64, 48)  # from the image header
    assert samples[0]["source"] == "COCO"
    assert samples[1]["objects"][0]["bbox"] == [30.0, 10.0, 50.0, 20.0]  # box derived from the mask
    assert samples[2]["objects"] == []
    assert report.dropped == {readers.OUTSIDE: 1, readers.MISSING_IMAGE: 1}


def test_omnilabel_descriptions(images):
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
            "descriptions": [{"id": 1, "text": "dog on a leash", "image_ids": [1]},
                             {"id": 2, "text": "cat without a collar", "image_ids": [1]}],
            "annotations": [{"id": 1, "image_id": 1, "bbox": [1, 1, 20, 20], "description_ids": [1, 5]},
                            {"id": 2, "image_id": 1, "bbox": [40, 30, 0, 10], "description_ids": [1]}]}
    (images / "omni.json").write_text(json.dumps(data))
    samples, report = read_dataset(images / "omni.json")
    assert report.format == "omnilabel"
    assert [o["phrase"] for o in samples[0]["objects"]] == ["dog on a leash"]
    assert samples[0]["categories"] == ["cat without a collar", "dog on a leash"]
    assert report.dropped == {readers.UNKNOWN_CATEGORY: 1, readers.EMPTY_BOX: 1}


def test_d3_pickles(images):
    folder = images / "d3_pkl"
    folder.mkdir()
    tables = {
        "images": {1: {"id": 1, "file_name": "a.png", "height": 48, "width": 64, "anno_id": [1, 2], "group_id": 7},
                   2: {"id": 2, "file_name": "bad.png", "height": 48, "width": 64, "anno_id": [], "group_id": 7}},
        "annotations": {1: {"id": 1, "sent_id": [3], "bbox": [2, 2, 10, 10], "image_id": 1, "group_id": 7,
                            "segmentation": [rle_encode(polygons_to_mask([[2, 2, 12, 2, 12, 12]], 48, 64))]},
                        2: {"id": 2, "sent_id": [4], "bbox": [2, 2, 10, 10], "image_id": 1, "group_id": 7}},
        "sentences": {3: {"id": 3, "raw_sent": "a dog not held by a leash", "is_negative": True},
                      5: {"id": 5, "raw_sent": "a person riding a bike", "is_negative": False}},
        "groups": {7: {"id": 7, "inner_sent_id": [3, 5], "img_id": [1, 2]}},
    }
    for name, table in tables.items():
        with open(folder / f"{name}.pkl", "wb") as f:
            pickle.dump(table, f)
    samples, report = read_dataset(folder, image_root=str(images))
    assert report.format == "d3"
    assert [o["phrase"] for o in samples[0]["objects"]] == ["a dog not held by a leash"]
    assert "mask" in samples[0]["objects"][0]
    assert samples[0]["categories"] == ["a dog not held by a leash", "a person riding a bike"]
    assert report.dropped == {readers.UNKNOWN_CATEGORY: 1, readers.CORRUPT_IMAGE: 1}


class _Payload:
    """Unpickling this calls os.system, which would write the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch '{self.marker}'",)


def test_pickles_that_call_code_are_refused(images, tmp_path):
    marker = tmp_path / "pwned"
    refcoco = images / "refcoco"
    refcoco.mkdir()
    (refcoco / "instances.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with open(refcoco / "refs(unc).p", "wb") as f:
        pickle.dump([{"ref_id": 0, "sentences": [{"sent": "x"}]}, _Payload(marker)], f)
    with pytest.raises(ValueError, match=r"refs\(unc\)\.p: refused to load '(posix|nt)\.system'"):
        read_dataset(refcoco, image_root=str(refcoco))
    d3 = images / "d3_pkl"
    d3.mkdir()
    for name in ("images", "annotations", "sentences", "groups"):
        with open(d3 / f"{name}.pkl", "wb") as f:
            pickle.dump({1: _Payload(marker)} if name == "sentences" else {}, f)
    with pytest.raises(ValueError, match=r"sentences\.pkl: refused to load .*lists, dicts, strings and numbers"):
        read_dataset(d3, image_root=str(images))
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [0, 2, pickle.DEFAULT_PROTOCOL])
def test_plain_data_pickles_still_load(tmp_path, protocol):
    data = [{"ref_id": 0, "split": "val", "sentences": [{"sent": "man on the left", "tokens": ["man", "left"]}],
             "bbox": [1.5, 2, 3, 4], "ok": True, "none": None, "big": 2**70, "neg": -3, "t": (1, "a")},
            {3: {"raw_sent": "caf\u00e9 \u00e0 gauche", "is_negative": False}}]
    path = tmp_path / f"plain{protocol}.pkl"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    assert readers.load_data_pickle(path) == data
    assert readers.load_data_pickle(str(path)) == data
    path.write_bytes(pickle.dumps([data, len], protocol=protocol))   # a harmless global is still refused
    with pytest.raises(ValueError, match=r"plain\d+\.pkl: refused to load '(builtins|__builtin__)\.len'"):
        readers.load_data_pickle(path)


def test_own_jsonl_round_trip_and_negatives(images, tmp_path):
    samples = [{"image": "a.png", "width": 64, "height": 48,
                "objects": [{"phrase": "red car", "bbox": [1, 1, 30, 30], "point": [5, 5]},
                            {"phrase": "", "bbox": [1, 1, 3, 3]}],
                "negatives": {"phrases": ["blue car"], "boxes": [[2, 2, 8, 8], [0, 0, 200, 8]]}},
               {"image": "b.png", "width": 50, "height": 48, "objects": []}]  # wrong width
    write_samples(samples, images / "s.jsonl")
    out, report = read_dataset(images / "s.jsonl")
    assert report.format == "jsonl"
    assert len(out) == 1 and out[0]["objects"][0]["phrase"] == "red car"
    assert out[0]["negatives"] == {"phrases": ["blue car"], "boxes": [[2.0, 2.0, 8.0, 8.0]]}
    assert report.dropped[readers.MISSING_PHRASE] == 1 and report.dropped[readers.SIZE_MISMATCH] == 1
    write_samples(out, tmp_path / "again.jsonl")
    again, _ = read_dataset(tmp_path / "again.jsonl")
    assert again == out


def test_bad_format_and_path_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        read_dataset(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="x.json"):
        read_dataset(tmp_path / "x.json")
    with pytest.raises(ValueError, match="unknown dataset format"):
        read_dataset(tmp_path / "x.json", format="voc")
