"""Scoring protocols: ``strict`` (the default) and ``rexomni`` (the released evaluation's conventions).

A protocol is a small set of switches that every metric reads; docs/eval.md lists each difference
and tests/test_eval_protocols.py shows each one on a crafted case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .boxes import MATCH_METHODS

# COCO's per-joint keypoint sigmas (person), the strict protocol's OKS constants.
COCO_PERSON_SIGMAS = (0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
                      0.107, 0.107, 0.087, 0.087, 0.089, 0.089)


@dataclass(frozen=True)
class Protocol:
    """How predictions are scored.

    - ``match_method``: one-to-one matcher for box F1 and pointing (``boxes.MATCH_METHODS``).
    - ``coco_match_method``: matcher for F1 on COCO/LVIS-style data sets (the released evaluation
      used COCOeval's rule with tied scores there, and its greedy rule elsewhere).
    - ``drop_zero_categories``: leave per-category values equal to 0 out of the mean.
    - ``constant_score``: replace the model's confidence by this value (None keeps the model's).
    - ``name_style``: how phrases are normalised before comparing ("strict" or "letters"/"compact").
    - ``class_agnostic``: on non-COCO data sets, match a sample's predictions to all of its ground
      truths regardless of label, after keeping predictions named like one of its categories.
    - ``f1_average``: "category" (pool counts per category over the data set, then average
      categories) or "sample" (precision and recall per sample, averaged over samples).
    - ``keypoint_sigma``: None for COCO's per-joint sigmas, else one sigma for every joint.
    """

    name: str
    match_method: str
    coco_match_method: str
    drop_zero_categories: bool
    constant_score: float | None
    name_style: str
    class_agnostic: bool
    f1_average: str
    keypoint_sigma: float | None

    def __post_init__(self):
        for field_name in ("match_method", "coco_match_method"):
            if getattr(self, field_name) not in MATCH_METHODS:
                raise ValueError(f"protocol {self.name!r}: {field_name} must be one of {MATCH_METHODS}")
        if self.f1_average not in ("category", "sample"):
            raise ValueError(f"protocol {self.name!r}: f1_average must be 'category' or 'sample'")

    def normalize(self, phrase: str, detection_set: bool = True) -> str:
        """The comparison key of a phrase under this protocol."""
        return normalize_name(phrase, self.name_style, detection_set)

    def averaging(self, coco_style: bool) -> str:
        """Per-category or per-sample F1 averaging for a data set of this kind."""
        return "category" if coco_style else self.f1_average

    def matcher(self, coco_style: bool) -> str:
        return self.coco_match_method if coco_style else self.match_method


STRICT = Protocol(name="strict", match_method="hungarian", coco_match_method="hungarian",
                  drop_zero_categories=False, constant_score=None, name_style="strict",
                  class_agnostic=False, f1_average="category", keypoint_sigma=None)

REXOMNI = Protocol(name="rexomni", match_method="greedy", coco_match_method="coco",
                   drop_zero_categories=True, constant_score=0.2, name_style="released",
                   class_agnostic=True, f1_average="sample", keypoint_sigma=0.025)

PROTOCOLS = {p.name: p for p in (STRICT, REXOMNI)}


def get_protocol(protocol: str | Protocol = "strict") -> Protocol:
    """A protocol from its name (``strict`` or ``rexomni``), or the protocol itself."""
    if isinstance(protocol, Protocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[protocol]


_NOT_LETTER = re.compile(r"[^a-z]")


def normalize_name(phrase: str, style: str = "strict", detection_set: bool = True) -> str:
    """Normalise a category phrase.

    ``strict``: lowercase, runs of whitespace collapsed ("Traffic  Light" == "traffic light", but
    "traffic_light" differs). ``released``: the released evaluation's rule: letters only and lowercase
    on detection sets; elsewhere only underscores and spaces removed.
    """
    phrase = str(phrase)
    if style == "strict":
        return " ".join(phrase.lower().split())
    if style == "released":
        if detection_set:
            return _NOT_LETTER.sub("", phrase.lower())
        return phrase.replace("_", "").replace(" ", "")
    raise ValueError(f"unknown name style {style!r}; expected 'strict' or 'released'")
