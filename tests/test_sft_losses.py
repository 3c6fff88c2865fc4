"""SFT losses: cross-entropy as torch computes it, soft labels put gradient on neighbouring bins,
the extra-loss hook is loaded by name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from rexomni.sft.losses import CausalLMLoss, gaussian_bin_targets, load_extra_loss, predicting_positions

VOCAB, COORD_START, BINS = 1200, 100, 1000
COORD_IDS = list(range(COORD_START, COORD_START + BINS))


def batch(target_bin: int = 500):
    """Two rows; row 0 labels a word then a coordinate token, row 1 is partly padding."""
    torch.manual_seed(0)
    logits = torch.randn(2, 5, VOCAB)
    labels = torch.full((2, 5), -100)
    labels[0, 2], labels[0, 3] = 7, COORD_START + target_bin
    labels[1, 1] = 9
    return logits, labels


def test_plain_loss_is_shifted_cross_entropy():
    logits, labels = batch()
    loss = CausalLMLoss(COORD_IDS)(logits, labels)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, ref)
    # num_items (the accumulated batch's labelled tokens) divides the sum instead of the mean
    summed = CausalLMLoss(COORD_IDS)(logits, labels, num_items=torch.tensor(6))
    torch.testing.assert_close(summed, ref * 3 / 6)


def test_logits_of_the_predicting_positions_alone_give_the_same_loss():
    """The model may project only the positions whose next token is labelled (logits_to_keep): the
    loss over those rows, soft labels included, is the loss over the full logits."""
    logits, labels = batch()
    keep = predicting_positions(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, False, False, False, False]]
    for loss in (CausalLMLoss(COORD_IDS), CausalLMLoss(COORD_IDS, soft_label_sigma=3.0, soft_label_weight=0.5)):
        torch.testing.assert_close(loss(logits[keep], labels), loss(logits, labels))
    with pytest.raises(ValueError, match="2 logit rows for 3 labelled positions"):
        CausalLMLoss()(logits[keep][:2], labels)


def test_soft_labels_put_gradient_mass_on_neighbouring_bins():
    target = 500
    grads = {}
    for name, sigma in (("ce", 0.0), ("soft", 2.0)):
        logits, labels = batch(target)
        logits.requires_grad_(True)
        CausalLMLoss(COORD_IDS, soft_label_sigma=sigma, soft_label_weight=1.0)(logits, labels).backward()
        grads[name] = logits.grad[0, 2, COORD_IDS]  # the position that predicts the coordinate
    neighbours = [target - 2, target - 1, target + 1, target + 2]
    # Gradient descent raises a logit whose gradient is negative.
    assert (grads["soft"][neighbours] < 0).all(), "soft labels should pull neighbouring bins up"
    assert (grads["ce"][neighbours] > 0).all(), "plain CE pushes every non-target bin down"
    assert (grads["soft"][[0, 100, 900]] > 0).all(), "far bins are still pushed down"
    assert grads["soft"][target] < grads["soft"][target + 2] < 0


def test_soft_labels_leave_non_coordinate_positions_alone():
    logits, labels = batch()
    plain = CausalLMLoss(COORD_IDS).per_token(logits, labels)[0]
    soft = CausalLMLoss(COORD_IDS, soft_label_sigma=3.0, soft_label_weight=0.5).per_token(logits, labels)[0]
    is_coord = torch.tensor([False, True, False])  # order: row 0 word, row 0 coordinate, row 1 word
    torch.testing.assert_close(soft[~is_coord], plain[~is_coord])
    assert not torch.isclose(soft[is_coord], plain[is_coord]).any()


def test_gaussian_targets_are_normalised_and_centred():
    targets = gaussian_bin_targets(torch.tensor([0, 500, 999]), BINS, 5.0)
    torch.testing.assert_close(targets.sum(-1), torch.ones(3))
    assert targets.argmax(-1).tolist() == [0, 500, 999]


def test_extra_loss_by_name():
    fn = load_extra_loss("torch.nn.functional:mse_loss")
    assert fn is F.mse_loss
    assert load_extra_loss(None) is None
    with pytest.raises(ValueError, match="package.module:function"):
        load_extra_loss("torch.nn.functional.mse_loss")
    with pytest.raises(ValueError, match="cannot be imported"):
        load_extra_loss("rexomni.no_such_module:fn")
    with pytest.raises(ValueError, match="coordinate token ids"):
        CausalLMLoss(None, soft_label_sigma=1.0)
