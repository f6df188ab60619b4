# Shell helpers for the benchmarks (source it; bash). The caller sets RESULTS and NOTES.

die() { echo "error: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }

# Percent of all CPUs busy over one second.
cpu_busy() {
  local a b c d e f g h t1 i1
  read -r _ a b c d e f g h _ </proc/stat; t1=$((a + b + c + d + e + f + g + h)); i1=$((d + e))
  sleep 1
  read -r _ a b c d e f g h _ </proc/stat
  t1=$((a + b + c + d + e + f + g + h - t1)); i1=$((d + e - i1))
  echo $(( t1 > 0 ? 100 * (t1 - i1) / t1 : 0 ))
}

# The 1, 5 and 15 minute load averages (runnable and uninterruptible tasks, all of the
# machine's: on a shared machine, the other jobs' too).
loadavg() { cut -d' ' -f1-3 /proc/loadavg | sed 's/ /, /g'; }

# wait_idle SECONDS: waits up to SECONDS for other processes to leave the CPUs (< 10% busy),
# and notes how busy they were.
wait_idle() {
  local busy waited=0
  busy=$(cpu_busy)
  while [ "$busy" -ge 10 ] && [ "$waited" -lt "$1" ]; do
    log "other processes use $busy% of the CPUs: waiting for them (up to ${1}s)"
    sleep 4; waited=$((waited + 5)); busy=$(cpu_busy)
  done
  note "before the run, other processes used $busy% of the CPUs (waited ${waited}s for them); load average $(loadavg)"
}

# A line of the run's notes (also shown on stderr).
note() { echo "$*" >>"$NOTES"; echo "note: $*" >&2; }
