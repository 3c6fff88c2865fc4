"""Task builders: one sample of the schema -> one training example (prompt and answer text).

    example = build_example(sample, "grounding", rng)
    example["prompt"]   # user text after the image (rexomni.prompts)
    example["answer"]   # assistant text in the output grammar (rexomni.grammar)

An example is ``{"task", "image", "width", "height", "prompt", "answer", "phrases", "targets"}``:
``phrases`` are the asked phrases, ``targets`` the objects the answer encodes (with the geometry it
encodes). Builders draw with the ``random.Random`` they are given and nothing else, so a seed fixes
the example. Negative phrases and boxes of a sample go into the prompt as conditioning and are
never answered. A sample that cannot serve a task raises ``TaskNotApplicable``. Some tasks take
options (``TASK_OPTIONS``; a mixture gives them as ``tasks: {detect_all: {weight: 1, granularity: kind}}``).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from rexomni.grammar import format_answer, format_keypoints
from rexomni.prompts import KEYPOINT_NAMES, build_prompt, sample_template

from .masks import deepest_point, object_mask
from .synth import GRANULARITIES, shape_phrase

# The training builders. Each asks the prompt of the core task it names or aliases
# (rexomni.tasks: grounding and referring ask the detection prompt).
TASKS = ("grounding", "referring", "pointing", "visual_prompting", "keypoints", "ocr_box", "ocr_polygon",
         "gui_grounding", "gui_pointing", "detect_all")
# task -> option -> help. detect_all's granularity names shapes by "kind", "color kind" or "size color
# kind" (objects with synthetic attributes; others keep their phrase); unset, every object keeps its phrase.
_ABSENT_ONLY = ("the share of examples that ask verified-absent phrases only, every one answered None: without "
                "them one phrase of every request is present, and a model learns that instead of looking")
ANSWER_ORDERS = ("asked", "position")
_ANSWER_ORDER = ("the order of the answer's groups: asked (the prompt's), or position (the present phrases by "
                 "their first object, left to right as detect_all writes them, then the absent ones): the model "
                 "then reads the next shape and names it, instead of searching the image for each phrase")
_PRESENT_ONLY = ("the share of examples that ask present phrases only, none absent: users often name only what "
                 "they see, and a model whose lists always held absent look-alikes learns to expect them and "
                 "answers None to the last present phrases")
_LISTS = {"absent_only": _ABSENT_ONLY, "present_only": _PRESENT_ONLY, "answer_order": _ANSWER_ORDER}
_LOOK_ALIKE = ("the share of examples that ask a phrase with a look-alike in the image (another object whose phrase "
               "differs in one word: 'blue circle' beside 'pink circle'), when the image has one; the rest draw a "
               "phrase at random (docs/recipe.md, run 49: more of them did not teach the synthetic model colour)")
TASK_OPTIONS = {"detect_all": {"granularity": f"how shapes are named: one of {list(GRANULARITIES)}"},
                "grounding": _LISTS, "pointing": _LISTS, "referring": {"look_alike": _LOOK_ALIKE}}

MAX_PHRASES = 4   # positive phrases asked at most in one grounding / pointing example
MAX_ABSENT = 8    # verified-absent phrases asked at most (answered None); look-alikes and unrelated ones
# The share of grounding / pointing examples that ask the sample's whole list (every present phrase and
# every verified-absent one, up to the limits above): a detector is used with the full category list,
# and a model that never saw long lists answered None to all of them.
FULL_LIST_PROB = 0.5
MAX_EXAMPLE_BOXES = 3  # visual prompting: example boxes given at most


class TaskNotApplicable(ValueError):
    """The sample lacks what the task needs (no keypoints for ``keypoints``, no text for OCR, ...)."""


def build_example(sample: dict, task: str, rng: random.Random | int | None = None, codec: str = "center",
                  paraphrase: bool = True, options: dict | None = None) -> dict:
    """Turn ``sample`` into one ``task`` example. ``paraphrase=False`` uses the released wording only;
    ``options`` are the task's (``TASK_OPTIONS``)."""
    if task not in _BUILDERS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    rng = rng if isinstance(rng, random.Random) else random.Random(rng)
    return _BUILDERS[task](_Context(sample, rng, codec, paraphrase, check_options(task, options or {})))


