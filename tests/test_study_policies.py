"""The study's other policies and the two the field moved to: each decision rule on hand-made confidences, each
policy for 20 steps end to end, and the stateful ones resuming bit-exactly."""
import os

import pytest
import torch

import semisup
from conftest import context, load_train, make_guess, make_plain_folder, run_script, tiny_run_args
from runtime import Runtime

RT = Runtime('cpu', 'off')


def probs(confidences, labels, num_classes=3):
    """Mean predictions with the given max (confidence) on the given class."""
    out = []
    for c, y in zip(confidences, labels):
        row = [(1 - c) / (num_classes - 1)] * num_classes
        row[y] = c
        out.append(row)
    return torch.tensor(out)


def policy_of(method, flags, num_classes=3, n_unlabeled=10):
    train = load_train(method)
    args = train.get_args(flags)
    return train.POLICIES[args.policy](args, num_classes, n_unlabeled)


# ---------------------------------------------------------------------------------------------------------
# fixed family
# ---------------------------------------------------------------------------------------------------------
def test_linear_schedule_at_start_middle_and_end():
    policy = policy_of('fixed', ['--policy', 'linear:threshold-end=0.5', '--threshold', '0.9', '--steps', '1000'])
    u = make_guess(probs([0.95, 0.85, 0.75, 0.55, 0.45], [0, 1, 2, 0, 1]))
    expected = {0: (0.9, [True, False, False, False, False]), 500: (0.7, [True, True, True, False, False]),
                1000: (0.5, [True, True, True, True, False]), 5000: (0.5, [True, True, True, True, False])}
    for step, (threshold, keep) in expected.items():
        k, th = policy.mask(u, context(RT, step=step))
        assert th.item() == pytest.approx(threshold) and k.tolist() == keep, step
    fast = policy_of('fixed', ['--policy', 'linear:schedule-steps=250', '--threshold', '0.9', '--steps', '1000'])
    assert fast.mask(u, context(RT, step=125))[1].item() == pytest.approx(0.7)  # the fall over a quarter of the run


def test_consistency_follows_session_100s_schedule_over_250_epochs():
    """The threshold (0.9 until epoch 40, then 1/300 lower per epoch), the unsharpened label of the kept images,
    no Pi loss before epoch 10, and its weight lambda_pi * lambda_u * e / 250: 1000 steps = 250 epochs of 4."""
    policy = policy_of('fixed', ['--policy', 'consistency:lambda-pi=10', '--threshold', '0.9', '--lambda-u', '2',
                                 '--steps', '1000'])
    views = torch.stack([torch.full((1, 2, 2), float(v)) for v in range(8)])    # 2 views x 4 images
    u = make_guess(probs([0.95, 0.5, 0.6, 0.85], [0, 1, 2, 0]))
    u.views = views
    seen = []

    def forward(x):                                                          # the two views of images 1 and 2
        seen.append(x[:, 0, 0, 0].tolist())
        return torch.stack([x[:, 0, 0, 0], -x[:, 0, 0, 0], torch.zeros(len(x))], dim=1)

    for step, threshold in ((0, 0.9), (159, 0.9), (160, 0.9 - 1 / 300), (996, 0.9 - 210 / 300)):
        chosen, keep, th = policy.select(u, context(RT, step=step, steps=1000))  # epoch 1, 40.75, 41, 250
        assert th.item() == pytest.approx(threshold)
        assert keep.tolist() == [x >= threshold for x in (0.95, 0.5, 0.6, 0.85)]
        assert torch.equal(chosen.target, u.mean_prob)                       # unsharpened, as main.py:438
    rows = semisup_rows(8)
    policy.select(u, context(RT, step=35, steps=1000))                       # epoch 9.75: no Pi loss yet
    term, loss_u = policy.loss(rows, u, context(RT, forward=forward, step=35, steps=1000))
    assert seen == [] and term.item() == pytest.approx(2 * loss_u.item()) and policy.log_values()['pi'].item() == 0
    policy.select(u, context(RT, step=400, steps=1000))                      # epoch 101: threshold 0.9 - 61/300
    term, loss_u = policy.loss(rows, u, context(RT, forward=forward, step=400, steps=1000))
    assert seen == [[float(v) for v in range(8)]]                 # views 0 and 1 of every image, the same passes
    p = torch.softmax(forward(torch.tensor([1.0, 2.0, 5.0, 6.0]).view(4, 1, 1, 1).expand(4, 1, 2, 2)), dim=1)
    pi = (p[:2] - p[2:]).pow(2).mean()                                       # images 1 and 2 are below 0.697
    assert policy.log_values()['pi'].item() == pytest.approx(pi.item())
    assert term.item() == pytest.approx(2 * loss_u.item() + 10 * 2 * (101 / 250) * pi.item())


