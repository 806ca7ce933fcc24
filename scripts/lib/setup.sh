# Shell functions shared by the set-up scripts (sourced, not run). Each failure ends with one line
# saying what to do.

# Bold on a terminal, plain in a log.
say() { if [ -t 1 ]; then printf '\033[1m==> %s\033[0m\n' "$*"; else printf '==> %s\n' "$*"; fi; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# fail WHAT TO DO: one line on standard error, then exit.
fail() {
  if [ -t 2 ]; then
    printf '\033[1;31m==> set-up failed: %s\033[0m\n' "$*" >&2
  else
    printf '==> set-up failed: %s\n' "$*" >&2
  fi
  exit 1
}

# The step under way and what to do if it fails, for the ERR trap (see on_failure).
STEP="setting up"
HINT="read the message above, fix its cause and run the script again"
step() { STEP=$1; HINT=$2; say "$STEP"; }
on_failure() { fail "$STEP: $HINT"; }

# --- The package manager's lock ---------------------------------------------------------------

APT_LOCKS=(/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock
           /var/cache/apt/archives/lock)
APT_LOCK_WAIT_S=${APT_LOCK_WAIT_S:-300}

# Whether every given lock file is free: apt and dpkg hold them with fcntl locks, which this
# takes and gives back at once, as apt itself does to check.
locks_free() {
  command -v python3 >/dev/null || return 0  # apt-get's own DPkg::Lock::Timeout then waits
  python3 - "$@" <<'PY'
import fcntl, os, sys
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        continue
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        sys.exit(1)
    finally:
        os.close(fd)
PY
}

# Who holds a lock file, for the waiting message ("" when it cannot be told).
lock_holder() {
  command -v python3 >/dev/null || return 0
  python3 - "$1" <<'PY' || true
import os, sys
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
        if any(os.readlink(f"/proc/{pid}/fd/{fd}") == sys.argv[1] for fd in fds):
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            print(f"{command[:60]} (pid {pid})", end="")
            break
    except OSError:
        continue
PY
}

# wait_for_locks LOCK...: wait up to APT_LOCK_WAIT_S seconds while another install holds them.
wait_for_locks() {
  local waited=0 lock holder
  until locks_free "$@"; do
    if [ "$waited" -eq 0 ]; then
      holder=""
      for lock in "$@"; do holder=$(lock_holder "$lock"); [ -n "$holder" ] && break; done
      say "another package install is running${holder:+: $holder}; waiting up to ${APT_LOCK_WAIT_S} s for it to finish"
    elif [ $((waited % 30)) -eq 0 ]; then
      say "still waiting for the package manager (${waited} s of ${APT_LOCK_WAIT_S} s)"
    fi
    if [ "$waited" -ge "$APT_LOCK_WAIT_S" ]; then
      fail "the package manager stayed locked for ${APT_LOCK_WAIT_S} s by another install: let it finish (or stop it), then run this script again"
    fi
    sleep 1
    waited=$((waited + 1))
  done
  if [ "$waited" -gt 0 ]; then say "the package manager is free again after ${waited} s"; fi
}

apt_updated=
apt_install() {
  if ! command -v apt-get >/dev/null; then
    fail "missing: $* — install them with your package manager, then run this script again"
  fi
  if [ "$(id -u)" -eq 0 ]; then wait_for_locks "${APT_LOCKS[@]}"; fi
  local apt=(apt-get -o "DPkg::Lock::Timeout=${APT_LOCK_WAIT_S}")
  if [ -z "$apt_updated" ]; then
    step "updating the package lists" "check the network and the apt sources, then run this script again"
    as_root "${apt[@]}" update -qq
    apt_updated=1
  fi
  step "installing $*" "install them by hand (apt-get install $*), then run this script again"
  as_root env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "$@" >/dev/null
}

# --- The MQTT broker ----------------------------------------------------------------------------

# The configuration file of the process listening on a TCP port ("" when it cannot be told).
listener_config() {
  local pid conf
  # Nothing found is an answer, not a failure (no process shown, not ours to see, no -c).
  pid=$(ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2 || true)
  [ -n "$pid" ] || return 0
  conf=$(tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -A1 -x -- '-c' | tail -n 1 || true)
  [ -n "$conf" ] || return 0
  case $conf in /*) ;; *) conf="/proc/$pid/cwd/$conf" ;; esac
  printf '%s' "$conf"
}

# Whether the broker on a port runs citytel's configuration (deploy/mosquitto.conf, as the
# set-up scripts and the tests install it).
runs_citytel_config() {
  local conf
  conf=$(listener_config "$1")
  [ -n "$conf" ] && grep -q '^# Mosquitto 2.0 configuration shipped with citytel' "$conf" 2>/dev/null
}

# The first port from $1 on that nothing listens on.
free_port_from() {
  local port=$1
  while listening "$port"; do port=$((port + 1)); done
  printf '%s' "$port"
}

# start_broker MOSQUITTO ROOT PORT: citytel's Mosquitto with deploy/mosquitto.conf on PORT, its
# queue and log under ROOT/var/mosquitto. A developer's local broker only: listening on 127.0.0.1
# and open to anonymous clients there, without the password and ACL files that
# `citytel gateways` writes for a real deployment. Returns 2 when PORT was taken meanwhile.
start_broker() {
  local mosquitto=$1 root=$2 port=$3
  mkdir -p "$root/var/mosquitto"
  sed -e "s#^persistence_location .*#persistence_location $root/var/mosquitto/#" \
      -e "s#^listener 1883\$#listener $port 127.0.0.1#" \
      -e 's#^allow_anonymous .*#allow_anonymous true#' -e '/^password_file /d' -e '/^acl_file /d' \
      -e '/^user /d' -e '/^log_dest /d' "$root/deploy/mosquitto.conf" > "$root/var/mosquitto.conf"
  printf 'user %s\nlog_dest file %s/var/mosquitto/mosquitto.log\npid_file %s/var/mosquitto/mosquitto.pid\n' \
    "$(id -un)" "$root" "$root" >> "$root/var/mosquitto.conf"
  rm -f "$root/var/mosquitto/mosquitto.log"
  "$mosquitto" -d -c "$root/var/mosquitto.conf"
  for _ in $(seq 50); do
    listening "$port" && return 0
    # Taken between the check and the bind (by any socket, not only a listener): say so, so
    # that the caller can try the next port.
    grep -qs "Address already in use" "$root/var/mosquitto/mosquitto.log" && return 2
    sleep 0.2
  done
  fail "Mosquitto did not start on port $port: see $root/var/mosquitto/mosquitto.log"
}

# ensure_broker MOSQUITTO ROOT PORT: a broker running citytel's configuration, on PORT when it is
# free or already citytel's, else citytel's own on the next free port. Never uses, silently, a
# broker whose configuration loses messages. Writes the broker's URL to ROOT/var/mqtt-url.
ensure_broker() {
  local mosquitto=$1 root=$2 port=$3 own conf
  if listening "$port" && ! runs_citytel_config "$port"; then
    conf=$(listener_config "$port")
    say "port $port is held by a broker that does not run citytel's deploy/mosquitto.conf (${conf:-its configuration cannot be read}): citytel will not use it, since a stock configuration drops an offline session's messages past its queue limit"
    own=""
    if [ -f "$root/var/mqtt-url" ]; then own=$(sed -e 's#.*:##' "$root/var/mqtt-url"); fi
    if [ -n "$own" ] && [ "$own" != "$port" ] && listening "$own" && runs_citytel_config "$own"; then
      port=$own
    else
      local started=1
      for _ in $(seq 20); do
        port=$(free_port_from $((port + 1)))
        started=0
        start_broker "$mosquitto" "$root" "$port" || started=$?
        [ "$started" -eq 2 ] || break
      done
      [ "$started" -eq 0 ] || fail "Mosquitto found no free port after $port: see $root/var/mosquitto/mosquitto.log"
    fi
    say "citytel's own broker (deploy/mosquitto.conf) runs on port $port instead; the demo uses it (CITYTEL_MQTT_URL=mqtt://127.0.0.1:$port)"
  elif ! listening "$port"; then
    say "starting Mosquitto on port $port with deploy/mosquitto.conf"
    start_broker "$mosquitto" "$root" "$port" ||
      fail "port $port was taken while Mosquitto started; run the set-up again"
  fi
  mkdir -p "$root/var"
  printf 'mqtt://127.0.0.1:%s\n' "$port" > "$root/var/mqtt-url"
  MQTT_PORT=$port
}
