package signer

/*
#include <stdlib.h>

// CK_GCM_PARAMS of PKCS#11 v2.40 with CK_ULONG as unsigned long and natural alignment: the
// layout of every unix PKCS#11 module (pkcs11t.h).
typedef struct {
	unsigned char *pIv;
	unsigned long ulIvLen;
	unsigned long ulIvBits;
	unsigned char *pAAD;
	unsigned long ulAADLen;
	unsigned long ulTagBits;
} p11b_gcm_params;
*/
import "C"

import (
	"runtime"
	"sync"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// GCM parameters are laid out here, in C memory kept in a pool, and handed to miekg/pkcs11 as a
// mechanism parameter of plain bytes, which miekg copies as for any other mechanism.
// pkcs11.GCMParams costs six more cgo calls per operation (a calloc and a memmove each for the IV
// and the AAD, and two frees): about 1 µs of the server's CPU on a KES generate at concurrency 8.

// gcmBlockSize holds the struct, an IV of up to maxGCMIV bytes and MinIO's AAD (key name, tag
// and request context) with room to spare; a larger AAD gets a block of its own.
const (
	gcmBlockSize = 1024
	maxGCMIV     = 128
	gcmIVAt      = unsafe.Sizeof(C.p11b_gcm_params{})
	gcmAADAt     = gcmIVAt + maxGCMIV
)

// cBlock is C memory owned by a Go value: it is freed when the value is collected, so the pool
// may drop blocks as sync.Pool does; free releases one at once.
type cBlock struct {
	p       unsafe.Pointer
	size    uintptr
	cleanup runtime.Cleanup
}

func newCBlock(size uintptr) *cBlock {
	b := &cBlock{p: C.calloc(C.size_t(size), 1), size: size}
	if b.p == nil {
		panic("signer: out of C memory for GCM parameters")
	}
	b.cleanup = runtime.AddCleanup(b, func(p unsafe.Pointer) { C.free(p) }, b.p)
	return b
}

func (b *cBlock) free() {
	b.cleanup.Stop()
	C.free(b.p)
	b.p = nil
}

// bytes views n bytes of the block from at; beyond the block is a bug, not an overflow.
func (b *cBlock) bytes(at, n uintptr) []byte {
	if at+n > b.size {
		panic("signer: GCM parameters beyond their C block")
	}
	return unsafe.Slice((*byte)(unsafe.Add(b.p, at)), n)
}

// The layout above assumes miekg's CK_ULONG is a C unsigned long; its PSS parameters are three.
func init() {
	if len(pkcs11.NewPSSParams(0, 0, 0)) != 3*int(unsafe.Sizeof(C.ulong(0))) {
		panic("signer: CK_ULONG is not an unsigned long here; the GCM parameter layout does not apply")
	}
}

var gcmBlocks = sync.Pool{New: func() any { return newCBlock(gcmBlockSize) }}

// gcmParams is one operation's CK_GCM_PARAMS.
type gcmParams struct {
	block  *cBlock
	pooled bool
	ivLen  int
}

// newGCMParams lays out iv (at most maxGCMIV bytes, which callers check), aad and the tag length
// for one operation. release must be called once the operation has ended.
func newGCMParams(iv, aad []byte, tagBits int) gcmParams {
	if len(iv) > maxGCMIV {
		panic("signer: GCM IV longer than maxGCMIV")
	}
	g := gcmParams{ivLen: len(iv)}
	if need := gcmAADAt + uintptr(len(aad)); need > gcmBlockSize {
		g.block = newCBlock(need)
	} else {
		g.block, g.pooled = gcmBlocks.Get().(*cBlock), true
	}
	p := (*C.p11b_gcm_params)(g.block.p)
	*p = C.p11b_gcm_params{ulTagBits: C.ulong(tagBits)}
	if len(iv) > 0 {
		copy(g.block.bytes(gcmIVAt, uintptr(len(iv))), iv)
		p.pIv = (*C.uchar)(unsafe.Add(g.block.p, gcmIVAt))
		p.ulIvLen = C.ulong(len(iv))
		p.ulIvBits = C.ulong(8 * len(iv))
	}
	if len(aad) > 0 {
		copy(g.block.bytes(gcmAADAt, uintptr(len(aad))), aad)
		p.pAAD = (*C.uchar)(unsafe.Add(g.block.p, gcmAADAt))
		p.ulAADLen = C.ulong(len(aad))
	}
	return g
}

// mechanism is CKM_AES_GCM with these parameters; miekg copies the struct into C memory of its
// own for the call, and the pointers in it lead here.
func (g gcmParams) mechanism() []*pkcs11.Mechanism {
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, g.block.bytes(0, gcmIVAt))}
}

// iv is the IV as the token left it: FIPS-mode HSMs write their own over the caller's.
func (g gcmParams) iv() []byte {
	return append([]byte(nil), g.block.bytes(gcmIVAt, uintptr(g.ivLen))...)
}

// release ends the parameters' use. The block stays reachable until here, so its cleanup cannot
// free it while the token reads it.
func (g gcmParams) release() {
	if g.pooled {
		gcmBlocks.Put(g.block)
	} else {
		// A large AAD's block is freed at once: C memory is not counted by the GC's pacing.
		g.block.free()
	}
	runtime.KeepAlive(g.block)
}
