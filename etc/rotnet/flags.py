"""The flags every script shares, their defaults (DEFAULTS: one line a knob), the defaults that follow another
flag (FOLLOWS), and the checks: a bad value, or a flag that would change nothing in the combination given, ends
with one line and exit code 2. A script adds its family's flags, its own DEFAULTS and its policies (see parse()).
Shared module (identical copies in every method folder)."""
import argparse
import os

import augment
import data
import models
import semisup
from errors import UserError

# What --evaluate reads from the command line; everything else comes from the checkpoint.
EVALUATE_FLAGS = {'evaluate', 'data_root', 'download', 'device'}
# What plays no part when no unlabeled image is guessed (--labeled-only), besides the family's flags.
UNLABELED_FLAGS = {'K', 'T', 'loss', 'lambda_u', 'rampup_steps', 'rampup_start', 'unlabeled_batch_size',
                   'drop_unkept', 'policy', 'train_acc', 'acc_source', 'rot_weight', 'guess_views'}

# What every script runs with, one line a knob, unless its own DEFAULTS (top of its train.py) or the command line
# says otherwise; --help shows each value in use. None: it follows other flags (FOLLOWS, finish_args). The knobs
# marked "no flag" are set here alone (no preset, session or test of the study changes them).
DEFAULTS = {
    # data
    'dataset': 'fashion_mnist',
    'data_root': None,            # fashion_mnist: the Debian package's folder, else ./data
    'download': False,
    'n_labeled': None,            # 250; a folder: every labeled image
    'n_val': None,                # min(5000, 10%)
    'split_seed': 0,
    'image_size': None,           # a folder's own size up to 64 px, else 96
    'num_classes': None,          # the largest label + 1, or the class folders
    'cache_dir': None,            # no flag: where a folder's decoded images are cached: $ADTHMIX_CACHE, else ~/.cache/adthmix
    'augment': 'auto',            # no flag: pad-crop + flip below 64 px, random-resized-crop + flip above
    'randaugment': None,
    'augmix': 0,
    'cutout': 0,
    'guess_views': 'augmented',
    # model
    'arch': 'wrn28_2',
    'pretrained': False,
    'bn_momentum': 0.01,          # no flag: the original's (MixMatch's: 0.001)
    # MixMatch's step
    'K': 2,
    'T': 0.5,
    'alpha': 0.75,
    'mix': 'mixup',
    'loss': 'mse',
    'lambda_u': None,             # follows --loss
    'rampup_steps': 0,
    'rampup_start': 0.0,
    'labeled_only': False,
    'rot_weight': 0,
    'drop_unkept': False,
    # optimization
    'optimizer': 'adam',
    'lr': None,                   # follows --optimizer
    'wd': None,                   # no flag; follows --optimizer
    'momentum': 0.9,              # no flag: SGD's (the original's)
    'nesterov': False,            # no flag: SGD without Nesterov (the original's)
    'lr_schedule': 'constant',
    'lr_milestones': None,        # --lr-schedule multistep:S1,S2[:FACTOR]
    'lr_factor': 0.5,
    'lr_gamma': None,             # --lr-schedule exponential:GAMMA
    'batch_size': 64,
    'unlabeled_batch_size': None,  # the labeled batch size
    'ema_decay': 0.999,
    'steps': 65536,
    'eval_every': 1024,
    'test_when': 'val-improves',
    'print_every': 100,
    'eval_batch_size': 1000,      # no flag: images per evaluation forward pass
    # the accuracy the adaptive policies follow (--accuracy, --acc-window)
    'acc_source': 'train',
    'train_acc': 'clean',
    'acc_seed': 'last-batch',
    'acc_window': None,           # the original's epoch: --steps / 300
    # run
    'preset': None,
    'out': None,
    'resume': None,
    'evaluate': None,
    'init': None,
    'seed': 0,
    'device': 'auto',
    'amp': 'auto',
    'compile': 'off',
}

# Defaults that follow another flag where DEFAULTS (or the script's) leaves them None: dest -> (flag, {value: default}).
FOLLOWS = {
    'lambda_u': ('loss', {'mse': 75.0, 'ce': 1.0}),  # MixMatch's weight for MSE; the paper's for cross-entropy
    'lr': ('optimizer', {'adam': 2e-3, 'sgd': 5e-4}),  # MixMatch's AdamW; the original's SGD
    'wd': ('optimizer', {'adam': 0.02, 'sgd': 4e-4}),
}

# --accuracy takes up to one word of each kind, in any order: dest -> its words (the first is the default).
ACCURACY = {'acc_source': ('train', 'val'), 'train_acc': ('clean', 'mixed'), 'acc_seed': ('last-batch', 'none', 'window')}


# The reproduction presets: a run's length and the schedule flags that scale with it, one rule for every method
# (etc/reproduce.py runs each table entry with these). --eval-every = steps / evaluations, --n-val 1000; the train
# accuracy's window is the original's epoch, 1/300 of the run (as without a preset); MixMatch's weight ramps as the
# original's (from 1/20 of lambda_u, full after 19 of 300 epochs); the full preset measures the test set at every
# evaluation, for the median of the last 20.
PRESETS = {'quick': {'steps': 1024, 'evals': 8}, 'medium': {'steps': 4096, 'evals': 16},
           'full': {'steps': 16384, 'evals': 64, 'median': True}}
