"""``rexomni warmup``: the vision tower learns to name what each image token shows, before the
language model has to read it.

Why (docs/recipe.md, "Recognition is the wall"): trained end to end, a small model finds the
synthetic shapes long before it tells their kinds apart, because the only signal its vision tower gets
has passed back through the language model's answer. Here the tower and its merger train alone: a
head per attribute reads the merged image tokens (the tokens the language model reads), and the
token whose cell holds an object's centre must name that object's kind and colour; the other tokens
are not scored. A step costs a small fraction of an SFT step. The heads are thrown away at the end:
``output_dir`` holds the whole model with the trained tower, ready for ``rexomni sft``; its
``checkpoint-N`` folders hold tower and heads, so a stopped run resumes where it was.

    rexomni warmup --config sft/configs/synth-warmup.yaml
    rexomni warmup --config sft/configs/synth-warmup.yaml --max_steps 500 --output_dir runs/w
    rexomni warmup --help        # every field, with its help and default

The scenes come from the synthetic engine (``rexomni.data_engines.synth``), which knows every object's
attributes; held-out accuracy per attribute is logged every ``eval_steps`` as ``heldout/<attribute>``.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from rexomni.data_engines.synth import COLORS, SIZES, TRAIN_KINDS, generate_scene
from transformers import Trainer, TrainerCallback, TrainingArguments

from rexomni.modeling import save_checkpoint

from .config import ConfigParser, ModelArguments, _default, _help, resolve_bf16
from .trainer import TimeLimitCallback, keeping_step_log

IGNORE = -100  # cross_entropy's ignore_index: tokens whose cell holds no object's centre
SCENE_MODES = ("single", "shapes")  # the engine's modes whose objects carry kind and colour
HEADS = ("linear", "words")


@dataclass
class WarmupConfig(TrainingArguments):
    """TrainingArguments with the warm-up's defaults, plus the scenes and what each token names."""

    output_dir: str | None = _default("output_dir", "runs/warmup")
    max_steps: int = _default("max_steps", 3000)
    per_device_train_batch_size: int = _default("per_device_train_batch_size", 32)
    learning_rate: float = _default("learning_rate", 1e-3, "Learning rate of the vision tower, merger and heads.")
    lr_scheduler_type: str = _default("lr_scheduler_type", "constant_with_warmup")
    warmup_steps: float = _default("warmup_steps", 200)
    weight_decay: float = _default("weight_decay", 0.0)
    logging_steps: float = _default("logging_steps", 100)
    save_steps: float = _default("save_steps", 500)
    save_total_limit: int | None = _default("save_total_limit", 2)
    eval_steps: int = _default("eval_steps", 500, "Held-out accuracy every N steps (and at the end); 0: at the end.")
    bf16: bool | str = _default("bf16", "auto", "true, false or auto: on where the device supports it.")
    report_to: None | str | list[str] = _default("report_to", "tensorboard")
    remove_unused_columns: bool = _default("remove_unused_columns", False)
    resume_from_checkpoint: str | None = _default("resume_from_checkpoint", "auto", "A checkpoint folder, or auto: "
                                                  "the newest complete checkpoint in output_dir, if any.")

    scenes: dict = field(default_factory=lambda: dict(
        mode="single", size=224, sizes=["medium", "large"], num_objects=[1, 4], distractors=True), metadata={
        "help": "Options of the synthetic engine's generate_scene (mode single or shapes): the scenes drawn, a "
                "fresh seeded one per example."})
    attributes: list[str] = field(default_factory=lambda: ["kind", "color"], metadata={
        "help": "What the token at each object's centre names: any of kind, color, size (one head each)."})
    eval_scenes: int = _help("Held-out scenes (seeded apart from training) scored every eval_steps.", 512)
    max_train_minutes: float | None = _help("Stop after this much training time; the whole model is still saved.")
    head: str = _help("linear: a fresh linear layer per attribute reads the tokens. words: each class is the "
                      "language model's input embedding of its word (fixed), scored by cosine similarity with a "
                      "learnt scale: the token at a star's centre is pulled toward the embedding of 'star'.",
                      "linear")

    model_args: ModelArguments | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if isinstance(self.scenes, str):
            import yaml

            self.scenes = yaml.safe_load(self.scenes)  # a mapping given on the command line
        named_classes(self.scenes, self.attributes)  # a clear error now rather than at the first scene
        if self.head not in HEADS:
            raise ValueError(f"config: head must be one of {HEADS}, got {self.head!r}")
        self.bf16 = resolve_bf16(self.bf16)
        super().__post_init__()

    @property
    def classes(self) -> dict[str, list[str]]:
        """The class names of each attribute named, as the engine draws them for these scenes."""
        return named_classes(self.scenes, self.attributes)


