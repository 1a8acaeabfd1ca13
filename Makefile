# Weir — see README.md. Cargo's target dir lives outside the clone so fresh clones reuse builds.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/weir/target
CARGO ?= cargo

.PHONY: run test deps build release lint fmt check-example crds e2e bench clean manifests chart-check chart-dryrun cluster fuzz fuzz-smoke soak

## run: release build, two demo backends, the dataplane on examples/standalone.yaml
run: deps release
	scripts/run-demo.sh

## test: formatting, clippy -D warnings, every unit and integration test
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) test --workspace
	$(CARGO) run -q -p weir-dataplane --bin weir-dataplane -- check examples/standalone.yaml
	scripts/chart-check.sh

## deps: install what the build and tests need (Debian packages, rustup components)
deps:
	scripts/ensure-deps.sh

build:
	$(CARGO) build --workspace

release:
	$(CARGO) build --release -p weir-dataplane -p weir-bench --bins

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

check-example:
	$(CARGO) run -q -p weir-dataplane --bin weir-dataplane -- check examples/standalone.yaml

## crds: regenerate crds/*.yaml from the operator's CRD types (checked in; `make test` fails when stale)
crds:
	$(CARGO) run -q -p weir-operator -- crdgen --out crds

## manifests: copy crds/ into the chart, regenerate the dashboards and manifests/install.yaml
manifests:
	scripts/chart-check.sh --write

## chart-check: helm lint/template (every switch combination), kubernetes-validate, promtool
## rules + unit tests, dashboard queries, freshness of chart CRDs and manifests (see scripts/chart_check.py)
chart-check:
	scripts/chart-check.sh

## e2e: etcd + a real kube-apiserver on loopback, the operator and two dataplanes (see tests/README.md),
## then the Helm chart against the same kube-apiserver (chart-dryrun), then the chart's own pods
## and the scenarios through the Service (cluster)
e2e: deps
	scripts/e2e.sh
	scripts/chart-dryrun.sh
	scripts/cluster.sh

## cluster: the chart's own pods run like a kubelet would (network + mount namespaces, probes,
## rollouts, EndpointSlices, nftables Service DNAT) on the e2e kube-apiserver, and scenarios
## through the Service (see scripts/cluster.py, tests/README.md). Needs root.
cluster: deps
	scripts/cluster.sh

## chart-dryrun: helm install --dry-run=server, a real install and upgrade, and the operator running
## with only the chart's RBAC, against the e2e kube-apiserver (see scripts/chart_dryrun.py)
chart-dryrun:
	scripts/chart-dryrun.sh

## bench: Weir vs nginx, HAProxy, Caddy, Traefik and direct-to-backend, side by side (installs the
## peers; `dist` build (fat LTO; BENCH_PROFILE=release for the quicker one) and the profile-guided
## dataplane the images ship (scripts/pgo.sh, ~40 min on 2 cores; BENCH_PGO=0 skips it), then
## ~25 min of runs; BENCH_QUICK=1 for a short run). See BENCHMARKS.md
bench:
	bench/scripts/bench.sh

## fuzz: every libFuzzer target in fuzz/ for FUZZ_SECONDS each (default 300), seeds from fuzz/seeds,
## the growing corpus and crash artifacts under $(CARGO_TARGET_DIR)/fuzz-work (see fuzz/README.md)
FUZZ_SECONDS ?= 300
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

## fuzz-smoke: each fuzz target for a few seconds (CI), dev profile without a sanitizer
fuzz-smoke: deps
	FUZZ_SECONDS=5 FUZZ_BUILD_FLAGS="--sanitizer none --dev" scripts/fuzz.sh

## soak: one dataplane under mixed h1/h2/h3 load for SOAK_MINUTES (default 30) with config swaps,
## endpoint restarts, a sink outage, abandoned WebSockets and vanishing clients; RSS, fds, tasks
## (not in CI; see BENCHMARKS.md "Soak")
SOAK_MINUTES ?= 30
soak: deps release
	SOAK_MINUTES=$(SOAK_MINUTES) scripts/soak.sh

clean:
	$(CARGO) clean
