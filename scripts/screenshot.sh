#!/usr/bin/env bash
# Takes docs/screenshot-file-manager.png: a file manager (PCManFM) browsing
# an older snapshot through `snapfs mount`, on a virtual X display.
#
#   scripts/screenshot.sh [OUTPUT.png]     (default docs/screenshot-file-manager.png)
#
# Debian/Ubuntu, as root: installs what is missing (xvfb, pcmanfm,
# imagemagick, x11-utils, fuse3, an icon theme and a font). Builds snapfs
# unless SNAPFS_BIN points at a binary. Everything else lives in a temporary
# directory that is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:-docs/screenshot-file-manager.png}
display=:99
max_png_bytes=$((300 * 1024))

# ImageMagick's own binaries, even if something else named `convert` comes
# first on PATH.
im_convert=/usr/bin/convert
im_import=/usr/bin/import

missing=()
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
command -v pcmanfm >/dev/null 2>&1 || missing+=(pcmanfm)
[[ -x $im_import && -x $im_convert ]] || missing+=(imagemagick)
command -v xwininfo >/dev/null 2>&1 || missing+=(x11-utils)
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
[[ -d /usr/share/icons/Adwaita ]] || missing+=(adwaita-icon-theme)
[[ -d /usr/share/fonts/truetype/dejavu ]] || missing+=(fonts-dejavu-core)
if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "please install: ${missing[*]}" >&2
        exit 1
    fi
    echo "== installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [[ -n ${SNAPFS_BIN:-} ]]; then
    snapfs=$SNAPFS_BIN
else
    echo "== building"
    cargo build --release --quiet
    snapfs=$PWD/target/release/snapfs
fi

work=$(mktemp -d /tmp/snapfs-screenshot.XXXXXX)
repo=$work/repo
# The mount point: /mnt/snapfs as in the README when it is free, else one
# in the temporary directory.
made_mnt=0
if [[ ! -e /mnt/snapfs ]] && mkdir -p /mnt/snapfs 2>/dev/null; then
    mnt=/mnt/snapfs
    made_mnt=1
elif [[ -d /mnt/snapfs && -z $(ls -A /mnt/snapfs) ]] && ! mountpoint -q /mnt/snapfs; then
    mnt=/mnt/snapfs
else
    mnt=$work/mnt
