# kms_exporter: `make demo` runs the exporter on an embedded default, `make test` runs every test.
GO        ?= go
BIN       := .bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION  ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BRANCH    ?= $(shell git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)
VPKG      := github.com/prometheus/common/version
LDFLAGS   := -s -w -X $(VPKG).Version=$(VERSION) -X $(VPKG).Revision=$(REVISION) -X $(VPKG).Branch=$(BRANCH) \
             -X $(VPKG).BuildUser=make -X $(VPKG).BuildDate=$(shell date -u +%Y%m%d-%H:%M:%S)
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Debian packages the tests run for real: promtool (prometheus), amtool and Alertmanager (prometheus-alertmanager), the AWS CLI (awscli, /usr/bin/aws), a static shell for the Docker test (busybox-static), docker-compose, and chromium (headless: the HTML report in a real browser).
DEB_PKGS  := prometheus prometheus-alertmanager awscli busybox-static docker-compose chromium

.PHONY: all build test e2e deps demo bench lint fmt clean mutation FORCE

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o kms_exporter .

$(BIN)/local-kms: tools/go.mod tools/go.sum
	mkdir -p $(BIN)
	$(GO) build -C tools -o ../$(BIN)/local-kms github.com/nsmithuk/local-kms

$(BIN)/toxiproxy-server: tools/go.mod tools/go.sum
	mkdir -p $(BIN)
	$(GO) build -C tools -o ../$(BIN)/toxiproxy-server github.com/Shopify/toxiproxy/v2/cmd/server

# helm, for the chart's tests, built from its Go module at HELM_VERSION (about a minute); checked at every
# run, rebuilt only when the binary was built from another version (go version -m reads it).
HELM_VERSION := v3.22.0
$(BIN)/helm: FORCE
	@$(GO) version -m $@ 2>/dev/null | grep -Eq '^\s+mod\s+helm\.sh/helm/v3\s+$(HELM_VERSION)\s' || { \
		echo "installing helm $(HELM_VERSION)"; mkdir -p $(BIN) && GOBIN=$(CURDIR)/$(BIN) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION); }

FORCE:

$(BIN)/gremlins: tools/go.mod tools/go.sum
	mkdir -p $(BIN)
	$(GO) build -C tools -o ../$(BIN)/gremlins github.com/go-gremlins/gremlins/cmd/gremlins

# moto's server, the second AWS emulator of the tests (SQS, EventBridge, CloudFormation), at MOTO_VERSION
# (internal/kmstest.MotoVersion): installed with pip only where python3 does not have that version.
MOTO_VERSION := 5.2.1
# cfn-lint checks deploy/events' CloudFormation templates against the resource schemas.
CFN_LINT_VERSION := 1.51.0
PYTHON    ?= python3

