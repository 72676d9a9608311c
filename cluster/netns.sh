#!/usr/bin/env bash
# Simulated hosts on one Linux machine: N network namespaces ("hosts") joined by veth pairs to one
# bridge, each host's link shaped to a pod-to-pod rate (and latency where the kernel has netem).
# Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2.
#
#   bash cluster/netns.sh up N RATE [DELAY]   hosts radar-h0..radar-h{N-1} at 10.88.0.1..N, every link
#                                             RATE each way (tc syntax: 10gbit, 1gbit, 0 = unshaped);
#                                             DELAY (e.g. 0.1ms, one way per link) needs sch_netem
#   bash cluster/netns.sh down                remove the hosts and the bridge
#   bash cluster/netns.sh ranks OUTDIR PORT CMD...
#                                             CMD on every host at once, as rank K of N (RANK,
#                                             WORLD_SIZE, MASTER_ADDR=10.88.0.1, MASTER_PORT=PORT; host
#                                             name radar-hK); stdout and stderr
#                                             to OUTDIR/rankK.{out,err}, exit status to OUTDIR/rankK.rc;
#                                             returns when all have ended. RANKS_PER_HOST=L: L ranks a
#                                             host (host K runs ranks K*L..K*L+L-1 of N*L; a pod's GPUs)
#   bash cluster/netns.sh mpirun MPIRUN-ARGS...
#                                             mpirun across the hosts, started on radar-h0: a
#                                             hostfile of the hosts' addresses (RANKS_PER_HOST
#                                             slots each) and `netns.sh rsh` as its launch agent,
#                                             so each host's ranks run in its namespace under its
#                                             own host name (MPI_Get_processor_name), talking to
#                                             other hosts over their shaped links (TCP) and to
#                                             their own host's ranks through shared memory
#   bash cluster/netns.sh rsh HOST CMD...     mpirun's launch agent: CMD on the host at address HOST
#   bash cluster/netns.sh cut K               partition host K (its link goes down)
#   bash cluster/netns.sh shaping             print how links are shaped (tbf or netem)
#
# Shaping: netem (rate + delay) where the kernel has it; else tbf (rate only; the delay is then
# the veth's own, about 0.03 ms, and `shaping` says so). Rates are per direction on each link, as a
# host NIC's would be: the host's egress on its veth, its ingress on the bridge's end.
set -euo pipefail
PREFIX=radar-h
BRIDGE=radar-br0
NET=10.88.0

die() { echo "cluster/netns.sh: $*" >&2; exit 1; }
hosts() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX}[0-9]+$" | sort -V || true; }

shape() {  # shape NS DEV RATE DELAY: NS "" for the root namespace
  local ns=$1 dev=$2 rate=$3 delay=$4 run=()
  [ -n "$ns" ] && run=(ip netns exec "$ns")
  [ "$rate" = "0" ] && [ -z "$delay" ] && return 0
  local netem=(netem limit 100000)
  [ -n "$delay" ] && netem+=(delay "$delay")
  [ "$rate" != "0" ] && netem+=(rate "$rate")
  if "${run[@]}" tc qdisc replace dev "$dev" root "${netem[@]}" 2>/dev/null; then
    echo netem > /run/radar-netns-shaping
    return 0
  fi
  if [ -n "$delay" ] && [ "$(cat /run/radar-netns-shaping)" != tbf ]; then
    echo "cluster/netns.sh: no sch_netem in this kernel: rate only, delay $delay not simulated" >&2
  fi
  [ "$rate" = "0" ] && return 0
  # tbf with a burst of one millisecond at the rate (at least 16 KiB): small beside the transfers
  # measured, so they see the rate and not the bucket.
  local burst
  burst=$(echo "$rate" | awk '{ v = $0 + 0; u = tolower($0); sub(/^[0-9.]+/, "", u)
    m = (u == "gbit") ? 1e9 : (u == "mbit") ? 1e6 : (u == "kbit") ? 1e3 : 1
    b = int(v * m / 8 / 1000); if (b < 16384) b = 16384; print b }')
  "${run[@]}" tc qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" latency 100ms \
    || die "tc could not shape $dev to $rate"
  echo tbf > /run/radar-netns-shaping
}

