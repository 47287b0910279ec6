"""MixMatch's pieces, on hand-computed examples."""
import math

import pytest
import torch

import loop
import semisup
from conftest import load_train


def test_sharpen_matches_hand_computation():
    p = torch.tensor([[0.6, 0.4], [0.5, 0.5]])
    q = semisup.sharpen(p, 0.5)
    assert torch.allclose(q[0], torch.tensor([0.36 / 0.52, 0.16 / 0.52]))
    assert torch.allclose(q[1], torch.tensor([0.5, 0.5]))
    assert torch.allclose(semisup.sharpen(p, 1.0), p)


def test_mixup_lambda_is_at_least_half_and_varies():
    torch.manual_seed(0)
    lams = torch.stack([semisup.sample_mixup_lambda(0.75, torch.device('cpu')) for _ in range(2000)])
    assert lams.min() >= 0.5 and lams.max() <= 1.0
    assert lams.std() > 0.05  # Beta(0.75, 0.75) folded: far from constant
    assert semisup.sample_mixup_lambda(0, torch.device('cpu')).item() == 1.0


def test_mixup_partner_never_mixes_kept_with_unkept():
    torch.manual_seed(0)
    for _ in range(50):
        valid = torch.rand(40) < 0.6
        partner = semisup.mixup_partner(valid)
        assert sorted(partner.tolist()) == list(range(40))          # a permutation
        assert torch.equal(valid[partner], valid)                    # kept -> kept, unkept -> unkept
    valid = torch.ones(1000, dtype=torch.bool)
    assert (semisup.mixup_partner(valid) != torch.arange(1000)).float().mean() > 0.9  # actually shuffles


def test_unlabeled_losses_on_hand_computed_example():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]])   # softmax: .5/.5, .75/.25, ...
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    mask = torch.tensor([True, True, False])
    mse = semisup.unlabeled_loss(logits, targets, mask, 'mse')
    assert mse.item() == pytest.approx(((0.25 + 0.25) / 2 + (0.5625 + 0.5625) / 2) / 2)  # mean over kept x classes
    ce = semisup.unlabeled_loss(logits, targets, mask, 'ce')
    assert ce.item() == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert semisup.unlabeled_loss(logits, targets, torch.zeros(3, dtype=torch.bool), 'ce').item() == 0.0


def test_mixmatch_rampup_is_linear_and_exact():
    train = load_train('mixmatch')
    args = train.get_args([])
    assert args.rampup_steps == 16000 and args.lambda_u == 75 and args.loss == 'mse'
    policy = train.POLICIES[args.policy](args, 10, 100)
    assert [policy.lambda_u(s) for s in (0, 8000, 16000, 50000)] == [0.0, 37.5, 75.0, 75.0]
    args = train.get_args(['--rampup', '0', '--lambda-u', '3'])
    assert train.POLICIES[args.policy](args, 10, 100).lambda_u(0) == 3.0


@pytest.mark.parametrize('method', ['fixed', 'adaptive'])
def test_thresholded_methods_have_constant_weight(method):
    train = load_train(method)
    args = train.get_args(['--lambda-u', '1.5'])
    policy = train.POLICIES[args.policy](args, 10, 100)
    assert {policy.lambda_u(s) for s in (0, 1, 16000)} == {1.5}


def test_lambda_u_default_follows_the_loss():
    for method in ('mixmatch', 'fixed', 'adaptive'):
        train = load_train(method)
        assert train.get_args(['--loss', 'mse']).lambda_u == 75.0
        assert train.get_args(['--loss', 'ce']).lambda_u == 1.0
    assert load_train('adaptive').get_args([]).loss == 'ce'
    assert load_train('fixed').get_args([]).threshold == 0.8


def test_original_optimizer_is_one_flag_away():
    args = load_train('adaptive').get_args(['--optimizer', 'sgd'])
    assert (args.lr, args.wd, args.momentum) == (5e-4, 4e-4, 0.9)
    args = load_train('adaptive').get_args([])
    assert (args.lr, args.wd) == (2e-3, 0.02)


def test_ema_warms_up_then_uses_the_decay():
    lin = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(lin.weight)
    ema = semisup.make_ema(lin, 0.999)
    ema.update_parameters(lin)                                       # first update copies
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update_parameters(lin)                                       # n=1: decay (1+1)/(10+1)
    assert ema.module.weight.item() == pytest.approx(1 - 2 / 11)
    assert semisup.make_ema(lin, 0) is None


def test_the_flags_pick_the_variant_of_mixmatchs_step():
    """--labeled-only, --drop-unkept and --rot-weight are subclasses of the step the loop runs, not branches in it;
    given together, the last two combine."""
    fixed = load_train('fixed')
    pick = lambda *flags: loop.MixMatchStep.for_args(fixed.get_args(list(flags)))  # noqa: E731
    assert pick() is loop.MixMatchStep
    assert pick('--drop-unkept') is loop.DropUnkept and pick('--rot-weight', '1') is loop.WithRotation
    both = pick('--drop-unkept', '--rot-weight', '1')
    assert issubclass(both, loop.DropUnkept) and issubclass(both, loop.WithRotation)
    assert both.heads(None) is not None and loop.MixMatchStep.heads(None) is None  # the rotation head is built
    assert loop.MixMatchStep.for_args(load_train('mixmatch').get_args(['--labeled-only'])) is loop.LabeledOnly