def warmup_parser() -> ConfigParser:
    return ConfigParser([ModelArguments, WarmupConfig], prog="rexomni warmup",
                        usage="rexomni warmup --config CONFIG.yaml [--dry-run] [--FIELD VALUE ...]",
                        description="Recognition warm-up of the vision tower on synthetic scenes (sft/recognition.py). "
                                    "Of the model fields, model_name_or_path, preset, tokenizer and coord_codec apply; "
                                    "the tower and merger train at learning_rate, the rest is untouched.")


# --------------------------------------------------------------------------- data


def attribute_classes(scenes: dict) -> dict[str, list[str]]:
    """Per attribute, the class names the engine draws for these scene options."""
    return {"kind": list(scenes.get("kinds") or TRAIN_KINDS), "color": list(scenes.get("colors") or COLORS),
            "size": list(scenes.get("sizes") or SIZES)}


def named_classes(scenes, attributes: list[str], prefix: str = "") -> dict[str, list[str]]:
    """Per attribute in ``attributes``, its class names in these scenes; a ValueError naming the config field
    (``prefix`` + scenes / attributes) for scenes whose objects carry no attributes or an unknown attribute."""
    if not isinstance(scenes, dict) or scenes.get("mode", "shapes") not in SCENE_MODES:
        raise ValueError(f"config: {prefix}scenes must be generate_scene options with mode in {SCENE_MODES}, "
                         f"got {scenes!r}")
    drawn = attribute_classes(scenes)
    unknown = sorted(set(attributes) - set(drawn))
    if unknown or not attributes:
        raise ValueError(f"config: {prefix}attributes {unknown or '[]'} unknown; choose from {sorted(drawn)}")
    return {name: drawn[name] for name in attributes}


def centre_cell(box, image_size, rows: int, cols: int) -> tuple[int, int]:
    """The merged-token grid cell (row, column) that holds the centre of ``box``."""
    (x0, y0, x1, y1), (width, height) = box, image_size
    return min(int((y0 + y1) / 2 / height * rows), rows - 1), min(int((x0 + x1) / 2 / width * cols), cols - 1)


def token_targets(objects: list[dict], image_size, rows: int, cols: int,
                  classes: dict[str, list[str]]) -> dict[str, torch.Tensor]:
    """Per attribute, one class index per merged token, row by row: that of the object whose centre is
    in the token's cell, IGNORE where there is none. Where two centres share a cell, the larger object
    names it (it covers more of the cell)."""
    targets = {name: torch.full((rows, cols), IGNORE) for name in classes}
    by_area = sorted(objects, key=lambda o: (o["bbox"][2] - o["bbox"][0]) * (o["bbox"][3] - o["bbox"][1]))
    for obj in by_area:
        row, col = centre_cell(obj["bbox"], image_size, rows, cols)
        for name, names in classes.items():
            targets[name][row, col] = names.index(obj["attributes"][name])
    return {name: t.flatten() for name, t in targets.items()}