PRESET_N_VAL, ORIGINAL_EPOCHS, RAMPUP_EPOCHS = 1000, 300, 19


def epoch_steps(steps):
    """The original's epoch laid on a run of `steps`: it ran 300 (431 main.py:246), an epoch being one pass over the
    labeled loader (main.py:493), and its train accuracy restarted each epoch (main.py:473). --acc-window's default."""
    return max(1, round(steps / ORIGINAL_EPOCHS))


def preset_flags(name, ramp=None):
    """The flags --preset NAME sets, {dest: value}. ramp: 'original' where the script ramps lambda_u as MixMatch
    (the original's shape), 'length' where it has a ramp of its own shape (Mean Teacher's), None for no ramp."""
    p = PRESETS[name]
    every = p['steps'] // p['evals']
    values = {'steps': p['steps'], 'eval_every': every, 'acc_window': epoch_steps(p['steps']), 'n_val': PRESET_N_VAL}
    if ramp:
        values['rampup_steps'] = round(RAMPUP_EPOCHS * p['steps'] / ORIGINAL_EPOCHS)
    if ramp == 'original':
        values['rampup_start'] = 0.05
    if p.get('median'):
        values['test_when'] = 'every-eval'
    return values


# Each script's own flags (its add_method_flags), so that a flag given to the wrong script names the scripts that
# have it. tests/test_bad_input.py checks the table against the scripts.
SCRIPT_FLAGS = {
    'fixed/train.py': ('--threshold', '--confidence'),
    'adaptive/train.py': ('--min-th', '--confidence'),
    'etc/fixmatch/train.py': ('--threshold', '--strong-ops', '--strong-cutout'),
    'etc/simclr/train.py': ('--temperature', '--projection-dim', '--projection-hidden', '--crop-area', '--view-ops'),
}

# The flags that set several settings, and the settings each sets (its value says which: see each type below).
FLAG_SETTINGS = {'dataset': ('dataset', 'image_size', 'num_classes'),
                 'strong_augment': ('randaugment', 'augmix', 'cutout', 'guess_views'),
                 'mix': ('mix', 'alpha'), 'rampup': ('rampup_steps', 'rampup_start'),
                 'batch_size': ('batch_size', 'unlabeled_batch_size'),
                 'lr_schedule': ('lr_schedule', 'lr_milestones', 'lr_factor', 'lr_gamma'),
                 'accuracy': tuple(ACCURACY), 'init': ('init', 'pretrained')}
# How the command line gives a setting that has no flag of its own (error messages).
SPELLED = {'image_size': '--dataset folder:image-size', 'num_classes': '--dataset folder:num-classes',
           'randaugment': '--strong-augment randaugment:N,M', 'augmix': '--strong-augment augmix:S',
           'cutout': '--strong-augment cutout:PX', 'guess_views': '--strong-augment ...+weak-guess',
           'alpha': '--mix NAME:ALPHA', 'rampup_steps': '--rampup', 'rampup_start': '--rampup STEPS:START',
           'unlabeled_batch_size': '--batch-size B,BU', 'lr_milestones': '--lr-schedule multistep:S1,S2',
           'lr_factor': '--lr-schedule multistep:S1,S2:FACTOR', 'lr_gamma': '--lr-schedule exponential:GAMMA',
           'pretrained': '--init imagenet', 'init': '--init PATH',
           **{dest: f'--accuracy {"|".join(words)}' for dest, words in ACCURACY.items()}}

# Flags of earlier releases: what says the same now (its first word: the flag that took them in). upgrade() rewrites
# an archived command with them; given to a script, each is refused with its new spelling.
RENAMED = {'--acc-source': '--accuracy', '--train-acc': '--accuracy', '--acc-seed': '--accuracy',
           '--lr-milestones': '--lr-schedule multistep:S1,S2[:FACTOR]', '--lr-factor': '--lr-schedule multistep:S1,S2:FACTOR',
           '--lr-gamma': '--lr-schedule exponential:GAMMA',
           '--image-size': '--dataset folder:image-size=PX', '--num-classes': '--dataset folder:num-classes=N',
           '--randaugment': '--strong-augment randaugment:N,M', '--augmix': '--strong-augment augmix:S',
           '--cutout': '--strong-augment cutout:PX', '--guess-views': '--strong-augment ...+weak-guess',
           '--pretrained': '--init imagenet', '--alpha': '--mix mixup:ALPHA', '--rampup-steps': '--rampup STEPS',
           '--rampup-start': '--rampup STEPS:START', '--unlabeled-batch-size': '--batch-size B,BU',
           '--cache-dir': 'the environment variable ADTHMIX_CACHE',
           # the policies' own settings, given after the policy's name
           '--mixed-threshold': '--policy mixed-loss:mixed-threshold=V', '--lambda-t': '--policy mixed-loss:lambda-t=V',
           '--threshold-end': '--policy linear:threshold-end=V', '--schedule-steps': '--policy linear:schedule-steps=N',
           '--lambda-pi': '--policy consistency:lambda-pi=V', '--warm-threshold': '--policy warm-start:warm-threshold=V',
           '--warm-until': '--policy warm-start:warm-until=V', '--extra-draws': '--policy warm-start:extra-draws=N',
           '--flex-threshold': '--policy flexmatch:flex-threshold=V', '--flex-warmup': '--policy flexmatch:flex-warmup=on|off',
           '--free-momentum': '--policy freematch:free-momentum=V'}
