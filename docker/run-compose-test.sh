#!/usr/bin/env bash
# Start N rank containers (docker/compose.yml), run a multi-rank job across them over ssh, check
# it, and tear everything down (containers, network, the key), whatever happens.
#
#   docker/run-compose-test.sh [N]          # N containers (default 3), NP ranks (default N+1)
#
# The ssh key the containers share is generated here, for this run only. The job is
# `python -m syncnorm.check` (SyncBatchNorm across the ranks against single-process BatchNorm;
# prints MATCH) and then a one-epoch run of the training demo, both started by syncnorm-launch in
# the first container, as the unprivileged user mpi, over TCP on the containers' network.
# Environment: SYNCNORM_IMAGE (default syncnorm:latest), NP, JOB_TIMEOUT (default 300 s).
# Exit code: 0 when both jobs succeed.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${1:-3}
NP=${NP:-$((N + 1))}
JOB_TIMEOUT=${JOB_TIMEOUT:-300}
PROJECT=syncnorm-it-$$
export SYNCNORM_IMAGE=${SYNCNORM_IMAGE:-syncnorm:latest}
if docker compose version >/dev/null 2>&1; then COMPOSE=(docker compose); else COMPOSE=(docker-compose); fi
COMPOSE+=(-f docker/compose.yml -p "$PROJECT")

SYNCNORM_SSH_DIR=$(mktemp -d)
export SYNCNORM_SSH_DIR
cleanup() {
  "${COMPOSE[@]}" down -v -t 1 >/dev/null 2>&1 || true
  rm -rf "$SYNCNORM_SSH_DIR"
}
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N '' -C "syncnorm-test-$PROJECT" -f "$SYNCNORM_SSH_DIR/id_ed25519"
chmod 644 "$SYNCNORM_SSH_DIR/id_ed25519"   # read by the containers' root only, then installed 0600

echo "== starting $N rank containers ($SYNCNORM_IMAGE)"
"${COMPOSE[@]}" up -d --scale rank="$N"
mapfile -t IDS < <("${COMPOSE[@]}" ps -q rank | sort)
[ "${#IDS[@]}" = "$N" ] || { echo "expected $N containers, got ${#IDS[@]}"; exit 1; }
IPS=()
for id in "${IDS[@]}"; do
  IPS+=("$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$id")")
done
FIRST=${IDS[0]}
# wait until every container's sshd lets the first one in
for ip in "${IPS[@]}"; do
  for i in $(seq 1 50); do
    docker exec -u mpi "$FIRST" ssh -o BatchMode=yes -o ConnectTimeout=2 "$ip" true 2>/dev/null && break
    [ "$i" = 50 ] && { echo "no ssh into $ip"; docker logs "${IDS[0]}" | tail -20; exit 1; }
    sleep 0.2
  done
done

# slots: NP ranks spread over the containers, the first ones taking the remainder
HOSTS=""
for k in "${!IPS[@]}"; do
  s=$((NP / N + (k < NP % N ? 1 : 0)))
  [ "$s" -gt 0 ] && HOSTS+="${HOSTS:+,}${IPS[$k]}:$s"
done
echo "== $NP ranks on $HOSTS"

run() {
  timeout --kill-after=10 "$((JOB_TIMEOUT + 30))" docker exec -u mpi "$FIRST" \
    syncnorm-launch -n "$NP" --hosts "$HOSTS" --tcp eth0 --timeout "$JOB_TIMEOUT" \
    -- python -m mpi4py "$@"
}
out=$(run -c "import socket; from mpi4py import MPI; print('RANK', MPI.COMM_WORLD.rank, 'ON', socket.gethostname())" 2>&1) \
  || { echo "$out"; echo "== probe FAILED"; exit 1; }
echo "$out" | grep '^RANK' | sort
used=$(grep '^RANK' <<< "$out" | awk '{print $4}' | sort -u | wc -l)
[ "$used" = "$(( NP < N ? NP : N ))" ] || { echo "== ranks ran on $used containers, expected $N"; exit 1; }
out=$(run -m syncnorm.check 2>&1) || { echo "$out"; echo "== syncnorm.check FAILED"; exit 1; }
echo "$out"
grep -q '^MATCH$' <<< "$out" || { echo "== syncnorm.check did not print MATCH"; exit 1; }
out=$(run -m syncnorm.train --max-train 256 --batch-size 8 --width 4 --epochs 1 --progress none 2>&1) \
  || { echo "$out"; echo "== training FAILED"; exit 1; }
grep RESULT <<< "$out"
echo "== ranks ran as: $(docker exec -u mpi "$FIRST" id -un), hosts: $(for id in "${IDS[@]}"; do docker exec "$id" hostname; done | tr '\n' ' ')"
echo "== compose integration test passed"