fi
xvfb_pid=
mount_pid=
fm_pid=
cleanup() {
    set +e
    [[ -n $fm_pid ]] && kill "$fm_pid" 2>/dev/null && wait "$fm_pid" 2>/dev/null
    if [[ -n $mount_pid ]]; then
        fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -u -z "$mnt" 2>/dev/null
        wait "$mount_pid" 2>/dev/null
    fi
    [[ -n $xvfb_pid ]] && kill "$xvfb_pid" 2>/dev/null && wait "$xvfb_pid" 2>/dev/null
    ((made_mnt)) && rmdir /mnt/snapfs 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------- the documents
# A home directory's Documents folder. It is made under the temporary
# directory and backed up as /home/alice/Documents: each ingest runs in a
# private mount namespace where that directory is bind-mounted on /home, so
# the machine's own /home is neither read nor touched.
home=$work/home
docs=$home/alice/Documents
mkdir -p "$docs/Photos" "$docs/Invoices"
ingest() { # NAME
    unshare -m sh -c 'mount --make-rprivate / && mount --bind "$1" /home && exec "$2" --repo "$3" ingest -q --name "$4" /home/alice/Documents' \
        sh "$home" "$snapfs" "$repo" "$1" >/dev/null
}

zip_doc() { # FILE MIMETYPE TEXT: a small OpenDocument-like zip
    local file=$1 mime=$2 text=$3 tmp
    tmp=$(mktemp -d "$work/odf.XXXXXX")
    printf '%s' "$mime" >"$tmp/mimetype"
    printf '<?xml version="1.0"?><office:document-content><office:text>%s</office:text></office:document-content>\n' \
        "$text" >"$tmp/content.xml"
    (cd "$tmp" && python3 -c '
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.write("mimetype", compress_type=zipfile.ZIP_STORED)
    z.write("content.xml", compress_type=zipfile.ZIP_DEFLATED)
' "$file")
    rm -rf "$tmp"
}
zip_doc "$docs/Quarterly report.odt" application/vnd.oasis.opendocument.text "Q3 figures, first draft"
zip_doc "$docs/Budget 2026.ods" application/vnd.oasis.opendocument.spreadsheet "budget"
zip_doc "$docs/Team offsite.odp" application/vnd.oasis.opendocument.presentation "slides"
printf 'Call the plumber on Thursday.\nBack up the laptop.\n' >"$docs/notes.txt"
printf '# Reading list\n\n- The Design of Everyday Things\n' >"$docs/reading-list.md"
for i in 1 2 3; do
    printf 'Invoice %04d\nAmount: %d.00 EUR\n' "$i" $((120 * i)) >"$docs/Invoices/invoice-000$i.txt"
done
# Photos: drawn by ImageMagick, plus an image shipped with the system.
"$im_convert" -size 640x480 gradient:skyblue-seagreen \
    -fill khaki -draw 'circle 480,140 520,180' "$docs/Photos/beach.jpg"
"$im_convert" -size 640x480 gradient:midnightblue-darkorange \
    -fill white -draw 'circle 160,120 166,126' "$docs/Photos/sunset.jpg"
"$im_convert" -size 640x480 plasma:forestgreen-darkgreen -seed 7 "$docs/Photos/forest.jpg" 2>/dev/null ||
    "$im_convert" -size 640x480 gradient:forestgreen-darkgreen "$docs/Photos/forest.jpg"
if [[ -f /usr/share/pixmaps/debian-logo.png ]]; then
    cp /usr/share/pixmaps/debian-logo.png "$docs/Photos/logo.png"
fi
zip_doc "$docs/Old draft.odt" application/vnd.oasis.opendocument.text "to be deleted"

# ---------------------------------------------------------------- two snapshots
"$snapfs" --repo "$repo" init --encryption none >/dev/null
older=2026-11-23T02-00-00Z
newer=2026-11-24T02-00-00Z
ingest "$older"
# The next day: a document rewritten, one deleted, a new one.
zip_doc "$docs/Quarterly report.odt" application/vnd.oasis.opendocument.text "Q3 figures, final"
rm -f "$docs/Old draft.odt"
printf 'Meeting moved to Friday.\n' >"$docs/meeting.txt"
ingest "$newer"
"$snapfs" --repo "$repo" snapshots
"$snapfs" --repo "$repo" diff "$older" "$newer" /home/alice/Documents

# ---------------------------------------------------------------- mount
mkdir -p "$mnt"
"$snapfs" --repo "$repo" mount "$mnt" >"$work/mount.log" 2>&1 &
mount_pid=$!
for _ in $(seq 1 100); do
    grep -q '^mounted' "$work/mount.log" && break
    kill -0 "$mount_pid" 2>/dev/null || { cat "$work/mount.log" >&2; exit 1; }
    sleep 0.1
done
grep -q '^mounted' "$work/mount.log" || { cat "$work/mount.log" >&2; exit 1; }
target=$mnt/$older/home/alice/Documents
ls -l "$target"

# ---------------------------------------------------------------- X and the file manager
Xvfb "$display" -screen 0 1280x800x24 -nolisten tcp >"$work/xvfb.log" 2>&1 &
xvfb_pid=$!
for _ in $(seq 1 100); do
    DISPLAY=$display xwininfo -root >/dev/null 2>&1 && break
    kill -0 "$xvfb_pid" 2>/dev/null || { cat "$work/xvfb.log" >&2; exit 1; }
    sleep 0.1
done
DISPLAY=$display xwininfo -root >/dev/null

# A fresh profile: configuration, cache and home under the temporary directory.
fm_home=$work/fm-home
mkdir -p "$fm_home/config/pcmanfm/default" "$fm_home/config/libfm" "$fm_home/cache" \
    "$fm_home/data" "$fm_home/runtime"
chmod 700 "$fm_home/runtime"
cat >"$fm_home/config/pcmanfm/default/pcmanfm.conf" <<'EOF'
[config]
bm_open_method=0

[volume]
mount_on_startup=0
mount_removable=0
autorun=0

[ui]
always_show_tabs=0
win_width=1280
win_height=800
splitter_pos=230
side_pane_mode=places
view_mode=icon
show_hidden=0
sort=name;ascending;
show_statusbar=1
pathbar_mode_buttons=0
EOF
cat >"$fm_home/config/libfm/libfm.conf" <<'EOF'
[config]
single_click=0
use_trash=0
confirm_del=1
thumbnail_local=1
thumbnail_max=8192

[ui]
big_icon_size=96
small_icon_size=16
thumbnail_size=128
show_thumbnail=1
EOF
printf 'gtk-icon-theme-name="Adwaita"\ngtk-font-name="DejaVu Sans 10"\n' >"$fm_home/.gtkrc-2.0"
# Bookmarks in the side pane: every snapshot, and this folder in each.
mkdir -p "$fm_home/config/gtk-3.0"
{
    printf 'file://%s All snapshots\n' "$mnt"
    printf 'file://%s/%s/home/alice/Documents Documents, 23 Nov\n' "$mnt" "$older"
    printf 'file://%s/%s/home/alice/Documents Documents, 24 Nov\n' "$mnt" "$newer"
} >"$fm_home/config/gtk-3.0/bookmarks"
cp "$fm_home/config/gtk-3.0/bookmarks" "$fm_home/.gtk-bookmarks"

env -u DBUS_SESSION_BUS_ADDRESS \
    DISPLAY=$display HOME="$fm_home" XDG_CONFIG_HOME="$fm_home/config" \
    XDG_CACHE_HOME="$fm_home/cache" XDG_DATA_HOME="$fm_home/data" \
    XDG_RUNTIME_DIR="$fm_home/runtime" NO_AT_BRIDGE=1 \
    pcmanfm --no-desktop "$target" >"$work/pcmanfm.log" 2>&1 &
fm_pid=$!

# Wait for the window, then until the screen stops changing (icons and
# thumbnails are drawn after the window appears).
for _ in $(seq 1 150); do
    DISPLAY=$display xwininfo -root -tree 2>/dev/null | grep -qi '"pcmanfm"' && break
    kill -0 "$fm_pid" 2>/dev/null || { cat "$work/pcmanfm.log" >&2; exit 1; }
    sleep 0.2
done
DISPLAY=$display xwininfo -root -tree | grep -qi '"pcmanfm"' || {
    echo "the file manager window did not appear" >&2
    cat "$work/pcmanfm.log" >&2
    exit 1
}
last=
stable=0
for _ in $(seq 1 40); do
    sleep 0.5
    sum=$(DISPLAY=$display "$im_import" -window root png:- | md5sum)
    if [[ $sum == "$last" ]]; then
        stable=$((stable + 1))
        ((stable >= 3)) && break
    else
        stable=0
    fi
    last=$sum
done

mkdir -p "$(dirname "$out")"
DISPLAY=$display "$im_import" -window root "$work/shot.png"
"$im_convert" "$work/shot.png" -strip "$out"
if (($(stat -c %s "$out") > max_png_bytes)); then
    "$im_convert" "$work/shot.png" -strip -colors 256 "$out"
fi
if (($(stat -c %s "$out") > max_png_bytes)); then
    "$im_convert" "$work/shot.png" -strip -resize 1024x -colors 256 "$out"
fi
echo "== wrote $out ($(stat -c %s "$out") bytes): pcmanfm in $target"
