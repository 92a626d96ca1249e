#!/usr/bin/env bash
# Install snapfs with its systemd units, completions and man pages:
#   sudo scripts/systemd/install.sh        (from the repository root, after cargo build --release)
# Then edit /etc/default/snapfs and /etc/snapfs/excludes, and run
#   set -a; . /etc/default/snapfs; set +a; snapfs init
# (encrypted with the random passphrase made in /etc/snapfs/passphrase), and:
#   systemctl enable --now snapfs-backup.timer snapfs-prune.timer snapfs-verify.timer snapfs-mount.service
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
bin=$top/target/release/snapfs
[[ -x $bin ]] || { echo "build first: cargo build --release" >&2; exit 1; }
install -m 0755 "$bin" /usr/local/bin/snapfs
install -d /etc/snapfs /usr/local/share/man/man1 /usr/share/bash-completion/completions
[[ -e /etc/default/snapfs ]] || install -m 0644 "$here/snapfs.env" /etc/default/snapfs
[[ -e /etc/snapfs/excludes ]] || install -m 0644 "$here/excludes" /etc/snapfs/excludes
if [[ ! -e /etc/snapfs/passphrase ]]; then
    (umask 077 && head -c 33 /dev/urandom | base64 >/etc/snapfs/passphrase)
    echo "made a random passphrase in /etc/snapfs/passphrase: keep a copy off this machine"
fi
for u in "$here"/*.service "$here"/*.timer; do
    install -m 0644 "$u" /etc/systemd/system/
done
/usr/local/bin/snapfs man /usr/local/share/man/man1 >/dev/null
/usr/local/bin/snapfs completions bash > /usr/share/bash-completion/completions/snapfs
if command -v systemctl >/dev/null 2>&1; then systemctl daemon-reload || true; fi
echo "installed; edit /etc/default/snapfs, then: systemctl enable --now snapfs-backup.timer snapfs-prune.timer snapfs-verify.timer"
