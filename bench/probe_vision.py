"""What do the image tokens know? The probes behind docs/recipe.md's "recognition" section.

    python bench/probe_vision.py tokens MODEL [MODEL ...] [--scenes 1200]
    python bench/probe_vision.py learn [--preset tiny] [--pixels 112] [--width 64] [--depth 4] [--steps 2000]
    python bench/probe_vision.py names runs/eval/NAME/predictions/detect-all.jsonl
    python bench/probe_vision.py presence MODEL [--scenes 60]
    python bench/probe_vision.py decisions MODEL [--scenes 64] [--predictions detection.jsonl]
    python bench/probe_vision.py misses runs/eval/NAME/predictions/referring.jsonl
    python bench/probe_vision.py lists MODEL [--scenes 48] [--absent 0 4 8]
    python bench/probe_vision.py attention MODEL [MODEL ...] [--scenes 60]
    (each: [--seed 0] [--threads N])

- ``tokens``: a linear probe. Each model reads one-shape scenes of the synthetic benchmark's family
  (8 kinds x 11 colours, medium and large, plain or noisy backgrounds); the merged image token under
  the shape's centre, next to the mean of all tokens, is the feature. A softmax classifier is fitted
  on three quarters of the scenes and scored on the rest, for the shape's kind and for its colour.
  A random-weight model (``random:tiny``, probed first unless another ``random:PRESET`` is named)
  gives the baseline: what the pixels tell without training.
- ``learn``: the vision tower alone. A fresh Qwen2.5-VL vision tower of the preset (width, depth,
  input pixels and patch size overridable), its merged tokens averaged and read by a linear layer,
  is trained as a classifier of kind and colour on fresh one-shape scenes (AdamW, batch 32); it
  prints held-out accuracy every ``--eval-every`` steps. This is the most direct signal the tower
  can get: the steps it needs here are a floor for the steps the whole model needs to name shapes.
  ``--dense`` asks it of every token instead, on the benchmark's crowded scenes (one to four shapes
  and their look-alikes): the token whose cell holds a shape's centre is to name that shape, the
  others are not scored. That is what the language model reads a kind from.
- ``names``: what a model writes when nobody names the shapes. Reads the predictions ``rexomni eval
  --benchmark eval/benchmarks/synth_detect_all.yaml`` cached, and, for every box that lands on a
  shape (IoU >= 0.5), checks the colour and the kind of the name written next to it. On the held-out
  benchmark's detection predictions it tells which of the asked phrases a box went to.
- ``presence``: does the model look before it answers ``None``? In the benchmark's crowded scenes the
  first shape is asked by its own phrase and by a look-alike absent from the scene (its kind in
  another colour), each alone and both in one list (the order alternating): the share of each that
  gets a box. A model that reads colour boxes the first and not the second; one that learnt "some
  phrase of every request is present" boxes both alike.
- ``decisions``: how the model decides presence in the benchmark's detection lists. Teacher-forced on
  the right answer (every category of a scene, in the prompt's order), at the token after each
  phrase's ``<|box_start|>``: the mean probability of ``None``, and how often ``None`` wins by argmax
  (against the likeliest single coordinate, as greedy decoding picks) and by mass (at least half the
  probability, ``presence_threshold`` 0.5), for present phrases and for absent look-alikes of two
  sorts: a present shape's kind in another colour, or anything else. ``--predictions`` (a
  ``detection.jsonl`` of ``rexomni eval``) adds what free-running answers box, split by whether a
  phrase of the same kind was boxed earlier in the list.
- ``misses``: where referring answers go. Reads the held-out benchmark's referring predictions and
  sorts each phrase's top box: on its own shape (IoU >= 0.5), on another shape of the same kind, of
  the same colour, or of neither, near its own shape (IoU 0.3-0.5), nowhere, or no box; then the
  accuracy by the number of shapes in the scene, and with or without another shape of its kind beside
  it (near a half there, the model picks the kind and not the colour).
- ``lists``: category lists as a detector is used with one fixed vocabulary. Each crowded scene of the
  benchmark's family is asked its own phrases plus ``--absent`` phrases of the 8 x 11 vocabulary that are
  neither in it nor its look-alikes (training asks look-alikes only): the share of those unrelated
  phrases that get a box, and the share of shapes found (a box with their phrase at IoU >= 0.5).
- ``attention``: where the model looks when it starts a box. Referring requests of the search loss's
  stream (sft/search.py) whose scene holds another shape of the asked phrase's kind: per language
  layer, the share of the image attention (mean over heads) at the answer's first ``<|box_start|>``
  that falls on the asked shape's tokens and on the look-alike's (tokens of both excluded). A model
  that searches by kind alone shares it evenly.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter

import torch
import torch.nn.functional as F
from rexomni.data_engines.synth import COLORS, vocabulary
from rexomni.data_engines.synth import TRAIN_KINDS as KINDS
from rexomni.sft.recognition import IGNORE, centre_cell, token_targets

SCENES = dict(mode="single", size=224, sizes=["medium", "large"])
BENCHMARK_SEED = 20261201  # eval/benchmarks/synth_heldout.yaml's scenes
COLOURS = tuple(COLORS)


def benchmark_scenes(n: int, seed: int, crowded: bool = False) -> list[dict]:
    """One shape per scene, or (``crowded``) the benchmark's one to four shapes with look-alikes."""
    from rexomni.eval.runner import synth_samples

    objects = dict(num_objects=[1, 4], distractors=True) if crowded else dict(num_objects=[1, 1], distractors=False)
    return synth_samples(dict(SCENES, **objects, n=n, seed=seed))


