# p11bridge — the two commands are `make run` and `make test`; see README.md.
GO      ?= go
BIN     := bin/p11bridge
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
export CGO_ENABLED := 1

.PHONY: all build deps deps-test run test soak vet bench bench-scale fuzz clean install

# Install paths (GNU conventions). DESTDIR stages the whole tree elsewhere, for packages and tests.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
DOCDIR     ?= $(PREFIX)/share/doc/p11bridge
DESTDIR    ?=

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/p11bridge

deps:
	@scripts/deps.sh

deps-test:
	@scripts/deps.sh test

# Dev mode: a SoftHSM2 token, certificates and a config in .p11bridge-dev (reused by later runs).
run: deps build
	$(BIN) dev --dir .p11bridge-dev

# gofmt checks every .go file in the tree, tracked or not, in a git checkout or not; left out are
# git's data, build output, caches, dev mode's state, vendored code and testdata.
GOFILES = $(shell find . \( -path ./.git -o -path ./bin -o -path ./.cache -o -path ./.p11bridge-dev \
	-o -name vendor -o -name testdata \) -prune -o -type f -name '*.go' -print)

vet:
	@test -n "$(GOFILES)" || { echo "vet: no .go files found"; exit 1; }
	@out="$$(gofmt -l $(GOFILES) 2>&1)"; test -z "$$out" || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags p11fault ./signer/ ./server/ ./ttlv/

# The race detector runs on the packages with concurrency. Left out: the OASIS vector runs, which
# decode files or replay them one at a time on one connection (a third of ttlv's time under -race).
# Adds 2.5-3.5 min from a cold cache (race-built packages are cached apart), 30 s from a warm one.
RACESKIP := ^(TestOASISReplay|TestOASISVectorPayloads|TestOASISVectorsRoundTrip)$$

test: deps-test vet
	$(GO) test -count=1 -timeout 18m ./...
	$(GO) test -count=1 -timeout 10m -race -skip '$(RACESKIP)' ./keymap/ ./signer/ ./server/ ./ttlv/ ./kes/
	$(GO) test -count=1 -timeout 5m -tags p11fault ./signer/
	$(GO) test -count=1 -timeout 5m -tags p11fault -run '^TestTokenChoosesGCMIV$$' ./ttlv/

# Long versions of the hardening tests, not in CI (docs/guarantees.md): the load test for SOAKTIME,
# five SIGKILL rounds under creating clients, each HSM fault held for 20 s.
SOAKTIME    ?= 30m
SOAKTIMEOUT ?= 60m
soak: deps-test
	P11BRIDGE_SOAK=1 P11BRIDGE_SOAK_DURATION=$(SOAKTIME) $(GO) test -count=1 -v -timeout $(SOAKTIMEOUT) \
		-run '^(TestLoad|TestCrashLosesNothing|TestHSMFaultsEndToEnd|TestIdleKMIPConnections)$$' ./test/

# Benchmarks print registry, front-end and reference figures side by side; see docs/benchmarks.md.
# The KES comparison runs the real binary (p11bridge serve on dev mode's setup) against KES v0.24.0,
# both up at once, alternating every BENCHSLICE, BENCHROUNDS rounds per case (~3 min). Its first
# step builds KES once into the user's cache (minutes, needs the Go module proxy) outside the
# measured run. The date and load average head bench.out. BENCHCOUNT=3 repeats every go test
# benchmark (benchratio uses the last).
BENCHCOUNT  ?= 1
BENCHROUNDS ?= 6
BENCHSLICE  ?= 3s
bench: deps-test build
	@$(GO) run ./test/kesbench -build-kes
	@{ date -u '+%Y-%m-%d %H:%M:%S UTC'; uptime; } | tee bench.out
	$(GO) run ./test/kesbench -bin $(BIN) -rounds $(BENCHROUNDS) -slice $(BENCHSLICE) | tee -a bench.out
	$(GO) test -run '^$$' -bench . -benchtime 2s -count $(BENCHCOUNT) -timeout 60m ./signer/ ./ttlv/ | tee -a bench.out
	@$(GO) run ./test/benchratio < bench.out

# How costs grow with the number of keys on one token (not in CI): for each of SCALESIZES keys, a
# fresh dev-mode token filled through the registry, then the real binary measured (start, warm-up,
# first use, Locate, keys list and rebuild, RSS); docs/benchmarks.md. 1,000 + 10,000 + 100,000
# keys took 8½ minutes here, most of it SoftHSM2 making 111,000 keys (~320 a second).
SCALESIZES ?= 1000,10000,100000
bench-scale: deps-test build
	$(GO) run ./test/benchscale -bin $(BIN) -sizes $(SCALESIZES) | tee bench-scale.out

FUZZTIME ?= 10m
fuzz: deps-test
	$(GO) test -run '^$$' -fuzz FuzzOpen -fuzztime $(FUZZTIME) ./keymap/
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) ./conf/
	$(GO) test -run '^$$' -fuzz FuzzMessage -fuzztime $(FUZZTIME) ./ttlv/
	$(GO) test -run '^$$' -fuzz FuzzAttrStore -fuzztime $(FUZZTIME) ./ttlv/
	$(GO) test -run '^$$' -fuzz FuzzRequest -fuzztime $(FUZZTIME) ./kes/
	$(GO) test -run '^$$' -fuzz FuzzBytesObject -fuzztime $(FUZZTIME) ./kes/

# The binary, the systemd unit, and in SYSCONFDIR/p11bridge the example config and the files it
# names; an existing config, env file or revoked list is never overwritten.
install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(DOCDIR)
	install -d -m 0750 $(DESTDIR)$(SYSCONFDIR)/p11bridge
	install -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/p11bridge
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' \
		dist/p11bridge.service.in > $(DESTDIR)$(UNITDIR)/p11bridge.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/p11bridge.service
	sed -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' dist/p11bridge.hcl > $(DESTDIR)$(SYSCONFDIR)/p11bridge/p11bridge.hcl.example
	chmod 0640 $(DESTDIR)$(SYSCONFDIR)/p11bridge/p11bridge.hcl.example
	test -e $(DESTDIR)$(SYSCONFDIR)/p11bridge/p11bridge.hcl || \
		install -m 0640 $(DESTDIR)$(SYSCONFDIR)/p11bridge/p11bridge.hcl.example $(DESTDIR)$(SYSCONFDIR)/p11bridge/p11bridge.hcl
	test -e $(DESTDIR)$(SYSCONFDIR)/p11bridge/p11bridge.env || install -m 0600 dist/p11bridge.env $(DESTDIR)$(SYSCONFDIR)/p11bridge/p11bridge.env
	test -e $(DESTDIR)$(SYSCONFDIR)/p11bridge/revoked.txt || install -m 0640 dist/revoked.txt $(DESTDIR)$(SYSCONFDIR)/p11bridge/revoked.txt
	install -m 0644 README.md docs/*.md $(DESTDIR)$(DOCDIR)/
	@echo "installed p11bridge in $(DESTDIR)$(BINDIR); next: the steps at the top of $(UNITDIR)/p11bridge.service"

clean:
	rm -rf bin bench.out bench-scale.out
