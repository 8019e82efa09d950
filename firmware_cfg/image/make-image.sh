#!/usr/bin/env bash
# make-image.sh: a pedal SD card image from a stock Raspberry Pi OS Lite image (bookworm, 64-bit),
# written as a plain file: no root, no mounts, no loop devices, nothing downloaded.
#
#   firmware_cfg/image/make-image.sh --base RASPIOS-lite.img[.xz|.gz] --out build/pedal.img \
#       [--bundle FILE.pedal ...] [--hostname pedal]
#   make image BASE=RASPIOS-lite.img.xz [OUT=build/pedal.img] [BUNDLE="a.pedal b.pedal"]
#
# It copies the base image to OUT, reads its partition table (sfdisk) and writes into the partitions
# in place, at their byte offsets:
#   boot (FAT32, mtools): config.txt gets firmware_cfg/config.txt.append (the same marked block
#       provision.sh writes: the HAT's I2S overlay, SPI, I2C; replaced, never doubled; the original
#       kept once as config.txt.pedal-orig), an empty `ssh` (sshd on), and pedal-firstboot.conf,
#       the first-boot settings (kept if the base has one)
#   root (ext4, debugfs): /opt/pedal/src (device/, requirements/device.txt, firmware_cfg/ and the
#       bundles), /usr/local/sbin/pedal-firstboot, pedal-firstboot.service enabled, the hostname,
#       /etc/pedal/image-info, and /etc/pedal/pedal.toml naming the first bundle when it is not the
#       shipped default's name; every file root:root, 0644 or 0755
# then checks what it wrote (contents read back, e2fsck -fn, the partition table unchanged) and
# renames OUT.partial to OUT. On the box, the first boot runs provision.sh (apt and PyPI on the box:
# it needs the network), disables itself and reboots (firmware_cfg/image/README.md).
#
# Needs: sfdisk (fdisk), mtools, e2fsprogs (debugfs, e2fsck, dumpe2fs); xz or gzip for a compressed base.
# Environment: PEDAL_SRC=/path  the repository (or a copy of its device/, requirements/ and
#              firmware_cfg/) to take the files from; default: the one this script is in.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${PEDAL_SRC:-$HERE/../..}" && pwd)"   # PEDAL_SRC: the repository to take the files from
CFG="$REPO/firmware_cfg"
FB="$CFG/image/firstboot"
T0=$(date +%s)

BASE="" OUT="" NEW_HOSTNAME=pedal
BUNDLES=()

say()  { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'make-image: warning: %s\n' "$*" >&2; }
die()  { printf 'make-image: error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --base) [[ $# -ge 2 ]] || die "--base needs a file"; BASE="$2"; shift ;;
        --base=*) BASE="${1#--base=}" ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a file"; OUT="$2"; shift ;;
        --out=*) OUT="${1#--out=}" ;;
        --bundle) [[ $# -ge 2 ]] || die "--bundle needs a file"; BUNDLES+=("$2"); shift ;;
        --bundle=*) BUNDLES+=("${1#--bundle=}") ;;
        --hostname) [[ $# -ge 2 ]] || die "--hostname needs a name"; NEW_HOSTNAME="$2"; shift ;;
        --hostname=*) NEW_HOSTNAME="${1#--hostname=}" ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (try --help)" ;;
    esac
    shift
done

# --- preflight ---------------------------------------------------------------------------------------
[[ -n $BASE && -n $OUT ]] || { usage >&2; exit 2; }
[[ -f $BASE ]] || die "no base image $BASE (a Raspberry Pi OS Lite bookworm 64-bit .img or .img.xz from https://www.raspberrypi.com/software/operating-systems/)"
[[ $OUT != *'?'* && $OUT != *'@@'* ]] || die "the output path may not contain '?' or '@@' (debugfs and mtools read them as options)"
[[ $NEW_HOSTNAME =~ ^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$ ]] || die "--hostname $NEW_HOSTNAME is not a valid host name"
for b in "${BUNDLES[@]}"; do
    [[ -f $b && $b == *.pedal ]] || die "not a bundle archive: $b (expected an existing FILE.pedal)"
done
missing=()
for tool in sfdisk mtype mcopy mdir minfo mlabel debugfs e2fsck dumpe2fs cmp sha256sum; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
case "$BASE" in
    *.xz) command -v xz >/dev/null || missing+=(xz) ;;
    *.gz) command -v gzip >/dev/null || missing+=(gzip) ;;