def semisup_rows(n):
    from policy import MixedRows
    return MixedRows(torch.zeros(n, 3), torch.full((n, 3), 1 / 3), torch.ones(n, dtype=torch.bool),
                     torch.arange(n) % (n // 2))


# ---------------------------------------------------------------------------------------------------------
# adaptive family
# ---------------------------------------------------------------------------------------------------------
def test_warm_start_is_fixed_until_a_completed_window_passes_20_percent():
    """The original decided each epoch from the previous epoch's mean train accuracy: ours, each window."""
    policy = policy_of('adaptive', ['--policy', 'warm-start:extra-draws=0'])
    u = make_guess(probs([0.95, 0.85, 0.6, 0.55, 0.4], [0, 1, 2, 0, 1]))
    _, keep, th = policy.select(u, context(RT, train_acc=(90, 100), step=3))   # no window completed yet: warm
    assert keep.tolist() == [True, False, False, False, False] and th.item() == pytest.approx(0.9)
    policy.select(u, context(RT, train_acc=(90, 100), window_acc=(20, 100), step=7))  # 20%: not above it
    assert policy.switched_at.item() == -1 and policy.log_values()['switch_step'].item() == -1
    _, keep, _ = policy.select(u, context(RT, train_acc=(21, 100), window_acc=(21, 100), step=8))  # k = 1
    assert policy.switched_at.item() == 8 and keep.sum().item() == 1 and policy.log_values()['switch_step'] == 8
    _, keep, _ = policy.select(u, context(RT, train_acc=(80, 100), window_acc=(21, 100), step=9))  # k = 4
    assert keep.tolist() == [True, True, True, True, False]
    _, keep, _ = policy.select(u, context(RT, train_acc=(80, 100), window_acc=(5, 100), step=10))  # warm again
    assert keep.sum().item() == 1 and policy.switched_at.item() == 8                # the first switch stays logged


def test_ensure_ratio_draws_until_b_u_are_kept_or_its_cap():
    policy = policy_of('adaptive', ['--policy', 'warm-start:extra-draws=3'])
    batches = iter([make_guess(probs([0.9, 0.3, 0.3, 0.3], [0, 1, 2, 0])) for _ in range(10)])
    u = make_guess(probs([0.3, 0.3, 0.95, 0.3], [0, 1, 2, 0]))
    chosen, keep, _ = policy.select(u, context(RT, train_acc=(1, 1), window_acc=(1, 1), step=5,
                                               draw=lambda: next(batches)))
    assert policy.log_values()['guessed'].item() == 16                       # 1 kept per batch: the cap, 1 + 3
    assert keep.tolist() == [True, True, True, True] and len(chosen.images) == 4
    assert chosen.mean_prob.max(dim=1).values.tolist() == pytest.approx([0.95, 0.9, 0.9, 0.9])
    batches = iter([make_guess(probs([0.9, 0.9, 0.9, 0.3], [0, 1, 2, 0])) for _ in range(10)])
    policy.select(u, context(RT, train_acc=(1, 1), window_acc=(1, 1), step=6, draw=lambda: next(batches)))
    assert policy.log_values()['guessed'].item() == 8                        # 1 + 3 kept: one more batch is enough


def test_flexmatch_thresholds_follow_the_per_class_counts():
    policy = policy_of('adaptive', ['--policy', 'flexmatch'])                  # tau 0.95, warm-up on, 10 images
    policy.record.copy_(torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, -1]))      # sigma = 5, 4, 0; 1 unused
    policy.beta.copy_(torch.tensor([1.0, 0.8, 0.0]))                          # beta = sigma / max(5, 1)
    u = make_guess(probs([0.94, 0.96, 0.62, 0.65, 0.97], [0, 0, 1, 1, 2]))
    u.index = torch.tensor([0, 5, 6, 7, 9])
    keep, threshold = policy.mask(u, context(RT))
    thresholds = torch.tensor([0.95, 0.95 * 0.8 / 1.2, 0.0])                 # tau * beta / (2 - beta)
    assert keep.tolist() == [False, True, False, True, True]
    assert threshold.item() == pytest.approx(thresholds.mean().item())
    # images 5 (now class 0) and 9 (class 2) were above tau: their records change, and beta with them
    assert policy.record.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 2]
    assert policy.beta.tolist() == pytest.approx([1.0, 0.5, 1 / 6])          # sigma 6, 3, 1; none unused
    no_warmup = policy_of('adaptive', ['--policy', 'flexmatch:flex-warmup=off'])
    no_warmup.record.copy_(torch.tensor([0, 1, 1, -1, -1, -1, -1, -1, -1, -1]))
    no_warmup.mask(make_guess(probs([0.5], [0])), context(RT))
    assert no_warmup.beta.tolist() == pytest.approx([0.5, 1.0, 0.0])          # sigma / max sigma, not / 7 unused


