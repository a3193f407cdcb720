package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/encrypt"
)

// minioVersion is the MinIO release the end-to-end test runs (built from the Go module proxy and
// cached across runs in $XDG_CACHE_HOME/p11bridge or ~/.cache/p11bridge).
const minioVersion = "v0.0.0-20260212201848-7aac2a2c5b7c"

func minioBinary(t *testing.T) string {
	return cachedTool(t, "minio", "github.com/minio/minio", minioVersion)
}

// cachedTool builds a program from the Go module proxy once into the user's cache
// ($XDG_CACHE_HOME/p11bridge or ~/.cache/p11bridge) and returns its path.
func cachedTool(t *testing.T, name, module, version string) string {
	t.Helper()
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache")
	}
	dir := filepath.Join(cache, "p11bridge", name+"-"+version)
	bin := filepath.Join(dir, name)
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	t.Logf("building %s %s into %s (once; takes a few minutes)", name, version, dir)
	cmd := exec.Command("go", "install", module+"@"+version)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-buildvcs=false", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", name, err, out)
	}
	return bin
}

type minioProc struct {
	*proc
	addr string
}

// startMinIO runs MinIO on data with the KES settings of env (dev mode's minio.env).
func startMinIO(t *testing.T, bin, data string, env map[string]string) *minioProc {
	t.Helper()
	addr, console := freeAddr(t), freeAddr(t)
	vars := []string{"MINIO_ROOT_USER=p11bridge", "MINIO_ROOT_PASSWORD=p11bridge-test-secret", "MINIO_BROWSER=off",
		"MINIO_UPDATE=off", "MINIO_CI_CD=1"}
	for k, v := range env {
		vars = append(vars, k+"="+v)
	}
	p := &proc{cmd: exec.Command(bin, "server", data, "--address", addr, "--console-address", console, "--quiet"), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), vars...)
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() { p.stop(t) })
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-p.done:
			t.Fatalf("MinIO exited: %v\n%s", p.cmd.ProcessState, p.Output())
		default:
		}
		resp, err := http.Get("http://" + addr + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return &minioProc{p, addr}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("MinIO not ready after 60 s\n%s", p.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestMinIOWithDevMode: a real MinIO, configured with dev mode's minio.env, encrypts objects with
// keys that live in the SoftHSM2 token, creates its default key at first start, and reads its
// objects back after a restart.
func TestMinIOWithDevMode(t *testing.T) {
	bin := minioBinary(t)
	dir := t.TempDir()
	devDir := filepath.Join(dir, "dev")
	kmip, kesAddr, ops := freeAddr(t), freeAddr(t), freeAddr(t)
	bridge := start(t, nil, "dev", "--dir", devDir, "--kmip", kmip, "--kes", kesAddr, "--ops", ops)
	waitReady(t, bridge, ops)
	env := readEnvFile(t, filepath.Join(devDir, "minio.env"))
	data := filepath.Join(dir, "minio-data")

	m := startMinIO(t, bin, data, env)
	client, err := minio.New(m.addr, &minio.Options{Creds: credentials.NewStaticV4("p11bridge", "p11bridge-test-secret", "")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := client.MakeBucket(ctx, "bucket", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	kms, err := encrypt.NewSSEKMS(env["MINIO_KMS_KES_KEY_NAME"], map[string]string{"purpose": "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	objects := map[string]encrypt.ServerSide{"sse-kms": kms, "sse-s3": encrypt.NewSSE()}
	payload := map[string][]byte{}
	for name, sse := range objects {
		b := make([]byte, 1<<20)
		rand.Read(b)
		payload[name] = b
		if _, err := client.PutObject(ctx, "bucket", name, bytes.NewReader(b), int64(len(b)), minio.PutObjectOptions{ServerSideEncryption: sse}); err != nil {
			t.Fatalf("PUT %s: %v\n%s", name, err, m.Output())
		}
	}
	readBack := func(when string) {
		for name := range objects {
			obj, err := client.GetObject(ctx, "bucket", name, minio.GetObjectOptions{})
			if err != nil {
				t.Fatalf("%s: GET %s: %v", when, name, err)
			}
			got, err := io.ReadAll(obj)
			obj.Close()
			if err != nil || !bytes.Equal(got, payload[name]) {
				t.Fatalf("%s: GET %s: %d bytes, equal %v, %v", when, name, len(got), bytes.Equal(got, payload[name]), err)
			}
			st, err := client.StatObject(ctx, "bucket", name, minio.StatObjectOptions{})
			if err != nil || st.Metadata.Get("X-Amz-Server-Side-Encryption") == "" {
				t.Fatalf("%s: %s is not reported as encrypted: %v %v", when, name, st.Metadata, err)
			}
		}
	}
	readBack("first start")

	unknown, _ := encrypt.NewSSEKMS("no-such-key", nil)
	_, err = client.PutObject(ctx, "bucket", "unknown-key", bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{ServerSideEncryption: unknown})
	if err == nil || !strings.Contains(err.Error(), "key with given key ID does not exist") {
		t.Fatalf("PUT with an unknown key: %v", err)
	}

	m.stop(t)
	m = startMinIO(t, bin, data, env)
	client, _ = minio.New(m.addr, &minio.Options{Creds: credentials.NewStaticV4("p11bridge", "p11bridge-test-secret", "")})
	readBack("after a MinIO restart")

	// The default key MinIO created is a key in the token, visible in the bridge's status.
	resp, err := http.Get("http://" + ops + "/status")
	if err != nil {
		t.Fatal(err)
	}
	status, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(status), `"active"`) {
		t.Fatalf("no active key on the signer after MinIO's start: %s", status)
	}
	audit, _ := os.ReadFile(filepath.Join(devDir, "audit.log"))
	for _, want := range []string{"generate", "decrypt", env["MINIO_KMS_KES_KEY_NAME"]} {
		if !strings.Contains(string(audit), want) {
			t.Errorf("audit log does not mention %q", want)
		}
	}
	fmt.Fprintln(io.Discard, bridge.Output())
}
