"""Where the data sets live, by family (this module re-exports them for older imports):
- resexp/data/offline_sets.py: digits (scikit-learn's, shipped) and synthetic (generated);
- resexp/data/torchvision_sets.py: CIFAR-10/100, MNIST, Fashion-MNIST (files, downloaded if allowed);
- resexp/data/folder_sets.py: image folders (image_folder, birds) and their one-time decode into memory;
- resexp/data/shard_sets.py: tar shards written by `python -m resexp.pack` (data=shards).
"""

from resexp.data.folder_sets import Birds, ImageFolder, decode_files
from resexp.data.offline_sets import Digits, Synthetic, load_digits_arrays
from resexp.data.shard_sets import Shards
from resexp.data.torchvision_sets import TORCHVISION_SETS, IdxSet, TorchvisionSet, default_root

__all__ = ["TORCHVISION_SETS", "Birds", "Digits", "IdxSet", "ImageFolder", "Shards", "Synthetic", "TorchvisionSet",
           "decode_files", "default_root", "load_digits_arrays"]
