"""The task vocabulary: one table that the API, the prompts, the data engines, evaluation and training read.

A task here is what the model is asked: its name, the released prompt wording, the kind of item
the answer lists (box, point, polygon or keypoints) and whether the phrases are free text, written
by the model rather than chosen from the asked names (OCR: the text it read; ``detect_all``: the
names it gives what it sees). Aliases are the other names the project's parts use for
the same prompt: the short API names (``detect``, ``point``), the training builders that ask the
detection prompt (``grounding``, ``referring``) and the benchmark tasks (``language``).

    get_task("grounding").name      # "detection"
    get_task("point").item          # "point"
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str
    template: str               # the released wording, verbatim
    item: str                   # box | point | polygon | keypoints
    aliases: tuple[str, ...] = ()
    free_phrases: bool = False  # the model writes the phrases (recognised text, names it chooses)

    @property
    def asks_categories(self) -> bool:
        """Whether the prompt names categories (``detect_all`` and visual prompting do not)."""
        return "{categories}" in self.template


ITEM_KINDS = ("box", "point", "polygon", "keypoints")

_TASK_LIST = (
    Task("detection", "Detect {categories}. Output the bounding box coordinates in [x0, y0, x1, y1] format.",
         "box", aliases=("detect", "grounding", "referring", "language")),
    Task("pointing", "Point to {categories}.", "point", aliases=("point",)),
    # Detection without a category list: the model names what it sees (grouped as usual, one group per
    # name). Not a released task; the wording follows the released detection prompt.
    Task("detect_all", "Detect all objects in the image. Output the bounding box coordinates in [x0, y0, x1, y1] "
         "format.", "box", free_phrases=True),
    Task("visual_prompting",
         "Given reference boxes {visual_prompt} indicating one or more objects, find all similar "
         "objects in the image and output their bounding boxes.",
         "box", aliases=("visual_prompt",)),
    Task("keypoint",
         "Can you detect each {categories} in the image using a [x0, y0, x1, y1] box format, and then "
         "provide the coordinates of its {keypoints} as [x0, y0]? Output the answer in JSON format.",
         "keypoints", aliases=("keypoints",)),
    Task("ocr_box", "Detect all {categories} and recognize them.", "box", aliases=("ocr",), free_phrases=True),
    Task("ocr_polygon",
         "Can you detect all {categories} in this image in polygon format like "
         "[x0, y0, x1, y1, x2, y2 ...] and then recognize them?",
         "polygon", free_phrases=True),
    # The released string keeps its stray quote: the weights were trained on it.
    Task("gui_grounding", 'Detect element "{categories}"" in the image.', "box", aliases=("gui",)),
    Task("gui_pointing", 'Point to element "{categories}".', "point"),
)

TASKS: dict[str, Task] = {task.name: task for task in _TASK_LIST}
_BY_NAME: dict[str, Task] = {name: task for task in _TASK_LIST for name in (task.name, *task.aliases)}


def get_task(name: str) -> Task:
    """The task called ``name`` or one of its aliases; an unknown name is an error that lists the known ones."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(_BY_NAME)}") from None
