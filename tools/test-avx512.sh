#!/usr/bin/env bash
# Runs kernel test binaries on an emulated AVX-512 CPU, so the AVX-512
# level is checked against the scalar twins on a host without AVX-512.
#
# QEMU's TCG does not emulate AVX-512; Bochs does (Debian's build has EVEX
# and a Tiger Lake model with AVX-512 F/BW/VL/VNNI). Bochs emulates a whole
# PC, so this script boots Debian's cloud kernel from an ISO with a tiny
# initramfs (busybox + the statically linked test binaries), runs each test
# binary under QMOE_EXPECT_AVX512=1 (tests then fail if the level is not
# detected), and reads the results from the emulated serial port.
#
# Usage: tools/test-avx512.sh [-p PACKAGE] TEST [TEST ...] [-- ARGS...]
#   PACKAGE  the crate whose tests run (default qmoe-kernels; e.g.
#            qmoe-model, whose tests read tests/fixtures and models/demo:
#            those folders are copied into the guest at the same paths);
#   TEST     an integration test name (`simd_ggml`, `simd_multi`, `gguf`,
#            ...) or `lib` for the library's unit tests;
#   ARGS     passed to every test binary (a name filter, `--exact`, ...).
# Example: tools/test-avx512.sh simd_ggml simd_multi -- q4_k
#          tools/test-avx512.sh -p qmoe-model gguf
#
# Needs (Debian): apt-get install bochs bochsbios vgabios busybox-static
#   isolinux syslinux-common xorriso cpio
# and downloads the kernel package with `apt-get download` (kept in the work
# directory, QMOE_AVX512_WORK, default target/avx512-bochs).
#
# Speed: Bochs runs about 25 million instructions a second here; booting
# takes about 3 minutes, and a test that takes 1 ms natively takes about
# 0.3 s. Filter the tests. QMOE_AVX512_TIMEOUT bounds the whole run
# (seconds, default 3000).
#
# The kernel command line turns off features that Debian 6.1's kernel trips
# over in Bochs 2.7's Tiger Lake model (the boot otherwise stops in a page
# fault loop before init): compacted XSAVE (its size is misreported), PKU,
# SMAP/SMEP, PCID, 1 GiB pages, FSGSBASE, x2APIC, the local APIC, ACPI and
# a few newer instructions the kernel would use itself. None of them is
# used by the kernels under test.
set -euo pipefail
cd "$(dirname "$0")/.."

tests=()
args=()
package=qmoe-kernels
if [[ ${1:-} == -p ]]; then
    package="${2:?-p needs a package name}"
    shift 2
