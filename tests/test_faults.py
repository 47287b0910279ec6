"""Runs that get killed, stopped, diverge or span processes: exact resume after SIGKILL and SIGTERM, atomic
checkpoints, the non-finite stop, and torchrun with two CPU (gloo) processes."""
import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import checkpoint
from conftest import REPO, context, load_train, make_guess, make_plain_folder, run_script, tiny_run_args

STEPS = 12


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    top = tmp_path_factory.mktemp('faults')
    w = {'top': top, 'images': make_plain_folder(str(top / 'images'))}
    w['reference'] = str(top / 'reference')  # uninterrupted
    r = run_script('adaptive', *tiny_run_args(w['images'], w['reference'], steps=STEPS, eval_every=4))
    assert r.returncode == 0, r.stderr
    return w


def start(w, out):
    """The reference run's command, as a process we can signal; returns it once it has printed 'step 6'."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='')
    p = subprocess.Popen([sys.executable, os.path.join(REPO, 'adaptive', 'train.py'),
                          *map(str, tiny_run_args(w['images'], out, steps=STEPS, eval_every=4))],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in p.stdout:
        if line.startswith('step 6 '):
            return p
    raise AssertionError(p.stderr.read())


def assert_same_weights(a_dir, b_dir):
    a = torch.load(os.path.join(a_dir, 'checkpoint.pt'), weights_only=True)
    b = torch.load(os.path.join(b_dir, 'checkpoint.pt'), weights_only=True)
    assert a['step'] == b['step'] == STEPS
    for key in ('model', 'ema'):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f'{key}.{name}'


def resume(w, out):
    r = run_script('adaptive', *tiny_run_args(w['images'], out, steps=STEPS, eval_every=4),
                   '--resume', 'auto')
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(world):
    out = str(world['top'] / 'killed')
    p = start(world, out)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)['step'] == 4  # the last evaluation
    with open(os.path.join(out, 'log.jsonl'), 'a') as f:
        f.write('{"step": 8, "loss_x": 0.5')                          # as if the kill cut a line short
    r = resume(world, out)
    assert 'at step 4' in r.stdout
    assert_same_weights(world['reference'], out)
    assert [json.loads(x)['step'] for x in open(os.path.join(out, 'log.jsonl'))] == [4, 8, 12]  # no duplicates


@pytest.mark.slow
def test_sigterm_saves_exits_0_and_resumes_exactly(world):
    out = str(world['top'] / 'terminated')
    p = start(world, out)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stderr
    stopped_at = int(stdout.split('stopped by SIGTERM after step ')[1].split(';')[0])
    assert 6 <= stopped_at < STEPS
    assert torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)['step'] == stopped_at
    r = resume(world, out)
    assert f'at step {stopped_at}' in r.stdout
    assert_same_weights(world['reference'], out)


@pytest.mark.slow
def test_non_finite_loss_stops_with_exit_1_and_keeps_the_last_good_checkpoint(world):
    out = str(world['top'] / 'diverged')
    args = tiny_run_args(world['images'], out, steps=4, eval_every=2) + ['--optimizer', 'sgd']
    assert run_script('adaptive', *args).returncode == 0
    ckpt = os.path.join(out, 'checkpoint.pt')
    before = hashlib.sha256(open(ckpt, 'rb').read()).hexdigest()
    args = tiny_run_args(world['images'], out, steps=8, eval_every=2)
    r = run_script('adaptive', *args, '--optimizer', 'sgd', '--lr', '1e30', '--resume', 'auto')
    assert r.returncode == 1
    assert 'error: non-finite loss at step 6; stopping' in r.stderr and 'Traceback' not in r.stderr
    assert hashlib.sha256(open(ckpt, 'rb').read()).hexdigest() == before
    assert torch.load(ckpt, weights_only=True)['step'] == 4


def test_a_save_that_dies_halfway_leaves_the_previous_checkpoint(tmp_path):
    path = str(tmp_path / 'checkpoint.pt')
    checkpoint.save_atomic({'step': 1, 'w': torch.ones(3)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError('killed mid-save')

    with pytest.raises(RuntimeError):
        checkpoint.save_atomic({'step': 2, 'w': torch.zeros(1000), 'boom': Unpicklable()}, path)
    assert torch.load(path, weights_only=True)['step'] == 1
    assert os.listdir(tmp_path) == ['checkpoint.pt']                    # no half-written file left behind


class TwoProcesses:
    """Stands in for Runtime as process `rank` of 2: all_gather concatenates the confidences given."""

    def __init__(self, rank, confidences):
        self.world, self.rank, self.confidences = 2, rank, confidences

    def all_gather(self, t):
        return torch.cat(self.confidences)

    def mine(self, t):
        return t.view(self.world, -1)[self.rank]


def test_adaptive_top_k_is_taken_over_all_processes():
    train = load_train('adaptive')
    args = train.get_args(['--min-th', '0.5'])
    policy = train.POLICIES[args.policy](args, 2, 8)
    conf = [torch.tensor([0.9, 0.6, 0.55, 0.95]), torch.tensor([0.99, 0.7, 0.8, 0.52])]
    keeps = []
    for rank in (0, 1):                                                # k = floor(8 * 0.5) = 4 of the 8
        u = make_guess(torch.stack([conf[rank], 1 - conf[rank]], dim=1))
        keep, threshold = policy.mask(u, context(TwoProcesses(rank, conf), train_acc=(1, 2)))
        keeps.append(keep.tolist())
        assert threshold.item() == pytest.approx(0.8)
    assert keeps == [[True, False, False, True], [True, False, True, False]]   # 0.99, 0.95, 0.9, 0.8


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_identical_weights_and_write_once(world, tmp_path):
    out = str(tmp_path / 'ddp')
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', PYTHONUNBUFFERED='1')
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        os.path.join(REPO, 'adaptive', 'train.py'),
                        *map(str, tiny_run_args(world['images'], out, steps=4, eval_every=2))],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    digests = [line.split()[-1] for line in r.stdout.splitlines() if 'parameters sha256' in line]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert '2 processes' in r.stdout and r.stdout.count('done: 4 steps') == 1
    assert [json.loads(x)['step'] for x in open(os.path.join(out, 'log.jsonl'))] == [2, 4]
    assert len(os.listdir(os.path.join(out, 'tb'))) == 1
    ckpt = torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)
    assert len(ckpt['rng']) == len(ckpt['streams']) == 2                 # both processes can resume exactly
    assert not torch.equal(ckpt['streams'][0]['unlabeled']['perm'], ckpt['streams'][1]['unlabeled']['perm'])
