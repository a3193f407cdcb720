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
		if _, gerr := h.reg.Access(c.caller, rec.ID, signer.UseSee); gerr != nil {
			writeError(c.w, errKeyNotFound)
			return
		}
		c.fail(h, failf(http.StatusBadGateway, "key store failure: %s: key version %s is in the keymap but its token object is missing (signer %q)", what, rec.ID, rec.Signer), what)
		return
	}
	c.fail(h, err, what)
}

// createKey makes an AES-256 key and its companion HMAC key in the token where new keys go, owned
// by the caller. A KMIP object of the same name does not stand in the way: names bind to KES keys.
func (h *Handler) createKey(c *call) {
	name, ok := c.keyName()
	if !ok {
		return
	}
	rec, err := h.reg.CreateKESKey(c.ctx, c.caller, name)
	if err != nil {
		c.fail(h, err, "create key")
		return
	}
	c.use(rec)
	c.ok()
}

// importKey puts client-supplied AES-256 key bytes into the token, sensitive and not extractable,
// with a generated HMAC key beside them (signer.ImportKESKey).
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
	rec, err := h.reg.ImportKESKey(c.ctx, c.caller, name, req.Key)
	if err != nil {
		c.fail(h, err, "import key")
		return
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
	k, exists, err := h.reg.LookupKESKey(c.caller, name)
	if err != nil {
		writeError(c.w, fromSigner(err, "describe key"))
		return
	}
	if !exists {
		writeError(c.w, errKeyNotFound)
		return
	}
	orig := k.Original()
	c.use(k.Current())
	c.reply(struct {
		Name      string    `json:"name"`
		Algorithm string    `json:"algorithm"`
		CreatedAt time.Time `json:"created_at"`
		CreatedBy string    `json:"created_by"`
	}{name, "AES256", orig.Created.UTC(), orig.Owner})
}

// deleteKey destroys every version (and an imported key's HMAC key) in the token: the owner's and
// the admin's right, as KMIP Destroy is, and with the same record left behind.
func (h *Handler) deleteKey(c *call) {
	name, ok := c.keyName()
	if !ok {
		return
	}
	if err := h.reg.DeleteKESKey(c.ctx, c.caller, name, c.use); err != nil {
		c.fail(h, err, "delete key")
		return
	}
	c.version = ""
	c.ok()
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
	for _, n := range h.reg.KESNames(c.caller) {
		if validName(n) {
			all = append(all, n)
		}
	}
	names, next := listNames(all, p)
	c.reply(struct {
		Names      []string `json:"names"`
		ContinueAt string   `json:"continue_at"`
	}{names, next})
}
