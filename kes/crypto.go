package kes

import (
	"crypto"
	"errors"
	"net/http"

	"github.com/p11bridge/p11bridge/signer"
)

// dataKeySize is the size of the data keys generate hands out (AES-256 keys for MinIO).
const dataKeySize = 32

// keyCall reads what the key operations share — the key name from the path, the JSON body into
// req, the key's versions — and answers the request itself when one of them is wrong.
func (h *Handler) keyCall(c *call, req any, optionalBody bool) (string, signer.KESKey, bool) {
	name, ok := c.keyName()
	if !ok {
		return "", signer.KESKey{}, false
	}
	if e := c.readBody(req, optionalBody); e != nil {
		writeError(c.w, e)
		return "", signer.KESKey{}, false
	}
	k, exists, err := h.reg.LookupKESKey(c.caller, name)
	if err != nil {
		writeError(c.w, fromSigner(err, "look up key"))
		return "", signer.KESKey{}, false
	}
	if !exists {
		writeError(c.w, errKeyNotFound)
		return "", signer.KESKey{}, false
	}
	return name, k, true
}

// generateKey draws a data key from the token's RNG and seals it with the current version.
func (h *Handler) generateKey(c *call) {
	var req contextBody
	name, k, ok := h.keyCall(c, &req, true)
	if !ok {
		return
	}
	cur := k.Current()
	c.use(cur)
	// The token that holds the key also makes the data key, so nothing but the token's RNG is trusted.
	dk, iv, body, err := h.reg.SealRandom(c.ctx, c.caller, cur.ID, dataKeySize, aad(name, cur.Tag, req.Context))
	defer clear(dk)
	if err != nil {
		h.versionErr(c, err, cur, "generate data key")
		return
	}
	c.replyBytes(field{"plaintext", dk}, field{"ciphertext", encodeCiphertext(cur.Tag, iv, body)})
}

// encryptKey seals a client plaintext with the current version.
func (h *Handler) encryptKey(c *call) {
	var req plaintextBody
	name, k, ok := h.keyCall(c, &req, false)
	defer clear(req.Plaintext)
	if !ok {
		return
	}
	cur := k.Current()
	c.use(cur)
	// Registry.Seal with a nil IV answers an IV of GCMNonceSize bytes (a token that writes its own
	// writes it into that space), the one size our ciphertext format has room for.
	iv, body, err := h.reg.Seal(c.ctx, c.caller, cur.ID, nil, req.Plaintext, aad(name, cur.Tag, req.Context))
	if err != nil {
		h.versionErr(c, err, cur, "encrypt")
		return
	}
	c.replyBytes(field{"ciphertext", encodeCiphertext(cur.Tag, iv, body)})
}

// decryptKey opens a ciphertext with the version named inside it, which must be a version of the
// key in the path. Every way a ciphertext can be wrong gets the same sentinel.
func (h *Handler) decryptKey(c *call) {
	var req ciphertextBody
	name, k, ok := h.keyCall(c, &req, false)
	if !ok {
		return
	}
	s, ok := parseCiphertext(req.Ciphertext)
	if !ok {
		writeError(c.w, errDecrypt)
		return
	}
	rec, ok := k.Version(s.tag)
	if !ok {
		// A version this keymap has not seen yet may be on the token (another instance rotated
		// the key): the registry adopts it.
		var err error
		if rec, err = h.reg.Access(c.caller, signer.ObjectID(s.tag, false), signer.UseSee); err != nil || !signer.IsKESVersionOf(rec, name) {
			writeError(c.w, errDecrypt)
			return
		}
	}
	c.use(rec)
	pt, err := h.reg.Open(c.ctx, c.caller, rec.ID, s.iv, s.body, aad(name, s.tag, req.Context))
	if err != nil {
		if errors.Is(err, signer.ErrNotAuthentic) {
			writeError(c.w, errDecrypt)
			return
		}
		h.versionErr(c, err, rec, "decrypt")
		return
	}
	defer clear(pt)
	c.replyBytes(field{"plaintext", pt})
}

// hmacKey computes HMAC-SHA256 inside the token with the HMAC key of the key's ORIGINAL version:
// MinIO derives its root credentials from it, so it must not change when the key is rotated.
func (h *Handler) hmacKey(c *call) {
	var req struct {
		Message []byte `json:"message"`
	}
	name, k, ok := h.keyCall(c, &req, false)
	if !ok {
		return
	}
	orig := k.Original()
	c.use(orig)
	id := orig.ID
	switch {
	case orig.Attrs[signer.AttrHMACKey] != "":
	case orig.Attrs[signer.AttrKESHMAC] != "":
		// An imported key's HMAC key is a row of its own: the key's own state and usage decide, as
		// they do for a created key's companion (an HMAC under a revoked key is refused either way).
		if _, err := h.reg.Access(c.caller, orig.ID, signer.UseMAC); err != nil {
			h.versionErr(c, err, orig, "hmac")
			return
		}
		id = orig.Attrs[signer.AttrKESHMAC]
	default:
		// 501, not 4xx/5xx: MinIO treats 501 as "no HMAC here" instead of failing with an empty key.
		writeError(c.w, failf(http.StatusNotImplemented, "key '%s' has no HMAC key: it was made without one (e.g. through KMIP)", name))
		return
	}
	sum, err := h.reg.HMAC(c.ctx, c.caller, id, crypto.SHA256, req.Message)
	if err != nil {
		h.versionErr(c, err, orig, "hmac")
		return
	}
	c.replyBytes(field{"hmac", sum})
}
