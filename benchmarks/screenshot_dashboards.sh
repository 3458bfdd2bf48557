#!/usr/bin/env bash
# Screenshots of the two dashboards a sweep shows (issue 23): TensorBoard's scalars and HParams pages and
# MLflow's runs table, for the resexp checkout given, with Debian's headless Chromium.
#   bash benchmarks/screenshot_dashboards.sh <resexp checkout> <out dir> [python]
# Runs a 2-job sweep (digits, resnet20, 3 epochs, optimizer.lr=0.05,0.1, logger=[tensorboard,mlflow]) in a
# scratch folder, serves it with `tensorboard` and `mlflow ui`, and writes tb_scalars.png, tb_hparams.png,
# mlflow_runs.png into <out dir>.
set -euo pipefail
root=$(realpath "$1"); out=$(realpath -m "$2"); py=${3:-python}
mkdir -p "$out"
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
fail() { echo "failed: $1 (log below)" >&2; tail -20 "$2" >&2; exit 1; }
cd "$work"
PYTHONPATH=$root "$py" -m resexp -m optimizer.lr=0.05,0.1 trainer.epochs=3 trainer.device=cpu trainer.progress=false \
    'logger=[tensorboard,mlflow]' hydra.sweep.dir=sweep > sweep.log 2>&1 || fail sweep sweep.log
# the MLflow store wherever that version put it: ./outputs/mlflow.db (issue 23's rule), ./mlflow.db or ./mlruns
store=$(ls -d outputs/mlflow.db mlflow.db mlruns 2>/dev/null | head -1 || true)
case $store in *.db) uri=sqlite:///$work/$store ;; *) uri=$work/$store ;; esac
"$py" -m tensorboard.main --logdir sweep --port 6111 --bind_all > tb.log 2>&1 &
"$py" -m mlflow ui --backend-store-uri "$uri" --port 6112 > mlflow.log 2>&1 &
for _ in $(seq 60); do curl -sf localhost:6111 > /dev/null && curl -sf localhost:6112 > /dev/null && break; sleep 1; done
shot() { chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1900,1000 \
    --virtual-time-budget=15000 --screenshot="$out/$1" "$2" > /dev/null 2>&1; }
shot tb_scalars.png "http://localhost:6111/#scalars&tagFilter=val%2F&_smoothingWeight=0"
shot tb_hparams.png "http://localhost:6111/#hparams"
experiment=$(PYTHONPATH=$root "$py" -c "import mlflow; print(mlflow.MlflowClient('$uri').get_experiment_by_name('resexp').experiment_id)")
shot mlflow_runs.png "http://localhost:6112/#/experiments/$experiment/runs?workflowType=machine_learning"
ls -la "$out"
