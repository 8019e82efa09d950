#!/usr/bin/env bash
# provision.sh: turn a fresh Raspberry Pi OS Lite (bookworm, 64-bit) into the SignalTrain-Pi pedal.
#
# Run on the Pi, as root, from a copy of this repository:
#   sudo ./firmware_cfg/provision.sh                  # everything; then reboot
#   sudo ./firmware_cfg/provision.sh --dry-run        # print what it would do, change nothing
#
# What it does (each step is safe to repeat; running it again updates the code and the units):
#   1. apt: python3-venv, python3-dev, libasound2-dev, gcc, alsa-utils, polkitd, ... (pyalsaaudio builds
#      from source against alsa-lib)
#   2. a system user "pedal" in groups audio, gpio, spi, i2c; the login user joins group "pedal"
#      so that it may copy bundles into /var/lib/pedal/bundles; a system user "pedal-web" in
#      group "pedal" for the web page (pedal-web.service)
#   3. device/ -> /opt/pedal/device, requirements/device.txt -> /opt/pedal/requirements/
#   4. /opt/pedal/venv: python3 -m venv, pip install -r requirements/device.txt
#   5. /etc/pedal/pedal.toml (kept if you edited it), /etc/asound.conf, limits.d, modules-load.d, systemd units,
#      NetworkManager Wi-Fi power saving off, the boot config block in /boot/firmware/config.txt,
#      the polkit rule that lets the web page stop and start pedal.service (for a capture)
#      the web page's password (asked once on a terminal, or PEDAL_WEB_PASSWORD; stored as a hash)
#   6. systemctl enable pedal.service pedal-cpu-performance.service pedal-web.service
#
# Options:
#   --dry-run          print every action instead of doing it
#   --user NAME        the login user to add to group "pedal" (default: $SUDO_USER, else uid 1000)
#   --bundle FILE      also install this .pedal bundle into /var/lib/pedal/bundles (repeatable)
#   --no-apt           skip step 1 (packages already installed, or no network)
#   --no-venv          skip step 4
#   --no-boot-config   leave config.txt alone
#   --read-only-root --data-partition SPEC
#                      power-cut safety for the system: / read-only under a RAM overlay (overlayroot,
#                      what raspi-config's "overlay file system" uses), and /var/lib/pedal (bundles,
#                      the config, the last good bundle) on its own writable ext4 partition SPEC
#                      (LABEL=pedal-data, PARTUUID=..., /dev/mmcblk0p3), which you make first
#                      (firmware_cfg/README.md). Takes effect at the next boot.
#   -h, --help
#
# Environment:
#   DESTDIR=/some/dir  install the files under that folder instead of /, as a packager would:
#                      no root needed, and the steps that cannot be redirected (apt, user
#                      accounts, ownership, the venv, starting services) are reported and skipped.
#                      Units are enabled with `systemctl --root`.
#   PEDAL_SRC=/path    the repository to install from (default: the folder above this script)
set -euo pipefail

SRC_DIR="${PEDAL_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
CFG_DIR="$SRC_DIR/firmware_cfg"
DESTDIR="${DESTDIR:-}"
DESTDIR="${DESTDIR%/}"          # "/" and "" both mean this system

PEDAL_USER=pedal
OPT_DIR=/opt/pedal
ETC_DIR=/etc/pedal
STATE_DIR=/var/lib/pedal
WEB_USER=pedal-web
UNITS=(pedal.service pedal-selftest.service pedal-cpu-performance.service pedal-web.service)
ENABLED_UNITS=(pedal-cpu-performance.service pedal.service pedal-web.service)
APT_PACKAGES=(python3-venv python3-dev libasound2-dev gcc alsa-utils libsndfile1 i2c-tools polkitd)
# From the Raspberry Pi archive (absent on plain Debian): the pin libraries gpiozero drives.
APT_OPTIONAL=(python3-lgpio python3-spidev)
HARDWARE_GROUPS=(audio gpio spi i2c)

DRY_RUN=0
DO_APT=1
DO_VENV=1
DO_BOOT=1
READ_ONLY_ROOT=0
DATA_PARTITION=""
LOGIN_USER=""
BUNDLES=()