esac
[[ ${#missing[@]} == 0 ]] || die "missing tools: ${missing[*]} (Debian/Ubuntu: apt-get install fdisk mtools e2fsprogs xz-utils)"
for f in device requirements/device.txt firmware_cfg/provision.sh firmware_cfg/config.txt.append firmware_cfg/pedal.toml; do
    [[ -e $REPO/$f ]] || die "missing $REPO/$f"
done
for f in pedal-firstboot pedal-firstboot.service pedal-firstboot.conf; do
    [[ -f $FB/$f ]] || die "missing $FB/$f"
done
export MTOOLS_SKIP_CHECK=1    # an image file has no real disk geometry

mkdir -p "$(dirname "$OUT")"
IMG="$OUT.partial"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/pedal-image.XXXXXX")"
cleanup() { rm -rf "$WORK"; rm -f "$IMG"; }
trap cleanup EXIT

# --- 1. the copy ---------------------------------------------------------------------------------------
t=$(date +%s)
say "copying $BASE to $IMG"
case "$BASE" in
    *.xz) xz -dc "$BASE" | cp --sparse=always /dev/stdin "$IMG" ;;
    *.gz) gzip -dc "$BASE" | cp --sparse=always /dev/stdin "$IMG" ;;
    *.zip) die "unzip the base image first (a .img, .img.xz or .img.gz)" ;;
    *) cp --sparse=always "$BASE" "$IMG" ;;
esac
note "$(( $(stat -c %s "$IMG") / 1048576 )) MiB, $(( $(date +%s) - t )) s"

# --- 2. the partition table (read only) -----------------------------------------------------------------
sfdisk -d "$IMG" > "$WORK/table.before" 2>"$WORK/sfdisk.err" || die "no partition table in $BASE ($(head -n1 "$WORK/sfdisk.err")): not a Raspberry Pi OS image"
grep -q '^label: dos' "$WORK/table.before" || die "$BASE has a $(sed -n 's/^label: //p' "$WORK/table.before") partition table; Raspberry Pi OS images use an MBR (dos) one"
sector="$(sed -n 's/^sector-size: //p' "$WORK/table.before")"; sector="${sector:-512}"
# "IMG1 : start=        8192, size=     1048576, type=c": start, size, type of partition N
part() {
    awk -v n="$1" '{i = index($0, " : ")} i && substr($0, 1, i - 1) ~ ("[^0-9]" n "$") {
        rest = substr($0, i + 3); gsub(/ /, "", rest); split(rest, kv, ",")
        for (k in kv) { split(kv[k], f, "="); v[f[1]] = f[2] }
        print v["start"], v["size"], v["type"] }' "$WORK/table.before"
}
read -r boot_start boot_size boot_type <<< "$(part 1)" || true
read -r root_start root_size root_type <<< "$(part 2)" || true
[[ -n ${boot_start:-} && -n ${root_start:-} ]] || die "$BASE needs a boot partition 1 and a root partition 2 (sfdisk -d shows: $(grep -c start= "$WORK/table.before") partitions)"
case "$boot_type" in b|c|e) ;; *) die "partition 1 is type $boot_type, not FAT (b, c or e): not a Raspberry Pi OS image" ;; esac
[[ $root_type == 83 ]] || die "partition 2 is type $root_type, not Linux (83): not a Raspberry Pi OS image"
size="$(stat -c %s "$IMG")"
(( (root_start + root_size) * sector <= size )) || die "$BASE is cut short: partition 2 ends at byte $(( (root_start + root_size) * sector )), the file has $size"
FAT="$IMG@@$(( boot_start * sector ))"         # mtools: image@@byte-offset
EXT="$IMG?offset=$(( root_start * sector ))"    # e2fsprogs (unix io manager): image?offset=bytes
minfo -i "$FAT" :: > /dev/null 2>"$WORK/minfo.err" || die "partition 1 is not a FAT file system: $(head -n1 "$WORK/minfo.err")"
dumpe2fs -h "$EXT" > "$WORK/ext.super" 2>/dev/null || die "partition 2 is not an ext2/3/4 file system"
grep -qE '^Filesystem state: +clean' "$WORK/ext.super" || die "partition 2 was not cleanly unmounted: e2fsck it first"
boot_label="$(mlabel -s -i "$FAT" :: 2>/dev/null | sed -n 's/^ *Volume label is \([^ ]*\).*/\1/p')"
root_label="$(sed -n 's/^Filesystem volume name: *//p' "$WORK/ext.super")"
say "partitions: 1 FAT at sector $boot_start (label ${boot_label:-none}), 2 ext4 at sector $root_start (label ${root_label:-none})"
[[ ${boot_label,,} == bootfs || ${boot_label,,} == boot ]] || warn "the boot partition's label is '${boot_label}', not bootfs"
[[ $root_label == rootfs ]] || warn "the root partition's label is '${root_label}', not rootfs"

