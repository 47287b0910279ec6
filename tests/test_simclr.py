"""SimCLR pretraining (etc/simclr/train.py): the NT-Xent loss against a hand computation, that a few steps
learn, and the script end to end: best.pt starts a method with --init, and resume is exact.

The script runs get one thread (OMP_NUM_THREADS=1): tiny runs gain nothing from a second one, and OpenMP's
spin-waiting makes two threads on cores that other jobs share about a hundred times slower."""
import contextlib
import json
import math
import os

import pytest
import torch

import loop
from conftest import load_train, make_plain_folder, run_script, tiny_run_args
from runtime import Runtime

ONE_THREAD = {'OMP_NUM_THREADS': '1'}


@pytest.fixture(scope='module')
def simclr():
    return load_train('etc/simclr')


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    return make_plain_folder(str(tmp_path_factory.mktemp('data') / 'images'))


@contextlib.contextmanager
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def test_nt_xent_matches_a_hand_computed_example(simclr):
    # two images, rows [view a of 0, view a of 1, view b of 0, view b of 1]: each view points the way its pair
    # does and is orthogonal to the other image's (lengths differ: the loss takes cosines). Every row then has
    # cosine 1 with its positive and 0 with its two negatives: -log(e^(1/tau) / (e^(1/tau) + 2)).
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 0.5]])
    assert simclr.nt_xent(z, 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), rel=1e-6)
    assert simclr.nt_xent(z, 1.0).item() == pytest.approx(math.log(1 + 2 * math.exp(-1)), rel=1e-6)

    # random embeddings against an explicit loop over the 2N rows
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    tau, terms = 0.3, []
    for i in range(4):
        cos = {k: float(torch.dot(z[i], z[k]) / (z[i].norm() * z[k].norm())) / tau for k in range(4) if k != i}
        terms.append(math.log(sum(math.exp(c) for c in cos.values())) - cos[(i + 2) % 4])
    assert simclr.nt_xent(z, tau).item() == pytest.approx(sum(terms) / 4, rel=1e-5)

    with torch.autocast('cpu', dtype=torch.bfloat16):  # fp32 whatever the autocast around it
        loss = simclr.nt_xent(z.bfloat16(), tau)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(simclr.nt_xent(z.bfloat16().float(), tau).item(), rel=1e-6)


