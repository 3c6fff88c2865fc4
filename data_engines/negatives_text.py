"""The negative text engine: descriptions that are related to a positive one but contradict it.

Two ways, after "Generating Enhanced Negatives for Training Language-Based Object Detectors":

- ``RuleFoiler``: swap one word group for a contradicting one from the shipped lexicon
  (``lexicon/lexicon.yaml``): a colour, a material, a size, a count, a spatial word, an action, a
  state, or the category itself for a visually similar one ("dog" -> "wolf").
- ``LLMFoiler``: a language model writes them, by *re-combination* (list the objects of the
  description, then re-arrange, drop or add objects) or from an *in-context summary* (summarise a
  few human positive/negative pairs into rules, then follow the rules). The model is any
  ``TextGenerator``; two real backends ship: ``TransformersGenerator`` (a local causal LM folder)
  and ``ChatCompletionsGenerator`` (an OpenAI-compatible HTTP endpoint).

Every output goes through ``filter_foils`` (not the positive, not the same bag of words, length
bounds, deduplicated). LLM outputs are cached on disk, keyed by backend, prompt and settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

LEXICON_PATH = os.path.join(os.path.dirname(__file__), "lexicon", "lexicon.yaml")
FOIL_KINDS = ("color", "material", "size", "state", "spatial", "count", "action", "category")


@dataclass(frozen=True)
class Foil:
    text: str
    kind: str  # one of FOIL_KINDS, or the LLM method that wrote it


# --------------------------------------------------------------------------- filtering


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", text.lower())


def clean_text(text: str) -> str:
    """Collapse whitespace and strip quotes and end punctuation."""
    return " ".join(str(text).split()).strip(" \"'`.,;:")


def filter_foils(positive: str, candidates: Iterable[str], min_words: int = 1,
                 max_words: int | None = None) -> list[str]:
    """Keep candidates that differ from ``positive`` in meaning-bearing words, within length bounds.

    Dropped: empty, equal to the positive (ignoring case and punctuation), the same bag of words
    (a mere re-ordering, which may mean the same), shorter than ``min_words`` or longer than
    ``max_words`` (default: the positive's length plus 8). Duplicates keep their first place.
    """
    pos_words = _words(positive)
    max_words = max_words if max_words is not None else len(pos_words) + 8
    seen, out = set(), []
    for cand in candidates:
        cand = clean_text(cand)
        words = _words(cand)
        if not (min_words <= len(words) <= max_words):
            continue
        key = " ".join(words)
        if key in seen or words == pos_words or sorted(words) == sorted(pos_words):
            continue
        seen.add(key)
        out.append(cand)
    return out


# --------------------------------------------------------------------------- rule-based foils


@lru_cache(maxsize=4)
def load_lexicon(path: str = LEXICON_PATH) -> dict:
    """The lexicon as a dict (cached); see lexicon/lexicon.yaml for its sections."""
    import yaml

    with open(path, encoding="utf-8") as f:
        lexicon = yaml.safe_load(f)
    sections = {"colors", "materials", "sizes", "states", "spatial", "counts", "actions", "similar_categories"}
    missing = sections - set(lexicon)
    if missing:
        raise ValueError(f"lexicon {path} lacks the sections {sorted(missing)}")
    return lexicon


def pluralize(noun: str) -> str:
    if noun.endswith(("s", "x", "z", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _singulars(word: str) -> list[str]:
    forms = [word]
    if word.endswith("ies"):
        forms.append(word[:-3] + "y")
    if word.endswith("es"):
        forms.append(word[:-2])
    if word.endswith("s"):
        forms.append(word[:-1])
    return forms


class RuleFoiler:
    """Rule-based foils over the lexicon.

        foiler = RuleFoiler()
        [f.text for f in foiler.foils("a red car on the left")]
        # ['a blue car on the left', ..., 'a red car on the right', 'a red truck on the left', ...]
    """

    def __init__(self, lexicon: dict | str | None = None):
        lexicon = load_lexicon(lexicon or LEXICON_PATH) if not isinstance(lexicon, dict) else lexicon
        # word group (a tuple of words) -> (kind, replacements)
        table: dict[tuple[str, ...], tuple[str, list[str]]] = {}
        for kind, key in (("color", "colors"), ("material", "materials")):
            words = lexicon[key]
            for w in words:
                table[tuple(w.split())] = (kind, [o for o in words if o != w])
        for kind, key in (("size", "sizes"), ("state", "states"), ("spatial", "spatial"), ("count", "counts")):
            for w, opposites in lexicon[key].items():
                table[tuple(str(w).split())] = (kind, list(opposites))
        for group in lexicon["actions"]:
            for w in group:
                table.setdefault(tuple(w.split()), ("action", [o for o in group if o != w]))
        same = {}  # name -> the names meaning the same
        for names in lexicon.get("synonyms", []):
            for name in names:
                same.setdefault(name, set()).update(names)
        self.synonyms = same
        self.categories: dict[str, list[str]] = {}
        for group in lexicon["similar_categories"].values():
            for name in group:
                self.categories.setdefault(name, [])
                self.categories[name] += [o for o in group if o not in same.get(name, {name}) and o != name
                                          and o not in self.categories[name]]
        # A synonym without a group of its own borrows the foils of the names it means.
        for name, names in same.items():
            if not self.categories.get(name):
                borrowed = [o for other in sorted(names) for o in self.categories.get(other, []) if o not in names]
                if borrowed:
                    self.categories[name] = list(dict.fromkeys(borrowed))
        self.table = table
        self.max_span = max(len(k) for k in list(table) + [tuple(c.split()) for c in self.categories])
        self.count_words = {w for w, _ in lexicon["counts"].items()}
        self.modifiers = {w for key in ("colors", "materials") for w in lexicon[key]}
        self.modifiers |= set(lexicon["sizes"]) | set(lexicon["states"])

    def similar(self, category: str) -> list[str]:
        """Visually similar but different categories for ``category`` (its head noun as a fallback)."""
        # LVIS names: "cap_(headwear)" -> "cap"
        name = " ".join(_words(re.sub(r"\(.*?\)", " ", category.replace("_", " "))))
        if name in self.categories:
            return list(self.categories[name])
        words = name.split()
        for form in _singulars(words[-1]) if words else []:
            if form in self.categories:  # "beer bottle" -> "beer can", "beer jar", ...
                return [" ".join(words[:-1] + [o]) for o in self.categories[form]]
        return []

    def foils(self, phrase: str, n: int | None = None, rng: random.Random | int | None = None,
              kinds: Sequence[str] = FOIL_KINDS) -> list[Foil]:
        """Every single-edit foil of ``phrase`` (filtered), or ``n`` of them drawn with ``rng``."""
        tokens = phrase.split()
        low = [" ".join(_words(t)) for t in tokens]
        out: list[Foil] = []
        i = 0
        while i < len(tokens):
            span, matched = self._match(low, i)
            if matched is None:
                i += 1
                continue
            kind, replacements, plural = matched
            if kind in kinds:
                for rep in replacements:
                    text = self._replace(tokens, low, i, span, rep, kind, plural)
                    out.append(Foil(clean_text(text), kind))
            i += span
        keep = set(filter_foils(phrase, [f.text for f in out]))
        unique, seen = [], set()
        for f in out:
            if f.text in keep and f.text not in seen:
                seen.add(f.text)
                unique.append(f)
        if n is not None and len(unique) > n:
            rng = rng if isinstance(rng, random.Random) else random.Random(rng)
            unique = rng.sample(unique, n)
        return unique

    def __call__(self, phrase: str, n: int | None = None, rng=None) -> list[str]:
        return [f.text for f in self.foils(phrase, n, rng)]

    def _match(self, low: list[str], i: int):
        """Longest lexicon entry starting at token ``i``: (span, (kind, replacements, plural)) or (1, None)."""
        for span in range(min(self.max_span, len(low) - i), 0, -1):
            words = low[i:i + span]
            key = tuple(words)
            if key in self.table:
                kind, reps = self.table[key]
                return span, (kind, reps, False)
            for form in _singulars(words[-1]):
                candidate = " ".join(words[:-1] + [form])
                if candidate in self.categories and self.categories[candidate]:
                    return span, ("category", self.categories[candidate], form != words[-1])
        return 1, None

    def _replace(self, tokens, low, i, span, rep, kind, plural) -> str:
        trail = re.sub(r"^.*?([^A-Za-z0-9]*)$", r"\1", tokens[i + span - 1])
        new = list(tokens[:i]) + [(pluralize(rep) if plural else rep) + trail] + list(tokens[i + span:])
        if i > 0 and low[i - 1] in ("a", "an") and kind != "count":  # "a ottoman" -> "an ottoman"
            new[i - 1] = ("an" if rep[:1] in "aeiou" else "a") if low[i - 1] == tokens[i - 1] else new[i - 1]
        if kind == "count" and low[i] in ("a", "an", "one", "single") and rep not in ("a", "an", "one", "a single"):
            self._pluralize_head(new, i + 1)
        elif kind == "count" and low[i] not in ("a", "an", "one", "single") and rep in ("one", "a", "an", "a single"):
            self._singularize_head(new, i + 1)
        return " ".join(new)

    def _head_index(self, tokens: list[str], start: int) -> int | None:
        for j in range(start, len(tokens)):
            word = " ".join(_words(tokens[j]))
            if word and word not in self.modifiers:
                return j
        return None

    def _pluralize_head(self, tokens: list[str], start: int) -> None:
        j = self._head_index(tokens, start)
        if j is not None:
            tokens[j] = pluralize(tokens[j])

    def _singularize_head(self, tokens: list[str], start: int) -> None:
        j = self._head_index(tokens, start)
        if j is not None:
            for form in _singulars(tokens[j])[1:]:
                tokens[j] = form
                break


# --------------------------------------------------------------------------- text generators


class TextGenerator(Protocol):
    """Anything that completes prompts. ``name`` identifies it in cache keys."""

    name: str

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 96, temperature: float = 0.8,
                 seed: int = 0) -> list[str]: ...


class TransformersGenerator:
    """A local causal LM (a folder with config, weights and tokenizer) through transformers.

    The tokenizer's chat template is used when it has one; otherwise the prompt is fed as plain text.
    """

    def __init__(self, path: str, device: str = "cpu", dtype: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not os.path.isdir(path):
            raise FileNotFoundError(f"language model folder {path!r} does not exist (hub names are not fetched)")
        self.name = f"transformers:{os.path.abspath(path)}"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        torch_dtype = getattr(torch, dtype) if dtype else None
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device)
        self.model.eval()
        self.device = device
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "left"  # generation continues from the right end

    def _format(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt + "\n"

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 96, temperature: float = 0.8,
                 seed: int = 0) -> list[str]:
        import torch

        torch.manual_seed(seed)
        batch = self.tokenizer([self._format(p) for p in prompts], return_tensors="pt", padding=True).to(self.device)
        sampling = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95}
        with torch.no_grad():
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
                                      **sampling)
        return self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)


class ChatCompletionsGenerator:
    """An OpenAI-compatible ``/chat/completions`` endpoint over HTTP (standard library only).

    ``base_url`` is the API root (``http://host:8000/v1``). The key comes from ``api_key`` or the
    environment variable named by ``api_key_env``; none is sent when neither is set.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None,
                 api_key_env: str = "REXOMNI_LLM_API_KEY", timeout: float = 60.0, retries: int = 2):
        self.base_url = base_url.rstrip("/")
        self.model, self.timeout, self.retries = model, timeout, retries
        self.api_key = api_key or os.environ.get(api_key_env)
        self.name = f"chat:{self.base_url}:{model}"

    def _complete(self, prompt: str, max_new_tokens: int, temperature: float, seed: int) -> str:
        import urllib.error
        import urllib.request

        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "max_tokens": max_new_tokens, "temperature": temperature, "seed": seed}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers, method="POST")
        last_error: Exception | None = None
        for _ in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                return reply["choices"][0]["message"]["content"] or ""
            except urllib.error.HTTPError as e:
                if e.code < 500:  # the request is wrong: retrying will not help
                    raise RuntimeError(f"{self.base_url} answered HTTP {e.code}: {e.read()[:200]!r}") from e
                last_error = e
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, json.JSONDecodeError) as e:
                last_error = e
        raise RuntimeError(f"chat completion at {self.base_url} failed: {last_error}") from last_error

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 96, temperature: float = 0.8,
                 seed: int = 0) -> list[str]:
        return [self._complete(p, max_new_tokens, temperature, seed) for p in prompts]