# debugfs in batch mode prints its version banner to stderr and exits 0 even when a command fails:
# every other line on stderr is an error.
e2() {  # debugfs args...  (read only)
    debugfs "$@" "$EXT" 2>"$WORK/debugfs.err"
    if grep -v '^debugfs [0-9.]* (' "$WORK/debugfs.err" >&2; then return 1; fi
}
e2_exists() { debugfs -R "stat \"$1\"" "$EXT" 2>/dev/null | grep -q '^Inode:'; }

codename="$( { e2 -R 'cat /etc/os-release'; e2 -R 'cat /usr/lib/os-release'; } 2>/dev/null | sed -n 's/^VERSION_CODENAME=//p' | head -n1)" || true
case "$codename" in
    bookworm) ;;
    trixie) warn "the base is Raspberry Pi OS trixie: provision.sh and the device code are tested on bookworm (make test-pi)" ;;
    *) warn "the base is '${codename:-no /etc/os-release}', not Raspberry Pi OS bookworm" ;;
esac
e2_exists /boot/firmware || warn "the root has no /boot/firmware: an older Raspberry Pi OS (the boot partition at /boot); the first-boot step looks in both"

# --- 3. the boot partition (FAT, mtools) ----------------------------------------------------------------
say "boot partition: config.txt, ssh, pedal-firstboot.conf"
mtype -i "$FAT" ::config.txt > "$WORK/config.txt.orig" 2>/dev/null || die "no config.txt on the boot partition: not a Raspberry Pi OS image"
begin="$(head -n 1 "$CFG/config.txt.append")"
end="$(tail -n 1 "$CFG/config.txt.append")"
# The same edit as provision.sh's: drop an earlier block (between the marker lines), strip trailing
# blank lines, one blank line, the current block.
awk -v b="$begin" -v e="$end" '$0 == b {skip = 1} !skip {print} $0 == e {skip = 0}' "$WORK/config.txt.orig" > "$WORK/config.txt"
sed -i -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$WORK/config.txt"
printf '\n' >> "$WORK/config.txt"
cat "$CFG/config.txt.append" >> "$WORK/config.txt"
fat_ls="$(mdir -b -i "$FAT" :: 2>/dev/null | sed 's|^::/||')"
fat_has() { grep -qixF "$1" <<< "$fat_ls"; }
if cmp -s "$WORK/config.txt" "$WORK/config.txt.orig"; then
    note "config.txt is up to date"
