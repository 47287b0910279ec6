"""The pseudo-label policies keep exactly the images the paper says they keep."""
import pytest
import torch

import semisup
from conftest import context, load_train, make_guess
from runtime import Runtime

RT = Runtime('cpu', 'off')  # a single process


def probs(confidences, num_classes=4):
    """Mean predictions whose max is the given confidence."""
    rest = [(1 - c) / (num_classes - 1) for c in confidences]
    return torch.tensor([[c] + [r] * (num_classes - 1) for c, r in zip(confidences, rest)])


def policy_of(method, flags):
    train = load_train(method)
    args = train.get_args(flags)
    return train.POLICIES[args.policy](args, 4, 100)


def test_fixed_keeps_exactly_the_images_at_or_above_the_threshold():
    policy = policy_of('fixed', ['--threshold', '0.8'])
    keep, th = policy.mask(make_guess(probs([0.9, 0.8, 0.79999, 0.5, 1.0])), context(RT))
    assert keep.tolist() == [True, True, False, False, True]
    assert th.item() == torch.tensor(0.8).item()


def test_fixed_sharpened_confidence_keeps_more():
    policy = policy_of('fixed', ['--threshold', '0.8', '--confidence', 'sharpened'])
    u = make_guess(probs([0.6, 0.3]))
    keep, _ = policy.mask(u, context(RT))
    assert policy.confidence(u)[0] > 0.8 and keep.tolist() == [True, False]    # 0.6 sharpened at T=0.5 is ~0.84


def test_mixmatch_keeps_everything():
    policy = policy_of('mixmatch', [])
    keep, th = policy.mask(make_guess(probs([0.3, 0.99, 0.26])), context(RT))
    assert keep.tolist() == [True, True, True] and th.item() == 0.0


def test_adaptive_keeps_floor_of_batch_times_accuracy_most_confident():
    policy = policy_of('adaptive', ['--min-th', '0.5'])
    conf = [0.95, 0.6, 0.99, 0.7, 0.55, 0.9, 0.65, 0.8, 0.75, 0.85]
    u = make_guess(probs(conf))
    keep, th = policy.mask(u, context(RT, train_acc=(37, 100)))                     # floor(10 * 0.37) = 3
    assert keep.sum().item() == 3
    assert sorted(torch.tensor(conf)[keep].tolist(), reverse=True) == pytest.approx(sorted(conf, reverse=True)[:3])
    assert th.item() == torch.tensor(0.9).item()                                   # lowest kept confidence
    keep, _ = policy.mask(u, context(RT, train_acc=(100, 100)))
    assert keep.sum().item() == 10


def test_adaptive_floor_wins_over_accuracy():
    policy = policy_of('adaptive', ['--min-th', '0.7'])
    keep, _ = policy.mask(make_guess(probs([0.95, 0.6, 0.4, 0.72, 0.5])), context(RT, train_acc=(1, 1)))  # k = 5
    assert keep.tolist() == [True, False, False, True, False]


def test_adaptive_keeps_nothing_before_any_accuracy_and_can_follow_val():
    u = make_guess(probs([0.99, 0.98]))
    keep, th = policy_of('adaptive', []).mask(u, context(RT, train_acc=(0, 1)))
    assert not keep.any() and th.item() == 1.0
    keep, _ = policy_of('adaptive', ['--accuracy', 'val']).mask(u, context(RT, train_acc=(0, 1), val_acc=(1, 2)))
    assert keep.tolist() == [True, False]                                          # floor(2 * 1/2) = 1


def fraction(acc):
    return [int(v) for v in acc.fraction()]


def test_train_accuracy_window_seeded_as_session_431_weighs_the_last_batch_as_one_image():
    """The original: AverageMeter.update(last batch value, 1) at an epoch's start, then update(acc, B) per batch."""
    acc = semisup.TrainAccuracy(torch.device('cpu'))                 # --accuracy last-batch, the default
    assert fraction(acc) == [0, 1]                                   # the first window's seed is 0
    acc.add(torch.tensor(3), 4)
    assert fraction(acc) == [3, 5]                                   # (0 * 1 + 3) / (1 + 4)
    acc.add(torch.tensor(1), 4)
    acc.new_window()
    assert fraction(acc) == [1, 4]                                   # the last batch: 1 of 4
    acc.add(torch.tensor(8), 8)
    assert fraction(acc) == [33, 36]                                 # (0.25 * 1 + 8) / (1 + 8), in integers
    acc.new_window()
    acc.new_window()                                                 # an empty window keeps its seed
    assert fraction(acc) == [8, 8]
    assert [int(v) for v in acc.completed()] == [8, 8]               # the last completed window, unseeded


def test_train_accuracy_unseeded_as_session_401_and_the_first_releases_window_mean():
    acc = semisup.TrainAccuracy(torch.device('cpu'), 'none')
    acc.add(torch.tensor(3), 4)
    acc.add(torch.tensor(1), 4)
    assert fraction(acc) == [4, 8]
    acc.new_window()
    assert fraction(acc) == [0, 1]                                   # each window's first step reads 0
    acc = semisup.TrainAccuracy(torch.device('cpu'), 'window')
    acc.add(torch.tensor(3), 4)
    acc.add(torch.tensor(1), 4)
    acc.new_window()
    assert fraction(acc) == [4, 8]                                   # the previous window's mean
    acc.add(torch.tensor(8), 8)
    assert fraction(acc) == [8, 8]                                   # then the new window's own
    assert acc.load(torch.tensor([5, 10, 3, 4])) and fraction(acc) == [5, 10]  # the first release's 4 counts
    assert not semisup.TrainAccuracy(torch.device('cpu')).load(torch.tensor([5, 10, 3, 4]))
