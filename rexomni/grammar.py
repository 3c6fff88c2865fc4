"""The output grammar: objects -> answer text, and a parser that reads any string as far as it goes.

    answer := group (", " group)*
    group  := <|object_ref_start|> PHRASE <|object_ref_end|> <|box_start|> (items | "None") <|box_end|>
    items  := item ("," item)*       item := 4 tokens (box) | 2 (point) | 6+ even (polygon)

PHRASE is one of the asked names, or free text the model writes (OCR: the text it read; ``detect_all``:
the names it gives the objects), never with ``<`` or ``>``. A phrase names one group: it does not repeat.

Keypoint answers are a ```json block, one key per instance, each with ``bbox`` and ``keypoints``
(name -> " <x> <y> " or "unvisible"). See docs/format.md.

The parser never raises: it returns what it could read and a list of short problems. Every
coordinate it returns lies inside the image, because bins are clamped before decoding.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .codec import CoordCodec, get_codec
from .tokens import BOX_END, BOX_START, END_OF_TEXT, IM_END, OBJECT_REF_END, OBJECT_REF_START, coord_token

# Coordinates per item: a box 4, a point 2, a polygon at least 6 (and even). The parser, the
# constrained decoder and the vLLM regular expression all read this.
ITEM_LENGTHS = {"box": 4, "point": 2, "polygon": 6}
MAX_PHRASE_CHARS = 200  # a free phrase (OCR, detect_all) at most, in characters; both constraints hold it
MAX_PROBLEMS = 20
UNVISIBLE = "unvisible"

_MARKER = re.compile("|".join(re.escape(t) for t in (OBJECT_REF_START, OBJECT_REF_END, BOX_START, BOX_END)))
_STOP = re.compile(re.escape(IM_END) + "|" + re.escape(END_OF_TEXT))
# Inside a group: a coordinate token, a separator, the word None, or anything else (stray text).
_CONTENT = re.compile(r"<(\d{1,9})>|,|None|[^<,\s]+|<")
_COORD = re.compile(r"<(\d{1,9})>")
# A group body as the grammar writes it: items of 3-digit coordinate tokens joined by plain commas.
_CLEAN_ITEMS = re.compile(r"(?:<\d{1,3}>)+(?:,(?:<\d{1,3}>)+)*")
_JSON_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.S)
_KP_INSTANCE = re.compile(r'"([^"{}]+)"\s*:\s*\{\s*"bbox"\s*:\s*"([^"]*)"')
_KP_PAIR = re.compile(r'"([^"{}]+)"\s*:\s*"([^"]*)"')


@dataclass
class Item:
    """One answer item, in pixels of the original image.

    ``coords``: box ``[x0, y0, x1, y1]``, point ``[x, y]``, polygon ``[[x, y], ...]``, keypoints the
    instance box. ``bins`` are the integers as written, ``span`` the character span of the item's
    coordinate tokens in the parsed text (used to find the tokens that wrote it).
    """

    kind: str
    coords: list
    bins: list[int]
    span: tuple[int, int]
    keypoints: dict[str, list[float] | None] | None = None


@dataclass
class ParsedOutput:
    """``phrases`` maps each phrase to its items (an empty list: asked and absent)."""

    phrases: dict[str, list[Item]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def items(self) -> Iterator[tuple[str, Item]]:
        for phrase, items in self.phrases.items():
            for item in items:
                yield phrase, item

    def to_dict(self) -> dict[str, Any]:
        return {
            "phrases": {p: [asdict(i) for i in items] for p, items in self.phrases.items()},
            "problems": list(self.problems),
        }

    def _add(self, phrase: str, items: list[Item]) -> None:
        self.phrases.setdefault(phrase, []).extend(items)

    def _problem(self, message: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)
        elif len(self.problems) == MAX_PROBLEMS:
            self.problems.append("more problems not listed")


def _short(text: str | None, limit: int = 30) -> str:
    """A phrase or stray text as problems quote it: repr, cut at ``limit`` characters."""
    text = text or ""
    return repr(text if len(text) <= limit else text[:limit] + "...")


# --------------------------------------------------------------------------- serializer


def _geometry(obj: dict, kind: str | None) -> tuple[str, list]:
    if kind is None:
        kind = next(
            (k for k, key in (("box", "bbox"), ("point", "point"), ("polygon", "polygon")) if obj.get(key) is not None),
            None,
        )
        if kind is None:
            raise ValueError(f"object {obj.get('phrase')!r} has none of bbox, point, polygon")
    key = {"box": "bbox", "point": "point", "polygon": "polygon"}[kind]
    if obj.get(key) is None:
        raise ValueError(f"object {obj.get('phrase')!r} has no {key!r} to write as a {kind}")
    return kind, obj[key]


def encode_item(geometry, width: float, height: float, codec: CoordCodec) -> list[int]:
    """Pixels (flat or ``[[x, y], ...]``) -> bins as a flat list."""
    flat = np.asarray(geometry, dtype=np.float64).reshape(-1)
    return codec.encode(flat, width, height).tolist()


def coords_text(bins: Iterable[int]) -> str:
    return "".join(coord_token(b) for b in bins)


def _sort_key(kind: str, bins: list[int]) -> tuple[int, int]:
    if kind == "polygon":
        return min(bins[0::2]), min(bins[1::2])
    return bins[0], bins[1]


def format_answer(
    objects: Iterable[dict],
    width: float,
    height: float,
    codec: str | CoordCodec = "center",
    phrases: Iterable[str] | None = None,
    kind: str | None = None,
) -> str:
    """Sample-schema objects -> the answer text.

    Groups follow ``phrases`` (the asked phrases, in order; one without objects is written
    ``None``), else the order of first appearance. Instances of a phrase are sorted by x0, then
    y0. ``kind`` forces box, point or polygon; by default an object's bbox, else point, else polygon.
    """
    codec = get_codec(codec)
    groups: dict[str, list[tuple[tuple[int, int], list[int]]]] = {p: [] for p in (phrases or [])}
    for obj in objects:
        phrase = obj["phrase"]
        if phrases is not None and phrase not in groups:
            raise ValueError(f"object phrase {phrase!r} is not among the asked phrases {list(groups)}")
        item_kind, geometry = _geometry(obj, kind)
        bins = encode_item(geometry, width, height, codec)
        if item_kind in ("box", "point") and len(bins) != ITEM_LENGTHS[item_kind]:
            raise ValueError(
                f"object {phrase!r}: a {item_kind} needs {ITEM_LENGTHS[item_kind]} numbers, got {len(bins)}")
        groups.setdefault(phrase, []).append((_sort_key(item_kind, bins), bins))
    parts = []
    for phrase, entries in groups.items():
        body = ",".join(coords_text(b) for _, b in sorted(entries, key=lambda e: e[0])) if entries else "None"
        parts.append(f"{OBJECT_REF_START}{phrase}{OBJECT_REF_END}{BOX_START}{body}{BOX_END}")
    return ", ".join(parts)


def format_keypoints(
    objects: Iterable[dict], width: float, height: float, keypoint_names: list[str], codec: str | CoordCodec = "center"
) -> str:
    """Objects with ``bbox`` and ``keypoints`` -> the ```json answer the released weights write.

    A keypoint that is missing, None, or ``[x, y, v]`` with ``v == 0`` is written "unvisible".
    """
    codec = get_codec(codec)
    counts: dict[str, int] = {}
    answer = {}
    for obj in sorted(objects, key=lambda o: (o["bbox"][0], o["bbox"][1])):
        counts[obj["phrase"]] = counts.get(obj["phrase"], 0) + 1
        spaced = lambda bins: " " + " ".join(coord_token(b) for b in bins) + " "
        points = {}
        for name in keypoint_names:
            p = (obj.get("keypoints") or {}).get(name)
            visible = p is not None and (len(p) < 3 or p[2] > 0)
            points[name] = spaced(encode_item(p[:2], width, height, codec)) if visible else UNVISIBLE
        answer[f"{obj['phrase']}{counts[obj['phrase']]}"] = {
            "bbox": spaced(encode_item(obj["bbox"], width, height, codec)),
            "keypoints": points,
        }
    return "```json\n" + json.dumps(answer, ensure_ascii=False) + "\n```"


# --------------------------------------------------------------------------- parser


def parse_output(text: Any, width: float, height: float, codec: str | CoordCodec = "center") -> ParsedOutput:
    """Read an answer (see the module docstring). Never raises on any ``text``."""
    out = ParsedOutput()
    try:
        codec = get_codec(codec)
        if not (width > 0 and height > 0):
            raise ValueError(f"image size must be positive, got {width}x{height}")
    except (ValueError, TypeError) as e:  # a bad size or codec is the caller's error: say so, once
        out._problem(f"cannot parse: {e}")
        return out
    if not isinstance(text, str):
        out._problem(f"answer is a {type(text).__name__}, not a string")
        return out
    stop = _STOP.search(text)
    if stop:
        if text[stop.end() :].strip(" \n" + IM_END + END_OF_TEXT):
            out._problem("text after the end of the answer ignored")
        text = text[: stop.start()]
    if not text.strip():
        out._problem("empty answer")
        return out
    reader = _Reader(text, width, height, codec, out)
    # A grouped answer opens with a marker: its phrases (free text) may say "bbox" without being JSON.
    if '"bbox"' in text and ("```" in text or '"keypoints"' in text) and not _MARKER.match(text.lstrip()):
        reader.keypoints()
    elif _MARKER.search(text):
        reader.groups()
    else:
        reader.without_markers()
    return out


