#!/usr/bin/env bash
# GPU measurements on a machine without a Rust toolchain (a lent device, a render node):
# build here, carry `devbin/` (xz-compressed; and the Vulkan loader packages) there, run there.
#
#   bash scripts/gpu-check.sh build        # here: optimised binaries -> devbin/ (git-ignored), stripped
#   bash scripts/gpu-check.sh run OUTDIR [CHECK...]   # there: each check (default: all)
#                                          # under its own time limit, one log each in OUTDIR
#
# `run` unpacks `.gl/*.deb` (libvulkan1 etc., downloaded as the device README says) when
# present. The checks, in order (12-14 minutes on an H200; their limits add up to 43 minutes, so
# split them over calls where one call may run 10 — the targets first:
# `run OUT info sample-auto preprocess-auto`, then `run OUT sample-matrix preprocess-matrix
# matrix`, then `run OUT models-matrix train-auto kernels`, then `run OUT models-auto
# parallel memory`):
#   info                         adapter, limits, self-check
#   gemm present embed           the GEMM / Winograd, storage-texture and lent-device tests
#   kernels                      Winograd F(2x2) / F(4x4) rows against the direct conv
#   models-direct models-auto    UNet call, VAE decoder, reward backward (T2V_CONV_PATH)
#   sample-direct sample-auto    4/8/16-step samples at VideoCrafter2 size (f16 weights, video-to-video)
#   preprocess-auto              motion-guided preprocessing on the 200-point grid
#   train-auto                   one training step at full size: time and live peak memory
#   parallel                     determinism on the GPU: two devices on it train the one-device
#                                steps bit for bit, a resumed run the uninterrupted one
#   memory                       recomputation (LoRA too) on the GPU, and the out-of-memory
#                                fallbacks under --max-memory-style limits
#   matrix                       the matrix-core GEMM (cooperative matrices, f16 inputs): its
#                                test, the unet3d fixture on it, `info --matrix-cores`
#                                (kernels has its bench rows)
#   models-matrix sample-matrix  the models (profiled per kernel), the samples and the
#   preprocess-matrix            motion-guided preprocessing with T2V_MATRIX_CORES=1 (f16
#                                GEMM inputs: the preprocessing target is not an f32 one)
set -uo pipefail
cd "$(dirname "$0")/.."

# `cargo ... --no-run` names each executable with its source: "Executable benches/x.rs (path)"
exe() { sed -n "s|.*Executable $1 (\(.*\))\$|\1|p" devbin/build.log | tail -1; }

case "${1:-}" in
build)
    set -e
    rm -rf devbin && mkdir devbin
    {
        cargo build --release --bin t2v-turbo
        cargo bench --no-run -p t2v-kernels --bench kernels
        cargo bench --no-run -p t2v-turbo --bench models --bench pipeline
        cargo test --release --no-run -p t2v-kernels --test gemm --test present
        cargo test --release --no-run -p t2v-turbo --test embed --test diffusion --test pipeline
    } 2>&1 | tee devbin/build.log
    cp target/release/t2v-turbo devbin/
    # (paths relative to their package: kernels/benches/kernels.rs is benches/kernels.rs)
    # source:name (the pipeline bench and the pipeline tests share a file name)
    for pair in benches/kernels.rs:kernels benches/models.rs:models benches/pipeline.rs:pipeline tests/gemm.rs:gemm \
        tests/present.rs:present tests/embed.rs:embed tests/diffusion.rs:diffusion tests/pipeline.rs:pipeline-tests; do
        src=${pair%%:*}
        f=$(exe "$src")
        [ -n "$f" ] || { echo "no executable for $src in devbin/build.log" >&2; exit 1; }
        cp "$f" "devbin/${pair##*:}"
    done
    rm devbin/build.log
    strip devbin/*
    xz -T0 -6 devbin/* # ~4x smaller: what travels to a lent device is limited (64 MiB)
    pwd > devbin/manifest_dir # the tests find assets/ through the path they were built in
    du -sh devbin
    ;;
run)
    out="${2:?usage: gpu-check.sh run OUTDIR [CHECK...]}"
    [ -f devbin/manifest_dir ] || { echo "no devbin/: run 'bash scripts/gpu-check.sh build' where cargo is, and bring devbin/ along" >&2; exit 1; }
    mkdir -p "$out"
    if ls .gl/*.deb >/dev/null 2>&1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    for f in devbin/*.xz; do [ -e "$f" ] && xz -dkf "$f"; done
    built=$(cat devbin/manifest_dir)
    if [ "$built" != "$PWD" ] && [ ! -e "$built" ]; then mkdir -p "$(dirname "$built")" && ln -s "$PWD" "$built"; fi
    shift 2
    step() { # name, seconds, command...
        local name=$1 limit=$2; shift 2
        [ -z "$only" ] || [[ " $only " == *" $name "* ]] || return 0
        local t0=$SECONDS
        timeout "$limit" "$@" > "$out/$name.log" 2>&1
        echo "== $name: rc $? in $((SECONDS - t0)) s (limit $limit)"
        tail -n 6 "$out/$name.log"
    }
    only="$*"
    known=" info gemm present embed kernels models-direct models-auto sample-direct sample-auto preprocess-auto train-auto parallel memory matrix models-matrix sample-matrix preprocess-matrix "
    for c in $only; do [[ "$known" == *" $c "* ]] || { echo "unknown check $c; the checks:$known" >&2; exit 2; }; done
    step info 60 devbin/t2v-turbo info
    step gemm 120 devbin/gemm --test-threads 1
    step present 60 devbin/present
    step embed 120 devbin/embed
    step kernels 150 devbin/kernels --bench
    step models-direct 90 env T2V_CONV_PATH=direct devbin/models --bench
    step models-auto 90 env T2V_CONV_PATH=auto devbin/models --bench
    step sample-direct 150 env T2V_CONV_PATH=direct devbin/pipeline --bench --once --sections sample
    step sample-auto 150 env T2V_CONV_PATH=auto devbin/pipeline --bench --once --sections sample
    step preprocess-auto 300 env T2V_CONV_PATH=auto devbin/pipeline --bench --once --sections preprocess --grid 200
    # the training step's live peak (does full-size training fit 80 GB?); its record is
    # preprocessed on the 50-point grid to keep the inversion short
    step train-auto 240 env T2V_CONV_PATH=auto devbin/pipeline --bench --once --sections train --grid 50
    step parallel 180 devbin/pipeline-tests two_devices a_resumed_run --test-threads 1
    step memory 180 devbin/pipeline-tests recomputation a_group_of_inversions --test-threads 1
    step matrix 120 sh -c 'devbin/t2v-turbo info --matrix-cores && devbin/gemm matrix_core --nocapture && devbin/diffusion matrix_cores --nocapture'
    step models-matrix 120 env T2V_MATRIX_CORES=1 T2V_PROFILE=1 devbin/models --bench
    step sample-matrix 150 env T2V_MATRIX_CORES=1 devbin/pipeline --bench --once --sections sample
    step preprocess-matrix 300 env T2V_MATRIX_CORES=1 devbin/pipeline --bench --once --sections preprocess --grid 200
    ;;
*)
    sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
