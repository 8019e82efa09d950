# Shared by tests/pi/test-pi.sh, test-image.sh and test-systemd.sh (sourced, not run).

# rm -rf that cannot leave the root's own file system: whatever is still mounted inside (an
# interrupted run's) is unmounted first, and --one-file-system stops at any mount point left.
# (An earlier script removed a root with the host's /dev still bind-mounted in it, and with it
# this machine's /dev: roots are removed by this function only.)
safe_rm() {  # path...
    local p m
    for p in "$@"; do
        [[ -e $p ]] || continue
        p="$(realpath "$p")"
        findmnt -rn -o TARGET | awk -v p="$p" 'index($0, p "/") == 1' | sort -r | while read -r m; do umount -l "$m"; done
        rm -rf --one-file-system "$p"
    done
}

# The checkout as git sees it (tracked files and untracked ones git does not ignore) into DEST.
copy_checkout() {  # repo dest
    (cd "$1" && git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
        [[ -f $f ]] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -xf - -C "$2"
}
