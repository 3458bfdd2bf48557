"""Shared test settings.

The tests train tiny networks on tiny batches, where a second intra-op thread buys nothing and
costs a lot whenever the two cores are shared (OpenMP threads wait for each other at every op).
One thread, set before torch is imported so subprocesses inherit it too. The default-job test
drops it again, to time what a user gets.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