# deps installs what the tests run: Debian packages (once), local-kms and toxiproxy at the versions pinned in tools/go.mod,
# helm at HELM_VERSION and moto at MOTO_VERSION.
deps: $(BIN)/local-kms $(BIN)/toxiproxy-server $(BIN)/helm
	@$(PYTHON) -c 'import moto, sys; sys.exit(moto.__version__ != "$(MOTO_VERSION)")' 2>/dev/null || { \
		echo "installing moto $(MOTO_VERSION)"; $(PYTHON) -m pip install -q 'moto[server]==$(MOTO_VERSION)'; }
	@cfn-lint --version 2>/dev/null | grep -q ' $(CFN_LINT_VERSION)$$' || { \
		echo "installing cfn-lint $(CFN_LINT_VERSION)"; $(PYTHON) -m pip install -q 'cfn-lint==$(CFN_LINT_VERSION)'; }
	@missing=""; for p in $(DEB_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Fuzz targets of every parser of outside input, as package:Target:executions; `make test` runs each for its
# count of executions, about ten seconds each on two cores. A count, not a -fuzztime duration: with a duration,
# Go 1.26's fuzz coordinator can report its own deadline as a failure ("context deadline exceeded", no failing
# input) when a loaded machine keeps a worker busy at the end (go.dev/issue/75804, fixed in Go 1.27).
# FUZZTIME (a count "100000x" or a duration "1m") replaces every count, e.g. `FUZZTIME=1m make test`.
FUZZ      := policy:FuzzParseExemptionUntil:200000 remediate:FuzzParseRequest:40000 \
             remediate:FuzzParseAlertmanager:30000 awsclient:FuzzParseRole:50000 awsclient:FuzzParseRegions:50000 \
             inventory:FuzzParseShard:60000 collector:FuzzLabelValue:15000 collector:FuzzCRC32Combine:80000 \
             events:FuzzParse:15000
FUZZTIME  ?=

# test runs the whole suite: lint, race detector, integration tests against local-kms, and a short fuzz run.
test: deps lint
	@for f in $(FUZZ); do \
		pkg=$${f%%:*}; rest=$${f#*:}; target=$${rest%%:*}; budget=$(if $(FUZZTIME),$(FUZZTIME),$${rest#*:}x); \
		echo "fuzzing $$pkg:$$target for $$budget"; \
		out=$$($(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $$budget ./$$pkg 2>&1) || { echo "$$out" | tail -40; exit 1; }; \
	done
	KMS_EXPORTER_REQUIRE_TOOLS=1 LOCAL_KMS_BIN=$(CURDIR)/$(BIN)/local-kms TOXIPROXY_BIN=$(CURDIR)/$(BIN)/toxiproxy-server \
		HELM_BIN=$(CURDIR)/$(BIN)/helm $(GO) test -race -count=1 -timeout 15m ./...

# mutation runs gremlins (pinned in tools/go.mod) on each package of MUTATION_PKGS in turn and prints its
# test efficacy (killed / (killed + lived)) and mutant coverage ((killed + lived) / all), with every mutant
# that lived, timed out or no test covers; full reports in $(BIN)/mutation-PKG.log and .json. Slow (each
# mutant reruns the package's tests), so not part of `make test`.
# One worker: the tests of remediate and inventory start local-kms and are themselves parallel. Gremlins times
# a mutant out at MUTATION_TIMEOUT_COEFFICIENT times the coverage run; -count=1 keeps that run out of the
# test cache, whose near-zero times would time every mutant out. (gremlins' --test-cpu is not used: v0.6.0
# passes "-cpu N" as one argument, every test run fails on it and every mutant counts as killed.)
MUTATION_PKGS                ?= policy remediate inventory
MUTATION_WORKERS             ?= 1
MUTATION_TIMEOUT_COEFFICIENT ?= 10
mutation: deps $(BIN)/gremlins
	@for p in $(MUTATION_PKGS); do \
		echo "mutation testing ./$$p"; \
		GOFLAGS="$$($(GO) env GOFLAGS) -count=1" KMS_EXPORTER_REQUIRE_TOOLS=1 LOCAL_KMS_BIN=$(CURDIR)/$(BIN)/local-kms TOXIPROXY_BIN=$(CURDIR)/$(BIN)/toxiproxy-server \
			$(BIN)/gremlins unleash --workers $(MUTATION_WORKERS) --timeout-coefficient $(MUTATION_TIMEOUT_COEFFICIENT) \
			--output $(BIN)/mutation-$$p.json ./$$p >$(BIN)/mutation-$$p.log 2>&1 || { cat $(BIN)/mutation-$$p.log; exit 1; }; \
		grep -E '^ *(LIVED|TIMED OUT|NOT COVERED) ' $(BIN)/mutation-$$p.log || true; \
		grep -E '^(Killed|Timed out|Test efficacy|Mutator coverage):' $(BIN)/mutation-$$p.log | sed 's/^/  /'; \
	done

# e2e runs the monitoring stack on loopback: local-kms, the exporter, Debian's Prometheus and Alertmanager
# (the alerts reach the exporter's remediation webhook), and checks every dashboard query. `make test` runs it too.
e2e: deps
	KMS_EXPORTER_REQUIRE_TOOLS=1 LOCAL_KMS_BIN=$(CURDIR)/$(BIN)/local-kms $(GO) test -count=1 -v ./e2e/

demo: build $(BIN)/local-kms
	LOCAL_KMS_BIN=$(CURDIR)/$(BIN)/local-kms $(GO) run ./internal/demo -exporter ./kms_exporter

# bench prints the performance figures of the README: refresh against a bare client and scrape at 10,000
# keys on local-kms; two regions behind 20 ms latency against the request budget; /metrics under 50 clients
# (wrk, installed here from Debian) while refreshes run; then BenchmarkMillion: the binary against the
# in-process fake KMS (internal/fastkms) at KMS_BENCH_SIZES keys (default 10000,100000,300000,1000000, about
# an hour; `KMS_BENCH_SIZES=100000 make bench` for a quick run) next to a bare client: refresh, publish,
# memory after a refresh and at its peak, scrapes, series in both --metrics.per-key modes (the capacity
# table of the README); publishing one changed key at 100,000 keys (BenchmarkPublishOneChange); events
# (BenchmarkEvents): a rotation disabled with the AWS CLI to noncompliant on /metrics through moto's
# EventBridge and SQS at 10,000 and 100,000 keys, and KMS calls per day with and without events.
bench: $(BIN)/local-kms
	@command -v wrk >/dev/null || ($(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends wrk >/dev/null)
	LOCAL_KMS_BIN=$(CURDIR)/$(BIN)/local-kms $(GO) test -run '^$$' -bench 'Refresh|Scrape' -benchtime 3x -timeout 60m ./bench/
	LOCAL_KMS_BIN=$(CURDIR)/$(BIN)/local-kms $(GO) test -run '^$$' -bench 'Budget|Load' -benchtime 1x -timeout 60m ./bench/
	$(GO) test -run '^$$' -bench 'PublishOneChange' -benchtime 50x ./collector/
	$(GO) test -run '^$$' -bench 'Events' -benchtime 1x -timeout 60m ./bench/
	$(GO) test -run '^$$' -bench 'Million' -benchtime 1x -timeout 120m ./bench/

clean:
	rm -rf kms_exporter $(BIN)
