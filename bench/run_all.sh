#!/bin/sh
# Run every benchmark with the settings recorded in docs/benchmarks.md.
# Usage: bench/run_all.sh MODEL [OUTPUT_DIR]
#   MODEL: a trained MNIST checkpoint (for example catalog/shipped/mnist-unet-vp), measured on its held-out digits.
# The closed-form runs use the gaussian-mnist oracle. Each script's output goes to OUTPUT_DIR.
set -eu
model=${1:?give a trained MNIST checkpoint, for example catalog/shipped/mnist-unet-vp}
out=${2:-bench-results}
python=${PYTHON:-python}
here=$(dirname "$0")
mkdir -p "$out"
run() {
    name=$1
    shift
    echo "== $name"
    "$python" "$here/$@" | tee "$out/$name.txt"
}
run quadrature-gaussian quadrature.py --model gaussian-mnist
run quadrature-network quadrature.py --model "$model" --reference-samples 64 --evaluations 4160
run smoothness-network smoothness.py --model "$model" --t-low 0.002 --t-high 0.06 --threads 1
run calibration-gaussian calibration.py --model gaussian-mnist --repeats 400
run efficiency-gaussian efficiency.py --model gaussian-mnist --check 60
run efficiency-network efficiency.py --model "$model" --reference-target 0.001 --check 10
run variance-gaussian variance.py --model gaussian-mnist --evaluations 4160 --repeats 20
run variance-network variance.py --model "$model" --evaluations 1040 --repeats 12
run overhead overhead.py --model "$model" --samples 64 --strata 16 --repeats 5 --threads 1
run memory memory.py --model "$model" --samples 16,64,256,1024 --nodes 17 --repeats 2
run trainer-throughput trainer_throughput.py --channels 32,64,64 --batch-size 32 --steps 10 --repeats 3 --threads 1
