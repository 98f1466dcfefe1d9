#!/bin/bash
# critest-hyper's lifecycle specs, for the default suite: pod sandboxes, containers, exec,
# attach, logs, networking and multi-container pods on the runtime handler `hyper`.
# timeout: 1500
# needs: containerd cni cri critest hyper-vmm containerd-shim-hyper-v1
CRITEST_FOCUS='basic operations on (container|PodSandbox)|Streaming|Multiple Containers|Networking|should support log'
# shellcheck source=critest-hyper.sh
. "$(dirname "${BASH_SOURCE[0]}")/critest-hyper.sh"
