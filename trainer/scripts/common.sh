# shellcheck shell=bash disable=SC2034  # sourced: the variables set here are the sourcing script's
# Shared argument parsing for the ModelZoo-style entry points. Sourced, not run.
# Flags (all --name=value): --data_path (required), --work_dir, --config, --device, --nproc, --checkpoint,
# --epochs, --steps, --pretrained, each script taking those it names in `accepted`; anything after `--` is
# passed to `solov2` unchanged.

config="solov2_r50_fpn_1x_coco"
work_dir=""
device="auto"
nproc=""
checkpoint=""
epochs=""
steps=""
pretrained=""
data_path=""
extra=()
# The flags the sourcing script takes (it sets `accepted` first); any other is refused, not ignored.
accepted="${accepted:-data_path work_dir config device nproc checkpoint epochs steps pretrained}"

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
    exit 0
}

refuse() {
    echo "$(basename "$0"): unknown argument '$1' (this script takes --${accepted// /=, --}=, each as --name=value, and passes what follows -- to solov2; see --help)" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage ;;
        --) shift; extra=("$@"); break ;;
        --?*=*)
            name="${1%%=*}"
            name="${name#--}"
            if [[ ! "$name" =~ ^[a-z_]+$ || " $accepted " != *" $name "* ]]; then
                refuse "$1"
            fi
            printf -v "$name" '%s' "${1#*=}" ;;
        *) refuse "$1" ;;
    esac
    shift
done

if [ -z "$data_path" ]; then
    echo "$(basename "$0"): --data_path=DIR is required (COCO layout: annotations/, train2017/, val2017/)" >&2
    exit 2
fi
if [ ! -d "$data_path" ]; then
    echo "$(basename "$0"): --data_path: no directory '$data_path'" >&2
    exit 2
fi

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# Ascend: load CANN and the recommended HCCL settings when the toolkit is installed.
if [ -d /usr/local/Ascend ] || [ -n "${ASCEND_HOME_PATH:-}" ]; then
    # shellcheck source=env_npu.sh
    source "$script_dir/env_npu.sh"
fi

opts=()
if [ -n "$epochs" ]; then
    opts+=(--opts "train.epochs=$epochs")
fi

# The performance scripts' run: --steps=N iterations (default 500) from the start, no evaluation, in a
# fresh directory under the work dir that is deleted at the end (a measurement's checkpoint is of no use),
# then the throughput from its results.json as the FPS line.
performance_opts() {
    steps="${steps:-500}"
    if [[ ! "$steps" =~ ^[1-9][0-9]*$ ]]; then
        echo "$(basename "$0"): --steps: a positive number of iterations, not '$steps'" >&2
        exit 2
    fi
    opts+=(--no-eval --opts "train.max_iters=$steps")
}
performance_run_dir() {
    mkdir -p "$work_dir"
    run_dir="$(mktemp -d "$work_dir/run.XXXXXX")"
    trap 'rm -rf "$run_dir"' EXIT
}
report_fps() {
    local fps iterations
    fps="$(sed -n 's/^ *"images_per_second": \([0-9.eE+-]*\),*$/\1/p' "$run_dir/results.json" 2>/dev/null)"
    iterations="$(sed -n 's/^ *"iterations": \([0-9]*\),*$/\1/p' "$run_dir/results.json" 2>/dev/null)"
    if [ -z "$fps" ]; then
        echo "$(basename "$0"): no images_per_second in $run_dir/results.json: see $work_dir/train.log" >&2
        exit 1
    fi
    cp "$run_dir/results.json" "$work_dir/results.json"
    echo "FPS: $fps images/s over ${iterations:-$steps} iterations, all devices together, measured from the first progress" \
        "line on (train.log_interval: start-up and compilation come before it)" | tee -a "$work_dir/train.log"
}

# Backbone weights for a training from the start: --pretrained=FILE, or else, for the ResNet-50 configs,
# the ModelZoo layout's data/pretrained/resnet50.pth beside the data set (DIR/../pretrained) if it is there.
backbone_opts() {
    local seed_layout
    seed_layout="$(dirname "$data_path")/pretrained/resnet50.pth"
    if [ -z "$pretrained" ] && [[ "$config" == *r50* ]] && [ -f "$seed_layout" ]; then
        pretrained="$seed_layout"
    fi
    if [ -n "$pretrained" ]; then
        echo "$(basename "$0"): backbone weights: $pretrained" >&2
        opts+=(--opts "model.backbone.weights=$pretrained")
    fi
}
# The trainer: $SOLOV2, else `solov2` on the PATH, else this checkout's .venv (what `make setup` makes).
if [ -z "${SOLOV2:-}" ]; then
    SOLOV2=solov2
    if ! command -v solov2 >/dev/null 2>&1; then
        SOLOV2="$script_dir/../../.venv/bin/solov2"
        if [ ! -x "$SOLOV2" ]; then
            echo "$(basename "$0"): solov2 is not on the PATH: activate the environment it is installed in" \
                "(e.g. source .venv/bin/activate after make setup) or set SOLOV2=/path/to/solov2" >&2
            exit 2
        fi
    fi
fi
