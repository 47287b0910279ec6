"""Splits, Fashion-MNIST, and the two image-folder layouts."""
import os

import numpy as np
import pytest
import torch

import data
from conftest import make_nsml_folder, make_plain_folder, write_png
from errors import UserError


def test_split_is_balanced_disjoint_and_reproducible():
    labels = np.repeat(np.arange(10), 600)
    labels[::7] = np.roll(labels[::7], 3)                             # not sorted, not perfectly equal classes
    a = data.make_split(labels, 10, 250, 500, seed=3)
    b = data.make_split(labels, 10, 250, 500, seed=3)
    c = data.make_split(labels, 10, 250, 500, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a['labeled'], c['labeled'])
    assert len(a['labeled']) == 250 and len(a['val']) == 500
    assert set(np.bincount(labels[a['labeled']], minlength=10)) == {25}
    assert set(np.bincount(labels[a['val']], minlength=10)) == {50}
    everything = np.concatenate([a['labeled'], a['val'], a['unlabeled']])
    assert sorted(everything.tolist()) == list(range(len(labels)))     # disjoint and complete


def test_split_uneven_counts_differ_by_at_most_one_per_class():
    labels = np.repeat(np.arange(7), 50)
    s = data.make_split(labels, 7, 40, 0, seed=0)
    counts = np.bincount(labels[s['labeled']], minlength=7)
    assert counts.sum() == 40 and counts.max() - counts.min() == 1


def test_split_default_val_and_errors():
    labels = np.repeat(np.arange(3), 100)
    s = data.make_split(labels, 3, None, None, seed=0)
    assert len(s['val']) == 30 and len(s['labeled']) == 270 and len(s['unlabeled']) == 0
    with pytest.raises(UserError, match='smaller than the number of classes'):
        data.make_split(labels, 3, 2, None, seed=0)
    with pytest.raises(UserError, match='more than the 270 labeled images'):
        data.make_split(labels, 3, 271, None, seed=0)


def test_fashion_mnist_from_the_debian_package():
    ds = data.load_dataset('fashion_mnist', None)
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.train_images.dtype == torch.uint8
    assert ds.test_images.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train_labels.numpy()).tolist() == [6000] * 10
    assert ds.classes[0] == 'T-shirt/top' and len(ds.classes) == 10


def test_fashion_mnist_missing_names_the_paths(tmp_path):
    with pytest.raises(UserError, match=f'not found in {tmp_path}.*apt-get install dataset-fashion-mnist'):
        data.load_dataset('fashion_mnist', str(tmp_path))


def test_torchvision_dataset_missing_names_the_expected_path(tmp_path):
    for name, expected in (('cifar10', 'cifar-10-batches-py'), ('stl10', 'stl10_binary')):
        with pytest.raises(UserError, match=f'expected {tmp_path}/{expected}.*--download'):
            data.load_dataset(name, str(tmp_path))


def test_nsml_layout_with_unlabeled_rows(tmp_path):
    root = make_nsml_folder(str(tmp_path / 'nsml'), [0, 1, -1, 2, -1, 1, 0])
    ds = data.load_dataset('folder', root, image_size=12, cache_dir=str(tmp_path / 'cache'))
    assert ds.train_images.shape == (7, 3, 12, 12) and ds.train_images.dtype == torch.uint8
    assert ds.train_labels.tolist() == [0, 1, -1, 2, -1, 1, 0]
    assert ds.test_images is None and ds.classes == ['0', '1', '2']
    s = data.make_split(ds.train_labels.numpy(), 3, None, 1, seed=0)
    assert {2, 4} <= set(s['unlabeled'].tolist()) and len(s['labeled']) == 4


def test_nsml_label_outside_class_range_and_bad_rows(tmp_path):
    root = make_nsml_folder(str(tmp_path / 'a'), [0, 1, 7])
    with pytest.raises(UserError, match='line 4: label 7 outside the class range'):
        data.load_dataset('folder', root, num_classes=3, cache_dir=None)
    root = make_nsml_folder(str(tmp_path / 'b'), [0, -2])
    with pytest.raises(UserError, match='label -2 outside'):
        data.load_dataset('folder', root, cache_dir=None)
    root = make_nsml_folder(str(tmp_path / 'c'), [0, 'x'])
    with pytest.raises(UserError, match="line 3: label 'x' is not an integer"):
        data.load_dataset('folder', root, cache_dir=None)
    root = make_nsml_folder(str(tmp_path / 'd'), [0, 1])
    with open(os.path.join(root, 'train', 'train_label'), 'a') as f:
        f.write('9\t1\n')
    with pytest.raises(UserError, match='expected 3 tab-separated fields'):
        data.load_dataset('folder', root, cache_dir=None)


