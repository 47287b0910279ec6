"""The scripts end to end on tiny data: what a run writes, resume, --evaluate, and the canonical call."""
import json
import os
import re

import pytest
import torch

import semisup
from conftest import METHODS, REPO, load_train, make_plain_folder, run_script, step_once, tiny_run_args
from models import build_model
from runtime import Runtime

LOG_KEYS = {'step', 'loss_x', 'loss_u', 'lambda_u', 'mask_ratio', 'threshold', 'pseudo_label_acc', 'confidence',
            'train_acc', 'val_top1', 'val_top5', 'test_top1', 'test_top5', 'ms_per_step'}


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    return make_plain_folder(str(tmp_path_factory.mktemp('data') / 'images'))


@pytest.mark.slow
@pytest.mark.parametrize('method', METHODS)
def test_script_trains_and_writes_its_run_directory(method, images, tmp_path):
    out = str(tmp_path / 'run')
    r = run_script(method, *tiny_run_args(images, out))
    assert r.returncode == 0, r.stderr
    assert re.search(r'^git \S+ +torch', r.stdout, re.M) and 'args K=2' in r.stdout
    files = set(os.listdir(out))
    assert {'checkpoint.pt', 'best.pt', 'log.jsonl', 'split.json', 'args.json', 'tb'} <= files
    resolved = json.load(open(os.path.join(out, 'args.json')))  # every default resolved, as the tables read them
    assert resolved['unlabeled_batch_size'] == 8 and resolved['steps'] == 4 and resolved['lambda_u'] is not None
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(os.path.join(out, 'tb')))
    records = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    assert [r['step'] for r in records] == [2, 4]
    assert all(LOG_KEYS <= set(r) for r in records)
    assert all(0 <= r['mask_ratio'] <= 1 and 0 <= r['test_top1'] <= 100 for r in records)
    ckpt = torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)
    assert {'model', 'ema', 'optimizer', 'step', 'args', 'method', 'arch', 'num_classes', 'classes', 'rng',
            'train_acc'} <= set(ckpt)
    assert ckpt['step'] == 4 and ckpt['method'] == method and ckpt['classes'] == ['cat', 'dog', 'fox']
    best = torch.load(os.path.join(out, 'best.pt'), weights_only=True)
    assert {'ema', 'args', 'metrics', 'method', 'arch', 'num_classes', 'classes'} <= set(best)
    split = json.load(open(os.path.join(out, 'split.json')))
    assert len(split['labeled']) == 30 and len(split['val']) == 6 and len(split['unlabeled']) == 24
    if method == 'mixmatch':
        assert records[0]['mask_ratio'] == 1.0 and records[0]['threshold'] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize('layout', ['current', 'format 1'])
def test_resume_continues_from_the_saved_step_exactly(images, tmp_path, layout):
    """4 steps, then --resume auto to 6, equals 6 steps in one go, bit for bit (CPU, default flags); also from
    a checkpoint.pt of the first layout, written before policies kept state."""
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    assert run_script('adaptive', *tiny_run_args(images, straight, steps=6)).returncode == 0
    assert run_script('adaptive', *tiny_run_args(images, split, steps=4)).returncode == 0
    if layout == 'format 1':
        path = os.path.join(split, 'checkpoint.pt')
        ckpt = torch.load(path, weights_only=True)
        for key in ('format', 'policy', 'policy_name'):
            del ckpt[key]
        del ckpt['args']['policy']
        torch.save(ckpt, path)
    r = run_script('adaptive', *tiny_run_args(images, split, steps=6), '--resume', 'auto')
    assert r.returncode == 0, r.stderr
    assert 'resumed' in r.stdout and 'at step 4' in r.stdout
    a = torch.load(os.path.join(straight, 'checkpoint.pt'), weights_only=True)
    b = torch.load(os.path.join(split, 'checkpoint.pt'), weights_only=True)
    assert b['step'] == 6
    for key in ('model', 'ema'):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f'{key}.{name}'
    assert [json.loads(x)['step'] for x in open(os.path.join(split, 'log.jsonl'))] == [2, 4, 6]


