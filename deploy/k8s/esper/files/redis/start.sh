#!/bin/sh
# Starts redis-server with Esper's ACL users (users.acl beside this script, or
# ESPER_REDIS_ACL_TEMPLATE): every ${VAR} in the template is replaced by that environment
# variable, which must be set, non-empty and free of whitespace and '$'. The rendered file
# (ESPER_REDIS_ACL_FILE, default /tmp/esper-users.acl, mode 600) is what Redis loads; the
# arguments are passed on to redis-server.
set -eu
here=$(dirname "$0")
template=${ESPER_REDIS_ACL_TEMPLATE:-$here/users.acl}
out=${ESPER_REDIS_ACL_FILE:-/tmp/esper-users.acl}
umask 077
awk '
/^[[:space:]]*#/ { next }
{
  line = $0
  done = ""
  while (match(line, /\$\{[A-Za-z_][A-Za-z0-9_]*\}/)) {
    name = substr(line, RSTART + 2, RLENGTH - 3)
    value = ENVIRON[name]
    if (value == "") { printf "redis start.sh: %s is not set (a password users.acl needs)\n", name > "/dev/stderr"; exit 1 }
    if (value ~ /[[:space:]$]/) { printf "redis start.sh: %s contains whitespace or $\n", name > "/dev/stderr"; exit 1 }
    done = done substr(line, 1, RSTART - 1) value
    line = substr(line, RSTART + RLENGTH)
  }
  print done line
}' "$template" > "$out"
exec redis-server "$@" --aclfile "$out"