NO_LONGER_FLAGS = {'--bn-momentum': 'bn_momentum', '--eval-batch-size': 'eval_batch_size', '--nesterov': 'nesterov',
                   '--momentum': 'momentum', '--wd': 'wd', '--augment': 'augment'}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag ends with one line on stderr and exit code 2 (no usage dump); a flag of another
    script says which script has it, a flag of an earlier release what replaced it."""

    def error(self, message):
        if message.startswith('unrecognized arguments:'):
            for name in (token.split('=', 1)[0] for token in message.split(':', 1)[1].split()):
                scripts = [script for script, names in SCRIPT_FLAGS.items() if name in names]
                if scripts:
                    message = f'{name} is a flag of {" and ".join(scripts)}, not of this script'
                    break
                if name in RENAMED:
                    message = f'{name} is now {RENAMED[name]}'
                    break
                if name in NO_LONGER_FLAGS:
                    message = f'{name} is no longer a flag: edit \'{NO_LONGER_FLAGS[name]}\' in flags.DEFAULTS'
                    break
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


class Merge(argparse.Action):
    """A flag given again adds its settings to those given before (--strong-augment cutout:16 --strong-augment
    randaugment:2,9: both)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, {**getattr(namespace, self.dest, {}), **values})


def common_parser():
    """The shared flags, without defaults (argument_default=SUPPRESS): a parse holds only the flags given."""
    p = OneLineParser(add_help=False, argument_default=argparse.SUPPRESS)
    g = p.add_argument_group(
        'data', 'A folder of your images takes its settings after its name: --dataset folder:image-size=PX,num-classes=N\n'
        f'(the side its images are decoded to: their own up to {data.OWN_SIZE_MAX} px, else {data.LARGE_SIZE}, the original 224; '
        'the number of\nclasses: the largest label + 1, or the class folders). Decoded images are cached in $ADTHMIX_CACHE\n'
        '(~/.cache/adthmix unless set).')
    g.add_argument('--dataset', type=dataset_value, metavar='|'.join(data.DATASETS[:-1]) + '|folder[:SETTINGS]',
                   help='fashion_mnist (the public stand-in), a torchvision dataset, or folder (your images)')
    g.add_argument('--data-root', metavar='DIR',
                   help=f'dataset location (fashion_mnist: {data.FASHION_MNIST_SYSTEM_DIR} unless given, else ./data)')
    g.add_argument('--download', action='store_true',
                   help='let torchvision download the dataset or ImageNet weights (never done otherwise)')
    g.add_argument('--n-labeled', type=int,
                   help='labeled training images, class-balanced (a folder: all of them; the paper: ~13k, 4k)')
    g.add_argument('--n-val', type=int,
                   help='validation images held out of the labeled ones (min(5000, 10%%) unless given; original: 20%%)')
    g.add_argument('--split-seed', type=int, help='seed of the labeled / validation / unlabeled split')

    g = p.add_argument_group(
        'augmentation', 'Every image is cropped and flipped; --strong-augment adds, in this order, any of\n'
        f'  randaugment:N,M  N ops at magnitude M of 0-{augment.RANDAUGMENT_MAX_MAGNITUDE} (the notes: 2,9 2,5 2,3)\n'
        f'  augmix:S         AugMix without its JSD loss, severity 1-{augment.AUGMIX_MAX_SEVERITY} (the reference: 3)\n'
        '  cutout:PX        a PX x PX square set to 0 (DeVries & Taylor: 16 on 32 px)\n'
        'joined by +. With +weak-guess the guess is made from crop + flip alone and only the views that train\n'
        'get them (436-438\'s code).')
    g.add_argument('--strong-augment', type=strong_augment_value, metavar='WORD[+WORD...]', action=Merge,
                   help='what the training views get after crop and flip, e.g. randaugment:2,9+cutout:16')

    g = p.add_argument_group('model')
    g.add_argument('--arch', choices=models.ARCHS,
                   help='network (MixMatch\'s WRN-28-2; the paper: efficientnet_b3)')

    g = p.add_argument_group('MixMatch')
    g.add_argument('--K', type=int, help='augmentations per unlabeled image for the guess (paper: 2)')
    g.add_argument('--T', type=float, help='sharpening temperature of the guess (paper: 0.5)')
    g.add_argument('--mix', type=mix_value, metavar='|'.join(semisup.MIXES) + '[:ALPHA]',
                   help='mixup, or cutmix (a box of the partner); lambda ~ Beta(ALPHA, ALPHA) (paper: 0.75; 0: none)')
    g.add_argument('--loss', choices=('mse', 'ce'),
                   help='unlabeled loss on the kept mixed rows: mse (MixMatch) or ce (soft cross-entropy, the paper)')
    g.add_argument('--lambda-u', type=float,
                   help='unlabeled loss weight (unless given: 75 with --loss mse, MixMatch\'s; 1 with ce, the paper\'s)')
    g.add_argument('--rampup', type=rampup_value, metavar='STEPS[:START]',
                   help='the unlabeled weight rises linearly over STEPS from START x --lambda-u (original: 0.05)')
    g.add_argument('--labeled-only', action='store_true',
                   help='baseline: the same step on the labeled images alone; no unlabeled image is guessed or mixed')
    g.add_argument('--rot-weight', type=float,
                   help='RotNet loss: a 4-way rotation head on a rotated view per unlabeled image (191: 1, 192: 10)')
    g.add_argument('--drop-unkept', action='store_true',
                   help='remove unkept images from the batch, as the original (variable shapes), instead of masking')

    g = p.add_argument_group('optimization', 'The learning rate is multiplied by FACTOR (0.5 unless given) at each '
                             'step Si with\n--lr-schedule multistep, by GAMMA every step with exponential.')
    g.add_argument('--optimizer', choices=('adam', 'sgd'),
                   help='adam: AdamW, decoupled decay (MixMatch); sgd: SGD, momentum 0.9, coupled decay (the original)')
    g.add_argument('--lr', type=float,
                   help='learning rate (unless given: adam 2e-3; sgd 5e-4, the original; weight decay follows too)')
    g.add_argument('--lr-schedule', type=lr_schedule_value, metavar='|'.join(semisup.LR_SCHEDULES),
                   help='constant (the original), multistep:S1,S2[:FACTOR] (348, 387), exponential:GAMMA, cosine '
                        '(FixMatch\'s)')
    g.add_argument('--batch-size', type=batch_size_value, metavar='B[,BU]',
                   help='labeled, unlabeled images per step and process (BU: B unless given; the original: 20,50)')
    g.add_argument('--ema-decay', type=float,
                   help='decay per step of the evaluated EMA of the weights (MixMatch: 0.999; 0: none, the original)')
    g.add_argument('--steps', type=int, help='optimizer steps in all (MixMatch: 2^20)')
    g.add_argument('--eval-every', type=int, help='steps between evaluations and checkpoints')
    g.add_argument('--print-every', type=int, help='steps between progress lines')
    g.add_argument('--test-when', choices=('val-improves', 'every-eval'),
                   help='test set: when val top-1 improves and at the end, or at every evaluation (median of 20)')

    g = p.add_argument_group(
        'the accuracy adaptive policies follow',
        'The running top-1 on the labeled batches (train) or the last val top-1 (val). The train accuracy is read\n'
        'from a forward of the unmixed labeled batch after the step (clean, the original) or from the mixed rows\n'
        'of the step (mixed), over windows of --acc-window steps; a window starts from the last batch counted as\n'
        'one image (last-batch, session 431), empty (none, 401) or from the window mean (window, the first release).')
    g.add_argument('--accuracy', type=accuracy_value, action=Merge, metavar='WORD[,WORD...]',
                   help='any of train|val, clean|mixed, last-batch|none|window (the first of each unless given)')
    g.add_argument('--acc-window', type=int,
                   help='steps of each train-accuracy window (the original\'s epoch, --steps / 300 rounded, unless given)')

    g = p.add_argument_group('run')
    g.add_argument('--preset', choices=sorted(PRESETS),
                   help='a reproduction preset: its length and schedule flags (README), unless given on their own')
    g.add_argument('--out', metavar='DIR',
                   help='run directory (runs/<method>-<dataset>-<labels>-<arch>-<flags that matter>-s<seed> unless given)')
    g.add_argument('--resume', metavar='auto|PATH',
                   help='auto: continue <out>/checkpoint.pt if there is one, else start; PATH: continue that file')
    g.add_argument('--evaluate', metavar='PATH',
                   help='only print the fp32 test top-1/top-5 of a checkpoint (any method\'s)')
    g.add_argument('--init', type=init_value, metavar='imagenet|PATH',
                   help='start from ImageNet weights in the torch cache (the paper did) or a checkpoint\'s (same --arch)')
    g.add_argument('--seed', type=int, help='seed of initialization, sampling and augmentation')
    g.add_argument('--device', choices=('auto', 'cpu', 'cuda'), help='auto: cuda if available')
    g.add_argument('--amp', choices=('auto', 'bf16', 'fp16', 'off'),
                   help='autocast precision of training; auto: bf16 where it is fast (CUDA, AVX512-BF16/AMX), else off')
    g.add_argument('--compile', choices=('off', 'default', 'reduce-overhead'),
                   help='torch.compile the model: default (inductor) or reduce-overhead (inductor + CUDA graphs)')
    return p


