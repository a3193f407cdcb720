// Package kes serves the KES v1 HTTP API (as KES v0.24 and MinIO's kms-go/kes client speak it) on top
// of the signer registry: every KES key is an AES-256 key inside a PKCS#11 token, with a companion
// HMAC key, and every cryptographic operation happens inside the token.
//
// The package is an http.Handler only; TLS, listeners, identities and policies belong to the server
// package, which hands them in through Options. See docs/kes.md for the routes, the ciphertext
// format, key versions and the error sentinels.
package kes
