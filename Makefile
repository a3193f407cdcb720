# p11bridge — the two commands are `make run` and `make test`; see README.md.
GO      ?= go
BIN     := bin/p11bridge
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
export CGO_ENABLED := 1

.PHONY: all build deps deps-test run test vet bench fuzz clean

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

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...
	$(GO) vet -tags p11fault ./signer/ ./server/

test: deps-test vet
	$(GO) test -count=1 -timeout 18m ./...
	$(GO) test -count=1 -timeout 5m -tags p11fault ./signer/

# Benchmarks print registry, front-end and reference figures side by side; see docs/benchmarks.md.
bench: deps-test
	$(GO) test -run '^$$' -bench . -benchtime 2s ./signer/ ./kes/ ./ttlv/ | tee bench.out
	@$(GO) run ./test/benchratio < bench.out

FUZZTIME ?= 10m
fuzz: deps-test
	$(GO) test -run '^$$' -fuzz FuzzOpen -fuzztime $(FUZZTIME) ./keymap/
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME) ./conf/
	$(GO) test -run '^$$' -fuzz FuzzMessage -fuzztime $(FUZZTIME) ./ttlv/
	$(GO) test -run '^$$' -fuzz FuzzRequest -fuzztime $(FUZZTIME) ./kes/

clean:
	rm -rf bin bench.out