cmd=${1:-}
shift || true
case "$cmd" in
  up)
    n=${1:?usage: netns.sh up N RATE [DELAY]}
    rate=${2:?usage: netns.sh up N RATE [DELAY]}
    delay=${3:-}
    [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"
    command -v ip >/dev/null || die "needs iproute2 (ip, tc)"
    [ -z "$(hosts)" ] || die "hosts exist already ($(hosts | tr '\n' ' ')): run 'netns.sh down' first"
    echo none > /run/radar-netns-shaping
    ip link add "$BRIDGE" type bridge 2>/dev/null || die "cannot create bridge $BRIDGE (is it left over? run 'netns.sh down')"
    ip link set "$BRIDGE" up
    for ((k = 0; k < n; k++)); do
      ns=$PREFIX$k
      ip netns add "$ns"
      ip link add "rh${k}" type veth peer name "rh${k}b"
      ip link set "rh${k}" netns "$ns"
      ip -n "$ns" link set "rh${k}" name eth0
      ip -n "$ns" addr add "$NET.$((k + 1))/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
      ip link set "rh${k}b" master "$BRIDGE"
      ip link set "rh${k}b" up
      shape "$ns" eth0 "$rate" "$delay"
      shape "" "rh${k}b" "$rate" "$delay"
    done
    echo "$n" > /run/radar-netns-count
    echo "cluster/netns.sh: $n hosts ${PREFIX}0..${PREFIX}$((n - 1)) at $NET.1-$n, links $rate$([ -n "$delay" ] && echo " + $delay") ($(cat /run/radar-netns-shaping))"
    ;;
  down)
    for ns in $(hosts); do ip netns del "$ns" 2>/dev/null || true; done
    # A namespace can outlive its name for a while (sockets closing): delete the links ourselves.
    for l in $(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -E '^rh[0-9]+b$' || true); do
      ip link del "$l" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
    rm -f /run/radar-netns-count /run/radar-netns-shaping
    ;;
  ranks)
    out=${1:?usage: netns.sh ranks OUTDIR PORT CMD...}
    port=${2:?usage: netns.sh ranks OUTDIR PORT CMD...}
    shift 2
    [ $# -gt 0 ] || die "usage: netns.sh ranks OUTDIR PORT CMD..."
    n=$(cat /run/radar-netns-count 2>/dev/null) || die "no hosts: run 'netns.sh up' first"
    per=${RANKS_PER_HOST:-1}
    mkdir -p "$out"
    pids=()
    for ((k = 0; k < n * per; k++)); do
      h=$((k / per))
      ( set +e
        # Its own UTS namespace too, so the rank's host name is the simulated host's.
        ip netns exec "$PREFIX$h" unshare --uts env RANK=$k WORLD_SIZE="$((n * per))" MASTER_ADDR="$NET.1" MASTER_PORT="$port" \
          sh -c 'hostname "$0" && exec "$@"' "$PREFIX$h" "$@" > "$out/rank$k.out" 2> "$out/rank$k.err"
        echo $? > "$out/rank$k.rc" ) &
      pids+=($!)
    done
    wait "${pids[@]}" || true
    ;;
  mpirun)
    n=$(cat /run/radar-netns-count 2>/dev/null) || die "no hosts: run 'netns.sh up' first"
    per=${RANKS_PER_HOST:-1}
    hostfile=/run/radar-netns-hostfile
    for ((k = 0; k < n; k++)); do echo "$NET.$((k + 1)) slots=$per"; done > "$hostfile"
    self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
    root=()
    [ "$(id -u)" -eq 0 ] && root=(--allow-run-as-root)
    # Out-of-band and data traffic both on the hosts' links (eth0 in each namespace).
    ip netns exec "${PREFIX}0" unshare --uts sh -c 'hostname "$0" && exec "$@"' "${PREFIX}0" \
      mpirun "${root[@]}" --oversubscribe --hostfile "$hostfile" --mca plm_rsh_agent "bash $self rsh" \
        --mca btl tcp,self,vader --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 -n "$((n * per))" "$@"
    ;;
  rsh)
    # mpirun calls its agent as `AGENT [OPTIONS] HOST COMMAND...`.
    while [[ "${1:-}" == -* ]]; do shift; done
    host=${1:?usage: netns.sh rsh HOST CMD...}
    shift
    case "$host" in "$NET".*) ;; *) die "rsh: $host is not a simulated host's address ($NET.K)" ;; esac
    k=$((${host##*.} - 1))
    exec ip netns exec "$PREFIX$k" unshare --uts sh -c 'hostname "$0" && exec sh -c "$1"' "$PREFIX$k" "$*"
    ;;
  cut)
    k=${1:?usage: netns.sh cut K}
    ip link set "rh${k}b" down
    ;;
  shaping)
    cat /run/radar-netns-shaping 2>/dev/null || echo none
    ;;
  *)
    sed -n '2,29p' "$0" >&2
    exit 2
    ;;
esac
