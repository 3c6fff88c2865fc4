"""``rexomni app``: try a model in the browser (Gradio).

Upload an image or pick an example, choose a task, type what to look for and see the answer drawn,
with a table of the items, the raw answer, its token count and time. The score slider filters the
last answer again without running the model (the answer is kept in the session's ``gr.State``).

The page calls only the public API (:class:`rexomni.api.RexOmni`). Gradio is imported lazily, by
:func:`build_app` and :func:`main`, so the rest of the module (the handlers, tested without a
browser) and ``import rexomni`` need no Gradio. See docs/app.md.
"""

# No `from __future__ import annotations`: Gradio reads the `gr.SelectData` annotation of the click
# handler at run time, and a string annotation naming a local `gr` would not resolve.

import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .draw import draw_result
from .images import ImageLoadError, load_image

logger = logging.getLogger(__name__)

# The repository's example scenes (absent from a non-editable install: the page then has no examples).
EXAMPLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
DEFAULT_PORT = 7860


class InputError(ValueError):
    """Something the user typed or uploaded cannot be answered; the message says what and why."""


@dataclass(frozen=True)
class AppTask:
    """One choice of the task menu: which inputs it reads (the text box only when it has a label)."""

    text_label: str
    placeholder: str
    default_text: str = ""
    uses_negatives: bool = False
    uses_boxes: bool = False


TASKS: dict[str, AppTask] = {
    "detect": AppTask("Categories (comma-separated)", "person, dog", uses_negatives=True),
    "detect all": AppTask("", "", uses_negatives=True),  # no categories: the model names what it sees
    "point": AppTask("Categories (comma-separated)", "person, dog"),
    "visual prompt": AppTask("", "", uses_boxes=True),
    "keypoints": AppTask("Category: person, animal or hand", "person", default_text="person"),
    "OCR (boxes)": AppTask("Level: word or text line", "text line", default_text="text line"),
    "OCR (polygons)": AppTask("Level: word or text line", "text line", default_text="text line"),
    "GUI element (box)": AppTask("Element description", "search button"),
    "GUI element (point)": AppTask("Element description", "search button"),
}


# --------------------------------------------------------------------------- handlers (no Gradio)


def split_phrases(text: str | None) -> list[str]:
    """``"a, b,, c "`` -> ``["a", "b", "c"]``."""
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def parse_boxes(text: str | None) -> list[list[float]]:
    """Boxes typed as ``x0,y0,x1,y1``, one per line (or separated by ``;``), in image pixels."""
    boxes = []
    for line in (text or "").replace(";", "\n").splitlines():
        if not line.strip():
            continue
        try:
            box = [float(v) for v in line.replace("[", "").replace("]", "").split(",")]
        except ValueError:
            raise InputError(f"box {line.strip()!r}: expected four numbers x0,y0,x1,y1") from None
        if len(box) != 4:
            raise InputError(f"box {line.strip()!r}: expected four numbers x0,y0,x1,y1, got {len(box)}")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise InputError(f"box {line.strip()!r}: x1 must exceed x0 and y1 must exceed y0")
        boxes.append(box)
    return boxes


def read_image(image: Any) -> Image.Image:
    """The page's image (an upload's file payload, a path or a PIL image) as RGB, or a clear :class:`InputError`."""
    if image is None:
        raise InputError("no image: upload one or pick an example")
    name = None
    if isinstance(image, dict):  # Gradio's file payload (the run event skips Gradio's own decoding)
        name, image = image.get("orig_name"), image.get("path")
    try:
        return load_image(image)
    except ImageLoadError as e:
        if name:
            raise InputError(f"could not read the image {name!r}: is it an image file? ({e})") from None
        raise InputError(str(e)) from None


def run_task(model, image: Image.Image, task: str, text: str = "", negatives: str = "", boxes: str = ""):
    """Ask ``model`` (a :class:`rexomni.api.RexOmni`) one task about ``image``; returns its Result.

    ``text`` is what the task's text box holds (categories, keypoint category, OCR level or GUI
    element), ``negatives`` comma-separated phrases not to detect, ``boxes`` the visual prompt.
    """
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    text = (text or "").strip() or TASKS[task].default_text
    negative_phrases = split_phrases(negatives) or None
    if task == "detect all":
        return model.detect(image, None, negatives=negative_phrases)
    if task == "visual prompt":
        examples = parse_boxes(boxes)
        if not examples:
            raise InputError("visual prompt: give at least one example box (x0,y0,x1,y1), "
                             "or click two opposite corners on the image")
        return model.visual_prompt(image, examples)
    if task == "keypoints":
        return model.keypoints(image, text)
    if task.startswith("OCR"):
        return model.ocr(image, level=text, polygons=task == "OCR (polygons)")
    if task.startswith("GUI"):
        if not text:
            raise InputError(f"{task}: describe the element to find")
        return model.gui(image, text, pointing=task == "GUI element (point)")
    categories = split_phrases(text)
    if not categories:
        hint = " or choose the task 'detect all'" if task == "detect" else ""
        raise InputError(f"{task}: type at least one category (comma-separated){hint}")
    if task == "point":
        return model.point(image, categories)
    return model.detect(image, categories, negatives=negative_phrases)