def test_flexmatch_an_image_drawn_twice_keeps_its_copy_above_tau_whatever_the_order():
    """At the sampler's epoch boundary (or across torchrun processes) one step can hold an image twice: the record
    takes its copy above tau, as USB (which writes only those), whether it comes first or last."""
    for confidences, labels, record in (([0.99, 0.5], [1, 2], 1), ([0.5, 0.99], [2, 1], 1), ([0.5, 0.6], [1, 2], -1),
                                        ([0.97, 0.99], [1, 2], 2)):
        policy = policy_of('adaptive', ['--policy', 'flexmatch'])
        policy.record[0] = 0                                                  # another image has a record: beta moves
        u = make_guess(probs(confidences, labels))
        u.index = torch.tensor([3, 3])
        policy.mask(u, context(RT))
        assert policy.record[3].item() == record, (confidences, labels)


def test_flexmatch_and_freematch_thresholds_are_usbs_float_expressions_bit_for_bit():
    """Values chosen where the other order of the same arithmetic rounds differently, so the test tells them apart."""
    flex = policy_of('adaptive', ['--policy', 'flexmatch'])
    flex.record.copy_(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, -1]))
    beta = torch.tensor([0.05, 0.1, 0.15])
    flex.beta.copy_(beta)
    _, threshold = flex.mask(make_guess(probs([0.5], [0])), context(RT))
    assert torch.equal(threshold, (0.95 * (beta / (2.0 - beta))).mean())     # USB: p_cutoff * (acc / (2. - acc))
    assert not torch.equal(threshold, (0.95 * beta / (2 - beta)).mean())
    free = policy_of('adaptive', ['--policy', 'freematch'], num_classes=10)
    assert torch.equal(free.tau, torch.full((10,), 0.1).mean())              # USB: time_p = p_model.mean()
    assert not torch.equal(free.tau, torch.tensor(1 / 10))
    free = policy_of('adaptive', ['--policy', 'freematch:free-momentum=0'])
    _, threshold = free.mask(make_guess(probs([0.4, 0.95, 0.7], [0, 1, 2])), context(RT))
    assert torch.equal(threshold, (free.tau * (free.p / torch.max(free.p, dim=-1)[0])).mean())  # time_p * mod
    assert not torch.equal(threshold, (free.tau * free.p / free.p.max()).mean())


def test_flexmatch_keeps_every_image_before_any_count_as_the_paper():
    policy = policy_of('adaptive', ['--policy', 'flexmatch'])
    keep, _ = policy.mask(make_guess(probs([0.4, 0.34], [0, 1])), context(RT))
    assert keep.all() and policy.beta.tolist() == [0, 0, 0]                  # all records unused: no update


def test_freematch_thresholds_after_given_ema_states():
    policy = policy_of('adaptive', ['--policy', 'freematch:free-momentum=0.9'])
    assert policy.tau.item() == pytest.approx(1 / 3) and policy.p.tolist() == pytest.approx([1 / 3] * 3)
    policy.tau.fill_(0.5)
    policy.p.copy_(torch.tensor([0.5, 0.5, 0.1]))
    u = make_guess(probs([0.9, 0.4, 0.5], [0, 1, 2]))
    keep, threshold = policy.mask(u, context(RT))
    tau = 0.9 * 0.5 + 0.1 * (0.9 + 0.4 + 0.5) / 3                            # the batch enters first
    p = 0.9 * torch.tensor([0.5, 0.5, 0.1]) + 0.1 * u.mean_prob.mean(dim=0)
    thresholds = tau * p / p.max()                                            # about 0.51, 0.48, 0.12
    assert policy.tau.item() == pytest.approx(tau) and policy.p.tolist() == pytest.approx(p.tolist())
    assert keep.tolist() == [True, False, True]                               # 0.4 < 0.48 for class 1
    assert threshold.item() == pytest.approx(thresholds.mean().item())


