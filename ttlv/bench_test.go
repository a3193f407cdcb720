package ttlv

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	"github.com/miekg/pkcs11"
	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"

	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer"
)

// The KMIP benchmarks put the whole server path next to the leanest use of the same token, at
// concurrency 1 and 8, as sub-benchmarks named SUBJECT/cN (`make bench` prints the ratios with
// test/benchratio):
//
//	kmip           p11bridge: N persistent mutual-TLS connections, one goroutine each, sending a
//	               pre-encoded TTLV request and reading the response (checked for success). The
//	               request is encoded once because the client shares the 2 cores with the server
//	               here; a real client pays its encoding on its own machine.
//	kmip-ovh       the same through github.com/ovh/kmip-go's client (reflection encoding and
//	               decoding of every message on the client side, on the same 2 cores)
//	pkcs11         reference: one session per goroutine on the same token and key, the handle found
//	               once, C_SignInit+C_Sign (CKM_SHA256_RSA_PKCS) or C_EncryptInit+C_Encrypt
//	               (CKM_AES_GCM, 12-byte IV, 128-bit tag)
//	pykmip-server  reference (Encrypt at c1 only): PyKMIP's own server (Debian python3-pykmip)
//	               with its software engine and SQLite store, driven by the same raw client over
//	               mutual TLS 1.2; skipped when pykmip-server is not installed
//
// The server under test is a second one on the shared registry, set up as the server package
// sets it up: audit records JSON-encoded to a file (/dev/null here), operational log at Info.
//
// Besides ns/op, each sub-benchmark reports cpu-ns/op: the CPU time of the process (client,
// server and SoftHSM alike; for pykmip-server, plus that server's) per operation. On a machine
// shared with other work, ns/op at c8 measures the share of the cores the run got as much as the
// code; cpu-ns/op does not depend on it, and its ratios are what c8 ratios would be on an
// otherwise idle machine where both sides are CPU-bound.
//
// Run: go test ./ttlv -run '^$' -bench KMIP -benchtime 2s | go run ./test/benchratio

// signMsg is the message signed, the size of the registry benchmark's (signer/bench_test.go).
var signMsg = []byte("a message of a typical size for an RPKI object digest..")

var benchKeys struct {
	once        sync.Once
	err         error
	rsaPriv     string
	rsaPub      string
	aes         string
	rsaTag      []byte
	aesTag      []byte
	signReq     []byte // Sign RSA-2048 PKCS#1 v1.5 SHA-256 of signMsg, KMIP 1.4
	encryptReq  []byte // Encrypt AES-GCM 32 bytes, server-drawn IV, KMIP 1.4
	rsaVerifier *rsa.PublicKey
}

// benchSetup creates (once per process) the keys, as the "bench" identity through KMIP, and the
// requests every kmip worker sends.
func benchSetup(b *testing.B) {
	b.Helper()
	benchKeys.once.Do(func() { benchKeys.err = makeBenchKeys() })
	if benchKeys.err != nil {
		b.Fatal(benchKeys.err)
	}
}

func makeBenchKeys() error {
	cl, err := dialOVH(env.addr, "bench")
	if err != nil {
		return err
	}
	defer cl.Close()
	kp, err := cl.CreateKeyPair().RSA(2048, kmip.CryptographicUsageSign, kmip.CryptographicUsageVerify).Common().WithName("bench-rsa").Exec()
	if err != nil {
		return err
	}
	ak, err := cl.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).WithName("bench-aes").Exec()
	if err != nil {
		return err
	}
	for _, id := range []string{kp.PrivateKeyUniqueIdentifier, ak.UniqueIdentifier} {
		if _, err := cl.Activate(id).Exec(); err != nil {
			return err
		}
	}
	k := &benchKeys
	k.rsaPriv, k.rsaPub, k.aes = kp.PrivateKeyUniqueIdentifier, kp.PublicKeyUniqueIdentifier, ak.UniqueIdentifier
	for id, tag := range map[string]*[]byte{k.rsaPriv: &k.rsaTag, k.aes: &k.aesTag} {
		rec, err := env.reg.Get(id)
		if err != nil {
			return err
		}
		*tag = rec.Tag
	}
	pub, err := env.reg.PublicKey(context.Background(), signer.Operator, k.rsaPub)
	if err != nil {
		return err
	}
	var ok bool
	if k.rsaVerifier, ok = pub.(*rsa.PublicKey); !ok {
		return fmt.Errorf("bench-rsa public key is a %T", pub)
	}
	k.signReq = request(v14, kmip14.OperationSign, newStruct(0, newText(kmip14.TagUniqueIdentifier, k.rsaPriv),
		encodeStruct(kmip14.TagCryptographicParameters, cryptoParams{
			PaddingMethod:    ptr(uint32(kmip14.PaddingMethodPKCS1V1_5)),
			HashingAlgorithm: ptr(uint32(kmip14.HashingAlgorithmSHA_256)),
		}),
		newBytes(kmip14.TagData, signMsg))).encode()
	k.encryptReq = gcmEncryptRequest(k.aes)
	return nil
}

