#!/usr/bin/env bash
# prepare.sh: put the pedal stage, this repository's device code and configs, and any bundles to
# bake in, into a pi-gen checkout. Then build there with ./build-docker.sh (or sudo ./build.sh).
#
#   firmware_cfg/image/prepare.sh PI_GEN_DIR [BUNDLE.pedal ...]
#
# It (re)creates PI_GEN_DIR/stage-pedal, writes PI_GEN_DIR/config from config.pedal (an existing,
# different config is kept as config.before-pedal) and marks stage2 so that only the pedal image
# is exported. Safe to run again after changing the code.
set -euo pipefail

die() { printf 'prepare.sh: error: %s\n' "$*" >&2; exit 1; }

[[ $# -ge 1 && $1 != -h && $1 != --help ]] || { sed -n '2,10{s/^# \{0,1\}//;p}' "$0"; exit 0; }
PIGEN="$(cd "$1" 2>/dev/null && pwd)" || die "no such folder: $1"
shift
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"

[[ -d $PIGEN/stage2 ]] || die "$PIGEN does not look like pi-gen (no stage2/); git clone --branch arm64 https://github.com/RPi-Distro/pi-gen"
for b in "$@"; do
    [[ -f $b && $b == *.pedal ]] || die "not a bundle archive: $b (expected FILE.pedal)"
done

stage="$PIGEN/stage-pedal"
echo "==> $stage"
rm -rf "$stage"
cp -a "$HERE/stage-pedal" "$stage"
files="$stage/00-install/files/signaltrain-pi"
mkdir -p "$files/requirements" "$files/bundles"
cp -a "$REPO/device" "$files/device"
find "$files/device" -name __pycache__ -prune -exec rm -rf {} +
cp -a "$REPO/requirements/device.txt" "$files/requirements/device.txt"
cp -a "$REPO/firmware_cfg" "$files/firmware_cfg"
rm -rf "$files/firmware_cfg/image"           # the image does not need to build itself
for b in "$@"; do
    cp "$b" "$files/bundles/"
    echo "    bundle $(basename "$b")"
done
{
    echo "source=$REPO"
    if command -v git >/dev/null && git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
        echo "commit=$(git -C "$REPO" rev-parse --verify -q HEAD || echo none)"
        if [[ -n $(git -C "$REPO" status --porcelain -- device requirements firmware_cfg 2>/dev/null) ]]; then
            echo "dirty=yes"
        fi
    fi
} > "$files/SOURCE"

if [[ -f $PIGEN/config ]] && ! cmp -s "$HERE/config.pedal" "$PIGEN/config"; then
    cp "$PIGEN/config" "$PIGEN/config.before-pedal"
    echo "==> kept your $PIGEN/config as config.before-pedal"
fi
cp "$HERE/config.pedal" "$PIGEN/config"
touch "$PIGEN/stage2/SKIP_IMAGES"             # export the pedal image only, not plain Lite
echo "==> ready. Now:  cd $PIGEN && ./build-docker.sh    (image in $PIGEN/deploy/)"