class _Reader:
    def __init__(self, text: str, width: float, height: float, codec: CoordCodec, out: ParsedOutput):
        self.text, self.width, self.height, self.codec, self.out = text, width, height, codec, out

    # ---- grouped answers
    def groups(self) -> None:
        text, out = self.text, self.out
        phrase, phrase_start, content_start, last_end = None, None, None, 0
        for m in _MARKER.finditer(text):
            marker = m.group()
            if marker == OBJECT_REF_START:
                if content_start is not None:
                    out._problem(f"group {_short(phrase)} not closed")
                    self.content(phrase, content_start, m.start(), truncated=True)
                    content_start = None
                elif phrase_start is not None:
                    out._problem("phrase not closed")
                self._stray(last_end, m.start())
                phrase, phrase_start = None, m.end()
            elif marker == OBJECT_REF_END:
                if phrase_start is None:
                    out._problem("phrase end without start")
                    phrase = self.text[last_end : m.start()].strip(" ,")
                else:
                    phrase = text[phrase_start : m.start()].strip()
                phrase_start, last_end = None, m.end()
            elif marker == BOX_START:
                if content_start is not None:
                    out._problem(f"group {_short(phrase)} not closed")
                    self.content(phrase, content_start, m.start(), truncated=True)
                elif phrase is None:
                    out._problem("coordinates without a phrase")
                    self._stray(last_end, m.start())
                    phrase = ""
                content_start = m.end()
            else:  # BOX_END
                if content_start is None:
                    out._problem("box end without start")
                else:
                    self.content(phrase, content_start, m.start(), truncated=False)
                phrase, content_start, last_end = None, None, m.end()
        if content_start is not None:
            out._problem(f"truncated group {_short(phrase)}")
            self.content(phrase, content_start, len(text), truncated=True)
        elif phrase_start is not None or phrase is not None:
            out._problem("truncated phrase")
        else:
            self._stray(last_end, len(text))

    def _stray(self, start: int, end: int) -> None:
        stray = self.text[start:end].strip(" ,\n")
        if stray:
            self.out._problem(f"stray text {_short(stray)}")

    def content(self, phrase: str | None, start: int, end: int, truncated: bool) -> None:
        """Items between ``start`` and ``end``; a final incomplete item of a truncated group is dropped."""
        phrase = phrase or ""
        if not truncated and _CLEAN_ITEMS.fullmatch(self.text, start, end):  # the common case, fast
            items, pos = [], start
            for chunk in self.text[start:end].split(","):
                self._close_item(phrase, [int(b) for b in _COORD.findall(chunk)], (pos, pos + len(chunk)), items, False)
                pos += len(chunk) + 1
            self.out._add(phrase, items)
            return
        items, bins, span, saw_none = [], [], None, False
        for m in _CONTENT.finditer(self.text, start, end):
            token = m.group()
            if m.group(1) is not None:
                bins.append(int(m.group(1)))
                span = (span[0] if span else m.start(), m.end())
            elif token == ",":
                self._close_item(phrase, bins, span, items, last=False)
                bins, span = [], None
            elif token == "None":
                saw_none = True
            else:
                self.out._problem(f"stray text {_short(token)} in group {_short(phrase)}")
        self._close_item(phrase, bins, span, items, last=truncated)
        if saw_none and items:
            self.out._problem(f"None next to coordinates in group {_short(phrase)}")
        if not items and not saw_none and not truncated:
            self.out._problem(f"empty group {_short(phrase)}")
        self.out._add(phrase, items)

    def _close_item(self, phrase: str, bins: list[int], span, items: list, last: bool) -> None:
        if not bins:
            return
        n = len(bins)
        kind = next((k for k in ("box", "point") if n == ITEM_LENGTHS[k]), None)
        if kind is None and n >= ITEM_LENGTHS["polygon"] and n % 2 == 0:
            kind = "polygon"
        if kind is None:
            self.out._problem(
                f"{'truncated item' if last else f'item with {n} coordinates'} in group {_short(phrase)} dropped"
            )
            return
        items.append(self.item(kind, bins, span, phrase))

    def item(self, kind: str, bins: list[int], span: tuple[int, int], phrase: str) -> Item:
        top = self.codec.num_bins - 1
        if max(bins) > top:
            self.out._problem(f"coordinate above {top} clamped in group {_short(phrase)}")
        coords = self.codec.decode_list(bins, self.width, self.height)
        if kind in ("box", "keypoints"):
            if coords[2] < coords[0] or coords[3] < coords[1]:
                self.out._problem(f"box with x1 < x0 or y1 < y0 reordered in group {_short(phrase)}")
                x0, x1 = sorted((coords[0], coords[2]))
                y0, y1 = sorted((coords[1], coords[3]))
                coords = [x0, y0, x1, y1]
        elif kind == "polygon":
            coords = [coords[i : i + 2] for i in range(0, len(coords), 2)]
        return Item(kind, coords, bins, span)

    # ---- answers whose special tokens were skipped: "person<1><2><3><4>,<5>..., dogNone"
    def without_markers(self) -> None:
        text, out = self.text, self.out
        coords = list(_COORD.finditer(text))
        if not coords:
            out._problem(f"no coordinates in {_short(text.strip())}")
            return
        out._problem("no group markers; read without them")
        runs, run = [], [coords[0]]
        for prev, m in zip(coords, coords[1:]):
            gap = text[prev.end() : m.start()]
            if gap.strip(" ,") or gap.count(",") > 1:
                runs.append(run)
                run = []
            run.append(m)
        runs.append(run)
        last_end = 0
        for run in runs:
            phrase = self._phrases_before(text[last_end : run[0].start()])
            start = run[0].start()
            last_end = run[-1].end()
            self.content(phrase, start, last_end, truncated=False)
        self._phrases_before(text[last_end:])

    def _phrases_before(self, gap: str) -> str:
        """Absent phrases ("dogNone") in a gap are recorded; the rest names the next run."""
        parts = gap.split("None")
        for absent in parts[:-1]:
            name = absent.strip(" ,")
            if name:
                self.out._add(name, [])
        return parts[-1].strip(" ,")

    # ---- keypoint answers
    def keypoints(self) -> None:
        fence = _JSON_FENCE.search(self.text)
        body = fence.group(1) if fence else self.text
        try:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            instances = [(k, v.get("bbox"), v.get("keypoints")) for k, v in data.items() if isinstance(v, dict)]
        except ValueError:
            self.out._problem("keypoint JSON incomplete; read instance by instance")
            instances = self._scan_instances(body)
        for name, bbox, points in instances:
            self._keypoint_instance(name, bbox, points if isinstance(points, dict) else {})

    @staticmethod
    def _scan_instances(body: str) -> list:
        found = list(_KP_INSTANCE.finditer(body))
        instances = []
        for m, nxt in zip(found, found[1:] + [None]):
            region = body[m.end() : nxt.start() if nxt else len(body)]
            instances.append((m.group(1), m.group(2), dict(_KP_PAIR.findall(region))))
        return instances

    def _keypoint_instance(self, name: str, bbox: Any, points: dict) -> None:
        phrase = re.sub(r"[\s_]*\d+$", "", str(name)) or str(name)
        box_bins = [int(b) for b in _COORD.findall(bbox)] if isinstance(bbox, str) else []
        if len(box_bins) != 4:
            self.out._problem(f"keypoint instance {_short(str(name))} without a 4-number bbox dropped")
            return
        item = self.item("keypoints", box_bins, (0, 0), phrase)
        item.keypoints = {}
        for joint, value in points.items():
            bins = [int(b) for b in _COORD.findall(value)] if isinstance(value, str) else []
            if len(bins) == 2:
                item.keypoints[joint] = self.codec.decode_list(bins, self.width, self.height)
            else:
                if not (isinstance(value, str) and value.strip() == UNVISIBLE):
                    self.out._problem(f"keypoint {_short(str(joint))} of {_short(str(name))} unreadable")
                item.keypoints[joint] = None
        self.out._add(phrase, [item])


