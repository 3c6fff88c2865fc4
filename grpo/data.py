"""GRPO prompts: mixture draws -> rows in TRL's conversational vision form, with the ground truth the rewards read.

A row is what ``trl.GRPOTrainer`` takes for Qwen2.5-VL (a conversational ``prompt`` plus ``image``) and the
columns of :mod:`rexomni.grpo.rewards`:

    prompt       the chat turns RexOmni.predict sends: system SYSTEM_PROMPT, user [image, prompt text]
    image        the RGB image as RexOmni.prepare hands it to the processor (aspect ratio fitted)
    task         the core task whose prompt was asked (detection, pointing, ...)
    categories   the asked phrases;  phrases: the names the answer may use (the grammar constraint's list)
    objects      the ground truth of the asked phrases (sample schema: phrase, bbox, point, mask, ...)
    negatives    {"phrases": [...], "boxes": [...]}: the prompt's negative phrases; its negative boxes, the
                 ground-truth boxes of the objects a negative phrase names and, on a painted negative image
                 (``rexomni data negative-images``) asking its original phrase, the painted box: what the
                 answer must not box
    width, height, coord_codec

The prompt text is the mixture's (data_engines.tasks builds it with rexomni.prompts.build_prompt); with
``paraphrase: false`` it is word for word what ``RexOmni.prepare`` builds for the same request, and TRL's chat
template rendering then gives the input ids RexOmni gives (a test compares them). Only prompts and ground truth
are used: the builder's answer text is not.
"""

from __future__ import annotations

import dataclasses
import random

from rexomni.data_engines.mixture import Mixture, Source

from rexomni.images import fit_aspect_ratio, load_image
from rexomni.prompts import SYSTEM_PROMPT, build_messages
from rexomni.tasks import get_task

# Tasks whose targets carry only what the answer encodes (a point, a keypoint list): the rewards then need the
# sample's own objects of the asked phrases (mask, polygon, box) to judge the answer.
_OBJECTS_FROM_SAMPLE = ("pointing", "gui_pointing", "keypoints")


class _RecordingSource(Source):
    """A mixture source that remembers the sample it drew last: the example a builder makes keeps only the
    geometry its answer encodes, the rewards need the whole object."""

    last: dict | None = None

    def draw(self, rng: random.Random) -> dict:
        self.last = super().draw(rng)
        return self.last


def recording(mixture: Mixture) -> Mixture:
    """``mixture`` with sources that remember their last draw (same draws, same stream)."""
    mixture.sources = [_RecordingSource(**{f.name: getattr(s, f.name) for f in dataclasses.fields(s)})
                       for s in mixture.sources]
    return mixture


def prompt_row(example: dict, sample: dict, codec: str) -> dict:
    """One mixture example (and the sample it was built from) -> a GRPO row (see the module docstring)."""
    task = get_task(example["task"]).name
    asked = list(example["phrases"])
    if example["task"] in _OBJECTS_FROM_SAMPLE:
        objects = [o for o in sample.get("objects", []) if o.get("phrase") in asked]
    else:
        objects = [dict(t) for t in example["targets"]]
    phrases = sorted({t["phrase"] for t in example["targets"]}) if task == "visual_prompting" else asked
    image = example["image"] if not isinstance(example["image"], str) else load_image(example["image"])
    negatives = sample.get("negatives") or {}
    negative_phrases = list(negatives.get("phrases", []))
    named = [o["bbox"] for o in sample.get("objects", []) + sample.get("held_out", [])
             if o.get("phrase") in negative_phrases and o.get("bbox") is not None]
    edit = sample.get("negative_edit")  # a painted negative image: its box no longer shows the original phrase
    if edit and edit["original"] in asked:
        named.append(edit["box"])
    boxes = [list(b) for b in dict.fromkeys(tuple(b) for b in list(negatives.get("boxes", [])) + named)]
    return {
        "prompt": build_messages(example["prompt"], system=SYSTEM_PROMPT),
        "image": fit_aspect_ratio(image.convert("RGB")),
        "task": task,
        "categories": asked,
        "phrases": phrases,
        "objects": objects,
        "negatives": {"phrases": negative_phrases, "boxes": boxes},
        "width": example["width"],
        "height": example["height"],
        "coord_codec": codec,
    }


class PromptRows:
    """``length`` GRPO rows of ``mixture``, random access: row ``i`` is the first draw of the mixture's stream for
    worker ``i`` (as SFT's MixtureDataset), so an index gives the same prompt in every process and after a resume."""

    def __init__(self, mixture: Mixture, length: int, seed: str | int = 0):
        if length < 1:
            raise ValueError(f"dataset length must be >= 1, got {length}")
        self.mixture, self.length, self.seed = recording(mixture), int(length), seed
        self._by_name = {s.name: s for s in self.mixture.sources}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        example = next(self.mixture.stream(seed=self.seed, worker=index))
        return prompt_row(example, self._by_name[example["source"]].last, self.mixture.codec)


def prompt_dataset(mixture: Mixture, length: int, seed: str | int = 0):
    """The rows as the ``datasets.Dataset`` that trl.GRPOTrainer requires, still drawn on access: a table of
    indices whose transform builds the rows (images and ground truth never go through Arrow)."""
    from datasets import Dataset

    rows = PromptRows(mixture, length, seed)

    def build(batch: dict) -> dict:
        built = [rows[int(i)] for i in batch["index"]]
        return {key: [row[key] for row in built] for key in built[0]}

    return Dataset.from_dict({"index": list(range(len(rows)))}).with_transform(build)
