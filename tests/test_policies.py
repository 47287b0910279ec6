"""The pseudo-label policies keep exactly the images the paper says they keep."""
import pytest
import torch

import common
from conftest import load_train

RT = common.Runtime('cpu', 'off')  # a single process


def probs(confidences, num_classes=4):
    """Mean predictions whose max is the given confidence."""
    rest = [(1 - c) / (num_classes - 1) for c in confidences]
    return torch.tensor([[c] + [r] * (num_classes - 1) for c, r in zip(confidences, rest)])


def accuracy(correct, seen):
    acc = common.TrainAccuracy(torch.device('cpu'))
    acc.add(torch.tensor(correct), seen)
    return acc


def test_fixed_keeps_exactly_the_images_at_or_above_the_threshold():
    train = load_train('fixed')
    args = train.get_args(['--threshold', '0.8'])
    p = probs([0.9, 0.8, 0.79999, 0.5, 1.0])
    keep, th, conf = train.pseudo_label_mask(p, common.sharpen(p, args.T), None, None, RT, args)
    assert keep.tolist() == [True, True, False, False, True]
    assert th.item() == torch.tensor(0.8).item()


def test_fixed_sharpened_confidence_keeps_more():
    train = load_train('fixed')
    args = train.get_args(['--threshold', '0.8', '--confidence', 'sharpened'])
    p = probs([0.6, 0.3])
    keep, _, conf = train.pseudo_label_mask(p, common.sharpen(p, args.T), None, None, RT, args)
    assert conf[0] > 0.8 and keep.tolist() == [True, False]          # 0.6 sharpened at T=0.5 is ~0.84


def test_adaptive_keeps_floor_of_batch_times_accuracy_most_confident():
    train = load_train('adaptive')
    args = train.get_args(['--min-th', '0.5'])
    conf = [0.95, 0.6, 0.99, 0.7, 0.55, 0.9, 0.65, 0.8, 0.75, 0.85]
    p = probs(conf)
    keep, th, _ = train.pseudo_label_mask(p, p, accuracy(37, 100), None, RT, args)   # floor(10 * 0.37) = 3
    assert keep.sum().item() == 3
    assert sorted(torch.tensor(conf)[keep].tolist(), reverse=True) == pytest.approx(sorted(conf, reverse=True)[:3])
    assert th.item() == torch.tensor(0.9).item()                                   # lowest kept confidence
    keep, _, _ = train.pseudo_label_mask(p, p, accuracy(100, 100), None, RT, args)
    assert keep.sum().item() == 10


def test_adaptive_floor_wins_over_accuracy():
    train = load_train('adaptive')
    args = train.get_args(['--min-th', '0.7'])
    p = probs([0.95, 0.6, 0.4, 0.72, 0.5])
    keep, _, _ = train.pseudo_label_mask(p, p, accuracy(1, 1), None, RT, args)        # k = 5, floor 0.7
    assert keep.tolist() == [True, False, False, True, False]


def test_adaptive_keeps_nothing_before_any_accuracy_and_can_follow_val():
    train = load_train('adaptive')
    args = train.get_args([])
    p = probs([0.99, 0.98])
    keep, th, _ = train.pseudo_label_mask(p, p, common.TrainAccuracy(torch.device('cpu')), None, RT, args)
    assert not keep.any() and th.item() == 1.0
    args = train.get_args(['--acc-source', 'val'])
    keep, _, _ = train.pseudo_label_mask(p, p, accuracy(0, 1), (torch.tensor(1), torch.tensor(2)), RT, args)
    assert keep.tolist() == [True, False]                                          # floor(2 * 1/2) = 1


def test_train_accuracy_window_is_seeded_with_the_previous_window():
    acc = common.TrainAccuracy(torch.device('cpu'))
    assert [int(v) for v in acc.fraction()] == [0, 1]                              # starts at 0
    acc.add(torch.tensor(3), 4)
    acc.add(torch.tensor(1), 4)
    assert [int(v) for v in acc.fraction()] == [4, 8]                              # running mean of the window
    acc.new_window()
    assert [int(v) for v in acc.fraction()] == [4, 8]                              # seeded: last value
    acc.add(torch.tensor(8), 8)
    assert [int(v) for v in acc.fraction()] == [8, 8]                              # the seed is not mixed in
    acc.new_window()
    acc.new_window()                                                               # an empty window keeps it
    assert [int(v) for v in acc.fraction()] == [8, 8]