func gcmEncryptRequest(id string) []byte {
	return request(v14, kmip14.OperationEncrypt, newStruct(0, newText(kmip14.TagUniqueIdentifier, id),
		encodeStruct(kmip14.TagCryptographicParameters, cryptoParams{BlockCipherMode: ptr(uint32(kmip14.BlockCipherModeGCM))}),
		newBytes(kmip14.TagData, make([]byte, 32)))).encode()
}

// benchServer starts a KMIP server for one benchmark on the shared registry, PKI and policy, and
// returns its address. The tests' server keeps every audit record in memory, which would make the
// heap (and the GC's work) grow with b.N; this one writes them where production writes them: as
// JSON to a file.
func benchServer(b *testing.B) string {
	b.Helper()
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	srv := New(Options{
		Registry: env.reg, Auth: env.auth, ServerName: "p11bridge-bench",
		Log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		Audit: slog.New(slog.NewJSONHandler(devNull, nil)),
	})
	l, err := tls.Listen("tcp", "127.0.0.1:0", serverTLS())
	if err != nil {
		b.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			b.Errorf("bench server shutdown: %v", err)
		}
		<-served
		devNull.Close()
	})
	return l.Addr().String()
}

// runN runs b.N operations on exactly n goroutines. setup runs n times on the benchmark's
// goroutine (so it may fail the benchmark) and returns one worker's operation and its cleanup.
// testing.B.RunParallel is not used: it runs a multiple of GOMAXPROCS goroutines, and the point
// here is a given number of connections and sessions.
func runN(b *testing.B, n int, setup func() (op func() error, done func())) {
	runNWith(b, n, cpuTime, setup)
}

