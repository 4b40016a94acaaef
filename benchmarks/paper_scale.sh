#!/usr/bin/env bash
# The maintainer's recipe for the published paper-scale results (README, "At the paper's scale"):
# on a fresh GPU machine, install the suite, run the chosen runs of the `paper` profile on the GPU
# into an output folder of their own (never the cpu profile's reports/, figures/, results/), then
# build docs/paper_scale/ (Fig. 2, summary, paper scale vs cpu profile, runtimes) from them.
#
#   bash benchmarks/paper_scale.sh                    # Concrete and Energy on cuda
#   make paper-scale RUNS="01_tabular_regression:concrete" DEVICE=cuda:1
#   bash benchmarks/paper_scale.sh --set n_seeds=2    # arguments go to every runner call
#
# Variables (environment):
#   RUNS         paper-profile runs, NOTEBOOK:DATASET, space-separated
#                (default: 01_tabular_regression:concrete 01_tabular_regression:energy)
#   DEVICE       the notebooks' device parameter: cuda (default), cuda:N, cpu, auto
#   ENERGY_FILE  UCI Energy: ENB2012_data.xlsx, a .csv or the published 9-column text file
#                (default: data/energy/ENB2012_data.xlsx, else ../shared/data/energy/energy_y1.txt)
#   OUT          the runner's output folder (default: outputs/paper_scale; gitignored)
#   DOCS         where the docs go (default: docs/paper_scale)
#   CPU_RESULTS  the cpu profile's results folder compared against (default: results)
#   PY           the Python to use (default: .venv/bin/python)
#   INSTALL      1 (default): `make setup` (a venv with the pinned packages) when PY does not
#                exist; 0: never install. A GPU machine's own torch stack: PY=python3 (it needs
#                papermill, nbconvert and ipykernel beside torch; this checkout goes on PYTHONPATH)
# Exit status: 0 when every run succeeded and the docs were built; 1 when a run failed (the docs
# are still built from the runs that have results); 2 on bad input.
# the whole script is one function: bash has read it all before it runs (editing the file
# during an hours-long run cannot change what runs)
main() {
    set -uo pipefail
    cd "$(dirname "$0")/.."

    RUNS=${RUNS:-"01_tabular_regression:concrete 01_tabular_regression:energy"}
    DEVICE=${DEVICE:-cuda}
    OUT=${OUT:-outputs/paper_scale}
    DOCS=${DOCS:-docs/paper_scale}
    CPU_RESULTS=${CPU_RESULTS:-results}
    PY=${PY:-.venv/bin/python}
    INSTALL=${INSTALL:-1}
    if [ -z "${ENERGY_FILE:-}" ]; then
        ENERGY_FILE=data/energy/ENB2012_data.xlsx
        [ -e "$ENERGY_FILE" ] || ENERGY_FILE=../shared/data/energy/energy_y1.txt
    fi

    if ! command -v "$PY" >/dev/null 2>&1; then
        if [ "$INSTALL" = 1 ]; then
            make setup
        else
            echo "error: PY=$PY is not a Python; set PY, or INSTALL=1 to run make setup" >&2
            exit 2
        fi
    fi
    # this checkout's tda_utils, also for a Python without the editable install (the notebook
    # kernels inherit it)
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    export MPLBACKEND=Agg PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
    mkdir -p "$OUT/logs"
    "$PY" -c "import torch; print('torch', torch.__version__, '| cuda:', torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

    failed=0
    for run in $RUNS; do
        args=(--profile paper --only "$run" --output-dir "$OUT" --set "device=$DEVICE")
        if [ "${run#*:}" = energy ]; then
            if [ ! -e "$ENERGY_FILE" ]; then
                echo "error: no Energy file at ENERGY_FILE=$ENERGY_FILE" >&2
                exit 2
            fi
            args+=(--set "data_path=$(cd "$(dirname "$ENERGY_FILE")" && pwd)/$(basename "$ENERGY_FILE")")
        fi
        echo "== $run on $DEVICE (log: $OUT/logs/${run/:/__}.log)"
        if ! "$PY" -m tda_utils.reproduce "${args[@]}" "$@" 2>&1 | tee "$OUT/logs/${run/:/__}.log"; then
            echo "run $run failed (see its log)" >&2
            failed=1
        fi
    done

    "$PY" -m tda_utils.run.paper_scale --output-dir "$OUT" --docs-dir "$DOCS" \
        --cpu-results-dir "$CPU_RESULTS" || exit 2
    exit "$failed"
}
main "$@"