def labels(scenes: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each scene's shape: kind and colour as class indices."""
    attributes = [s["objects"][0]["attributes"] for s in scenes]
    return (torch.tensor([KINDS.index(a["kind"]) for a in attributes]),
            torch.tensor([COLOURS.index(a["color"]) for a in attributes]))


def token_labels(scenes: list[dict], rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, scene after scene: kind and colour of the shape whose centre is in its cell, else
    IGNORE (what ``rexomni warmup`` trains on)."""
    classes = {"kind": list(KINDS), "color": list(COLOURS)}
    targets = [token_targets(s["objects"], s["image"].size, rows, cols, classes) for s in scenes]
    return torch.cat([t["kind"] for t in targets]), torch.cat([t["color"] for t in targets])


def image_tokens(model, scenes: list[dict]) -> torch.Tensor:
    """One feature per scene: the merged token under the shape's centre and the mean of all tokens."""
    processor = model.processor.image_processor
    features = []
    for start in range(0, len(scenes), 64):
        batch = scenes[start:start + 64]
        requests = model.prepare([s["image"] for s in batch], task="detection", categories=["shape"])
        inputs = processor(images=[r["image"] for r in requests], return_tensors="pt")
        with torch.no_grad():
            output = model.model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        tokens = output.pooler_output
        tokens = torch.cat(list(tokens)) if isinstance(tokens, (list, tuple)) else tokens
        # Every scene has one size, so one grid; merged tokens come row by row.
        _, height, width = inputs["image_grid_thw"][0].tolist()
        rows, cols = height // processor.merge_size, width // processor.merge_size
        tokens = tokens.view(len(batch), rows, cols, -1)
        for scene, grid in zip(batch, tokens):
            row, col = centre_cell(scene["objects"][0]["bbox"], scene["image"].size, rows, cols)
            features.append(torch.cat([grid[row, col], grid.mean((0, 1))]))
    return torch.stack(features)


def linear_probe(features: torch.Tensor, targets: torch.Tensor, classes: int, steps: int = 500) -> float:
    """Held-out accuracy of a softmax classifier fitted on the first three quarters."""
    features = (features - features.mean(0)) / (features.std(0) + 1e-5)
    cut = len(targets) * 3 // 4
    layer = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(layer(features[:cut]), targets[:cut]).backward()
        optimizer.step()
    with torch.no_grad():
        return (layer(features[cut:]).argmax(1) == targets[cut:]).float().mean().item()


def probe_tokens(paths: list[str], n: int, seed: int) -> None:
    from rexomni.api import RexOmni
    from rexomni.modeling import init_checkpoint

    scenes = benchmark_scenes(n, seed)
    kinds, colours = labels(scenes)
    print(f"{n} one-shape scenes; chance: kind {1 / len(KINDS):.2f}, colour {1 / len(COLOURS):.2f}")
    if not any(p.startswith("random:") for p in paths):
        paths = ["random:tiny", *paths]
    for path in paths:
        with tempfile.TemporaryDirectory() as tmp:
            folder = init_checkpoint(tmp, path.split(":", 1)[1], seed=seed) if path.startswith("random:") else path
            model = RexOmni.from_pretrained(folder, device="cpu")
            features = image_tokens(model, scenes)
        print(f"{path}: kind {linear_probe(features, kinds, len(KINDS)):.2f}, "
              f"colour {linear_probe(features, colours, len(COLOURS)):.2f}")


def learn(args) -> None:
    """Train a fresh vision tower (and a linear head) to name shapes; print held-out accuracy."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from rexomni.modeling import PRESETS, preset_config
    from rexomni.offline_tokenizer import build_test_tokenizer
    from rexomni.processing import make_processor

    torch.manual_seed(args.seed)
    tokenizer = build_test_tokenizer()
    config = preset_config(args.preset, tokenizer).vision_config
    for key, value in dict(hidden_size=args.width, depth=args.depth, patch_size=args.patch).items():
        if value is not None:
            setattr(config, key, value)
    if args.width is not None:
        config.intermediate_size = 2 * args.width
    config.fullatt_block_indexes = [i for i in config.fullatt_block_indexes if i < config.depth]
    tower = Qwen2_5_VisionTransformerPretrainedModel(config)
    side = args.pixels or int(PRESETS[args.preset]["max_pixels"] ** 0.5)
    processor = make_processor(tokenizer, PRESETS[args.preset]["min_pixels"], side * side,
                               patch_size=config.patch_size).image_processor
    head = torch.nn.Linear(config.out_hidden_size, len(KINDS) + len(COLOURS))

    def batch(n: int, seed: int):
        scenes = benchmark_scenes(n, seed, crowded=args.dense)
        inputs = processor(images=[s["image"] for s in scenes], return_tensors="pt")
        grid = inputs["image_grid_thw"]
        if args.dense:
            targets = token_labels(scenes, int(grid[0, 1]) // config.spatial_merge_size,
                                   int(grid[0, 2]) // config.spatial_merge_size)
        else:
            targets = labels(scenes)
        return (inputs["pixel_values"], grid, *targets)

    def logits(pixels, grid):
        tokens = tower(pixels, grid_thw=grid).pooler_output
        tokens = tokens.view(len(grid), -1, tokens.shape[-1])
        return head(tokens.flatten(0, 1) if args.dense else tokens.mean(1))

    def accuracy(z, targets):
        scored = targets != IGNORE
        return (z.argmax(1)[scored] == targets[scored]).float().mean().item()

    held_out = batch(512, args.seed + 10 ** 6)
    optimizer = torch.optim.AdamW([*tower.parameters(), *head.parameters()], lr=args.lr, weight_decay=0.0)
    print(f"vision tower: width {config.hidden_size}, depth {config.depth}, patch {config.patch_size}, "
          f"{side} px, {sum(p.numel() for p in tower.parameters()):,} parameters, "
          f"{'every shape-centre token of crowded scenes' if args.dense else 'one-shape scenes'}")
    start = time.time()
    for step in range(1, args.steps + 1):
        pixels, grid, kind, colour = batch(args.batch, args.seed + step)
        z = logits(pixels, grid)
        loss = F.cross_entropy(z[:, :len(KINDS)], kind) + F.cross_entropy(z[:, len(KINDS):], colour)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % args.eval_every == 0:
            with torch.no_grad():
                z = logits(held_out[0], held_out[1])
            kind_acc, colour_acc = accuracy(z[:, :len(KINDS)], held_out[2]), accuracy(z[:, len(KINDS):], held_out[3])
            print(f"step {step}: loss {loss.item():.2f}, held-out kind {kind_acc:.2f}, colour {colour_acc:.2f} "
                  f"({time.time() - start:.0f} s)", flush=True)


def probe_names(predictions: str, benchmark: str, dataset: str) -> None:
    """For each detect_all box on a shape (IoU >= 0.5), is the colour of its name right, the kind? And the share
    of present phrases (a shape's colour and kind) the answers leave without a box."""
    from rexomni.eval.boxes import box_iou
    from rexomni.eval.runner import BenchmarkSpec, synth_samples

    spec = next(d for d in BenchmarkSpec.from_yaml(benchmark).datasets if d.name == dataset)
    with open(predictions, encoding="utf-8") as f:
        answers = {row["key"]: row for row in map(json.loads, f)}
    counts, confusions = Counter(), Counter()
    for scene in synth_samples(spec.synth):
        answer = answers.get(scene["key"])
        if answer is None:
            continue
        present = {f"{o['attributes']['color']} {o['attributes']['kind']}" for o in scene["objects"]}
        counts["present phrases"] += len(present)
        counts["present answered None"] += len(present - set(answer["labels"]))
        ious = box_iou(answer["boxes"], [o["bbox"] for o in scene["objects"]])
        for label, row in zip(answer["labels"], ious):
            if row.max() < 0.5:
                counts["boxes on no shape"] += 1
                continue
            truth = scene["objects"][int(row.argmax())]["attributes"]
            colour, _, kind = label.partition(" ")
            counts["boxes on a shape"] += 1
            counts["colour right"] += colour == truth["color"]
            counts["kind right"] += kind == truth["kind"]
            counts["both right"] += colour == truth["color"] and kind == truth["kind"]
            if kind != truth["kind"]:
                confusions[f"{truth['kind']} -> {kind}"] += 1
    on_shape = max(counts["boxes on a shape"], 1)
    print(f"{predictions}: {counts['boxes on a shape']} boxes on a shape, {counts['boxes on no shape']} on none")
    for name in ("colour right", "kind right", "both right"):
        print(f"  {name:13s} {counts[name] / on_shape:.2f}")
    print(f"  present phrases answered None {counts['present answered None'] / max(counts['present phrases'], 1):.2f}")
    print("  most written kinds for another:", ", ".join(f"{k} ({n})" for k, n in confusions.most_common(6)))


def referring_misses(predictions: str, benchmark: str, dataset: str = "referring") -> tuple[Counter, dict, dict]:
    """Each asked shape's top box, sorted by where it landed; accuracy by the scene's shape count, and
    by whether another shape of its kind is in the scene."""
    from rexomni.eval.boxes import box_iou
    from rexomni.eval.runner import BenchmarkSpec, synth_samples

    spec = next(d for d in BenchmarkSpec.from_yaml(benchmark).datasets if d.name == dataset)
    with open(predictions, encoding="utf-8") as f:
        answers = {row["key"]: row for row in map(json.loads, f)}
    where, right, asked = Counter(), Counter(), Counter()
    kinds = Counter()  # phrases asked (and answered right) with another shape of their kind beside them, or not
    for scene in synth_samples(spec.synth):
        shapes = scene["objects"]
        for i, shape in enumerate(shapes):
            own = shape["attributes"]
            answer = answers.get(f"{scene['key']}#{own['color']} {own['kind']}")
            if answer is None:
                continue
            asked[len(shapes)] += 1
            beside = "with" if sum(s["attributes"]["kind"] == own["kind"] for s in shapes) > 1 else "without"
            kinds[beside] += 1
            if not answer["boxes"]:
                where["no box"] += 1
                continue
            scores = answer.get("scores") or [0.0] * len(answer["boxes"])
            top = answer["boxes"][max(range(len(scores)), key=scores.__getitem__)]
            ious = box_iou([top], [s["bbox"] for s in shapes])[0]
            hit = shapes[int(ious.argmax())]["attributes"]
            if ious[i] >= 0.5:
                where["own shape"] += 1
                right[len(shapes)] += 1
                kinds[f"{beside} right"] += 1
            elif ious.max() >= 0.5:
                same = "kind" if hit["kind"] == own["kind"] else "colour" if hit["color"] == own["color"] else None
                where[f"another shape, same {same}" if same else "another shape, neither"] += 1
            else:
                where["near its own shape (IoU 0.3-0.5)" if ious[i] >= 0.3 else "nowhere"] += 1
    by_kind = {beside: kinds[f"{beside} right"] / kinds[beside] for beside in ("with", "without") if kinds[beside]}
    return where, {n: right[n] / asked[n] for n in sorted(asked)}, by_kind


def probe_misses(predictions: str, benchmark: str) -> None:
    where, by_count, by_kind = referring_misses(predictions, benchmark)
    total = max(sum(where.values()), 1)
    print(f"{predictions}: the top box of {total} referring phrases")
    for key, n in where.most_common():
        print(f"  {key:36s} {n / total:.3f}")
    print("  accuracy by shapes in the scene: " + ", ".join(f"{n}: {acc:.2f}" for n, acc in by_count.items()))
    print("  accuracy with another shape of its kind in the scene: "
          + ", ".join(f"{beside}: {acc:.2f}" for beside, acc in by_kind.items()))


def probe_lists(model, n: int, absent: int, seed: int) -> dict[str, float]:
    """Unrelated absent phrases boxed and shapes found, each scene asked its phrases plus ``absent`` others
    (``model``: anything with RexOmni's ``detect``)."""
    import random

    from rexomni.eval.boxes import box_iou

    rng, counts = random.Random(seed), Counter()
    for scene in benchmark_scenes(n, seed, crowded=True):
        present = sorted({o["phrase"] for o in scene["objects"]})
        unrelated = [p for p in vocabulary("color kind") if p not in present and p not in scene["categories"]]
        others = rng.sample(unrelated, absent)
        asked = present + others
        rng.shuffle(asked)
        result = model.detect(scene["image"], asked)
        labels, boxes = list(result.labels), [list(map(float, b)) for b in result.boxes]
        counts["unrelated asked"] += absent
        counts["unrelated boxed"] += len(set(labels) & set(others))
        for shape in scene["objects"]:
            counts["shapes"] += 1
            counts["found"] += any(label == shape["phrase"] and box_iou([box], [shape["bbox"]])[0][0] >= 0.5
                                   for label, box in zip(labels, boxes))
    shares = {"unrelated boxed": counts["unrelated boxed"] / max(counts["unrelated asked"], 1),
              "shapes found": counts["found"] / max(counts["shapes"], 1)}
    print(f"  {absent} unrelated absent phrases: {shares['unrelated boxed']:.3f} of them boxed, "
          f"{shares['shapes found']:.3f} of the shapes found ({n} scenes)")
    return shares


def probe_presence(model, n: int, seed: int) -> dict[str, float]:
    """The share of the own phrase and of an absent colour look-alike that get a box, alone and in one list
    (``model``: anything with RexOmni's ``detect``)."""
    import random

    rng, boxed = random.Random(seed), {}
    scenes = benchmark_scenes(n, seed, crowded=True)
    for i, scene in enumerate(scenes):
        kind = scene["objects"][0]["attributes"]["kind"]
        present = {o["phrase"] for o in scene["objects"]}
        own = scene["objects"][0]["phrase"]
        look_alike = rng.choice([f"{c} {kind}" for c in COLOURS if f"{c} {kind}" not in present])
        asked = {"alone": [[own], [look_alike]], "in a list": [[own, look_alike] if i % 2 else [look_alike, own]]}
        for where, requests in asked.items():
            labels = set().union(*(model.detect(scene["image"], request).labels for request in requests))
            for name, phrase in (("own phrase", own), ("absent look-alike", look_alike)):
                boxed[f"{name}, {where}"] = boxed.get(f"{name}, {where}", 0) + (phrase in labels)
    shares = {k: v / len(scenes) for k, v in boxed.items()}
    print(f"boxed, over {len(scenes)} scenes")
    for key, share in shares.items():
        print(f"  {key:30s} {share:.2f}")
    return shares


def look_alike_sort(phrase: str, objects: list[dict]) -> str:
    """present, absent: colour (a present shape's kind in another colour) or absent: other."""
    if phrase in {o["phrase"] for o in objects}:
        return "present"
    kind = phrase.partition(" ")[2]
    return "absent: colour" if any(o["attributes"]["kind"] == kind for o in objects) else "absent: other"


def presence_decisions(model, scenes: list[dict]) -> dict[str, dict[str, float]]:
    """Per sort of asked phrase: mean p(None) and the shares answered None by argmax and by mass,
    teacher-forced on the right answer."""
    from rexomni.grammar import format_answer
    from rexomni.tokens import BOX_START, coord_id_to_bin

    tokenizer = model.tokenizer
    [none_id] = tokenizer.encode("None", add_special_tokens=False)
    box_start = tokenizer.convert_tokens_to_ids(BOX_START)
    coord_ids = torch.tensor(sorted(coord_id_to_bin(tokenizer, model.settings.num_bins)))
    rows: dict[str, list[tuple[float, bool]]] = {}
    for scene in scenes:
        asked = scene["categories"]
        request = model.prepare(scene["image"], "detection", asked)[0]
        answer = format_answer(scene["objects"], scene["width"], scene["height"], model.codec, phrases=asked,
                               kind="box")
        inputs = model.processor(text=[model.chat_text(request["prompt"]) + answer], images=[request["image"]],
                                 return_tensors="pt")
        with torch.inference_mode():
            logits = model.model(**inputs).logits[0].float()
        ids = inputs["input_ids"][0]
        for phrase, at in zip(asked, torch.nonzero(ids == box_start).flatten().tolist()[-len(asked):]):
            p = torch.softmax(logits[at], dim=-1)
            rows.setdefault(look_alike_sort(phrase, scene["objects"]), []).append(
                (float(p[none_id]), bool(p[none_id] > p[coord_ids].max())))
    return {sort: {"mean p(None)": sum(p for p, _ in r) / len(r), "None by argmax": sum(a for _, a in r) / len(r),
                   "None by mass": sum(p >= 0.5 for p, _ in r) / len(r), "phrases": len(r)}
            for sort, r in sorted(rows.items())}


def boxed_after_same_kind(predictions: str, scenes: list[dict]) -> dict[str, float]:
    """Share boxed per sort of phrase, split by whether a phrase of its kind got a box earlier in the list."""
    with open(predictions, encoding="utf-8") as f:
        answers = {row["key"]: row for row in map(json.loads, f)}
    counts: dict[str, list[int]] = {}
    for scene in scenes:
        answer = answers.get(scene["key"])
        if answer is None:
            continue
        boxed = set(answer["labels"])
        for k, phrase in enumerate(scene["categories"]):
            kind = phrase.partition(" ")[2]
            earlier = any(q in boxed for q in scene["categories"][:k] if q.partition(" ")[2] == kind)
            where = "after a same-kind box" if earlier else "first of its kind"
            key = f"{look_alike_sort(phrase, scene['objects'])}, {where}"
            counts.setdefault(key, [0, 0])
            counts[key][0] += phrase in boxed
            counts[key][1] += 1
    return {key: boxed / n for key, (boxed, n) in sorted(counts.items())}


def probe_decisions(model, n: int, predictions: str | None) -> None:
    from rexomni.eval.runner import synth_samples

    scenes = synth_samples(dict(SCENES, num_objects=[1, 4], distractors=True, n=n, seed=BENCHMARK_SEED))
    print(f"teacher-forced, {n} benchmark detection scenes")
    for sort, row in presence_decisions(model, scenes).items():
        shares = ", ".join(f"{k} {v:.2f}" if k != "phrases" else f"{v} phrases" for k, v in row.items())
        print(f"  {sort:15s} {shares}")
    if predictions:
        print(f"boxed in {predictions}")
        for key, share in boxed_after_same_kind(predictions, scenes).items():
            print(f"  {key:40s} {share:.2f}")


def probe_attention(path: str, n: int, seed: int) -> dict[str, list[float]]:
    from rexomni.sft.data import ExampleEncoder
    from rexomni.sft.search import SearchLoss, covered_cells, image_attention

    from rexomni.api import RexOmni

    model = RexOmni.from_pretrained(path, device="cpu")
    tokenizer = model.processor.tokenizer
    coord_ids = [tokenizer.convert_tokens_to_ids(f"<{i}>") for i in range(model.settings.num_bins)]
    encoder = ExampleEncoder(model.processor, None, 512)
    scenes = dict(SCENES, num_objects=[1, 4], distractors=True)
    stream = SearchLoss(model.model, encoder, coord_ids, weight=1.0, scenes=scenes, batch_size=1, layers=[0],
                        seed=seed, step=lambda: 0)
    depth = model.model.config.text_config.num_hidden_layers
    own, other, asked = torch.zeros(depth), torch.zeros(depth), 0
    for index in range(50 * n):
        if asked == n:
            break
        example, sample = stream.example(index)
        phrase = example["phrases"][0]
        kind = phrase.split()[-1]
        alike = [o["bbox"] for o in sample["objects"] if o["phrase"] != phrase and o["phrase"].split()[-1] == kind]
        item, [(query, cells)] = stream.request(index)
        grid = item["image_grid_thw"]
        merge = encoder.merge_size
        alike_cells = covered_cells(alike, sample["image"].size, int(grid[1]) // merge, int(grid[2]) // merge) & ~cells
        if not alike_cells.any():
            continue
        batch = {k: v for k, v in stream.collate([item]).items() if k != "labels"}
        with torch.no_grad():
            attentions = model.model(**batch, output_attentions=True, logits_to_keep=1).attentions
        image = batch["input_ids"][0] == encoder.image_token_id
        for layer in range(depth):
            on_image = image_attention(attentions, layer, 0, query, image)
            own[layer] += on_image[cells].sum()
            other[layer] += on_image[alike_cells].sum()
        asked += 1
    result = {"asked shape": (own / max(asked, 1)).tolist(), "look-alike": (other / max(asked, 1)).tolist()}
    print(f"{path}: image attention at the first box's start, {asked} requests with a look-alike of the same kind")
    for name, shares in result.items():
        print(f"  {name:12s} " + "  ".join(f"layer {i}: {v:.2f}" for i, v in enumerate(shares)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    tokens = sub.add_parser("tokens", help="linear probe of checkpoints' image tokens")
    tokens.add_argument("models", nargs="+", help="checkpoint folders, short names, or random:PRESET")
    tokens.add_argument("--scenes", type=int, default=1200)
    tower = sub.add_parser("learn", help="train a fresh vision tower as a shape classifier")
    tower.add_argument("--preset", default="tiny")
    tower.add_argument("--pixels", type=int, default=None, help="input side in pixels (default: the preset's)")
    tower.add_argument("--width", type=int, default=None)
    tower.add_argument("--depth", type=int, default=None)
    tower.add_argument("--patch", type=int, default=None)
    tower.add_argument("--steps", type=int, default=2000)
    tower.add_argument("--eval-every", type=int, default=200)
    tower.add_argument("--batch", type=int, default=32)
    tower.add_argument("--lr", type=float, default=1e-3)
    tower.add_argument("--dense", action="store_true", help="name the shape at every token of crowded scenes")
    names = sub.add_parser("names", help="colour and kind of the names a detect_all answer writes")
    names.add_argument("predictions", help="detect-all.jsonl from rexomni eval's predictions folder (or "
                                           "detection.jsonl, with --benchmark eval/benchmarks/synth_heldout.yaml "
                                           "--dataset detection)")
    names.add_argument("--benchmark", default="eval/benchmarks/synth_detect_all.yaml")
    names.add_argument("--dataset", default="detect-all")
    presence = sub.add_parser("presence", help="a phrase and its absent look-alike: which get a box")
    presence.add_argument("model", help="a checkpoint folder or short name")
    presence.add_argument("--scenes", type=int, default=60)
    decisions = sub.add_parser("decisions", help="p(None) of present phrases and absent look-alikes in a list")
    decisions.add_argument("model", help="a checkpoint folder or short name")
    decisions.add_argument("--scenes", type=int, default=64)
    decisions.add_argument("--predictions", default=None, help="detection.jsonl of rexomni eval on the benchmark")
    misses = sub.add_parser("misses", help="where the held-out benchmark's referring answers go")
    misses.add_argument("predictions", help="referring.jsonl from rexomni eval's predictions folder")
    misses.add_argument("--benchmark", default="eval/benchmarks/synth_heldout.yaml")
    lists = sub.add_parser("lists", help="category lists with unrelated absent phrases: how many get a box")
    lists.add_argument("model", help="a checkpoint folder or short name")
    lists.add_argument("--scenes", type=int, default=48)
    lists.add_argument("--absent", type=int, nargs="+", default=[0, 4, 8], help="unrelated phrases per list")
    attention = sub.add_parser("attention", help="attention at a box's start: the asked shape or its look-alike")
    attention.add_argument("models", nargs="+", help="checkpoint folders or short names")
    attention.add_argument("--scenes", type=int, default=60)
    for p in (tokens, tower, names, presence, decisions, misses, lists, attention):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.probe == "tokens":
        probe_tokens(args.models, args.scenes, args.seed)
    elif args.probe == "names":
        probe_names(args.predictions, args.benchmark, args.dataset)
    elif args.probe == "lists":
        from rexomni.api import RexOmni

        model = RexOmni.from_pretrained(args.model, device="cpu")
        for absent in args.absent:
            probe_lists(model, args.scenes, absent, args.seed)
    elif args.probe == "attention":
        for path in args.models:
            probe_attention(path, args.scenes, args.seed)
    elif args.probe == "misses":
        probe_misses(args.predictions, args.benchmark)
    elif args.probe == "presence":
        from rexomni.api import RexOmni

        probe_presence(RexOmni.from_pretrained(args.model, device="cpu"), args.scenes, args.seed)
    elif args.probe == "decisions":
        from rexomni.api import RexOmni

        probe_decisions(RexOmni.from_pretrained(args.model, device="cpu"), args.scenes, args.predictions)
    else:
        learn(args)


if __name__ == "__main__":
    main()
