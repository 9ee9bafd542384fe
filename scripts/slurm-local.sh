#!/usr/bin/env bash
# A private single-node Slurm cluster on this machine, for tests and CI.
#
#   scripts/slurm-local.sh start    install packages if missing, write config, start daemons, wait for the node
#   scripts/slurm-local.sh stop     cancel this cluster's jobs, stop the daemons it started (by pidfile)
#   scripts/slurm-local.sh status   which daemons are alive, sinfo, squeue
#   scripts/slurm-local.sh env      print `export SLURM_CONF=...`; use: eval "$(scripts/slurm-local.sh env)"
#
# Everything (config, munge key and socket, MariaDB datadir, Slurm state, logs, pidfiles) lives under
# ${TRM_SLURM_DIR:-/tmp/trm-slurm}; nothing is written to /etc. Needs root (SlurmUser=root), Debian 12
# (Slurm 22.05), no systemd and no cgroups required. See docs/slurm.md.
#
# Environment knobs:
#   TRM_SLURM_DIR            state directory (default /tmp/trm-slurm)
#   TRM_SLURM_PORT_BASE      slurmctld port; slurmd, slurmdbd and MariaDB use the next three (default 6817)
#   TRM_SLURM_GRACE_TIME     GraceTime of the preemptible `gpu` partition, seconds (default 30)
#   TRM_SLURM_CRED_EXPIRE    munge cred_expire, seconds; a requeued job restarts after this + 1 s (default 10)
#   TRM_SLURM_WAIT_S         bound on each wait during start/stop, seconds (default 60)
#   TRM_SLURM_NODES          node names on this host (default 1: the host's own name). N > 1: nodes n1..nN,
#                            one slurmd each (`slurmd -N`), n2.. listening on PORT_BASE+4.. ; for --nodes N jobs
set -euo pipefail

DIR=${TRM_SLURM_DIR:-/tmp/trm-slurm}
PORT_BASE=${TRM_SLURM_PORT_BASE:-6817}
GRACE_TIME=${TRM_SLURM_GRACE_TIME:-30}
CRED_EXPIRE=${TRM_SLURM_CRED_EXPIRE:-10}
WAIT_S=${TRM_SLURM_WAIT_S:-60}
NODES=${TRM_SLURM_NODES:-1}
CLUSTER=trm

CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT=$((PORT_BASE + 3))

ETC=$DIR/etc
RUN=$DIR/run
LOG=$DIR/log
CONF=$ETC/slurm.conf
MUNGE_DIR=$DIR/munge
MUNGE_SOCK_DIR=$RUN/munge
MUNGE_SOCK=$MUNGE_SOCK_DIR/munge.socket
MUNGE_KEY=$MUNGE_DIR/munge.key
DB_DATA=$DIR/mysql
DB_SOCK=$RUN/mysqld.sock
DB_USER=slurm
DB_PASS_FILE=$DIR/mysql.pass
GPU_DIR=$DIR/gpu
ENV_FILE=$DIR/env.sh

# Daemons in start order (stop goes in reverse), with their pidfiles and logs.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
declare -A PIDFILE=(
  [munged]=$RUN/munged.pid [mariadbd]=$RUN/mariadbd.pid [slurmdbd]=$RUN/slurmdbd.pid
  [slurmctld]=$RUN/slurmctld.pid [slurmd]=$RUN/slurmd.pid
)
declare -A LOGFILE=(
  [munged]=$LOG/munged.log [mariadbd]=$LOG/mariadbd.log [slurmdbd]=$LOG/slurmdbd.log
  [slurmctld]=$LOG/slurmctld.log [slurmd]=$LOG/slurmd.log
)
# Several node names: one slurmd per node, "slurmd@nI" (binary slurmd), with %n (node name) in its files.
SLURMDS=(slurmd)
if [[ $NODES != 1 ]]; then
  [[ $NODES =~ ^[1-9][0-9]?$ ]] || { printf 'slurm-local: ERROR: TRM_SLURM_NODES=%s is not 1-99\n' "$NODES" >&2; exit 2; }
  DAEMONS=(munged mariadbd slurmdbd slurmctld)
  SLURMDS=()
  for ((i = 1; i <= NODES; i++)); do
    SLURMDS+=("slurmd@n$i")
    PIDFILE[slurmd@n$i]=$RUN/slurmd-n$i.pid
    LOGFILE[slurmd@n$i]=$LOG/slurmd-n$i.log
  done
  DAEMONS+=("${SLURMDS[@]}")
