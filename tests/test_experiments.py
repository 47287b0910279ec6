"""The study's other experiments on the shared code: learning-rate schedules, CutMix, --init, and the
augmentation flags end to end."""
import argparse
import json
import math
import os

import pytest
import torch

import augment
import checkpoint
import errors
import loop
import semisup
from conftest import make_plain_folder, run_script, tiny_run_args
from models import build_model


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    return make_plain_folder(str(tmp_path_factory.mktemp('data') / 'images'))


def schedule(**flags):
    base = dict(lr=0.1, lr_schedule='constant', lr_milestones=None, lr_factor=0.5, lr_gamma=None, steps=1000)
    return argparse.Namespace(**(base | flags))


def test_learning_rate_at_given_steps_for_each_schedule():
    assert [semisup.lr_at(s, schedule()) for s in (0, 999)] == [0.1, 0.1]
    multistep = schedule(lr_schedule='multistep', lr_milestones=(100, 300))
    assert [semisup.lr_at(s, multistep) for s in (0, 99, 100, 299, 300, 999)] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025]
    exponential = schedule(lr_schedule='exponential', lr_gamma=0.99)
    assert semisup.lr_at(0, exponential) == 0.1 and math.isclose(semisup.lr_at(100, exponential), 0.1 * 0.99 ** 100)
    cosine = schedule(lr_schedule='cosine')  # FixMatch: cos(7 pi k / 16 K), 0.1 -> 0.1 * cos(7 pi / 16) at the end
    assert semisup.lr_at(0, cosine) == 0.1
    assert math.isclose(semisup.lr_at(500, cosine), 0.1 * math.cos(7 * math.pi / 32))
    assert math.isclose(semisup.lr_at(1000, cosine), 0.1 * math.cos(7 * math.pi / 16))


@pytest.mark.slow
def test_a_resumed_run_continues_the_schedule_exactly(images, tmp_path):
    """4 steps, then --resume auto to 6, equals 6 steps in one go, bit for bit; the log gives each evaluation's
    learning rate (the one the last step used)."""
    flags = ['--lr-schedule', 'multistep:1,3:0.1']
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    assert run_script('mixmatch', *tiny_run_args(images, straight, steps=6), *flags).returncode == 0
    assert run_script('mixmatch', *tiny_run_args(images, split, steps=4), *flags).returncode == 0
    r = run_script('mixmatch', *tiny_run_args(images, split, steps=6), *flags, '--resume', 'auto')
    assert r.returncode == 0, r.stderr
    a = torch.load(os.path.join(straight, 'checkpoint.pt'), weights_only=True)
    b = torch.load(os.path.join(split, 'checkpoint.pt'), weights_only=True)
    for key in ('model', 'ema'):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f'{key}.{name}'
    lrs = [json.loads(line)['lr'] for line in open(os.path.join(split, 'log.jsonl'))]
    assert lrs == pytest.approx([2e-4, 2e-5, 2e-5], rel=1e-9)  # steps 1, 3, 5 (the last before each evaluation)


@pytest.mark.slow
def test_flags_given_on_resume_win_over_the_schedule_saved(images, tmp_path):
    out = str(tmp_path / 'run')
    flags = ['--lr-schedule']
    assert run_script('mixmatch', *tiny_run_args(images, out, steps=4), *flags, 'exponential:0.5').returncode == 0
    r = run_script('mixmatch', *tiny_run_args(images, out, steps=6), *flags, 'exponential:0.9', '--resume', 'auto')
    assert r.returncode == 0, r.stderr
    assert 'resumed' in r.stdout and 'at step 4; from step 4 on: lr_gamma 0.5 -> 0.9, steps 4 -> 6' in r.stdout
    records = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    assert records[-1]['lr'] == pytest.approx(2e-3 * 0.9 ** 5, rel=1e-9)
    change = {'step': 4, 'flags': {'lr_gamma': [0.5, 0.9], 'steps': [4, 6]}}
    assert [x.get('flag_changes') for x in records] == [None, None, [change]]  # the records after the resume
    assert torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)['meta']['flag_changes'] == [change]
    r = run_script('mixmatch', *tiny_run_args(images, out, steps=8), *flags, 'exponential:0.9', '--resume', 'auto')
    assert r.returncode == 0 and 'from step 6 on: steps 6 -> 8' in r.stdout, r.stderr
    later = {'step': 6, 'flags': {'steps': [6, 8]}}  # a second resume adds its own change to the first
    assert torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)['meta']['flag_changes'] == [change, later]


