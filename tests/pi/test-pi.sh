#!/usr/bin/env bash
# make test-pi: the box's own OS, emulated. A Debian bookworm arm64 root (Raspberry Pi OS
# bookworm's base: the same Python 3.11.2) under qemu-user with the Pi 4's CPU model:
#
#   1. builds the root once with debootstrap (cached in build/pi-root; PI_REBUILD=1 builds it again)
#   2. copies it to build/pi-work and runs firmware_cfg/provision.sh inside, with its package and
#      venv steps and --read-only-root, twice; the second run must leave the same system as the
#      first (file tree with owners, permissions, sizes and contents; users and groups; enabled units)
#   3. runs the device test suite there with the provisioned venv (the root's own Python)
#   4. runs `python -m device selftest` as user pedal on the bundle provision.sh installed (every
#      precision), beside the same self-test on this machine
#
# Needs root (debootstrap, chroot, mounts) and apt (qemu-user-static, binfmt-support,
# debootstrap). binfmt_misc is mounted and qemu-aarch64 enabled only for the run when they were
# not already; everything mounted is unmounted at the end. Timing checks mean nothing under
# emulation (about 100x slower): the self-test runs --correctness-only and timing tests skip.
#
# Environment: PI_MIRROR (default: the first Debian mirror in /etc/apt/sources.list*),
# PI_CPU (cortex-a72 = Pi 4; cortex-a76 = Pi 5), PI_BUILD (default build/), PI_REBUILD=1,
# PEDAL_TEST_BUNDLE (default build/testkit/tiny.pedal), PI_TESTS (pytest arguments, default tests/device).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=tests/pi/lib.sh
source "$REPO/tests/pi/lib.sh"  # safe_rm, copy_checkout
BUILD="${PI_BUILD:-$REPO/build}"
BASE="$BUILD/pi-root"        # bookworm arm64 as debootstrap leaves it (+ a Pi-like login user and /boot/firmware)
WORK="$BUILD/pi-work"        # this run's copy: provisioned and tested, kept for a look afterwards
CACHE="$BUILD/pi-cache"      # apt's .debs and pip's downloads, kept between runs
BASE_VERSION="bookworm-arm64-2"  # change when the base recipe below changes: the cache is rebuilt
PI_CPU="${PI_CPU:-cortex-a72}"
BUNDLE="${PEDAL_TEST_BUNDLE:-build/testkit/tiny.pedal}"
PI_TESTS="${PI_TESTS:-tests/device}"
NICE=(nice -n 10)
T0=$(date +%s)
declare -a TIMES=()

say() { printf '\n==> %s\n' "$*"; }
die() { printf 'test-pi: error: %s\n' "$*" >&2; exit 1; }
lap() { TIMES+=("$(printf '%-34s %5d s' "$1" $(( $(date +%s) - $2 )))"); }

[[ $EUID -eq 0 ]] || die "run as root (debootstrap, chroot and mounts need it): sudo make test-pi"
[[ -f $REPO/$BUNDLE ]] || die "$BUNDLE is missing: make $BUNDLE (the host environment converts it)"
case "$(uname -m)" in
    aarch64) NATIVE=1 ;;
    x86_64) NATIVE=0 ;;
    *) die "this runs on x86_64 (emulated) or aarch64 (native), not $(uname -m)" ;;
esac

# --- host tools ---------------------------------------------------------------------------------
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
if [[ $NATIVE == 0 ]]; then
    [[ -x /usr/bin/qemu-aarch64-static ]] || need+=(qemu-user-static)
    command -v update-binfmts >/dev/null || need+=(binfmt-support)
