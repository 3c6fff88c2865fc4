"""Task prompts: the wording the released weights answer to, training-time paraphrase pools,
keypoint names, visual prompts and negative conditioning.

A prompt is the user text that follows the image. ``build_prompt`` makes it; ``build_messages``
wraps it into the chat turns the processor's template expects.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence

from .codec import CoordCodec, get_codec
from .tasks import TASKS, get_task
from .tokens import NEG_BOX_END, NEG_BOX_START, NEG_REF_END, NEG_REF_START, coord_token

SYSTEM_PROMPT = "You are a helpful assistant"  # inference, as the released wrapper sends it

# The released wording, verbatim, per task (rexomni.tasks holds the table).
TEMPLATES = {name: task.template for name, task in TASKS.items()}

# Paraphrases for training, so that a fine-tuned model does not hang on one wording.
TRAIN_POOLS: dict[str, list[str]] = {
    "detection": [
        TEMPLATES["detection"],
        "Detect {categories}.",
        "Find all {categories} in the image.",
        "Locate every {categories} in this picture.",
        "Where are the {categories}? Give bounding boxes.",
        "Draw bounding boxes around all {categories}.",
        "Output the bounding boxes of {categories}.",
        "Please detect {categories} in the image.",
        "Find every instance of {categories} and box it.",
        "Give me the boxes of all {categories}.",
        "Identify and localize {categories}.",
        "Mark each {categories} with a bounding box.",
        "Detect all instances of {categories} in [x0, y0, x1, y1] format.",
        "Which regions contain {categories}? Answer with boxes.",
        "Show me where the {categories} are.",
        "Locate {categories} and output their coordinates as boxes.",
        "Box every {categories} you can see.",
        "Can you find the {categories} in this image?",
        "List the bounding boxes for {categories}.",
        "Detect the following: {categories}.",
        "Please localize all {categories} with bounding boxes.",
        "Find {categories}. Output [x0, y0, x1, y1] for each one.",
        "Search the image for {categories} and return their boxes.",
        "Provide bounding boxes for each {categories} in the image.",
        "Spot all {categories} in the picture.",
        "Detect objects of these categories: {categories}.",
        "Get the locations of {categories} as bounding boxes.",
        "Find and box all the {categories}.",
        "Annotate every {categories} with a box.",
        "Return the coordinates of all {categories}.",
        "Where can {categories} be found in this image? Use boxes.",
        "Localize {categories}.",
    ],
    "pointing": [
        TEMPLATES["pointing"],
        "Point at {categories}.",
        "Point to every {categories} in the image.",
        "Give one point on each {categories}.",
        "Where are the {categories}? Answer with points.",
        "Mark each {categories} with a point.",
        "Put a point on all {categories}.",
        "Show the location of each {categories} with a point.",
        "Point out the {categories}.",
        "Indicate every {categories} with a single point.",
        "Give the coordinates of a point on each {categories}.",
        "Click on each {categories}.",
        "Point to all instances of {categories}.",
        "Locate {categories} and output one point per instance.",
        "Find {categories} and point at them.",
        "Please point to the {categories} in this picture.",
        "Output a point inside every {categories}.",
        "Where is each {categories}? Give [x, y].",
        "Tap every {categories} you can see.",
        "Identify {categories} by pointing.",
        "Pin each {categories} with a point.",
        "Mark the position of every {categories}.",
        "Point at all the {categories} in the image.",
        "Provide a point for each {categories}.",
        "Give points for {categories}.",
        "Which points lie on {categories}?",
        "Show me each {categories} with a point.",
        "Find every {categories}; answer with points.",
        "Point to the following: {categories}.",
        "Locate each {categories} as a point.",
    ],
    "detect_all": [
        TEMPLATES["detect_all"],
        "Detect all objects in the image.",
        "Find every object in this picture and name it.",
        "What objects are in the image? Give their names and bounding boxes.",
        "Locate and name everything you can see.",
        "List all objects with their bounding boxes.",
        "Box every object in the image and say what it is.",
        "Detect and name all objects. Output [x0, y0, x1, y1] for each one.",
    ],
    "visual_prompting": [
        TEMPLATES["visual_prompting"],
        "Reference boxes {visual_prompt} show examples. Find all similar objects and output their boxes.",
        "The boxes {visual_prompt} mark example objects. Detect every object like them.",
        "Using {visual_prompt} as examples, find all objects of the same kind.",
        "Find all objects similar to the ones in {visual_prompt} and box them.",
        "Given the example boxes {visual_prompt}, locate every matching object.",
        "Objects like those at {visual_prompt}: find them all.",
        "Detect everything that looks like the objects in {visual_prompt}.",
    ],
    "keypoint": [
        TEMPLATES["keypoint"],
        "Detect each {categories} with a box and give the coordinates of its {keypoints}. Answer in JSON.",
        "Find every {categories}, box it, and locate its {keypoints}. Output JSON.",
        "For each {categories} in the image, output its bounding box and the points {keypoints} in JSON format.",
        "Give the box and the keypoints ({keypoints}) of every {categories}, as JSON.",
        "Locate all {categories} and their {keypoints}. Use JSON.",
    ],
    "ocr_box": [
        TEMPLATES["ocr_box"],
        "Find all {categories} and read them.",
        "Detect every {categories} and transcribe it.",
        "Box each {categories} and recognize its text.",
        "Read all {categories} in the image with their boxes.",
        "Locate and recognize every {categories}.",
    ],
    "ocr_polygon": [
        TEMPLATES["ocr_polygon"],
        "Detect all {categories} as polygons and recognize them.",
        "Outline every {categories} with a polygon and read it.",
        "Give a polygon for each {categories} and its text.",
        "Find all {categories}; output polygons [x0, y0, x1, y1, ...] and the recognized text.",
    ],
    "gui_grounding": [
        TEMPLATES["gui_grounding"],
        'Detect element "{categories}" in the image.',
        'Find the element "{categories}" on the screen.',
        'Locate the UI element "{categories}" and give its box.',
        'Where is "{categories}" on this screen? Output a box.',
        'Box the interface element "{categories}".',
        'Give the bounding box of the element "{categories}".',
    ],
    "gui_pointing": [
        TEMPLATES["gui_pointing"],
        'Point to the element "{categories}" on the screen.',
        'Where should I click for "{categories}"?',
        'Click on the element "{categories}".',
        'Give a point on the UI element "{categories}".',
        'Locate "{categories}" on this screen with a point.',
    ],
}

PERSON_KEYPOINTS = [
    "nose",
    "left eye",
    "right eye",
    "left ear",
    "right ear",
    "left shoulder",
    "right shoulder",
    "left elbow",
    "right elbow",
    "left wrist",
    "right wrist",
    "left hip",
    "right hip",
    "left knee",
    "right knee",
    "left ankle",
    "right ankle",
]
ANIMAL_KEYPOINTS = [
    "left eye",
    "right eye",
    "nose",
    "neck",
    "root of tail",
    "left shoulder",
    "left elbow",
    "left front paw",
    "right shoulder",
    "right elbow",
    "right front paw",
    "left hip",
    "left knee",
    "left back paw",
    "right hip",
    "right knee",
    "right back paw",
]
# 21 hand joints: the wrist, then four per finger from the base to the tip.
HAND_KEYPOINTS = ["wrist"] + [
    f"{finger} {joint}"
    for finger in ("thumb", "index finger", "middle finger", "ring finger", "little finger")
    for joint in ("base", "first joint", "second joint", "tip")
]
KEYPOINT_NAMES = {"person": PERSON_KEYPOINTS, "animal": ANIMAL_KEYPOINTS, "hand": HAND_KEYPOINTS}


def join_categories(categories: str | Sequence[str]) -> str:
    return categories if isinstance(categories, str) else ", ".join(categories)


def box_tokens(box: Sequence[float], width: float, height: float, codec: CoordCodec) -> str:
    return "".join(coord_token(b) for b in codec.encode(list(box), width, height).tolist())


def visual_prompt_json(
    groups: Mapping[str, Sequence[Sequence[float]]] | Sequence[Sequence[Sequence[float]]],
    width: float,
    height: float,
    codec: str | CoordCodec = "center",
) -> str:
    """Example boxes in pixels -> ``{"object_1": ["<x0><y0><x1><y1>", ...], ...}``.

    A list of groups is named object_1, object_2, ...; a mapping keeps its names. The model answers
    each group under its own name.
    """
    codec = get_codec(codec)
    if not isinstance(groups, Mapping):
        groups = {f"object_{i + 1}": boxes for i, boxes in enumerate(groups)}
    return json.dumps(
        {name: [box_tokens(b, width, height, codec) for b in boxes] for name, boxes in groups.items()},
        ensure_ascii=False,
    )


def negative_conditioning(
    negatives: Iterable[str] = (),
    negative_boxes: Iterable[Sequence[float]] = (),
    width: float | None = None,
    height: float | None = None,
    codec: str | CoordCodec = "center",
) -> str:
    """What NOT to detect, as conditioning tokens: negative phrases, then negative example boxes."""
    text = "".join(f"{NEG_REF_START}{p}{NEG_REF_END}" for p in negatives)
    boxes = list(negative_boxes)
    if boxes:
        if width is None or height is None:
            raise ValueError("negative_boxes need the image width and height to be encoded")
        codec = get_codec(codec)
        text += NEG_BOX_START + ",".join(box_tokens(b, width, height, codec) for b in boxes) + NEG_BOX_END
    return text


def sample_template(task: str, rng: random.Random) -> str:
    """A training-time paraphrase of ``task``, drawn with ``rng``."""
    return rng.choice(TRAIN_POOLS[get_task(task).name])


def build_prompt(
    task: str,
    categories: str | Sequence[str] = (),
    *,
    width: float | None = None,
    height: float | None = None,
    codec: str | CoordCodec = "center",
    visual_prompt=None,
    keypoint_names: Sequence[str] | None = None,
    negatives: Iterable[str] = (),
    negative_boxes: Iterable[Sequence[float]] = (),
    template: str | None = None,
) -> str:
    """The user text for ``task``: the released wording unless ``template`` is given.

    ``visual_prompt`` (visual_prompting) is a list of box groups or a mapping name -> boxes, in pixels.
    ``keypoint_names`` default to the person list. Negative phrases and boxes are appended.
    """
    spec = get_task(task)
    task = spec.name
    template = template or TEMPLATES[task]
    fields = {"categories": join_categories(categories)}
    if task == "visual_prompting":
        if visual_prompt is None or width is None or height is None:
            raise ValueError("visual_prompting needs visual_prompt boxes and the image width and height")
        fields["visual_prompt"] = visual_prompt_json(visual_prompt, width, height, codec)
    if task == "keypoint":
        fields["keypoints"] = ", ".join(keypoint_names or PERSON_KEYPOINTS)
    elif not fields["categories"] and spec.asks_categories:
        raise ValueError(f"task {task!r} needs at least one category")
    elif fields["categories"] and spec.free_phrases and not spec.asks_categories:
        raise ValueError(f"task {task!r} names what it sees itself: it takes no categories")
    prompt = template.format(**fields)
    negative = negative_conditioning(negatives, negative_boxes, width, height, codec)
    return f"{prompt} {negative}" if negative else prompt


def build_messages(prompt: str, answer: str | None = None, system: str | None = SYSTEM_PROMPT) -> list[dict]:
    """Chat turns for one image: system, user (image then prompt) and, for training, the answer."""
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]})
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages
