"""The policy interface: a policy written as the README shows (a class with tensor state, pasted into
adaptive/train.py) trains, resumes bit-exactly after SIGKILL, and keeps the same state on every torchrun
process; and the policies the study tried beyond the tables (extra draws, a two-term loss, a weight schedule)
can be written against the interface without touching the shared training step."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import loop
import metrics
import semisup
from conftest import REPO, load_train, make_plain_folder, tiny_run_args
from models import build_model
from policy import Guess, Policy
from runtime import Runtime

STEPS = 20


def readme_example():
    """The README's "Adding your own policy": its indented code block, and the entry it adds to POLICIES."""
    section = open(os.path.join(REPO, 'README.md')).read().split('## Adding your own policy', 1)[1]
    block = re.search(r'\n\n((?:    .*\n|\n)+)', section).group(1)
    entry = re.search(r"add `([^`]+)` to `POLICIES`", section).group(1)
    return textwrap.dedent(block).strip() + '\n', entry


def readme_second_example():
    """etc/policies.md's policy with a setting of its own: (its DEFAULTS line, the class, the entry it adds to
    POLICIES)."""
    part = open(os.path.join(REPO, 'etc', 'policies.md')).read().split('\n\n', 2)[2]
    line, code = (textwrap.dedent(b).strip() + '\n' for b in re.findall(r'\n\n((?:    .*\n|\n)+)', part)[:2])
    return line, code, re.search(r"adding `([^`]+)` to it", part).group(1)


def paste_default(script, line):
    """train.py with `line` as the last line of its DEFAULTS, as etc/policies.md says."""
    head, tail = script.split('\nDEFAULTS = {\n', 1)
    block, rest = tail.split('\n}\n', 1)
    return head + '\nDEFAULTS = {\n' + block + '\n' + textwrap.indent(line, '    ').rstrip('\n') + '\n}\n' + rest


def paste(script, code, entry):
    """train.py with `code` above its POLICIES line and `entry` added to it, as the README says."""
    lines = script.splitlines(keepends=True)
    at = [i for i, line in enumerate(lines) if line.startswith('POLICIES = {')]
    assert len(at) == 1 and lines[at[0]].rstrip().endswith('}')
    lines[at[0]] = lines[at[0]].rstrip()[:-1] + f', {entry}}}\n'
    return ''.join(lines[:at[0]] + [code, '\n\n'] + lines[at[0]:])


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """adaptive/ copied, with the README's example pasted above POLICIES and registered, and the same again
    with the state counted on each process alone."""
    top = tmp_path_factory.mktemp('interface')
    w = {'top': top, 'images': make_plain_folder(str(top / 'images'))}
    example, entry = readme_example()
    assert 'register_buffer' in example and entry == "'class-balanced': ClassBalanced"
    for name, code in (('good', example), ('local', example.replace('ctx.rt.all_reduce(kept_now)', 'kept_now'))):
        folder = top / name / 'adaptive'
        shutil.copytree(os.path.join(REPO, 'adaptive'), folder, ignore=shutil.ignore_patterns('__pycache__'))
        (folder / 'train.py').write_text(paste((folder / 'train.py').read_text(), code, entry))
        w[name] = str(folder / 'train.py')
    return w


def command(script, w, out, *extra, steps=STEPS, eval_every=4):
    return [sys.executable, script, '--policy', 'class-balanced',
            *map(str, tiny_run_args(w['images'], out, steps=steps, eval_every=eval_every)), *extra]


def run(cmd, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, **kw)


@pytest.mark.slow
def test_the_readme_example_trains_with_its_state_in_the_checkpoint(world):
    out = str(world['top'] / 'straight')
    r = run(command(world['good'], world, out))
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)
    assert ckpt['step'] == STEPS and ckpt['policy_name'] == 'class-balanced'
    assert set(ckpt['policy']) == {'kept'} and ckpt['policy']['kept'].sum() > 0       # counted, and saved
    records = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    assert all(0 <= x['mask_ratio'] <= 1 and x['threshold'] >= 0.5 for x in records)
    world['straight'] = out


@pytest.mark.slow
def test_the_readme_policy_with_its_own_setting_follows_its_schedule_over_the_run(world):
    """The second example as etc/policies.md gives it: its setting is in --help and refused with another policy,
    and the threshold it logs is the schedule's, averaged over each evaluation window (ctx.progress = step / steps)."""
    line, code, entry = readme_second_example()
    assert entry == "'anneal': Anneal" and "'start_th'" in line and 'ctx.progress' in code
    folder = world['top'] / 'anneal' / 'adaptive'
    shutil.copytree(os.path.join(REPO, 'adaptive'), folder, ignore=shutil.ignore_patterns('__pycache__'))
    script = folder / 'train.py'
    script.write_text(paste(paste_default(script.read_text(), line), code, entry))
    out = str(world['top'] / 'anneal-run')
    args = tiny_run_args(world['images'], out, steps=STEPS, eval_every=4)
    r = run([sys.executable, str(script), '--policy', 'anneal:start-th=0.9', *map(str, args)])
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    assert [x['step'] for x in records] == [4, 8, 12, 16, 20]
    for x in records:
        schedule = [0.9 + (0.5 - 0.9) * step / STEPS for step in range(x['step'] - 4, x['step'])]
        assert x['threshold'] == pytest.approx(sum(schedule) / 4, abs=1e-6)
    assert 'anneal:start-th=0.95' in run([sys.executable, str(script), '--help']).stdout
    r = run([sys.executable, str(script), '--policy', 'accuracy:start-th=0.9', *map(str, args)])
    assert r.returncode == 2 and "'accuracy:start-th=0.9': accuracy takes no settings" in r.stderr