def test_cutmix_pastes_a_box_of_the_partner_and_mixes_targets_by_area():
    torch.manual_seed(0)
    n, size = 64, 20
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size)  # image i: all pixels = i
    targets = torch.eye(n)
    partner = torch.randperm(n)
    lam = torch.tensor(0.75)  # a box of side sqrt(0.25) = half the image's, clipped at the borders
    x_mix, t_mix = semisup.mix_rows(x, targets, partner, lam, 'cutmix')
    corners = set()
    for i in range(n):
        from_partner = x_mix[i, 0] == partner[i]
        own = x_mix[i, 0] == i
        assert bool((from_partner | own).all()) and torch.equal(x_mix[i, 0], x_mix[i, 2])  # every channel alike
        rows, cols = from_partner.nonzero(as_tuple=True)
        if partner[i] != i:
            assert len(rows) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # one rectangle
            assert rows.max() - rows.min() + 1 <= size // 2 and cols.max() - cols.min() + 1 <= size // 2
            corners.add((int(rows.min()), int(cols.min())))
            area = len(rows) / size ** 2
            assert t_mix[i, partner[i]] == pytest.approx(area) and t_mix[i, i] == pytest.approx(1 - area)
    assert len(corners) > 20  # a box per row, at its own place
    mixup_x, mixup_t = semisup.mix_rows(x, targets, partner, lam, 'mixup')
    assert torch.equal(mixup_x, 0.75 * x + 0.25 * x[partner]) and torch.equal(mixup_t, 0.75 * targets + 0.25 * targets[partner])


def test_init_loads_the_backbone_and_a_head_of_another_class_count_starts_anew(tmp_path):
    torch.manual_seed(0)
    trained = build_model('wrn28_2', 4, 1, (0.3,), (0.2,), 0.01)
    path = str(tmp_path / 'rot.pt')
    torch.save({'ema': trained.state_dict(), 'args': {}, 'method': 'rotnet', 'arch': 'wrn28_2', 'num_classes': 4}, path)
    model = build_model('wrn28_2', 10, 1, (0.5,), (0.5,), 0.01)
    fresh_head = model.backbone.fc.weight.clone()
    note = checkpoint.init_weights(model, checkpoint.load_init(path, 'wrn28_2'), path)
    assert 'the classifier head is initialized anew (this run has 10 classes)' in note
    theirs, mine = trained.state_dict(), model.state_dict()
    for k, v in mine.items():
        if k.startswith('backbone.fc.'):
            continue
        assert torch.equal(v, theirs[k]), k  # BatchNorm statistics and the normalization included
    assert torch.equal(model.backbone.fc.weight, fresh_head)
    same = build_model('wrn28_2', 4, 1, (0.5,), (0.5,), 0.01)
    assert 'every weight' in checkpoint.init_weights(same, checkpoint.load_init(path, 'wrn28_2'), path)
    assert all(torch.equal(v, theirs[k]) for k, v in same.state_dict().items())
    three_channels = build_model('wrn28_2', 4, 3, (0.5,) * 3, (0.5,) * 3, 0.01)
    with pytest.raises(errors.UserError, match='the checkpoint takes 1-channel images, this data has 3'):
        checkpoint.init_weights(three_channels, checkpoint.load_init(path, 'wrn28_2'), path)


