#!/usr/bin/env bash
# Environment for Ascend NPUs: source it before training (the train_*.sh scripts do so when CANN is
# installed). Values follow the ModelZoo recipe; override any of them by exporting it first.
for setenv in "${ASCEND_TOOLKIT_HOME:-/usr/local/Ascend/ascend-toolkit}/set_env.sh" \
              /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/nnae/set_env.sh; do
    if [ -f "$setenv" ]; then
        # shellcheck disable=SC1090
        source "$setenv"
        break
    fi
done
export TASK_QUEUE_ENABLE="${TASK_QUEUE_ENABLE:-1}"        # asynchronous operator dispatch
export HCCL_WHITELIST_DISABLE="${HCCL_WHITELIST_DISABLE:-1}"
export HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-1200}" # seconds to wait for all ranks (120..7200)
export HCCL_EXEC_TIMEOUT="${HCCL_EXEC_TIMEOUT:-1800}"
export COMBINED_ENABLE="${COMBINED_ENABLE:-1}"
