package server

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/p11bridge/p11bridge/server/pki"
	"github.com/p11bridge/p11bridge/signer/softhsm"
)

// DevOptions are the flags of `p11bridge dev`.
type DevOptions struct {
	Dir            string
	KMIP, KES, Ops string
}

// DevSetup is what PrepareDev made or found.
type DevSetup struct {
	Dir, Config    string
	Token          *softhsm.Token
	AdminIdentity  string
	PyKMIPIdentity string
	MinIOIdentity  string
	MinIOKeyName   string
}

// DevTokenLabel is the label of dev mode's SoftHSM2 token.
const DevTokenLabel = "p11bridge-dev"

// minioPolicy is what MinIO needs of the KES API (see the project's notes on MinIO).
var minioPolicy = []string{
	"/v1/key/create/*", "/v1/key/generate/*", "/v1/key/decrypt/*", "/v1/key/list/*", "/v1/key/describe/*",
	"/v1/key/hmac/*", "/v1/status", "/v1/api", "/v1/metrics", "/version",
}

// PrepareDev creates, or reuses, everything dev mode runs on in opts.Dir: a SoftHSM2 token with a
// random PIN (0600 file), a CA, a server certificate for 127.0.0.1 and localhost, an admin client
// certificate, a MinIO API key with its policy, the config file, and files for PyKMIP and MinIO.
// It points SOFTHSM2_CONF of this process at the dev token's configuration.
func PrepareDev(opts DevOptions) (*DevSetup, error) {
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	tlsDir := filepath.Join(dir, "tls")
	if err := os.MkdirAll(tlsDir, 0o700); err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	tok, err := softhsm.Ensure(filepath.Join(dir, "softhsm"), DevTokenLabel)
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	if err := os.Setenv("SOFTHSM2_CONF", tok.Conf); err != nil {
		return nil, err
	}
	f := func(name string) string { return filepath.Join(tlsDir, name) }
	ca, err := devCA(f("ca.pem"), f("ca-key.pem"))
	if err != nil {
		return nil, err
	}
	if !exists(f("server.pem")) || !exists(f("server-key.pem")) {
		c, k, err := ca.Issue("p11bridge dev server", []string{"127.0.0.1", "localhost", "::1"}, pki.Server)
		if err != nil {
			return nil, fmt.Errorf("dev: server certificate: %w", err)
		}
		if err := pki.WriteFiles(c, k, f("server.pem"), f("server-key.pem")); err != nil {
			return nil, fmt.Errorf("dev: %w", err)
		}
	}
	if !exists(f("admin.pem")) || !exists(f("admin-key.pem")) {
		c, k, err := ca.Issue("p11bridge dev admin", nil, pki.Client)
		if err != nil {
			return nil, fmt.Errorf("dev: admin certificate: %w", err)
		}
		if err := pki.WriteFiles(c, k, f("admin.pem"), f("admin-key.pem")); err != nil {
			return nil, fmt.Errorf("dev: %w", err)
		}
	}
	admin, err := pki.LoadCert(f("admin.pem"))
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	// PyKMIP gets an identity of its own, whose policy may export keys (Get of what it creates,
	// as storage and database clients do); the admin's keys stay in the token unless it asks.
	if !exists(f("pykmip.pem")) || !exists(f("pykmip-key.pem")) {
		c, k, err := ca.Issue("p11bridge dev pykmip", nil, pki.Client)
		if err != nil {
			return nil, fmt.Errorf("dev: PyKMIP client certificate: %w", err)
		}
		if err := pki.WriteFiles(c, k, f("pykmip.pem"), f("pykmip-key.pem")); err != nil {
			return nil, fmt.Errorf("dev: %w", err)
		}
	}
	pyCert, err := pki.LoadCert(f("pykmip.pem"))
	if err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	apiKeyFile := filepath.Join(dir, "minio.key")
	apiKey, err := readOrCreate(apiKeyFile, func() (string, error) {
		k, _, err := pki.APIKey()
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("dev: MinIO API key: %w", err)
	}
	minioID, err := pki.APIKeyIdentity(apiKey)
	if err != nil {
		return nil, fmt.Errorf("dev: %s: %w", apiKeyFile, err)
	}
	d := &DevSetup{Dir: dir, Config: filepath.Join(dir, "p11bridge.hcl"), Token: tok, AdminIdentity: pki.Identity(admin),
		PyKMIPIdentity: pki.Identity(pyCert), MinIOIdentity: minioID, MinIOKeyName: "minio-default-key"}
	if err := os.WriteFile(d.Config, []byte(d.config(opts)), 0o600); err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	host, port := splitHostPort(opts.KMIP, "5696")
	pykmip := fmt.Sprintf(`[client]
host=%s
port=%s
certfile=%s
keyfile=%s
ca_certs=%s
cert_reqs=CERT_REQUIRED
ssl_version=PROTOCOL_SSLv23
do_handshake_on_connect=True
suppress_ragged_eofs=True
`, host, port, f("pykmip.pem"), f("pykmip-key.pem"), f("ca.pem"))
	if err := os.WriteFile(filepath.Join(dir, "pykmip.conf"), []byte(pykmip), 0o600); err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	kesHost, kesPort := splitHostPort(opts.KES, "7373")
	minioEnv := fmt.Sprintf("MINIO_KMS_KES_ENDPOINT=https://%s\nMINIO_KMS_KES_KEY_NAME=%s\nMINIO_KMS_KES_API_KEY=%s\nMINIO_KMS_KES_CAPATH=%s\n",
		joinHostPort(kesHost, kesPort), d.MinIOKeyName, apiKey, f("ca.pem"))
	if err := os.WriteFile(filepath.Join(dir, "minio.env"), []byte(minioEnv), 0o600); err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	return d, nil
}

func (d *DevSetup) config(opts DevOptions) string {
	var b bytes.Buffer
	fmt.Fprintf(&b, `# Written by p11bridge dev at every start; edit the flags, not this file.
log_level = "info"

listen {
  kmip = %q
  kes  = %q
  ops  = %q
}

tls {
  cert      = "tls/server.pem"
  key       = "tls/server-key.pem"
  client_ca = "tls/ca.pem"
}

signer "dev" {
  module       = %q
  token_label  = %q
  pin_file     = %q
  max_sessions = 8
}
default_signer = "dev"

keymap { path = "keymap.csv" }
audit  { path = "audit.log" }

admin = %q

policy "minio" {
  allow      = [%s]
  kmip       = []
  identities = [%q]
}

# PyKMIP (pykmip.conf): every KMIP operation, and keys that may leave the token.
policy "pykmip" {
  kmip       = ["*"]
  export     = true
  identities = [%q]
}
`, opts.KMIP, opts.KES, opts.Ops, d.Token.Module, d.Token.Label, softhsm.PINFile(filepath.Dir(d.Token.Conf), d.Token.Label),
		d.AdminIdentity, quoteList(minioPolicy), d.MinIOIdentity, d.PyKMIPIdentity)
	return b.String()
}

// Instructions is what dev mode prints: how to connect PyKMIP, MinIO and the CLI.
func (d *DevSetup) Instructions(opts DevOptions) string {
	host, port := splitHostPort(opts.KMIP, "5696")
	return fmt.Sprintf(`
p11bridge dev mode — directory %[1]s
  SoftHSM2 token   %[2]q (serial %[3]s), PIN in %[4]s
  KMIP (mTLS)      %[5]s
  KES  (HTTPS)     %[6]s
  ops  (HTTP)      http://%[7]s/status  /ready  /metrics
  config           %[8]s

PyKMIP:
  /usr/bin/python3 -c 'from kmip.pie.client import ProxyKmipClient; from kmip import enums
c = ProxyKmipClient(config_file="%[1]s/pykmip.conf", config="client")
c.open(); uid = c.create(enums.CryptographicAlgorithm.AES, 256); print("created", uid); c.close()'
  (or: host %[9]s port %[10]s, certfile %[1]s/tls/pykmip.pem, keyfile %[1]s/tls/pykmip-key.pem, ca_certs %[1]s/tls/ca.pem;
   that identity may run every KMIP operation and take its keys out of the token: policy "pykmip")

MinIO:
  set -a; . %[1]s/minio.env; set +a; minio server /tmp/minio-data
  (key %[11]q is created by MinIO at its first start)

Admin client certificate: %[1]s/tls/admin.pem (identity %[12]s)
Stop with Ctrl-C; run again to reuse the same token, keys and certificates.
`, d.Dir, d.Token.Label, d.Token.Serial, softhsm.PINFile(filepath.Dir(d.Token.Conf), d.Token.Label), opts.KMIP, opts.KES, opts.Ops,
		d.Config, host, port, d.MinIOKeyName, d.AdminIdentity)
}

func devCA(certFile, keyFile string) (*pki.CA, error) {
	if exists(certFile) && exists(keyFile) {
		ca, err := pki.LoadCA(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("dev: %w", err)
		}
		return ca, nil
	}
	ca, err := pki.NewCA("p11bridge dev CA")
	if err != nil {
		return nil, fmt.Errorf("dev: CA: %w", err)
	}
	if err := pki.WriteFiles(ca.Cert, ca.Key, certFile, keyFile); err != nil {
		return nil, fmt.Errorf("dev: %w", err)
	}
	return ca, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readOrCreate(path string, make func() (string, error)) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		return strings.TrimSpace(string(b)), nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	v, err := make()
	if err != nil {
		return "", err
	}
	return v, os.WriteFile(path, []byte(v+"\n"), 0o600)
}

func quoteList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return strings.Join(q, ", ")
}

func splitHostPort(addr, defPort string) (string, string) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return addr, defPort
	}
	return strings.Trim(addr[:i], "[]"), addr[i+1:]
}

func joinHostPort(host, port string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]:" + port
	}
	return host + ":" + port
}
