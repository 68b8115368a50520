#!/usr/bin/env bash
# The seed study: every shared network under (1) a sweep of ADC resolution x output noise
# and (2) PCM drift over time with and without compensation. Results and plots land in
# examples/seed_study/results/. Resumable: rerun to continue an interrupted study.
#
#   bash examples/seed_study/run.sh [LIMIT]        # LIMIT test images per model (default 500)
#
# Needs ../shared (models and data) and matplotlib for the plots.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared=${ANASIM_SHARED:-$here/../../../shared}
limit=${1:-500}
out=$here/results
mkdir -p "$out"
models="resnet20_cifar10 resnet18_fmnist resnet34_fmnist vgg16_fmnist mobilenet_v2_fmnist"
for m in $models; do
  case $m in
    *cifar10) data=$shared/data/cifar10_test1000.npz; pre=cifar10 ;;
    *)        data=$shared/data/fashion_mnist_test.npz; pre=fmnist32 ;;
  esac
  for study in adc_noise drift; do
    anasim sweep "$shared/models/$m.onnx" --data "$data" --preprocess "$pre" --limit "$limit" \
      --grid "$here/$study.toml" --out "$out/${m}_$study.csv"
  done
done
# plots (redrawn from the results files every time)
for f in "$out"/*.csv; do
  anasim show "$f" --plot "${f%.csv}.png" --overwrite > "${f%.csv}.txt"
done