# --------------------------------------------------------------------------- LLM-based foils


class DiskCache:
    """JSON values on disk, one file per key (sha1 of the key's JSON)."""

    def __init__(self, folder: str | None):
        self.folder = folder
        if folder:
            os.makedirs(folder, exist_ok=True)

    def _path(self, key: dict) -> str:
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()
        return os.path.join(self.folder, digest[:2], digest + ".json")

    def get(self, key: dict):
        if not self.folder:
            return None
        path = self._path(key)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            return json.load(f)["value"]

    def set(self, key: dict, value) -> None:
        if not self.folder:
            return
        path = self._path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"key": key, "value": value}, f, ensure_ascii=False)
        os.replace(tmp, path)  # atomic: parallel workers never read half a file


_LIST_ITEM = re.compile(r"^\s*(?:[-*•]|\d+[.)]|\(\d+\))\s*")

OBJECTS_PROMPT = ('List the objects mentioned in this description: "{phrase}"\n'
                  "Answer with the objects only, separated by commas.")
RECOMBINE_PROMPT = ('Description: "{phrase}"\nObjects in it: {objects}\n'
                    "Write {n} new descriptions of an image that contradict the description by re-arranging, "
                    "dropping or adding objects. Keep them short and similar in style. One per line.")
SUMMARY_PROMPT = ("Each pair below is a description and a negative description of the same image, which "
                  "must not be true when the description is true.\n{pairs}\n"
                  "Summarise in a few short rules how the negatives were made from the descriptions.")