@pytest.mark.slow
def test_a_run_starts_from_another_runs_checkpoint_with_init(images, tmp_path):
    first, second = str(tmp_path / 'first'), str(tmp_path / 'second')
    assert run_script('mixmatch', *tiny_run_args(images, first)).returncode == 0
    r = run_script('adaptive', *tiny_run_args(images, second, steps=2), '--init', f'{first}/best.pt')
    assert r.returncode == 0, r.stderr
    assert f'--init: every weight from {first}/best.pt, a mixmatch checkpoint (3 classes)' in r.stdout


@pytest.mark.slow
def test_augmentation_flags_train_end_to_end(images, tmp_path):
    out = str(tmp_path / 'run')
    r = run_script('mixmatch', *tiny_run_args(images, out, steps=2), '--strong-augment',
                   'randaugment:2,9+augmix:3+cutout:4', '--mix', 'cutmix')
    assert r.returncode == 0, r.stderr
    assert 'augment padcrop + randaugment (2, 9) + augmix 3 + cutout 4' in r.stdout
    ckpt = torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)
    assert (ckpt['args']['randaugment'], ckpt['args']['mix']) == ((2, 9), 'cutmix')


@pytest.mark.slow
@pytest.mark.parametrize('system', ['etc/fixmatch', 'etc/meanteacher'])
def test_fixmatch_and_mean_teacher_train_20_steps_and_evaluate(system, images, tmp_path):
    out = str(tmp_path / 'run')
    r = run_script(system, *tiny_run_args(images, out, steps=20, eval_every=10),
                   '--batch-size', '8,56', '--rampup', '10')
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    assert [x['step'] for x in records] == [10, 20]
    assert all(0 <= x['mask_ratio'] <= 1 and 0 <= x['test_top1'] <= 100 for x in records)
    ckpt = torch.load(os.path.join(out, 'checkpoint.pt'), weights_only=True)
    assert ckpt['method'] == os.path.basename(system) and ckpt['step'] == 20
    if system == 'etc/fixmatch':  # SGD with Nesterov momentum, lr 0.03 cos(7 pi k / 16 K)
        assert ckpt['optimizer']['param_groups'][0]['nesterov'] and records[0]['threshold'] == pytest.approx(0.95)
        assert records[1]['lr'] == pytest.approx(0.03 * math.cos(7 * math.pi * 19 / (16 * 20)))
    else:  # the sigmoid ramp-up of the consistency weight: exp(-5 (1 - t)^2) of 100
        assert records[0]['lambda_u'] == pytest.approx(100 * math.exp(-5 * (1 - 9 / 10) ** 2))
        assert records[1]['lambda_u'] == 100 and records[0]['mask_ratio'] == 1
    r = run_script(system, '--evaluate', f'{out}/best.pt', '--device', 'cpu')
    assert r.returncode == 0 and 'test top-1' in r.stdout, r.stderr


@pytest.mark.slow
def test_fixmatch_refuses_the_flags_of_mixmatchs_step(images, tmp_path):
    r = run_script('etc/fixmatch', *tiny_run_args(images, str(tmp_path / 'run')), '--K', '3')
    assert r.returncode == 2 and r.stderr.strip() == 'error: --K: not read by fixmatch (see --help)'
    assert not os.path.exists(tmp_path / 'run')
    help_text = run_script('etc/fixmatch', '--help').stdout
    assert '--strong-ops' in help_text and '--K ' not in help_text and '[default: 0.03]' in help_text


def test_rotate90_turns_each_image_by_its_own_quarter_turns():
    images = torch.arange(2 * 3 * 3, dtype=torch.float32).view(2, 1, 3, 3).repeat(4, 1, 1, 1)   # 8 images
    turns = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    out = augment.rotate90(images, turns)
    for i, k in enumerate(turns.tolist()):
        assert torch.equal(out[i], torch.rot90(images[i], k, dims=(-2, -1)))