// runNWith is runN with cpu measuring the CPU time of everything doing the work.
func runNWith(b *testing.B, n int, cpu func() time.Duration, setup func() (op func() error, done func())) {
	// Connections and sessions end with each run: a benchmark runs several times while b.N
	// grows, and they would pile up until the end of the sub-benchmark.
	var dones []func()
	defer func() {
		for _, done := range dones {
			done()
		}
	}()
	ops := make([]func() error, n)
	for i := range ops {
		op, done := setup()
		ops[i] = op
		dones = append(dones, done)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	cpu0 := cpu()
	b.ResetTimer()
	for _, op := range ops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := op(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	// The CPU time per operation is the cost of the whole path (client, server and token share
	// this process), which load from other processes does not change the way it changes ns/op.
	b.ReportMetric(float64(cpu()-cpu0)/float64(b.N), "cpu-ns/op")
}

// cpuTime is the user and system time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rawKMIP is one persistent client connection that sends a fixed request.
type rawKMIP struct {
	c   *tls.Conn
	req []byte
	buf []byte
}

// successStatus is the encoded Result Status item "Success": present in a response of one batch
// item exactly when that item succeeded. Looking for it spares the client a full decode.
var successStatus = []byte{0x42, 0x00, 0x7f, 0x05, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0}

func dialRawKMIP(b *testing.B, addr, who string, req []byte) *rawKMIP {
	b.Helper()
	c, err := tls.Dial("tcp", addr, clientTLS(who))
	if err != nil {
		b.Fatalf("dial %s as %s: %v", addr, who, err)
	}
	if err := c.Handshake(); err != nil {
		b.Fatal(err)
	}
	return &rawKMIP{c: c, req: req, buf: make([]byte, 4096)}
}

// do sends the request and reads the whole response; the response stays in r.buf until the next call.
func (r *rawKMIP) do() ([]byte, error) {
	if _, err := r.c.Write(r.req); err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(r.c, r.buf[:hdrLen]); err != nil {
		return nil, err
	}
	n := hdrLen + int(binary.BigEndian.Uint32(r.buf[4:hdrLen]))
	if n > cap(r.buf) {
		r.buf = append(r.buf[:hdrLen], make([]byte, n-hdrLen)...)
	}
	if _, err := io.ReadFull(r.c, r.buf[hdrLen:n]); err != nil {
		return nil, err
	}
	out := r.buf[:n]
	if !bytes.Contains(out, successStatus) {
		return nil, responseError(out)
	}
	return out, nil
}

// responseError describes a failed response, decoding it only then.
func responseError(out []byte) error {
	n, err := parseNode(out)
	if err != nil {
		return fmt.Errorf("response does not parse: %v", err)
	}
	resp, err := decodeResponse(n)
	if err != nil || len(resp.Items) != 1 {
		return fmt.Errorf("response does not decode (%v)", err)
	}
	it := resp.Items[0]
	if it.ResultMessage != nil {
		return fmt.Errorf("operation failed: %s", *it.ResultMessage)
	}
	return errors.New("operation failed")
}

func dialOVH(addr, who string) (*kmipclient.Client, error) {
	c := env.clients[who]
	return kmipclient.DialContext(context.Background(), addr,
		kmipclient.WithRootCAFile(env.caFile), kmipclient.WithClientCertFiles(c.certFile, c.keyFile), kmipclient.WithServerName("127.0.0.1"))
}

// The raw PKCS#11 reference loads the module a second time: the registry already loaded and
// initialized it, so this is the same library instance (C_Initialize answers
// CKR_CRYPTOKI_ALREADY_INITIALIZED and the login is shared). It is never finalized: that would
// pull the token from under the registry.
var rawP11 struct {
	once sync.Once
	ctx  *pkcs11.Ctx
	slot uint
	err  error
}

func openRawP11() error {
	c := pkcs11.New(env.tok.Module)
	if c == nil {
		return fmt.Errorf("cannot load %s", env.tok.Module)
	}
	if err := c.Initialize(); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
		return err
	}
	slots, err := c.GetSlotList(true)
	if err != nil {
		return err
	}
	for _, sl := range slots {
		if ti, err := c.GetTokenInfo(sl); err == nil && strings.TrimRight(ti.Label, " ") == env.tok.Label {
			rawP11.ctx, rawP11.slot = c, sl
			return nil
		}
	}
	return fmt.Errorf("no token labelled %q", env.tok.Label)
}

// p11Session opens a session of its own and finds the key of class with CKA_ID tag.
func p11Session(b *testing.B, tag []byte, class uint) (*pkcs11.Ctx, pkcs11.SessionHandle, pkcs11.ObjectHandle, func()) {
	b.Helper()
	rawP11.once.Do(func() { rawP11.err = openRawP11() })
	if rawP11.err != nil {
		b.Fatal(rawP11.err)
	}
	c := rawP11.ctx
	sh, err := c.OpenSession(rawP11.slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		b.Fatal(err)
	}
	done := func() { _ = c.CloseSession(sh) }
	if err := c.Login(sh, pkcs11.CKU_USER, env.tok.PIN); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		done()
		b.Fatal(err)
	}
	// The token object: the registry's session copy of a secret key is visible in this process too.
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_ID, tag)}
	if err := c.FindObjectsInit(sh, tmpl); err != nil {
		done()
		b.Fatal(err)
	}
	hs, _, err := c.FindObjects(sh, 2)
	_ = c.FindObjectsFinal(sh)
	if err != nil || len(hs) != 1 {
		done()
		b.Fatalf("find key %x: %v (%d found)", tag, err, len(hs))
	}
	return c, sh, hs[0], done
}

