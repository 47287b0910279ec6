"""Datasets as uint8 tensors, and the labeled / validation / unlabeled split. Shared module (identical copies).

load_dataset() returns a Dataset with
  train_images  uint8 N x C x H x W     every training image, labeled or not
  train_labels  int64 N                 class index, or -1 where no label exists (hidden labels of images
                                        that we treat as unlabeled are kept: they only feed diagnostics)
  test_images / test_labels             the labeled test set, or None (the original NSML layout has none)
  classes                               class names, index order
  note                                  how a folder's images were decoded (size, channels), or ''
make_split() picks the validation and labeled indices, class-balanced and deterministic from --split-seed;
on_device() moves the sets to the training device, and IndexStream samples batches there.
"""
import gzip
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from errors import UserError

DATASETS = ('fashion_mnist', 'cifar10', 'cifar100', 'svhn', 'stl10', 'folder')
FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'  # Debian package dataset-fashion-mnist
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                         'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp')
OWN_SIZE_MAX = 64   # folder images at most this many pixels a side keep their own size (no image-size given)
LARGE_SIZE = 96     # larger ones are decoded at this side instead
CACHE_FORMAT = 2    # the decoded-image cache; 1 kept grey images as 3 channels
MIN_VAL_PER_CLASS = 10  # fewer validation images per class than this pick the best checkpoint nearly by chance


@dataclass
class Dataset:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor | None
    test_labels: torch.Tensor | None
    classes: list
    note: str = ''



def default_root(dataset):
    return FASHION_MNIST_SYSTEM_DIR if dataset == 'fashion_mnist' else './data'


def load_dataset(name, root, download=False, image_size=None, num_classes=None, cache_dir=None):
    """root None = the dataset's default location (default_root); image_size None = a folder's images' own
    size where none is over OWN_SIZE_MAX pixels a side, else LARGE_SIZE."""
    if name == 'fashion_mnist':
        return _fashion_mnist(root, download)
    root = root or default_root(name)
    if name == 'folder':
        return _folder(root, image_size, num_classes, cache_dir)
    if name in ('cifar10', 'cifar100', 'svhn', 'stl10'):
        return _torchvision(name, root, download)
    raise UserError(f'--dataset {name!r} is not one of {", ".join(DATASETS)}')


# ---------------------------------------------------------------------------------------------------------
# Fashion-MNIST: IDX files (gzipped or not), read directly
# ---------------------------------------------------------------------------------------------------------
def _fashion_mnist(root, download):
    """An explicit --data-root must hold the files (flat, or torchvision's FashionMNIST/raw/); without one,
    the Debian package's folder is used."""
    if download:
        import torchvision
        root = root or './data'
        try:
            torchvision.datasets.FashionMNIST(root, download=True)
        except Exception as e:  # network errors come in many types; all mean the same to the user
            raise UserError(f'--download of Fashion-MNIST into {root} failed: {e}') from None
    tried = [root, os.path.join(root, 'FashionMNIST', 'raw')] if root else [FASHION_MNIST_SYSTEM_DIR]
    for d in tried:
        files = [_find_idx(d, f'{split}-{kind}') for split in ('train', 't10k')
                 for kind in ('images-idx3-ubyte', 'labels-idx1-ubyte')]
        if all(files):
            x_tr, y_tr, x_te, y_te = (_read_idx(f) for f in files)
            return Dataset(x_tr.unsqueeze(1), y_tr.long(), x_te.unsqueeze(1), y_te.long(), list(FASHION_MNIST_CLASSES))
    raise UserError(f'Fashion-MNIST not found in {" or ".join(tried)}; install it with '
                    f'`apt-get install dataset-fashion-mnist` (files in {FASHION_MNIST_SYSTEM_DIR}), or pass '
                    f'--data-root DIR --download')


def _find_idx(d, stem):
    for path in (os.path.join(d, stem), os.path.join(d, stem + '.gz')):
        if os.path.isfile(path):
            return path
    return None


def _read_idx(path):
    try:
        with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as f:
            raw = f.read()
        magic = int.from_bytes(raw[:4], 'big')
        if magic >> 8 != 0x08:  # 0x08 = unsigned byte data
            raise ValueError(f'bad magic number {magic:#x}')
        dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(magic & 0xff)]
        data = np.frombuffer(raw, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f'cannot read IDX file {path}: {e}') from None
    return torch.from_numpy(data.copy())


# ---------------------------------------------------------------------------------------------------------
# CIFAR-10/100, SVHN, STL-10 through torchvision, from its standard on-disk layout
# ---------------------------------------------------------------------------------------------------------
_EXPECTED = {'cifar10': 'cifar-10-batches-py', 'cifar100': 'cifar-100-python', 'svhn': 'train_32x32.mat',
             'stl10': 'stl10_binary'}


