#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster from Debian's postgresql package on 127.0.0.1 and prints
# the MYELIN_TEST_POSTGRES URL for it. Usage: eval "$(scripts/test-postgres.sh start DIR)";
# scripts/test-postgres.sh stop DIR.
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?data folder}
port=${MYELIN_TEST_PG_PORT:-55432}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bin" ]; then
	echo "no PostgreSQL server found: apt-get install -y postgresql" >&2
	exit 1
fi
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $cmd in
start)
	mkdir -p "$dir"
	[ "$(id -u)" = 0 ] && chown postgres "$dir"
	as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
	as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
		-o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c max_connections=200" start >/dev/null
	echo "export MYELIN_TEST_POSTGRES='postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable'"
	;;
stop)
	as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
	;;
esac
