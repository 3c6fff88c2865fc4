"""The search loss: where the model looks when it starts a box.

Why (docs/recipe.md, "Naming is easy, search is hard"): the small model names the shape at a place
right 97% of the time (the colour of its list answers), yet asked for one phrase it boxes another
shape of the phrase's kind half the time: to start a box it must find the shape its phrase names,
and from the answer's loss alone it learnt to find the kind and not the colour. This loss tells it
where to look. Each training step also draws ``batch_size`` fresh scenes and asks each a referring
question about a shape with a look-alike in the scene whenever there is one; at the answer's first
``<|box_start|>``, the token whose output is the first coordinate, the attention of the chosen
language-model layers (averaged over heads, renormalised over the image tokens) must fall on the
image tokens the asked shapes cover. ``tasks`` may add grounding and pointing requests (category lists,
answered in reading order): there every ``<|box_start|>`` that a coordinate follows is a query, on the
shapes of the phrase it follows.

    loss = - mean over requests and layers of log( attention on the asked shapes' tokens
                                                   / attention on all image tokens )

It adds no parameter, and it needs the attention weights: the language model runs eager attention
while it is on. A resumed run draws the scenes an uninterrupted one would.
"""

from __future__ import annotations

import random

import torch
from rexomni.data_engines.synth import generate_scene
from rexomni.data_engines.tasks import build_example

from rexomni.tokens import BOX_START, OBJECT_REF_END, OBJECT_REF_START

from .data import IGNORE_INDEX, ExampleEncoder, SFTCollator

# How each task asks: referring a shape with a look-alike in the scene whenever it has one, the lists in
# reading order (as the default model's stages 2-4 answer them).
TASK_OPTIONS = {"referring": {"look_alike": 1.0}, "grounding": {"answer_order": "position"},
                "pointing": {"answer_order": "position"}}