def int_list(text):
    try:
        return tuple(int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None


def settings_value(text, kinds, what):
    """NAME[:KEY=VALUE,...] -> {dest: value}: kinds = {NAME: {dest: type}}, the settings each name takes (a key is
    its dest with dashes); what names the flag in an error."""
    name, _, rest = text.partition(':')
    if name not in kinds:
        raise argparse.ArgumentTypeError(f'{text!r}: expected one of {", ".join(kinds)}')
    values, takes = {what: name}, kinds[name]
    for item in rest.split(',') if rest else ():
        key, eq, value = item.partition('=')
        dest = key.replace('-', '_')
        if dest not in takes or not eq or dest in values:
            keys = ', '.join(d.replace('_', '-') + '=' for d in takes) or 'no settings'
            raise argparse.ArgumentTypeError(f'{text!r}: {name} takes {keys} (each once, comma-separated)')
        try:
            values[dest] = takes[dest](value)
        except ValueError:
            kind = {int: 'an integer', float: 'a number'}.get(takes[dest], 'a word')
            raise argparse.ArgumentTypeError(f'{text!r}: {key} takes {kind}, not {value!r}') from None
    return values


FOLDER_SETTINGS = {'image_size': int, 'num_classes': int}


def dataset_value(text):
    """--dataset NAME, or folder[:image-size=PX,num-classes=N]."""
    values = settings_value(text, {name: FOLDER_SETTINGS if name == 'folder' else {} for name in data.DATASETS},
                            'dataset')
    if values.get('image_size', 8) < 8 or values.get('num_classes', 1) < 1:
        raise argparse.ArgumentTypeError(f'{text!r}: image-size must be at least 8 and num-classes at least 1')
    return values


def strong_augment_value(text):
    """--strong-augment randaugment:N,M+augmix:S+cutout:PX[+weak-guess], any of them, each once."""
    values = {}
    for word in text.split('+'):
        name, _, value = word.partition(':')
        try:
            if name == 'randaugment' and 'randaugment' not in values:
                n, m = int_list(value)
                if n >= 1 and 0 <= m <= augment.RANDAUGMENT_MAX_MAGNITUDE:
                    values['randaugment'] = (n, m)
                    continue
            elif name in ('augmix', 'cutout') and name not in values:
                values[name] = int(value)
                if 1 <= values[name] <= (augment.AUGMIX_MAX_SEVERITY if name == 'augmix' else 1 << 30):
                    continue
            elif word == 'weak-guess' and 'guess_views' not in values:
                values['guess_views'] = 'weak'
                continue
        except (ValueError, argparse.ArgumentTypeError):
            pass
        raise argparse.ArgumentTypeError(
            f'{text!r}: expected words joined by +, each once: randaugment:N,M (N >= 1, M in 0-'
            f'{augment.RANDAUGMENT_MAX_MAGNITUDE}), augmix:S (1-{augment.AUGMIX_MAX_SEVERITY}), cutout:PX (>= 1), weak-guess')
    if set(values) == {'guess_views'}:
        raise argparse.ArgumentTypeError(f'{text!r}: weak-guess needs an augmentation for the views that train')
    return values


def mix_value(text):
    """--mix NAME[:ALPHA]."""
    name, _, alpha = text.partition(':')
    try:
        if name in semisup.MIXES and (not alpha or float(alpha) >= 0):
            return {'mix': name, **({'alpha': float(alpha)} if alpha else {})}
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f'{text!r}: expected {"|".join(semisup.MIXES)}[:ALPHA] with ALPHA >= 0')