def test_mixed_loss_adds_a_second_term_over_the_confident_rows():
    policy = policy_of('mixmatch', ['--policy', 'mixed-loss', '--lambda-u', '8', '--rampup', '100'])
    u = make_guess(probs([0.95, 0.5], [0, 1]))
    rows = semisup_rows(4)
    rows.logits = torch.tensor([[2.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 0, 3.0]])
    term, loss_u = policy.loss(rows, u, context(RT, step=50))
    mse = semisup.unlabeled_loss(rows.logits, rows.targets, rows.keep, 'mse')
    confident = semisup.unlabeled_loss(rows.logits, rows.targets, torch.tensor([True, False, True, False]), 'mse')
    assert loss_u.item() == pytest.approx(mse.item())
    assert term.item() == pytest.approx(4 * mse.item() + 8 * confident.item())  # ramped 8 * 50/100; lambda_t = 8


# ---------------------------------------------------------------------------------------------------------
# every policy runs; the stateful ones resume exactly
# ---------------------------------------------------------------------------------------------------------
POLICIES = [('mixmatch', ['--policy', 'mixed-loss']), ('fixed', ['--policy', 'linear', '--threshold', '0.6']),
            ('fixed', ['--policy', 'consistency', '--threshold', '0.6']),
            ('adaptive', ['--policy', 'warm-start:warm-until=10,extra-draws=2']),
            ('adaptive', ['--policy', 'flexmatch:flex-threshold=0.5']), ('adaptive', ['--policy', 'freematch'])]


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    return make_plain_folder(str(tmp_path_factory.mktemp('data') / 'images'))


@pytest.mark.slow
@pytest.mark.parametrize('method,flags', POLICIES, ids=[f'{m}-{f[1]}' for m, f in POLICIES])
def test_each_policy_runs_20_steps(images, tmp_path, method, flags):
    out = str(tmp_path / 'run')
    r = run_script(method, *tiny_run_args(images, out, steps=20, eval_every=10), *flags)
    assert r.returncode == 0, r.stderr
    assert f"policy={flags[1].split(':')[0]}" in r.stdout and 'done: 20 steps' in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize('method,flags', [p for p in POLICIES if p[1][1].split(':')[0] in ('warm-start', 'flexmatch', 'freematch')],
                         ids=['warm-start', 'flexmatch', 'freematch'])
def test_stateful_policies_resume_bit_exactly(images, tmp_path, method, flags):
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    assert run_script(method, *tiny_run_args(images, straight, steps=8), *flags).returncode == 0
    assert run_script(method, *tiny_run_args(images, split, steps=4), *flags).returncode == 0
    r = run_script(method, *tiny_run_args(images, split, steps=8), *flags, '--resume', 'auto')
    assert r.returncode == 0 and 'at step 4' in r.stdout, r.stderr
    a, b = (torch.load(os.path.join(d, 'checkpoint.pt'), weights_only=True) for d in (straight, split))
    assert a['policy'].keys() == b['policy'].keys() and a['policy']
    for key in ('model', 'ema', 'policy'):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f'{key}.{name}'


TORCHRUN = [('fixed', ['--policy', 'consistency', '--threshold', '0.55']),
            ('adaptive', ['--policy', 'warm-start:warm-until=5,extra-draws=2']),
            ('adaptive', ['--policy', 'flexmatch:flex-threshold=0.5'])]


@pytest.mark.slow
@pytest.mark.parametrize('method,flags', TORCHRUN, ids=[f[1] for _, f in TORCHRUN])
def test_policies_that_run_more_passes_or_keep_state_work_under_torchrun(images, tmp_path, method, flags):
    """Two gloo processes: every process runs the same forward passes (no collective left waiting), and the
    policy's state stays the same on both (compared at every checkpoint, here every step)."""
    import subprocess
    import sys
    from conftest import REPO
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', PYTHONUNBUFFERED='1')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        os.path.join(REPO, method, 'train.py'),
                        *map(str, tiny_run_args(images, str(tmp_path / 'ddp'), steps=6,
                                                eval_every=1)), *flags],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    digests = [line.split()[-1] for line in r.stdout.splitlines() if 'parameters sha256' in line]
    assert len(digests) == 2 and digests[0] == digests[1]