def test_plain_layout_and_cache(tmp_path):
    root = make_plain_folder(str(tmp_path / 'plain'), per_class=3, unlabeled=5, test_per_class=2)
    cache = str(tmp_path / 'cache')
    ds = data.load_dataset('folder', root, image_size=16, cache_dir=cache)
    assert ds.classes == ['cat', 'dog', 'fox']
    assert ds.train_labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [-1] * 5
    assert ds.test_labels.tolist() == [0, 0, 1, 1, 2, 2] and ds.test_images.shape == (6, 3, 16, 16)
    assert len(os.listdir(cache)) == 1
    again = data.load_dataset('folder', root, image_size=16, cache_dir=cache)
    assert torch.equal(again.train_images, ds.train_images)
    write_png(os.path.join(root, 'unlabeled', 'new.png'), 99)           # a changed folder is decoded anew
    assert len(data.load_dataset('folder', root, image_size=16, cache_dir=cache).train_labels) == 15


def test_corrupt_image_is_named(tmp_path):
    root = make_plain_folder(str(tmp_path / 'plain'), per_class=2, unlabeled=2, test_per_class=0)
    bad = os.path.join(root, 'labeled', 'dog', 'broken.png')
    with open(bad, 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n not really a png')
    with pytest.raises(UserError, match=f'cannot decode image {bad}'):
        data.load_dataset('folder', root, image_size=16, cache_dir=None)


def test_folder_that_is_neither_layout(tmp_path):
    with pytest.raises(UserError, match='neither the NSML layout'):
        data.load_dataset('folder', str(tmp_path), cache_dir=None)


def write_image(path, size, mode, seed):
    """A PNG of size (w, h) in PIL mode L (grey) or RGB."""
    from PIL import Image
    os.makedirs(os.path.dirname(path), exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    channels = 1 if mode == 'L' else 3
    pixels = torch.randint(0, 256, (size[1], size[0], channels), dtype=torch.uint8, generator=g).squeeze(2)
    Image.fromarray(pixels.numpy(), mode).save(path)


def folder_of(root, sizes, mode):
    """labeled/a, labeled/b and unlabeled/ images of the given (w, h) sizes."""
    for i, size in enumerate(sizes):
        where = ('labeled/a', 'labeled/b', 'unlabeled')[i % 3]
        write_image(os.path.join(root, where, f'{i}.png'), size, mode, i)
    return root


def test_small_folder_images_keep_their_size_and_grey_ones_one_channel(tmp_path):
    """Without an image-size, images of at most 64 px a side are decoded at their own size (the largest short
    side), not upscaled to 96; grey ones keep one channel, so that a Fashion-MNIST checkpoint fits them."""
    root = folder_of(str(tmp_path / 'grey'), [(28, 28)] * 9, 'L')
    ds = data.load_dataset('folder', root, cache_dir=str(tmp_path / 'cache'))
    assert ds.train_images.shape == (9, 1, 28, 28)
    assert ds.note == ('folder images: 28 x 28 px, their own size (none is over 64 px a side; --dataset '
                       'folder:image-size=N resizes them); every image is grey: 1 channel')
    again = data.load_dataset('folder', root, cache_dir=str(tmp_path / 'cache'))       # from the cache: the same
    assert torch.equal(again.train_images, ds.train_images) and again.note == ds.note
    from PIL import Image
    pixels = np.asarray(Image.open(os.path.join(root, 'labeled', 'a', '0.png')))
    assert np.array_equal(ds.train_images[0, 0].numpy(), pixels)                      # unchanged, pixel for pixel
    mixed = folder_of(str(tmp_path / 'mixed'), [(24, 24), (20, 30), (32, 28)] * 3, 'RGB')
    ds = data.load_dataset('folder', mixed, cache_dir=None)
    assert ds.train_images.shape[1:] == (3, 28, 28) and 'colour: 3 channels' in ds.note


def test_large_folder_images_are_resized_to_96_and_an_explicit_size_wins(tmp_path):
    root = folder_of(str(tmp_path / 'large'), [(80, 60), (40, 40), (120, 100)] * 3, 'RGB')
    ds = data.load_dataset('folder', root, cache_dir=None)
    assert ds.train_images.shape[1:] == (3, 96, 96) and 'some are over 64 px a side' in ds.note
    ds = data.load_dataset('folder', root, image_size=32, cache_dir=None)
    assert ds.train_images.shape[1:] == (3, 32, 32) and '32 x 32 px (--dataset folder:image-size' in ds.note


def test_a_validation_set_under_10_images_per_class_is_warned_about():
    ds = data.Dataset(None, None, None, None, ['a', 'b', 'c'], 'folder images: ...')
    few = {'val': np.arange(9)}
    assert data.notes(ds, few) == ['folder images: ...', 'warning: 9 validation images (3 per class) pick the best '
                                   'checkpoint nearly by chance: where there are labeled images to spare, hold out 10 '
                                   'per class (--n-val 30); with --n-val 0, best.pt is the last evaluation']
    assert data.notes(ds, {'val': np.arange(30)}) == ['folder images: ...']
    assert data.notes(ds, {'val': np.arange(0)}) == ['folder images: ...']            # --n-val 0: asked for