def rampup_value(text):
    """--rampup STEPS[:START]."""
    steps, _, start = text.partition(':')
    try:
        values = {'rampup_steps': int(steps), **({'rampup_start': float(start)} if start else {})}
        if values['rampup_steps'] >= 0 and 0 <= values.get('rampup_start', 0) <= 1:
            return values
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f'{text!r}: expected STEPS[:START] with STEPS >= 0 and START in [0, 1]')


def batch_size_value(text):
    """--batch-size B[,BU]."""
    try:
        sizes = int_list(text)
        if len(sizes) in (1, 2) and min(sizes) >= 1:
            return {'batch_size': sizes[0], **({'unlabeled_batch_size': sizes[1]} if len(sizes) == 2 else {})}
    except argparse.ArgumentTypeError:
        pass
    raise argparse.ArgumentTypeError(f'{text!r}: expected B or B,BU, each at least 1')


def init_value(text):
    """--init imagenet|PATH."""
    return {'pretrained': True} if text == 'imagenet' else {'init': text}


def lr_schedule_value(text):
    """--lr-schedule NAME[:PARAMETERS] -> the settings it gives, {dest: value}."""
    name, _, rest = text.partition(':')
    if name not in semisup.LR_SCHEDULES:
        raise argparse.ArgumentTypeError(f'expected one of {", ".join(semisup.LR_SCHEDULES)}, got {text!r}')
    try:
        if name == 'multistep' and rest:
            steps, _, factor = rest.partition(':')
            return {'lr_schedule': name, 'lr_milestones': int_list(steps), **({'lr_factor': float(factor)} if factor
                                                                              else {})}
        if name == 'exponential' and rest:
            return {'lr_schedule': name, 'lr_gamma': float(rest)}
    except (ValueError, argparse.ArgumentTypeError):
        pass
    else:
        if not rest:
            return {'lr_schedule': name}
    raise argparse.ArgumentTypeError(f'{text!r}: expected constant, cosine, multistep:S1,S2[:FACTOR] or '
                                     'exponential:GAMMA')


