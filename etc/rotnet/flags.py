"""The flags every script shares, the defaults that depend on other flags, and the checks: a bad value, or a
flag that would change nothing in the combination given, ends with one line and exit code 2. A script adds
its family's flags and names its policies (see parse()). Shared module (identical copies in every method
folder)."""
import argparse
import os

import augment
import data
import models
import semisup
from errors import UserError

# What --evaluate reads from the command line; everything else comes from the checkpoint.
EVALUATE_FLAGS = {'evaluate', 'data_root', 'download', 'cache_dir', 'device', 'eval_batch_size'}
# What plays no part when no unlabeled image is guessed (--labeled-only), besides the family's flags.
UNLABELED_FLAGS = {'K', 'T', 'loss', 'lambda_u', 'rampup_steps', 'rampup_start', 'unlabeled_batch_size',
                   'drop_unkept', 'policy', 'train_acc', 'rot_weight', 'guess_views'}


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
    'mixmatch/train.py': ('--mixed-threshold', '--lambda-t'),
    'fixed/train.py': ('--threshold', '--threshold-end', '--schedule-steps', '--lambda-pi', '--confidence'),
    'adaptive/train.py': ('--min-th', '--acc-source', '--confidence', '--warm-threshold', '--warm-until',
                          '--extra-draws', '--flex-threshold', '--flex-warmup', '--free-momentum'),
    'etc/fixmatch/train.py': ('--threshold', '--strong-ops', '--strong-cutout'),
    'etc/simclr/train.py': ('--temperature', '--projection-dim', '--projection-hidden', '--crop-area', '--view-ops'),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag ends with one line on stderr and exit code 2 (no usage dump); a flag of another
    script says which script has it."""

    def error(self, message):
        if message.startswith('unrecognized arguments:'):
            for name in (token.split('=', 1)[0] for token in message.split(':', 1)[1].split()):
                scripts = [script for script, names in SCRIPT_FLAGS.items() if name in names]
                if scripts:
                    message = f'{name} is a flag of {" and ".join(scripts)}, not of this script'
                    break
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def common_parser():
    p = OneLineParser(add_help=False)
    g = p.add_argument_group('data')
    g.add_argument('--dataset', default='fashion_mnist', choices=data.DATASETS,
                   help='fashion_mnist (the public stand-in), a torchvision dataset, or folder (your images)')
    g.add_argument('--data-root', default=None, metavar='DIR',
                   help=f'dataset location (default: {data.FASHION_MNIST_SYSTEM_DIR} for fashion_mnist, else ./data)')
    g.add_argument('--download', action='store_true',
                   help='let torchvision download the dataset or ImageNet weights (never done otherwise)')
    g.add_argument('--n-labeled', type=int, default=None,
                   help='labeled training images, class-balanced (default 250; folder: all; the paper: ~13k, 4k)')
    g.add_argument('--n-val', type=int, default=None,
                   help='validation images held out of the labeled ones (default min(5000, 10%%); original: 20%%)')
    g.add_argument('--split-seed', type=int, default=0, help='seed of the labeled / validation / unlabeled split')
    g.add_argument('--image-size', type=int, default=None,
                   help=f'folder datasets: side in px (default: their own if none is over {data.OWN_SIZE_MAX} px, '
                        f'else {data.LARGE_SIZE}; the original: 224)')
    g.add_argument('--num-classes', type=int, default=None,
                   help='folder datasets: number of classes (default: largest label + 1, or the class folders)')
    g.add_argument('--cache-dir', default=os.path.join(os.path.expanduser('~'), '.cache', 'adthmix'),
                   help='folder datasets: where the decoded uint8 images are cached')
    g.add_argument('--augment', default='auto', choices=augment.AUGMENTATIONS,
                   help=f'auto: pad-crop + flip below {augment.RRC_MIN_SIZE} px, random-resized-crop + flip above')
    g.add_argument('--randaugment', default=None, type=randaugment_value, metavar='N,M',
                   help='RandAugment after crop and flip: N ops per image at magnitude M of 0-30 (notes: 2,9 2,5 2,3)')
    g.add_argument('--augmix', type=int, default=0, metavar='SEVERITY',
                   help=f'after crop and flip: AugMix without its JSD loss, severity 1-{augment.AUGMIX_MAX_SEVERITY} '
                        '(the reference: 3; 0: off)')
    g.add_argument('--cutout', type=int, default=0, metavar='PX',
                   help='CutOut, last: a PX x PX square per image set to 0 (DeVries & Taylor: 16 on 32 px; 0: off)')
    g.add_argument('--guess-views', default='augmented', choices=('augmented', 'weak'),
                   help='views the guess is made from: those that train, or crop + flip alone (436-438\'s code)')

    g = p.add_argument_group('model')
    g.add_argument('--arch', default='wrn28_2', choices=models.ARCHS,
                   help='network (MixMatch\'s WRN-28-2 by default; the paper: efficientnet_b3)')
    g.add_argument('--pretrained', action='store_true',
                   help='start from torchvision\'s ImageNet weights in the local torch cache (the paper did)')
    g.add_argument('--bn-momentum', type=float, default=0.01,
                   help='BatchNorm running-statistics momentum per step (MixMatch: 0.001, the original: 0.01)')

    g = p.add_argument_group('MixMatch')
    g.add_argument('--K', type=int, default=2, help='augmentations per unlabeled image for the guess (paper: 2)')
    g.add_argument('--T', type=float, default=0.5, help='sharpening temperature of the guess (paper: 0.5)')
    g.add_argument('--alpha', type=float, default=0.75,
                   help='mixup Beta(alpha, alpha), lambda = max(l, 1 - l) (paper: 0.75; 0: no mixup)')
    g.add_argument('--mix', default='mixup', choices=semisup.MIXES,
                   help='mixup (MixMatch) or cutmix: a box of 1 - lambda of the partner per row, targets by area')
    g.add_argument('--loss', choices=('mse', 'ce'),
                   help='unlabeled loss on the kept mixed rows: mse (MixMatch) or ce (soft cross-entropy, the paper)')
    g.add_argument('--lambda-u', type=float, default=None,
                   help='unlabeled loss weight (default 75 with mse, MixMatch\'s; 1 with ce, the paper\'s)')
    g.add_argument('--rampup-steps', type=int, default=0,
                   help='steps over which the unlabeled weight rises linearly to --lambda-u (0: constant from step 0)')
    g.add_argument('--rampup-start', type=float, default=0.0,
                   help='the ramp\'s start, a fraction of --lambda-u (the original MixMatch: 0.05, for 19/300 of it)')
    g.add_argument('--labeled-only', action='store_true',
                   help='baseline: the same step on the labeled images alone; no unlabeled image is guessed or mixed')
    g.add_argument('--rot-weight', type=float, default=0,
                   help='RotNet loss: a 4-way rotation head on a rotated view per unlabeled image (191: 1, 192: 10)')
    g.add_argument('--drop-unkept', action='store_true',
                   help='remove unkept images from the batch, as the original (variable shapes), instead of masking')

    g = p.add_argument_group('optimization')
    g.add_argument('--optimizer', default='adam', choices=('adam', 'sgd'),
                   help='adam: AdamW, decoupled decay (MixMatch); sgd: SGD with momentum, coupled decay (the original)')
    g.add_argument('--lr', type=float, default=None, help='learning rate (default: adam 2e-3; sgd 5e-4, the original)')
    g.add_argument('--wd', type=float, default=None,
                   help='weight decay (default: adam 0.02, MixMatch\'s; sgd 4e-4, the original)')
    g.add_argument('--momentum', type=float, default=0.9, help='SGD momentum (the original: 0.9)')
    g.add_argument('--nesterov', action='store_true', help='SGD with Nesterov momentum (FixMatch; the original: no)')
    g.add_argument('--lr-schedule', default='constant', choices=semisup.LR_SCHEDULES,
                   help='constant (the original), multistep (348, 387), exponential, cosine (FixMatch\'s)')
    g.add_argument('--lr-milestones', default=None, type=int_list, metavar='S1,S2,...',
                   help='multistep: the steps at which the learning rate is multiplied by --lr-factor')
    g.add_argument('--lr-factor', type=float, default=0.5, help='multistep: factor at each milestone (the notes: 0.5)')
    g.add_argument('--lr-gamma', type=float, default=None,
                   help='exponential: factor per step (e.g. 0.99995: x0.04 over 65,536 steps)')
    g.add_argument('--batch-size', type=int, default=64,
                   help='labeled images per step and process (MixMatch: 64; the original: 20)')
    g.add_argument('--unlabeled-batch-size', type=int, default=None,
                   help='unlabeled images per step and process, before the K views (default: --batch-size; orig.: 50)')
    g.add_argument('--ema-decay', type=float, default=0.999,
                   help='decay per step of the evaluated EMA of the weights (MixMatch: 0.999; 0: none, the original)')
    g.add_argument('--steps', type=int, default=65536, help='optimizer steps in all (MixMatch: 2^20)')
    g.add_argument('--eval-every', type=int, default=1024, help='steps between evaluations and checkpoints')
    g.add_argument('--acc-window', type=int, default=None,
                   help='steps of each train-accuracy window (default: the original\'s epoch, --steps / 300, rounded)')
    g.add_argument('--acc-seed', default='last-batch', choices=('last-batch', 'none', 'window'),
                   help='a window starts from the last batch as one image (431), empty (401), or the window mean (v1)')
    g.add_argument('--train-acc', default='clean', choices=('clean', 'mixed'),
                   help='train accuracy: a forward of the unmixed labeled batch after the step (original), or mixed')
    g.add_argument('--print-every', type=int, default=100, help='steps between progress lines')
    g.add_argument('--test-when', default='val-improves', choices=('val-improves', 'every-eval'),
                   help='test set: when val top-1 improves and at the end, or at every evaluation (median of 20)')

    g = p.add_argument_group('run')
    g.add_argument('--preset', default=None, choices=sorted(PRESETS),
                   help='a reproduction preset: its length and schedule flags (README), unless given on their own')
    g.add_argument('--out', default=None, metavar='DIR',
                   help='run directory (default: runs/<method>-<dataset>-<labels>-<arch>-<flags that matter>-s<seed>)')
    g.add_argument('--resume', default=None, metavar='auto|PATH',
                   help='auto: continue <out>/checkpoint.pt if there is one, else start; PATH: continue that file')
    g.add_argument('--evaluate', default=None, metavar='PATH',
                   help='only print the fp32 test top-1/top-5 of a checkpoint (any method\'s)')
    g.add_argument('--init', default=None, metavar='PATH',
                   help='start from a checkpoint\'s weights (same --arch; a head of other classes starts anew)')
    g.add_argument('--seed', type=int, default=0, help='seed of initialization, sampling and augmentation')
    g.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='auto: cuda if available')
    g.add_argument('--amp', default='auto', choices=('auto', 'bf16', 'fp16', 'off'),
                   help='autocast precision of training; auto: bf16 where it is fast (CUDA, AVX512-BF16/AMX), else off')
    g.add_argument('--eval-batch-size', type=int, default=1000, help='images per evaluation forward pass')
    g.add_argument('--compile', default='off', choices=('off', 'default', 'reduce-overhead'),
                   help='torch.compile the model: default (inductor) or reduce-overhead (inductor + CUDA graphs)')
    return p


def int_list(text):
    try:
        return tuple(int(v) for v in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') from None


def randaugment_value(text):
    """--randaugment N,M: N >= 1 ops per image, magnitude M in 0-30."""
    n_m = int_list(text)
    if len(n_m) != 2 or n_m[0] < 1 or not 0 <= n_m[1] <= augment.RANDAUGMENT_MAX_MAGNITUDE:
        raise argparse.ArgumentTypeError(f'expected N,M with N >= 1 ops and M in 0-{augment.RANDAUGMENT_MAX_MAGNITUDE},'
                                         f' got {text!r}')
    return n_m


def override(parser, **defaults):
    """A script's own defaults for shared flags, with the help that says so: dest=(default, help)."""
    for action in parser._actions:
        if action.dest in defaults:
            action.default, action.help = defaults[action.dest]
            parser.set_defaults(**{action.dest: action.default})


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help ends each flag's line with the value this script runs with when no flag is given ([default: 75]),
    the one finish_args resolves from the others (the family's lambda_u, --steps / 300 for --acc-window), not None."""
    defaults = {}

    def _get_help_string(self, action):
        value = self.defaults.get(action.dest)
        if action.help == argparse.SUPPRESS or action.nargs == 0 or value is None:
            return action.help
        shown = ','.join(map(str, value)) if isinstance(value, (tuple, list)) else \
            f'{value:g}' if isinstance(value, float) else str(value)
        return f'{action.help} [default: {shown.replace("%", "%%")}]'


def build_parser(description, add_method_flags, policies, not_read=frozenset()):
    """The shared flags, then the family's (add_method_flags returns its argument group) and --policy. The shared
    flags in not_read (a script that does not use them) are left out of --help; --help shows every other flag's
    default as this script resolves it."""
    parser = OneLineParser(description=description, parents=[common_parser()],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    group = add_method_flags(parser)
    group.add_argument('--policy', default=next(iter(policies)), choices=list(policies),
                       help='which of this family\'s policies decides the kept images (classes in train.py)')
    for action in parser._actions:
        if action.dest in not_read:
            action.help = argparse.SUPPRESS
    resolved = vars(finish_args(parser.parse_args([]), None))
    parser.formatter_class = type('ScriptDefaults', (DefaultsHelpFormatter,), {'defaults': resolved})
    return parser


def parse(argv, description, method, add_method_flags, check_method_args, policies, not_read=frozenset()):
    """The script's args, filled in and checked. not_read: the shared flags the script does not use (refused)."""
    parser = build_parser(description, add_method_flags, policies, not_read)
    shared = set(vars(common_parser().parse_args([])))
    args = parser.parse_args(argv)
    unset = object()  # a second parse over a namespace of markers tells which flags the command line gave
    given = {k for k, v in vars(parser.parse_args(argv, argparse.Namespace(**{k: unset for k in vars(args)}))).items()
             if v is not unset}
    family = set(vars(args)) - shared - {'policy'}
    policy = policies[args.policy]
    if given & not_read:
        raise UserError(f'{", ".join(sorted("--" + k.replace("_", "-") for k in given & not_read))}: not read by '
                        f'{method} (see --help)')
    refuse_flags_without_effect(args, given, family, set(policy.FLAGS), policy.reads_train_acc(args))
    if args.preset:  # the flags given on the command line win over the preset's
        ramp = None if args.labeled_only else {'mixmatch': 'original', 'meanteacher': 'length'}.get(method)
        for dest, value in preset_flags(args.preset, ramp).items():
            if dest not in given:
                setattr(args, dest, value)
    finish_args(args, method)
    check_method_args(args)
    return args


def refuse_flags_without_effect(args, given, family, read_by_policy, reads_train_acc):
    """A flag given on the command line that would change nothing is an error: the user meant something."""
    flag = lambda dest: '--' + dest.replace('_', '-')  # noqa: E731
    if args.evaluate:
        rules = [(True, given - EVALUATE_FLAGS, 'with --evaluate, which takes it from the checkpoint (it reads only '
                  + ', '.join(sorted('--' + f.replace('_', '-') for f in EVALUATE_FLAGS - {'evaluate'})) + ')')]
    else:
        rules = [
            (args.labeled_only, given & (UNLABELED_FLAGS | family),
             'with --labeled-only: no unlabeled image is guessed or trained on'),
            (True, given & (family - read_by_policy), f'with --policy {args.policy}, which does not read it'),
            (not reads_train_acc, given & {'train_acc'},
             f'with --policy {args.policy} as given, which does not read the train accuracy'),
            (args.rampup_steps == 0, given & {'rampup_start'}, 'with --rampup-steps 0 (a constant weight)'),
            (args.optimizer == 'adam', given & {'momentum', 'nesterov'},
             'with --optimizer adam (AdamW); use --optimizer sgd'),
            (args.dataset != 'folder', given & {'image_size', 'num_classes', 'cache_dir'},
             f'with --dataset {args.dataset}: only --dataset folder decodes images'),
            (args.dataset == 'folder' and not args.pretrained, given & {'download'},
             'with --dataset folder and no --pretrained: there is nothing to download'),
            (args.lr_schedule != 'multistep', given & {'lr_milestones', 'lr_factor'},
             f'with --lr-schedule {args.lr_schedule}; use --lr-schedule multistep'),
            (args.lr_schedule != 'exponential', given & {'lr_gamma'},
             f'with --lr-schedule {args.lr_schedule}; use --lr-schedule exponential'),
            (args.alpha == 0, given & {'mix'}, 'with --alpha 0 (no mixing)'),
            (not (args.randaugment or args.augmix or args.cutout), given & {'guess_views'},
             'without --randaugment, --augmix or --cutout (the views are crop + flip alone)'),
        ]
    for applies, flags, why in rules:
        if applies and flags:
            verb = 'has' if len(flags) == 1 else 'have'
            raise UserError(f'{", ".join(sorted(map(flag, flags)))} {verb} no effect {why}')


def finish_args(args, method):
    """Fill the defaults that depend on other flags and reject out-of-range values (one line, exit 2)."""
    if args.lambda_u is None:
        args.lambda_u = 75.0 if args.loss == 'mse' else 1.0
    if args.lr is None:
        args.lr = 2e-3 if args.optimizer == 'adam' else 5e-4
    if args.wd is None:
        args.wd = 0.02 if args.optimizer == 'adam' else 4e-4
    if args.unlabeled_batch_size is None:
        args.unlabeled_batch_size = args.batch_size
    if args.acc_window is None:
        args.acc_window = epoch_steps(args.steps)
    if args.n_labeled is None and args.dataset != 'folder':
        args.n_labeled = 250
    checks = [
        (args.batch_size >= 1, '--batch-size must be at least 1'),
        (args.unlabeled_batch_size >= 1, '--unlabeled-batch-size must be at least 1'),
        (args.eval_batch_size >= 1, '--eval-batch-size must be at least 1'),
        (args.lambda_u >= 0, '--lambda-u must be >= 0'),
        (args.K >= 1, '--K must be at least 1'),
        (args.T > 0, '--T must be > 0'),
        (args.alpha >= 0, '--alpha must be >= 0'),
        (args.lr > 0 and args.wd >= 0, '--lr must be > 0 and --wd >= 0'),
        (0 <= args.ema_decay < 1, '--ema-decay must be in [0, 1)'),
        (0 < args.bn_momentum <= 1, '--bn-momentum must be in (0, 1]'),
        (args.rampup_steps >= 0 and 0 <= args.rampup_start <= 1,
         '--rampup-steps must be >= 0 and --rampup-start in [0, 1]'),
        (min(args.steps, args.eval_every, args.print_every, args.acc_window) >= 1,
         '--steps, --eval-every, --print-every and --acc-window must be at least 1'),
        (args.n_labeled is None or args.n_labeled >= 1, '--n-labeled must be at least 1'),
        (args.n_val is None or args.n_val >= 0, '--n-val must be >= 0'),
        (args.image_size is None or args.image_size >= 8, '--image-size must be at least 8'),
        (not (args.drop_unkept and args.compile != 'off'), '--drop-unkept makes batch shapes vary; it cannot be '
                                                            'combined with --compile'),
        (args.cutout >= 0, f'--cutout {args.cutout} must be >= 0 pixels (0: off)'),
        (args.rot_weight >= 0, '--rot-weight must be >= 0'),
        (0 <= args.augmix <= augment.AUGMIX_MAX_SEVERITY,
         f'--augmix {args.augmix} must be a severity in 1-{augment.AUGMIX_MAX_SEVERITY} (0: off)'),
        (args.lr_schedule != 'multistep' or args.lr_milestones,
         '--lr-schedule multistep needs --lr-milestones S1,S2,... (steps)'),
        (not args.lr_milestones or (list(args.lr_milestones) == sorted(set(args.lr_milestones))
                                    and 0 < args.lr_milestones[0] and args.lr_milestones[-1] < args.steps),
         f'--lr-milestones {",".join(map(str, args.lr_milestones or ()))} must be increasing steps in 1-{args.steps - 1} '
         f'(--steps {args.steps})'),
        (args.lr_factor > 0, '--lr-factor must be > 0'),
        (args.lr_schedule != 'exponential' or args.lr_gamma is not None,
         '--lr-schedule exponential needs --lr-gamma (the factor per step, e.g. 0.99995)'),
        (args.lr_gamma is None or 0 < args.lr_gamma <= 1, '--lr-gamma must be in (0, 1]'),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    args.method = method
    return args
