"""One command for an NVIDIA GPU, offline, in the environment `make setup` builds (`make gpu-check` runs it):

  1. the training step's speed: etc/bench.py --device cuda --methods adaptive --shapes 28x28x1 (eager fp32,
     bf16, channels-last, compiled and CUDA-graph rows; the target for WRN-28-2, batch 64 + 64, K=2 is
     5 ms/step or less);
  2. the released checkpoints evaluated on CUDA against pretrained/manifest.json (etc/verify_pretrained.py);
  3. the headline entries (labeled-only, MixMatch at the paper's weight and at lambda_u 75, adaptive CE), seed 0
     of the medium preset, run at the same time on the one GPU, and their table.

    python etc/gpu_check.py                      # meant to take 5 minutes or less on one H100/H200
    python etc/gpu_check.py --out runs/gpu-check # where the runs, bench JSON and table go (the default)

The runs go to --out, not to etc/results: the committed tables stay those of their own command. The full
preset on a GPU (3 seeds of every table):

    python etc/reproduce.py --table all --seeds 3 --preset full --device cuda --jobs 4

Exit code 0 if every part passed, 1 if one failed, 2 without a CUDA device.
"""
import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADLINE = 'labeled-only,mixmatch,mixmatch-75,adaptive-ce-1'


def parts(out):
    """(name, command) of each part, in order."""
    py = sys.executable
    reproduce = [py, 'etc/reproduce.py', '--table', '2', '--entries', HEADLINE, '--seeds', '1', '--preset', 'medium',
                 '--device', 'cuda', '--jobs', '4', '--runs-dir', os.path.join(out, 'runs'),
                 '--results-dir', os.path.join(out, 'results')]
    return [('bench', [py, 'etc/bench.py', '--device', 'cuda', '--methods', 'adaptive', '--shapes', '28x28x1',
                       '--json', os.path.join(out, 'bench-gpu.json')]),
            ('released checkpoints', [py, 'etc/verify_pretrained.py', '--device', 'cuda']),
            ('headline, medium preset, seed 0', reproduce)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default=os.path.join('runs', 'gpu-check'), help='where its runs and files go')
    p.add_argument('--dry-run', action='store_true', help='print the commands and exit')
    args = p.parse_args(argv)
    os.chdir(REPO)
    if args.dry_run:
        for name, cmd in parts(args.out):
            print(f'# {name}\n' + ' '.join(cmd))
        return 0
    import torch
    if not torch.cuda.is_available():
        print('error: no CUDA device: this check is for an NVIDIA GPU (the CPU checks are `make test`)',
              file=sys.stderr)
        return 2
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}', flush=True)
    os.makedirs(args.out, exist_ok=True)
    results, t_all = [], time.time()
    for name, cmd in parts(args.out):
        print(f'\n== {name}: {" ".join(cmd)}', flush=True)
        t0 = time.time()
        rc = subprocess.run(cmd, cwd=REPO).returncode
        results.append((name, rc, time.time() - t0))
    table = os.path.join(args.out, 'results', 'medium', 'table2.md')
    if os.path.exists(table):
        print(f'\n== {table}\n' + open(table).read())
    print(f'\n== summary ({(time.time() - t_all) / 60:.1f} min)')
    for name, rc, seconds in results:
        print(f'{name}: {"ok" if rc == 0 else f"FAILED (exit {rc})"}, {seconds:.0f} s')
    return 0 if all(rc == 0 for _, rc, _ in results) else 1


if __name__ == '__main__':
    sys.exit(main())
