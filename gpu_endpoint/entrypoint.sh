#!/bin/sh
# The container's entrypoint. SageMaker starts it as `docker run IMAGE serve`; any arguments go to the
# server (python -m gpu_endpoint.server --help).
#
# CUDA forward compatibility, as SageMaker advises for images built on a newer CUDA than the host driver:
# the image is CUDA 13 (what onnxruntime-gpu 1.31.1 is built for, which needs driver 580 or newer), while
# SageMaker's inference AMIs may carry an older driver branch. When the host driver is older than the
# image's compat libcuda, that libcuda is put first on the library path (data-center GPUs only: A10G, L4,
# L40S, A100, H100... all qualify). With a new enough driver nothing changes.
set -eu

compat=/usr/local/cuda/compat/libcuda.so.1
if [ -f "$compat" ] && [ -r /proc/driver/nvidia/version ]; then
    compat_version=$(readlink "$compat" | cut -d. -f3-)
    driver_version=$(sed -n 's/^NVRM.*Kernel Module *\([0-9.]*\).*$/\1/p' /proc/driver/nvidia/version)
    if [ -n "$compat_version" ] && [ -n "$driver_version" ] && [ "$driver_version" != "$compat_version" ] \
        && [ "$(printf '%s\n%s\n' "$driver_version" "$compat_version" | sort -V | head -n 1)" = "$driver_version" ]; then
        echo "{\"event\":\"cuda_compat\",\"driver\":\"$driver_version\",\"compat\":\"$compat_version\"}"
        LD_LIBRARY_PATH="/usr/local/cuda/compat${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        export LD_LIBRARY_PATH
    fi
fi

exec python -m gpu_endpoint.server "$@"
