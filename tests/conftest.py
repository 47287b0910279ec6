"""Shared helpers: the shared modules are imported from mixmatch/ (the copies are identical, test_copies.py
checks), each method's train.py is loaded under its own module name, and tiny image folders are written
on the fly so the scripts can be run end to end in seconds."""
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('mixmatch', 'fixed', 'adaptive')
sys.path.insert(0, os.path.join(REPO, 'mixmatch'))

# Decoded folders are cached where $ADTHMIX_CACHE says: for the tests (and the scripts they run), a fresh folder,
# removed when the session ends (remove_test_cache below).
TEST_CACHE = os.environ['ADTHMIX_CACHE'] = tempfile.mkdtemp(prefix='adthmix-test-cache-')

import loop  # noqa: E402  (the shared modules, from mixmatch/)
import semisup  # noqa: E402
from policy import Context, Guess  # noqa: E402


@pytest.fixture(scope='session', autouse=True)
def remove_test_cache():
    yield
    shutil.rmtree(TEST_CACHE, ignore_errors=True)


def load_train(method):
    """The method's train.py as module `train_<method>`."""
    name = f'train_{method}'
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, method, 'train.py'))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_script(method, *args, cwd=None, timeout=300, env=None):
    """Run `python <method>/train.py args...` on the CPU; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='', **(env or {}))
    return subprocess.run([sys.executable, os.path.join(REPO, method, 'train.py'), *map(str, args)],
                          cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout)


def write_png(path, seed, size=16):
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=g)
    Image.fromarray(pixels.numpy()).save(path)


def make_plain_folder(root, classes=('cat', 'dog', 'fox'), per_class=12, unlabeled=24, test_per_class=4, size=16):
    """labeled/<class>/*.png, unlabeled/*.png, test/<class>/*.png with random pixels whose mean brightness
    depends on the class (so a few steps of training can move accuracy)."""
    seed = 0
    for split, n in (('labeled', per_class), ('test', test_per_class)):
        for c in classes:
            for i in range(n):
                seed += 1
                write_png(os.path.join(root, split, c, f'{i}.png'), seed, size)
    for i in range(unlabeled):
        seed += 1
        write_png(os.path.join(root, 'unlabeled', f'u{i}.png'), seed, size)
    return root


def make_nsml_folder(root, labels, size=16, header='instance_id\tlabel\tfile_name'):
    """The original NSML layout: train/train_label (TSV, header line) and train/train_data/<file>."""
    rows = [header]
    for i, label in enumerate(labels):
        name = f'img{i}.png'
        write_png(os.path.join(root, 'train', 'train_data', name), i, size)
        rows.append(f'{i}\t{label}\t{name}')
    with open(os.path.join(root, 'train', 'train_label'), 'w') as f:
        f.write('\n'.join(rows) + '\n')
    return root


@pytest.fixture
def plain_folder(tmp_path):
    return make_plain_folder(str(tmp_path / 'images'))


def tiny_run_args(data_root, out, steps=4, eval_every=2):
    """Flags for a seconds-long CPU run on a tiny image folder."""
    return ['--dataset', 'folder:image-size=16', '--data-root', data_root, '--n-val', 6, '--batch-size', 8,
            '--steps', steps, '--eval-every', eval_every, '--print-every', 1, '--acc-window', 2,
            '--out', out, '--device', 'cpu']


def make_guess(mean_prob, T=0.5):
    """A guessed unlabeled batch with the given mean predictions (for a policy's decision rule)."""
    n = len(mean_prob)
    return Guess(torch.zeros(n, 1, 1, 1, dtype=torch.uint8), torch.arange(n), torch.full((n,), -1),
                 torch.zeros(2 * n, 1, 1, 1), mean_prob, semisup.sharpen(mean_prob, T))


def context(rt, train_acc=None, val_acc=None, step=0, steps=1024, draw=None, forward=None, window_acc=None):
    """What a policy reads besides the batch; accuracies as (correct, seen) pairs."""
    as_tensors = lambda pair: tuple(torch.tensor(v) for v in pair) if pair is not None else None  # noqa: E731
    return Context(step, steps, as_tensors(train_acc or (0, 1)), as_tensors(val_acc or (0, 1)), rt, draw, forward,
                   as_tensors(window_acc or (0, 1)))


def step_once(train, model, rt, args, batch, train_acc=None, val_acc=(0, 1), step=0, policy=None, net=None):
    """The script's step (loop.MixMatchStep.for_args) as the loop runs it, once, on a fixed batch (x_l, y_l, x_u,
    y_u): a training state around `model` (loop.make_state: the policy of args unless given, an EMA, the optimizer),
    the guess of x_u, the context. Returns the step's metrics."""
    x_l, y_l, x_u, y_u = batch
    s = loop.make_state(args, rt, model, {'labeled': (x_l, y_l), 'unlabeled': (x_u, y_u)}, train.POLICIES)
    for name, value in (('net', net), ('policy', policy), ('train_acc', train_acc)):
        if value is not None:
            setattr(s, name, value)
    s.progress.val_acc = val_acc
    s.refresh_val_acc()
    step_fn = loop.MixMatchStep.for_args(args)(s)
    if args.labeled_only:
        return step_fn.train(x_l, y_l)
    u = loop.guess_labels(s.net, rt, x_u, torch.arange(len(x_u)), y_u, args)
    return step_fn.train(x_l, y_l, u, step_fn.context(step))
