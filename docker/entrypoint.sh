#!/bin/sh
# Container start: make sshd's host keys (never baked into the image), install the ssh key that
# the rank containers share, then run sshd (the default command) or the given command.
#
# The shared key is mounted read-only at $SYNCNORM_SSH_DIR (default /ssh-key) as id_ed25519 and
# id_ed25519.pub; it becomes the user mpi's key and its only authorized key. Without it the
# container still runs single-container jobs (`syncnorm-launch -n 4 -- ...`).
set -eu

if [ "$(id -u)" = 0 ]; then
  ssh-keygen -A >/dev/null
  keydir=${SYNCNORM_SSH_DIR:-/ssh-key}
  if [ -r "$keydir/id_ed25519" ] && [ -r "$keydir/id_ed25519.pub" ]; then
    install -d -m 700 -o mpi -g mpi /home/mpi/.ssh
    install -m 600 -o mpi -g mpi "$keydir/id_ed25519" /home/mpi/.ssh/id_ed25519
    install -m 644 -o mpi -g mpi "$keydir/id_ed25519.pub" /home/mpi/.ssh/id_ed25519.pub
    install -m 600 -o mpi -g mpi "$keydir/id_ed25519.pub" /home/mpi/.ssh/authorized_keys
    # the other containers' host keys are new at every start, on a network only they share
    printf 'Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n' \
      > /home/mpi/.ssh/config
    chown mpi:mpi /home/mpi/.ssh/config
    chmod 600 /home/mpi/.ssh/config
  fi
fi

if [ "${1:-sshd}" = sshd ]; then
  shift || true
  exec /usr/sbin/sshd -D -e -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
       -o PermitRootLogin=no -o AllowUsers=mpi "$@"
fi
exec "$@"
