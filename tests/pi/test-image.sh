#!/usr/bin/env bash
# make test-image: `make image` on a stand-in Raspberry Pi OS image, checked file by file.
#
# No Raspberry Pi OS image can be downloaded here, so this builds one with the same layout, without
# mounting anything: an MBR; partition 1 FAT32 labelled bootfs (config.txt, cmdline.txt and the
# overlays the pedal names, as Raspberry Pi OS bookworm ships them); partition 2 ext4 labelled rootfs,
# filled with `mkfs.ext4 -d` from the cached emulated root of `make test-pi` (build/pi-root, when it
# is there and readable) or from a small tree. Then:
#
#   1. make image BASE=base.img OUT=... BUNDLE=...   (as user nobody when this runs as root: no root needed;
#      the files from a snapshot of this checkout, PEDAL_SRC, so that edits made meanwhile do not count)
#      and every check below: the partition table and the MBR unchanged, config.txt = the stock one
#      + the SignalTrain-Pi block exactly once, the original kept, cmdline.txt untouched, ssh and
#      pedal-firstboot.conf on the boot partition, every file of /opt/pedal/src and the first-boot
#      unit, script, link, hostname and pedal.toml in the root with the right content, mode and owner
#      (debugfs), nothing else under /opt/pedal/src, fsck.fat -n and e2fsck -fn clean, nothing mounted
#   2. the same again: the same files
#   3. a pedal image as the base: still one block, still the stock original, files replaced
#   4. an .img.xz base; refusals (no base, not a Raspberry Pi OS image) leave no output behind
#   5. as root, with build/pi-root cached (make test-pi) and qemu-user: the first boot itself. The
#      image's root is unpacked with debugfs rdump and its boot partition with mtools into
#      build/pi-image-root; /usr/local/sbin/pedal-firstboot runs there in a chroot under qemu (the
#      Pi 4's CPU): provision.sh with apt and PyPI (network needed), then the checks that it ran,
#      renamed its conf, blanked the password and disabled itself. IMAGE_FIRSTBOOT=0 skips it.
#
# Needs: sfdisk (fdisk), mtools, dosfstools, e2fsprogs, xz-utils; installed with apt when missing and
# this runs as root. Work files: build/image-test (about 1.5 GB, sparse).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=tests/pi/lib.sh
source "$REPO/tests/pi/lib.sh"  # safe_rm, copy_checkout
T="$REPO/build/image-test"
PI_ROOT="$REPO/build/pi-root"
FB_ROOT="$REPO/build/pi-image-root"    # the first-boot check's unpacked root (removed with safe_rm only)
CACHE="$REPO/build/pi-cache"
PI_CPU="${PI_CPU:-cortex-a72}"
NICE=(nice -n 10)
T0=$(date +%s)
FAILS=0
declare -a TIMES=()

say()  { printf '\n==> %s\n' "$*"; }
ok()   { printf '    ok    %s\n' "$*"; }
bad()  { printf '    FAIL  %s\n' "$*"; FAILS=$((FAILS + 1)); }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
die()  { printf 'test-image: error: %s\n' "$*" >&2; exit 1; }
lap()  { TIMES+=("$(printf '%-44s %5d s' "$1" $(( $(date +%s) - $2 )))"); }