func BenchmarkKMIPSignRSA2048(b *testing.B) {
	benchSetup(b)
	addr := benchServer(b)
	k := &benchKeys
	// One signature checked end to end, so that the figures are for correct work.
	r := dialRawKMIP(b, addr, "bench", k.signReq)
	out, err := r.do()
	if err != nil {
		b.Fatal(err)
	}
	var sr signResponse
	if err := decodeStruct(ok(b, mustDecodeResponse(b, out).Items[0]), &sr); err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256(signMsg)
	if err := rsa.VerifyPKCS1v15(k.rsaVerifier, crypto.SHA256, digest[:], sr.Signature); err != nil {
		b.Fatalf("signature does not verify: %v", err)
	}
	r.c.Close()
	params := kmip.CryptographicParameters{PaddingMethod: kmip.PaddingMethodPKCS1V1_5, HashingAlgorithm: kmip.HashingAlgorithmSHA_256}
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("kmip/c%d", n), func(b *testing.B) {
			runN(b, n, func() (func() error, func()) {
				r := dialRawKMIP(b, addr, "bench", k.signReq)
				return func() error { _, err := r.do(); return err }, func() { r.c.Close() }
			})
		})
		b.Run(fmt.Sprintf("kmip-ovh/c%d", n), func(b *testing.B) {
			runN(b, n, func() (func() error, func()) {
				cl, err := dialOVH(addr, "bench")
				if err != nil {
					b.Fatal(err)
				}
				return func() error {
					_, err := cl.Sign(k.rsaPriv).WithCryptographicParameters(params).Data(signMsg).Exec()
					return err
				}, func() { cl.Close() }
			})
		})
		b.Run(fmt.Sprintf("pkcs11/c%d", n), func(b *testing.B) {
			runN(b, n, func() (func() error, func()) {
				c, sh, h, done := p11Session(b, k.rsaTag, pkcs11.CKO_PRIVATE_KEY)
				m := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_RSA_PKCS, nil)}
				return func() error {
					if err := c.SignInit(sh, m, h); err != nil {
						return err
					}
					_, err := c.Sign(sh, signMsg)
					return err
				}, done
			})
		})
	}
}

func BenchmarkKMIPEncryptGCM32(b *testing.B) {
	benchSetup(b)
	addr := benchServer(b)
	k := &benchKeys
	pt := make([]byte, 32)
	// One encryption checked end to end: 32 bytes out, a 16-byte tag and the server's 12-byte IV.
	r := dialRawKMIP(b, addr, "bench", k.encryptReq)
	out, err := r.do()
	if err != nil {
		b.Fatal(err)
	}
	var er encryptResponse
	if err := decodeStruct(ok(b, mustDecodeResponse(b, out).Items[0]), &er); err != nil {
		b.Fatal(err)
	}
	if len(er.Data) != 32 || len(er.Tag) != 16 || len(er.IV) != 12 {
		b.Fatalf("GCM output: %d bytes, tag %d, IV %d", len(er.Data), len(er.Tag), len(er.IV))
	}
	r.c.Close()
	gcm := kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM}
	for _, n := range []int{1, 8} {
		b.Run(fmt.Sprintf("kmip/c%d", n), func(b *testing.B) {
			runN(b, n, func() (func() error, func()) {
				r := dialRawKMIP(b, addr, "bench", k.encryptReq)
				return func() error { _, err := r.do(); return err }, func() { r.c.Close() }
			})
		})
		b.Run(fmt.Sprintf("kmip-ovh/c%d", n), func(b *testing.B) {
			runN(b, n, func() (func() error, func()) {
				cl, err := dialOVH(addr, "bench")
				if err != nil {
					b.Fatal(err)
				}
				return func() error {
					_, err := cl.Encrypt(k.aes).WithCryptographicParameters(gcm).Data(pt).Exec()
					return err
				}, func() { cl.Close() }
			})
		})
		if n == 1 {
			b.Run("pykmip-server/c1", func(b *testing.B) {
				addr, req := pykmipServer(b)
				cpu := func() time.Duration { return cpuTime() + procCPU(pykmipRef.pid) }
				runNWith(b, n, cpu, func() (func() error, func()) {
					r := dialRawKMIP(b, addr, "bench", req)
					return func() error { _, err := r.do(); return err }, func() { r.c.Close() }
				})
			})
		}
		b.Run(fmt.Sprintf("pkcs11/c%d", n), func(b *testing.B) {
			runN(b, n, func() (func() error, func()) {
				c, sh, h, done := p11Session(b, k.aesTag, pkcs11.CKO_SECRET_KEY)
				iv := make([]byte, 12)
				return func() error {
					params := pkcs11.NewGCMParams(iv, nil, 128)
					defer params.Free()
					if err := c.EncryptInit(sh, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_GCM, params)}, h); err != nil {
						return err
					}
					_, err := c.Encrypt(sh, pt)
					return err
				}, done
			})
		})
	}
}