say()  { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'provision.sh: warning: %s\n' "$*" >&2; }
die()  { printf 'provision.sh: error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# Every change goes through run: printed always, executed unless --dry-run.
# Arguments are shown as a shell would need them, so a printed line can be pasted and run.
run() {
    local shown="" a
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=,+@%{}-]+$ ]]; then shown+=" $a"; else shown+=" '${a//\'/\'\\\'\'}'"; fi
    done
    printf '    +%s\n' "$shown"
    if [[ $DRY_RUN == 0 ]]; then "$@"; fi
}

# The path on the target: /etc/x, or $DESTDIR/etc/x when staging.
target() { printf '%s%s' "$DESTDIR" "$1"; }

staging() { [[ -n $DESTDIR ]]; }

# The first of these paths that is a file on the target (bookworm's /boot/firmware, or older /boot).
first_file() {
    local c
    for c in "$@"; do
        if [[ -f $(target "$c") ]]; then printf '%s' "$c"; return 0; fi
    done
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY_RUN=1 ;;
        --no-apt) DO_APT=0 ;;
        --no-venv) DO_VENV=0 ;;
        --no-boot-config) DO_BOOT=0 ;;
        --read-only-root) READ_ONLY_ROOT=1 ;;
        --data-partition) [[ $# -ge 2 ]] || die "--data-partition needs a device (LABEL=pedal-data, PARTUUID=...)"; DATA_PARTITION="$2"; shift ;;
        --data-partition=*) DATA_PARTITION="${1#--data-partition=}" ;;
        --user) [[ $# -ge 2 ]] || die "--user needs a name"; LOGIN_USER="$2"; shift ;;
        --user=*) LOGIN_USER="${1#--user=}" ;;
        --bundle) [[ $# -ge 2 ]] || die "--bundle needs a file"; BUNDLES+=("$2"); shift ;;
        --bundle=*) BUNDLES+=("${1#--bundle=}") ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (try --help)" ;;
    esac
    shift
done

# --- preflight ---------------------------------------------------------------------------------

[[ -d $SRC_DIR/device ]] || die "no device/ package under $SRC_DIR (set PEDAL_SRC to the repository)"
[[ -f $SRC_DIR/requirements/device.txt ]] || die "missing $SRC_DIR/requirements/device.txt"
for f in pedal.toml asound.conf 99-pedal-realtime.conf config.txt.append modules-load.d/pedal.conf \
         NetworkManager/99-pedal-wifi-powersave.conf "${UNITS[@]/#/systemd/}"; do
    [[ -f $CFG_DIR/$f ]] || die "missing $CFG_DIR/$f"
done
for b in "${BUNDLES[@]}"; do
    [[ -e $b ]] || die "bundle $b does not exist"
done
if [[ $READ_ONLY_ROOT == 1 && -z $DATA_PARTITION ]]; then
    die "--read-only-root needs --data-partition SPEC: with / read-only, bundles and the config need a writable partition (firmware_cfg/README.md)"
fi
if [[ -n $DATA_PARTITION && $READ_ONLY_ROOT == 0 ]]; then
    die "--data-partition is for --read-only-root"
fi
if ! staging && [[ -r /proc/cmdline ]] && grep -qE '(^| )overlayroot=[^ ]' /proc/cmdline \
        && [[ "$(findmnt -n -o FSTYPE / 2>/dev/null)" == overlay ]]; then
    die "the root file system is read-only (overlayroot): changes would vanish at the next boot. Run 'sudo overlayroot-chroot' and provision.sh inside it, or turn the overlay off first (firmware_cfg/README.md)"
fi
if [[ $DRY_RUN == 0 && $EUID -ne 0 ]] && ! staging; then
    die "run as root (sudo $0), or with --dry-run to see what it would do"
fi
if staging; then
    [[ -d $DESTDIR ]] || die "DESTDIR=$DESTDIR is not a folder"
    DO_APT=0; DO_VENV=0
fi
if [[ $DRY_RUN == 1 ]]; then say "dry run: nothing is changed"; fi
say "installing the pedal from $SRC_DIR into ${DESTDIR:-/}"
arch="$(uname -m)"
if [[ $arch != aarch64 ]] && ! staging; then
    warn "this machine is $arch; the pedal targets a 64-bit Raspberry Pi OS (aarch64)"
fi

# Copy a file to the target if it differs; mode and a one-time backup of a foreign original.
install_file() {  # src dest mode
    local src="$1" dest; dest="$(target "$2")"
    if [[ -f $dest ]] && cmp -s "$src" "$dest"; then
        note "$2 is up to date"
        return
    fi
    if [[ -f $dest && ! -f $dest.pedal-orig ]] && ! grep -q "SignalTrain-Pi" "$dest"; then
        run cp -p "$dest" "$dest.pedal-orig"   # someone else's file: keep it once
    fi
    run install -D -m "$3" "$src" "$dest"
}

# --- 1. packages -------------------------------------------------------------------------------

say "1/6 packages"
if [[ $DO_APT == 1 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    run apt-get update
    run apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
    for pkg in "${APT_OPTIONAL[@]}"; do
        if apt-cache show "$pkg" >/dev/null 2>&1; then
            run apt-get install -y --no-install-recommends "$pkg"
        else
            warn "$pkg is not in the apt sources (not Raspberry Pi OS?); gpiozero will look for another pin library"
        fi
    done
else
    note "skipped${DESTDIR:+ (DESTDIR set)}: apt-get install ${APT_PACKAGES[*]} ${APT_OPTIONAL[*]}"
fi

# --- 2. users ----------------------------------------------------------------------------------

say "2/6 user '$PEDAL_USER'"
if [[ -z $LOGIN_USER ]]; then
    LOGIN_USER="${SUDO_USER:-}"
    if [[ $LOGIN_USER == root ]]; then LOGIN_USER=""; fi
    if [[ -z $LOGIN_USER ]]; then LOGIN_USER="$(getent passwd 1000 | cut -d: -f1 || true)"; fi
fi
if staging; then
    note "skipped (DESTDIR set): useradd --system $PEDAL_USER, groups ${HARDWARE_GROUPS[*]}"
else
    for g in "${HARDWARE_GROUPS[@]}"; do
        if ! getent group "$g" >/dev/null; then
            warn "group $g does not exist (not Raspberry Pi OS?); creating it, but no udev rule gives it its devices"
            run groupadd --system "$g"
        fi
    done
    if ! getent group "$PEDAL_USER" >/dev/null; then
        run groupadd --system "$PEDAL_USER"
    fi
    groups_csv="$(IFS=,; echo "${HARDWARE_GROUPS[*]}")"
    if id "$PEDAL_USER" >/dev/null 2>&1; then
        run usermod --gid "$PEDAL_USER" --append --groups "$groups_csv" "$PEDAL_USER"
    else
        run useradd --system --gid "$PEDAL_USER" --groups "$groups_csv" --home-dir "$STATE_DIR" \
            --no-create-home --shell /usr/sbin/nologin --comment "SignalTrain-Pi pedal daemon" "$PEDAL_USER"
    fi
    # The web page runs as its own user; group pedal gives it the status socket and the bundles folder.
    if id "$WEB_USER" >/dev/null 2>&1; then
        run usermod --append --groups "$PEDAL_USER" "$WEB_USER"
    else
        run useradd --system --user-group --groups "$PEDAL_USER" --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "SignalTrain-Pi pedal web page" "$WEB_USER"
    fi
    if [[ -n $LOGIN_USER ]] && id "$LOGIN_USER" >/dev/null 2>&1; then
        # Bundles copied over ssh land in /var/lib/pedal/bundles; audio lets the user run tools.
        run usermod --append --groups "$PEDAL_USER,audio" "$LOGIN_USER"
    else
        note "no login user to add to group $PEDAL_USER (use --user NAME)"
    fi
fi

# --- 3. code -----------------------------------------------------------------------------------

say "3/6 code into $OPT_DIR"
opt="$(target "$OPT_DIR")"
run mkdir -p "$opt/requirements" "$opt/firmware_cfg"
# A fresh copy beside the old one, then swapped in: never a half-copied package.
run rm -rf "$opt/device.new"
run cp -r "$SRC_DIR/device" "$opt/device.new"
run find "$opt/device.new" -name __pycache__ -prune -exec rm -rf {} +
run rm -rf "$opt/device"
run mv -T "$opt/device.new" "$opt/device"
run install -m 0644 "$SRC_DIR/requirements/device.txt" "$opt/requirements/device.txt"
run install -m 0644 "$CFG_DIR/README.md" "$opt/firmware_cfg/README.md"

# --- 4. venv -----------------------------------------------------------------------------------

say "4/6 Python environment $OPT_DIR/venv"
venv="$OPT_DIR/venv"
if [[ $DO_VENV == 1 ]]; then
    if [[ ! -x $venv/bin/python ]]; then
        # System site packages: lgpio and spidev come from apt (built for the Pi's kernel).
        run python3 -m venv --system-site-packages "$venv"
    else
        note "$venv exists; updating its packages"
    fi
    run "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip
    run "$venv/bin/python" -m pip install --disable-pip-version-check -r "$OPT_DIR/requirements/device.txt"
    # checked-hash: the .pyc files depend on the source only, not on when it was copied, so a
    # second run leaves the same bytes (and an edited .py is still noticed)
    run "$venv/bin/python" -m compileall -q --invalidation-mode checked-hash "$OPT_DIR/device"
    run env PYTHONPATH="$OPT_DIR" "$venv/bin/python" -c "import device.config, device.bundle"
else
    note "skipped${DESTDIR:+ (DESTDIR set: build the venv on the target)}: python3 -m venv --system-site-packages $venv; pip install -r $OPT_DIR/requirements/device.txt"
fi

# --- 5. configuration --------------------------------------------------------------------------

say "5/6 configuration"
# The daemon config is the user's once installed: never overwrite an edited one.
toml="$(target "$ETC_DIR/pedal.toml")"
if [[ ! -f $toml ]]; then
    run install -D -m 0644 "$CFG_DIR/pedal.toml" "$toml"
elif cmp -s "$CFG_DIR/pedal.toml" "$toml"; then
    note "$ETC_DIR/pedal.toml is up to date"
else
    note "$ETC_DIR/pedal.toml has local edits: kept; the shipped one goes to pedal.toml.dist"
    run install -D -m 0644 "$CFG_DIR/pedal.toml" "$toml.dist"
fi
if [[ $DO_VENV == 1 ]]; then  # the daemon would refuse a bad config at start: say so now
    if ! run env PYTHONPATH="$OPT_DIR" "$venv/bin/python" -c \
            "from device.config import load_config; load_config('$ETC_DIR/pedal.toml')"; then
        warn "$ETC_DIR/pedal.toml is refused (the lines above say why); the pedal will not start until it is fixed"
    fi
fi
# The web page's password: only its scrypt hash is stored, readable by root and pedal-web. Kept if
# set; asked for on a terminal (or taken from PEDAL_WEB_PASSWORD); else the page refuses every login
# until it is set (never a default password, never one baked into an image).
webpw="$ETC_DIR/web-password"
if [[ -f $(target "$webpw") ]]; then
    note "$webpw is set (change it: sudo $venv/bin/python -m device.web passwd)"
elif [[ $DO_VENV == 0 ]]; then
    note "skipped: the web page's password (set it on the box: sudo $venv/bin/python -m device.web passwd)"
elif [[ -n ${PEDAL_WEB_PASSWORD:-} ]]; then
    printf '%s\n' "$PEDAL_WEB_PASSWORD" | run env PYTHONPATH="$OPT_DIR" "$venv/bin/python" -m device.web passwd --stdin --file "$webpw"
elif [[ -t 0 && $DRY_RUN == 0 ]]; then
    say "the web page's password (http://$(hostname).local:8080/)"
    run env PYTHONPATH="$OPT_DIR" "$venv/bin/python" -m device.web passwd --file "$webpw" ||
        warn "no web page password set: the page refuses every login until you run: sudo $venv/bin/python -m device.web passwd"
else
    warn "no web page password set (no terminal, no PEDAL_WEB_PASSWORD): the page refuses every login until you run: sudo $venv/bin/python -m device.web passwd"
fi
install_file "$CFG_DIR/asound.conf" /etc/asound.conf 0644
install_file "$CFG_DIR/99-pedal-realtime.conf" /etc/security/limits.d/99-pedal-realtime.conf 0644
# i2c-dev, spidev, snd loaded at boot: pedal.service's DeviceAllow= needs their device classes
install_file "$CFG_DIR/modules-load.d/pedal.conf" /etc/modules-load.d/pedal.conf 0644
install_file "$CFG_DIR/NetworkManager/99-pedal-wifi-powersave.conf" \
    /etc/NetworkManager/conf.d/99-pedal-wifi-powersave.conf 0644
for u in "${UNITS[@]}"; do
    install_file "$CFG_DIR/systemd/$u" "/etc/systemd/system/$u" 0644
done
# the web page's user may stop and start pedal.service (a capture from the page), nothing else
install_file "$CFG_DIR/polkit/50-pedal-web.rules" /etc/polkit-1/rules.d/50-pedal-web.rules 0644

bundles="$(target "$STATE_DIR/bundles")"
run mkdir -p "$bundles"
# setgid group pedal: what the login user copies in stays readable by the daemon.
run chmod 2775 "$(target "$STATE_DIR")" "$bundles"
if ! staging; then
    run chown "$PEDAL_USER:$PEDAL_USER" "$STATE_DIR" "$bundles"
fi
for b in "${BUNDLES[@]}"; do
    name="$(basename "$b")"
    if [[ -d $b ]]; then
        run cp -r "$b" "$bundles/"
        staging || run chown -R "$PEDAL_USER:$PEDAL_USER" "$bundles/$name"
    elif [[ -f $bundles/$name ]] && cmp -s "$b" "$bundles/$name"; then
        note "$STATE_DIR/bundles/$name is up to date"
    else
        # A power cut mid-copy must leave the old bundle or the new one: a hidden temporary file
        # beside it, synced, renamed over it, the directory synced (as device/atomic.py does).
        tmp_bundle="$bundles/.$name.tmp-provision"
        run install -m 0664 "$b" "$tmp_bundle"
        staging || run chown "$PEDAL_USER:$PEDAL_USER" "$tmp_bundle"
        run sync "$tmp_bundle"
        run mv -f "$tmp_bundle" "$bundles/$name"
        run sync "$bundles"
    fi
done

if [[ $READ_ONLY_ROOT == 1 ]]; then
    say "read-only root: / under a RAM overlay, $STATE_DIR on $DATA_PARTITION"
    # The data partition at /var/lib/pedal: our own two lines in fstab, replaced on every run.
    fstab="$(target /etc/fstab)"
    marker="# SignalTrain-Pi: bundles, config, last good bundle (provision.sh --read-only-root)"
    new_fstab="$(mktemp)"
    if [[ -f $fstab ]]; then
        awk -v m="$marker" '$0 == m {skip = 2} skip {skip--; next} {print}' "$fstab" > "$new_fstab"
    fi
    printf '%s\n%s\n' "$marker" "$DATA_PARTITION $STATE_DIR ext4 defaults,noatime,nofail,x-systemd.device-timeout=10s 0 2" >> "$new_fstab"
    if [[ -f $fstab ]] && cmp -s "$new_fstab" "$fstab"; then
        note "/etc/fstab is up to date"
    else
        run install -D -m 0644 "$new_fstab" "$fstab"
    fi
    rm -f "$new_fstab"
    # The config lives on the data partition; /etc/pedal/pedal.toml links to it (the daemon and
    # `python -m device knobs --write` follow the link and write beside the real file).
    data_toml="$STATE_DIR/pedal.toml"
    link="../..$data_toml"  # relative: right on the box and inside a DESTDIR alike
    if [[ -L $toml && "$(readlink "$toml")" == "$link" ]]; then
        note "$ETC_DIR/pedal.toml links to $data_toml"
    else
        [[ -e $(target "$data_toml") ]] || run cp -p "$toml" "$(target "$data_toml")"
        run ln -sfn "$link" "$toml"
    fi
    # Whatever is in /var/lib/pedal now must be on the partition, or it vanishes under the mount.
    if staging; then
        note "skipped (DESTDIR set): copying $STATE_DIR onto $DATA_PARTITION"
    elif findmnt -n "$STATE_DIR" >/dev/null 2>&1; then
        note "$STATE_DIR is mounted already"
    elif dev="$(findfs "$DATA_PARTITION" 2>/dev/null || { [[ -b $DATA_PARTITION ]] && echo "$DATA_PARTITION"; })" && [[ -n $dev ]]; then
        mnt="$(mktemp -d)"
        run mount "$dev" "$mnt"
        run cp -a --no-clobber "$STATE_DIR/." "$mnt/"
        run umount "$mnt"
        rmdir "$mnt"
        run mount "$STATE_DIR"
        run chown "$PEDAL_USER:$PEDAL_USER" "$STATE_DIR"
        run chmod 2775 "$STATE_DIR"
    else
        warn "$DATA_PARTITION is not here now (a chroot or an image build?): $STATE_DIR stays on the root file system until it is; copy its files onto the partition before the first boot with the overlay"
    fi
    # The daemon waits for the partition.
    dropin="$(mktemp)"
    printf '%s\n' "# SignalTrain-Pi (provision.sh --read-only-root): bundles and the config are on the data partition" \
        "[Unit]" "RequiresMountsFor=$STATE_DIR" > "$dropin"
    install_file "$dropin" /etc/systemd/system/pedal.service.d/10-data-partition.conf 0644
    rm -f "$dropin"
    # overlayroot (Debian's, which raspi-config uses too) mounts / read-only under tmpfs from the
    # initramfs; recurse=0 leaves the data partition writable. The kernel command line turns it on.
    if [[ $DO_APT == 1 ]]; then
        run apt-get install -y --no-install-recommends overlayroot
    else
        note "skipped${DESTDIR:+ (DESTDIR set)}: apt-get install overlayroot"
    fi
    cmdline="$(first_file /boot/firmware/cmdline.txt /boot/cmdline.txt)"
    if [[ -z $cmdline ]]; then
        warn "no /boot/firmware/cmdline.txt${DESTDIR:+ under $DESTDIR}: add overlayroot=tmpfs:recurse=0 to the kernel command line yourself"
    elif grep -qE '(^| )overlayroot=' "$(target "$cmdline")"; then
        note "$cmdline has overlayroot= already: $(grep -oE '(^| )overlayroot=[^ ]*' "$(target "$cmdline")" | tr -d ' ')"
    else
        [[ -f $(target "$cmdline").pedal-orig ]] || run cp -p "$(target "$cmdline")" "$(target "$cmdline").pedal-orig"
        run sed -i '1 s/^/overlayroot=tmpfs:recurse=0 /' "$(target "$cmdline")"
        note "$cmdline changed: the root is read-only from the next boot (a Pi OS initramfs is needed: auto_initramfs=1)"
    fi
fi

if [[ $DO_BOOT == 1 ]]; then
    boot="$(first_file /boot/firmware/config.txt /boot/config.txt)"
    if [[ -z $boot ]]; then
        warn "no /boot/firmware/config.txt or /boot/config.txt${DESTDIR:+ under $DESTDIR}: boot config not changed"
    else
        bootfile="$(target "$boot")"
        begin="$(head -n 1 "$CFG_DIR/config.txt.append")"
        end="$(tail -n 1 "$CFG_DIR/config.txt.append")"
        # Drop an earlier block (between the marker lines), then append the current one.
        new="$(mktemp)"
        trap 'rm -f "$new"' EXIT
        awk -v b="$begin" -v e="$end" '$0 == b {skip = 1} !skip {print} $0 == e {skip = 0}' "$bootfile" > "$new"
        # One blank line before the block, however the file ended.
        sed -i -e :a -e '/^\n*$/{$d;N;ba' -e '}' "$new"
        printf '\n' >> "$new"
        cat "$CFG_DIR/config.txt.append" >> "$new"
        if cmp -s "$new" "$bootfile"; then
            note "$boot is up to date"
        else
            [[ -f $bootfile.pedal-orig ]] || run cp -p "$bootfile" "$bootfile.pedal-orig"
            run cp "$new" "$bootfile"
            note "$boot changed: reboot to load the audio HAT overlay"
        fi
    fi
else
    note "skipped (--no-boot-config): /boot/firmware/config.txt"
fi

# --- 6. services -------------------------------------------------------------------------------

say "6/6 services"
if staging; then
    run systemctl --root="$DESTDIR" enable "${ENABLED_UNITS[@]}"
else
    if [[ -d /run/systemd/system ]]; then
        run systemctl daemon-reload
    fi
    run systemctl enable "${ENABLED_UNITS[@]}"
    if [[ -d /run/systemd/system ]]; then
        # An update of a running pedal takes effect now; a first install waits for the reboot
        # (the HAT overlay needs it).
        run systemctl try-restart pedal.service pedal-web.service
    fi
fi

say "done"
cat <<EOF
Next:
  1. reboot (the audio HAT overlay and the group memberships take effect)
  2. copy a bundle:   scp comp4.pedal ${LOGIN_USER:-pi}@pedal.local:$STATE_DIR/bundles/
  3. check:           sudo systemctl start pedal-selftest; journalctl -u pedal-selftest -b
  4. play:            journalctl -u pedal -f
  5. from a phone:    http://pedal.local:8080/  (password: sudo $OPT_DIR/venv/bin/python -m device.web passwd)
Config: $ETC_DIR/pedal.toml    Guide: $OPT_DIR/firmware_cfg/README.md
EOF