@pytest.mark.slow
def test_the_readme_example_resumes_bit_exactly_after_sigkill(world):
    if 'straight' not in world:
        pytest.skip('needs the uninterrupted run')
    out = str(world['top'] / 'killed')
    env = dict(os.environ, PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1')
    p = subprocess.Popen(command(world['good'], world, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
    for line in p.stdout:
        if line.startswith('step 10 '):
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)['step'] == 8
    r = run(command(world['good'], world, out, '--resume', 'auto'))
    assert r.returncode == 0 and 'at step 8' in r.stdout, r.stderr
    a, b = (torch.load(os.path.join(d, 'checkpoint.pt'), weights_only=True) for d in (world['straight'], out))
    assert torch.equal(a['policy']['kept'], b['policy']['kept'])
    for key in ('model', 'ema'):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f'{key}.{name}'


@pytest.mark.slow
def test_a_checkpoint_without_the_policys_state_is_refused_with_one_line(world):
    """A checkpoint.pt of the first layout (before policies kept state) cannot resume a policy that keeps some."""
    if 'straight' not in world:
        pytest.skip('needs the uninterrupted run')
    old = world['top'] / 'format1'
    shutil.copytree(world['straight'], old)
    ckpt = torch.load(old / 'checkpoint.pt', weights_only=True)
    torch.save({k: v for k, v in ckpt.items() if k not in ('format', 'policy', 'policy_name')}, old / 'checkpoint.pt')
    r = run(command(world['good'], world, str(old), '--resume', 'auto', steps=STEPS + 4))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: --resume {old / 'checkpoint.pt'}: the checkpoint predates policy state, and policy 'class-balanced' "
        'keeps some; start a new run']


def torchrun(script, w, out):
    return run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                *command(script, w, out, steps=4, eval_every=1)[1:]])


@pytest.mark.slow
def test_under_torchrun_the_state_is_the_same_on_every_process_after_every_step(world):
    """--eval-every 1: a checkpoint, and so a comparison of both processes' policy state, after every step."""
    r = torchrun(world['good'], world, str(world['top'] / 'ddp'))
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(world['top'] / 'ddp' / 'checkpoint.pt', weights_only=True)
    assert ckpt['step'] == 4 and ckpt['policy']['kept'].sum() > 0
    # the same policy counting only its own process's images is stopped at the first comparison
    r = torchrun(world['local'], world, str(world['top'] / 'ddp-local'))
    assert r.returncode != 0, r.stdout[-2000:]                            # torchrun reports rank 0's exit 2 as 1
    assert "error: after step 1 the state of policy 'class-balanced' differs between processes" in r.stderr
    assert 'train.py", line' not in r.stderr                               # no traceback of ours (torchrun has its own)
    assert not (world['top'] / 'ddp-local' / 'checkpoint.pt').exists()    # no checkpoint of a diverged state


# ---------------------------------------------------------------------------------------------------------
# The study's other policies fit the interface: each is written here as a user would, and one step runs
# ---------------------------------------------------------------------------------------------------------
class EnsureRatio(Policy):
    """Session 417's "ensure the ratio": draw and guess more unlabeled batches until B_u images pass a fixed
    threshold or the cap of extra draws is reached; the first B_u kept train."""
    extra_draws, threshold = 3, None

    def select(self, u, ctx):
        pool = u
        for _ in range(self.extra_draws):
            if int(ctx.rt.all_reduce((self.confidence(pool) >= self.threshold).sum())) >= len(u.images) * ctx.rt.world:
                break
            pool = pool.cat(ctx.draw())
        kept_first = (self.confidence(pool) < self.threshold).to(torch.uint8).argsort(stable=True)[:len(u.images)]
        chosen = pool.take(kept_first)
        self.drawn = len(pool.images)
        return chosen, self.confidence(chosen) >= self.threshold, torch.tensor(self.threshold)

    def log_values(self):
        return {'guessed': torch.tensor(float(self.drawn))}


class MixedLoss(Policy):
    """Session 409: MixMatch's term over every image with a ramped weight, plus a second term, weight 2, over
    the mixed rows whose own image is above 0.9."""

    def lambda_u(self, step):
        return min(step, 100) / 100 * self.args.lambda_u

    def loss(self, rows, u, ctx):
        mixmatch = semisup.unlabeled_loss(rows.logits, rows.targets, rows.keep, 'mse')
        confident = rows.keep & (self.confidence(u)[rows.image] >= 0.9)
        thresholded = semisup.unlabeled_loss(rows.logits, rows.targets, confident, 'ce')
        self.parts = (mixmatch, thresholded, confident)
        return self.lambda_u(ctx.step) * mixmatch + 2.0 * thresholded, mixmatch + thresholded