def accuracy_value(text):
    """--accuracy WORD[,WORD...]: at most one word of each kind of ACCURACY -> {dest: value}."""
    values = {}
    for word in text.split(','):
        dest = next((d for d, words in ACCURACY.items() if word in words), None)
        if dest is None or dest in values:
            raise argparse.ArgumentTypeError(
                f'{text!r}: expected at most one of each of ' + '; '.join('|'.join(w) for w in ACCURACY.values()))
        values[dest] = word
    return values


def spelled(dest, policy_settings=None):
    """How the command line gives a setting: its flag, the flag whose value holds it (SPELLED), or, for a policy's
    own setting (policy_settings: {dest: policy name}), --policy NAME:its-name."""
    if dest in (policy_settings or {}):
        return f'--policy {policy_settings[dest]}:{dest.replace("_", "-")}'
    return SPELLED.get(dest, '--' + dest.replace('_', '-'))


def expand(given):
    """The flags given, {dest: value}, with each setting of a flag that sets several (FLAG_SETTINGS, --policy's) under
    its own dest."""
    out = {}
    for dest, value in given.items():
        out.update(value if isinstance(value, dict) else {dest: value})
    return out


def upgrade(argv):
    """A command of an earlier release (list of arguments) in today's flags: each flag of RENAMED joins the flag that
    took it in (--rampup-steps 65 --rampup-start 0.05 -> --rampup 65:0.05; --warm-until 30 -> --policy
    warm-start:warm-until=30), where the first of the flags it joins stood; --cache-dir goes (an environment
    variable now). The run is the same."""
    out, parts, at = [], {}, {}
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition('=')
        kind = RENAMED[name].split()[0] if name in RENAMED else name
        if kind in COMPOSE or name == '--cache-dir':
            if not eq and name != '--pretrained':
                i, value = i + 1, argv[i + 1]
            if name != '--cache-dir':
                if kind not in at:
                    at[kind] = len(out)
                    out.append(kind)
                parts.setdefault(kind, {})[name] = value
        else:
            out.append(argv[i])
        i += 1
    for kind in sorted(at, key=at.get, reverse=True):  # from the back, so that the positions still hold
        value = COMPOSE[kind](parts[kind])
        if value:
            out.insert(at[kind] + 1, value)
        else:  # e.g. --lr-milestones without --lr-schedule: it did nothing then (refused since), nothing now
            del out[at[kind]]
    return out


def _settings(name, parts, own):
    """NAME[:KEY=VALUE,...] from an earlier release's flags ({flag: value}); the name's flag is `own`."""
    settings = ','.join(f'{flag[2:]}={value}' for flag, value in parts.items() if flag != own)
    return name and name + (':' + settings if settings else '')


def _lr_schedule(parts):
    schedule = parts.get('--lr-schedule')
    if schedule == 'multistep' and '--lr-milestones' in parts:
        schedule += ':' + parts['--lr-milestones'] + (':' + parts['--lr-factor'] if '--lr-factor' in parts else '')
    elif schedule == 'exponential' and '--lr-gamma' in parts:
        schedule += ':' + parts['--lr-gamma']
    return schedule


def _strong_augment(parts):
    words = [f'{flag[2:]}:{value}' for flag, value in parts.items()
             if flag in ('--randaugment', '--augmix', '--cutout', '--strong-augment') and value != '0']
    words = [w[len('strong-augment:'):] if w.startswith('strong-augment:') else w for w in words]
    return words and '+'.join(words + (['weak-guess'] if parts.get('--guess-views') == 'weak' else []))


