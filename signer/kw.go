package signer

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
)

// AES key wrap on the host (RFC 3394, and RFC 5649 with padding). The registry wraps keys inside
// the token (C_WrapKey) and unwraps them here only under its own export wrapping key, whose value
// only this process knows; the wrap functions serve tests and clients that check what a token
// wrapped.

var (
	kwIV  = [8]byte{0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6, 0xa6} // RFC 3394 2.2.3.1
	kwpIV = [4]byte{0xa6, 0x59, 0x59, 0xa6}                         // RFC 5649 3
)

func kwCipher(kek []byte) (cipher.Block, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, errorf(ErrInvalid, "key wrap: the wrapping key is %d bytes, not an AES key", len(kek))
	}
	return b, nil
}

// wrapCore is W of RFC 3394 2.2.1 over the 64-bit blocks of r, with initial value a.
func wrapCore(b cipher.Block, a [8]byte, r []byte) []byte {
	n := len(r) / 8
	out := make([]byte, 8+len(r))
	copy(out[8:], r)
	var buf [16]byte
	for j := 0; j < 6; j++ {
		for i := 1; i <= n; i++ {
			copy(buf[:8], a[:])
			copy(buf[8:], out[8*i:8*i+8])
			b.Encrypt(buf[:], buf[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(buf[:8])^t)
			copy(out[8*i:], buf[8:])
		}
	}
	copy(out, a[:])
	return out
}

// unwrapCore is W^-1 of RFC 3394 2.2.2: the initial value it finds and the plaintext blocks.
func unwrapCore(b cipher.Block, c []byte) ([8]byte, []byte) {
	n := len(c)/8 - 1
	var a [8]byte
	copy(a[:], c[:8])
	r := make([]byte, 8*n)
	copy(r, c[8:])
	var buf [16]byte
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(buf[:8], binary.BigEndian.Uint64(a[:])^t)
			copy(buf[8:], r[8*(i-1):8*i])
			b.Decrypt(buf[:], buf[:])
			copy(a[:], buf[:8])
			copy(r[8*(i-1):], buf[8:])
		}
	}
	return a, r
}

// AESKeyWrap wraps key (a multiple of 8 bytes, at least 16) under kek with AES Key Wrap (RFC 3394).
func AESKeyWrap(kek, key []byte) ([]byte, error) {
	if len(key) < 16 || len(key)%8 != 0 {
		return nil, errorf(ErrInvalid, "AES key wrap (RFC 3394) takes a multiple of 8 bytes, at least 16; got %d", len(key))
	}
	b, err := kwCipher(kek)
	if err != nil {
		return nil, err
	}
	return wrapCore(b, kwIV, key), nil
}

// AESKeyUnwrap reverses AESKeyWrap; a wrong key or damaged data fails its integrity check.
func AESKeyUnwrap(kek, wrapped []byte) ([]byte, error) {
	if len(wrapped) < 24 || len(wrapped)%8 != 0 {
		return nil, errorf(ErrInvalid, "AES key wrap (RFC 3394): wrapped data of %d bytes", len(wrapped))
	}
	b, err := kwCipher(kek)
	if err != nil {
		return nil, err
	}
	a, r := unwrapCore(b, wrapped)
	if subtle.ConstantTimeCompare(a[:], kwIV[:]) != 1 {
		clear(r)
		return nil, errorf(ErrNotAuthentic, "AES key unwrap (RFC 3394): integrity check failed")
	}
	return r, nil
}

// AESKeyWrapPad wraps key (1 byte or more) under kek with AES Key Wrap with Padding (RFC 5649).
func AESKeyWrapPad(kek, key []byte) ([]byte, error) {
	if len(key) == 0 || uint64(len(key)) > 1<<32-1 {
		return nil, errorf(ErrInvalid, "AES key wrap with padding (RFC 5649): %d bytes", len(key))
	}
	b, err := kwCipher(kek)
	if err != nil {
		return nil, err
	}
	var a [8]byte
	copy(a[:], kwpIV[:])
	binary.BigEndian.PutUint32(a[4:], uint32(len(key)))
	p := make([]byte, (len(key)+7)/8*8)
	copy(p, key)
	if len(p) == 8 {
		// One block: a single AES encryption of A || P (RFC 5649 4.1).
		out := make([]byte, 16)
		copy(out, a[:])
		copy(out[8:], p)
		b.Encrypt(out, out)
		return out, nil
	}
	return wrapCore(b, a, p), nil
}

// AESKeyUnwrapPad reverses AESKeyWrapPad, checking the integrity value, the length and the zero padding.
func AESKeyUnwrapPad(kek, wrapped []byte) ([]byte, error) {
	if len(wrapped) < 16 || len(wrapped)%8 != 0 {
		return nil, errorf(ErrInvalid, "AES key wrap with padding (RFC 5649): wrapped data of %d bytes", len(wrapped))
	}
	b, err := kwCipher(kek)
	if err != nil {
		return nil, err
	}
	var a [8]byte
	var r []byte
	if len(wrapped) == 16 {
		out := make([]byte, 16)
		b.Decrypt(out, wrapped)
		copy(a[:], out[:8])
		r = out[8:]
	} else {
		a, r = unwrapCore(b, wrapped)
	}
	n := len(r) / 8
	mli := int(binary.BigEndian.Uint32(a[4:]))
	ok := subtle.ConstantTimeCompare(a[:4], kwpIV[:]) == 1 && mli > 8*(n-1) && mli <= 8*n
	if ok {
		var pad byte
		for _, x := range r[mli:] {
			pad |= x
		}
		ok = pad == 0
	}
	if !ok {
		clear(r)
		return nil, errorf(ErrNotAuthentic, "AES key unwrap with padding (RFC 5649): integrity check failed")
	}
	return r[:mli], nil
}