def test_a_few_steps_lower_the_contrastive_loss_on_a_fixed_batch(simclr):
    """The model with its projection head, 32 images with two fixed views each, 8 AdamW steps: the NT-Xent loss
    falls; the projection head trains and the classifier head, which SimCLR has no loss for, stays as it was."""
    args = simclr.get_args(['--device', 'cpu', '--amp', 'off', '--batch-size', '32'])
    args.num_classes = 3
    with one_thread():
        torch.manual_seed(0)
        rt = Runtime('cpu', 'off')
        model = rt.prepare(simclr.make_model(args, 1, (0.5,), (0.25,)))
        optimizer = loop.make_optimizer(model, args, rt.device)
        images = torch.randint(0, 256, (32, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
        views = simclr.two_views(images, args)
        assert views.shape == (64, 1, 16, 16) and not torch.equal(views[:32], views[32:])
        classifier, projection = model.backbone.fc.weight.clone(), model.heads['projection'][0].weight.clone()

        def loss():
            z, = simclr.project(model, rt, views)
            return simclr.nt_xent(z, args.temperature)

        with torch.no_grad():
            before = loss().item()
        for _ in range(8):
            rt.backward_and_step(loss(), optimizer)
        with torch.no_grad():
            after = loss().item()
    assert before > math.log(63) * 0.9  # about chance: 1 positive among 63 other views
    assert after < 0.8 * before, (before, after)
    assert torch.equal(model.backbone.fc.weight, classifier) and not model.backbone.fc.weight.requires_grad  # (DDP)
    assert not torch.equal(model.heads['projection'][0].weight, projection)


@pytest.mark.slow
def test_simclr_pretrains_and_a_method_starts_from_it(images, tmp_path):
    pre, out = str(tmp_path / 'simclr'), str(tmp_path / 'adaptive')
    r = run_script('etc/simclr', *tiny_run_args(images, pre, steps=4), env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    best = torch.load(os.path.join(pre, 'best.pt'), weights_only=True)
    assert (best['method'], best['num_classes'], best['classes']) == ('simclr', 3, ['cat', 'dog', 'fox'])
    assert best['ema']['heads.projection.2.weight'].shape == (128, 128)  # g: 128 -> 128 (WRN-28-2's features) -> 128
    records = [json.loads(line) for line in open(os.path.join(pre, 'log.jsonl'))]
    assert [x['step'] for x in records] == [2, 4]
    assert all(0 <= x['val_top1'] <= x['val_top5'] <= 100 and x['loss_x'] > 0 for x in records)  # retrieval, %
    r = run_script('adaptive', *tiny_run_args(images, out, steps=2), '--init', f'{pre}/best.pt', env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    init = [line for line in r.stdout.splitlines() if line.startswith('--init:')]
    assert init == [f'--init: every weight from {pre}/best.pt, a simclr checkpoint (3 classes)'], r.stdout


@pytest.mark.slow
def test_simclr_resumes_exactly(images, tmp_path):
    """4 steps, then --resume auto to 6, equals 6 steps in one go, bit for bit. A constant learning rate: the
    default cosine depends on --steps, so a 4-step run has another schedule than a 6-step one."""
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')

    def run(out, steps, *more):
        return run_script('etc/simclr', *tiny_run_args(images, out, steps=steps), '--lr-schedule', 'constant',
                          *more, env=ONE_THREAD)

    assert run(straight, 6).returncode == 0 and run(split, 4).returncode == 0
    r = run(split, 6, '--resume', 'auto')
    assert r.returncode == 0, r.stderr
    assert 'resumed' in r.stdout and 'at step 4' in r.stdout
    a = torch.load(os.path.join(straight, 'checkpoint.pt'), weights_only=True)
    b = torch.load(os.path.join(split, 'checkpoint.pt'), weights_only=True)
    assert b['step'] == 6
    for key in ('model', 'ema'):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f'{key}.{name}'
    logs = [[json.loads(x) for x in open(os.path.join(run, 'log.jsonl'))] for run in (straight, split)]
    assert [x['step'] for x in logs[1]] == [2, 4, 6]
    assert [x['val_top1'] for x in logs[0]] == [x['val_top1'] for x in logs[1]]


def test_evaluation_is_deterministic_and_leaves_the_training_rng_alone(simclr):
    """The retrieval accuracy that picks best.pt: the same fixed views at every call, and the global RNG (the
    training stream, saved in checkpoints) as it was; a view's pair among 2n - 1 other views."""
    args = simclr.get_args(['--device', 'cpu', '--amp', 'off'])
    args.num_classes = 3
    with one_thread():
        torch.manual_seed(0)
        rt = Runtime('cpu', 'off')
        model = rt.prepare(simclr.make_model(args, 3, (0.5,) * 3, (0.25,) * 3))
        images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
        state = torch.get_rng_state()
        first, second = simclr.retrieval(model, images, args, rt), simclr.retrieval(model, images, args, rt)
        assert torch.equal(torch.get_rng_state(), state)
    assert first == second and first['count'] == 12 and model.training
    assert 0 <= first['top1'] <= first['top5'] <= 100 and first['loss'] > 0


@pytest.mark.parametrize('flag, value, message', [
    ('--temperature', '0', '--temperature 0 must be > 0'),
    ('--projection-dim', '0', '--projection-dim and --projection-hidden must be at least 1'),
    ('--K', '3', '--K: not read by simclr (see --help)'),
])
def test_out_of_range_flags_end_with_one_line(images, tmp_path, flag, value, message):
    r = run_script('etc/simclr', *tiny_run_args(images, str(tmp_path / 'run')), flag, value,
                   env=ONE_THREAD)
    assert r.returncode == 2 and r.stderr.strip() == f'error: {message}'
    assert not os.path.exists(tmp_path / 'run')
