#!/usr/bin/env bash
# scripts/uml/run.sh -- run a command as root inside a throw-away
# user-mode-linux (UML) kernel that uses the host's / as its root (hostfs).
#
# Why: the host kernel has XFRM but no ESP (esp4/esp6) and we cannot load
# modules into it.  Debian's `user-mode-linux` package ships a UML kernel
# (linux.uml) plus modules (/usr/lib/uml/modules/<version>) that include
# esp4/esp6/ah4/xfrm_user/gcm/authenc/veth, so IPsec and network-namespace
# tests can run unchanged, with host-built binaries, inside UML in ~2-3 s.
#
# Usage:
#   scripts/uml/run.sh [--mem 512M] [--timeout SECONDS] [--env VAR=value ...]
#                      -- COMMAND [ARGS...]
#
#   --mem SIZE       UML memory (default 512M)
#   --timeout SECS   wall-clock limit for boot + command (default 600)
#   --env VAR=value  export VAR inside UML (repeatable); `--env VAR` passes
#                    the host's value of VAR through.  CI is always passed
#                    through if set; UML_INSIDE=1 is always set.
#
# The command runs with the current working directory preserved, a clean
# environment (HOME=/root, PATH=/usr/local/sbin:...:/bin:/opt/swift/usr/bin,
# TERM=dumb, UML_INSIDE=1, UML_RUN_DIR=<run folder, a scratch dir that is
# deleted afterwards>, plus --env/CI) and stdin from /dev/null.  Its
# combined stdout+stderr is streamed live to our stdout and we exit with its
# exit status.  If UML fails to boot, the command never reports a status or
# the timeout hits, we exit 125 with a message on stderr (plus the tail of
# the UML console log; UML_VERBOSE=1 always shows the whole log).  INT/TERM
# kill UML at once.  A run costs ~2.2-2.8 s on top of the command.
#
# How: a run folder /tmp/uml-run.XXXXXXXX holds init.sh (PID 1 in UML, see
# init.sh), config.sh (cwd/env/command as bash arrays), output and status.
# Inside UML / is the host's / (hostfs, read-write!), so init.sh mounts
# tmpfs on /run (ip netns) and /lib/modules, devtmpfs on /dev, and writes
# nothing outside the run folder.  UML's own state dir (uml_dir=, normally
# ~/.uml) also lives in the run folder, which is removed on exit, and so
# does the command's TMPDIR (<run>/tmp): what its processes leave when the
# kernel powers off under them goes with the folder.  UML and
# all its host helper processes share the process group created by
# `timeout`, which is killed on timeout or when we are interrupted.
#
# Environment: UML_KERNEL (path to linux.uml), UML_MODULES_DIR (module dir
# for the UML kernel, default /usr/lib/uml/modules/<version>), UML_VERBOSE.
set -euo pipefail