@dataclass
class View:
    """What the page shows of one answer at one score threshold."""

    drawn: Image.Image
    headers: list[str]
    rows: list[list]
    summary: str


def render(image: Image.Image, result, threshold: float) -> View:
    """``result`` without the items scoring below ``threshold``, drawn on ``image``, as a table and a summary."""
    shown = result.filter(threshold)
    if shown.points is not None:
        headers = ["label", "score", "x", "y"]
        coords = shown.points
    else:
        headers = ["label", "score", "x0", "y0", "x1", "y1"]
        coords = shown.boxes
    rows = [[label, round(float(score), 3), *(round(float(v), 1) for v in xy)]
            for label, score, xy in zip(shown.labels, shown.scores, np.asarray(coords))]
    return View(draw_result(image, shown), headers, rows, summarize(result, shown, threshold))


def summarize(result, shown, threshold: float) -> str:
    """Markdown: items shown and hidden, tokens written, seconds, absent phrases, what the parser repaired."""
    hidden = len(result) - len(shown)
    lines = [f"**{len(shown)} item(s)** shown" + (f", {hidden} below score {threshold:.2f} hidden" if hidden else "")
             + f" · {result.num_generated_tokens} tokens written in {result.seconds:.2f} s"]
    if result.absent:
        lines.append("Answered *None* (absent): " + ", ".join(result.absent))
    if result.problems:
        lines.append("Parser notes: " + "; ".join(result.problems))
    return "\n\n".join(lines)


def add_corner(boxes: str, pending: list[float] | None, x: float, y: float) -> tuple[str, list[float] | None, str]:
    """A click on the image at (x, y): the first corner of a box, or the second, which appends the box.

    Returns the new boxes text, the pending corner (None once a box is complete) and a message.
    """
    if pending is None:
        return boxes, [x, y], f"First corner at ({x:.0f}, {y:.0f}); click the opposite corner."
    xa, ya = pending
    box = [min(xa, x), min(ya, y), max(xa, x), max(ya, y)]
    if box[2] == box[0] or box[3] == box[1]:
        return boxes, None, "The two corners make an empty box; click a first corner again."
    line = ",".join(f"{v:.0f}" for v in box)
    text = f"{boxes.rstrip()}\n{line}" if (boxes or "").strip() else line
    return text, None, f"Added example box {line}."


