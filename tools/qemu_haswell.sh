#!/usr/bin/env bash
# Runs the qp-kernels test binaries under qemu-user emulating a Haswell CPU (AVX2+FMA, no
# AVX-512), with QP_MAX_ISA unset: any AVX-512 instruction reached through the dispatcher
# would kill the process with SIGILL, so passing tests show the dispatcher stays within
# what the CPU reports.
#
# Usage: tools/qemu_haswell.sh [-- EXTRA_BINARY [ARGS...] [-- EXTRA_BINARY [ARGS...]]...]
#   Each extra command after a `--` runs under the same emulated CPU after the kernels'
#   tests (e.g. the root crate's test binaries).
# Environment:
#   CARGO_TARGET_DIR  build dir (default /work/target-kernels, apart from the root crate's)
#   PROPTEST_CASES    proptest cases per property (default 32; emulation is slow)
#   QEMU              emulator (default /usr/bin/qemu-x86_64)
#   QEMU_CPU          emulated CPU model (default Haswell)
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-kernels}"
export PROPTEST_CASES="${PROPTEST_CASES:-32}"
QEMU="${QEMU:-/usr/bin/qemu-x86_64}"
QEMU_CPU="${QEMU_CPU:-Haswell}"
unset QP_MAX_ISA

if [[ ! -x "$QEMU" ]]; then
    echo "qemu_haswell: $QEMU not found (install qemu-user)" >&2
    exit 2
fi

# Extra commands, separated by `--`.
extra=()
current=""
for arg in "$@"; do
    if [[ "$arg" == "--" ]]; then
        [[ -n "$current" ]] && extra+=("$current")
        current=""
    else
        current+="$(printf '%q ' "$arg")"
    fi
done
[[ -n "$current" ]] && extra+=("$current")

echo "building qp-kernels test binaries (release) in $CARGO_TARGET_DIR" >&2
mapfile -t binaries < <(
    cargo test -p qp-kernels --release --no-run --message-format=json 2>/dev/null |
        jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null) | .executable'
)
if [[ ${#binaries[@]} -eq 0 ]]; then
    echo "qemu_haswell: no test binaries found (does 'cargo test -p qp-kernels --no-run' build?)" >&2
    exit 2
fi

# What the emulated CPU reports, so a wrong model shows up in the log.
if ! "$QEMU" -cpu "$QEMU_CPU" /bin/true; then
    echo "qemu_haswell: $QEMU cannot emulate CPU $QEMU_CPU" >&2
    exit 2
fi

failed=0
run() {
    echo "=== qemu -cpu $QEMU_CPU: $*" >&2
    if "$QEMU" -cpu "$QEMU_CPU" "$@"; then
        echo "=== ok: $1" >&2
    else
        local rc=$?
        # 132 = 128 + SIGILL: an instruction the emulated CPU lacks.
        [[ $rc -eq 132 ]] && echo "=== SIGILL in $1: an instruction beyond $QEMU_CPU was executed" >&2
        echo "=== FAILED ($rc): $1" >&2
        failed=1
    fi
}

for bin in "${binaries[@]}"; do
    # Benchmarks and ignored tests are skipped; --test-threads keeps emulation memory small.
    run "$bin" --test-threads=2
done
for cmd in "${extra[@]}"; do
    eval "run $cmd"
done

if [[ $failed -ne 0 ]]; then
    echo "qemu_haswell: some runs failed" >&2
    exit 1
fi
echo "qemu_haswell: all runs passed on an emulated $QEMU_CPU" >&2