prog=${0##*/}
die() { printf '%s: %s\n' "$prog" "$*" >&2; exit 125; }
usage() {
  cat >&2 <<EOF
usage: $prog [--mem 512M] [--timeout SECONDS] [--env VAR[=value] ...] -- COMMAND [ARGS...]
Runs COMMAND as root inside user-mode-linux (host / via hostfs, cwd kept) and
exits with its status, or 125 if UML fails or times out (default 600 s).
EOF
}

mem=512M
timeout_s=600
envs=()
while (($# > 0)); do
  case $1 in
    --mem) (($# >= 2)) || die "--mem needs a value"; mem=$2; shift 2 ;;
    --mem=*) mem=${1#*=}; shift ;;
    --timeout) (($# >= 2)) || die "--timeout needs a value"; timeout_s=$2; shift 2 ;;
    --timeout=*) timeout_s=${1#*=}; shift ;;
    --env) (($# >= 2)) || die "--env needs VAR=value"; envs+=("$2"); shift 2 ;;
    --env=*) envs+=("${1#*=}"); shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage; die "unknown option: $1 (the command must follow --)" ;;
  esac
done
(($# > 0)) || { usage; die "no command given"; }
[[ $mem =~ ^[0-9]+[KkMmGg]?$ ]] || die "bad --mem: $mem"
[[ $timeout_s =~ ^[0-9]+$ && $timeout_s -gt 0 ]] || die "bad --timeout: $timeout_s"

# --env VAR=value / --env VAR (pass through); CI always passed through.
env_assign=()
have_ci=0
for e in "${envs[@]}"; do
  name=${e%%=*}
  [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad --env: $e"
  [[ $name == CI ]] && have_ci=1
  if [[ $e == *=* ]]; then
    env_assign+=("$e")
  elif [[ -n ${!name+set} ]]; then
    env_assign+=("$name=${!name}")
  fi
done
if ((have_ci == 0)) && [[ -n ${CI+set} ]]; then
  env_assign+=("CI=$CI")
fi

# Locate the UML kernel.
kernel=${UML_KERNEL:-}
if [[ -z $kernel ]]; then
  kernel=$(command -v linux.uml || command -v linux || echo /usr/bin/linux.uml)
fi
[[ -x $kernel ]] || die "UML kernel not found ($kernel); apt-get install user-mode-linux"
if ! kver=$(timeout 10 "$kernel" --version </dev/null 2>/dev/null) || [[ -z $kver ]]; then
  die "$kernel does not look like a UML kernel (--version failed)"
fi
moddir=${UML_MODULES_DIR:-/usr/lib/uml/modules/$kver}
[[ -d $moddir ]] || printf '%s: warning: no UML modules at %s\n' "$prog" "$moddir" >&2

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
[[ -r $script_dir/init.sh ]] || die "missing $script_dir/init.sh"

# Run folder (its path goes on the kernel command line: no whitespace).
run=$(mktemp -d /tmp/uml-run.XXXXXXXX)
upid=
tpid=
# shellcheck disable=SC2329 # invoked by the EXIT trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [[ -n $upid ]] && kill -0 "$upid" 2>/dev/null; then
    # timeout(1) made itself a process-group leader: kill UML and helpers.
    kill -TERM -- "-$upid" 2>/dev/null || kill -TERM "$upid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$upid" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL -- "-$upid" 2>/dev/null || true
    wait "$upid" 2>/dev/null || true
  fi
  if [[ -n $tpid ]]; then
    kill "$tpid" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
  fi
  rm -rf -- "$run"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

cp -- "$script_dir/init.sh" "$run/init.sh"
chmod 755 "$run/init.sh"
{
  printf 'UML_MODULES_DIR=%q\n' "$moddir"
  printf 'UML_CWD=%q\n' "$PWD"
  printf 'UML_ENV=('
  if ((${#env_assign[@]} > 0)); then printf '%q ' "${env_assign[@]}"; fi
  printf ')\n'
  printf 'UML_CMD=('
  printf '%q ' "$@"
  printf ')\n'
} >"$run/config.sh"
: >"$run/output"

ulimit -c 0 # a UML panic would otherwise try to dump a huge core
(
  cd "$run" # UML opens ./root_fs as ubd0 by default; keep it in here
  exec timeout --kill-after=10 "$timeout_s" "$kernel" \
    "mem=$mem" rootfstype=hostfs rootflags=/ rw "init=$run/init.sh" \
    con=null ssl=null con0=fd:0,fd:1 quiet \
    "uml_dir=$run/uml" "umid=${run##*/}" \
    </dev/null >"$run/console.log" 2>&1
) &
upid=$!

# Stream the command's output live; tail exits (after a final read) shortly
# after UML does.  tail runs in the background so that `wait` -- unlike a
# foreground command -- is interrupted at once by INT/TERM (-> cleanup).
tail -n +1 -s 0.1 -f --pid="$upid" "$run/output" &
tpid=$!
urc=0
wait "$upid" || urc=$?
upid=
wait "$tpid" || true
tpid=

if [[ ${UML_VERBOSE:-0} != 0 ]]; then
  printf -- '--- UML console log ---\n' >&2
  cat "$run/console.log" >&2
fi
if [[ -s $run/status ]]; then
  status=$(<"$run/status")
  [[ $status =~ ^[0-9]+$ ]] || die "bad status from UML: $status"
  exit "$status"
fi
if ((urc == 124 || urc == 137)); then
  msg="timed out after ${timeout_s}s (UML killed)"
else
  msg="UML exited (rc=$urc) before the command reported a status"
fi
if [[ ${UML_VERBOSE:-0} == 0 ]]; then
  printf -- '--- last lines of the UML console log ---\n' >&2
  tail -n 40 "$run/console.log" >&2 || true
fi
die "$msg"
