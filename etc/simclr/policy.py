"""The interface of a pseudo-label policy: which guessed labels train, and with what weight. Each train.py
defines its family's policies as small subclasses of Policy at its top; the shared training step calls them.
Shared module (identical copies in every method folder).

Per step, the shared code draws a labeled and an unlabeled batch, guesses the unlabeled labels (Guess), and
asks the policy:
    select(u, ctx) -> (u, keep, threshold)   which guessed images train; the default calls mask(u, ctx)
    loss(rows, u, ctx) -> (term, loss_u)     the unlabeled term of the loss (and what the log calls loss_u)
    lambda_u(step)                           the unlabeled weight at a step (logged; the default loss uses it)
    log_values() -> {name: scalar tensor}    anything else to log, as policy_<name> (window means)
Unkept images take no part in mixup or in the default loss. A policy reads its settings from self.args (every
flag of the run) and where the run stands from ctx.step, ctx.steps and ctx.progress. FLAGS names what it reads
of its family's settings: a family flag (add_method_flags) given with a policy that does not name it is refused,
and a setting in FLAGS with no flag of its own (a line of the script's DEFAULTS) is the policy's own, given after
its name: --policy NAME:KEY=VALUE,... (--help lists them).

State: tensors registered with self.register_buffer(name, tensor) in __init__ are the policy's state. The
shared code saves them in every checkpoint and restores them on resume, whatever their names. Under torchrun,
update them from every process's data (ctx.rt.all_gather), so that every process holds the same state: the
shared code compares them at every checkpoint and stops the run, with one line, if they differ.
"""
from dataclasses import dataclass, replace
from typing import Callable

import torch

import semisup


@dataclass
class Guess:
    """An unlabeled batch of B_u images and MixMatch's guess of their labels."""
    images: torch.Tensor     # uint8 B_u x C x H x W, as drawn
    index: torch.Tensor      # long B_u: each image's position in the unlabeled set, 0 .. n_unlabeled - 1
    hidden: torch.Tensor     # long B_u: the true label where the dataset has one (diagnostics only), else -1
    views: torch.Tensor      # float K*B_u x C x H x W: the K augmentations; view k of image i is row k*B_u + i
    mean_prob: torch.Tensor  # float B_u x classes: the mean softmax over the K views
    target: torch.Tensor     # float B_u x classes: mean_prob sharpened with --T, the label that trains

    def take(self, rows):
        """The images `rows` (long indices into this batch), their views and guesses."""
        k = len(self.views) // len(self.images)
        views = self.views.view(k, len(self.images), *self.views.shape[1:])[:, rows].flatten(0, 1)
        return replace(self, images=self.images[rows], index=self.index[rows], hidden=self.hidden[rows], views=views,
                       mean_prob=self.mean_prob[rows], target=self.target[rows])

    def cat(self, other):
        """This batch followed by another one."""
        k = len(self.views) // len(self.images)
        views = torch.cat([g.views.view(k, len(g.images), *g.views.shape[1:]) for g in (self, other)], dim=1)
        return Guess(*(torch.cat([a, b]) for a, b in ((self.images, other.images), (self.index, other.index),
                                                      (self.hidden, other.hidden))),
                     views.flatten(0, 1), torch.cat([self.mean_prob, other.mean_prob]),
                     torch.cat([self.target, other.target]))


@dataclass
class MixedRows:
    """The unlabeled rows of the mixed batch: K*B_u rows (only the kept images' with --drop-unkept)."""
    logits: torch.Tensor   # float rows x classes
    targets: torch.Tensor  # float rows x classes: the mixed guessed labels
    keep: torch.Tensor     # bool rows: the row's own image is kept (unkept rows only mix among themselves)
    image: torch.Tensor    # long rows: which image of the Guess the row's own image is


@dataclass
class Context:
    """What a policy may read at a step besides the batch (and self.args, every flag of the run)."""
    step: int              # steps completed before this one: 0 at the first step, steps - 1 at the last
    steps: int             # the run's length, --steps as given now (a resume with more steps stretches a schedule)
    train_acc: tuple       # (num, den) long device tensors: num / den is the running top-1 on the labeled batches
    #                        of the window (--acc-window), a seeded window's first value weighing one image
    val_acc: tuple         # (correct, count) long device tensors: the last validation top-1 of the EMA weights
    rt: object             # runtime.Runtime: rt.all_gather, rt.all_reduce and rt.mine combine the processes
    draw: Callable         # draw() -> Guess: the sampler's next unlabeled batch, guessed by the same model
    forward: Callable      # forward(images) -> fp32 logits of the training model, with gradient (train mode)
    window_acc: tuple = None  # (correct, seen): the last completed --acc-window's train top-1; (0, 1) before

    @property
    def progress(self):
        """The fraction of the run done before this step: 0 at the first step, 1 - 1/steps at the last."""
        return self.step / self.steps


class Policy(torch.nn.Module):
    """Keep every guessed image, with the weight lambda_u(step) (MixMatch). Subclass it: override mask() to
    choose images, lambda_u() for a weight schedule, loss() for another unlabeled loss (it may run the model
    itself: ctx.forward()), select() to draw more images (ctx.draw()). List in FLAGS the family flags the policy
    reads: the others, given on the command line, are refused. self.args holds every flag of the run (the
    shared ones, the family's, and a policy's own, added in the script's add_method_flags)."""
    FLAGS = ()

    def __init__(self, args, num_classes, n_unlabeled):
        super().__init__()
        self.args, self.num_classes, self.n_unlabeled = args, num_classes, n_unlabeled

    def mask(self, u, ctx):
        """(keep: bool B_u, threshold in force: a scalar tensor, logged)."""
        return torch.ones(len(u.images), dtype=torch.bool, device=u.target.device), u.target.new_zeros(())

    def select(self, u, ctx):
        """(the Guess that trains, which of its images are kept, the threshold in force)."""
        keep, threshold = self.mask(u, ctx)
        return u, keep, threshold

    def confidence(self, u):
        """Per image: max of the mean prediction (the original code) or, with --confidence sharpened, of the
        sharpened guess (the report's Algorithm 1)."""
        sharpened = getattr(self.args, 'confidence', 'unsharpened') == 'sharpened'
        return (u.target if sharpened else u.mean_prob).max(dim=1).values

    @staticmethod
    def reads_train_acc(args):
        """Whether the policy reads ctx.train_acc with these args: then --accuracy clean measures it."""
        return False

    def lambda_u(self, step):
        """Unlabeled loss weight at `step` (steps completed): --lambda-u, ramped linearly from START
        times it to all of it over STEPS steps, --rampup STEPS:START (exact at both ends)."""
        a = self.args
        if step >= a.rampup_steps:
            return a.lambda_u
        return a.lambda_u * (a.rampup_start * a.rampup_steps + (1 - a.rampup_start) * step) / a.rampup_steps

    def loss(self, rows, u, ctx):
        """(the unlabeled term of the total loss, the unlabeled loss the log reports as loss_u)."""
        loss_u = semisup.unlabeled_loss(rows.logits, rows.targets, rows.keep, self.args.loss)
        return self.lambda_u(ctx.step) * loss_u, loss_u

    def log_values(self):
        """Scalars of this step to log (device tensors, no host sync): policy_<name> in log.jsonl and TensorBoard,
        averaged over each evaluation window."""
        return {}