fi
if [[ ${#need[@]} -gt 0 ]]; then
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if [[ -z ${PI_MIRROR:-} ]]; then
    PI_MIRROR="$(grep -hoE '^(URIs:|deb) +https?://[^ ]*debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
                 | grep -v security | head -n 1 | awk '{print $NF}' || true)"
    PI_MIRROR="${PI_MIRROR:-http://deb.debian.org/debian}"
fi

# --- mounts and binfmt, all undone at exit ---------------------------------------------------------
declare -a UNDO=()
cleanup() {
    local i
    for (( i=${#UNDO[@]}-1; i>=0; i-- )); do eval "${UNDO[i]}" || echo "test-pi: could not undo: ${UNDO[i]}" >&2; done
}
trap cleanup EXIT
if [[ $NATIVE == 0 ]]; then
    if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        UNDO+=("umount /proc/sys/fs/binfmt_misc")
    fi
    if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
        update-binfmts --enable qemu-aarch64
        UNDO+=("update-binfmts --disable qemu-aarch64")
    fi
fi
export QEMU_CPU="$PI_CPU"  # read by qemu-aarch64 for every program in the root

# Run a command inside a root, with a clean environment.
in_root() {  # root command...
    local root="$1"; shift
    "${NICE[@]}" chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        HOME=/root LANG=C.UTF-8 TERM=dumb QEMU_CPU="$PI_CPU" DEBIAN_FRONTEND=noninteractive "$@"
}

# /proc and /dev for a root; not /sys: ai-edge-litert's CPU detection crashes under qemu when it
# can read the host's /proc and /sys both (the files below stand in for the Pi 4's four cores).
# Never the host's /dev: a bind mount left behind by an interrupted run turns a later `rm -rf` of
# the root into a deletion of this machine's device nodes (it happened). The few nodes the tests
# need are made inside the root instead.
mount_root() {  # root
    local root="$1" spec name maj min
    mount -t proc proc "$root/proc"; UNDO+=("umount -l '$root/proc'")
    mkdir -p "$root/dev/shm" "$root/dev/pts"
    for spec in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
        IFS=: read -r name maj min <<< "$spec"
        [[ -c "$root/dev/$name" ]] || { rm -f "$root/dev/$name"; mknod -m 666 "$root/dev/$name" c "$maj" "$min"; }
    done
    ln -sfn /proc/self/fd "$root/dev/fd"
    # terminals (pty.openpty in the tests, apt's log): a devpts of the root's own (newinstance), not
    # the host's; it holds no files of the host and safe_rm unmounts it like the others
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"; UNDO+=("umount -l '$root/dev/pts'")
    ln -sfn pts/ptmx "$root/dev/ptmx"
}

# --- 1. the base root (cached) -------------------------------------------------------------------
t=$(date +%s)
if [[ ${PI_REBUILD:-0} == 1 || "$(cat "$BASE/.pi-root-version" 2>/dev/null)" != "$BASE_VERSION" ]]; then
    say "building the bookworm arm64 root in $BASE (debootstrap from $PI_MIRROR; a few minutes)"
    safe_rm "$BASE" "$BASE.partial"
    mkdir -p "$BUILD"
    "${NICE[@]}" debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,python3-venv,ca-certificates,systemd,procps bookworm "$BASE.partial" "$PI_MIRROR" \
        > "$BUILD/pi-debootstrap.log" 2>&1 || { tail -20 "$BUILD/pi-debootstrap.log"; die "debootstrap failed (log: $BUILD/pi-debootstrap.log)"; }
    in_root "$BASE.partial" /debootstrap/debootstrap --second-stage >> "$BUILD/pi-debootstrap.log" 2>&1 \
        || { tail -20 "$BUILD/pi-debootstrap.log"; die "debootstrap's second stage failed (log: $BUILD/pi-debootstrap.log)"; }
    # What Raspberry Pi OS Lite has and minbase lacks, as far as provision.sh and the tests care:
    # systemd and procps (the units' /bin/kill), a login user with uid 1000 (the Imager makes one),
    # /boot/firmware with config.txt and cmdline.txt.
    in_root "$BASE.partial" useradd --create-home --uid 1000 --shell /bin/bash pi
    mkdir -p "$BASE.partial/boot/firmware"
    printf '# stock config.txt (test-pi)\ndtparam=audio=on\ncamera_auto_detect=1\nauto_initramfs=1\n\n[all]\n' \
        > "$BASE.partial/boot/firmware/config.txt"
    printf 'console=serial0,115200 console=tty1 root=PARTUUID=0000000-02 rootfstype=ext4 fsck.repair=yes rootwait\n' \
        > "$BASE.partial/boot/firmware/cmdline.txt"
    echo pedal > "$BASE.partial/etc/hostname"
    mkdir -p "$BASE.partial/sys/devices/system/cpu"
    echo 0-3 > "$BASE.partial/sys/devices/system/cpu/possible"
    echo 0-3 > "$BASE.partial/sys/devices/system/cpu/present"
    # pip inside needs the CA certificates this machine trusts (a proxy's, here)
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        cp /usr/local/share/ca-certificates/*.crt "$BASE.partial/usr/local/share/ca-certificates/"
        in_root "$BASE.partial" update-ca-certificates >/dev/null 2>&1
    fi
    echo "$BASE_VERSION" > "$BASE.partial/.pi-root-version"
    mv "$BASE.partial" "$BASE"
    lap "base root (debootstrap, built)" "$t"
else
    say "using the cached root $BASE ($(cat "$BASE/.pi-root-version"); PI_REBUILD=1 builds it again)"
    lap "base root (cached)" "$t"
fi

# --- 2. a fresh copy, provisioned twice ------------------------------------------------------------
t=$(date +%s)
say "copying the root to $WORK, with this checkout in /src"
safe_rm "$WORK"
cp -a "$BASE" "$WORK"
mkdir -p "$WORK/src" "$CACHE/apt" "$CACHE/pip"
copy_checkout "$REPO" "$WORK/src"
mkdir -p "$WORK/src/$(dirname "$BUNDLE")"
cp "$REPO/$BUNDLE" "$WORK/src/$BUNDLE"
cp /etc/resolv.conf "$WORK/etc/resolv.conf"
mount_root "$WORK"
mount --bind "$CACHE/apt" "$WORK/var/cache/apt/archives"; UNDO+=("umount -l '$WORK/var/cache/apt/archives'")
mkdir -p "$WORK/root/.cache/pip"
mount --bind "$CACHE/pip" "$WORK/root/.cache/pip"; UNDO+=("umount -l '$WORK/root/.cache/pip'")
lap "copy of the root" "$t"

python_version="$(in_root "$WORK" python3 -c 'import platform; print(platform.python_version(), platform.machine())')"
hwcaps="$(in_root "$WORK" python3 -c '
import ctypes
libc = ctypes.CDLL(None); libc.getauxval.restype = ctypes.c_ulong
hw, hw2 = libc.getauxval(16), libc.getauxval(26)
print("SVE" if hw & (1 << 22) else "no SVE", "SME" if hw2 & (1 << 23) else "no SME")')"
say "root: Python $python_version; CPU model $PI_CPU ($hwcaps)"

PROVISION=(/src/firmware_cfg/provision.sh --user pi --bundle "/src/$BUNDLE" --read-only-root --data-partition LABEL=pedal-data)

# Everything provision.sh may change, as sorted text: the file tree (type and mode, owner, size,
# link target), the SHA-256 of every file's contents, users and groups, enabled units. Left out,
# each for a reason: the mount points and this test's own mounts (proc, dev, sys, run, tmp, src,
# the apt and pip caches), apt's package lists and logs (apt-get update rewrites them, and that is
# apt's business), dpkg's and debconf's "-old" backups, and times (a second copy of the code is the
# same code).
PRUNE=(\( -path ./proc -o -path ./dev -o -path ./sys -o -path ./run -o -path ./tmp -o -path ./src
       -o -path ./var/cache/apt -o -path ./var/lib/apt/lists -o -path ./var/log -o -path ./root/.cache
       -o -name '*-old' \) -prune)
snapshot() {  # root out
    (cd "$1" && find . -xdev "${PRUNE[@]}" -o -printf '%p\t%M\t%U:%G\t%s\t%l\n' | sort) > "$2.tree"
    (cd "$1" && find . -xdev "${PRUNE[@]}" -o -type f -print0 | sort -z | xargs -0 sha256sum) > "$2.contents"
    cat "$1"/etc/{passwd,group,shadow,gshadow} > "$2.users"
    (cd "$1" && find etc/systemd/system -type l -printf '%p -> %l\n' | sort) > "$2.units"
}

for run in 1 2; do
    t=$(date +%s)
    say "provision.sh, run $run: ${PROVISION[*]}"
    if ! in_root "$WORK" "${PROVISION[@]}" > "$BUILD/pi-provision-$run.log" 2>&1; then
        tail -40 "$BUILD/pi-provision-$run.log"
        die "provision.sh failed in the emulated root (run $run; log: $BUILD/pi-provision-$run.log)"
    fi
    grep -E '^==>|warning|error' "$BUILD/pi-provision-$run.log" | sed 's/^/    /'
    lap "provision.sh run $run" "$t"
    t=$(date +%s)
    snapshot "$WORK" "$BUILD/pi-snapshot-$run"
    lap "snapshot $run" "$t"
done

say "idempotence: the second run leaves the system the first left"
same=1
for part in tree contents users units; do
    if diff -u "$BUILD/pi-snapshot-1.$part" "$BUILD/pi-snapshot-2.$part" > "$BUILD/pi-snapshot.$part.diff"; then
        printf '    %-6s same (%d lines)\n' "$part" "$(wc -l < "$BUILD/pi-snapshot-1.$part")"
    else
        same=0
        printf '    %-6s DIFFERENT:\n' "$part"
        head -40 "$BUILD/pi-snapshot.$part.diff" | sed 's/^/      /'
    fi
done
echo "    enabled units:"; sed 's/^/      /' "$BUILD/pi-snapshot-1.units"
echo "    pedal user: $(grep '^pedal:' "$WORK/etc/passwd")  groups: $(grep -E '[:,]pedal(,|$)' "$WORK/etc/group" | cut -d: -f1 | tr '\n' ' ')"

# --- 3. the device test suite on the box's Python ------------------------------------------------------
t=$(date +%s)
# Test-only packages go to a folder of their own, not into the box's venv provision.sh made.
testlib=""
if [[ -f $WORK/src/requirements/device-test.txt ]]; then
    in_root "$WORK" /opt/pedal/venv/bin/python -m pip install -q --disable-pip-version-check --target /opt/pedal-test-lib \
        -r /src/requirements/device-test.txt > "$BUILD/pi-test-lib.log" 2>&1 \
        && testlib=":/opt/pedal-test-lib" || echo "test-pi: warning: requirements/device-test.txt did not install ($BUILD/pi-test-lib.log)" >&2
fi
lap "test-only packages" "$t"
t=$(date +%s)
say "device tests in the root: /opt/pedal/venv/bin/python -m pytest $PI_TESTS"
tests_ok=1
in_root "$WORK" sh -c "cd /src && PEDAL_TEST_BUNDLE=/src/$BUNDLE PYTHONPATH=/src$testlib /opt/pedal/venv/bin/python -m pytest -q \
    -p no:cacheprovider -rs --durations=15 $PI_TESTS" 2>&1 | tee "$BUILD/pi-tests.log" | tail -60 || true
grep -qE '^[0-9]+ passed' "$BUILD/pi-tests.log" && ! grep -qE '[0-9]+ (failed|error)' "$BUILD/pi-tests.log" || tests_ok=0
lap "device tests (emulated)" "$t"

# --- 4. the self-test, as the daemon's user, against the host's -------------------------------------------
t=$(date +%s)
installed="/var/lib/pedal/bundles/$(basename "$BUNDLE")"
say "python -m device selftest on $installed (emulated aarch64, as user pedal)"
selftest_ok=1
in_root "$WORK" runuser -u pedal -- sh -c "cd /opt/pedal && /opt/pedal/venv/bin/python -m device selftest --bundle $installed" \
    2>&1 | tee "$BUILD/pi-selftest.log" || true
grep -q "^self-test: PASS" "$BUILD/pi-selftest.log" || selftest_ok=0
grep -q "correctness only" "$BUILD/pi-selftest.log" || { selftest_ok=0; echo "test-pi: the self-test did not notice the emulation" >&2; }
lap "self-test (emulated)" "$t"
if [[ -x $REPO/.venv-device/bin/python ]]; then
    (cd "$REPO" && .venv-device/bin/python -m device selftest --bundle "$BUNDLE" --correctness-only > "$BUILD/pi-selftest-host.log" 2>&1) || true
    say "golden vectors, SNR vs PyTorch: this machine ($(uname -m)) | emulated $PI_CPU"
    for prec in float32 float16 dynamic_int8 int8; do
        h="$(grep -oE "^(PASS|FAIL)  $prec: golden vectors [0-9.inf]+ dB" "$BUILD/pi-selftest-host.log" | awk '{print $1, $5}')"
        e="$(grep -oE "^(PASS|FAIL)  $prec: golden vectors [0-9.inf]+ dB" "$BUILD/pi-selftest.log" | awk '{print $1, $5}')"
        [[ -n $h$e ]] && printf '    %-13s %-14s | %s\n' "$prec" "${h:--} dB" "${e:--} dB"
    done
fi

# --- summary -------------------------------------------------------------------------------------------
lap "total" "$T0"
say "test-pi: times (QEMU_CPU=$PI_CPU, Python $python_version)"
printf '    %s\n' "${TIMES[@]}"
status=0
[[ $same == 1 ]] || { echo "FAIL: provision.sh run twice differs from run once ($BUILD/pi-snapshot.*.diff)"; status=1; }
[[ $tests_ok == 1 ]] || { echo "FAIL: device tests in the emulated root ($BUILD/pi-tests.log)"; status=1; }
[[ $selftest_ok == 1 ]] || { echo "FAIL: self-test in the emulated root ($BUILD/pi-selftest.log)"; status=1; }
[[ $status == 0 ]] && echo "test-pi: PASS (root kept in $WORK)"
exit $status
