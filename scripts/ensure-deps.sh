#!/usr/bin/env bash
# Installs what `make run` / `make test` need on a fresh Debian machine with Rust (rustup).
# Idempotent and quiet when everything is present.
set -euo pipefail

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
# gtlsclient: an independent HTTP/3 client (ngtcp2 + nghttp3) for interop tests.
command -v gtlsclient >/dev/null 2>&1 || need_apt+=(ngtcp2-client)
# promtool (from Debian's prometheus): checks the /metrics exposition in the tests.
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# chromium: headless browser for the status page tests (dataplane /ui, operator /ui).
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || need_apt+=(chromium)
# The pod runner (make cluster, part of make e2e): network namespaces, veths, nftables DNAT.
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "ensure-deps: installing ${need_apt[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  elif command -v sudo >/dev/null 2>&1; then
    echo "ensure-deps: installing ${need_apt[*]} with sudo" >&2
    sudo apt-get update -qq
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "ensure-deps: please install: ${need_apt[*]}" >&2
    exit 1
  fi
fi

if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >&2
  done
fi