# --------------------------------------------------------------------------- as a regular expression


def answer_regex(phrases: Sequence[str] | None, item: str = "box", max_items_per_group: int | None = None) -> str:
    """A regular expression that matches exactly the answers the grammar writes, for engines that
    constrain decoding by regex (vLLM's structured outputs).

    ``phrases`` None allows free phrase text (OCR, ``detect_all``): no ``<`` or ``>``, not blank, at most
    ``MAX_PHRASE_CHARS`` after leading whitespace. What a regex cannot state cheaply (x1 >= x0, no repeated
    item, no repeated free phrase, the token budget) is left to :mod:`rexomni.constrained`.
    """
    coord = r"<(?:[0-9]|[1-9][0-9]|[1-9][0-9][0-9])>"
    n = ITEM_LENGTHS[item]
    unit = f"(?:{coord}){{{n}}}" if item != "polygon" else f"(?:{coord}{coord}){{{n // 2},}}"
    free = rf"\s{{0,{MAX_PHRASE_CHARS}}}[^<>\s][^<>]{{0,{MAX_PHRASE_CHARS}}}"  # not blank, no marker piece
    phrase = "(?:" + "|".join(re.escape(p) for p in phrases) + ")" if phrases else free
    more = "*" if max_items_per_group is None else f"{{0,{max(0, max_items_per_group - 1)}}}"
    body = f"{unit}(?:,{unit}){more}" if not phrases else f"(?:None|{unit}(?:,{unit}){more})"  # None: asked, absent
    group = (re.escape(OBJECT_REF_START) + phrase + re.escape(OBJECT_REF_END) + re.escape(BOX_START) + body
             + re.escape(BOX_END))
    return f"{group}(?:, {group})*"