class EvenImages(Policy):
    """Keeps the even images of the batch, and records the mixed rows the loss sees."""

    def mask(self, u, ctx):
        return torch.arange(len(u.images)) % 2 == 0, torch.tensor(0.0)

    def loss(self, rows, u, ctx):
        self.rows = rows
        return super().loss(rows, u, ctx)


def one_step(policy_class, step=0, drop_unkept=False):
    """One step of the mixmatch script with the given policy, a batch of 8 + 8 images, K = 2."""
    train = load_train('mixmatch')
    args = train.get_args(['--device', 'cpu', '--amp', 'off', '--batch-size', '8', '--lambda-u', '10'])
    args.num_classes, args.augment_kind, args.drop_unkept = 3, 'padcrop', drop_unkept
    torch.manual_seed(0)
    rt = Runtime('cpu', 'off')
    model = rt.prepare(build_model('wrn28_2', 3, 1, (0.5,), (0.25,), 0.01))
    x_unl = torch.randint(0, 256, (40, 1, 12, 12), dtype=torch.uint8)
    x_l, y_l = torch.randint(0, 256, (8, 1, 12, 12), dtype=torch.uint8), torch.arange(8) % 3
    s = loop.make_state(args, rt, model, {'labeled': (x_l, y_l), 'unlabeled': (x_unl, torch.full((40,), -1))},
                        {args.policy: policy_class})
    step_fn = loop.MixMatchStep.for_args(args)(s)
    m = step_fn.train(x_l, y_l, step_fn.draw(), step_fn.context(step))
    policy = s.policy
    return policy, m


@pytest.mark.parametrize('threshold,drawn,mask_ratio', [(1.0, 32, 0.0), (0.0, 8, 1.0)])
def test_an_ensure_ratio_policy_draws_until_its_cap_and_trains_on_b_u_images(threshold, drawn, mask_ratio):
    policy, m = one_step(type('EnsureRatioAt', (EnsureRatio,), {'threshold': threshold}))
    assert policy.drawn == drawn                   # nothing passes 1.0: 3 extra batches; everything passes 0: none
    assert m['mask_ratio'].item() == mask_ratio and torch.isfinite(m['loss'])
    assert m['policy_guessed'].item() == drawn     # a policy's own values join the step's metrics


def test_a_policys_own_values_reach_the_log():
    class Log:
        def write(self, record):
            self.record = record

    log = Log()
    window = {'loss': 1.0, 'loss_x': 1.0, 'loss_u': 0.0, 'train_acc': 50.0, 'ms_per_step': 3.0, 'policy_guessed': 16.0}
    record, val = metrics.evaluate_and_log(None, {}, window, 1.0, 10, log, {'amp': 'off'}, 100, lambda v: True)
    assert log.record['policy_guessed'] == 16.0 and log.record['amp'] == 'off' and val is None


def test_a_two_term_loss_and_a_weight_schedule():
    policy, m = one_step(MixedLoss, step=50)
    mixmatch, thresholded, confident = policy.parts
    assert policy.lambda_u(50) == 5.0
    assert m['loss'].item() == pytest.approx(m['loss_x'].item() + 5.0 * mixmatch.item() + 2 * thresholded.item(),
                                             rel=1e-6)
    assert m['loss_u'].item() == pytest.approx(mixmatch.item() + thresholded.item(), rel=1e-6)


def test_mixed_rows_name_their_own_image_with_and_without_drop_unkept():
    policy, m = one_step(EvenImages)
    rows = policy.rows                                                    # K = 2 views of 8 images, all in
    assert rows.image.tolist() == list(range(8)) * 2 and rows.keep.tolist() == [i % 2 == 0 for i in range(8)] * 2
    assert m['mask_ratio'].item() == 0.5
    policy, m = one_step(EvenImages, drop_unkept=True)                   # only the kept images' rows remain
    assert policy.rows.image.tolist() == [0, 2, 4, 6] * 2 and policy.rows.keep.all()


def test_guess_take_and_cat_keep_each_images_views_and_guess_together():
    n, k = 4, 2
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    views = torch.cat([images.float() + 100 * v for v in range(k)])       # view v of image i: i + 100 v
    p = torch.softmax(torch.randn(n, 3), dim=1)
    g = Guess(images, torch.arange(n) + 10, torch.full((n,), -1), views, p, semisup.sharpen(p, 0.5))
    both = g.cat(g.take(torch.tensor([3, 1])))
    assert both.index.tolist() == [10, 11, 12, 13, 13, 11]
    assert both.views.view(k, 6).tolist() == [[0, 1, 2, 3, 3, 1], [100, 101, 102, 103, 103, 101]]
    assert torch.equal(both.mean_prob[4], p[3]) and torch.equal(both.target[5], g.target[1])
