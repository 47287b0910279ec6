"""Check every released checkpoint: its sha256 against pretrained/manifest.json (and its file name), then its
test top-1/top-5 as `python <method>/train.py --evaluate FILE --device cpu` (or --device cuda) prints them against the
manifest.

    python etc/verify_pretrained.py                 # all of them (a few minutes on a 2-core CPU)
    python etc/verify_pretrained.py --only mixmatch # the files whose entry contains 'mixmatch'

fp32 kernels differ between CPUs (and oneDNN versions), so a logit on a decision boundary may flip: a number
passes if it is within --tolerance points (default 0.02, i.e. two of the 10,000 test images) of the manifest;
the difference is printed either way. Exit code 0 if every file passes, 1 otherwise.
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = os.path.join(REPO, 'pretrained', 'manifest.json')


def sha256(path):
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


def evaluate_file(path, method, device='cpu'):
    """(top1, top5, output) that the release's own --evaluate prints for a checkpoint file."""
    r = subprocess.run([sys.executable, os.path.join(REPO, method, 'train.py'), '--evaluate', path,
                        '--device', device], capture_output=True, text=True, cwd=REPO)
    m = re.fullmatch(r'test top-1 (\d+\.\d+) top-5 (\d+\.\d+)', r.stdout.strip().splitlines()[-1] if r.stdout.strip()
                     else '')
    if r.returncode != 0 or not m:
        return None, None, (r.stdout + r.stderr).strip()
    return float(m.group(1)), float(m.group(2)), r.stdout.strip()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--only', default=None, help='check only the files whose entry contains this text')
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'), help='where --evaluate runs')
    p.add_argument('--tolerance', type=float, default=0.02, help='points of top-1/top-5 a number may differ by')
    args = p.parse_args(argv)
    if not os.path.exists(MANIFEST):
        print(f'error: {MANIFEST} not found', file=sys.stderr)
        return 2
    with open(MANIFEST) as f:
        rows = [r for r in json.load(f)['checkpoints'] if args.only is None or args.only in r['entry']]
    if not rows:
        print('error: no checkpoint matches', file=sys.stderr)
        return 2
    bad = 0
    for r in rows:
        path = os.path.join(REPO, 'pretrained', r['file'])
        problems = []
        if not os.path.exists(path):
            problems.append('file missing')
        elif sha256(path) != r['sha256']:
            problems.append(f'sha256 {sha256(path)[:16]}... != manifest {r["sha256"][:16]}...')
        else:
            top1, top5, output = evaluate_file(path, r['method'], args.device)
            if top1 is None:
                problems.append(f'--evaluate failed: {output.splitlines()[-1] if output else "no output"}')
            else:
                d1, d5 = top1 - r['test_top1'], top5 - r['test_top5']
                if abs(d1) > args.tolerance + 1e-9 or abs(d5) > args.tolerance + 1e-9:
                    problems.append(f'numbers differ from the manifest by {d1:+.2f} / {d5:+.2f}')
                print(f'{r["file"]}: sha256 ok; test top-1 {top1:.2f} top-5 {top5:.2f} (manifest {r["test_top1"]:.2f} '
                      f'{r["test_top5"]:.2f}, difference {d1:+.2f} {d5:+.2f})', flush=True)
        if problems:
            bad += 1
            print(f'{r["file"]}: FAIL: {"; ".join(problems)}', flush=True)
    print(f'{len(rows) - bad} of {len(rows)} checkpoints verified')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
