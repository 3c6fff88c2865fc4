"""SFT losses: next-token cross-entropy on the labelled tokens, an optional soft-label loss on
coordinate tokens, and a hook for extra sequence-level losses.

Soft labels: a coordinate one bin off is nearly right, which plain cross-entropy does not know. With
``sigma > 0`` the target at a coordinate position becomes a Gaussian over the neighbouring bins
(sigma in bins), mixed with the one-hot target by ``weight``. It is OFF by default: on this
project's from-scratch runs sigma 5 hurt (tiny model, single-shape scenes, 600 s: mean IoU 0.35 against
0.96 for plain cross-entropy) and nothing has yet shown it helps.

Extra losses (:class:`NegativeHingeLoss`, the negative-prompt hinge, is one) are callables
``fn(model=, inputs=, outputs=, labels=) -> Tensor | (Tensor, dict of floats to log)``, named in
the config as ``"package.module:function"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX

ExtraLoss = Callable[..., "torch.Tensor | tuple[torch.Tensor, dict]"]


def coordinate_bin_lookup(vocab_size: int, coord_ids: list[int]) -> torch.Tensor:
    """(vocab_size,) long: the bin of each coordinate token id, -1 elsewhere."""
    lookup = torch.full((vocab_size,), -1, dtype=torch.long)
    lookup[torch.as_tensor(coord_ids)] = torch.arange(len(coord_ids))
    return lookup


def gaussian_bin_targets(bins: torch.Tensor, num_bins: int, sigma: float) -> torch.Tensor:
    """(N, num_bins) rows summing to 1: a Gaussian over bins centred at each of ``bins``."""
    grid = torch.arange(num_bins, device=bins.device, dtype=torch.float32)
    weights = torch.exp(-0.5 * ((grid[None, :] - bins[:, None].float()) / sigma) ** 2)
    return weights / weights.sum(-1, keepdim=True)


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the positions whose next token is labelled, the only logits the loss reads. Given to
    the model as ``logits_to_keep``, it projects just these rows onto the vocabulary (about a third
    of a synthetic example's tokens: the image and prompt are not scored)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


class CausalLMLoss:
    """Shifted next-token loss over ``labels != -100``, summed and divided by ``num_items``.

    ``num_items`` is the number of labelled tokens in the whole (accumulated, all-process) batch,
    which transformers' Trainer passes; without it the loss is the mean over this batch.
    """

    def __init__(self, coord_ids: list[int] | None = None, soft_label_sigma: float = 0.0,
                 soft_label_weight: float = 1.0):
        if soft_label_sigma > 0 and not coord_ids:
            raise ValueError("soft labels need the coordinate token ids")
        self.coord_ids = list(coord_ids or [])
        self.sigma, self.weight = float(soft_label_sigma), float(soft_label_weight)
        self._lookup: torch.Tensor | None = None

    @property
    def soft(self) -> bool:
        return self.sigma > 0 and self.weight > 0

    def per_token(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses of the labelled positions (N,), their target ids (N,)). ``logits`` are (B, T, V), or
        (N, V): already only the rows that predict a label, in order (:func:`predicting_positions`)."""
        labels = labels[:, 1:]
        mask = labels != IGNORE_INDEX
        targets = labels[mask]
        rows = logits if logits.dim() == 2 else logits[:, :-1][mask]
        if rows.shape[0] != targets.shape[0]:
            raise ValueError(f"{rows.shape[0]} logit rows for {targets.shape[0]} labelled positions")
        logprobs = F.log_softmax(rows.float(), dim=-1)
        losses = -logprobs.gather(1, targets[:, None])[:, 0]
        if self.soft:
            losses = self._mix_soft(losses, logprobs, targets)
        return losses, targets

    def _mix_soft(self, losses: torch.Tensor, logprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        vocab = logprobs.shape[-1]
        if self._lookup is None or self._lookup.numel() != vocab or self._lookup.device != targets.device:
            self._lookup = coordinate_bin_lookup(vocab, self.coord_ids).to(targets.device)
        bins = self._lookup[targets.clamp(0, vocab - 1)]
        at_coord = bins >= 0
        if not at_coord.any():
            return losses
        soft_targets = gaussian_bin_targets(bins[at_coord], len(self.coord_ids), self.sigma)
        coord_ids = torch.as_tensor(self.coord_ids, device=targets.device)
        soft = -(soft_targets * logprobs[at_coord][:, coord_ids]).sum(-1)
        mixed = losses.clone()
        mixed[at_coord] = (1 - self.weight) * losses[at_coord] + self.weight * soft
        return mixed

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, num_items: int | torch.Tensor | None = None):
        losses, _ = self.per_token(logits, labels)
        if num_items is None:
            return losses.mean() if losses.numel() else logits.sum() * 0.0
        if isinstance(num_items, torch.Tensor):
            num_items = num_items.to(losses.device)
        return losses.sum() / num_items