@pytest.mark.slow
def test_rotation_loss_trains_a_rotation_head_and_evaluation_ignores_it(images, tmp_path):
    out = str(tmp_path / 'run')
    r = run_script('adaptive', *tiny_run_args(images, out), '--rot-weight', '10')
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    assert all(x['loss_rot'] > 0 for x in records)  # cross-entropy over 4 rotations
    best = torch.load(os.path.join(out, 'best.pt'), weights_only=True)
    assert best['ema']['heads.rotation.weight'].shape[0] == 4
    r = run_script('adaptive', '--evaluate', f'{out}/best.pt', '--device', 'cpu')
    assert r.returncode == 0 and 'test top-1' in r.stdout, r.stderr


@pytest.mark.slow
def test_rotation_loss_and_dropping_unkept_images_combine(images, tmp_path):
    """--rot-weight with --drop-unkept (191/192's loss on the original's variable batches): one step with both
    variants, which trains with images dropped (a threshold few reach) and logs the rotation loss."""
    import loop
    from conftest import load_train
    step = loop.MixMatchStep.for_args(load_train('fixed').get_args(['--rot-weight', '1', '--drop-unkept']))
    assert issubclass(step, loop.WithRotation) and issubclass(step, loop.DropUnkept)
    out = str(tmp_path / 'run')
    r = run_script('fixed', *tiny_run_args(images, out), '--rot-weight', '1', '--drop-unkept', '--threshold', '0.99')
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in open(os.path.join(out, 'log.jsonl'))]
    assert all(x['loss_rot'] > 0 and x['mask_ratio'] < 1 for x in records), records


@pytest.mark.slow
def test_rotnet_pretraining_starts_a_method_with_init(images, tmp_path):
    pre, out = str(tmp_path / 'rotnet'), str(tmp_path / 'adaptive')
    r = run_script('etc/rotnet', *tiny_run_args(images, pre, steps=4))
    assert r.returncode == 0, r.stderr
    best = torch.load(os.path.join(pre, 'best.pt'), weights_only=True)
    assert (best['method'], best['num_classes'], best['classes']) == ('rotnet', 4, ['0', '90', '180', '270'])
    records = [json.loads(line) for line in open(os.path.join(pre, 'log.jsonl'))]
    assert all(0 <= x['val_top1'] <= 100 for x in records)  # rotation accuracy on the 4 turns of each val image
    r = run_script('adaptive', *tiny_run_args(images, out, steps=2), '--init', f'{pre}/best.pt')
    assert r.returncode == 0, r.stderr
    assert (f'--init: the backbone from {pre}/best.pt, a rotnet checkpoint (4 classes); the classifier head is '
            'initialized anew (this run has 3 classes)') in r.stdout


@pytest.mark.parametrize('guess_views', ['augmented', 'weak'])
def test_guess_views_weak_guesses_from_crop_and_flip_and_trains_the_augmented_views(guess_views):
    """436-438's code guessed from weak views and trained RandAugment views. CutOut of twice the side blanks every
    augmented view, so what the network saw tells which views the guess came from."""
    from conftest import load_train
    from runtime import Runtime
    train = load_train('adaptive')
    args = train.get_args(['--strong-augment', 'cutout:56' + ('+weak-guess' if guess_views == 'weak' else ''),
                           '--device', 'cpu'])
    args.augment_kind = 'padcrop'
    seen = []

    def net(x):
        seen.append(x.detach().clone())
        return torch.zeros(len(x), 10)

    images = torch.randint(1, 256, (4, 1, 28, 28), dtype=torch.uint8)
    u = loop.guess_labels(net, Runtime('cpu', 'off'), images, torch.arange(4), torch.full((4,), -1), args)
    assert len(seen) == 1 and seen[0].shape == (8, 1, 28, 28) and (u.views == 0).all()   # K = 2 views train, blank
    assert (seen[0] == 0).all() == (guess_views == 'augmented')
