"""The run directory and checkpoints: where a run writes, whether it resumes, and the files that let it
continue exactly (checkpoint.pt: everything, every process's RNG and sampler state included) or be evaluated
(best.pt and the released files: the EMA weights and what is needed to rebuild the model). Every file is
written atomically and loaded with weights_only (no code in a checkpoint runs). Shared module (identical
copies in every method folder)."""
import hashlib
import json
import os
import re
from dataclasses import dataclass, field

import torch

import models
from errors import UserError
from runtime import seed_everything

FORMAT = 3  # checkpoint.pt layout: 1 had no policy state (it resumes where the policy keeps none); 1 and 2
#             counted the train accuracy in 4 counts (a window-mean seed): they resume under --accuracy window
RESUMABLE = ('model', 'optimizer', 'step')  # what an evaluation checkpoint (best.pt, a released file) lacks
SAME_DATA = ('dataset', 'n_labeled', 'n_val', 'split_seed', 'image_size')  # the split the samplers index into


@dataclass
class Run:
    out: str                # the run directory
    resume: str | None      # the checkpoint this run continues, or None
    ckpt: dict | None       # its contents

    @property
    def checkpoint_path(self):
        return os.path.join(self.out, 'checkpoint.pt')


@dataclass
class Progress:
    """How far a run has come: steps done, the best evaluation by val top-1 (its numbers are best.pt's), the
    last 20 test evaluations, and the last val (correct, count), which --accuracy val follows."""
    step: int = 0
    best: dict | None = None
    history: list = field(default_factory=list)
    val_acc: tuple = (0, 1)

    def improves(self, val_top1):
        """Would an evaluation with this val top-1 be the new best (the first of equal val top-1 wins)."""
        return self.best is None or val_top1 is None or val_top1 > self.best['val_top1']

    def add(self, record):
        """Take one evaluation record; True if it is the new best."""
        if record['test_top1'] is not None:
            self.history = (self.history + [[record['test_top1'], record['test_top5']]])[-20:]
        if self.improves(record['val_top1']):
            self.best = {k: record[k] for k in ('step', 'val_top1', 'val_top5', 'test_top1', 'test_top5')}
            return True
        return False


def default_out(args, method_tag):
    labels = args.n_labeled if args.n_labeled is not None else 'all'
    if args.labeled_only:  # the unlabeled-loss flags play no part
        name = f'labeled-only-{args.dataset}-{labels}-{args.arch}-s{args.seed}'
    else:
        name = (f'{args.method}-{args.dataset}-{labels}-{args.arch}-{args.loss}-lu{args.lambda_u:g}-{method_tag}'
                f'-s{args.seed}')
    return os.path.join('runs', name)


def open_run(args, method, method_tag, rt):
    """Decide the run directory and what it resumes, before anything is written. Refuses a new run into a
    non-empty directory, an evaluation checkpoint, and a checkpoint of another method, policy or arch."""
    out = args.out or default_out(args, method_tag)
    path = os.path.join(out, 'checkpoint.pt')
    if args.resume == 'auto':
        resume = path if os.path.isfile(path) else None
    else:
        resume = args.resume
        if resume is None and os.path.isdir(out) and os.listdir(out):
            raise UserError(f'run directory {out} is not empty: pass --resume auto to continue it, or another --out')
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt is not None:
        if not all(k in ckpt for k in RESUMABLE):
            raise UserError(f'--resume {resume}: an evaluation checkpoint (best.pt or a released file) cannot be '
                            f'resumed; pass a run\'s checkpoint.pt')
        saved_policy = ckpt.get('policy_name', ckpt['args'].get('policy', args.policy))  # format 1: the only one
        for key, saved, mine in (('method', ckpt['method'], method), ('policy', saved_policy, args.policy),
                                 ('arch', ckpt['arch'], args.arch)):
            if saved != mine:
                raise UserError(f'--resume {resume}: checkpoint is {key} {saved!r}, this run is {mine!r}')
        for key in SAME_DATA:  # the samplers continue over the images the checkpoint was trained on
            if ckpt['args'].get(key) != vars(args).get(key):
                raise UserError(f'--resume {resume}: the checkpoint trained with --{key.replace("_", "-")} '
                                f'{ckpt["args"].get(key)}, this run asks for {vars(args).get(key)}; resume with the '
                                'same data flags, or start a new run')
    rt.barrier()  # every process has looked at the run directory before the first one writes to it
    return Run(out, resume, ckpt)