def check_options(task: str, options: dict) -> dict:
    """``options`` for ``task``, checked: an option the task does not take, or a bad value, is an error."""
    known = TASK_OPTIONS.get(task, {})
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"task {task!r} takes no option {unknown}; its options: {known or 'none'}")
    granularity = options.get("granularity")
    if granularity is not None and granularity not in GRANULARITIES:
        raise ValueError(f"task {task!r}: granularity must be one of {list(GRANULARITIES)}, got {granularity!r}")
    for share in ("absent_only", "present_only", "look_alike"):
        value = options.get(share, 0.0)
        if not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ValueError(f"task {task!r}: {share} must be a share between 0 and 1, got {value!r}")
    if options.get("answer_order", "asked") not in ANSWER_ORDERS:
        raise ValueError(f"task {task!r}: answer_order must be one of {list(ANSWER_ORDERS)}, "
                         f"got {options['answer_order']!r}")
    return dict(options)


class _Context:
    """What every builder needs: the sample, its negatives, the rng, the codec, the prompt wording and
    the task's options."""

    def __init__(self, sample: dict, rng: random.Random, codec: str, paraphrase: bool, options: dict):
        self.sample, self.rng, self.codec, self.paraphrase, self.options = sample, rng, codec, paraphrase, options
        self.width, self.height = sample["width"], sample["height"]
        negatives = sample.get("negatives") or {}
        self.negative_phrases = list(negatives.get("phrases", []))
        self.negative_boxes = list(negatives.get("boxes", []))
        skip = set(self.negative_phrases)
        self.objects = [o for o in sample.get("objects", []) if o.get("phrase") not in skip]

    def prompt(self, task: str, categories, **kwargs) -> str:
        template = sample_template(task, self.rng) if self.paraphrase else None
        return build_prompt(task, categories, width=self.width, height=self.height, codec=self.codec,
                            negatives=self.negative_phrases, negative_boxes=self.negative_boxes,
                            template=template, **kwargs)

    def example(self, task: str, prompt: str, answer: str, phrases: list[str], targets: list[dict]) -> dict:
        return {"task": task, "image": self.sample.get("image"), "width": self.width, "height": self.height,
                "prompt": prompt, "answer": answer, "phrases": phrases, "targets": targets,
                "source": self.sample.get("source")}

    def by_phrase(self, objects: list[dict], need: str) -> dict[str, list[dict]]:
        groups: dict[str, list[dict]] = {}
        for o in objects:
            if o.get(need) is not None or (need == "point" and o.get("bbox") is not None):
                groups.setdefault(o["phrase"], []).append(o)
        return groups

    def draw_phrases(self, present: list[str]) -> list[str]:
        """1..MAX_PHRASES present phrases plus 0..MAX_ABSENT verified-absent ones, shuffled; the most of
        both with probability FULL_LIST_PROB; with probability ``absent_only`` (a task option) no present
        phrase at all, with probability ``present_only`` no absent one."""
        rng = self.rng
        full_list = rng.random() < FULL_LIST_PROB

        def how_many(pool: list[str], low: int, high: int) -> int:
            return min(len(pool), high) if full_list else rng.randint(low, min(len(pool), high))

        # Absent means absent: a phrase whose objects lack this task's geometry is not asked at all.
        skip = {o["phrase"] for o in self.sample.get("objects", [])} | set(self.negative_phrases)
        absent = [c for c in self.sample.get("categories", []) if c not in skip]
        absent_only = self.options.get("absent_only", 0.0)
        if absent and absent_only and rng.random() < absent_only:
            present = []
        present_only = self.options.get("present_only", 0.0)
        if present and present_only and rng.random() < present_only:
            absent = []
        asked = rng.sample(present, how_many(present, 1, MAX_PHRASES)) if present else []
        if absent:
            asked += rng.sample(absent, how_many(absent, 0 if asked else 1, MAX_ABSENT))
        if not asked:
            raise TaskNotApplicable("the sample has no phrase to ask (no objects and no verified-absent categories)")
        rng.shuffle(asked)
        return asked

    def answer_order(self, asked: list[str], targets: list[dict]) -> list[str]:
        """The answer's groups: ``asked`` as they are, or (option ``answer_order: position``) the present
        ones by position, then the absent ones as asked."""
        if self.options.get("answer_order", "asked") == "asked":
            return asked
        present = by_position(targets)
        return present + [p for p in asked if p not in present]


# --------------------------------------------------------------------------- builders


def by_position(targets: list[dict]) -> list[str]:
    """The targets' phrases in the order of their first object: smallest x0 (a point's x), then y0."""
    first: dict[str, tuple] = {}
    for t in targets:
        corner = tuple((t["bbox"] if "bbox" in t else t["point"])[:2])
        first[t["phrase"]] = min(first.get(t["phrase"], corner), corner)
    return sorted(first, key=lambda p: (first[p], p))


def look_alikes(phrases: list[str]) -> list[str]:
    """The ``phrases`` that have a look-alike among them: one of as many words that differs in one word."""
    words = [p.split() for p in phrases]
    return [p for p, a in zip(phrases, words)
            if any(len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1 for b in words)]


