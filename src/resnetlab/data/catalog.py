"""The built-in datasets: one place for every constant.

Each dataset is a frozen :class:`DatasetSpec` in :data:`CATALOG`, holding its class names,
image geometry, normalization statistics (per channel, on the [0, 1] scale) and the official
files with their download mirrors and md5 checksums. Everything else in the data layer looks
these up at call time, so tests may ``monkeypatch.setitem(CATALOG, name, replace(spec, ...))``
to point the downloader at a local server.

CIFAR-10 and CIFAR-100 use the *binary* releases on purpose: the "python" releases are
pickles, and this project never unpickles downloaded data.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..models.card import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "CATALOG",
    "CIFAR10",
    "CIFAR100",
    "FASHION_MNIST",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST",
    "DatasetSpec",
    "RemoteFile",
]

# IMAGENET_MEAN/STD: normalization statistics of ImageNet (RGB, [0, 1] scale), used for
# ImageFolder data; defined with the model card (models/card.py), whose stem defaults they are.


@dataclass(frozen=True)
class RemoteFile:
    """One published file: its name, md5 checksum and download URLs (mirrors, tried in order)."""

    filename: str
    md5: str
    urls: tuple[str, ...]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything constant about a built-in dataset.

    ``format`` is ``"idx"`` (MNIST-style gzipped IDX files) or ``"cifar"`` (a binary CIFAR
    tar.gz archive). For ``"idx"`` the ``train_members``/``test_members`` are the
    (images, labels) file names; for ``"cifar"`` they are the record files inside the archive,
    each record being ``label_bytes`` label bytes followed by 3072 pixel bytes (the last label
    byte is the one used: CIFAR-100's fine label).
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: tuple[RemoteFile, ...]
    format: str
    train_members: tuple[str, ...]
    test_members: tuple[str, ...]
    num_train: int
    num_test: int
    #: Whether a horizontal flip keeps the label (False for digits).
    hflip: bool = True
    #: Zero padding of the standard random-crop augmentation.
    crop_padding: int = 4
    #: Bytes of label before each CIFAR record (1 for CIFAR-10, 2 for CIFAR-100).
    label_bytes: int = 1
    #: Folder names other tools use for the same files (e.g. torchvision's ``FashionMNIST``).
    folder_aliases: tuple[str, ...] = ()

    def members(self, split: str) -> tuple[str, ...]:
        """The files (IDX) or archive members (CIFAR) of the official ``train`` or ``test`` split."""
        if split == "train":
            return self.train_members
        if split == "test":
            return self.test_members
        raise ConfigError(f"split={split!r}: the official splits are 'train' and 'test'")


def _idx_files(base_urls: tuple[str, ...], md5s: dict[str, str]) -> tuple[RemoteFile, ...]:
    return tuple(
        RemoteFile(name, md5, tuple(base + name for base in base_urls))
        for name, md5 in md5s.items()
    )


_IDX_TRAIN = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
_IDX_TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    num_classes=10,
    class_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    channels=1,
    image_size=28,
    mean=(0.2860,),
    std=(0.3530,),
    files=_idx_files(
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    format="idx",
    train_members=_IDX_TRAIN,
    test_members=_IDX_TEST,
    num_train=60000,
    num_test=10000,
    hflip=True,
    crop_padding=2,
    folder_aliases=("FashionMNIST",),
)

MNIST = DatasetSpec(
    name="mnist",
    num_classes=10,
    class_names=tuple(str(d) for d in range(10)),
    channels=1,
    image_size=28,
    mean=(0.1307,),
    std=(0.3081,),
    files=_idx_files(
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    format="idx",
    train_members=_IDX_TRAIN,
    test_members=_IDX_TEST,
    num_train=60000,
    num_test=10000,
    hflip=False,  # a mirrored digit is not the same digit
    crop_padding=2,
    folder_aliases=("MNIST",),
)

CIFAR10 = DatasetSpec(
    name="cifar10",
    num_classes=10,
    class_names=(
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
    channels=3,
    image_size=32,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    files=(
        RemoteFile(
            "cifar-10-binary.tar.gz",
            "c32a1d4ab5d03f1284b67883e8d87530",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
        ),
    ),
    format="cifar",
    train_members=tuple(f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)),
    test_members=("cifar-10-batches-bin/test_batch.bin",),
    num_train=50000,
    num_test=10000,
    label_bytes=1,
)

# The 100 fine label names in the order of the official fine_label_names.txt.
_CIFAR100_CLASSES = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
]

CIFAR100 = DatasetSpec(
    name="cifar100",
    num_classes=100,
    class_names=tuple(_CIFAR100_CLASSES),
    channels=3,
    image_size=32,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    files=(
        RemoteFile(
            "cifar-100-binary.tar.gz",
            "03b5dce01913d631647c71ecec9e9cb8",
            ("https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",),
        ),
    ),
    format="cifar",
    train_members=("cifar-100-binary/train.bin",),
    test_members=("cifar-100-binary/test.bin",),
    num_train=50000,
    num_test=10000,
    label_bytes=2,  # coarse label, then fine label
)

#: The built-in datasets by ``--data`` name.
CATALOG: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (FASHION_MNIST, MNIST, CIFAR10, CIFAR100)
}
