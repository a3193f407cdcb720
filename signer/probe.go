package signer

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/miekg/pkcs11"
)

// Probe is what a signer's token says about itself, and what the bridge can back with it.
type Probe struct {
	Signer       string
	Module       string
	Slot         uint
	Label        string
	Serial       string
	Manufacturer string
	Model        string
	Mechanisms   int
	// Features maps a bridge feature to whether the token has the mechanisms for it.
	Features map[string]bool
}

// features lists bridge features and the mechanisms each needs.
var features = []struct {
	name  string
	mechs []uint
	any   bool // one of mechs suffices
}{
	{"AES keys (KMIP Create, KES keys)", []uint{pkcs11.CKM_AES_KEY_GEN}, false},
	{"AES-GCM (KMIP Encrypt/Decrypt, KES generate/decrypt)", []uint{pkcs11.CKM_AES_GCM}, false},
	{"AES-CBC (KMIP Encrypt/Decrypt)", []uint{pkcs11.CKM_AES_CBC_PAD}, false},
	{"HMAC-SHA256 (KMIP MAC, KES hmac)", []uint{pkcs11.CKM_GENERIC_SECRET_KEY_GEN, pkcs11.CKM_SHA256_HMAC}, false},
	{"RSA key pairs", []uint{pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN}, false},
	{"RSA PKCS#1 v1.5 sign", []uint{pkcs11.CKM_RSA_PKCS, pkcs11.CKM_SHA256_RSA_PKCS}, false},
	{"RSA-PSS sign", []uint{pkcs11.CKM_RSA_PKCS_PSS, pkcs11.CKM_SHA256_RSA_PKCS_PSS}, false},
	{"RSA-OAEP decrypt", []uint{pkcs11.CKM_RSA_PKCS_OAEP}, false},
	{"EC key pairs and ECDSA", []uint{pkcs11.CKM_EC_KEY_PAIR_GEN, pkcs11.CKM_ECDSA}, false},
	{"AES key wrap with padding (exports wrapped in the token, KMIP Get wrapped)", []uint{ckmAESKeyWrapKWP, pkcs11.CKM_AES_KEY_WRAP_PAD}, true},
	{"AES key wrap (KMIP Get wrapped, RFC 3394)", []uint{pkcs11.CKM_AES_KEY_WRAP}, false},
	{"AES encryption-based derivation (KMIP DeriveKey)", []uint{pkcs11.CKM_AES_CBC_ENCRYPT_DATA, pkcs11.CKM_AES_ECB_ENCRYPT_DATA}, true},
	{"random numbers", nil, false},
}

// Probe reports the token of the named signer: that it is reachable and logged in, and which
// features its mechanisms can back.
func (r *Registry) Probe(ctx context.Context, name string) (Probe, error) {
	t, err := r.Signer(name)
	if err != nil {
		return Probe{}, err
	}
	if _, err := t.Ping(ctx); err != nil {
		return Probe{}, err
	}
	p := Probe{
		Signer: name, Module: t.mod.path, Slot: t.slot, Label: t.info.Label, Serial: t.info.SerialNumber,
		Manufacturer: t.info.ManufacturerID, Model: t.info.Model, Mechanisms: len(t.mechs), Features: map[string]bool{},
	}
	for _, f := range features {
		ok := !f.any
		for _, m := range f.mechs {
			if f.any {
				ok = ok || t.mechs[m]
			} else {
				ok = ok && t.mechs[m]
			}
		}
		p.Features[f.name] = ok
	}
	return p, nil
}

// String renders the probe for `p11bridge check` and the start-up log.
func (p Probe) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "signer %q: token %q (serial %s, %s %s) in slot %d of %s, logged in, %d mechanisms\n",
		p.Signer, p.Label, p.Serial, p.Manufacturer, p.Model, p.Slot, p.Module, p.Mechanisms)
	names := make([]string, 0, len(p.Features))
	for n := range p.Features {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		mark := "yes"
		if !p.Features[n] {
			mark = "NO "
		}
		fmt.Fprintf(&b, "  %s  %s\n", mark, n)
	}
	return b.String()
}