def covered_cells(boxes, image_size, rows: int, cols: int, min_share: float = 0.2) -> torch.Tensor:
    """(rows * cols,) bool, row by row: the merged-token cells a box covers, each with at least
    ``min_share`` of the smaller of the cell and the box; the cell of a box's centre always."""
    width, height = image_size
    cell_w, cell_h = width / cols, height / rows
    covered = torch.zeros(rows, cols, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        area = max(x1 - x0, 1e-6) * max(y1 - y0, 1e-6)
        for r in range(rows):
            for c in range(cols):
                dx = min(x1, (c + 1) * cell_w) - max(x0, c * cell_w)
                dy = min(y1, (r + 1) * cell_h) - max(y0, r * cell_h)
                if dx > 0 and dy > 0 and dx * dy >= min_share * min(area, cell_w * cell_h):
                    covered[r, c] = True
        covered[min(int((y0 + y1) / 2 / cell_h), rows - 1), min(int((x0 + x1) / 2 / cell_w), cols - 1)] = True
    return covered.flatten()


def image_attention(attentions, layer: int, row: int, query: int, image: torch.Tensor) -> torch.Tensor:
    """Where ``query`` of batch row ``row`` looks among the image tokens (``image``, that row's mask) in
    ``layer``: the attention averaged over heads, renormalised to sum to 1 over the image tokens."""
    on_image = attentions[layer][row, :, query, image].float().mean(0)
    return on_image / on_image.sum().clamp_min(1e-12)


class SearchLoss:
    """The search loss as one of the SFT trainer's extra losses (see the module's docstring)."""

    def __init__(self, model, encoder: ExampleEncoder, coord_ids, *, weight: float, scenes: dict, batch_size: int,
                 layers: list[int], seed: int, step, codec: str = "center", tasks: list[str] | None = None):
        """``coord_ids``: the token ids of the coordinate bins (a query is a ``<|box_start|>`` one follows)."""
        self.model, self.encoder, self.weight, self.batch_size, self.step = model, encoder, weight, batch_size, step
        self.coord_ids = set(int(i) for i in coord_ids)
        self.scenes, self.layers, self.seed, self.codec = dict(scenes), list(layers), seed, codec
        self.tasks = list(tasks or ["referring"])
        unknown = sorted(set(self.tasks) - set(TASK_OPTIONS))
        if unknown or not self.tasks:
            raise ValueError(f"config: search_tasks {unknown or '[]'} unknown; choose from {sorted(TASK_OPTIONS)}")
        self.collate = SFTCollator(encoder.pad_id, encoder.image_token_id)
        tokenizer = encoder.tokenizer
        self.box_start, self.ref_start, self.ref_end = (tokenizer.convert_tokens_to_ids(t)
                                                        for t in (BOX_START, OBJECT_REF_START, OBJECT_REF_END))
        depth = model.config.text_config.num_hidden_layers
        if not self.layers or any(not -depth <= i < depth for i in self.layers):
            raise ValueError(f"config: search_layers {self.layers} must name layers of the {depth}-layer "
                             "language model")
        # Attention weights exist only under eager attention (SDPA and flash kernels never form them);
        # the language model reads the text config's setting, the output check the model's.
        model.config.text_config._attn_implementation = model.config._attn_implementation = "eager"

    def example(self, index: int) -> tuple[dict, dict]:
        """Scene ``index`` of this run's stream: its request (a data-engine example) and the scene's sample."""
        rng = random.Random(f"search:{self.seed}:{index}")
        image, sample = generate_scene(rng.getrandbits(63), masks=False, **self.scenes)
        sample["image"] = image
        task = rng.choice(self.tasks)
        return build_example(sample, task, rng, self.codec, paraphrase=False, options=TASK_OPTIONS[task]), sample

    def request(self, index: int) -> tuple[dict, list[tuple[int, torch.Tensor]]]:
        """Scene ``index``'s request encoded, and per query (each answer's ``<|box_start|>`` before a
        coordinate) its position and the image tokens its phrase's shapes cover."""
        example, sample = self.example(index)
        image = sample["image"]
        item = self.encoder.encode(example)
        grid, merge = item["image_grid_thw"], self.encoder.merge_size
        ids = item["input_ids"]
        answer_start = next(i for i, label in enumerate(item["labels"]) if label != IGNORE_INDEX)
        queries = []
        for position in range(answer_start, len(ids) - 1):
            if ids[position] != self.box_start or ids[position + 1] not in self.coord_ids:
                continue
            opening = max(i for i in range(answer_start, position) if ids[i] == self.ref_start)
            phrase = self.encoder.tokenizer.decode(ids[opening + 1:ids.index(self.ref_end, opening)]).strip()
            boxes = [o["bbox"] for o in sample["objects"] if o["phrase"] == phrase]
            queries.append((position, covered_cells(boxes, image.size, int(grid[1]) // merge, int(grid[2]) // merge)))
        return item, queries

    def __call__(self, *, model=None, inputs=None, outputs=None, labels=None):
        if not self.model.training:
            return torch.zeros(()), {}
        start = self.step() * self.batch_size
        requests = [self.request(start + i) for i in range(self.batch_size)]
        batch = self.collate([item for item, _ in requests])
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        attentions = self.model(**batch, output_attentions=True, logits_to_keep=1).attentions
        if attentions is None or attentions[0] is None:
            raise RuntimeError("the search loss needs attention weights; the language model did not return them")
        image = batch["input_ids"] == self.encoder.image_token_id
        losses = []
        for row, (_, queries) in enumerate(requests):
            for query, cells in queries:
                for layer in self.layers:
                    share = image_attention(attentions, layer, row, query, image[row])[cells.to(device)].sum()
                    losses.append(-torch.log(share.clamp_min(1e-6)))
        if not losses:  # every request answered None
            return attentions[0].sum() * 0.0, {}
        loss = torch.stack(losses).mean()
        return self.weight * loss, {"search_loss": round(float(loss.detach()), 4)}
