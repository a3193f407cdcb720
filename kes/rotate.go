package kes

import (
	"context"
	"fmt"

	"github.com/ansel1/merry/v2"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// Rotate gives the KES key name a new version (signer ReKey of its current version, made where new
// keys go now). generate and encrypt use the new version from then on; ciphertexts of older
// versions still decrypt, and hmac keeps using the original version. It returns the new version's
// id. The CLI (`p11bridge keys rotate NAME`) calls it.
func Rotate(ctx context.Context, reg *signer.Registry, name string) (newVersionID string, err error) {
	if !validName(name) {
		return "", merry.Wrap(signer.ErrInvalid, merry.AppendMessagef("kes: key name %q: use 1 to %d of [0-9A-Za-z_-]", name, MaxNameLen))
	}
	defer lockName(name)()
	k, ok := lookup(reg, name)
	if !ok {
		return "", merry.Wrap(signer.ErrNotFound, merry.AppendMessagef("kes: key %q does not exist", name))
	}
	cur := k.current()
	// ReKey carries name, owner and kes.* attributes; the state is ours to say, else the new
	// version would start pre-active.
	rec, err := reg.ReKey(ctx, cur.ID, signer.Meta{State: keymap.Active})
	if err != nil {
		return "", fmt.Errorf("kes: rotate key %q (current version %s): %w", name, cur.ID, err)
	}
	return rec.ID, nil
}