def _grounding(ctx: _Context) -> dict:
    groups = ctx.by_phrase(ctx.objects, "bbox")
    phrases = ctx.draw_phrases(sorted(groups))
    targets = [{"phrase": p, "bbox": o["bbox"]} for p in phrases for o in groups.get(p, [])]
    answer = format_answer(targets, ctx.width, ctx.height, ctx.codec, phrases=ctx.answer_order(phrases, targets),
                           kind="box")
    return ctx.example("grounding", ctx.prompt("grounding", phrases), answer, phrases, targets)


def _referring(ctx: _Context) -> dict:
    pool = ctx.sample.get("referring") or ctx.objects
    negatives = set(ctx.negative_phrases)
    groups = ctx.by_phrase([o for o in pool if o.get("phrase") not in negatives and o.get("category") not in negatives],
                           "bbox")
    if not groups:
        raise TaskNotApplicable("the sample has no referring expression with a box")
    pool = sorted(groups)
    confusable = look_alikes(pool)
    if confusable and ctx.rng.random() < ctx.options.get("look_alike", 0.0):
        pool = confusable
    phrase = ctx.rng.choice(pool)
    targets = [{"phrase": phrase, "bbox": o["bbox"]} for o in groups[phrase]]
    answer = format_answer(targets, ctx.width, ctx.height, ctx.codec, phrases=[phrase], kind="box")
    return ctx.example("referring", ctx.prompt("referring", [phrase]), answer, [phrase], targets)


def point_of(obj: dict, width: int, height: int) -> list[float]:
    """A point on the object: its own ``point``, else the mask pixel farthest from the mask's
    boundary, else (no mask or polygon) the box centre."""
    if obj.get("point") is not None:
        return [float(v) for v in obj["point"]]
    mask = object_mask(obj, height, width)
    point = deepest_point(mask) if mask is not None else None
    if point is None:
        x0, y0, x1, y1 = obj["bbox"]
        point = [(x0 + x1) / 2, (y0 + y1) / 2]
    return point


def _pointing(ctx: _Context) -> dict:
    groups = ctx.by_phrase(ctx.objects, "point")
    phrases = ctx.draw_phrases(sorted(groups))
    targets = [{"phrase": p, "point": point_of(o, ctx.width, ctx.height)} for p in phrases for o in groups.get(p, [])]
    answer = format_answer(targets, ctx.width, ctx.height, ctx.codec, phrases=ctx.answer_order(phrases, targets),
                           kind="point")
    return ctx.example("pointing", ctx.prompt("pointing", phrases), answer, phrases, targets)


def _visual_prompting(ctx: _Context) -> dict:
    groups = ctx.by_phrase(ctx.objects, "bbox")
    if not groups:
        raise TaskNotApplicable("visual prompting needs at least one object with a box")
    phrase = ctx.rng.choice(sorted(groups))
    instances = groups[phrase]
    examples = ctx.rng.sample(instances, ctx.rng.randint(1, min(len(instances), MAX_EXAMPLE_BOXES)))
    # The released weights answer the example group under the name object_1.
    targets = [{"phrase": "object_1", "bbox": o["bbox"], "category": phrase} for o in instances]
    answer = format_answer(targets, ctx.width, ctx.height, ctx.codec, phrases=["object_1"], kind="box")
    prompt = ctx.prompt("visual_prompting", (), visual_prompt=[[o["bbox"] for o in examples]])
    return ctx.example("visual_prompting", prompt, answer, [phrase], targets)


def keypoint_names_for(phrase: str, names: set[str]) -> list[str]:
    """The keypoint list (person, animal, hand) that contains every joint name the object has."""
    if phrase in KEYPOINT_NAMES and names <= set(KEYPOINT_NAMES[phrase]):
        return KEYPOINT_NAMES[phrase]
    for candidates in KEYPOINT_NAMES.values():
        if names <= set(candidates):
            return candidates
    raise TaskNotApplicable(f"keypoint names {sorted(names)[:4]}... of {phrase!r} match no known skeleton")


def _keypoints(ctx: _Context) -> dict:
    groups = ctx.by_phrase([o for o in ctx.objects if o.get("bbox") is not None], "keypoints")
    if not groups:
        raise TaskNotApplicable("the sample has no object with keypoints")
    phrase = ctx.rng.choice(sorted(groups))
    targets = groups[phrase]
    names = keypoint_names_for(phrase, {k for o in targets for k in o["keypoints"]})
    prompt = ctx.prompt("keypoints", [phrase], keypoint_names=names)
    answer = format_keypoints(targets, ctx.width, ctx.height, names, ctx.codec)
    return ctx.example("keypoints", prompt, answer, [phrase], targets)