@pytest.mark.slow
@pytest.mark.parametrize('when', ['val-improves', 'every-eval'])
def test_test_set_is_measured_when_val_improves_and_at_the_end(images, tmp_path, when):
    """The default measures the test set only at a new best val top-1 and at the last step, so the test top-1 at
    best val (best.pt, the tables) is the one every-eval would give; every-eval measures it each time."""
    out = str(tmp_path / 'run')
    r = run_script('mixmatch', *tiny_run_args(images, out, steps=12), '--lr', '0.0001',
                   '--test-when', when)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    best, tested = None, []
    for rec in records:
        improves = best is None or rec['val_top1'] > best
        best = rec['val_top1'] if improves else best
        tested.append(improves or rec['step'] == 12 or when == 'every-eval')
    assert [rec['test_top1'] is not None for rec in records] == tested
    if when == 'val-improves':
        assert not all(tested), 'val top-1 of a nearly frozen model should stop improving'
        assert 'last step: test top-1' in r.stdout and 'median' not in r.stdout
    else:
        assert 'median of last 6 evals' in r.stdout
    first_best = next(rec for rec in records if rec['val_top1'] == max(x['val_top1'] for x in records))
    saved = torch.load(os.path.join(out, 'best.pt'), weights_only=True)['metrics']
    assert (saved['step'], saved['test_top1']) == (first_best['step'], first_best['test_top1'])


@pytest.mark.slow
def test_evaluate_reproduces_the_best_checkpoint_metrics(images, tmp_path):
    out = str(tmp_path / 'run')
    assert run_script('fixed', *tiny_run_args(images, out)).returncode == 0
    metrics = torch.load(os.path.join(out, 'best.pt'), weights_only=True)['metrics']
    for method in METHODS:  # any script evaluates any method's checkpoint
        r = run_script(method, '--evaluate', os.path.join(out, 'best.pt'), '--device', 'cpu')
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == f'test top-1 {metrics["test_top1"]:.2f} top-5 {metrics["test_top5"]:.2f}'


@pytest.mark.slow
def test_canonical_call_runs_on_fashion_mnist_offline(tmp_path):
    """python adaptive/train.py --min-th 0.5 --lambda-u 1 --loss ce, shortened, from the Debian package."""
    r = run_script('adaptive', '--min-th', 0.5, '--lambda-u', 1, '--loss', 'ce', '--steps', 2, '--eval-every', 2,
                   '--n-val', 100, '--device', 'cpu', cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert 'data fashion_mnist: 250 labeled, 59650 unlabeled, 100 val, 10000 test, 10 classes' in r.stdout
    run = tmp_path / 'runs' / 'adaptive-fashion_mnist-250-wrn28_2-ce-lu1-minth0.5-trainacc-unsharpened-s0'
    assert (run / 'best.pt').exists()
    assert re.search(r'test top-1 \d+\.\d\d top-5 \d+\.\d\d', r.stdout)


def tiny_step_setup(method, flags):
    train = load_train(method)
    args = train.get_args(flags + ['--device', 'cpu', '--amp', 'off'])
    args.num_classes, args.augment_kind = 3, 'padcrop'
    torch.manual_seed(0)
    rt = Runtime('cpu', 'off')
    model = rt.prepare(build_model('wrn28_2', 3, 3, (0.5,) * 3, (0.25,) * 3, 0.01))
    g = torch.Generator().manual_seed(1)
    batch = (torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g), torch.tensor([0, 1, 2] * 2 + [0, 1]),
             torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g), torch.full((8,), -1))
    return train, args, rt, model, batch


def test_a_step_with_no_kept_sample_trains_on_the_labeled_batch():
    train, args, rt, model, batch = tiny_step_setup('fixed', ['--threshold', '1.0'])
    before = [p.detach().clone() for p in model.parameters()]
    acc = semisup.TrainAccuracy(rt.device)
    m = step_once(train, model, rt, args, batch, acc)
    assert m['mask_ratio'].item() == 0.0 and m['loss_u'].item() == 0.0
    assert torch.isfinite(m['loss']) and m['loss'].item() == pytest.approx(m['loss_x'].item())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert int(acc.window[1]) == 8                                     # the labeled rows were counted


