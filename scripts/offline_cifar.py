"""Write the offline CIFAR-10 folder (``cifar10.npz``, ``cifar10_small.npz``) from torchvision's
download, for a machine that has internet but not ``shared/data/cifar`` (the Pages workflow).

The committed records name the data they were made from by the checksums of the offline arrays
(``bplib.data_checksums``). Those arrays are torchvision's, bit for bit: all 50,000 training
images in order and the first 1,000 test images. So the files written here verify against the
same checksums, and the book built from them reads the committed records instead of refusing
them as made from other data. Any other pixels fail the verification (nothing is substituted).

    python scripts/offline_cifar.py FOLDER   # then: BPLIB_DATA=FOLDER make book
"""

import sys
from pathlib import Path

import numpy as np

from bplib.data_checksums import CIFAR10_CLASSES, verify_npz

N_TEST, N_SMALL = 1000, 2000  # the offline copy's test images and cifar10_small's training images


def write_offline(folder: Path, x_train, y_train, x_test, y_test) -> list[str]:
    """Write both npz files into ``folder`` from full-size HWC uint8 arrays and verify them;
    returns their identities (raises ``DataFileError`` naming a file that does not verify)."""
    folder.mkdir(parents=True, exist_ok=True)
    u8 = lambda a: np.ascontiguousarray(a, dtype=np.uint8)  # noqa: E731
    test = {"x_test": u8(x_test[:N_TEST]), "y_test": u8(y_test[:N_TEST])}
    classes = np.array(CIFAR10_CLASSES)
    identities = []
    for name, n in (("cifar10.npz", len(x_train)), ("cifar10_small.npz", N_SMALL)):
        np.savez(folder / name, x_train=u8(x_train[:n]), y_train=u8(y_train[:n]), **test,
                 classes=classes)  # fmt: skip
        identities.append(verify_npz(folder / name))
    return identities


def main(folder: str) -> None:
    from torchvision.datasets import CIFAR10  # a download: only where this script runs

    cache = Path(folder) / "torchvision"
    train, test = (CIFAR10(cache, train=t, download=True) for t in (True, False))
    ids = write_offline(Path(folder), train.data, np.array(train.targets), test.data,
                        np.array(test.targets))  # fmt: skip
    print("\n".join(ids))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/offline_cifar.py FOLDER")
    main(sys.argv[1])
