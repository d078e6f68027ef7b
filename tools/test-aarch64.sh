#!/usr/bin/env bash
# Runs the kernel crate's tests for aarch64 under qemu user-mode emulation,
# so the NEON level is checked against the scalar twins on an x86 host.
#
# Needs: rustup target aarch64-unknown-linux-gnu, aarch64-linux-gnu-gcc
# (linker + sysroot under /usr/aarch64-linux-gnu) and qemu-aarch64.
# `-cpu max` gives the emulated CPU every feature qemu knows (dotprod
# included), so the dotprod path is the one tested; QEMU_CPU=cortex-a72
# (no dotprod) tests the baseline NEON path instead.
#
# Only the library's unit tests and the integration tests are built
# (`--lib --tests`): examples may be x86-only benchmarks.
# Extra arguments go to `cargo test` (e.g. `-- simd_ggml` to filter).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/work/target-neon}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER:-qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu ${QEMU_CPU:-max}}"

exec cargo test -p qmoe-kernels --release --target aarch64-unknown-linux-gnu --lib --tests "$@"