fi

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)

export SLURM_CONF=$CONF

say() { printf 'slurm-local: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------- pidfiles
# proc_live PID: the process exists and is not a zombie (PID 1 may be slow to reap daemons we stopped).
proc_live() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $st && $st != Z && $st != X ]]
}

# pid_of NAME -> prints the pid if the pidfile names a live process running that daemon's binary.
pid_of() {
  local name=${1%@*} file=${PIDFILE[$1]} pid exe
  [[ -s $file ]] || return 1
  pid=$(tr -dc '0-9' <"$file")
  [[ -n $pid ]] && proc_live "$pid" || return 1
  # Guard against a recycled pid: the process must run the daemon's binary.
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe=${exe% (deleted)}
  exe=${exe##*/}
  # Debian installs e.g. /usr/sbin/slurmctld as an alternatives link to slurmctld-wlm.
  local real
  real=$(readlink -f "$(command -v "$name" 2>/dev/null || echo "$name")")
  [[ $exe == "$name" || $exe == "${real##*/}" ]] || return 1
  printf '%s\n' "$pid"
}

alive() { pid_of "$1" >/dev/null; }

all_alive() {
  local d
  for d in "${DAEMONS[@]}"; do alive "$d" || return 1; done
}

any_alive() {
  local d
  for d in "${DAEMONS[@]}"; do alive "$d" && return 0; done
  return 1
}

# wait_for SECONDS CMD... : poll CMD every 0.2 s until it succeeds or SECONDS pass.
wait_for() {
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# died NAME: NAME's pidfile is written and names a process that is gone. A pidfile not written yet is a
# daemon still starting (a forking daemon's launcher returns before the daemon writes it), not a dead one.
died() {
  local pid
  [[ -s ${PIDFILE[$1]} ]] || return 1
  pid=$(tr -dc '0-9' <"${PIDFILE[$1]}")
  [[ -n $pid ]] && ! proc_live "$pid"
}

# wait_up SECONDS NAME CMD... : like wait_for, but give up early once NAME's process has died
# (its pidfile names a dead process, or DAEMON_BG_PID, the launcher's child for non-forking daemons, is gone).
DAEMON_BG_PID=
wait_up() {
  local deadline=$((SECONDS + $1)) name=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    if [[ -n $DAEMON_BG_PID ]] && ! proc_live "$DAEMON_BG_PID"; then return 1; fi
    died "$name" && return 1
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

dump_logs() {
  local d f
  for d in "${DAEMONS[@]}"; do
    f=${LOGFILE[$d]}
    [[ -s $f ]] || continue
    printf '\n===== %s (last 40 lines of %s) =====\n' "$d" "$f" >&2
    tail -n 40 "$f" >&2
  done
  [[ -s $LOG/mariadb-install-db.log ]] && { printf '\n===== mariadb-install-db =====\n' >&2; tail -n 20 "$LOG/mariadb-install-db.log" >&2; }
  return 0
}

fail_start() {
  say "ERROR: $*"
  dump_logs
  say "start FAILED: $*  (logs: $LOG; stop what did start with: $0 stop)"
  exit 1
}

# ---------------------------------------------------------------------------------------------- packages
need_root() {
  [[ $(id -u) -eq 0 ]] || die "must run as root (the private cluster uses SlurmUser=root)"
}

install_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and apt-get not found"
  say "installing ${missing[*]} with apt-get"
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q --no-install-recommends
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install)
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt-get update -q >&2 || die "apt-get update failed"
  fi
  if ! "${apt[@]}" "${missing[@]}" >&2; then
    say "install failed; running apt-get update and retrying"
    apt-get update -q >&2 || die "apt-get update failed"
    "${apt[@]}" "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
  fi
}

# ---------------------------------------------------------------------------------------------- config
write_env() {
  mkdir -p "$DIR"
  printf 'export SLURM_CONF=%q\nexport TRM_SLURM_DIR=%q\n' "$CONF" "$DIR" >"$ENV_FILE"
}

write_config() {
  local host node_line
  host=$(hostname -s)
  # First line of `slurmd -C`: NodeName=<host> CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ...
  node_line=$(slurmd -C 2>/dev/null | head -n 1)
  [[ $node_line == NodeName=* ]] || die "unexpected output from 'slurmd -C': $node_line"
  local node=${node_line%% *}
  node=${node#NodeName=}
  local spool=$DIR/state/slurmd slurmd_pid=${PIDFILE[slurmd]} slurmd_log=${LOGFILE[slurmd]}
  local node_lines="$node_line Gres=gpu:2 NodeAddr=127.0.0.1 State=UNKNOWN" gres_nodes=$node
  NODE_NAMES=("$node")
  if ((NODES > 1)); then
    # One host, several node names: each slurmd (`slurmd -N nI`) has its own port and files (%n).
    spool=$DIR/state/slurmd-%n slurmd_pid=$RUN/slurmd-%n.pid slurmd_log=$LOG/slurmd-%n.log
    node_lines= gres_nodes=n[1-$NODES] NODE_NAMES=()
    local i port
    for ((i = 1; i <= NODES; i++)); do
      port=$SLURMD_PORT
      ((i == 1)) || port=$((PORT_BASE + 2 + i))
      node_lines+="NodeName=n$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$port ${node_line#* } Gres=gpu:2 State=UNKNOWN"$'\n'
      NODE_NAMES+=("n$i")
      mkdir -p "$DIR/state/slurmd-n$i"
    done
    node_lines=${node_lines%$'\n'}
  fi

  mkdir -p "$DIR" "$ETC" "$RUN" "$LOG" "$MUNGE_DIR" "$MUNGE_SOCK_DIR" "$GPU_DIR" \
    "$DIR/state/slurmctld" "$DIR/state/slurmd"
  # munged insists on a socket directory that is not writable by others.
  chmod 755 "$DIR" "$RUN" "$MUNGE_SOCK_DIR"
  chmod 700 "$MUNGE_DIR"

  # Fake GPUs: character devices (symlinks to /dev/null) so that GRES binding sets CUDA_VISIBLE_DEVICES.
  ln -sfn /dev/null "$GPU_DIR/nvidia0"
  ln -sfn /dev/null "$GPU_DIR/nvidia1"

  cat >"$CONF.tmp" <<EOF
# Generated by scripts/slurm-local.sh -- private single-node test cluster. Do not edit; edit the script.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits cred_expire + 1 s before it can start again (default 120).
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/state/slurmctld
SlurmdSpoolDir=$spool
SlurmctldPidFile=${PIDFILE[slurmctld]}
SlurmdPidFile=$slurmd_pid
SlurmctldLogFile=${LOGFILE[slurmctld]}
SlurmdLogFile=$slurmd_log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$ETC/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=10
InactiveLimit=0
SchedulerParameters=sched_interval=2,bf_interval=2
# Preemption: jobs in a higher PriorityTier partition requeue jobs in the gpu partition; the victim gets
# its --signal (e.g. USR2) at once, then SIGTERM/SIGKILL when GraceTime has run out.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
# Accounting (sacct) through slurmdbd; slurmdbd connections ignore AuthInfo, hence AccountingStoragePass.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
JobCompType=jobcomp/none
GresTypes=gpu
$node_lines
PartitionName=gpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=$GRACE_TIME
PartitionName=urgent Nodes=ALL Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
  mv -f "$CONF.tmp" "$CONF"

  cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
NodeName=$gres_nodes Name=gpu File=$GPU_DIR/nvidia[0-1]
EOF
  : >"$ETC/plugstack.conf"

  if [[ ! -s $DB_PASS_FILE ]]; then
    (umask 077 && od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$DB_PASS_FILE")
  fi
  (
    umask 077
    cat >"$ETC/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=${PIDFILE[slurmdbd]}
LogFile=${LOGFILE[slurmdbd]}
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$(cat "$DB_PASS_FILE")
StorageLoc=slurm_acct_db
EOF
  )
  chmod 600 "$ETC/slurmdbd.conf"
  write_env
  NODE=$(IFS=,; echo "${NODE_NAMES[*]}")
}

# ---------------------------------------------------------------------------------------------- daemons
start_munged() {
  alive munged && return 0
  if [[ ! -s $MUNGE_KEY ]]; then
    mungekey --create --keyfile="$MUNGE_KEY" >/dev/null 2>&1 ||
      dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
  fi
  chmod 600 "$MUNGE_KEY"
  rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock" "${PIDFILE[munged]}"
  munged --socket="$MUNGE_SOCK" --key-file="$MUNGE_KEY" --pid-file="${PIDFILE[munged]}" \
    --log-file="${LOGFILE[munged]}" --seed-file="$MUNGE_DIR/munged.seed" </dev/null >>"${LOGFILE[munged]}" 2>&1 ||
    fail_start "munged did not start"
  wait_for "$WAIT_S" test -S "$MUNGE_SOCK" || fail_start "munged socket $MUNGE_SOCK did not appear"
  wait_for "$WAIT_S" alive munged || fail_start "munged is not running"
}

db() { mariadb --no-defaults --socket="$DB_SOCK" -uroot "$@"; }

start_mariadbd() {
  alive mariadbd && return 0
  if [[ ! -d $DB_DATA/mysql ]]; then
    rm -rf "$DB_DATA"
    mariadb-install-db --no-defaults --datadir="$DB_DATA" --user=root --skip-test-db \
      --auth-root-authentication-method=socket >"$LOG/mariadb-install-db.log" 2>&1 ||
      fail_start "mariadb-install-db failed"
  fi
  rm -f "$DB_SOCK" "${PIDFILE[mariadbd]}"
  setsid mariadbd --no-defaults --datadir="$DB_DATA" --socket="$DB_SOCK" --pid-file="${PIDFILE[mariadbd]}" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --user=root \
    --log-error="${LOGFILE[mariadbd]}" --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 \
    </dev/null >>"${LOGFILE[mariadbd]}" 2>&1 &
  DAEMON_BG_PID=$!
  wait_up "$WAIT_S" mariadbd db -e 'SELECT 1' ||
    fail_start "mariadbd did not accept connections on $DB_SOCK (port $DB_PORT in use? set TRM_SLURM_PORT_BASE)"
  DAEMON_BG_PID=
  wait_for "$WAIT_S" alive mariadbd || fail_start "mariadbd pidfile ${PIDFILE[mariadbd]} missing"
  local pass
  pass=$(cat "$DB_PASS_FILE")
  db -e "CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$pass';
         ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$pass';
         GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'127.0.0.1';" ||
    fail_start "could not create the MariaDB user for slurmdbd"
}

cluster_registered() {
  sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"
}

start_slurmdbd() {
  alive slurmdbd && return 0
  rm -f "${PIDFILE[slurmdbd]}"
  slurmdbd </dev/null >>"${LOGFILE[slurmdbd]}" 2>&1 || fail_start "slurmdbd did not start"
  wait_up "$WAIT_S" slurmdbd sacctmgr -n -P show cluster format=cluster ||
    fail_start "slurmdbd does not answer (port $DBD_PORT in use? set TRM_SLURM_PORT_BASE)"
  alive slurmdbd || fail_start "slurmdbd is not running"
  if ! cluster_registered; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    cluster_registered || fail_start "could not register cluster $CLUSTER in slurmdbd"
  fi
}

start_slurmctld() {
  alive slurmctld && return 0
  rm -f "${PIDFILE[slurmctld]}"
  slurmctld -f "$CONF" </dev/null >>"${LOGFILE[slurmctld]}" 2>&1 || fail_start "slurmctld did not start"
  wait_up "$WAIT_S" slurmctld scontrol ping ||
    fail_start "slurmctld does not answer 'scontrol ping' (port $CTLD_PORT in use? set TRM_SLURM_PORT_BASE)"
  alive slurmctld || fail_start "slurmctld is not running"
}

start_slurmd() {
  local d args
  for d in "${SLURMDS[@]}"; do
    alive "$d" && continue
    args=(-f "$CONF")
    [[ $d == *@* ]] && args+=(-N "${d#*@}")
    rm -f "${PIDFILE[$d]}"
    slurmd "${args[@]}" </dev/null >>"${LOGFILE[$d]}" 2>&1 || fail_start "$d did not start"
  done
}

all_slurmds_alive() {
  local d
  for d in "${SLURMDS[@]}"; do alive "$d" || return 1; done
}

# a_slurmd_died: some slurmd has died (see died: CI, loaded, once looked before a slurmd's pidfile was
# written and called a healthy slurmd dead).
a_slurmd_died() {
  local d
  for d in "${SLURMDS[@]}"; do died "$d" && return 0; done
  return 1
}

node_state() { sinfo -h -N -n "${1:-$NODE}" -o '%T' 2>/dev/null | head -n 1; }

node_up() {
  # idle, or busy with jobs recovered from a previous run; never down/drained/not responding (`*`).
  [[ $(node_state "$1") =~ ^(idle|mixed|allocated|completing)$ ]]
}

wait_node() {
  local n
  for n in "${NODE_NAMES[@]}"; do wait_one_node "$n"; done
}

wait_one_node() {
  local node=$1 deadline=$((SECONDS + WAIT_S)) resumed=0 st
  while ! node_up "$node"; do
    a_slurmd_died && fail_start "slurmd exited (node state: $(node_state "$node"))"
    st=$(node_state "$node")
    # A node left down/drained by an earlier run: slurmd is up and registered, so resume it once.
    if ((!resumed)) && [[ $st =~ ^(down|drained|draining)$ ]] && ((SECONDS + WAIT_S - deadline > 5)); then
      scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
      resumed=1
    fi
    ((SECONDS < deadline)) || fail_start "node $node is '$st', not idle, after ${WAIT_S}s"
    sleep 0.2
  done
}

cmd_start() {
  need_root
  if all_alive; then
    write_env
    say "already running (TRM_SLURM_DIR=$DIR)"
    cat "$ENV_FILE"
    return 0
  fi
  install_packages
  local t0=$SECONDS
  write_config
  start_munged
  start_mariadbd
  start_slurmdbd
  start_slurmctld
  start_slurmd
  wait_node
  local states=$(for n in "${NODE_NAMES[@]}"; do node_state "$n"; done | sort -u | paste -sd/)
  say "started in $((SECONDS - t0))s: node $NODE is $states; logs in $LOG"
  sinfo >&2
  say "use it with: eval \"\$($0 env)\"   (or: source $ENV_FILE)"
  cat "$ENV_FILE"
}

# ---------------------------------------------------------------------------------------------- stop
stop_daemon() {
  local name=$1 pid i t0=$SECONDS
  if ! pid=$(pid_of "$name"); then
    rm -f "${PIDFILE[$name]}"
    printf '  %-10s not running\n' "$name"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do # 20 s
    proc_live "$pid" || break
    sleep 0.2
  done
  if proc_live "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    printf '  %-10s pid %s killed (SIGKILL after 20 s)\n' "$name" "$pid"
  else
    printf '  %-10s pid %s stopped (%ss)\n' "$name" "$pid" "$((SECONDS - t0))"
  fi
  rm -f "${PIDFILE[$name]}"
}

no_jobs() { [[ -z $(squeue -h -o %A 2>/dev/null) ]]; }

cmd_stop() {
  need_root
  if ! any_alive; then
    say "not running (TRM_SLURM_DIR=$DIR)"
    return 0
  fi
  # Cancel this private cluster's jobs so that no job steps outlive slurmd.
  if alive slurmctld && all_slurmds_alive; then
    local jobs
    jobs=$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
      say "cancelling jobs: $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      wait_for 30 no_jobs || say "jobs still listed after 30 s: $(squeue -h -o %A | tr '\n' ' ')"
    fi
  fi
  say "stopping (TRM_SLURM_DIR=$DIR)"
  local d
  for d in "${SLURMDS[@]}" slurmctld slurmdbd mariadbd munged; do stop_daemon "$d"; done
  say "stopped"
}

# ---------------------------------------------------------------------------------------------- status
cmd_status() {
  local d pid ok=0
  echo "TRM_SLURM_DIR=$DIR  SLURM_CONF=$CONF"
  for d in "${DAEMONS[@]}"; do
    if pid=$(pid_of "$d"); then
      printf '  %-10s running (pid %s)\n' "$d" "$pid"
    else
      printf '  %-10s NOT running\n' "$d"
      ok=1
    fi
  done
  if alive slurmctld; then
    sinfo || true
    squeue || true
  fi
  return "$ok"
}

cmd_env() {
  write_env
  cat "$ENV_FILE"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *)
    echo "usage: $0 start|stop|status|env   (state in \${TRM_SLURM_DIR:-/tmp/trm-slurm})" >&2
    exit 2
    ;;
esac