def _torchvision(name, root, download):
    import torchvision.datasets as tvd
    try:
        if name in ('cifar10', 'cifar100'):
            cls = tvd.CIFAR10 if name == 'cifar10' else tvd.CIFAR100
            tr, te = cls(root, train=True, download=download), cls(root, train=False, download=download)
            to = lambda d: (torch.from_numpy(d.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(d.targets))
            (x_tr, y_tr), (x_te, y_te), classes = to(tr), to(te), list(tr.classes)
        elif name == 'svhn':
            tr, te = tvd.SVHN(root, 'train', download=download), tvd.SVHN(root, 'test', download=download)
            x_tr, y_tr = torch.from_numpy(tr.data), torch.from_numpy(tr.labels).long()
            x_te, y_te = torch.from_numpy(te.data), torch.from_numpy(te.labels).long()
            classes = [str(i) for i in range(10)]
        else:  # stl10: 5k labeled + 100k unlabeled (label -1) training images
            tr, un, te = (tvd.STL10(root, s, download=download) for s in ('train', 'unlabeled', 'test'))
            x_tr = torch.from_numpy(np.concatenate([tr.data, un.data]))
            y_tr = torch.from_numpy(np.concatenate([tr.labels, -np.ones(len(un.data), np.int64)])).long()
            x_te, y_te, classes = torch.from_numpy(te.data), torch.from_numpy(te.labels).long(), list(tr.classes)
    except ImportError as e:
        raise UserError(f'--dataset {name} needs a package that is not installed: {e}') from None
    except RuntimeError as e:
        if download:
            raise UserError(f'--download of {name} into {root} failed: {e}') from None
        raise UserError(f'{name} not found: expected {os.path.join(root, _EXPECTED[name])} (torchvision layout); '
                        f'pass --data-root DIR, or --download to fetch it') from None
    except OSError as e:
        raise UserError(f'--download of {name} into {root} failed: {e}') from None
    return Dataset(x_tr, y_tr.long(), x_te, y_te.long(), classes)


# ---------------------------------------------------------------------------------------------------------
# Image folders: the original NSML layout, or labeled/<class>/, unlabeled/, test/<class>/
# ---------------------------------------------------------------------------------------------------------
def _folder(root, image_size, num_classes, cache_dir):
    if not os.path.isdir(root):
        raise UserError(f'--data-root {root} does not exist (as seen from {os.getcwd()})')
    tsv = os.path.join(root, 'train', 'train_label')
    if os.path.isfile(tsv):
        files, labels, classes = _nsml_rows(root, tsv, num_classes)
        test_files, test_labels = [], []
    elif os.path.isdir(os.path.join(root, 'labeled')):
        files, labels, classes, test_files, test_labels = _plain_layout(root)
        if num_classes is not None and num_classes != len(classes):
            raise UserError(f'--dataset folder:num-classes={num_classes} but {root}/labeled has {len(classes)} class folders')
    else:
        raise UserError(f'--data-root {root} is neither the NSML layout (train/train_label) nor the plain layout '
                        f'(labeled/<class>/, unlabeled/, test/<class>/)')
    images, note = _decode_cached(files + test_files, image_size, cache_dir)
    n = len(files)
    test = (images[n:], torch.tensor(test_labels)) if test_files else (None, None)
    return Dataset(images[:n], torch.tensor(labels, dtype=torch.long), *test, classes, note)


def _nsml_rows(root, tsv, num_classes):
    """train/train_label: a header line, then `instance_id<TAB>label<TAB>file_name`; label -1 = unlabeled."""
    try:
        with open(tsv, encoding='utf-8') as f:
            lines = f.read().splitlines()[1:]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f'cannot read {tsv}: {e}') from None
    files, labels = [], []
    for lineno, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        fields = line.split('\t')
        if len(fields) != 3:
            raise UserError(f'{tsv} line {lineno}: expected 3 tab-separated fields '
                            f'(instance_id, label, file_name), got {len(fields)}')
        try:
            label = int(fields[1])
        except ValueError:
            raise UserError(f'{tsv} line {lineno}: label {fields[1]!r} is not an integer') from None
        if label < -1 or (num_classes is not None and label >= num_classes):
            raise UserError(f'{tsv} line {lineno}: label {label} outside the class range '
                            f'[0, {num_classes if num_classes is not None else "inf"}) (or -1 for unlabeled)')
        files.append(os.path.join(root, 'train', 'train_data', fields[2]))
        labels.append(label)
    if not any(lab >= 0 for lab in labels):
        raise UserError(f'{tsv} has no labeled rows')
    n_classes = num_classes if num_classes is not None else max(labels) + 1
    return files, labels, [str(c) for c in range(n_classes)]


