package kes

import (
	"errors"
	"net/http"
	"time"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

// pageSize is how many names one list answer carries at most (a variable for the tests).
var pageSize = 1024

func badName(kind, s string) *apiError {
	return failf(http.StatusBadRequest, "%s name '%s' is empty, too long or contains invalid characters", kind, clip(s, 100))
}

func badPattern(s string) *apiError {
	return failf(http.StatusBadRequest, "listing pattern '%s' is empty, too long or is invalid", clip(s, 100))
}

// nameArg validates the route argument as a name of the given kind (key, policy, identity:
// KES accepts the same characters for all three), answering the request when it is not one.
func (c *call) nameArg(kind string) (string, bool) {
	if !validName(c.arg) {
		writeError(c.w, badName(kind, c.arg))
		return "", false
	}
	return c.arg, true
}

// keyName validates the route argument as a key name and records it for audit.
func (c *call) keyName() (string, bool) {
	name, ok := c.nameArg("key")
	if ok {
		c.key = name
	}
	return name, ok
}

// use records the version a request works with, for audit and the per-signer metrics.
func (c *call) use(rec keymap.Record) { c.version, c.signer = rec.ID, rec.Signer }

// versionErr maps a failure of an operation on version rec. The registry says "not found" both
// when the row went away (a concurrent delete: the key does not exist) and when the token lost the
// object behind a row that is still there, which is a key store fault the client must not take for
// "create the key again".
func (h *Handler) versionErr(c *call, err error, rec keymap.Record, what string) {
	if errors.Is(err, signer.ErrNotFound) {
		if _, gerr := h.reg.Get(rec.ID); gerr != nil {
			writeError(c.w, errKeyNotFound)
			return
		}
		c.fail(h, failf(http.StatusBadGateway, "key store failure: %s: key version %s is in the keymap but its token object is missing (signer %q)", what, rec.ID, rec.Signer), what)
		return
	}
	c.fail(h, err, what)
}

// createKey makes an AES-256 key and its companion HMAC key in the token where new keys go.
func (h *Handler) createKey(c *call) {
	name, ok := c.keyName()
	if !ok {
		return
	}
	defer lockName(name)()
	if _, exists := lookup(h.reg, name); exists {
		writeError(c.w, errKeyExists)
		return
	}
	rec, err := h.reg.Create(c.ctx, signer.KeySpec{Algorithm: signer.AES, Size: 256, WithHMAC: true}, signer.Meta{
		Name: name, State: keymap.Active, Owner: c.identity, Attrs: map[string]string{AttrName: name},
	})
	if err != nil {
		c.fail(h, err, "create key")
		return
	}
	c.use(rec)
	c.ok()
}

// importKey puts client-supplied AES-256 key bytes into the token, sensitive and not extractable.
// Import cannot add a companion HMAC key under the same tag, so a separate HMAC key is generated
// in the token and linked through the kes.hmac attribute (KES, too, gives imported keys a fresh
// random HMAC key).
func (h *Handler) importKey(c *call) {
	name, ok := c.keyName()
	if !ok {
		return
	}
	var req struct {
		Key    []byte `json:"key"`
		Cipher string `json:"cipher"`
	}
	if e := c.readBody(&req, false); e != nil {
		writeError(c.w, e)
		return
	}
	defer clear(req.Key)
	switch req.Cipher {
	case "AES256", "AES256-GCM_SHA256":
	default:
		writeError(c.w, failf(http.StatusNotAcceptable, "algorithm '%s' is not supported: keys live in PKCS#11 tokens, which do AES256", clip(req.Cipher, 40)))
		return
	}
	if len(req.Key) != 32 {
		writeError(c.w, failf(http.StatusNotAcceptable, "invalid key size for '%s': want 32 bytes", req.Cipher))
		return
	}
	defer lockName(name)()
	if _, exists := lookup(h.reg, name); exists {
		writeError(c.w, errKeyExists)
		return
	}
	hm, err := h.reg.Create(c.ctx, signer.KeySpec{Algorithm: signer.HMAC, Size: 256}, signer.Meta{
		Name: name + ".hmac", State: keymap.Active, Owner: c.identity,
	})
	if err != nil {
		c.fail(h, err, "import key: generate its HMAC key")
		return
	}
	rec, err := h.reg.Import(c.ctx, signer.Material{Class: keymap.SecretKey, Algorithm: signer.AES, Secret: req.Key}, signer.Meta{
		Name: name, State: keymap.Active, Owner: c.identity, Attrs: map[string]string{AttrName: name, AttrHMAC: hm.ID},
	}, false, "")
	if err != nil {
		if derr := h.reg.Destroy(c.ctx, hm.ID); derr != nil {
			h.log.Warn("kes: import failed and its HMAC key could not be removed", "key", name, "hmac_key", hm.ID, "err", derr)
		}
		c.fail(h, err, "import key")
		return
	}
	// The back link only helps operators reading the keymap; the key works without it.
	if _, err := h.reg.Update(hm.ID, func(r *keymap.Record) error {
		if r.Attrs == nil {
			r.Attrs = map[string]string{}
		}
		r.Attrs[AttrHMACOf] = rec.ID
		return nil
	}); err != nil {
		h.log.Warn("kes: could not link HMAC key to imported key", "key", name, "hmac_key", hm.ID, "err", err)
	}
	c.use(rec)
	c.ok()
}

// clip shortens what a client sent to n bytes for an error message.
func clip(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// describeKey reports the key as first created: rotations do not change its creation facts.
func (h *Handler) describeKey(c *call) {
	name, ok := c.keyName()
	if !ok {
		return
	}
	k, exists := lookup(h.reg, name)
	if !exists {
		writeError(c.w, errKeyNotFound)
		return
	}
	orig := k.original()
	c.use(k.current())
	c.reply(struct {
		Name      string    `json:"name"`
		Algorithm string    `json:"algorithm"`
		CreatedAt time.Time `json:"created_at"`
		CreatedBy string    `json:"created_by"`
	}{name, "AES256", orig.Created.UTC(), orig.Owner})
}

// deleteKey destroys every version (and an imported key's HMAC key) in the token.
func (h *Handler) deleteKey(c *call) {
	name, ok := c.keyName()
	if !ok {
		return
	}
	defer lockName(name)()
	k, exists := lookup(h.reg, name)
	if !exists {
		writeError(c.w, errKeyNotFound)
		return
	}
	for i := len(k.versions) - 1; i >= 0; i-- {
		v := k.versions[i]
		c.use(v)
		if err := h.reg.Destroy(c.ctx, v.ID); err != nil && !errors.Is(err, signer.ErrNotFound) {
			c.fail(h, err, "delete key version "+v.ID)
			return
		}
		if hid := v.Attrs[AttrHMAC]; hid != "" {
			if err := h.reg.Destroy(c.ctx, hid); err != nil && !errors.Is(err, signer.ErrNotFound) {
				c.fail(h, err, "delete HMAC key "+hid)
				return
			}
		}
	}
	c.version = ""
	c.ok()
}

// kesNameOf is the KES name rec answers to, or "" when it is no KES key.
func kesNameOf(rec keymap.Record) string {
	n, ok := rec.Attrs[AttrName]
	if !ok {
		n = rec.Name
	}
	if !validName(n) || !isVersionOf(rec, n) {
		return ""
	}
	return n
}

// listKeys answers sorted names matching the pattern, a page at a time. continue_at, when set, is
// the argument that fetches the next page.
func (h *Handler) listKeys(c *call) {
	p, ok := parseListPattern(c.arg)
	if !ok {
		writeError(c.w, badPattern(c.arg))
		return
	}
	var all []string
	h.reg.Range(func(rec keymap.Record) bool {
		if n := kesNameOf(rec); n != "" {
			all = append(all, n)
		}
		return true
	})
	names, next := listNames(all, p)
	c.reply(struct {
		Names      []string `json:"names"`
		ContinueAt string   `json:"continue_at"`
	}{names, next})
}