// pykmipRef is PyKMIP's own server (Debian python3-pykmip), started once per process.
var pykmipRef struct {
	once sync.Once
	addr string
	req  []byte // Encrypt of 32 bytes with its AES-256 key, GCM, KMIP 1.4
	pid  int
	skip string
	err  error
}

// pykmipServer returns the address of a pykmip-server with mutual TLS (a server certificate from
// the test CA, the same client identity) and its SQLite database in a temporary directory, and
// the Encrypt request to send it. The benchmark is skipped when pykmip-server is not installed.
func pykmipServer(b *testing.B) (string, []byte) {
	b.Helper()
	pykmipRef.once.Do(func() { pykmipRef.skip, pykmipRef.err = startPyKMIP() })
	if pykmipRef.skip != "" {
		b.Skip(pykmipRef.skip)
	}
	if pykmipRef.err != nil {
		b.Fatal(pykmipRef.err)
	}
	return pykmipRef.addr, pykmipRef.req
}

func startPyKMIP() (skip string, err error) {
	bin, err := exec.LookPath("pykmip-server")
	if err != nil {
		return "pykmip-server is not installed (Debian python3-pykmip)", nil
	}
	dir := filepath.Join(env.dir, "pykmip-server")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	c, key, err := env.ca.Issue("127.0.0.1", []string{"127.0.0.1"}, pki.Server)
	if err != nil {
		return "", err
	}
	crt, keyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := pki.WriteFiles(c, key, crt, keyFile); err != nil {
		return "", err
	}
	// A free port: pykmip-server takes a number, not a listener.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	// Its defaults: TLS 1.2 suite, client certificates required, log level INFO.
	conf := fmt.Sprintf("[server]\nhostname=127.0.0.1\nport=%s\ncertificate_path=%s\nkey_path=%s\nca_path=%s\n"+
		"auth_suite=TLS1.2\nenable_tls_client_auth=True\nlogging_level=INFO\ndatabase_path=%s\n",
		port, crt, keyFile, env.caFile, filepath.Join(dir, "pykmip.db"))
	confFile := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		return "", err
	}
	cmd := exec.Command(bin, "-f", confFile, "-l", filepath.Join(dir, "server.log"))
	cmd.Dir = dir
	// Its own process group: it forks a policy-directory monitor, which must end with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopPyKMIP = func() {
		// SIGTERM lets it stop its monitor; the group is killed if it has not exited in time.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // a monitor left behind
	}
	// It takes a second or two to import and bind.
	var conn *tls.Conn
	for deadline := time.Now().Add(30 * time.Second); ; {
		select {
		case err := <-exited:
			exited <- err
			return "", fmt.Errorf("pykmip-server exited: %v (log in %s)", err, dir)
		default:
		}
		if conn, err = tls.Dial("tcp", addr, clientTLS("bench")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("pykmip-server does not answer on %s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer conn.Close()
	// The key, made and activated over KMIP as the benchmark's identity (its owner there). KMIP
	// 1.4, because PyKMIP leaves the GCM tag out of older versions' responses.
	create := newStruct(0, newEnum(kmip14.TagObjectType, uint32(kmip14.ObjectTypeSymmetricKey)), newStruct(kmip14.TagTemplateAttribute,
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Algorithm", Value: newEnum(kmip14.TagAttributeValue, uint32(kmip14.CryptographicAlgorithmAES))}),
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Length", Value: newInt(kmip14.TagAttributeValue, 256)}),
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Usage Mask", Value: &node{Tag: kmip14.TagAttributeValue, Type: tInt, Raw: newInt(0, 12).Raw}})))
	r := &rawKMIP{c: conn, req: request(v14, kmip14.OperationCreate, create).encode(), buf: make([]byte, 4096)}
	out, err := r.do()
	if err != nil {
		return "", fmt.Errorf("pykmip-server Create: %v", err)
	}
	var cr createResponse
	if err := decodeStruct(mustPayload(out), &cr); err != nil || cr.UID == "" {
		return "", fmt.Errorf("pykmip-server Create response: %v", err)
	}
	r.req = request(v14, kmip14.OperationActivate, newStruct(0, newText(kmip14.TagUniqueIdentifier, cr.UID))).encode()
	if _, err := r.do(); err != nil {
		return "", fmt.Errorf("pykmip-server Activate: %v", err)
	}
	// PyKMIP wants the algorithm and tag length spelled out, and would draw a 16-byte IV: the
	// request carries a 12-byte one, as the pkcs11 reference uses.
	r.req = request(v14, kmip14.OperationEncrypt, newStruct(0, newText(kmip14.TagUniqueIdentifier, cr.UID),
		encodeStruct(kmip14.TagCryptographicParameters, cryptoParams{
			BlockCipherMode:        ptr(uint32(kmip14.BlockCipherModeGCM)),
			CryptographicAlgorithm: ptr(uint32(kmip14.CryptographicAlgorithmAES)),
			TagLength:              ptr(int32(16)),
		}),
		newBytes(kmip14.TagData, make([]byte, 32)),
		newBytes(kmip14.TagIVCounterNonce, make([]byte, 12)))).encode()
	if out, err = r.do(); err != nil {
		return "", fmt.Errorf("pykmip-server Encrypt: %v", err)
	}
	var er encryptResponse
	if err := decodeStruct(mustPayload(out), &er); err != nil || len(er.Data) != 32 || len(er.Tag) != 16 {
		return "", fmt.Errorf("pykmip-server Encrypt response: %d bytes, tag %d (%v)", len(er.Data), len(er.Tag), err)
	}
	pykmipRef.addr, pykmipRef.req, pykmipRef.pid = addr, r.req, cmd.Process.Pid
	return "", nil
}

// procCPU is the user and system time of another process, from /proc (in clock ticks of 10 ms:
// USER_HZ is 100 on Linux), so that a reference server's CPU counts in cpu-ns/op as ours does.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may hold spaces: state is
	// field 3, utime and stime fields 14 and 15.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	var ut, st int64
	fmt.Sscan(f[11], &ut)
	fmt.Sscan(f[12], &st)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// stopPyKMIP ends the pykmip-server this process started, if any (runTests calls it).
var stopPyKMIP = func() {}

// mustPayload returns the payload of the single item of a successful response (do checked it).
func mustPayload(out []byte) *node {
	n, err := parseNode(out)
	if err != nil {
		return nil
	}
	resp, err := decodeResponse(n)
	if err != nil || len(resp.Items) != 1 {
		return nil
	}
	p, _ := resp.Items[0].Payload.(*node)
	return p
}

// BenchmarkEncryptMessage measures one AES-GCM Encrypt request through parser, dispatcher and
// handler on the real token (no TLS): the front end's share of a KMIP round trip.
func BenchmarkEncryptMessage(b *testing.B) {
	r := newRaw(b, "raw")
	create := newStruct(0, newEnum(kmip14.TagObjectType, uint32(kmip14.ObjectTypeSymmetricKey)), newStruct(kmip14.TagTemplateAttribute,
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Algorithm", Value: newEnum(kmip14.TagAttributeValue, uint32(kmip14.CryptographicAlgorithmAES))}),
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Length", Value: newInt(kmip14.TagAttributeValue, 256)}),
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Cryptographic Usage Mask", Value: &node{Tag: kmip14.TagAttributeValue, Type: tInt, Raw: newInt(0, 12).Raw}}),
		encodeStruct(kmip14.TagAttribute, attr1{Name: "Activation Date", Value: newDateTime(kmip14.TagAttributeValue, nowMinus(60))})))
	var cr createResponse
	_ = decodeStruct(ok(b, r.call(v14, kmip14.OperationCreate, create)), &cr)
	msg := gcmEncryptRequest(cr.UID)
	id := env.clients["raw"].identity
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		env.srv.handleMessage(context.Background(), id, msg)
	}
}
