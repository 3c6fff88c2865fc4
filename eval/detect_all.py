"""Scoring ``detect_all``, where the model names what it sees: its phrases are mapped to ground-truth
names, then the predictions go through the usual F1 (:mod:`rexomni.eval.f1`, the one matcher).

A written phrase maps to the name of a ground-truth object of its image: the same text first, else
the same after normalising both sides (lowercase, whitespace collapsed, a leading "a"/"an"/"the"
dropped, the last word's plural ending taken off: "The red Circles" -> "red circle"). A phrase that
maps to no name keeps its text, so its boxes match no ground truth of the image: false positives
(under the strict protocol, in the category of that text). Mapping per image keeps the result
independent of which other images are scored (``--limit``).

    mapped, share_not_in_gt = map_phrases(samples, predictions)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from .data import Prediction

ARTICLES = ("a", "an", "the")
# Plural endings tried on the last word, and what replaces them ("boxes" -> "box", "berries" -> "berry").
PLURAL_ENDINGS = (("ies", "y"), ("es", ""), ("s", ""))


def phrase_forms(phrase: str) -> list[str]:
    """The normalised forms of a phrase, most literal first: the phrase as is, then with a plural
    ending of its last word taken off (more than one form, since "boxes" and "houses" end alike)."""
    words = str(phrase).lower().split()
    if len(words) > 1 and words[0] in ARTICLES:
        words = words[1:]
    if not words:
        return []
    *head, last = words
    lasts = [last] + [last[: -len(end)] + new for end, new in PLURAL_ENDINGS
                      if last.endswith(end) and len(last) > len(end)]
    return list(dict.fromkeys(" ".join([*head, w]) for w in lasts))


class NameMap:
    """Written phrase -> ground-truth name, or None when none fits (see the module docstring)."""

    def __init__(self, names: Iterable[str]):
        self.names = set(names)
        self.by_form: dict[str, str] = {}
        for name in sorted(self.names):  # sorted: when two names share a form, the choice is stable
            for form in phrase_forms(name):
                self.by_form.setdefault(form, name)

    def __call__(self, phrase: str) -> str | None:
        if phrase in self.names:
            return phrase
        return next((self.by_form[f] for f in phrase_forms(phrase) if f in self.by_form), None)


def map_phrases(samples: list[dict], predictions: Mapping[str, Prediction]) -> tuple[dict[str, Prediction], float]:
    """Predictions relabelled with ground-truth names, and the share of written phrases (distinct
    phrases per image) that name no ground-truth object of their image."""
    mapped, written, not_in_gt = {}, 0, 0
    for sample in samples:
        prediction = predictions.get(sample["key"])
        if prediction is None:
            continue
        names = NameMap(str(o["phrase"]) for o in sample.get("objects", []))
        to_name = {label: names(label) for label in dict.fromkeys(prediction.labels)}
        written += len(to_name)
        not_in_gt += sum(name is None for name in to_name.values())
        labels = [to_name[label] or label for label in prediction.labels]
        mapped[sample["key"]] = dataclasses.replace(prediction, labels=labels)
    return mapped, not_in_gt / written if written else 0.0