# How each flag that took in flags of an earlier release writes their values ({flag: value}, in the command's order).
COMPOSE = {
    '--accuracy': lambda parts: ','.join(parts.values()),
    '--lr-schedule': _lr_schedule,
    '--dataset': lambda parts: _settings(parts.get('--dataset'), parts, '--dataset'),
    '--policy': lambda parts: _settings(parts.get('--policy'), parts, '--policy'),
    '--strong-augment': _strong_augment,
    '--init': lambda parts: 'imagenet' if '--pretrained' in parts and '--init' not in parts else parts.get('--init'),
    '--mix': lambda parts: parts.get('--mix', 'mixup') + (':' + parts['--alpha'] if '--alpha' in parts else ''),
    '--rampup': lambda parts: parts.get('--rampup') or ('--rampup-steps' in parts and parts['--rampup-steps'] + (
        ':' + parts['--rampup-start'] if '--rampup-start' in parts else '')),
    '--batch-size': lambda parts: parts.get('--batch-size', str(DEFAULTS['batch_size'])) + (
        ',' + parts['--unlabeled-batch-size'] if '--unlabeled-batch-size' in parts else ''),
}


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help ends each flag's line with the value this script runs with when no flag is given ([default: 75]),
    as finish_args resolves it from the others (the family's lambda_u, --steps / 300 for --acc-window), not None."""
    defaults = {}

    def _get_help_string(self, action):
        value = self.defaults.get(action.dest)
        if action.help == argparse.SUPPRESS or action.nargs == 0 or value is None:
            return action.help
        shown = ','.join(map(str, value)) if isinstance(value, (tuple, list)) else \
            f'{value:g}' if isinstance(value, float) else str(value)
        return f'{action.help} [default: {shown.replace("%", "%%")}]'


def build_parser(description, add_method_flags, policies, defaults=None, not_read=frozenset()):
    """The shared flags, then the family's (add_method_flags returns its argument group) and --policy, which takes
    each policy's own settings after its name: those in its FLAGS that have no flag (policy_settings). The shared
    flags in not_read (a script that does not use them) are left out of --help; --help shows every other flag's
    default as this script resolves it (DEFAULTS, then the script's defaults, then finish_args)."""
    parser = OneLineParser(description=description, parents=[common_parser()], argument_default=argparse.SUPPRESS,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    group = add_method_flags(parser)
    parser.inline_defaults = {}  # a flag added with default=... has it there
    for action in parser._actions:
        if set(FLAG_SETTINGS.get(action.dest, (action.dest,))) <= set(not_read):
            action.help = argparse.SUPPRESS
        if action.default is not argparse.SUPPRESS and action.dest != 'help':
            parser.inline_defaults[action.dest], action.default = action.default, argparse.SUPPRESS
    values = script_defaults(parser, defaults, policies)
    flagged = {a.dest for a in parser._actions}
    kinds = {name: {d: setting_type(values[d]) for d in cls.FLAGS if d not in flagged and d not in DEFAULTS}
             for name, cls in policies.items()}
    parser.policy_settings = {d: name for name, settings in kinds.items() for d in settings}
    shown = '\n  '.join(name + (':' + ','.join(f'{d.replace("_", "-")}={fmt(values[d])}' for d in settings)
                                 if settings else '') for name, settings in kinds.items())
    group.description = ((group.description + '\n' if group.description else '') + 'A policy takes its own settings after '
                         'its name (their defaults, DEFAULTS in train.py, shown here):\n  ' + shown)
    group.add_argument('--policy', type=lambda text: settings_value(text, kinds, 'policy'), metavar='NAME[:SETTINGS]',
                       help='which of this family\'s policies (classes in train.py) decides the kept images')
    missing = flagged - set(values) - {'help'} - set(FLAG_SETTINGS)
    assert not missing, f'no default for {", ".join(sorted(missing))}: give it in the script\'s DEFAULTS'
    resolved = vars(finish_args(argparse.Namespace(**values), None))
    resolved.update(accuracy=','.join(resolved[dest] for dest in ACCURACY), mix=f'{resolved["mix"]}:{fmt(resolved["alpha"])}',
                    rampup=fmt(resolved['rampup_steps']) + (f':{fmt(resolved["rampup_start"])}' if resolved['rampup_start']
                                                            else ''),
                    batch_size=','.join(map(str, dict.fromkeys((resolved['batch_size'], resolved['unlabeled_batch_size'])))))
    parser.formatter_class = type('ScriptDefaults', (DefaultsHelpFormatter,), {'defaults': resolved})
    return parser


def setting_type(default):
    """The type of a policy's own setting: its default's (a number when the default is None: it follows another)."""
    return float if default is None else type(default)


def fmt(value):
    """A value as --help and the policies' settings show it."""
    return f'{value:g}' if isinstance(value, float) else 'V' if value is None else str(value)


def script_defaults(parser, defaults, policies):
    """Every setting's value before the command line: DEFAULTS, then the script's (its DEFAULTS, or a default= in
    add_method_flags); --policy: the script's first policy unless its DEFAULTS names another."""
    return {**DEFAULTS, 'policy': next(iter(policies)), **parser.inline_defaults, **(defaults or {})}


def parse(argv, description, method, add_method_flags, check_method_args, policies, defaults, not_read=frozenset()):
    """The script's args, filled in and checked. defaults: the script's DEFAULTS (its family's flags and what it
    changes of the shared ones); not_read: the shared flags the script does not use (refused)."""
    parser = build_parser(description, add_method_flags, policies, defaults, not_read)
    given = expand(vars(parser.parse_args(argv)))  # only what the command line gave: the parser has no defaults
    args = argparse.Namespace(**{**script_defaults(parser, defaults, policies), **given})
    family = set(vars(args)) - set(DEFAULTS) - {'policy'}
    policy = policies[args.policy]
    if set(given) & not_read:
        raise UserError(f'{", ".join(sorted(map(spelled, set(given) & not_read)))}: not read by {method} (see --help)')
    refuse_flags_without_effect(args, set(given), family, set(policy.FLAGS), policy.reads_train_acc(args),
                                parser.policy_settings)
    if args.preset:  # the flags given on the command line win over the preset's
        ramp = None if args.labeled_only else {'mixmatch': 'original', 'meanteacher': 'length'}.get(method)
        for dest, value in preset_flags(args.preset, ramp).items():
            if dest not in given:
                setattr(args, dest, value)
    finish_args(args, method)
    check_method_args(args)
    return args


def refuse_flags_without_effect(args, given, family, read_by_policy, reads_train_acc, policy_settings=None):
    """A flag given on the command line that would change nothing is an error: the user meant something. Accepted
    everywhere all the same: --acc-window and the seeding word of --accuracy, which the reproduction gives every
    entry alike (and its archived runs had)."""
    if args.evaluate:
        rules = [(True, given - EVALUATE_FLAGS, 'with --evaluate, which takes it from the checkpoint (it reads only '
                  + ', '.join(sorted(map(spelled, EVALUATE_FLAGS - {'evaluate'}))) + ')')]
    else:
        rules = [
            (args.labeled_only, given & (UNLABELED_FLAGS | family),
             'with --labeled-only: no unlabeled image is guessed or trained on'),
            (True, given & (family - read_by_policy), f'with --policy {args.policy}, which does not read it'),
            ('acc_source' not in read_by_policy, given & {'acc_source'},
             f'with --policy {args.policy}, which does not read it'),
            (not reads_train_acc, given & {'train_acc'},
             f'with --policy {args.policy} as given, which does not read the train accuracy'),
            (args.rampup_steps == 0, given & {'rampup_start'}, 'with --rampup 0 (a constant weight)'),
            (args.dataset == 'folder' and not args.pretrained, given & {'download'},
             'with --dataset folder and no --init imagenet: there is nothing to download'),
            (args.alpha == 0 and args.mix != 'mixup', given & {'mix'}, 'with ALPHA 0 (no mixing)'),
        ]
    for applies, dests, why in rules:
        if applies and dests:
            verb = 'has' if len(dests) == 1 else 'have'
            raise UserError(f'{", ".join(sorted(spelled(d, policy_settings) for d in dests))} {verb} no effect {why}')


def finish_args(args, method):
    """Fill the defaults that follow other flags and reject out-of-range values (one line, exit 2)."""
    for dest, (flag, values) in FOLLOWS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, values[getattr(args, flag)])
    if args.unlabeled_batch_size is None:
        args.unlabeled_batch_size = args.batch_size
    if args.cache_dir is None:
        args.cache_dir = os.environ.get('ADTHMIX_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'adthmix')
    if args.acc_window is None:
        args.acc_window = epoch_steps(args.steps)
    if args.n_labeled is None and args.dataset != 'folder':
        args.n_labeled = 250
    checks = [
        (args.batch_size >= 1, '--batch-size must be at least 1'),
        (args.unlabeled_batch_size >= 1, '--batch-size B,BU: BU must be at least 1'),
        (args.lambda_u >= 0, '--lambda-u must be >= 0'),
        (args.K >= 1, '--K must be at least 1'),
        (args.T > 0, '--T must be > 0'),
        (args.alpha >= 0, '--mix NAME:ALPHA needs ALPHA >= 0'),
        (args.lr > 0, '--lr must be > 0'),
        (0 <= args.ema_decay < 1, '--ema-decay must be in [0, 1)'),
        (args.rampup_steps >= 0 and 0 <= args.rampup_start <= 1, '--rampup STEPS:START needs STEPS >= 0 and START in '
                                                                  '[0, 1]'),
        (min(args.steps, args.eval_every, args.print_every, args.acc_window) >= 1,
         '--steps, --eval-every, --print-every and --acc-window must be at least 1'),
        (args.n_labeled is None or args.n_labeled >= 1, '--n-labeled must be at least 1'),
        (args.n_val is None or args.n_val >= 0, '--n-val must be >= 0'),
        (args.image_size is None or args.image_size >= 8, '--dataset folder:image-size must be at least 8'),
        (not (args.drop_unkept and args.compile != 'off'), '--drop-unkept makes batch shapes vary; it cannot be '
                                                            'combined with --compile'),
        (args.cutout >= 0, f'--strong-augment cutout:{args.cutout} must be >= 0 pixels (0: off)'),
        (args.rot_weight >= 0, '--rot-weight must be >= 0'),
        (0 <= args.augmix <= augment.AUGMIX_MAX_SEVERITY,
         f'--strong-augment augmix:{args.augmix} must be a severity in 1-{augment.AUGMIX_MAX_SEVERITY} (0: off)'),
        (args.lr_schedule != 'multistep' or args.lr_milestones,
         '--lr-schedule multistep needs its steps: multistep:S1,S2[:FACTOR]'),
        (not args.lr_milestones or (list(args.lr_milestones) == sorted(set(args.lr_milestones))
                                    and 0 < args.lr_milestones[0] and args.lr_milestones[-1] < args.steps),
         f'--lr-schedule multistep:{",".join(map(str, args.lr_milestones or ()))} needs increasing steps in '
         f'1-{args.steps - 1} (--steps {args.steps})'),
        (args.lr_factor > 0, '--lr-schedule multistep:S1,S2:FACTOR needs FACTOR > 0'),
        (args.lr_schedule != 'exponential' or args.lr_gamma is not None,
         '--lr-schedule exponential needs its factor per step: exponential:GAMMA (e.g. 0.99995)'),
        (args.lr_gamma is None or 0 < args.lr_gamma <= 1, '--lr-schedule exponential:GAMMA needs GAMMA in (0, 1]'),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    args.method = method
    return args