else
    if ! fat_has config.txt.pedal-orig; then
        mcopy -i "$FAT" "$WORK/config.txt.orig" ::config.txt.pedal-orig
        note "config.txt.pedal-orig: the original, kept"
    fi
    mcopy -o -i "$FAT" "$WORK/config.txt" ::config.txt
    note "config.txt: the SignalTrain-Pi block ($(grep -cE '^(dtoverlay|dtparam|gpu_mem)=' "$CFG/config.txt.append") settings: I2S HAT overlay, SPI, I2C)"
fi
: > "$WORK/ssh"
mcopy -o -i "$FAT" "$WORK/ssh" ::ssh
note "ssh: sshd starts at boot (log in with the user set in Raspberry Pi Imager)"
if fat_has pedal-firstboot.conf; then
    note "pedal-firstboot.conf is there already: kept (it may hold your settings)"
else
    mcopy -i "$FAT" "$FB/pedal-firstboot.conf" ::pedal-firstboot.conf
    note "pedal-firstboot.conf: the first boot runs provision.sh while this file is here"
fi

# --- 4. the root partition (ext4, debugfs) ---------------------------------------------------------------
# Staged here as a tree first; each entry is then written with debugfs, root:root, its mode set.
say "root partition: /opt/pedal/src, the first-boot unit, hostname $NEW_HOSTNAME"
S="$WORK/stage"
src="$S/opt/pedal/src"
mkdir -p "$src/requirements" "$src/bundles" "$S/usr/local/sbin" "$S/etc/systemd/system/multi-user.target.wants" "$S/etc/pedal"
(cd "$REPO" && find device -name __pycache__ -prune -o -name '*.pyc' -o -type f -print0 | tar --null -T - -cf -) | tar -xf - -C "$src"
(cd "$REPO" && find firmware_cfg -name __pycache__ -prune -o -type f -print0 | tar --null -T - -cf -) | tar -xf - -C "$src"
cp "$REPO/requirements/device.txt" "$src/requirements/device.txt"
for b in "${BUNDLES[@]}"; do cp "$b" "$src/bundles/"; done
cp "$FB/pedal-firstboot" "$S/usr/local/sbin/pedal-firstboot"
cp "$FB/pedal-firstboot.service" "$S/etc/systemd/system/pedal-firstboot.service"
ln -s /etc/systemd/system/pedal-firstboot.service "$S/etc/systemd/system/multi-user.target.wants/pedal-firstboot.service"
printf '%s\n' "$NEW_HOSTNAME" > "$S/etc/hostname"
e2 -R 'cat /etc/hosts' > "$WORK/hosts" 2>/dev/null || printf '127.0.0.1\tlocalhost\n' > "$WORK/hosts"
if grep -qE '^127\.0\.1\.1[[:space:]]' "$WORK/hosts"; then
    sed -E "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1\t\t$NEW_HOSTNAME/" "$WORK/hosts" > "$S/etc/hosts"
else
    { cat "$WORK/hosts"; printf '127.0.1.1\t\t%s\n' "$NEW_HOSTNAME"; } > "$S/etc/hosts"
