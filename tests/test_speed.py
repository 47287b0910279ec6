"""The fast paths compute what the plain path computes: bf16 + channels_last vs fp32 NCHW within bf16
tolerance, torch.compile vs eager with the same pseudo-label masks; and etc/bench.py's output format."""
import json
import os
import subprocess
import sys

import pytest
import torch

import semisup
from conftest import REPO, load_train, step_once
from models import build_model
from runtime import Runtime, bf16_unusable


def one_step(method, flags, precision, channels_last, compile_backend=None, acc=(1, 2)):
    """One step from a fixed model, batch and RNG state; returns its metrics as Python floats."""
    train = load_train(method)
    args = train.get_args(flags + ['--device', 'cpu'])
    args.num_classes, args.augment_kind = 10, 'padcrop'
    rt = Runtime('cpu', precision, 'default' if compile_backend else 'off', channels_last=channels_last)
    torch.manual_seed(0)
    model = rt.prepare(build_model('wrn28_2', 10, 1, (0.3,), (0.35,), 0.01))
    net = rt.compile(model, backend=compile_backend) if compile_backend else model
    g = torch.Generator().manual_seed(1)
    batch = (torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(32) % 10,
             torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(32) % 10)
    train_acc = semisup.TrainAccuracy(rt.device)
    train_acc.add(torch.tensor(acc[0]), acc[1])
    torch.manual_seed(2)  # the same augmentations, mixup lambda and partners in every variant
    m = step_once(train, model, rt, args, batch, train_acc, net=net)
    return {k: v.item() for k, v in m.items()}


@pytest.mark.slow
def test_bf16_channels_last_computes_the_fp32_losses():
    plain = one_step('mixmatch', ['--rampup', '0'], 'off', channels_last=False)
    fast = one_step('mixmatch', ['--rampup', '0'], 'bf16', channels_last=True)
    for key in ('loss_x', 'loss_u', 'confidence'):
        assert fast[key] == pytest.approx(plain[key], rel=3e-2), key
    same_layout = one_step('mixmatch', ['--rampup', '0'], 'off', channels_last=True)
    for key in ('loss_x', 'loss_u', 'confidence'):
        assert same_layout[key] == pytest.approx(plain[key], rel=1e-4), key


@pytest.mark.slow
@pytest.mark.parametrize('method,flags', [('fixed', ['--threshold']), ('adaptive', ['--min-th', '0.1'])])
def test_compiled_and_eager_keep_the_same_pseudo_labels(method, flags):
    if flags == ['--threshold']:  # a threshold at the mean confidence of this model: some kept, some not
        flags = flags + [str(one_step(method, ['--threshold', '1'], 'off', True)['confidence'])]
    eager = one_step(method, flags, 'off', True)
    compiled = one_step(method, flags, 'off', True, compile_backend='aot_eager')
    assert 0 < eager['mask_ratio'] < 1                                    # the mask is not trivial
    assert compiled['mask_ratio'] == eager['mask_ratio']
    assert compiled['threshold'] == pytest.approx(eager['threshold'], abs=1e-6)
    for key in ('loss_x', 'loss_u'):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-4), key


@pytest.mark.slow
@pytest.mark.parametrize('isa', [None, 'AVX2'])
def test_bench_writes_the_documented_json(tmp_path, isa):
    """On every CPU: fp32 rows always, bf16 rows only where oneDNN has bf16 kernels (ONEDNN_MAX_CPU_ISA=AVX2
    hides them, as on an AVX2-only CPU), and a line that says why bf16 was skipped."""
    out = tmp_path / 'bench.json'
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='', **({'ONEDNN_MAX_CPU_ISA': isa} if isa else {}))
    r = subprocess.run([sys.executable, os.path.join(REPO, 'etc', 'bench.py'), '--device', 'cpu', '--methods',
                        'fixed', '--shapes', '8x8x1', '--batch', '8', '--steps', '2', '--warmup', '1', '--json', str(out),
                        '--profile'],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    bf16 = isa is None and bf16_unusable('cpu') is None
    rows = json.load(open(out))
    assert [(x['precision'], x['channels_last'], x['compile']) for x in rows] == [
        ('fp32', False, False), ('fp32', True, False)] + ([('bf16', False, False), ('bf16', True, False)] if bf16 else [])
    assert ('bf16 rows skipped: this CPU has no AVX512-BF16 or AMX' in r.stdout) == (not bf16)
    keys = {'method', 'device', 'arch', 'batch', 'shape', 'precision', 'compile', 'channels_last', 'ms_per_step',
            'steps_per_s', 'peak_mem_bytes', 'flops_per_step'}
    for x in rows:
        assert keys <= set(x) and x['method'] == 'fixed' and x['shape'] == '8x8x1' and x['batch'] == 8
        assert x['ms_per_step'] > 0 and x['steps_per_s'] == pytest.approx(1000 / x['ms_per_step'])
        assert x['flops_per_step'] > 1e8                                  # WRN-28-2 on 8x8: ~0.4 GFLOP / step
    assert 'speedup' in r.stdout
    profile = r.stdout.split(f'profile of fixed 8x8x1 {"bf16" if bf16 else "fp32"} channels-last')[1]
    assert 'aten::convolution_backward' in profile                        # oneDNN's kernels, not the slow reference


@pytest.mark.slow
def test_bench_variants_give_one_row_per_flag_set(tmp_path):
    """etc/bench.py --variants: what each augmentation costs against the defaults, one row each, same machine."""
    out = tmp_path / 'bench.json'
    r = subprocess.run([sys.executable, os.path.join(REPO, 'etc', 'bench.py'), '--device', 'cpu', '--methods',
                        'mixmatch', '--shapes', '8x8x1', '--batch', '8', '--steps', '1', '--warmup', '1', '--json',
                        str(out), '--variants', ';--strong-augment cutout:3;--strong-augment randaugment:2,9;--rot-weight 1'],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES=''))
    assert r.returncode == 0, r.stderr
    rows = json.load(open(out))
    assert [x['flags'] for x in rows] == ['', '--strong-augment cutout:3', '--strong-augment randaugment:2,9', '--rot-weight 1']
    assert len({(x['precision'], x['channels_last'], x['compile']) for x in rows}) == 1
    assert '(defaults)' in r.stdout and r.stdout.rstrip().endswith('--rot-weight 1')
