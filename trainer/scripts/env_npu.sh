#!/usr/bin/env bash
# Environment for Ascend NPUs: source it before training (the train_*.sh scripts do so when CANN is
# installed). Values follow the ModelZoo recipe; override any of them by exporting it first.

# CANN's set_env.sh extends variables that may be unset (LD_LIBRARY_PATH, PYTHONPATH): it is sourced
# with `set -u` off, whatever the calling script uses. Newer CANN releases install to Ascend/cann.
_solov2_nounset=0
case $- in *u*) _solov2_nounset=1; set +u ;; esac
_solov2_cann=""
for setenv in "${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit}/set_env.sh" \
              /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/cann/set_env.sh \
              /usr/local/Ascend/nnae/set_env.sh; do
    if [ -f "$setenv" ]; then
        # shellcheck disable=SC1090
        source "$setenv"
        _solov2_cann="$setenv"
        break
    fi
done
if [ "$_solov2_nounset" = 1 ]; then
    set -u
fi
if [ -z "$_solov2_cann" ]; then
    echo "env_npu.sh: found no CANN set_env.sh (in \$ASCEND_TOOLKIT_HOME or /usr/local/Ascend/{ascend-toolkit,cann,nnae});" \
         "using the environment as it is" >&2
fi
unset _solov2_nounset _solov2_cann

export TASK_QUEUE_ENABLE="${TASK_QUEUE_ENABLE:-1}"        # asynchronous operator dispatch
export HCCL_WHITELIST_DISABLE="${HCCL_WHITELIST_DISABLE:-1}"
export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-1200}" # seconds to wait for all ranks (120..7200)
# How long a collective may wait on the device: as long as the trainer's own collective timeout.
export HCCL_EXEC_TIMEOUT="${HCCL_EXEC_TIMEOUT:-${SOLOV2_DIST_TIMEOUT_SECONDS:-1800}}"
export COMBINED_ENABLE="${COMBINED_ENABLE:-1}"
