#!/usr/bin/env bash
# Here, before a GPU loan: lay out what benchmarks/gpu.sh needs on the GPU machine in .gpu/ (ignored by
# git; ~45 MiB, under the 64 MiB that travels): the real MNIST / Fashion-MNIST files as resexp reads them,
# and wheels of the pure-Python packages that machine lacks (its image has torch, torchvision,
# tensorboard, scikit-learn, matplotlib, pytest; not Hydra). Then, with the device tool:
#   run(command="bash benchmarks/gpu.sh", carry=[".gpu"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared/data}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/data/MNIST/raw .gpu/data/FashionMNIST/raw .gpu/whl
cp "$shared"/mnist/*.gz .gpu/data/MNIST/raw/
cp "$shared"/fashion-mnist/*.gz .gpu/data/FashionMNIST/raw/
# wheels of what resexp needs beyond the image: pure Python, and safetensors' abi3 build (any CPython >= 3.8);
# antlr4 4.9.3 is published as a source archive only: its wheel is built here. loky + cloudpickle: the pool.
python -m pip wheel -q --no-deps -w .gpu/whl "hydra-core>=1.3" "omegaconf>=2.3,<2.4" "antlr4-python3-runtime==4.9.3" \
    safetensors tqdm "loky>=3.4" cloudpickle filelock
du -sh .gpu
