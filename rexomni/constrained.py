"""Constrained decoding: a logits processor that lets the model write only what the grammar allows.

Per row of the batch a small state machine follows the tokens generated so far and, at each step,
masks every token that could not continue a well-formed answer (see :mod:`rexomni.grammar`):

- an answer is groups joined by ", " and ends with ``<|im_end|>``;
- a group opens with ``<|object_ref_start|>``, names one of the requested phrases (token by token,
  as the tokenizer spells it; each phrase at most once) and closes it with ``<|object_ref_end|>``;
- after ``<|box_start|>`` only coordinate tokens, ``,`` between items, ``None`` (alone, and only
  for an asked phrase) and ``<|box_end|>`` once an item is complete; an item has exactly the task's
  number of coordinates (4 for a box, 2 for a point, an even number >= 6 for a polygon), and a box
  never has x1 < x0 or y1 < y0;
- an item identical to one already written for the same phrase cannot be completed;
- at most ``max_boxes`` items in the answer;
- with ``presence_threshold`` set, an asked phrase is answered ``None`` when the model gives ``None`` at
  least that share of the probability it gives the tokens allowed there, else it gets an item. Why:
  argmax weighs ``None``, one token, against the single likeliest coordinate, while a present shape's
  probability is spread over many coordinate bins: a model that gives a present shape 0.66 and ``None``
  0.34 would answer ``None`` (docs/recipe.md, "Presence is decided by mass"). Unset (the default), the
  token argmax decides, as the released checkpoints were decoded;
- the answer always closes within ``max_new_tokens``: a token is allowed only if the shortest
  well-formed ending still fits in the tokens left.

Free phrases (OCR: the recognised text; ``detect_all``: the names the model gives what it sees) allow
any ordinary token whose text has no ``<`` or ``>`` (so no piece can spell a grammar marker or a
coordinate), up to ``max_phrase_tokens`` tokens and ``MAX_PHRASE_CHARS`` characters. A free phrase
closes only when its text (stripped, as the parser reads it) is not blank and not one already
written: one group per phrase, as with a fixed list. When a single phrase token is left (a length
bound or the token budget), it is one of the alphanumeric tokens that make the phrase new. A free
phrase's group holds at least one item: ``None`` answers an asked phrase, and nothing was asked.
Keypoint answers (JSON) are not constrained.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor

from .grammar import ITEM_LENGTHS, MAX_PHRASE_CHARS
from .tokens import BOX_END, BOX_START, IM_END, NUM_BINS, OBJECT_REF_END, OBJECT_REF_START, coord_id_to_bin


class _Trie:
    """Token sequences of the allowed phrases."""

    def __init__(self, sequences: dict[str, list[int]]):
        self.root: dict = {}
        for phrase, seq in sequences.items():
            node = self.root
            for tok in seq:
                node = node.setdefault(tok, {})
            node[None] = phrase  # the key None marks the end of a phrase

    @staticmethod
    def depth_to_end(node: dict) -> int:
        """Fewest tokens from ``node`` to the end of a phrase."""
        if None in node:
            return 0
        return 1 + min(_Trie.depth_to_end(child) for tok, child in node.items() if tok is not None)


@dataclass
class _Row:
    """Where one row of the batch is in the grammar."""

    free: bool = False  # the row writes free phrases (no list of names)
    state: str = "start"  # start | phrase | ref_end | items | after_group | done
    pending: list[int] = field(default_factory=list)  # rest of a multi-token literal being written
    node: dict | None = None  # phrase trie node (None for free phrases)
    phrase_tokens: list[int] = field(default_factory=list)
    phrase_text: str = ""  # a free phrase so far, decoded
    phrase: str | None = None
    used: set = field(default_factory=set)  # phrases already written
    item: list[int] = field(default_factory=list)  # bins of the open item
    after_item: bool = False  # a box or point was just completed
    group_items: int = 0
    saw_none: bool = False
    written: dict = field(default_factory=dict)  # phrase -> set of item bin tuples
    items_total: int = 0


class GrammarConstrainedLogitsProcessor(LogitsProcessor):
    """Masks the logits of tokens that would break the answer grammar (see the module docstring).

    ``phrases`` lists the allowed phrases, one list for all rows or one list per row; ``None``
    allows free text. ``item`` is ``"box"``, ``"point"`` or ``"polygon"``. One instance serves one
    ``generate`` call.
    """

    def __init__(self, tokenizer, phrases: Sequence[str] | Sequence[Sequence[str]] | None, *, item: str = "box",
                 max_boxes: int | None = None, max_new_tokens: int = 1024, max_phrase_tokens: int = 32,
                 num_bins: int = NUM_BINS, presence_threshold: float | None = None):
        if item not in ITEM_LENGTHS:
            raise ValueError(f"item must be one of {sorted(ITEM_LENGTHS)}, got {item!r}")
        if max_boxes is not None and max_boxes < 0:
            raise ValueError(f"max_boxes must be >= 0, got {max_boxes}")
        if presence_threshold is not None and not 0.0 <= presence_threshold <= 1.0:
            raise ValueError(f"presence_threshold must be between 0 and 1 (or None), got {presence_threshold}")
        self.presence_threshold = presence_threshold
        self.tokenizer = tokenizer
        self.polygon = item == "polygon"
        self.box = item == "box"
        self.item_len = ITEM_LENGTHS[item]
        self.max_boxes = max_boxes
        self.max_new_tokens = max_new_tokens
        self.max_phrase_tokens = max_phrase_tokens
        ids = tokenizer.convert_tokens_to_ids
        self.ref_start, self.ref_end = ids(OBJECT_REF_START), ids(OBJECT_REF_END)
        self.box_start, self.box_end = ids(BOX_START), ids(BOX_END)
        self.im_end = ids(IM_END)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.im_end
        self.coord_bin = coord_id_to_bin(tokenizer, num_bins)
        coord_ids = list(self.coord_bin)
        self.coord_tensor = torch.tensor(coord_ids)
        self.none_seq = self._encode("None")
        self.comma_seq = self._encode(",")
        self.group_sep_seq = self._encode(", ")
        # Cheapest body of a group: "None" or one item (free phrases: one item, since nothing was asked).
        self.min_body = min(len(self.none_seq), self.item_len)
        self.free: _FreeVocabulary | None = None  # built when a row has free phrases
        self.phrases = phrases
        self.rows: list[_Row] | None = None
        self.tries: list[_Trie | None] = []
        self.prompt_length = 0

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _init_rows(self, batch: int) -> None:
        phrases = self.phrases
        if phrases is None or len(phrases) == 0 or isinstance(phrases[0], str):
            per_row = [phrases] * batch
        elif len(phrases) != batch:
            raise ValueError(f"got phrases for {len(phrases)} rows but the batch has {batch}")
        else:
            per_row = phrases
        self.tries = [None if p is None else _Trie({q: self._encode(q) for q in p}) for p in per_row]
        if any(trie is None for trie in self.tries):
            self.free = _free_vocabulary(self.tokenizer)
        self.rows = [_Row(free=trie is None) for trie in self.tries]

    # ------------------------------------------------------------------ transitions
    def _advance(self, i: int, tok: int) -> None:
        row = self.rows[i]
        if row.pending:
            row.pending.pop(0)
        elif row.state == "start":
            if tok == self.ref_start:
                row.state, row.node, row.phrase_tokens, row.phrase_text = "phrase", self._open_trie(i), [], ""
            else:
                row.state = "done"
        elif row.state == "after_group":
            if tok == self.group_sep_seq[0]:
                row.state, row.pending = "start", list(self.group_sep_seq[1:])
            else:
                row.state = "done"
        elif row.state == "phrase":
            if tok == self.ref_end:
                row.phrase, row.state = self._phrase_name(row), "ref_end"
            else:
                row.phrase_tokens.append(tok)
                if row.node is not None:
                    row.node = row.node.get(tok, {})
                else:
                    row.phrase_text = self.tokenizer.decode(row.phrase_tokens, skip_special_tokens=False,
                                                            clean_up_tokenization_spaces=False)
        elif row.state == "ref_end":
            row.state, row.item, row.after_item, row.group_items, row.saw_none = "items", [], False, 0, False
        elif row.state == "items":
            self._advance_items(row, tok)

    def _advance_items(self, row: _Row, tok: int) -> None:
        row.after_item = False
        if tok in self.coord_bin:
            row.item.append(self.coord_bin[tok])
            if not self.polygon and len(row.item) == self.item_len:
                self._record_item(row)
                row.after_item = True
        elif tok == self.box_end:
            self._record_item(row)
            row.used.add(row.phrase)
            row.state = "after_group"
        elif tok == self.comma_seq[0]:
            self._record_item(row)
            row.pending = list(self.comma_seq[1:])
        elif tok == self.none_seq[0]:
            row.saw_none, row.pending = True, list(self.none_seq[1:])

    def _record_item(self, row: _Row) -> None:
        if row.item:
            row.written.setdefault(row.phrase, set()).add(tuple(row.item))
            row.items_total += 1
            row.group_items += 1
            row.item = []

    def _open_trie(self, i: int) -> dict | None:
        trie = self.tries[i]
        return None if trie is None else _prune(trie.root, self.rows[i].used)

    def _phrase_name(self, row: _Row) -> str:
        if row.node is not None and None in row.node:
            return row.node[None]
        return row.phrase_text.strip()

    # ------------------------------------------------------------------ what may come next
    def _polygon_complete(self, row: _Row) -> bool:
        return self.polygon and len(row.item) >= self.item_len and len(row.item) % 2 == 0

    def _cap_reached(self, row: _Row, extra: int = 0) -> bool:
        return self.max_boxes is not None and row.items_total + extra >= self.max_boxes

    def _group_cost(self, i: int) -> int:
        """Fewest tokens for a new group and the end: markers, shortest phrase, body, <|im_end|>."""
        trie = self.tries[i]
        shortest = 1 if trie is None else _Trie.depth_to_end(_prune(trie.root, self.rows[i].used) or {None: ""})
        return 1 + shortest + 2 + self._min_body(self.rows[i]) + 2

    def _min_body(self, row: _Row) -> int:
        return self.item_len if row.free else self.min_body

    def _can_open_group(self, i: int, remaining: int) -> bool:
        row = self.rows[i]
        if self._cap_reached(row):
            return False
        if self.tries[i] is not None and not _prune(self.tries[i].root, row.used):
            return False  # every requested phrase is written
        return self._group_cost(i) <= remaining

    def _allowed(self, i: int, remaining: int) -> torch.Tensor | list[int]:
        row = self.rows[i]
        if row.pending:
            return [row.pending[0]]
        if row.state == "done":
            return [self.im_end, self.pad]
        if row.state == "start":
            return [self.ref_start] if self._can_open_group(i, remaining) else [self.im_end]
        if row.state == "after_group":
            more = self._can_open_group(i, remaining - len(self.group_sep_seq))
            return [self.im_end] + ([self.group_sep_seq[0]] if more else [])
        if row.state == "ref_end":
            return [self.box_start]
        if row.state == "phrase":
            return self._allowed_phrase(row, remaining)
        return self._allowed_items(row, remaining)

    def _allowed_phrase(self, row: _Row, remaining: int) -> torch.Tensor | list[int]:
        # after this token: the rest of the phrase, <|object_ref_end|>, <|box_start|>, body, <|box_end|>, <|im_end|>
        tail = 2 + self._min_body(row) + 2
        if row.node is None:
            return self._allowed_free_phrase(row, remaining, tail)
        allowed = [self.ref_end] if None in row.node else []
        allowed += [tok for tok, child in row.node.items()
                    if tok is not None and 1 + _Trie.depth_to_end(child) + tail <= remaining]
        return allowed or [self.ref_end]

    def _allowed_free_phrase(self, row: _Row, remaining: int, tail: int) -> torch.Tensor | list[int]:
        text = row.phrase_text.strip()
        close = torch.tensor([self.ref_end] if text and text not in row.used else [], dtype=torch.long)
        n, room = len(row.phrase_tokens), MAX_PHRASE_CHARS - int(self.free.lengths[row.phrase_tokens].sum())
        if n + 1 < self.max_phrase_tokens and 2 + tail <= remaining and room > 1:  # a token may follow this one
            return torch.cat([self.free.continuing(room), close])
        if n < self.max_phrase_tokens and 1 + tail <= remaining:  # the last one: it must make the phrase new
            return torch.cat([self.free.closers_making_new(row.phrase_text, row.used, room), close])
        return close if len(close) else [self.ref_end]  # by the rules above close is never empty here

    def _allowed_items(self, row: _Row, remaining: int) -> torch.Tensor | list[int]:
        def fits(cost_after: int) -> bool:
            return 1 + cost_after <= remaining

        if row.saw_none:
            return [self.box_end]
        n = len(row.item)
        allowed: list[int] = []
        coords = False
        if row.after_item or self._polygon_complete(row):
            allowed.append(self.box_end)
            finishing_extra = 1 if self.polygon else 0  # a complete polygon counts once closed
            if not self._cap_reached(row, finishing_extra) and fits(len(self.comma_seq) - 1 + self.item_len + 2):
                allowed.append(self.comma_seq[0])
            coords = self.polygon and fits(1 + 2)  # extend the polygon by a point
        elif n == 0 and row.group_items == 0:
            if not row.free and fits(len(self.none_seq) - 1 + 2):  # a free phrase names something seen
                allowed.append(self.none_seq[0])
            coords = not self._cap_reached(row) and fits(self.item_len - 1 + 2)
        else:
            need = self.item_len - n - 1 if n < self.item_len else (n + 1) % 2
            coords = fits(need + 2)
        if coords:
            candidates = self._coord_candidates(row)
            return torch.cat([candidates, torch.tensor(allowed, dtype=torch.long)]) if allowed else candidates
        return allowed or [self.box_end]

    def _coord_candidates(self, row: _Row) -> torch.Tensor:
        n = len(row.item)
        keep = torch.ones(len(self.coord_tensor), dtype=torch.bool)
        if self.box and n in (2, 3):
            keep[: row.item[n - 2]] = False  # x1 >= x0, y1 >= y0
        if n == self.item_len - 1 and not self.polygon:  # never complete a repeat of a written item
            forbidden = [b[-1] for b in row.written.get(row.phrase, ()) if list(b[:-1]) == row.item]
            keep[forbidden] = False
        return self.coord_tensor[keep]

    def _deciding_presence(self, row: _Row) -> bool:
        """Right after ``<|box_start|>`` of an asked phrase: ``None`` or the first coordinate comes next."""
        return (row.state == "items" and not row.free and not row.pending and not row.saw_none
                and not row.item and row.group_items == 0)

    def _decide_presence(self, logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Of ``index`` (the allowed tokens), keep ``None`` alone or the rest alone, by the share of their
        probability that ``None`` has against ``presence_threshold``."""
        none = index == self.none_seq[0]
        if none.all() or not none.any():
            return index
        p_none = torch.softmax(logits[index].float(), dim=0)[none].sum()
        return index[none] if p_none >= self.presence_threshold else index[~none]

    # ------------------------------------------------------------------ the processor
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        batch = input_ids.shape[0]
        if self.rows is None:
            self._init_rows(batch)
            self.prompt_length = input_ids.shape[1]
        else:
            for i, tok in enumerate(input_ids[:, -1].tolist()):
                self._advance(i, tok)
        remaining = self.max_new_tokens - (input_ids.shape[1] - self.prompt_length)
        # Row by row and in place: one (batch x vocab) fill is split across threads by torch, which
        # costs far more than the work on a busy CPU; a row stays on one thread.
        for i in range(batch):
            allowed = self._allowed(i, remaining)
            index = allowed if isinstance(allowed, torch.Tensor) else torch.tensor(allowed, dtype=torch.long)
            index = index.to(scores.device)
            if self.presence_threshold is not None and self._deciding_presence(self.rows[i]):
                index = self._decide_presence(scores[i], index)
            kept = scores[i, index]
            scores[i].fill_(float("-inf"))
            scores[i, index] = kept
        return scores