class SceneTokens(torch.utils.data.Dataset):
    """``length`` synthetic scenes, random access, each index its own seeded draw (``seed``, index):
    pixels as the model's image processor cuts them, and per attribute a class for each merged token."""

    def __init__(self, scenes: dict, classes: dict[str, list[str]], image_processor, length: int, seed: str):
        self.scenes, self.classes, self.processor = dict(scenes), classes, image_processor
        self.length, self.seed = int(length), seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        scene_seed = random.Random(f"{self.seed}:{index}").getrandbits(63)
        image, sample = generate_scene(scene_seed, masks=False, **self.scenes)
        inputs = self.processor(images=[image], return_tensors="pt")
        grid = inputs["image_grid_thw"][0]
        merge = self.processor.merge_size
        targets = token_targets(sample["objects"], image.size, int(grid[1]) // merge, int(grid[2]) // merge,
                                self.classes)
        return {"pixel_values": inputs["pixel_values"], "image_grid_thw": grid,
                **{f"labels_{name}": t for name, t in targets.items()}}


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Patches and token targets of all images one after the other, as the vision tower takes them."""
    batch = {"image_grid_thw": torch.stack([e["image_grid_thw"] for e in examples])}
    for key in examples[0]:
        if key != "image_grid_thw":
            batch[key] = torch.cat([e[key] for e in examples])
    return batch


# --------------------------------------------------------------------------- model


class WordHead(torch.nn.Module):
    """Logits as scaled cosine similarities to fixed class vectors (the language model's embeddings of
    the class words): the scale is the only parameter."""

    def __init__(self, words: torch.Tensor, scale: float = 10.0):
        super().__init__()
        self.register_buffer("words", F.normalize(words.float(), dim=-1))
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(tokens.float(), dim=-1) @ self.words.float().T


def word_embeddings(model, tokenizer, names: list[str]) -> torch.Tensor:
    """(len(names), width): per word, the mean input embedding of its tokens, as it starts a phrase and
    as it follows a space (both occur in answers: "star", "red star")."""
    table = model.get_input_embeddings().weight.detach()
    rows = []
    for name in names:
        ids = [i for text in (name, " " + name) for i in tokenizer(text, add_special_tokens=False).input_ids]
        rows.append(table[ids].float().mean(0))
    return torch.stack(rows)


class TokenNamer(torch.nn.Module):
    """The model's vision tower and merger (shared, not copied) and a head per attribute on the merged
    tokens: a linear layer, or (``words`` given: per attribute, one vector per class) a
    :class:`WordHead`. ``forward`` returns the summed cross-entropy over the named tokens and the logits."""

    def __init__(self, visual: torch.nn.Module, width: int, classes: dict[str, list[str]],
                 words: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.visual = visual
        self.heads = torch.nn.ModuleDict({
            name: WordHead(words[name]) if words else torch.nn.Linear(width, len(names))
            for name, names in classes.items()})

    def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor, **labels) -> dict:
        dtype = next(self.visual.parameters()).dtype
        tokens = self.visual(pixel_values.to(dtype), grid_thw=image_grid_thw).pooler_output  # the merged tokens
        logits = {name: head(tokens).float() for name, head in self.heads.items()}
        loss = sum(F.cross_entropy(logits[name], labels[f"labels_{name}"], ignore_index=IGNORE)
                   for name in logits if (labels[f"labels_{name}"] != IGNORE).any())
        return {"loss": loss if torch.is_tensor(loss) else tokens.sum() * 0.0, "logits": logits}


def token_accuracy(namer: TokenNamer, dataset: SceneTokens, batch_size: int = 64) -> dict[str, float]:
    """Per attribute, the share of named tokens whose argmax is right."""
    right, total = dict.fromkeys(namer.heads, 0), dict.fromkeys(namer.heads, 0)
    was_training = namer.training
    namer.eval()
    device = next(namer.parameters()).device
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = namer(**batch)["logits"]
            for name, z in logits.items():
                target = batch[f"labels_{name}"]
                scored = target != IGNORE
                right[name] += int((z.argmax(-1)[scored] == target[scored]).sum())
                total[name] += int(scored.sum())
    namer.train(was_training)
    return {name: right[name] / max(total[name], 1) for name in right}


class NamingLoss:
    """The warm-up's objective kept on during SFT, as one of the SFT trainer's extra losses.

    Why (docs/recipe.md, "SFT forgets colour"): after a warm-up the merged tokens name colours at 0.98, and
    600 SFT steps later at 0.41; a language model that does not yet read colour feels it only as noise in
    its tokens, so SFT trains it out, and the tower never offers it again. Each training step here also
    draws ``batch_size`` fresh scenes, and the token at each object's centre must name the object's
    attributes through :class:`WordHead`: the class vectors are the language model's own embeddings of
    the words (detached, read afresh every step), so the loss adds no parameter and pulls the token at a
    red star toward what the model reads for "red" and "star".
    """

    def __init__(self, model, tokenizer, image_processor, *, weight: float, scenes: dict, attributes: list[str],
                 batch_size: int, seed: int, step):
        self.model, self.tokenizer, self.weight, self.batch_size, self.step = model, tokenizer, weight, batch_size, step
        self.classes = named_classes(scenes, attributes, prefix="naming_")
        # A resumed run draws the scenes an uninterrupted one would: scene i of step s is index s * batch + i.
        self.scenes = SceneTokens(scenes, self.classes, image_processor, 2**62, f"naming:{seed}")

    def __call__(self, *, model=None, inputs=None, outputs=None, labels=None):
        if not self.model.training:
            return torch.zeros(()), {}
        start = self.step() * self.batch_size
        batch = collate([self.scenes[start + i] for i in range(self.batch_size)])
        visual = self.model.model.visual
        device = next(visual.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        words = {name: word_embeddings(self.model, self.tokenizer, names).to(device)
                 for name, names in self.classes.items()}
        namer = TokenNamer(visual, self.model.config.text_config.hidden_size, self.classes, words).to(device)
        loss = namer(**batch)["loss"]
        return self.weight * loss, {"naming_loss": round(float(loss.detach()), 4)}


# --------------------------------------------------------------------------- training


class WarmupTrainer(Trainer):
    def _get_train_sampler(self, train_dataset=None):
        """Indices in order: every index is its own seeded draw, so a resumed run sees the batches an
        uninterrupted one would."""
        return torch.utils.data.SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


class HeldOutAccuracy(TrainerCallback):
    """Every ``eval_steps`` and at the end: log ``heldout/<attribute>``, the held-out token accuracy."""

    def __init__(self, trainer: WarmupTrainer, namer: TokenNamer, heldout: SceneTokens):
        self.trainer, self.namer, self.heldout = trainer, namer, heldout
        self.history: list[dict] = []

    def _run(self, state) -> None:
        accuracy = {f"heldout/{k}": round(v, 4) for k, v in token_accuracy(self.namer, self.heldout).items()}
        self.history.append({"step": state.global_step, **accuracy})
        self.trainer.log(accuracy)

    def on_step_end(self, args, state, control, **kwargs):
        if args.eval_steps and state.global_step % args.eval_steps == 0 and state.global_step < state.max_steps:
            with keeping_step_log(control):
                self._run(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._run(state)


def run_warmup(config: WarmupConfig) -> dict:
    """Train the tower as ``config`` says, write the whole model to ``output_dir``; returns the metrics."""
    from .model_setup import load_model
    from .trainer import resume_point

    bundle = load_model(config.model_args, seed=config.seed, bf16=config.bf16)
    model = bundle.model
    for param in model.parameters():
        param.requires_grad_(False)
    visual = model.model.visual
    for param in visual.parameters():
        param.requires_grad_(True)
    classes = config.classes
    torch.manual_seed(config.seed)
    words = ({name: word_embeddings(model, bundle.tokenizer, names) for name, names in classes.items()}
             if config.head == "words" else None)
    namer = TokenNamer(visual, model.config.text_config.hidden_size, classes, words).to(visual.dtype)
    image_processor = bundle.processor.image_processor
    train_set = SceneTokens(config.scenes, classes, image_processor,
                            config.max_steps * config.per_device_train_batch_size, f"warmup:{config.seed}")
    heldout = SceneTokens(config.scenes, classes, image_processor, config.eval_scenes, f"warmup-heldout:{config.seed}")
    trainer = WarmupTrainer(model=namer, args=config, train_dataset=train_set, data_collator=collate)
    callback = HeldOutAccuracy(trainer, namer, heldout)
    if config.eval_scenes:
        trainer.add_callback(callback)
    if config.max_train_minutes:
        trainer.add_callback(TimeLimitCallback(config.max_train_minutes))
    result = trainer.train(resume_from_checkpoint=resume_point(config))
    if trainer.is_world_process_zero():
        save_checkpoint(config.output_dir, model, bundle.processor, bundle.settings)
    return {"train": result.metrics, "heldout": callback.history, "output_dir": config.output_dir,
            "global_step": trainer.state.global_step, "log_history": trainer.state.log_history}


def plan(config: WarmupConfig) -> str:
    """What a run would do, without training."""
    from .model_setup import count_by_part, meta_model

    model, _, origin = meta_model(config.model_args)
    counts = count_by_part(model)
    classes = config.classes
    return "\n".join([
        f"model          {config.model_args.model_name_or_path or 'random ' + str(config.model_args.preset)}"
        f"  [shape: {origin}]",
        f"scenes         {config.scenes}",
        "names          " + ", ".join(f"{name} ({len(names)} classes)" for name, names in classes.items()),
        f"steps          {config.max_steps} x batch {config.per_device_train_batch_size}",
        f"learning rate  {config.learning_rate:g}, {config.lr_scheduler_type.value}, warm-up {config.warmup_steps:g}",
        f"trains         vision {counts['vision'][0]:,} + merger {counts['merger'][0]:,} parameters "
        f"(language model {counts['llm'][0]:,}: untouched)",
        f"output         {config.output_dir}",
    ])


def main(argv: list[str] | None = None) -> int:
    from .cli import run_command

    parser = warmup_parser()
    parser.add_argument("--dry-run", "--dry_run", action="store_true", help="Print the plan and exit.")
    return run_command("warmup", parser, lambda: (plan, run_warmup), argv)


if __name__ == "__main__":
    sys.exit(main())
