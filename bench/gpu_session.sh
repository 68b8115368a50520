#!/usr/bin/env bash
# The prepared GPU run of issue 7: CUDA tests on a real GPU, then bench/gpu.py.
#
#   bash bench/gpu_session.sh prepare   # here: copy the models and data it needs into gpu_models/
#   bash bench/gpu_session.sh run       # on the GPU machine, with gpu_models/ carried along
#
# gpu_models/ is git-ignored (../shared's files are never committed) and holds about 36 MB:
# ResNet-20, ResNet-18 and MobileNetV2 with the CIFAR-10 and Fashion-MNIST test data.
# The run needs numba with CUDA, onnx, onnxruntime, h5py, pytest and hypothesis (CuPy for
# cuBLAS, PyTorch for the reference line, both optional); anasim runs from the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-run}" in
  prepare)
    mkdir -p gpu_models/models gpu_models/data
    for m in resnet20_cifar10 resnet18_fmnist mobilenet_v2_fmnist; do
      cp ../shared/models/$m.onnx gpu_models/models/
    done
    cp ../shared/data/cifar10_test1000.npz ../shared/data/fashion_mnist_test.npz gpu_models/data/
    du -sh gpu_models
    ;;
  run)
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" ANASIM_SHARED="$PWD/gpu_models"
    python - <<'PY'
import numba, numba.cuda as c
print("numba", numba.__version__, "GPU", c.is_available() and c.get_current_device().name)
try:
    import cupy; print("cupy", cupy.__version__)
except Exception as e:
    print("no cupy:", e)
PY
    python -m pytest -q -s -p no:cacheprovider tests/test_cuda_kernels.py tests/test_cuda_graph.py \
      -k "gpu or ptx" 2>&1 | tail -40
    python bench/gpu.py --shared gpu_models --batch 1024 --runs 3 --cpu-batch 128 \
      --models resnet18 resnet20
    ;;
  *)
    echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