FROM_SUMMARY_PROMPT = ('Rules for writing negative descriptions:\n{summary}\n\nDescription: "{phrase}"\n'
                       "Following the rules, write {n} negative descriptions, one per line.")

DEFAULT_EXAMPLES = (
    ("a man riding a horse", "a man standing next to a horse"),
    ("a red car parked on the left", "a blue car parked on the left"),
    ("two dogs playing with a ball", "one dog sleeping next to a ball"),
    ("a woman holding an umbrella", "a woman holding a handbag"),
    ("a cup on top of the table", "a cup under the table"),
)


def parse_lines(text: str) -> list[str]:
    """A model's list answer -> items: one per line (or comma-separated on one line), bullets and
    numbering removed, quotes stripped, headers ("Here are ...:") dropped."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    items = []
    for line in lines:
        line = _LIST_ITEM.sub("", line).strip().strip("\"'`").strip()
        if not line or line.endswith(":"):
            continue
        items.append(line)
    return items


class LLMFoiler:
    """Foils written by a language model, filtered, deduplicated and cached.

    ``examples`` are human (positive, negative) pairs for the in-context summary method.
    """

    def __init__(self, generator: TextGenerator, cache_dir: str | None = None,
                 examples: Sequence[tuple[str, str]] = DEFAULT_EXAMPLES, max_new_tokens: int = 96,
                 temperature: float = 0.8, seed: int = 0, method: str = "recombination"):
        self.generator, self.cache, self.method = generator, DiskCache(cache_dir), method
        self.examples = list(examples)
        self.settings = {"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
        self.calls = 0  # how many prompts reached the generator (the rest came from the cache)

    def _ask(self, prompts: list[str]) -> list[str]:
        keys = [{"backend": self.generator.name, "prompt": p, **self.settings} for p in prompts]
        answers = [self.cache.get(k) for k in keys]
        todo = [i for i, a in enumerate(answers) if a is None]
        if todo:
            fresh = self.generator.generate([prompts[i] for i in todo], **self.settings)
            self.calls += len(todo)
            for i, text in zip(todo, fresh):
                answers[i] = text
                self.cache.set(keys[i], text)
        return answers

    def recombination(self, phrases: Sequence[str], n: int = 3) -> list[list[str]]:
        """Identify each description's objects, then re-arrange, drop or add objects."""
        objects = self._ask([OBJECTS_PROMPT.format(phrase=p) for p in phrases])
        object_lists = [", ".join(_split_objects(o)) or p for o, p in zip(objects, phrases)]
        answers = self._ask([RECOMBINE_PROMPT.format(phrase=p, objects=o, n=n) for p, o in zip(phrases, object_lists)])
        return [filter_foils(p, parse_lines(a))[:n] for p, a in zip(phrases, answers)]

    def summary(self) -> str:
        """The rules the model reads off the human examples (asked once, then cached)."""
        pairs = "\n".join(f'- "{pos}" -> "{neg}"' for pos, neg in self.examples)
        return self._ask([SUMMARY_PROMPT.format(pairs=pairs)])[0].strip()

    def from_summary(self, phrases: Sequence[str], n: int = 3) -> list[list[str]]:
        """Summarise the human pairs into rules, then write negatives that follow them."""
        summary = self.summary()
        answers = self._ask([FROM_SUMMARY_PROMPT.format(summary=summary, phrase=p, n=n) for p in phrases])
        return [filter_foils(p, parse_lines(a))[:n] for p, a in zip(phrases, answers)]

    def foils(self, phrases: Sequence[str], n: int = 3, method: str | None = None) -> list[list[str]]:
        method = method or self.method
        if method == "recombination":
            return self.recombination(phrases, n)
        if method == "summary":
            return self.from_summary(phrases, n)
        raise ValueError(f"unknown LLM foil method {method!r}; expected 'recombination' or 'summary'")

    def __call__(self, phrase: str, n: int = 3, rng=None) -> list[str]:
        """The foils of one phrase (the form ``add_negative_phrases`` calls; the LLM's own seed replaces ``rng``)."""
        return self.foils([phrase], n)[0]


def _split_objects(text: str) -> list[str]:
    items = [s.strip(" .\"'") for s in re.split(r",|\n|;", _LIST_ITEM.sub("", text))]
    return [s for s in items if s and len(s.split()) <= 5][:8]


# --------------------------------------------------------------------------- samples


def add_negative_phrases(sample: dict, foiler: RuleFoiler | LLMFoiler, rng: random.Random, k: int = 2) -> dict:
    """Add up to ``k`` foils (rule or LLM) of the sample's phrases as negative phrases (in place; returns it).

    A foil that names something present in the image is never added.
    """
    present = {o["phrase"] for o in sample.get("objects", [])}
    if not present:
        return sample
    negatives = sample.setdefault("negatives", {})
    chosen = list(negatives.get("phrases", []))
    for phrase in rng.sample(sorted(present), len(present)):
        for foil in foiler(phrase, n=2, rng=rng):
            if foil not in present and foil not in chosen:
                chosen.append(foil)
        if len(chosen) >= k:
            break
    negatives["phrases"] = chosen[:max(k, len(negatives.get("phrases", [])))]
    if not negatives["phrases"]:
        del negatives["phrases"]
    if not negatives:
        del sample["negatives"]
    return sample
