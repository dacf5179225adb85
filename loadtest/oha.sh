#!/usr/bin/env bash
# The loadtest/run scenarios with oha (`cargo install oha`), against a server that is
# already running. oha is what users run, but on one core it runs out of CPU before
# the server does, so take ratios from loadtest/run (wrk), not from this.
#
#   loadtest/oha.sh [--url URL] [--conns 32,256] [--duration 10s] [--preload] [--pin] [SCENARIO...]
#
# SCENARIO: get_hot get_random put mix (default: all). URL defaults to $DODODB_URL or
# http://127.0.0.1:8888. --preload first PUTs k0..k99999 with loadtest/lib/dodo.py
# (needs a fresh server and wrk). --pin runs oha under `taskset -c 1`.
#
# Random keys: oha --urls-from-file with one URL per key k0..k99999 (oha picks one at
# random per request), as in the wrk scripts. oha cannot mix methods in one run, so
# "mix" is two oha processes at once with 90% / 10% of the connections on GET / PUT:
# a 90/10 split of connections, not of requests (PUTs are slower, so their share of
# requests comes out lower; both parts' req/s are printed).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
url="${DODODB_URL:-http://127.0.0.1:8888}"
conns="32,256" duration="10s" preload=0 pin=()
scenarios=()
while [ $# -gt 0 ]; do
  case "$1" in
    --url) url="$2"; shift ;;
    --conns) conns="$2"; shift ;;
    --duration) duration="$2"; shift ;;
    --preload) preload=1 ;;
    --pin) pin=(taskset -c 1) ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    get_hot|get_random|put|mix) scenarios+=("$1") ;;
    *) echo "oha.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ ${#scenarios[@]} -gt 0 ] || scenarios=(get_hot get_random put mix)
url="${url%/}"
command -v oha >/dev/null || { echo "oha.sh: oha is missing: cargo install oha (or loadtest/run --with-oha)" >&2; exit 2; }

body='{"id":1234,"name":"dodo bird","tags":["extinct","flightless"],"weight_kg":10.6,"island":"Mauritius"}'
# One URL per key for --urls-from-file; removed on exit.
urls_file="$(mktemp "${TMPDIR:-/tmp}/oha-urls.XXXXXX")"
mix_out="$(mktemp "${TMPDIR:-/tmp}/oha-mix-put.XXXXXX")"
trap 'rm -f "$urls_file" "$mix_out"' EXIT
awk -v u="$url" 'BEGIN { for (i = 0; i < 100000; i++) print u "/kv/k" i }' > "$urls_file"

if [ "$preload" = 1 ]; then
  python3 "$here/lib/dodo.py" preload "$url" --keys 100000
fi

oha_run() { "${pin[@]}" oha --no-tui -z "$duration" "$@"; }

IFS=, read -r -a conn_list <<< "$conns"
for c in "${conn_list[@]}"; do
  for s in "${scenarios[@]}"; do
    echo "=== $s, $c connections, $duration @ $url"
    case "$s" in
      get_hot) oha_run -c "$c" "$url/kv/k0" ;;
      get_random) oha_run -c "$c" --urls-from-file "$urls_file" ;;
      put) oha_run -c "$c" -m PUT -T application/json -d "$body" --urls-from-file "$urls_file" ;;
      mix)
        puts=$(( c / 10 > 0 ? c / 10 : 1 )); gets=$(( c - puts > 0 ? c - puts : 1 ))
        echo "--- GET part ($gets connections); PUT part below ($puts connections)"
        oha_run -c "$puts" -m PUT -T application/json -d "$body" --urls-from-file "$urls_file" \
          > "$mix_out" 2>&1 &
        put_pid=$!
        oha_run -c "$gets" --urls-from-file "$urls_file"
        wait "$put_pid" || true
        echo "--- PUT part"
        cat "$mix_out"
        ;;
    esac
  done
done
