"""Splits, Fashion-MNIST, and the two image-folder layouts."""
import os

import numpy as np
import pytest
import torch

import data
from conftest import make_nsml_folder, make_plain_folder, write_png
from models import UserError


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
