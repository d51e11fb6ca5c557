#!/bin/bash
# syncnorm on PBS Pro / OpenPBS / Torque: ranks on the nodes PBS gave the job (PBS_NODEFILE, one
# line per rank slot), started through syncnorm-launch (it picks the mpirun/mpiexec of the MPI
# that mpi4py loads; it reaches the other nodes with ssh, which PBS sites allow within a job).
#
#   qsub -V launch/pbs.sh                      # -V: pass your environment (activate the venv first)
#   qsub -V -v SYNCNORM_JOB="-m syncnorm.train --epochs 3 --checkpoint-dir ckpt" launch/pbs.sh
#
# SYNCNORM_JOB is what each rank runs after `python -m mpi4py` (default: -m syncnorm.check).
# The same Python must exist at the same path on every node (a shared file system).
#
# EDIT the resource request: PBS Pro / OpenPBS use `select`; Torque uses `nodes=N:ppn=M`.
#PBS -N syncnorm
#PBS -l select=2:ncpus=2:mpiprocs=2
##PBS -l nodes=2:ppn=2
#PBS -l walltime=00:10:00
#PBS -j oe
##PBS -q EDIT
##PBS -A EDIT
set -euo pipefail

cd "${PBS_O_WORKDIR:-.}"
PYTHON=${PYTHON:-python3}
export SYNCNORM_COLLECTIVE_TIMEOUT=${SYNCNORM_COLLECTIVE_TIMEOUT:-300}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$OPENBLAS_NUM_THREADS}
TIMEOUT=${SYNCNORM_JOB_TIMEOUT:-540}          # a little under the walltime
NODEFILE=${PBS_NODEFILE:?not inside a PBS job (PBS_NODEFILE is not set)}

# PBS_NODEFILE lists a node once per rank slot: turn it into host:slots for syncnorm-launch
HOSTS=$(awk 'NF { n[$1]++; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
             END { for (i = 1; i <= k; i++) printf "%s%s:%d", (i > 1 ? "," : ""), order[i], n[order[i]] }' "$NODEFILE")
NP=$(awk 'NF' "$NODEFILE" | wc -l)
read -r -a JOB <<< "${SYNCNORM_JOB:--m syncnorm.check}"

echo "syncnorm: job ${PBS_JOBID:-?}, $NP ranks on $HOSTS"
# SYNCNORM_DRY_RUN=1: print the launcher command instead of running it
exec "$PYTHON" -m syncnorm.launch -n "$NP" --hosts "$HOSTS" --timeout "$TIMEOUT" \
    ${SYNCNORM_DRY_RUN:+--dry-run} -- "$PYTHON" -m mpi4py "${JOB[@]}"