def _plain_layout(root):
    classes = sorted(d for d in os.listdir(os.path.join(root, 'labeled'))
                     if os.path.isdir(os.path.join(root, 'labeled', d)))
    if not classes:
        raise UserError(f'{root}/labeled has no class folders')
    files, labels = _class_folders(os.path.join(root, 'labeled'), classes)
    unlabeled = sorted(_images_under(os.path.join(root, 'unlabeled')))
    files, labels = files + unlabeled, labels + [-1] * len(unlabeled)
    test_files, test_labels = [], []
    test_dir = os.path.join(root, 'test')
    if os.path.isdir(test_dir):
        extra = sorted(set(os.listdir(test_dir)) - set(classes))
        if extra:
            raise UserError(f'{test_dir} has class folders that labeled/ lacks: {", ".join(extra[:5])}')
        test_files, test_labels = _class_folders(test_dir, classes)
    return files, labels, classes, test_files, test_labels


def _class_folders(top, classes):
    files, labels = [], []
    for c, name in enumerate(classes):
        found = sorted(_images_under(os.path.join(top, name)))
        files += found
        labels += [c] * len(found)
    return files, labels


def _images_under(d):
    for dirpath, _, names in os.walk(d):
        for name in names:
            if name.lower().endswith(IMAGE_SUFFIXES):
                yield os.path.join(dirpath, name)


def _decode_cached(files, image_size, cache_dir):
    """Decode every image once (resize the short side to the size, centre crop; grey when every image is grey),
    cache the uint8 tensor under cache_dir keyed by file names, sizes, mtimes and image_size. Returns (images,
    a line that says how they were decoded)."""
    if not files:
        raise UserError('the folder has no images (' + ', '.join(IMAGE_SUFFIXES) + ')')
    stats = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            raise UserError(f'image file missing: {path}') from None
        stats.append((os.path.abspath(path), st.st_size, st.st_mtime_ns))
    key = hashlib.sha256(json.dumps([CACHE_FORMAT, image_size, stats]).encode()).hexdigest()[:20]
    cache = os.path.join(cache_dir, f'images-{key}.pt') if cache_dir else None
    if cache and os.path.isfile(cache):
        try:
            cached = torch.load(cache, weights_only=True)
            return cached['images'], cached['note']
        except Exception:  # a damaged cache file is rebuilt, never trusted
            pass
    size, why = _decoded_size(files, image_size)
    images = torch.stack([_decode(path, size) for path in files])
    grey = all(bool((chunk[:, :1] == chunk[:, 1:]).all()) for chunk in images.split(4096))
    if grey:  # one channel, as Fashion-MNIST: its checkpoints can --init the run, and the model computes less
        images = images[:, :1].contiguous()
    note = (f'folder images: {why}; ' + ('every image is grey: 1 channel' if grey else 'colour: 3 channels (RGB)'))
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = cache + f'.tmp{os.getpid()}'
        torch.save({'images': images, 'note': note}, tmp)
        os.replace(tmp, cache)
    return images, note


def _decoded_size(files, image_size):
    """The side the images are decoded at, and why: --dataset folder:image-size where given; else the images' own size (the
    largest short side) where none is over OWN_SIZE_MAX pixels a side, and LARGE_SIZE where one is."""
    if image_size is not None:
        return image_size, f'{image_size} x {image_size} px (--dataset folder:image-size; short side resized, centre crop)'
    from PIL import Image, UnidentifiedImageError
    sides = []
    for path in files:
        try:
            with Image.open(path) as im:  # reads the header only
                sides.append(im.size)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise UserError(f'cannot decode image {path} ({type(e).__name__}); remove or replace the file') from None
    if max(max(wh) for wh in sides) <= OWN_SIZE_MAX:
        size = max(min(wh) for wh in sides)
        return size, (f'{size} x {size} px, their own size (none is over {OWN_SIZE_MAX} px a side; --dataset folder:image-size=N '
                      'resizes them)')
    return LARGE_SIZE, (f'{LARGE_SIZE} x {LARGE_SIZE} px (some are over {OWN_SIZE_MAX} px a side: short side resized, '
                        'centre crop; --dataset folder:image-size=N for another size)')


def _decode(path, size):
    """RGB uint8 3 x size x size: short side resized to size (bicubic, antialiased), centre crop."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im = im.convert('RGB')
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:  # PIL's codecs raise all of these
        raise UserError(f'cannot decode image {path} ({type(e).__name__}); remove or replace the file') from None
    scale = size / min(im.size)
    w, h = max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))
    im = im.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------
def balanced_pick(indices, labels, n, rng):
    """n of `indices`, class-balanced: classes take turns in a random order, each giving a random image of
    its own until it runs out. Deterministic given rng's state."""
    indices = rng.permutation(indices)
    lab = labels[indices]
    order = np.argsort(lab, kind='stable')
    first = np.searchsorted(lab[order], lab[order])          # first position of each image's class
    rank = np.empty(len(indices), np.int64)
    rank[order] = np.arange(len(indices)) - first              # 0, 1, 2 ... within each class
    class_turn = rng.permutation(int(labels.max()) + 1)
    key = rank * (len(class_turn) + 1) + class_turn[lab]
    return np.sort(indices[np.argsort(key, kind='stable')[:n]])


