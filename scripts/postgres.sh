#!/usr/bin/env bash
# A throwaway PostgreSQL for tests: Debian's `postgresql` binaries run as an ordinary process, no system service.
#
#   scripts/postgres.sh start DIR PORT   initdb into DIR/data, listen on 127.0.0.1:PORT only, trust auth, a user
#                                        `outpost` (not a superuser; may create databases) owning a database
#                                        `outpost`; returns once the server accepts connections. On a DIR that
#                                        was started before, starts the same cluster again (a restart test).
#   scripts/postgres.sh stop DIR         stops it (fast shutdown); DIR is left for the caller to remove.
#
# The URL is then postgres://outpost@127.0.0.1:PORT/outpost. PostgreSQL refuses to run as root: as root the
# server runs as `nobody` and DIR is handed to it. The Unix socket goes into DIR, not /var/run/postgresql.
set -euo pipefail

usage() { echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2; }

bin_dir() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [[ -z "${dir}" || ! -x "${dir}/initdb" ]]; then
    echo "postgres.sh: no PostgreSQL binaries under /usr/lib/postgresql (apt-get install postgresql)" >&2
    exit 3
  fi
  printf '%s' "${dir}"
}

# Runs a command as the user the server runs as.
as_server_user() {
  if [[ "$(id -u)" -eq 0 ]]; then
    runuser -u nobody -- "$@"
  else
    "$@"
  fi
}

[[ $# -ge 2 ]] || usage
command="$1"
dir="$(realpath -m "$2")"
bin="$(bin_dir)"

case "${command}" in
  start)
    [[ $# -eq 3 ]] || usage
    port="$3"
    mkdir -p "${dir}"
    if [[ "$(id -u)" -eq 0 ]]; then
      chown nobody:nogroup "${dir}"
      chmod 700 "${dir}"
      # `nobody` must be able to reach DIR: open the directories above it for traversal only where needed.
      parent="$(dirname "${dir}")"
      while [[ "${parent}" != "/" ]]; do
        if ! runuser -u nobody -- test -x "${parent}"; then chmod o+x "${parent}"; fi
        parent="$(dirname "${parent}")"
      done
    fi
    fresh=0
    if [[ ! -f "${dir}/data/PG_VERSION" ]]; then
      fresh=1
      as_server_user "${bin}/initdb" -D "${dir}/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"${dir}/initdb.log" 2>&1 || { cat "${dir}/initdb.log" >&2; exit 1; }
    fi
    as_server_user "${bin}/pg_ctl" -D "${dir}/data" -l "${dir}/server.log" -w -t 30 \
      -o "-c listen_addresses=127.0.0.1 -p ${port} -c unix_socket_directories='${dir}' -c max_connections=200" \
      start >/dev/null || { cat "${dir}/server.log" >&2; exit 1; }
    psql=("${bin}/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${port}" -U postgres -d postgres)
    if (( fresh )); then
      as_server_user "${psql[@]}" -c "CREATE ROLE outpost LOGIN CREATEDB" \
        -c "CREATE DATABASE outpost OWNER outpost" >/dev/null
    fi
    echo "postgres.sh: postgres://outpost@127.0.0.1:${port}/outpost (data in ${dir}/data)"
    ;;
  stop)
    [[ $# -eq 2 ]] || usage
    if [[ -f "${dir}/data/postmaster.pid" ]]; then
      as_server_user "${bin}/pg_ctl" -D "${dir}/data" -m fast -w -t 30 stop >/dev/null
    fi
    ;;
  *) usage ;;
esac
