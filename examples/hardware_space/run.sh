#!/usr/bin/env bash
# The hardware-space study on ResNet-20 (CIFAR-10): (1) bit-serial input (bits per cycle) x
# ADC resolution, (2) weight slices x bits per slice under PCM programming noise. Results
# and plots land in examples/hardware_space/results/. Resumable: rerun to continue.
#
#   bash examples/hardware_space/run.sh [LIMIT]     # LIMIT test images (default 200)
#
# Needs ../shared (model and data) and matplotlib for the plots. The cost of each feature
# against the plain analog forward: python examples/hardware_space/cost.py
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
shared=${ANASIM_SHARED:-$here/../../../shared}
limit=${1:-200}
out=$here/results
mkdir -p "$out"
for study in input_bits_adc weight_slices; do
  anasim sweep "$shared/models/resnet20_cifar10.onnx" --data "$shared/data/cifar10_test1000.npz" \
    --preprocess cifar10 --limit "$limit" --grid "$here/$study.toml" --out "$out/resnet20_$study.csv"
done
anasim show "$out/resnet20_input_bits_adc.csv" --x forward.out_res \
  --plot "$out/resnet20_input_bits_adc.png" --overwrite > "$out/resnet20_input_bits_adc.txt"
anasim show "$out/resnet20_weight_slices.csv" --x bit_slicing.weight_slices \
  --plot "$out/resnet20_weight_slices.png" --overwrite > "$out/resnet20_weight_slices.txt"
