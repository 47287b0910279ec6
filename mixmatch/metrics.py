"""What a run measures and writes: evaluation (fp32 top-1/top-5 of the EMA weights), the step metrics, and the
run's log (log.jsonl, TensorBoard, console). Shared module (identical copies in every method folder)."""
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate(model, images, labels, batch_size, memory_format=torch.channels_last):
    """fp32, per-sample top-1/top-5 (%) and mean cross-entropy. Returns a dict of Python numbers."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct1 = correct5 = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device, non_blocking=True).contiguous(memory_format=memory_format)
        y = labels[i:i + batch_size].to(device, non_blocking=True)
        logits = model(x).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        correct1 = correct1 + (top[:, 0] == y).sum()
        correct5 = correct5 + (top == y[:, None]).any(dim=1).sum()
        loss_sum = loss_sum + F.cross_entropy(logits, y, reduction='sum')
    model.train(was_training)
    n = max(len(images), 1)
    c1, c5, loss = (t.item() for t in (correct1, correct5, loss_sum))
    return {'top1': 100.0 * c1 / n, 'top5': 100.0 * c5 / n, 'loss': loss / n, 'correct': c1, 'count': len(images)}


def git_sha():
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        out = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], cwd=here, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


class RunLog:
    """<out>/log.jsonl (one JSON object per evaluation), TensorBoard under <out>/tb, and console output:
    a progress bar with ETA on a terminal, plain lines otherwise."""

    def __init__(self, out, start_step, total_steps, enabled=True):
        self.enabled = enabled
        if not enabled:  # processes other than rank 0 write nothing
            return
        from tensorboardX import SummaryWriter
        self.path = os.path.join(out, 'log.jsonl')
        if start_step > 0 and os.path.exists(self.path):  # drop lines a killed run wrote after its checkpoint
            kept = []
            with open(self.path) as f:
                for line in f:
                    try:
                        if json.loads(line)['step'] <= start_step:
                            kept.append(line.rstrip('\n') + '\n')
                    except (ValueError, KeyError, TypeError):  # a line cut short by the kill
                        pass
            with open(self.path, 'w') as f:
                f.writelines(kept)
        elif os.path.exists(self.path):
            os.remove(self.path)
        self.tb = SummaryWriter(os.path.join(out, 'tb'), purge_step=start_step if start_step > 0 else None)
        self.bar = None
        if sys.stdout.isatty():
            from progress.bar import Bar
            self.bar = Bar('train', max=total_steps, suffix='%(index)d/%(max)d  ETA %(eta_td)s', file=sys.stdout)
            self.bar.index = start_step

    def progress(self, step, text):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.suffix = '%(index)d/%(max)d  ETA %(eta_td)s  ' + text.replace('%', '%%')
            self.bar.goto(step)
        else:
            print(f'step {step}  {text}', flush=True)

    def tick(self):
        if self.enabled and self.bar is not None:
            self.bar.next()

    def write(self, record):
        if not self.enabled:
            return
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != 'step' and v is not None and math.isfinite(v):
                self.tb.add_scalar(k, v, record['step'])
        self.tb.flush()
        if self.bar is not None:
            print(file=sys.stdout)
        print('eval ' + '  '.join(f'{k} {v:.4g}' if isinstance(v, float) else f'{k} {v}'
                                  for k, v in record.items() if isinstance(v, (int, float))), flush=True)

    def close(self):
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.finish()
        self.tb.close()


class Meter:
    """Sums of per-step device scalars; read (one host sync, and one all-reduce across processes) only at
    print and evaluation intervals."""

    def __init__(self, rt):
        self.rt, self.sums, self.steps, self.t0 = rt, {}, 0, time.perf_counter()

    def add(self, **values):
        for k, v in values.items():
            self.sums[k] = self.sums[k] + v.detach().float() if k in self.sums else v.detach().float()
        self.steps += 1

    def peek(self):
        """Window means over steps and processes as Python floats, and ms per step."""
        keys = list(self.sums)
        values = self.rt.all_reduce(torch.stack([self.sums[k] for k in keys])).cpu().tolist() if keys else []
        out = {k: v / max(self.steps, 1) / self.rt.world for k, v in zip(keys, values)}
        out['ms_per_step'] = 1000 * (time.perf_counter() - self.t0) / max(self.steps, 1)
        return out

    def read(self):
        """peek(), then start a new window."""
        out = self.peek()
        self.sums, self.steps = {}, 0
        return out

    def restart_clock(self):
        """Exclude evaluation and checkpoint time from ms_per_step."""
        self.t0 = time.perf_counter()


def evaluate_and_log(eval_model, eval_sets, w, lambda_u, step, log, meta, batch_size, wants_test):
    """The EMA weights in fp32 on each evaluation set ({name: (images, labels)}, val first) and one log record
    of them with the training window's means w; the test set only if wants_test(val top-1) (None without val),
    its numbers None otherwise. Returns (record, the val (correct, count), or None without val)."""
    record = {'step': step, 'loss': w['loss'], 'loss_x': w['loss_x'], 'loss_u': w['loss_u'], 'lambda_u': lambda_u,
              'mask_ratio': w.get('mask_ratio'), 'threshold': w.get('threshold'),
              'pseudo_label_acc': 100.0 * w['pl_correct'] / w['pl_count'] if w.get('pl_count') else None,
              'confidence': w.get('confidence'), 'train_acc': w['train_acc'], 'lr': w.get('lr'),
              'loss_rot': w.get('loss_rot')}
    val = None
    for name, (x, y) in eval_sets.items():
        measured = x is not None and len(x) and (name != 'test' or wants_test(record.get('val_top1')))
        r = evaluate(eval_model, x, y, batch_size) if measured else None
        record |= {f'{name}_top1': r and r['top1'], f'{name}_top5': r and r['top5'], f'{name}_loss': r and r['loss']}
        if name == 'val' and r is not None:
            val = (r['correct'], max(r['count'], 1))
    record |= {k: v for k, v in w.items() if k.startswith('policy_')}
    record['ms_per_step'] = w['ms_per_step']
    log.write(record | meta)
    return record, val


def print_summary(rt, model, progress, out, median):
    """The end of a run: every process's parameter digest (equal under torchrun), then the best evaluation and,
    where the test set was measured at every evaluation (median), the median of the last 20."""
    digest = hashlib.sha256(b''.join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()
    print(f'rank {rt.rank}/{rt.world} parameters sha256 {digest[:16]}', flush=True)
    if not rt.is_main:
        return
    print(f'done: {progress.step} steps in {out}')
    if progress.best is not None and progress.history:
        med = [statistics.median(h[i] for h in progress.history) for i in (0, 1)]
        last = progress.history[-1]
        print(f'best val top-1 {progress.best["val_top1"]:.2f} at step {progress.best["step"]}: test top-1 '
              f'{progress.best["test_top1"]:.2f} top-5 {progress.best["test_top5"]:.2f}; '
              + (f'median of last {len(progress.history)} evals: test top-1 {med[0]:.2f} top-5 {med[1]:.2f}'
                 if median else f'last step: test top-1 {last[0]:.2f} top-5 {last[1]:.2f}'))