def load_examples(folder: str = EXAMPLES_DIR) -> list[list[str]]:
    """Example rows ``[image, task, text, boxes]`` from ``folder/samples.jsonl`` (none when it is absent).

    Every scene is a detection example with its categories; the third scene is also a visual
    prompt (its first object as the example box) and the fourth a pointing example.
    """
    path = os.path.join(folder, "samples.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        samples = [json.loads(line) for line in f if line.strip()]
    rows = []
    for sample in samples:
        categories = sample.get("categories") or sorted({o["phrase"] for o in sample["objects"]})
        rows.append([os.path.join(folder, sample["image"]), "detect", ", ".join(categories), ""])
    if len(samples) >= 4:
        box = ",".join(f"{v:.0f}" for v in samples[2]["objects"][0]["bbox"])
        rows.append([rows[2][0], "visual prompt", "", box])
        rows.append([rows[3][0], "point", rows[3][2], ""])
    return rows


# --------------------------------------------------------------------------- the Gradio page


def import_gradio():
    """Gradio, or an error that names the extra to install."""
    try:
        import gradio
    except ImportError as e:
        raise ImportError("the rexomni app needs Gradio: pip install 'rexomni[app]'") from e
    return gradio


def on_run(model, image, task, text, negatives, boxes, threshold):
    """The Run button: (drawn image, table, raw answer, summary, session state).

    Bad input and model failures become a warning in the page and a message in the summary box;
    the previous answer stays on screen.
    """
    gr = import_gradio()
    try:
        pil = read_image(image)
        result = run_task(model, pil, task, text, negatives, boxes)
    except ValueError as e:  # InputError, and the API's own checks of boxes and categories
        return _failed(gr, str(e))
    except Exception as e:  # a model failure: the traceback goes to the console, not the page
        logger.exception("rexomni app: the model failed")
        return _failed(gr, f"the model failed: {type(e).__name__}: {e}")
    view = render(pil, result, threshold or 0.0)
    return view.drawn, _table(gr, view), result.raw_text, view.summary, {"image": pil, "result": result}


def on_threshold(state, threshold):
    """The score slider: filter and draw the kept answer again, without the model."""
    gr = import_gradio()
    if not state or threshold is None:  # no answer yet, or the number box was emptied
        return gr.skip(), gr.skip(), gr.skip()
    view = render(state["image"], state["result"], threshold)
    return view.drawn, _table(gr, view), view.summary


def on_task(task):
    """Show the inputs the chosen task reads, labelled for it."""
    gr = import_gradio()
    spec = TASKS[task]
    return (gr.update(label=spec.text_label, placeholder=spec.placeholder, visible=bool(spec.text_label)),
            gr.update(visible=spec.uses_negatives), gr.update(visible=spec.uses_boxes))


def _failed(gr, message: str):
    gr.Warning(message)
    return gr.skip(), gr.skip(), gr.skip(), f"⚠️ {message}", gr.skip()


def _table(gr, view: View):
    return gr.update(value={"headers": view.headers, "data": view.rows}, headers=view.headers)


def build_app(model, examples_dir: str = EXAMPLES_DIR):
    """The page for ``model`` (a :class:`rexomni.api.RexOmni`) as a ``gr.Blocks``; launch it with :func:`launch`."""
    gr = import_gradio()
    from functools import partial

    title = f"rexomni · {_model_name(model)}"
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\nDetection by next-point prediction: the model writes every coordinate as a "
                    "token. Upload an image or pick an example, choose a task, then **Run**.")
        answer = gr.State(None)  # {"image": PIL, "result": Result}: the last answer, for the slider
        pending = gr.State(None)  # the first corner of a visual-prompt box being clicked
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"],
                                 elem_id="input-image")
                task = gr.Dropdown(list(TASKS), value="detect", label="Task", elem_id="task")
                text = gr.Textbox(label=TASKS["detect"].text_label, placeholder=TASKS["detect"].placeholder,
                                  elem_id="text")
                negatives = gr.Textbox(label="Negative phrases: what NOT to detect (comma-separated)",
                                       placeholder="toy car, statue", elem_id="negatives")
                boxes = gr.Textbox(label="Example boxes, one x0,y0,x1,y1 per line (pixels)", lines=2,
                                   info="or click two opposite corners of an object on the image",
                                   visible=False, elem_id="boxes")
                run = gr.Button("Run", variant="primary", elem_id="run")
                examples = load_examples(examples_dir)
                if examples:
                    gr.Examples(examples, inputs=[image, task, text, boxes], label="Examples", elem_id="examples",
                                cache_examples=False)
            with gr.Column():
                drawn = gr.Image(label="Answer", type="pil", format="png", interactive=False, elem_id="output-image")
                threshold = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Score threshold",
                                      info="hides items scoring below it, without running the model again",
                                      elem_id="threshold")
                summary = gr.Markdown(elem_id="summary")
                table = gr.Dataframe(headers=["label", "score", "x0", "y0", "x1", "y1"], interactive=False,
                                     label="Items", elem_id="table")
                raw = gr.Textbox(label="Raw answer (what the model wrote)", lines=3, interactive=False,
                                 elem_id="raw")

        task.change(on_task, task, [text, negatives, boxes])
        # preprocess=False: the handlers read the raw values themselves, so that an unreadable upload
        # gets a message naming it, and an emptied threshold box is no error, instead of Gradio's
        # generic "Error".
        run.click(partial(on_run, model), [image, task, text, negatives, boxes, threshold],
                  [drawn, table, raw, summary, answer], preprocess=False)
        threshold.change(on_threshold, [answer, threshold], [drawn, table, summary], preprocess=False)

        def select(boxes_text, corner, task_name, evt: gr.SelectData):  # Gradio passes the click by annotation
            """A click on the input image: a corner of a visual-prompt box (that task only)."""
            if task_name != "visual prompt":
                return gr.skip(), gr.skip(), gr.skip()
            return add_corner(boxes_text, corner, float(evt.index[0]), float(evt.index[1]))

        image.select(select, [boxes, pending, task], [boxes, pending, summary])
    return app


def _model_name(model) -> str:
    from .checkpoint import DEFAULT_MODEL, DEFAULT_MODEL_DIR

    if model.name and os.path.abspath(model.name) == DEFAULT_MODEL_DIR:
        return f"{DEFAULT_MODEL} (the shipped model)"
    return model.name or "model"


def launch(app, host: str = "127.0.0.1", port: int = DEFAULT_PORT, block: bool = True):
    """Serve ``app`` at http://host:port; with ``block=False`` return at once (tests, notebooks)."""
    app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=not block)


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import DEFAULT_MODEL
    from .cli import build_parser

    parser = build_parser("app", "Try a model in the browser: upload an image, choose a task, see the answer drawn.")
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="checkpoint folder or hub id (default: the small model shipped with rexomni)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1, ...")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on")
    args = parser.parse_args(argv)

    try:
        import_gradio()
    except ImportError as e:
        print(f"rexomni app: {e}", file=sys.stderr)
        return 2
    from .api import RexOmni

    try:
        model = RexOmni.from_pretrained(args.model, device=args.device)
    except (OSError, ValueError) as e:  # a missing folder, an unreachable hub id, a bad device: one line
        print(f"rexomni app: {e}", file=sys.stderr)
        return 2
    launch(build_app(model), host=args.host, port=args.port)
    return 0