def test_masking_equals_dropping_except_for_batchnorm_statistics(monkeypatch):
    """The default (unkept rows stay in the batch, masked out of mixup and loss) and --drop-unkept (the
    original's variable batch) compute the same losses once BatchNorm uses running statistics."""
    keep = torch.tensor([True, False, False, True, True, False, False, False])
    losses = []
    for flags in ([], ['--drop-unkept']):
        train, args, rt, model, batch = tiny_step_setup('fixed', ['--mix', 'mixup:0'] + flags)
        monkeypatch.setattr(train.POLICIES[args.policy], 'mask', lambda self, u, ctx: (keep, torch.tensor(0.5)))
        model.eval()
        m = step_once(train, model, rt, args, batch)
        losses.append((m['loss_x'].item(), m['loss_u'].item(), m['mask_ratio'].item()))
    assert losses[0][1] > 0 and losses[0][2] == 3 / 8
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


@pytest.mark.parametrize('method', METHODS)
def test_labeled_only_never_looks_at_the_unlabeled_images(method):
    """--labeled-only (the tables' baseline) trains on the labeled batch alone: the model sees B images per
    step, and what the unlabeled batch holds changes nothing."""
    results = []
    for fill in (0, 255):
        train, args, rt, model, batch = tiny_step_setup(method, ['--labeled-only'])
        batch = (batch[0], batch[1], torch.full_like(batch[2], fill), batch[3])
        shapes = []
        model.register_forward_hook(lambda mod, inp, out: shapes.append(inp[0].shape[0]))
        torch.manual_seed(2)
        m = step_once(train, model, rt, args, batch)
        assert shapes == [8] and m['loss_u'].item() == 0.0 and 'mask_ratio' not in m
        assert m['loss'].item() == pytest.approx(m['loss_x'].item())
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.slow
def test_a_finished_run_resumed_is_left_untouched(images, tmp_path):
    """--resume auto on a run that reached --steps: nothing is rewritten (log, TensorBoard, checkpoints), exit 0."""
    out = str(tmp_path / 'run')
    assert run_script('fixed', *tiny_run_args(images, out)).returncode == 0
    files = lambda: {os.path.join(d, f): (open(os.path.join(d, f), 'rb').read(), os.stat(os.path.join(d, f)).st_mtime_ns)
                     for d, _, names in os.walk(out) for f in names}  # noqa: E731
    before = files()
    r = run_script('fixed', *tiny_run_args(images, out), '--resume', 'auto')
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f'already finished at step 4 (--steps 4): {out} is left as it is; pass a larger ' \
                               '--steps to train further'
    assert files() == before
    r = run_script('fixed', *tiny_run_args(images, out), '--resume', 'auto', '--threshold', '0.9')
    assert r.returncode == 2 and r.stderr.strip() == (
        f'error: {out} finished at step 4 with other flags (--threshold 0.8, now 0.9): nothing to continue with these;'
        ' start a new run with another --out')                           # nor marked done by etc/reproduce.py
    assert files() == before


@pytest.mark.slow
def test_a_grey_folder_of_small_images_trains_at_their_size_from_a_fashion_mnist_checkpoint(tmp_path):
    """Own images as a new user has them: 28-px grey PNGs, no image-size. The run says the size, channels and
    augmentation it uses, warns that 6 validation images are too few, and starts from a released checkpoint."""
    from PIL import Image
    root = tmp_path / 'grey'
    for i in range(48):
        where = root / ('labeled/' + 'abc'[i % 3] if i < 30 else 'unlabeled')
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(torch.randint(0, 256, (28, 28), dtype=torch.uint8).numpy(), 'L').save(where / f'{i}.png')
    released = os.path.join(REPO, 'pretrained', 'adaptive-ce-1-medium-v2-s0-b2c12b03.pt')
    args = tiny_run_args(str(root), str(tmp_path / 'run'), steps=2)
    args[args.index('folder:image-size=16')] = 'folder'
    r = run_script('adaptive', *args, '--init', released)
    assert r.returncode == 0, r.stderr
    assert '(1, 28, 28) images, augment padcrop' in r.stdout
    assert 'folder images: 28 x 28 px, their own size' in r.stdout and 'every image is grey: 1 channel' in r.stdout
    assert 'warning: 6 validation images (2 per class)' in r.stdout and '(--n-val 30)' in r.stdout
    assert f'--init: the backbone from {released}' in r.stdout
