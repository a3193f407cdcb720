package server

import (
	"fmt"
	"strings"

	"github.com/p11bridge/p11bridge/signer"
)

// Probe feature names (signer.Probe.Features), as signer/probe.go words them.
const (
	featAESKeys = "AES keys (KMIP Create, KES keys)"
	featGCM     = "AES-GCM (KMIP Encrypt/Decrypt, KES generate/decrypt)"
	featCBC     = "AES-CBC (KMIP Encrypt/Decrypt)"
	featHMAC    = "HMAC-SHA256 (KMIP MAC, KES hmac)"
	featRSA     = "RSA key pairs"
	featRSA15   = "RSA PKCS#1 v1.5 sign"
	featPSS     = "RSA-PSS sign"
	featOAEP    = "RSA-OAEP decrypt"
	featEC      = "EC key pairs and ECDSA"
	featRandom  = "random numbers"
	featKWP     = "AES key wrap with padding (exports wrapped in the token, KMIP Get wrapped)"
	featKW      = "AES key wrap (KMIP Get wrapped, RFC 3394)"
	featDerive  = "AES encryption-based derivation (KMIP DeriveKey)"
)

// Capability is one thing a client can ask of p11bridge, and the token features it takes.
type Capability struct {
	Front   string // "KMIP" or "KES"
	Feature string
	Needs   []string // probe features, all required
}

// capabilities are what each front end can do with keys on one signer. Operations that run on
// the host (verify, public-key encryption, Get of public keys, Register) need nothing of the token
// beyond storing objects, and are left out.
var capabilities = []Capability{
	{"KES", "keys: create, generate, encrypt, decrypt (MinIO SSE-KMS and SSE-S3)", []string{featAESKeys, featGCM, featHMAC}},
	{"KES", "hmac (MinIO root credentials derived from the KMS)", []string{featAESKeys, featHMAC}},
	{"KMIP", "Create AES, Encrypt/Decrypt AES-GCM", []string{featAESKeys, featGCM}},
	{"KMIP", "Encrypt/Decrypt AES-CBC", []string{featAESKeys, featCBC}},
	{"KMIP", "Create HMAC keys, MAC/MACVerify", []string{featHMAC}},
	{"KMIP", "CreateKeyPair RSA, Sign PKCS#1 v1.5 (Krill)", []string{featRSA, featRSA15}},
	{"KMIP", "Sign RSA-PSS", []string{featRSA, featPSS}},
	{"KMIP", "Decrypt RSA-OAEP", []string{featRSA, featOAEP}},
	{"KMIP", "CreateKeyPair EC, Sign ECDSA", []string{featEC}},
	{"KMIP", "RNGRetrieve", []string{featRandom}},
	{"KMIP", "Get of exportable keys wrapped in the token (else read as CKA_VALUE); Get and Register wrapped (AES-KWP)", []string{featKWP}},
	{"KMIP", "Get and Register wrapped with AES key wrap (RFC 3394)", []string{featKW}},
	{"KMIP", "DeriveKey (encryption with an AES key)", []string{featDerive}},
	{"TLS", "server key in this token (RSA or ECDSA)", nil}, // either suffices; see backs
}

// backs says whether the probed token has what c needs.
func backs(p signer.Probe, c Capability) bool {
	if c.Front == "TLS" {
		return p.Features[featRSA15] || p.Features[featPSS] || p.Features[featEC]
	}
	for _, n := range c.Needs {
		if !p.Features[n] {
			return false
		}
	}
	return true
}

// Capabilities renders, for `p11bridge check` and the start-up log, which KMIP and KES features
// a probed signer can back and which it cannot, with the missing token features.
func Capabilities(p signer.Probe) string {
	var b strings.Builder
	for _, front := range []string{"KES", "KMIP", "TLS"} {
		for _, c := range capabilities {
			if c.Front != front {
				continue
			}
			if backs(p, c) {
				fmt.Fprintf(&b, "  %-4s yes  %s\n", front, c.Feature)
				continue
			}
			var missing []string
			for _, n := range c.Needs {
				if !p.Features[n] {
					missing = append(missing, n)
				}
			}
			if front == "TLS" {
				missing = []string{"RSA or ECDSA signing"}
			}
			fmt.Fprintf(&b, "  %-4s NO   %s (the token lacks %s)\n", front, c.Feature, strings.Join(missing, ", "))
		}
	}
	// How keys made exportable (policy export = true) leave this token.
	if p.Features[featKWP] {
		b.WriteString("  exports: exportable keys stay sensitive and leave the token wrapped under a key only p11bridge knows\n")
	} else {
		b.WriteString("  exports: the token cannot wrap them out: exportable keys are made readable and read as CKA_VALUE\n")
	}
	return b.String()
}

// backedSummary is the one-line form for the start-up log.
func backedSummary(p signer.Probe) (kmip, kes int, missing []string) {
	for _, c := range capabilities {
		ok := backs(p, c)
		switch {
		case ok && c.Front == "KMIP":
			kmip++
		case ok && c.Front == "KES":
			kes++
		case !ok && c.Front != "TLS":
			missing = append(missing, c.Front+" "+c.Feature)
		}
	}
	return kmip, kes, missing
}
