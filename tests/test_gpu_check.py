"""etc/gpu_check.py (make gpu-check): its commands are valid here, and without a GPU it says so in one line."""
import importlib.util
import os
import subprocess
import sys

from conftest import REPO

spec = importlib.util.spec_from_file_location('gpu_check', os.path.join(REPO, 'etc', 'gpu_check.py'))
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)
spec = importlib.util.spec_from_file_location('reproduce_for_gpu', os.path.join(REPO, 'etc', 'reproduce.py'))
reproduce = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reproduce)


def test_without_cuda_it_stops_with_one_line_and_exit_2():
    r = subprocess.run([sys.executable, os.path.join(REPO, 'etc', 'gpu_check.py')], capture_output=True, text=True,
                       env=dict(os.environ, CUDA_VISIBLE_DEVICES=''), timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith('error: no CUDA device') and '\n' not in r.stderr.strip()


def test_its_parts_are_the_headline_at_the_medium_preset_and_valid_commands(tmp_path):
    parts = gpu_check.parts(str(tmp_path))
    assert parts[0][0].startswith('headline')  # the runs first: they matter most when device time is short
    args = reproduce.get_args(parts[0][1][2:])  # the reproduce.py flags parse, and name table 2's headline entries
    assert args.preset == 'medium' and args.device == 'cuda' and args.jobs == 4 and args.seeds == 1
    assert args.entries == ['labeled-only', 'mixmatch', 'mixmatch-75', 'adaptive-ce-1']
    assert str(tmp_path) in args.runs_dir and str(tmp_path) in args.results_dir  # committed tables stay untouched
    # the committed medium table: 3 seeds, all 12 runs at once, in reproduce.py's own layout
    args = reproduce.get_args(gpu_check.parts(str(tmp_path), 3, 'runs/reproduce', 'etc/results')[0][1][2:])
    assert (args.seeds, args.jobs, args.runs_dir, args.results_dir) == (3, 12, 'runs/reproduce', 'etc/results')
    parts = dict(parts)
    for name in ('bench', 'released checkpoints'):  # each script accepts its flags (--help after them parses all)
        r = subprocess.run(parts[name][:2] + ['--help'], capture_output=True, text=True, cwd=REPO, timeout=120)
        assert r.returncode == 0, r.stderr
        flags = [a for a in parts[name][2:] if a.startswith('--')]
        assert all(f in r.stdout for f in flags), (name, flags)
