//go:build !p11fault

package signer

import "net/http"

// FaultHandler is nil outside fault-injection builds: production binaries cannot be told to fail.
func FaultHandler() http.Handler { return nil }
