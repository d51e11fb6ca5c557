#!/bin/bash
# syncnorm on machines you name yourself: a hostfile, ssh between the machines, no scheduler.
#
#   launch/hostfile.sh HOSTFILE                          # python -m syncnorm.check on every slot
#   launch/hostfile.sh HOSTFILE -m syncnorm.train --epochs 3 --checkpoint-dir ckpt
#
# HOSTFILE: one machine per line, `HOST slots=N` (Open MPI style), `HOST:N` (MPICH style) or
# just `HOST` (1 slot); `#` starts a comment. The arguments after HOSTFILE are what each rank
# runs after `python -m mpi4py`; without any, `-m syncnorm.check`.
#
# What every machine needs: passwordless ssh from this one (try `ssh HOST true`), the same Python
# environment at the same path (a shared file system, or the same install everywhere), and
# the MPI ports open between the machines.
#
# EDIT by environment variables (no need to change this file):
#   PYTHON=/path/to/venv/bin/python   the environment's Python (default: python3 on PATH)
#   SYNCNORM_NP=N                     ranks (default: the sum of the slots)
#   SYNCNORM_TCP=NET                  TCP only on this network: a CIDR such as 192.168.1.0/24 or an
#                                     interface name (MPICH/Intel MPI need the interface name)
#   SYNCNORM_RSH_AGENT=CMD            the ssh replacement (default: ssh)
#   SYNCNORM_JOB_TIMEOUT=S            bound on the whole job (default 3600 s)
#   SYNCNORM_DRY_RUN=1                print the launcher command instead of running it
set -euo pipefail

[ $# -ge 1 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
HOSTFILE=$1; shift
[ -r "$HOSTFILE" ] || { echo "hostfile.sh: cannot read hostfile $HOSTFILE" >&2; exit 2; }
PYTHON=${PYTHON:-python3}
export SYNCNORM_COLLECTIVE_TIMEOUT=${SYNCNORM_COLLECTIVE_TIMEOUT:-300}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$OPENBLAS_NUM_THREADS}

# HOST slots=N | HOST:N | HOST  ->  HOST:N,HOST:N,...
HOSTS=$(sed 's/#.*//' "$HOSTFILE" | awk 'NF {
    h = $1; n = 1
    if (h ~ /:/) { split(h, a, ":"); h = a[1]; n = a[2] }
    for (i = 2; i <= NF; i++) if ($i ~ /^(slots|max_slots)=/ && $i !~ /^max/) { split($i, b, "="); n = b[2] }
    printf "%s%s:%d", (c++ ? "," : ""), h, n }')
[ -n "$HOSTS" ] || { echo "hostfile.sh: no host in $HOSTFILE" >&2; exit 2; }
NP=${SYNCNORM_NP:-$(echo "$HOSTS" | tr ',' '\n' | awk -F: '{ s += $2 } END { print s }')}
ARGS=(-n "$NP" --hosts "$HOSTS" --timeout "${SYNCNORM_JOB_TIMEOUT:-3600}")
[ -z "${SYNCNORM_TCP:-}" ] || ARGS+=(--tcp "$SYNCNORM_TCP")
[ -z "${SYNCNORM_RSH_AGENT:-}" ] || ARGS+=(--rsh-agent "$SYNCNORM_RSH_AGENT")
[ -z "${SYNCNORM_DRY_RUN:-}" ] || ARGS+=(--dry-run)     # print the launcher command only
[ $# -gt 0 ] || set -- -m syncnorm.check

echo "syncnorm: $NP ranks on $HOSTS"
exec "$PYTHON" -m syncnorm.launch "${ARGS[@]}" -- "$PYTHON" -m mpi4py "$@"