fi
while (($#)); do
    if [[ $1 == -- ]]; then
        shift
        args=("$@")
        break
    fi
    tests+=("$1")
    shift
done
((${#tests[@]})) || { sed -n '2,20p' "$0"; exit 2; }

for tool in bochs xorriso cpio busybox; do
    command -v "$tool" >/dev/null || { echo "test-avx512: $tool not found (see the header of $0)" >&2; exit 2; }
done
[[ -f /usr/lib/ISOLINUX/isolinux.bin ]] || { echo "test-avx512: isolinux not installed" >&2; exit 2; }

work="${QMOE_AVX512_WORK:-$PWD/target/avx512-bochs}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
# One run at a time per work directory (they share the kernel, the ISO and
# the serial log); a second run waits here.
exec 9>"$work/lock"
flock 9

# 1. Test binaries, linked statically (the initramfs has no libc).
export CARGO_TARGET_DIR="$work/cargo"
build_args=()
for t in "${tests[@]}"; do
    if [[ $t == lib ]]; then build_args+=(--lib); else build_args+=(--test "$t"); fi
done
RUSTFLAGS="-C target-feature=+crt-static" cargo test -p "$package" --release \
    --target x86_64-unknown-linux-gnu --no-run --message-format=json "${build_args[@]}" \
    >"$work/build.json"
mapfile -t bins < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])
' "$work/build.json")
((${#bins[@]})) || { echo "test-avx512: no test binary built" >&2; exit 1; }

# 2. The kernel (Debian's cloud flavour: few drivers, quick to boot).
kernel="$work/vmlinuz"
if [[ ! -f $kernel ]]; then
    pkg="$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}')"
    [[ -n $pkg ]] || { echo "test-avx512: no linux-image-cloud-amd64 in apt (run apt-get update)" >&2; exit 2; }
    (cd "$work" && rm -rf kpkg && apt-get download "$pkg" >/dev/null && dpkg-deb -x "$pkg"_*.deb kpkg)
    cp "$work"/kpkg/boot/vmlinuz-* "$kernel"
fi

# 3. The initramfs: busybox, the binaries, and an init that runs them.
root="$work/root"
rm -rf "$root"
mkdir -p "$root"/{bin,proc,sys,dev,tmp,tests}
cp "$(command -v busybox)" "$root/bin/busybox"
for c in sh mount poweroff echo grep sleep sort tr; do ln -s busybox "$root/bin/$c"; done
names=()
for b in "${bins[@]}"; do
    name="$(basename "$b")"
    cp "$b" "$root/tests/$name"
    names+=("$name")
done
if [[ $package != qmoe-kernels ]]; then
    # Tests find their fixtures through CARGO_MANIFEST_DIR/../../tests.
    mkdir -p "$root$PWD/crates/${package#qmoe-}" "$root$PWD/tests" "$root$PWD/models"
    cp -r "$PWD/tests/fixtures" "$root$PWD/tests/"
    cp -r "$PWD/models/demo" "$root$PWD/models/"
fi
quoted_args=""
((${#args[@]})) && quoted_args="$(printf ' %q' "${args[@]}")"
{
    echo '#!/bin/sh'
    echo 'mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev'
    echo 'echo "QMOE-CPU $(grep -o -E "avx512[a-z_0-9]*" /proc/cpuinfo | sort -u | tr "\n" " ")"'
    echo 'export QMOE_EXPECT_AVX512=1 RUST_BACKTRACE=1'
    for n in "${names[@]}"; do
        echo "echo 'QMOE-RUN $n'"
        echo "/tests/$n --test-threads=1$quoted_args"
        echo "echo \"QMOE-RC $n \$?\""
    done
    echo 'echo QMOE-DONE'
    echo 'sleep 2'
    echo 'poweroff -f'
} >"$root/init"
chmod +x "$root/init"
(cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -1 >"$work/initrd.gz")

# 4. A bootable ISO and a Bochs configuration.
iso="$work/iso"
rm -rf "$iso"
mkdir -p "$iso/isolinux"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$iso/isolinux/"
cp "$kernel" "$iso/vmlinuz"
cp "$work/initrd.gz" "$iso/initrd.gz"
cmdline="console=ttyS0 nokaslr mitigations=off noapic nolapic nosmp nofsgsbase nox2apic ibt=off"
cmdline+=" no5lvl nogbpages nopcid noinvpcid nosmap nosmep nopku split_lock_detect=off"
cmdline+=" clearcpuid=pku,xsaves,xsavec,umip,rdpid,fsrm,waitpkg,movdiri,movdir64b,split_lock_detect"
cmdline+=" lsm=capability acpi=off hpet=disable clocksource=jiffies lpj=4800000 tsc=reliable no_timer_check"
cat >"$iso/isolinux/isolinux.cfg" <<EOF
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  APPEND initrd=/initrd.gz $cmdline
EOF
xorriso -as mkisofs -quiet -o "$work/boot.iso" -b isolinux/isolinux.bin -c isolinux/boot.cat \
    -no-emul-boot -boot-load-size 4 -boot-info-table "$iso" 2>/dev/null
megs=$(( 512 + $(du -sm "$root" | cut -f1) * 2 ))
# No sound: on a host without a sound card the speaker's ALSA output made
# Bochs abort at start (a fortified buffer overflow).
cat >"$work/bochsrc" <<EOF
megs: $megs
cpu: model=tigerlake, count=1, ips=200000000
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/bochs/VGABIOS-lgpl-latest
display_library: rfb, options="timeout=0"
ata0-master: type=cdrom, path=$work/boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$work/serial.out
clock: sync=none, time0=local
speaker: enabled=0
sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy
log: $work/bochs.log
panic: action=fatal
error: action=ignore
info: action=ignore
EOF
echo continue >"$work/bochs.rc"

# 5. Run, then read the results off the serial port. Debian's Bochs has its
# debugger built in: the rc file tells it to run. Without ACPI the guest
# cannot switch the machine off, so Bochs is stopped once the init script
# says it is done (or the kernel panics, or time runs out).
serial="$work/serial.out"
rm -f "$serial"
echo "test-avx512: booting Bochs (Tiger Lake model) with ${names[*]}; serial log $serial"
bochs -q -f "$work/bochsrc" -rc "$work/bochs.rc" </dev/null >"$work/bochs.out" 2>&1 &
bochs_pid=$!
trap 'kill "$bochs_pid" 2>/dev/null || true' EXIT
deadline=$((SECONDS + ${QMOE_AVX512_TIMEOUT:-3000}))
while kill -0 "$bochs_pid" 2>/dev/null && ((SECONDS < deadline)); do
    if grep -a -q -E '^QMOE-DONE|Kernel panic' "$serial" 2>/dev/null; then
        break
    fi
    sleep 2
done
kill "$bochs_pid" 2>/dev/null || true
wait "$bochs_pid" 2>/dev/null || true
[[ -f $serial ]] || { echo "test-avx512: no serial output (see $work/bochs.out)" >&2; exit 1; }
grep -a -E '^(QMOE-|test result|test .* FAILED|failures:|thread .* panicked)' "$serial" || true
grep -a -q '^QMOE-CPU .*avx512_vnni' "$serial" || { echo "test-avx512: the emulated CPU did not report AVX-512 VNNI" >&2; exit 1; }
grep -a -q '^QMOE-DONE' "$serial" || { echo "test-avx512: the run did not finish (timeout?)" >&2; exit 1; }
status=0
for n in "${names[@]}"; do
    rc="$(grep -a "^QMOE-RC $n " "$serial" | awk '{print $3}' | tr -d '\r')"
    if [[ $rc != 0 ]]; then
        echo "test-avx512: $n exited with ${rc:-nothing}" >&2
        status=1
    fi
done
((status == 0)) && echo "test-avx512: every test binary passed on the emulated AVX-512 CPU"
exit $status