fi
commit="$(git -c safe.directory="$REPO" -C "$REPO" rev-parse --verify -q HEAD 2>/dev/null || echo unknown)"
dirty=""
if [[ $commit != unknown && -n $(git -c safe.directory="$REPO" -C "$REPO" status --porcelain -- device requirements firmware_cfg 2>/dev/null) ]]; then dirty=yes; fi
{
    echo "image=make-image $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
    echo "base=$(basename "$BASE")"
    echo "commit=$commit${dirty:+ (with uncommitted changes)}"
    for b in "${BUNDLES[@]}"; do echo "bundle=$(basename "$b") sha256=$(sha256sum < "$b" | cut -d' ' -f1)"; done
} > "$S/etc/pedal/image-info"
# The first bundle is the one the daemon plays: name it in pedal.toml when it is not the shipped name.
if [[ ${#BUNDLES[@]} -gt 0 ]]; then
    default="$(basename "${BUNDLES[0]}")"
    shipped="$(sed -nE '/^bundle *= *"/{s|^bundle *= *"([^"]*)".*|\1|p;q}' "$CFG/pedal.toml")"
    if [[ $(basename "$shipped") != "$default" ]]; then
        sed -E "s|^(bundle *= *\")[^\"]*(\".*)|\1/var/lib/pedal/bundles/$default\2|" "$CFG/pedal.toml" > "$S/etc/pedal/pedal.toml"
        grep -q "/var/lib/pedal/bundles/$default\"" "$S/etc/pedal/pedal.toml" || die "could not set model.bundle in pedal.toml"
        note "/etc/pedal/pedal.toml: model.bundle = /var/lib/pedal/bundles/$default"
        warn "the pots in pedal.toml turn $(basename "$shipped" .pedal)'s knobs ($(sed -nE 's/^knob *= *"([^"]*)".*/\1/p' "$CFG/pedal.toml" | paste -sd, -)): if $default has other knobs, edit [[knobs.pot]] in /etc/pedal/pedal.toml on the box (python -m device inspect lists them)"
    fi
fi

# Free space: the staged bytes plus a margin for directories and the block rounding of small files.
need_kb=$(( $(du -sk --apparent-size "$S" | cut -f1) + 4 * $(find "$S" | wc -l) + 1024 ))
free_kb=$(( $(sed -n 's/^Free blocks: *//p' "$WORK/ext.super") * $(sed -n 's/^Block size: *//p' "$WORK/ext.super") / 1024 ))
(( need_kb < free_kb )) || die "the root partition has $free_kb KiB free; the pedal's files need $need_kb KiB"

# The debugfs commands. debugfs 1.47's mkdir and symlink on a name that exists leave an orphan inode
# behind (e2fsck finds it), so what exists is looked up first: an existing directory is kept as it
# is, an existing file or link is removed before it is written.
cmds="$WORK/debugfs.cmds"; : > "$cmds"
declare -A listed=()
exists_in_image() {  # /path -> 0 if its folder lists it (each folder listed once, with debugfs ls -p)
    local p="$1" parent name
    parent="$(dirname "$p")"; name="$(basename "$p")"
    if [[ $parent != / ]] && ! exists_in_image "$parent"; then return 1; fi
    if [[ -z ${listed[$parent]+x} ]]; then
        listed[$parent]="$(debugfs -R "ls -p \"$parent\"" "$EXT" 2>/dev/null | awk -F/ 'NF >= 6 {print $6}')"
    fi
    grep -qxF -- "$name" <<< "${listed[$parent]}"
}
q() { printf '"%s"' "$1"; }   # debugfs quoting (our paths have no quotes)
n_dirs=0 n_files=0 n_links=0 n_replaced=0
while IFS= read -r -d '' rel; do
    p="/${rel#./}"; f="$S$p"
    [[ $p == / ]] && continue
    [[ $p =~ [\"[:space:]] ]] && die "a path with a quote or a blank cannot be written by debugfs: $p"
    if [[ -L $f ]]; then
        exists_in_image "$p" && { echo "rm $(q "$p")" >> "$cmds"; n_replaced=$((n_replaced + 1)); }
        echo "symlink $(q "$p") $(q "$(readlink "$f")")" >> "$cmds"
        n_links=$((n_links + 1))
    elif [[ -d $f ]]; then
        if ! exists_in_image "$p"; then
            printf 'mkdir %s\nsif %s mode 040755\nsif %s uid 0\nsif %s gid 0\n' "$(q "$p")" "$(q "$p")" "$(q "$p")" "$(q "$p")" >> "$cmds"
            n_dirs=$((n_dirs + 1))
        fi
    else
        exists_in_image "$p" && { echo "rm $(q "$p")" >> "$cmds"; n_replaced=$((n_replaced + 1)); }
        mode=0100644; [[ -x $f ]] && mode=0100755
        printf 'write %s %s\nsif %s mode %s\nsif %s uid 0\nsif %s gid 0\n' "$(q "$f")" "$(q "$p")" "$(q "$p")" "$mode" "$(q "$p")" "$(q "$p")" >> "$cmds"
        n_files=$((n_files + 1))
    fi
done < <(cd "$S" && find . -print0 | sort -z)
if ! debugfs -w -f "$cmds" "$EXT" > "$WORK/debugfs.out" 2>"$WORK/debugfs.err" \
        || grep -v '^debugfs [0-9.]* (' "$WORK/debugfs.err" > "$WORK/debugfs.errors"; then
    cat "$WORK/debugfs.errors" >&2 2>/dev/null || true
    die "debugfs failed writing the root partition (commands: $cmds)"
fi
note "$n_files files, $n_links link(s), $n_dirs new folders ($n_replaced replaced)$( [[ ${#BUNDLES[@]} -gt 0 ]] && printf ', bundles: %s' "$(printf '%s ' "${BUNDLES[@]##*/}")")"

# --- 5. checks: read back, file system consistency, the partition table -------------------------------------
say "checking: contents read back, e2fsck -fn, the partition table"
mkdir -p "$WORK/back"
# (rdump sets the owners too, which only root may: that complaint is no error here)
debugfs -R "rdump /opt/pedal/src \"$WORK/back\"" "$EXT" > /dev/null 2>"$WORK/debugfs.err"
if grep -v -e '^debugfs [0-9.]* (' -e 'Operation not permitted while changing ownership' "$WORK/debugfs.err" >&2; then
    die "could not read /opt/pedal/src back"
fi
diff -r "$src" "$WORK/back/src" > "$WORK/back.diff" || { head -20 "$WORK/back.diff" >&2; die "/opt/pedal/src reads back different from what was written"; }
while IFS= read -r -d '' rel; do
    p="/${rel#./}"
    [[ $p == /opt/pedal/src/* ]] && continue
    e2 -R "cat \"$p\"" > "$WORK/one" || die "could not read $p back"
    cmp -s "$WORK/one" "$S$p" || die "$p reads back different from what was written"
done < <(cd "$S" && find . -type f -print0)
link="$(e2 -R 'stat /etc/systemd/system/multi-user.target.wants/pedal-firstboot.service' | sed -n 's/^Fast link dest: "\(.*\)"/\1/p')"
[[ $link == /etc/systemd/system/pedal-firstboot.service ]] || die "the unit's enable link reads back as '$link'"
mtype -i "$FAT" ::config.txt | cmp -s - "$WORK/config.txt" || die "config.txt reads back different"
[[ $(mtype -i "$FAT" ::config.txt | grep -cxF "$begin") == 1 ]] || die "config.txt has the SignalTrain-Pi block more than once"
e2fsck -fn "$EXT" > "$WORK/e2fsck.log" 2>&1 || { tail -20 "$WORK/e2fsck.log" >&2; die "e2fsck finds errors in the root partition after writing"; }
sfdisk -d "$IMG" > "$WORK/table.after" 2>/dev/null
cmp -s "$WORK/table.before" "$WORK/table.after" || die "the partition table changed (it must not be written)"
[[ $(stat -c %s "$IMG") == "$size" ]] || die "the image changed size"

mv -f "$IMG" "$OUT"
trap 'rm -rf "$WORK"' EXIT
say "done in $(( $(date +%s) - T0 )) s: $OUT ($(( size / 1048576 )) MiB)"
cat <<EOF
Flash it (firmware_cfg/image/README.md):
  Raspberry Pi Imager: Choose OS -> Use custom -> $OUT; Edit settings: user and password, Wi-Fi, SSH on
  or: sudo dd if=$OUT of=/dev/sdX bs=4M conv=fsync status=progress   (lsblk first: dd overwrites that disk)
First boot (needs the network): provision.sh installs packages and the Python environment, then the
box reboots into the pedal (a few minutes on a Pi 4; progress in pedal-firstboot.log on the boot partition).
EOF