def make_split(labels, num_classes, n_labeled, n_val, seed):
    """Returns dict(labeled, val, unlabeled) of sorted int64 index arrays into the training set.
    Validation comes out of the labeled images first, then the labeled set; every other training image is
    unlabeled. n_labeled None = all remaining labeled images; n_val None = min(5000, 10% of labeled images)."""
    labels = np.asarray(labels)
    pool = np.flatnonzero(labels >= 0)
    if n_val is None:
        n_val = min(5000, len(pool) // 10)
    rng = np.random.default_rng(seed)
    val = balanced_pick(pool, labels, n_val, rng) if n_val > 0 else np.zeros(0, np.int64)
    rest = np.setdiff1d(pool, val)
    if n_labeled is None:
        n_labeled = len(rest)
    if n_labeled < num_classes:
        raise UserError(f'--n-labeled {n_labeled} is smaller than the number of classes ({num_classes})')
    if n_labeled > len(rest):
        raise UserError(f'--n-labeled {n_labeled} is more than the {len(rest)} labeled images left after '
                        f'{n_val} validation images (--n-val)')
    labeled = balanced_pick(rest, labels, n_labeled, rng)
    unlabeled = np.setdiff1d(np.arange(len(labels)), np.concatenate([val, labeled]))
    return {'labeled': labeled, 'val': val, 'unlabeled': unlabeled}


# ---------------------------------------------------------------------------------------------------------
# On the training device
# ---------------------------------------------------------------------------------------------------------
class IndexStream:
    """Endless shuffled passes over range(n) on the device, `batch` indices at a time (epochs without
    a DataLoader). Its state travels in checkpoints so a resumed run draws the same batches."""

    def __init__(self, n, batch, device):
        self.n, self.batch, self.device = n, batch, device
        self.perm = torch.zeros(0, dtype=torch.long, device=device)
        self.pos = 0

    def next(self):
        while self.pos + self.batch > len(self.perm):
            self.perm = torch.cat([self.perm[self.pos:], torch.randperm(self.n, device=self.device)])
            self.pos = 0
        self.pos += self.batch
        return self.perm[self.pos - self.batch:self.pos]

    def state_dict(self):
        return {'perm': self.perm.cpu(), 'pos': self.pos}

    def load_state_dict(self, s):
        self.perm, self.pos = s['perm'].to(self.device), s['pos']


def on_device(ds, split, device):
    """{'labeled', 'unlabeled', 'val', 'test'} -> (uint8 images, labels) on the device; test is (None, None)
    where the dataset has no labeled test set."""
    sets = {k: (ds.train_images[i].to(device), ds.train_labels[i].to(device))
            for k, i in ((k, torch.from_numpy(split[k])) for k in ('labeled', 'unlabeled', 'val'))}
    has_test = ds.test_images is not None
    sets['test'] = (ds.test_images.to(device), ds.test_labels.to(device)) if has_test else (None, None)
    return sets


def pixel_stats(images):
    """Per-channel mean and std in [0, 1] of uint8 images, computed in chunks."""
    c = images.shape[1]
    total, sq, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for i in range(0, len(images), 4096):
        x = images[i:i + 4096].double().div_(255).transpose(0, 1).reshape(c, -1)
        total += x.sum(1)
        sq += (x * x).sum(1)
        n += x.shape[1]
    mean = total / n
    std = (sq / n - mean * mean).clamp(min=1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def notes(ds, split):
    """Lines to print at the start of a run: how a folder's images were decoded, and a warning where the validation
    set is too small to pick the best checkpoint."""
    lines = [ds.note] if ds.note else []
    n_val, n_classes = len(split['val']), len(ds.classes)
    if 0 < n_val < MIN_VAL_PER_CLASS * n_classes:
        lines.append(f'warning: {n_val} validation images ({n_val / n_classes:.3g} per class) pick the best checkpoint '
                     f'nearly by chance: where there are labeled images to spare, hold out {MIN_VAL_PER_CLASS} per class '
                     f'(--n-val {MIN_VAL_PER_CLASS * n_classes}); with --n-val 0, best.pt is the last evaluation')
    return lines


def load_data(args):
    """Dataset + split for these args. Returns (dataset, split)."""
    ds = load_dataset(args.dataset, args.data_root, args.download, args.image_size, args.num_classes,
                      args.cache_dir)
    split = make_split(ds.train_labels.numpy(), len(ds.classes), args.n_labeled, args.n_val, args.split_seed)
    return ds, split
