#!/usr/bin/env bash
# Runs the kernel crate's tests for aarch64 under qemu user-mode emulation,
# so the NEON level is checked against the scalar twins on an x86 host.
#
# Needs: rustup target aarch64-unknown-linux-gnu, aarch64-linux-gnu-gcc
# (linker + sysroot under /usr/aarch64-linux-gnu) and qemu-aarch64.
# The NEON level uses baseline ARMv8.0 instructions only, so any emulated
# CPU runs it; QEMU_CPU picks one (default `max`, e.g. QEMU_CPU=cortex-a53).
# tests/simd_neon.rs fails if the NEON level is not detected, so a run that
# passes has checked every NEON kernel against its scalar twin.
#
# Only the library's unit tests and the integration tests are built
# (`--lib --tests`): examples may be x86-only benchmarks.
# Builds go to their own target directory (QMOE_AARCH64_TARGET_DIR, default
# target/aarch64-qemu), so they neither wait on nor disturb x86 builds.
# Extra arguments go to `cargo test` (e.g. `--test simd_ggml`).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${QMOE_AARCH64_TARGET_DIR:-$PWD/target/aarch64-qemu}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER:-aarch64-linux-gnu-gcc}"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="${CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER:-qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu ${QEMU_CPU:-max}}"

exec cargo test -p qmoe-kernels --release --target aarch64-unknown-linux-gnu --lib --tests "$@"