# ---------------------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------------------
def save_atomic(obj, path):
    """Write to a temp file in the same folder, fsync, rename: a kill during the save leaves the old file."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_args(out, args):
    """args.json: the flags this run trains with, every default resolved (what etc/reproduce.py's tables read);
    written at each start, atomically."""
    path = os.path.join(out, 'args.json')
    with open(f'{path}.tmp{os.getpid()}', 'w') as f:
        json.dump({k: list(v) if isinstance(v, tuple) else v for k, v in sorted(vars(args).items())}, f, indent=1)
    os.replace(f'{path}.tmp{os.getpid()}', path)


def tensors_digest(state):
    """sha256 of a state_dict's tensors, in key order."""
    h = hashlib.sha256()
    for key, t in state.items():
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_training(s, path):
    """checkpoint.pt: the training state s (loop.State); every process contributes its RNG and sampler state,
    the first one writes. The policy's state (its buffers, whatever their names) must be the same on every
    process: a policy that updates it from its own process's data alone is stopped here, with one line."""
    rt, args, progress = s.rt, s.args, s.progress
    policy_state = s.policy.state_dict()
    digests = rt.gather_objects(tensors_digest(policy_state))
    if len(set(digests)) > 1:
        raise UserError(f'after step {progress.step} the state of policy {args.policy!r} differs between processes: '
                        'update it from every process\'s data (ctx.rt.all_gather), as the policies in train.py do')
    states = rt.gather_objects({'rng': rng_state(), 'streams': {k: v.state_dict() for k, v in s.streams.items()}})
    if not rt.is_main:
        return
    save_atomic({
        'format': FORMAT, 'model': s.model.state_dict(), 'ema': s.eval_model.state_dict(),
        'ema_n_averaged': 0 if s.ema is None else int(s.ema.n_averaged), 'optimizer': s.optimizer.state_dict(),
        'scaler': None if rt.scaler is None else rt.scaler.state_dict(),
        'policy_name': args.policy, 'policy': {k: v.cpu() for k, v in policy_state.items()},
        'step': progress.step, 'args': dict(vars(args)), 'method': s.method, 'arch': args.arch,
        'num_classes': args.num_classes, 'classes': list(s.classes),
        'rng': [r['rng'] for r in states], 'streams': [r['streams'] for r in states],
        'train_acc': s.train_acc.state.cpu(), 'val_acc': [int(v) for v in progress.val_acc], 'best': progress.best,
        'history': progress.history, 'meta': s.meta}, path)


def save_best(s, path):
    """best.pt: the EMA weights of the best evaluation and what --evaluate needs to rebuild the model."""
    args = s.args
    save_atomic({'ema': s.eval_model.state_dict(), 'args': dict(vars(args)), 'metrics': s.progress.best,
                 'method': s.method, 'arch': args.arch, 'num_classes': args.num_classes, 'classes': list(s.classes),
                 'meta': s.meta}, path)


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------
def load_checkpoint(path):
    """A checkpoint of this release, loaded with weights_only (no code runs). A file named like the released
    ones, <entry>-<preset>-s<seed>-<hex>.pt, must have a sha256 that starts with <hex>."""
    if os.path.isdir(path):
        found = [f for f in ('best.pt', 'checkpoint.pt') if os.path.isfile(os.path.join(path, f))]
        raise UserError(f'{path} is a directory, not a checkpoint: pass a file in it, '
                        + (' or '.join(os.path.join(path, f) for f in found) if found else
                           'e.g. <run>/best.pt (its best weights) or <run>/checkpoint.pt (the last step)'))
    if not os.path.isfile(path):
        raise UserError(f'checkpoint not found: {path}')
    named = re.fullmatch(r'.+-s\d+-([0-9a-f]{8,64})\.pt', os.path.basename(path))
    if named:
        with open(path, 'rb') as f:
            digest = hashlib.file_digest(f, 'sha256').hexdigest()
        if not digest.startswith(named.group(1)):
            raise UserError(f'{path}: sha256 {digest[:16]}... does not match the {named.group(1)} in its name (the '
                            f'released files\' pattern): corrupt or changed; fetch it again, or rename your own file')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors all mean "not a usable checkpoint"
        raise UserError(f'cannot load checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}') from None
    missing = [k for k in ('ema', 'args', 'method', 'arch', 'num_classes')
               if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise UserError(f'{path} is not a checkpoint of this release (missing {", ".join(missing)})')
    return ckpt


def load_weights(module, state, path):
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        detail = [line.strip() for line in str(e).splitlines() if line.strip()]  # the first line only says "Error(s)"
        raise UserError(f'{path}: weights do not fit ({" ".join(detail[1:2] or detail[:1])[:200]})') from None


def load_init(path, arch):
    """--init PATH, loaded and checked before the data is: a checkpoint of this release and of --arch."""
    ckpt = load_checkpoint(path)
    if ckpt['arch'] != arch:
        raise UserError(f'--init {path}: the checkpoint is --arch {ckpt["arch"]}, this run --arch {arch}; pass '
                        f'--arch {ckpt["arch"]}, or start from a checkpoint of --arch {arch}')
    return ckpt


def init_weights(model, ckpt, path):
    """--init PATH (ckpt: load_init's): the weights a checkpoint evaluates with (its EMA), every tensor but the
    classifier head, and the head too where it has as many classes; pretext heads (rotation, projection) are not
    carried over, and this model's own start anew. Returns the line to print."""
    arch = ckpt['arch']
    mine, theirs = models.without_heads(model.state_dict()), models.without_heads(ckpt['ema'])
    if 'mean' in theirs and theirs['mean'].shape != mine['mean'].shape:
        raise UserError(f'--init {path}: the checkpoint takes {theirs["mean"].shape[1]}-channel images, this data has '
                        f'{mine["mean"].shape[1]}; start from a checkpoint trained on images like these')
    head = models.head_prefix(arch)
    body = {k: v for k, v in theirs.items() if not k.startswith(head)}
    missing = sorted(set(k for k in mine if not k.startswith(head)) - set(body))
    unfit = [k for k, v in body.items() if k not in mine or mine[k].shape != v.shape]
    if missing or unfit:
        key = (missing or unfit)[0]
        raise UserError(f'--init {path}: its weights do not fit this model ({key}: '
                        f'{tuple(theirs[key].shape) if key in theirs else "missing"} vs '
                        f'{tuple(mine[key].shape) if key in mine else "none"}; other image channels?)')
    head_fits = all(k in theirs and theirs[k].shape == v.shape for k, v in mine.items() if k.startswith(head))
    model.load_state_dict(body | ({k: theirs[k] for k in mine if k.startswith(head)} if head_fits else {}),
                          strict=False)
    article = 'an' if ckpt['method'][0] in 'aeiou' else 'a'
    origin = f'{article} {ckpt["method"]} checkpoint ({ckpt["num_classes"]} classes)'
    if head_fits:
        return f'--init: every weight from {path}, {origin}'
    return (f'--init: the backbone from {path}, {origin}; the classifier head is initialized anew '
            f'(this run has {mine[head + "weight"].shape[0]} classes)')


def restore_training(s, ckpt, path):
    """Continue the training state s (loop.State) from the checkpoint ckpt read from path: weights, optimizer
    (with the flags given now), policy state, train accuracy, RNG, samplers and progress. Returns a note for the
    log, or None."""
    rt, args = s.rt, s.args
    if 'policy' in ckpt:
        load_weights(s.policy, {k: v.to(rt.device) for k, v in ckpt['policy'].items()}, path)
    elif s.policy.state_dict():
        raise UserError(f'--resume {path}: the checkpoint predates policy state, and policy {args.policy!r} keeps '
                        'some; start a new run')
    load_weights(s.model, ckpt['model'], path)
    if s.ema is not None:
        load_weights(s.ema.module, ckpt['ema'], path)
        s.ema.n_averaged.fill_(ckpt['ema_n_averaged'])
    s.optimizer.load_state_dict(ckpt['optimizer'])
    if rt.scaler is not None and ckpt.get('scaler'):  # --amp fp16: the loss scale continues
        rt.scaler.load_state_dict(ckpt['scaler'])
    for group in s.optimizer.param_groups:  # flags given now win over the saved ones
        group['lr'], group['weight_decay'] = args.lr, args.wd
    if not s.train_acc.load(ckpt['train_acc']):
        raise UserError(f'--resume {path}: the checkpoint counted the train accuracy as the first release did; '
                        'resume it with --accuracy window (--accuracy mixed,window where the policy reads it)')
    s.progress = Progress(ckpt['step'], ckpt['best'], ckpt['history'], tuple(ckpt['val_acc']))
    s.refresh_val_acc()
    note = None
    if len(ckpt['rng']) == rt.world:
        set_rng_state(ckpt['rng'][rt.rank])
        for name, sampler in s.streams.items():
            sampler.load_state_dict(ckpt['streams'][rt.rank][name])
    else:
        note = (f'note: {path} was written by {len(ckpt["rng"])} processes, this run has {rt.world}: sampling '
                f'continues from fresh seeds, so the result will not be bit-identical to an uninterrupted run')
        seed_everything(args.seed * 1000 + rt.rank + s.progress.step)
    return note


# Flags that do not change what a run computes: a finished run asked again with other values of these is finished.
NOT_RESULTS = ('device', 'amp', 'compile', 'print_every', 'eval_batch_size', 'data_root', 'cache_dir', 'download')


def finished(run, args):
    """The line to print where the run's checkpoint has reached --steps (it is left untouched), else None. A
    finished run asked for with other training flags is refused: there is nothing to continue with them."""
    if run.ckpt is None or run.ckpt['step'] < args.steps:
        return None
    other = {k: v for k, v in changed_flags(run.ckpt, args).items() if k not in NOT_RESULTS + ('steps',)}
    if other:
        raise UserError(f'{run.out} finished at step {run.ckpt["step"]} with other flags ('
                        + ', '.join(f'--{k.replace("_", "-")} {a}, now {b}' for k, (a, b) in other.items())
                        + '): nothing to continue with these; start a new run with another --out')
    return (f'already finished at step {run.ckpt["step"]} (--steps {args.steps}): {run.out} is left as it is; '
            'pass a larger --steps to train further')


def changed_flags(ckpt, args):
    """The flags whose value differs from the checkpoint's: {name: [saved, now]}."""
    derived = ('resume', 'out', 'num_classes', 'augment_kind', 'preset')  # --preset: the flags it sets are compared
    return {k: [v, vars(args).get(k)] for k, v in sorted(ckpt['args'].items())
            if k not in derived and vars(args).get(k) != v}


def flag_changes(ckpt, args, step):
    """Every change of flags over a run's resumes, this one's last if any: [{'step': s, 'flags': {name: [from,
    to]}}], s the first step trained with the new values."""
    earlier = list(ckpt.get('meta', {}).get('flag_changes', []))
    changed = changed_flags(ckpt, args)
    return earlier + ([{'step': step, 'flags': changed}] if changed else [])


def describe_changes(changes, step):
    """'; from step N on: setting old -> new, ...' (args.json's names) for the changes made at `step`, or ''."""
    flags = [c['flags'] for c in changes if c['step'] == step]
    if not flags:
        return ''
    return f'; from step {step} on: ' + ', '.join(f'{k} {a} -> {b}' for k, (a, b) in flags[0].items())


def rng_state():
    return {'torch': torch.get_rng_state(),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(s):
    torch.set_rng_state(s['torch'])
    if s['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s['cuda'])