class _FreeVocabulary:
    """The tokens a free phrase may use, per tokenizer (built once: a scan of the whole vocabulary).

    ``ids``: every token that is not special, added or a coordinate, and whose text has no ``<`` or
    ``>``. ``closers``: those whose text is ASCII letters and digits only; such a token appends its
    text unchanged when decoded after any prefix, so the phrase it completes is known in advance.
    ``lengths``: per token id, the characters of its byte-level piece, at least what it decodes to;
    their sum bounds a phrase's length in characters (``MAX_PHRASE_CHARS``, as vLLM's regex does).
    """

    def __init__(self, tokenizer):
        excluded = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        # Byte-level BPE spells printable ASCII as itself, so the piece shows "<", ">" and plain words.
        usable = {i: p for i, p in enumerate(pieces) if i not in excluded and "<" not in p and ">" not in p}
        self.ids = torch.tensor(sorted(usable), dtype=torch.long)
        self.lengths = torch.tensor([len(p or "") for p in pieces], dtype=torch.long)
        self.closers = {p: i for i, p in usable.items() if p.isascii() and p.isalnum()}
        self.closer_ids = torch.tensor(sorted(self.closers.values()), dtype=torch.long)

    def continuing(self, room: int) -> torch.Tensor:
        """Tokens that leave at least one character of ``room`` for a closer after them."""
        return self.ids[self.lengths[self.ids] < room]

    def closers_making_new(self, prefix: str, used: set, room: int) -> torch.Tensor:
        """Closers of at most ``room`` characters that turn ``prefix`` (decoded, unstripped) into a
        phrase not in ``used``."""
        start = prefix.lstrip()
        taken = [self.closers.get(u[len(start):]) for u in used if u.startswith(start)]
        keep = self.lengths[self.closer_ids] <= room
        keep &= ~torch.isin(self.closer_ids, torch.tensor([t for t in taken if t is not None], dtype=torch.long))
        return self.closer_ids[keep]


_FREE_VOCABULARIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _free_vocabulary(tokenizer) -> _FreeVocabulary:
    if tokenizer not in _FREE_VOCABULARIES:
        _FREE_VOCABULARIES[tokenizer] = _FreeVocabulary(tokenizer)
    return _FREE_VOCABULARIES[tokenizer]


def _prune(node: dict, used: set) -> dict:
    """The trie without the phrases in ``used`` (and without branches left empty)."""
    out = {}
    for tok, child in node.items():
        if tok is None:
            if child not in used:
                out[None] = child
            continue
        pruned = _prune(child, used)
        if pruned:
            out[tok] = pruned
    return out

