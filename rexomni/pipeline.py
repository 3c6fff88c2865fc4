"""A transformers pipeline for rexomni, registered under the task name ``rex-omni``.

    import rexomni, transformers
    detector = transformers.pipeline("rex-omni", model="path/to/checkpoint")
    detector("photo.jpg", candidate_labels=["dog", "cat"])
    # [{"score": 0.93, "label": "dog", "box": {"xmin": ..., "ymin": ..., "xmax": ..., "ymax": ...}}, ...]

It answers the ``zero-shot-object-detection`` call shape (``candidate_labels``, ``threshold``,
``top_k``; a list of images or of ``{"image", "candidate_labels"}`` dicts gives a list of lists;
an image without candidate labels is asked ``detect_all``, and its labels are the names the model wrote)
and runs the batch through :class:`rexomni.api.RexOmni`, so prompts, scores, constrained decoding
and the checkpoint's settings are the same as with the API. Extra keywords (``negatives``,
``max_new_tokens``, ``task``, ...) go to :meth:`RexOmni.predict`.

Registration needs ``transformers.pipelines`` (and so torch) imported; ``import rexomni`` stays
light by registering when transformers' pipelines module is first imported (see
:mod:`rexomni._hooks`), or at once if it already is.
"""

from __future__ import annotations

from typing import Any

from transformers import Pipeline, Qwen2_5_VLForConditionalGeneration
from transformers.pipelines import PIPELINE_REGISTRY

from .api import RexOmni
from .checkpoint import DEFAULT_MODEL_DIR, load_checkpoint
from .tasks import get_task

TASK_NAME = "rex-omni"
_CALL_KEYS = ("threshold", "top_k")


class RexOmniPipeline(Pipeline):
    """Detection by next-point prediction behind the pipeline interface."""

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False
    # The tokenizer comes from load_checkpoint (declared token ids, negative tokens), not from transformers.
    _load_tokenizer = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = getattr(self.model, "name_or_path", None) or self.model.config._name_or_path
        checkpoint = load_checkpoint(path, model=self.model)
        self.tokenizer = checkpoint.tokenizer
        self.model.eval()
        self.detector = RexOmni(self.model, checkpoint.processor, checkpoint.settings, device=str(self.model.device),
                                name=path)

    def _sanitize_parameters(self, **kwargs):
        postprocess = {k: kwargs.pop(k) for k in _CALL_KEYS if k in kwargs}
        return {}, kwargs, postprocess

    def __call__(self, inputs, candidate_labels=None, **kwargs) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """``inputs``: an image, a ``{"image", "candidate_labels"}`` dict, or a list of either."""
        single = not isinstance(inputs, (list, tuple))
        entries = [inputs] if single else list(inputs)
        images, labels = [], []
        for entry in entries:
            if isinstance(entry, dict):
                images.append(entry["image"])
                labels.append(_as_list(entry.get("candidate_labels", candidate_labels)))
            else:
                images.append(entry)
                labels.append(_as_list(candidate_labels))
        _, forward, post = self._sanitize_parameters(**kwargs)
        outputs = [self.postprocess(r, **post) for r in self._forward({"images": images, "labels": labels}, **forward)]
        return outputs[0] if single else outputs

    def preprocess(self, inputs, **kwargs):
        return inputs

    def _forward(self, model_inputs, task: str = "detection", **kwargs):
        images, labels = list(model_inputs["images"]), model_inputs["labels"]
        if get_task(task).name == "detection" and not all(labels):
            # Without candidate_labels the model names what it sees (detect_all); images with labels
            # are asked for them in a call of their own.
            results = [None] * len(images)
            for labelled in (True, False):
                index = [i for i, x in enumerate(labels) if bool(x) == labelled]
                asked = [labels[i] for i in index] if labelled else None
                if index:
                    for i, result in zip(index, self.detector.detect([images[i] for i in index], asked, **kwargs)):
                        results[i] = result
            return results
        if not all(labels) and get_task(task).asks_categories:
            raise ValueError(f"rex-omni pipeline: task {task!r} needs candidate_labels")
        return self.detector.predict(images, task=task, categories=labels if any(labels) else None, **kwargs)

    def postprocess(self, result, threshold: float = 0.0, top_k: int | None = None):
        detections = [d for d in result.to_pipeline() if not d["score"] < threshold]
        detections.sort(key=lambda d: -d["score"] if d["score"] == d["score"] else 0.0)
        return detections[:top_k] if top_k is not None else detections


def _as_list(labels) -> list[str]:
    if labels is None:
        return []
    if isinstance(labels, str):
        return [s.strip() for s in labels.split(",") if s.strip()]
    return list(labels)


def register_pipeline() -> None:
    """Register ``rex-omni`` with transformers (idempotent)."""
    if TASK_NAME not in PIPELINE_REGISTRY.supported_tasks:
        PIPELINE_REGISTRY.register_pipeline(TASK_NAME, pipeline_class=RexOmniPipeline,
                                            pt_model=Qwen2_5_VLForConditionalGeneration, type="multimodal",
                                            default={"model": (DEFAULT_MODEL_DIR, None)})


register_pipeline()
