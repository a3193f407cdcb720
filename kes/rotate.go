package kes

import (
	"context"
	"fmt"

	"github.com/ansel1/merry/v2"

	"github.com/p11bridge/p11bridge/signer"
)

// Rotate gives the KES key name a new version, as the operator (`p11bridge keys rotate NAME`):
// generate and encrypt use the new version from then on; ciphertexts of older versions still
// decrypt, and hmac keeps using the original version. It returns the new version's id.
func Rotate(ctx context.Context, reg *signer.Registry, name string) (newVersionID string, err error) {
	if !validName(name) {
		return "", merry.Wrap(signer.ErrInvalid, merry.AppendMessagef("kes: key name %q: use 1 to %d of [0-9A-Za-z_-]", name, MaxNameLen))
	}
	rec, err := reg.RotateKESKey(ctx, signer.Operator, name)
	if err != nil {
		return "", fmt.Errorf("kes: rotate key %q: %w", name, err)
	}
	return rec.ID, nil
}

// ValidName reports whether s is a valid KES key name (for the CLI's checks).
func ValidName(s string) bool { return validName(s) }
