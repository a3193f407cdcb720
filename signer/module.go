package signer

import (
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"sync"

	"github.com/miekg/pkcs11"
)

// module is one loaded PKCS#11 library. A library may be initialized only once per process and is
// shared by every signer that names it (even through another path to the same file), because a
// second C_Initialize or a C_Finalize under a live user breaks all its sessions.
type module struct {
	path string
	ctx  *pkcs11.Ctx
	api  p11 // ctx as tokens call it (wrapped in fault-injection builds)
	refs int
	ours bool // this process's C_Initialize succeeded: the last release finalizes it

	// guards holds a storeGuard per slot for libraries that need one (needsStoreGuard).
	guards   map[uint]*storeGuard
	guardsMu sync.Mutex
}

var modules = struct {
	sync.Mutex
	byPath map[string]*module
}{byPath: map[string]*module{}}

// openModule loads and initializes the library at path, or returns the one already loaded.
// Its errors say which of the usual causes it is, because dlopen alone only says "could not open".
func openModule(path string) (*module, error) {
	if path == "" {
		return nil, errorf(ErrConfig, "no module path")
	}
	st, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, errorf(ErrConfig, "module %s: file does not exist (install the vendor's PKCS#11 library or fix the path)", path)
		}
		return nil, errorf(ErrConfig, "module %s: %v", path, err)
	}
	if st.IsDir() {
		return nil, errorf(ErrConfig, "module %s: is a directory, not a PKCS#11 library", path)
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, errorf(ErrConfig, "module %s: %v", path, err)
	}
	modules.Lock()
	defer modules.Unlock()
	if m := modules.byPath[real]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(real)
	if ctx == nil {
		return nil, errorf(ErrConfig, "module %s: %s", path, whyNotLoadable(real))
	}
	err = ctx.Initialize()
	ours := err == nil // a library another part of the process initialized is not ours to finalize
	if err != nil && ckr(err) != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
		ctx.Destroy()
		hint := ""
		if ckr(err) == pkcs11.CKR_GENERAL_ERROR && filepath.Base(real) == "libsofthsm2.so" {
			hint = " (SoftHSM2 fails so when SOFTHSM2_CONF names a missing or unreadable file)"
		}
		return nil, errorf(ErrConfig, "module %s: C_Initialize: %v%s", path, err, hint)
	}
	info, err := ctx.GetInfo()
	if err != nil {
		if ours {
			_ = ctx.Finalize()
		}
		ctx.Destroy()
		return nil, errorf(ErrConfig, "module %s: C_GetInfo: %v", path, err)
	}
	m := &module{path: real, ctx: ctx, api: wrapP11(ctx), refs: 1, ours: ours}
	if needsStoreGuard(info) {
		m.guards = map[uint]*storeGuard{}
	}
	modules.byPath[real] = m
	return m, nil
}

// apiFor is what a token in slot calls: the library, behind the slot's storeGuard where it needs one.
func (m *module) apiFor(slot uint) p11 {
	if m.guards == nil {
		return m.api
	}
	m.guardsMu.Lock()
	defer m.guardsMu.Unlock()
	g := m.guards[slot]
	if g == nil {
		g = &storeGuard{p11: m.api}
		m.guards[slot] = g
	}
	return g
}

// whyNotLoadable explains a failed dlopen/C_GetFunctionList from what the file is.
func whyNotLoadable(path string) string {
	f, err := elf.Open(path)
	if err != nil {
		return "not a shared library (dlopen failed: the file is not an ELF object)"
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err == nil {
		for _, s := range syms {
			if s.Name == "C_GetFunctionList" {
				return "dlopen failed (a dependency of the library may be missing, or it is built for another architecture)"
			}
		}
	}
	return "not a PKCS#11 library (it exports no C_GetFunctionList)"
}

// release drops one reference; the last one finalizes and unloads the library.
func (m *module) release() {
	modules.Lock()
	defer modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules.byPath, m.path)
	if m.ours {
		_ = m.ctx.Finalize()
	}
	m.ctx.Destroy()
}