def load_extra_loss(spec: str | None) -> ExtraLoss | None:
    """``"package.module:function"`` -> the function (None -> None), with a clear error if absent."""
    if not spec:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"extra_loss must look like 'package.module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"extra_loss {spec!r} cannot be imported: {e}") from None
    if not callable(fn):
        raise ValueError(f"extra_loss {spec!r} is not callable")
    return fn


# --------------------------------------------------------------------------- negative hinge loss (NNH)

HINGE_KEYS = ("hinge_ids", "hinge_lengths", "hinge_example", "hinge_positive")  # collated by SFTCollator


class NegativeHingeLoss:
    """T-Rex-Omni's Negating Negative Hinge loss, carried to a model that writes coordinates:
    ``weight * mean over (box, negative) pairs of max(0, S_neg - S_pos + eta)``.

    ``S`` is the mean log-probability of a ground-truth box's four coordinate tokens, teacher-forced after
    a variant's prompt, as NNC scores boxes at inference (rexomni.negatives): S_pos under the released
    detection prompt for the box's own phrase, S_neg under each negative of the same example's prompt (a
    negative phrase, or its negative boxes as the examples of a visual prompt). The loss is zero once
    every box is at least ``eta`` nats per token more likely under its phrase than under each negative.

    The rows (built by ``ExampleEncoder.hinge_suffixes``) are scored in one batched pass per batch that
    shares each image's prefix (:func:`rexomni.negatives.suffix_logprobs`): a KV cache of the prefix
    expanded over the rows, or, when activation checkpointing is on (transformers drops a KV cache inside
    checkpointed layers), one forward over the stacked rows with each image encoded once.
    Hook form: ``fn(model=, inputs=, outputs=, labels=) -> (tensor, logs)``.
    """

    def __init__(self, weight: float, eta: float, vision_end_id: int, pad_id: int):
        if weight < 0 or eta < 0:
            raise ValueError(f"the negative hinge needs weight >= 0 and eta >= 0, got {weight} and {eta}")
        self.weight, self.eta, self.vision_end_id, self.pad_id = float(weight), float(eta), vision_end_id, pad_id

    def __call__(self, model, inputs, outputs, labels):
        if "hinge_ids" not in inputs:
            return torch.zeros((), device=labels.device), {}
        scores = self.row_scores(model, inputs)
        owner, positive = inputs["hinge_example"].tolist(), inputs["hinge_positive"].tolist()
        own_row = {e: k for k, (e, p) in enumerate(zip(owner, positive)) if p}  # each example's positive row
        negative_rows = [k for k, p in enumerate(positive) if not p]
        margin = scores[[own_row[owner[k]] for k in negative_rows]] - scores[negative_rows]  # S_pos - S_neg
        hinge = torch.relu(self.eta - margin)
        loss = hinge.mean()
        logs = {"hinge/loss": float(loss.detach()), "hinge/active": float((hinge > 0).float().mean()),
                "hinge/margin": float(margin.detach().mean())}
        return self.weight * loss, logs

    def row_scores(self, model, inputs) -> torch.Tensor:
        """S of every row of the batch (``hinge_*``), differentiable: one batched pass sharing each image's
        prefix. ``model`` may be wrapped (DDP, DeepSpeed): the passes go to the module inside it, and
        their gradients join the main loss's in the wrapper's reduction (rexomni.negatives)."""
        from rexomni.negatives import suffix_logprobs

        owner = inputs["hinge_example"].tolist()
        examples = sorted(set(owner))
        suffixes = [row[:n] for row, n in zip(inputs["hinge_ids"].tolist(), inputs["hinge_lengths"].tolist())]
        checkpointing = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        return suffix_logprobs(model, self.image_prefixes(inputs, examples), [examples.index(e) for e in owner],
                               suffixes, share_prefix=not checkpointing, pad_id=self.pad_id)

    def image_prefixes(self, inputs, examples: list[int]) -> dict:
        """The prefixes (through ``<|vision_end|>``) of the batch's ``examples``, left-padded, with their images."""
        ids = inputs["input_ids"]
        rows = []
        for e in examples:
            end = (ids[e] == self.vision_end_id).nonzero()
            if not len(end):
                raise ValueError(f"example {e} of the batch has no image end token")
            rows.append(ids[e, : int(end[0]) + 1])
        length = max(len(r) for r in rows)
        prefix_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long, device=ids.device)
        mask = torch.zeros_like(prefix_ids)
        for i, row in enumerate(rows):
            prefix_ids[i, length - len(row):], mask[i, length - len(row):] = row, 1
        grid = inputs["image_grid_thw"]
        patches = torch.split(inputs["pixel_values"], grid.prod(-1).tolist())
        return {"input_ids": prefix_ids, "attention_mask": mask, "image_grid_thw": grid[examples],
                "pixel_values": torch.cat([patches[e] for e in examples])}
