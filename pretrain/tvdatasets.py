"""torchvision's own dataset classes with an explicit switch for their MD5 integrity check.

torchvision's CIFAR-10/100 and Flowers-102 verify the MD5 of every file; a re-packed copy or a
test fixture in the exact format fails that check. ``verify_md5=False`` reduces it to "the files
exist" and changes nothing else: torchvision stays the one loader of real data, for pretraining
(``pretrain.data``) and for transfer (``transfer.datasets``) alike.
"""
from __future__ import annotations

import torchvision.datasets as tvd


def _no_md5(entries):
    return [[name, None] for name, _ in entries]


class _CIFARFiles:
    """``verify_md5=False``: check that CIFAR's files exist, not their MD5."""

    def __init__(self, *args, verify_md5: bool = True, **kwargs):
        if not verify_md5:  # check_integrity(path, None) == "file exists"
            self.train_list, self.test_list = _no_md5(self.train_list), _no_md5(self.test_list)
            self.meta = {**self.meta, "md5": None}
        super().__init__(*args, **kwargs)


class CIFAR10(_CIFARFiles, tvd.CIFAR10):
    """torchvision's CIFAR10 with the MD5 switch."""


class CIFAR100(_CIFARFiles, tvd.CIFAR100):
    """torchvision's CIFAR100 with the MD5 switch."""


class Flowers102(tvd.Flowers102):
    """torchvision's Flowers102; ``verify_md5=False`` skips the MD5 of the two ``.mat`` files."""

    def __init__(self, *args, verify_md5: bool = True, **kwargs):
        if not verify_md5:
            self._file_dict = {k: (name, None) for k, (name, _) in self._file_dict.items()}
        super().__init__(*args, **kwargs)