cd "$REPO"
need=()
command -v sfdisk >/dev/null || need+=(fdisk)
command -v mcopy >/dev/null || need+=(mtools)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v debugfs >/dev/null || need+=(e2fsprogs)
command -v xz >/dev/null || need+=(xz-utils)
if [[ ${#need[@]} -gt 0 ]]; then
    [[ $EUID == 0 ]] || die "missing ${need[*]}: sudo apt-get install ${need[*]}"
    say "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export MTOOLS_SKIP_CHECK=1

mkdir -p "$T"
rm -rf "${T:?}"/*    # build/image-test holds only this test's files (never a pi-* root)
# make image takes the files from a snapshot of this checkout (PEDAL_SRC), so that the runs below
# compare equal while someone edits the tree; the checks compare with the same snapshot
SRC="$T/src"
mkdir -p "$SRC"
(cd "$REPO" && find device firmware_cfg requirements -name __pycache__ -prune -o -name '*.pyc' -o \( -type f -o -type l \) -print0 \
    | tar --null -T - -cf -) | tar -xf - -C "$SRC"
export PEDAL_SRC="$SRC"
cd "$SRC"

# --- the stand-in base image -------------------------------------------------------------------------
STOCK_CONFIG="$T/stock-config.txt"
cat > "$STOCK_CONFIG" <<'EOF'
# For more options and information see
# http://rptl.io/configtxt
# Some settings may impact device functionality. See link above for details

# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Additional overlays and parameters are documented
# /boot/firmware/overlays/README

# Automatically load overlays for detected cameras
camera_auto_detect=1

# Automatically load overlays for detected DSI displays
display_auto_detect=1

# Automatically load initramfs files, if found
auto_initramfs=1

# Enable DRM VC4 V3D driver
dtoverlay=vc4-kms-v3d
max_framebuffers=2

# Don't have the firmware create an initial video= setting in cmdline.txt.
# Use the kernel's default instead.
disable_fw_kms_setup=1

# Run in 64-bit mode
arm_64bit=1

# Disable compensation for displays with overscan
disable_overscan=1

# Run as fast as firmware / board allows
arm_boost=1

[cm4]
# Enable host mode on the 2711 built-in XHCI USB controller.
# This line should be removed if the legacy DWC2 controller is required
# (e.g. for USB device mode) or if USB support is not required.
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
EOF
STOCK_CMDLINE="$T/stock-cmdline.txt"
echo 'console=serial0,115200 console=tty1 root=PARTUUID=3e247b30-02 rootfstype=ext4 fsck.repair=yes rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot' > "$STOCK_CMDLINE"

t=$(date +%s)
if [[ -r $PI_ROOT/etc/shadow && -f $PI_ROOT/.pi-root-version ]]; then
    TREE="$PI_ROOT"; tree_what="the cached emulated root $PI_ROOT ($(cat "$PI_ROOT/.pi-root-version"))"
else
    TREE="$T/tree"; tree_what="a small tree (no readable build/pi-root: make test-pi builds it)"
    mkdir -p "$TREE"/{etc/systemd/system/multi-user.target.wants,boot/firmware,usr/local/sbin,opt,var/lib,home/pi}
    printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\nID=debian\n' > "$TREE/etc/os-release"
    echo raspberrypi > "$TREE/etc/hostname"
    printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n\n127.0.1.1\t\traspberrypi\n' > "$TREE/etc/hosts"
    ln -s /lib/systemd/system/ssh.service "$TREE/etc/systemd/system/multi-user.target.wants/ssh.service"
fi
say "stand-in base image: MBR, FAT32 'bootfs', ext4 'rootfs' from $tree_what"
tree_kb=$(du -sk "$TREE" | cut -f1)
root_mb=$(( tree_kb / 1024 * 13 / 10 + 96 ))
boot_mb=64
mkdir -p "$T/bootfiles/overlays"
cp "$STOCK_CONFIG" "$T/bootfiles/config.txt"
cp "$STOCK_CMDLINE" "$T/bootfiles/cmdline.txt"
for o in hifiberry-dacplusadc disable-bt vc4-kms-v3d; do echo "stand-in $o" > "$T/bootfiles/overlays/$o.dtbo"; done
echo "stand-in kernel" > "$T/bootfiles/kernel8.img"
truncate -s ${boot_mb}M "$T/boot.part"
mkfs.vfat -F 32 -s 1 -n bootfs "$T/boot.part" >/dev/null 2>&1
mcopy -s -i "$T/boot.part" "$T/bootfiles"/* ::
"${NICE[@]}" mkfs.ext4 -q -F -L rootfs -E nodiscard,root_owner=0:0 -d "$TREE" "$T/root.part" ${root_mb}M
boot_start=8192; boot_sectors=$(( boot_mb * 2048 )); root_start=$(( boot_start + boot_sectors )); root_sectors=$(( root_mb * 2048 ))
BASE="$T/base.img"
truncate -s $(( (root_start + root_sectors) * 512 )) "$BASE"
printf 'label: dos\nlabel-id: 0x3e247b30\nunit: sectors\n\nstart=%d, size=%d, type=c\nstart=%d, size=%d, type=83\n' \
    $boot_start $boot_sectors $root_start $root_sectors | sfdisk -q "$BASE"
dd if="$T/boot.part" of="$BASE" bs=1M seek=$(( boot_start / 2048 )) conv=notrunc,sparse status=none
dd if="$T/root.part" of="$BASE" bs=1M seek=$(( root_start / 2048 )) conv=notrunc,sparse status=none
rm -f "$T/boot.part" "$T/root.part"
sfdisk -d "$BASE" | sed 's/^ *//'
lap "stand-in base image ($(( (root_start + root_sectors) / 2048 )) MiB)" "$t"

# --- the bundle -----------------------------------------------------------------------------------------
if [[ -f $REPO/build/testkit/tiny.pedal ]]; then
    BUNDLE="$REPO/build/testkit/tiny.pedal"
else
    BUNDLE="$T/my-fuzz.pedal"    # make image copies bundles as they are: any bytes stand in for one
    head -c 300000 /dev/urandom > "$BUNDLE"
fi
BNAME="$(basename "$BUNDLE")"

# --- checks ------------------------------------------------------------------------------------------------
OFF_FAT=$(( boot_start * 512 )); OFF_EXT=$(( root_start * 512 ))
e2() { debugfs "$@" 2>/dev/null; }
# Every entry under an image directory, recursively: "path mode uid gid" (debugfs ls -p:
# /inode/mode/uid/gid/name/size/).
e2_walk() {  # img dir
    local img="$1" dir="$2" line ino mode uid gid name
    e2 -R "ls -p \"$dir\"" "$img?offset=$OFF_EXT" | while IFS=/ read -r _ ino mode uid gid name _; do
        [[ -z $name || $name == . || $name == .. ]] && continue
        local p="${dir%/}/$name"
        mode="$(printf '%o' "$((8#$mode))")"    # debugfs writes 040755 for a folder
        printf '%s %s %s %s\n' "$p" "$mode" "$uid" "$gid"
        if [[ $mode == 4???? ]]; then e2_walk "$img" "$p"; fi
    done
}
# What /opt/pedal/src must hold, from this checkout: "path mode uid gid", and a folder of the files.
expect_src() {
    (cd "$SRC" && { find device firmware_cfg -name __pycache__ -prune -o -name '*.pyc' -o -print; echo requirements; echo requirements/device.txt; }) \
        | while read -r rel; do
            if [[ -d $SRC/$rel ]]; then m=40755; elif [[ -x $SRC/$rel ]]; then m=100755; else m=100644; fi
            printf '/opt/pedal/src/%s %s 0 0\n' "$rel" "$m"
          done
    printf '/opt/pedal/src/bundles 40755 0 0\n/opt/pedal/src/bundles/%s 100644 0 0\n' "$BNAME"
}

check_image() {  # img label
    local img="$1" label="$2" x="$T/check-$2"
    mkdir -p "$x"
    say "checks: $label ($(basename "$img"))"
    # the partition table, the MBR (boot code, disk id, table) and the size are the base's
    check "partition table unchanged (sfdisk -d)" cmp -s <(sfdisk -d "$BASE" | sed '/^device:/d; s/^[^:]*\([0-9]\) :/\1 :/') \
                                                         <(sfdisk -d "$img" | sed '/^device:/d; s/^[^:]*\([0-9]\) :/\1 :/')
    check "MBR sector byte for byte" cmp -s <(head -c 512 "$BASE") <(head -c 512 "$img")
    check "same size" test "$(stat -c %s "$BASE")" = "$(stat -c %s "$img")"
    # the boot partition
    local fat="$img@@$OFF_FAT"
    mtype -i "$fat" ::config.txt > "$x/config.txt"
    { sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$STOCK_CONFIG"; echo; cat firmware_cfg/config.txt.append; } > "$x/config.expected"
    check "config.txt = the stock one + the SignalTrain-Pi block" cmp -s "$x/config.txt" "$x/config.expected"
    check "the block's marker exactly once" test "$(grep -cxF "$(head -n1 firmware_cfg/config.txt.append)" "$x/config.txt")" = 1
    for line in dtoverlay=hifiberry-dacplusadc dtparam=spi=on dtparam=i2c_arm=on dtparam=audio=off dtoverlay=disable-bt; do
        check "config.txt: $line exactly once" test "$(grep -cxF "$line" "$x/config.txt")" = 1
    done
    check "config.txt.pedal-orig = the stock config.txt" cmp -s <(mtype -i "$fat" ::config.txt.pedal-orig) "$STOCK_CONFIG"
    check "cmdline.txt untouched" cmp -s <(mtype -i "$fat" ::cmdline.txt) "$STOCK_CMDLINE"
    check "ssh: an empty file (sshd on)" test "$(mdir -b -i "$fat" ::ssh 2>/dev/null)" = "::/ssh" -a -z "$(mtype -i "$fat" ::ssh)"
    check "pedal-firstboot.conf = firmware_cfg/image/firstboot/pedal-firstboot.conf" \
        cmp -s <(mtype -i "$fat" ::pedal-firstboot.conf) firmware_cfg/image/firstboot/pedal-firstboot.conf
    check "overlays and kernel untouched" cmp -s <(mtype -i "$fat" ::overlays/hifiberry-dacplusadc.dtbo) "$T/bootfiles/overlays/hifiberry-dacplusadc.dtbo"
    dd if="$img" of="$x/boot.part" bs=1M skip=$(( boot_start / 2048 )) count=$boot_mb status=none
    check "fsck.fat -n: boot partition clean" fsck.fat -n "$x/boot.part" >/dev/null
    rm -f "$x/boot.part"
    # the root partition: /opt/pedal/src exactly as expected, every entry root:root with its mode
    local ext="$img?offset=$OFF_EXT"
    e2_walk "$img" /opt/pedal/src | sort > "$x/src.tree"
    expect_src | sort > "$x/src.expected"
    check "/opt/pedal/src: every file and folder, mode, owner root:root ($(wc -l < "$x/src.expected") entries), nothing else" \
        diff -u "$x/src.expected" "$x/src.tree"
    e2 -R "rdump /opt/pedal/src \"$x\"" "$ext"
    local same=1 rel
    for rel in $(cd "$SRC" && find device firmware_cfg -name __pycache__ -prune -o -name '*.pyc' -o -type f -print) requirements/device.txt; do
        cmp -s "$SRC/$rel" "$x/src/$rel" || { same=0; echo "      differs: $rel"; }
    done
    cmp -s "$BUNDLE" "$x/src/bundles/$BNAME" || { same=0; echo "      differs: bundles/$BNAME"; }
    check "/opt/pedal/src: every file's content = the checkout's (and the bundle's)" test $same = 1
    stat_of() { e2 -R "stat \"$1\"" "$ext" | awk '/^Inode:/ {print $6} /^User:/ {print $2 ":" $4}' | paste -sd' ' -; }
    check "/usr/local/sbin/pedal-firstboot: content, 0755 root:root" \
        cmp -s <(e2 -R 'cat /usr/local/sbin/pedal-firstboot' "$ext"; stat_of /usr/local/sbin/pedal-firstboot) \
               <(cat firmware_cfg/image/firstboot/pedal-firstboot; echo "0755 0:0")
    check "/etc/systemd/system/pedal-firstboot.service: content, 0644 root:root" \
        cmp -s <(e2 -R 'cat /etc/systemd/system/pedal-firstboot.service' "$ext"; stat_of /etc/systemd/system/pedal-firstboot.service) \
               <(cat firmware_cfg/image/firstboot/pedal-firstboot.service; echo "0644 0:0")
    check "pedal-firstboot.service enabled (multi-user.target.wants link)" test \
        "$(e2 -R 'stat /etc/systemd/system/multi-user.target.wants/pedal-firstboot.service' "$ext" | sed -n 's/^Fast link dest: "\(.*\)"/\1/p')" \
        = /etc/systemd/system/pedal-firstboot.service
    check "/etc/hostname = pedal" test "$(e2 -R 'cat /etc/hostname' "$ext")" = pedal
    check "/etc/hosts: 127.0.1.1 pedal, once" test "$(e2 -R 'cat /etc/hosts' "$ext" | grep -cE '^127\.0\.1\.1[[:space:]]+pedal$')" = 1
    check "/etc/hosts: no 127.0.1.1 raspberrypi left" test "$(e2 -R 'cat /etc/hosts' "$ext" | grep -c 'raspberrypi')" = 0
    check "/etc/pedal/image-info names the bundle and its sha256" \
        grep -qx "bundle=$BNAME sha256=$(sha256sum < "$BUNDLE" | cut -d' ' -f1)" <(e2 -R 'cat /etc/pedal/image-info' "$ext")
    if [[ $BNAME != comp4.pedal ]]; then
        check "/etc/pedal/pedal.toml: model.bundle = the given bundle, otherwise the shipped file" \
            cmp -s <(e2 -R 'cat /etc/pedal/pedal.toml' "$ext") \
                   <(sed -E "s|^(bundle *= *\")[^\"]*(\".*)|\1/var/lib/pedal/bundles/$BNAME\2|" firmware_cfg/pedal.toml)
        check "/etc/pedal/pedal.toml differs from the shipped one in one line" \
            test "$(diff <(e2 -R 'cat /etc/pedal/pedal.toml' "$ext") firmware_cfg/pedal.toml | grep -c '^<')" = 1
    fi
    check "the stock root is still there (os-release)" grep -q VERSION_CODENAME=bookworm <(e2 -R 'cat /etc/os-release' "$ext"; e2 -R 'cat /usr/lib/os-release' "$ext")
    check "e2fsck -fn: root partition clean" e2fsck -fn "$ext" >/dev/null 2>&1
    # for the comparison between runs: every written file's owner, mode and content
    { cat "$x/src.tree"; (cd "$x/src" && find . -type f -print0 | sort -z | xargs -0 sha256sum);
      for p in /usr/local/sbin/pedal-firstboot /etc/systemd/system/pedal-firstboot.service /etc/hostname /etc/hosts /etc/pedal/pedal.toml; do
          echo "$p $(stat_of "$p") $(e2 -R "cat \"$p\"" "$ext" | sha256sum)"; done
      mtype -i "$fat" ::config.txt | sha256sum; } > "$x/summary"
}

# make image as the caller would, as user nobody when this runs as root (no root needed)
as_user=()
if [[ $EUID == 0 ]] && id nobody >/dev/null 2>&1; then
    as_user=(runuser -u nobody --)
    chmod 0777 "$T"; chmod o+rx "$REPO/build" 2>/dev/null || true
fi
make_image() {  # BASE OUT [BUNDLE]; output in $T/make-image.log
    "${as_user[@]}" env HOME="$T" "${NICE[@]}" make --no-print-directory -C "$REPO" image BASE="$1" OUT="$2" ${3:+BUNDLE="$3"} > "$T/make-image.log" 2>&1
}

# --- 1. make image -----------------------------------------------------------------------------------------
say "1. make image BASE=$BASE OUT=$T/pedal.img BUNDLE=$BUNDLE ${as_user:+(as user nobody)}"
mounts_before="$(findmnt -rn -o TARGET | sort)"
t=$(date +%s)
if make_image "$BASE" "$T/pedal.img" "$BUNDLE"; then
    lap "make image (stand-in base, $(( $(stat -c %s "$BASE") / 1048576 )) MiB)" "$t"
    sed 's/^/    | /' "$T/make-image.log"
    check "nothing mounted or unmounted by make image" test "$mounts_before" = "$(findmnt -rn -o TARGET | sort)"
    check "no OUT.partial left" test ! -e "$T/pedal.img.partial"
    check_image "$T/pedal.img" first
else
    sed 's/^/    | /' "$T/make-image.log"; bad "make image failed"
fi

# --- 2. again, same base: the same result ----------------------------------------------------------------------
say "2. make image again on the same base"
if make_image "$BASE" "$T/pedal.img" "$BUNDLE"; then
    check_image "$T/pedal.img" second
    check "second run: the same files, modes, owners and config.txt as the first" diff -u "$T/check-first/summary" "$T/check-second/summary"
else
    sed 's/^/    | /' "$T/make-image.log"; bad "make image failed (second run)"
fi

# --- 3. a pedal image as the base -----------------------------------------------------------------------------
say "3. make image with the pedal image as its base (replaces, never doubles)"
t=$(date +%s)
if make_image "$T/pedal.img" "$T/pedal-again.img" "$BUNDLE"; then
    lap "make image (a pedal image as base)" "$t"
    grep -E 'up to date|kept|replaced' "$T/make-image.log" | sed 's/^/    | /'
    check_image "$T/pedal-again.img" rebased
    check "pedal image as base: the same files and config.txt as from the stock base" diff -u "$T/check-first/summary" "$T/check-rebased/summary"
else
    sed 's/^/    | /' "$T/make-image.log"; bad "make image failed (pedal image as base)"
fi
rm -f "$T/pedal-again.img"

# --- 4. an .img.xz base, and refusals ----------------------------------------------------------------------------
say "4. an .img.xz base; refusals"
t=$(date +%s)
"${NICE[@]}" xz -0 -T2 -kc "$BASE" > "$T/base.img.xz"
lap "xz of the stand-in base" "$t"
t=$(date +%s)
if make_image "$T/base.img.xz" "$T/pedal-xz.img" "$BUNDLE"; then
    lap "make image (.img.xz base)" "$t"
    check_image "$T/pedal-xz.img" xz
    check ".img.xz base: the same as from the .img" diff -u "$T/check-first/summary" "$T/check-xz/summary"
else
    sed 's/^/    | /' "$T/make-image.log"; bad "make image failed (.img.xz base)"
fi
rm -f "$T/pedal-xz.img" "$T/base.img.xz"
make_image "$T/no-such.img" "$T/refused.img" && bad "a missing base was accepted" || \
    check "a missing base: refused, says so" grep -q "no base image" "$T/make-image.log"
head -c 8M /dev/zero > "$T/zeros.img"
make_image "$T/zeros.img" "$T/refused.img" && bad "an image without partitions was accepted" || \
    check "not a Raspberry Pi OS image: refused, says so ($(grep -o 'error: .*' "$T/make-image.log" | cut -c1-60)...)" grep -q "not a Raspberry Pi OS image" "$T/make-image.log"
check "refusals leave no output behind" test ! -e "$T/refused.img" -a ! -e "$T/refused.img.partial"
make --no-print-directory -C "$REPO" image > "$T/make-image.log" 2>&1 && bad "make image without BASE ran" || \
    check "make image without BASE: usage" grep -q "usage: make image BASE=" "$T/make-image.log"
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$T/units"
    sed "s|/usr/local/sbin/pedal-firstboot|$REPO/firmware_cfg/image/firstboot/pedal-firstboot|" \
        "$SRC/firmware_cfg/image/firstboot/pedal-firstboot.service" > "$T/units/pedal-firstboot.service"
    out="$(cd "$T/units" && systemd-analyze verify --man=no pedal-firstboot.service 2>&1 | grep pedal-firstboot || true)"
    check "systemd-analyze verify pedal-firstboot.service${out:+: $out}" test -z "$out"
fi

# --- 5. the first boot, emulated ------------------------------------------------------------------------------------
fb_reason=""
if [[ ${IMAGE_FIRSTBOOT:-1} == 0 ]]; then fb_reason="IMAGE_FIRSTBOOT=0"
elif [[ $EUID != 0 ]]; then fb_reason="needs root (chroot): sudo make test-image"
elif [[ $TREE != "$PI_ROOT" ]]; then fb_reason="needs the cached arm64 root build/pi-root (make test-pi builds it)"
elif [[ $(uname -m) != aarch64 && ! -x /usr/bin/qemu-aarch64-static ]]; then fb_reason="needs qemu-user-static"
elif [[ ! -f $T/pedal.img ]]; then fb_reason="no image"
fi
if [[ -n $fb_reason ]]; then
    say "5. the first boot, emulated: SKIPPED ($fb_reason)"
else
    say "5. the first boot, emulated: pedal-firstboot in the image's own root (chroot, qemu-user $PI_CPU)"
    # The same care as tests/pi/test-pi.sh: never the host's /dev or /sys; everything mounted is
    # unmounted at the end; a root is removed only by safe_rm (unmount first, --one-file-system).
    declare -a UNDO=()
    cleanup() { local i; for (( i=${#UNDO[@]}-1; i>=0; i-- )); do eval "${UNDO[i]}" || echo "test-image: could not undo: ${UNDO[i]}" >&2; done; }
    trap cleanup EXIT
    if [[ $(uname -m) != aarch64 ]]; then
        if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
            mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; UNDO+=("umount /proc/sys/fs/binfmt_misc")
        fi
        if ! grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
            update-binfmts --enable qemu-aarch64; UNDO+=("update-binfmts --disable qemu-aarch64")
        fi
    fi
    t=$(date +%s)
    safe_rm "$FB_ROOT"
    mkdir -p "$FB_ROOT.unpack"
    # the root partition as the box sees it, unpacked without mounting (rdump keeps owners and modes as root)
    ext="$T/pedal.img?offset=$OFF_EXT"
    for top in $(e2 -R 'ls -p /' "$ext" | awk -F/ '$6 != "." && $6 != ".." && $6 != "lost+found" && $6 != "" {print $6}'); do
        e2 -R "rdump \"/$top\" \"$FB_ROOT.unpack\"" "$ext"
    done
    mv "$FB_ROOT.unpack" "$FB_ROOT"
    # the boot partition at /boot/firmware, as the box mounts it; a web password to see it used and blanked
    mkdir -p "$FB_ROOT/boot/firmware"
    mcopy -s -o -n -i "$T/pedal.img@@$OFF_FAT" '::*' "$FB_ROOT/boot/firmware/"
    sed -i 's/^WEB_PASSWORD=$/WEB_PASSWORD=first-boot-secret/' "$FB_ROOT/boot/firmware/pedal-firstboot.conf"
    lap "first boot: unpack the image's root" "$t"
    cp /etc/resolv.conf "$FB_ROOT/etc/resolv.conf"
    mount -t proc proc "$FB_ROOT/proc"; UNDO+=("umount -l '$FB_ROOT/proc'")
    mkdir -p "$FB_ROOT/dev/pts" "$FB_ROOT/dev/shm"
    for spec in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
        IFS=: read -r name maj min <<< "$spec"
        [[ -c "$FB_ROOT/dev/$name" ]] || { rm -f "$FB_ROOT/dev/$name"; mknod -m 666 "$FB_ROOT/dev/$name" c "$maj" "$min"; }
    done
    ln -sfn /proc/self/fd "$FB_ROOT/dev/fd"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$FB_ROOT/dev/pts"; UNDO+=("umount -l '$FB_ROOT/dev/pts'")
    ln -sfn pts/ptmx "$FB_ROOT/dev/ptmx"
    mkdir -p "$CACHE/apt" "$CACHE/pip" "$FB_ROOT/root/.cache/pip"
    mount --bind "$CACHE/apt" "$FB_ROOT/var/cache/apt/archives"; UNDO+=("umount -l '$FB_ROOT/var/cache/apt/archives'")
    mount --bind "$CACHE/pip" "$FB_ROOT/root/.cache/pip"; UNDO+=("umount -l '$FB_ROOT/root/.cache/pip'")
    in_root() {
        "${NICE[@]}" chroot "$FB_ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            HOME=/root LANG=C.UTF-8 TERM=dumb QEMU_CPU="$PI_CPU" "$@"
    }
    t=$(date +%s)
    say "pedal-firstboot (provision.sh with apt and PyPI inside; a few minutes)"
    in_root /usr/local/sbin/pedal-firstboot > "$T/firstboot.log" 2>&1; fb_status=$?
    grep -E '^pedal-firstboot:|^==>|warning|error' "$T/firstboot.log" | sed 's/^/    | /'
    lap "first boot: pedal-firstboot (provision.sh)" "$t"
    check "pedal-firstboot exits 0" test $fb_status = 0
    check "provision.sh ran to the end" grep -q '^==> done' "$T/firstboot.log"
    check "the venv is built with the root's Python" test -x "$FB_ROOT/opt/pedal/venv/bin/python"
    check "the device code is installed" test -f "$FB_ROOT/opt/pedal/device/__main__.py"
    check "user pedal exists" grep -q '^pedal:' "$FB_ROOT/etc/passwd"
    check "the login user (uid 1000) is in group pedal" grep -qE "^pedal:[^:]*:[0-9]+:.*\b$(awk -F: '$3 == 1000 {print $1}' "$FB_ROOT/etc/passwd")\b" "$FB_ROOT/etc/group"
    # owners as numbers: the root's own pedal user is not this machine's
    bundle_owner="$(stat -c '%u:%g' "$FB_ROOT/var/lib/pedal/bundles/$BNAME" 2>/dev/null || echo missing)"
    pedal_ids="$(awk -F: '$1 == "pedal" {print $3 ":" $4}' "$FB_ROOT/etc/passwd")"
    check "the bundle installed in /var/lib/pedal/bundles, owner pedal ($bundle_owner = pedal's $pedal_ids in the root)" \
        test -n "$pedal_ids" -a "$bundle_owner" = "$pedal_ids" -a "$(sha256sum < "$FB_ROOT/var/lib/pedal/bundles/$BNAME" 2>/dev/null)" = "$(sha256sum < "$BUNDLE")"
    check "pedal.service enabled" test -L "$FB_ROOT/etc/systemd/system/multi-user.target.wants/pedal.service"
    check "pedal-firstboot.service disabled" test ! -e "$FB_ROOT/etc/systemd/system/multi-user.target.wants/pedal-firstboot.service" -a ! -L "$FB_ROOT/etc/systemd/system/multi-user.target.wants/pedal-firstboot.service"
    check "pedal-firstboot.conf renamed pedal-firstboot.done" test ! -e "$FB_ROOT/boot/firmware/pedal-firstboot.conf" -a -f "$FB_ROOT/boot/firmware/pedal-firstboot.done"
    check "the web password: set (a hash in /etc/pedal/web-password), blanked in .done" \
        test -s "$FB_ROOT/etc/pedal/web-password" -a "$(grep -c first-boot-secret "$FB_ROOT/boot/firmware/pedal-firstboot.done" "$FB_ROOT/etc/pedal/web-password" "$FB_ROOT/boot/firmware/pedal-firstboot.log" | awk -F: '{s += $2} END {print s}')" = 0
    check "pedal.toml kept as the image wrote it (model.bundle = $BNAME)" grep -q "^bundle = \"/var/lib/pedal/bundles/$BNAME\"" "$FB_ROOT/etc/pedal/pedal.toml"
    check "config.txt: provision.sh found the block in place (one block)" \
        test "$(grep -cxF "$(head -n1 firmware_cfg/config.txt.append)" "$FB_ROOT/boot/firmware/config.txt")" = 1
    check "the log on the boot partition" grep -q 'rebooting\|not rebooting' "$FB_ROOT/boot/firmware/pedal-firstboot.log"
    check "first_boot recorded in /etc/pedal/image-info" grep -q '^first_boot=' "$FB_ROOT/etc/pedal/image-info"
    in_root /usr/local/sbin/pedal-firstboot > "$T/firstboot-2.log" 2>&1
    check "run again with no conf: nothing to do" grep -q 'nothing to do' "$T/firstboot-2.log"
    cleanup; UNDO=(); trap - EXIT
    check "nothing left mounted under $FB_ROOT" test -z "$(findmnt -rn -o TARGET | grep -F "$FB_ROOT" || true)"
fi

# --- summary -----------------------------------------------------------------------------------------------------
lap "total" "$T0"
say "test-image: times"
printf '    %s\n' "${TIMES[@]}"
if [[ $FAILS == 0 ]]; then echo "test-image: PASS"; else echo "test-image: $FAILS check(s) FAILED"; exit 1; fi