def _ocr(ctx: _Context, task: str) -> dict:
    texts = [o for o in ctx.objects if o.get("text") and (o.get("bbox") is not None or o.get("polygon") is not None)]
    if not texts:
        raise TaskNotApplicable("the sample has no object with text")
    unit = texts[0]["phrase"] if texts[0]["phrase"] in ("word", "text line") else "word"
    kind = "polygon" if task == "ocr_polygon" else "box"
    targets = []
    for o in texts:
        target = {"phrase": o["text"]}
        if kind == "polygon":
            x0, y0, x1, y1 = o.get("bbox") or (0, 0, 0, 0)
            target["polygon"] = o.get("polygon") or [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]
        else:
            target["bbox"] = o["bbox"] if o.get("bbox") is not None else _polygon_box(o["polygon"])
        targets.append(target)
    targets.sort(key=lambda t: (_top_left(t)[1], _top_left(t)[0]))  # reading order
    answer = format_answer(targets, ctx.width, ctx.height, ctx.codec, kind=kind)
    return ctx.example(task, ctx.prompt(task, [unit]), answer, [unit], targets)


def _polygon_box(polygon) -> list[float]:
    xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
    return [min(xs), min(ys), max(xs), max(ys)]


def _top_left(target: dict) -> list[float]:
    return target["bbox"][:2] if "bbox" in target else _polygon_box(target["polygon"])[:2]


def _gui(ctx: _Context, task: str) -> dict:
    groups = ctx.by_phrase(ctx.objects, "bbox")
    if not groups:
        raise TaskNotApplicable("the sample has no element with a box")
    phrase = ctx.rng.choice(sorted(groups))
    if task == "gui_pointing":
        targets = [{"phrase": phrase, "point": point_of(o, ctx.width, ctx.height)} for o in groups[phrase]]
    else:
        targets = [{"phrase": phrase, "bbox": o["bbox"]} for o in groups[phrase]]
    kind = "point" if task == "gui_pointing" else "box"
    answer = format_answer(targets, ctx.width, ctx.height, ctx.codec, phrases=[phrase], kind=kind)
    return ctx.example(task, ctx.prompt(task, [phrase]), answer, [phrase], targets)


def _detect_all(ctx: _Context) -> dict:
    """Every object, grouped under its name; groups in the order of their first box (smallest x0, then
    y0, as the boxes inside a group), so the target does not depend on the order objects are listed in."""
    if not ctx.sample.get("exhaustive") or ctx.sample.get("not_exhaustive_categories"):
        raise TaskNotApplicable("detect_all needs a sample whose objects are all labelled (flag 'exhaustive')")
    if not ctx.objects or any(o.get("bbox") is None for o in ctx.objects):
        raise TaskNotApplicable("detect_all needs every object of the sample with a box")
    granularity = ctx.options.get("granularity")
    targets = [{"phrase": shape_phrase(o["attributes"], granularity) if granularity and o.get("attributes")
                else o["phrase"], "bbox": o["bbox"]} for o in ctx.objects]
    phrases = by_position(targets)
    answer = format_answer(targets, ctx.width, ctx.height, ctx.codec, phrases=phrases, kind="box")
    return ctx.example("detect_all", ctx.prompt("detect_all", ()), answer, phrases, targets)


_BUILDERS: dict[str, Callable[[_Context], dict]] = {
    "grounding": _grounding,
    "referring": _referring,
    "pointing": _pointing,
    "visual_prompting": _visual_prompting,
    "keypoints": _keypoints,
    "ocr_box": lambda ctx: _ocr(ctx, "ocr_box"),
    "ocr_polygon": lambda ctx: _ocr(ctx, "ocr_polygon"),
    "gui_grounding": lambda ctx: _gui(ctx, "gui_grounding"),
    "gui_pointing": lambda ctx: _gui(ctx, "gui_pointing"),
    "detect_all": _detect_all,
}


def _builder(task: str) -> Callable[..., dict]:
    def build(sample: dict, rng: random.Random | int | None = None, codec: str = "center",
              paraphrase: bool = True, options: dict | None = None) -> dict:
        return build_example(sample, task, rng, codec, paraphrase, options)

    build.__name__ = f"build_{task}"
    build.__doc__ = f"``build_example(sample, {task!r}, ...)``."
    return build


# task -> builder(sample, rng=None, codec="center", paraphrase=True, options=None) -> example
BUILDERS: dict[str, Callable[..., dict]] = {task: _builder(task) for task in TASKS}
