package conf

import (
	"fmt"
	"strings"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// kmipOps are the KMIP 1.4 operation names a policy may list, plus
// "*" for all of them.
var kmipOps = []string{
	"Create", "CreateKeyPair", "Register", "ReKey", "DeriveKey", "Certify", "ReCertify", "Locate", "Check",
	"Get", "GetAttributes", "GetAttributeList", "AddAttribute", "ModifyAttribute", "DeleteAttribute",
	"ObtainLease", "GetUsageAllocation", "Activate", "Revoke", "Destroy", "Archive", "Recover", "Validate",
	"Query", "Cancel", "Poll", "Notify", "Put", "ReKeyKeyPair", "DiscoverVersions", "Encrypt", "Decrypt",
	"Sign", "SignatureVerify", "MAC", "MACVerify", "RNGRetrieve", "RNGSeed", "Hash", "CreateSplitKey",
	"JoinSplitKey", "Import", "Export", "SetAttribute", "*",
}

func (d *decoder) policies(blocks []*hclsyntax.Block, cfg *Config) {
	seen := map[string]hcl.Pos{}
	owner := map[string]string{} // identity → policy
	for _, b := range blocks {
		name, ok := d.named(b)
		if !ok && name == "" {
			continue
		}
		if first, dup := seen[name]; dup {
			d.add(b.LabelRanges[0].Start, fmt.Sprintf("duplicate policy %q", name),
				fmt.Sprintf("the first is at %s; merge them or rename one", d.pos(first)))
		} else {
			seen[name] = b.LabelRanges[0].Start
		}
		in := fmt.Sprintf(" in policy %q", name)
		c := d.content(b.Body, in, policyAttrs, nil, "")
		p := Policy{Name: name}
		p.Allow = d.patterns(c.attrs["allow"], in, d.kesPattern)
		p.Deny = d.patterns(c.attrs["deny"], in, d.kesPattern)
		p.KMIP = d.patterns(c.attrs["kmip"], in, d.kmipOp)
		p.Keys = d.patterns(c.attrs["keys"], in, d.keyPattern)
		if a := c.attrs["sha1"]; a != nil {
			p.SHA1, _ = d.boolean(a)
		}
		if a := c.attrs["client_iv_shared_keys"]; a != nil {
			p.ClientIVSharedKeys, _ = d.boolean(a)
		}
		if a := c.attrs["max_objects"]; a != nil {
			if n, ok := d.integer(a, 1, 1_000_000_000); ok {
				p.MaxObjects = int(n)
			}
		}
		if a := c.attrs["max_attribute_bytes"]; a != nil {
			if n, ok := d.size(a, 1024, 1<<40); ok {
				p.MaxAttributeBytes = n
			}
		}
		if a := c.attrs["export"]; a != nil {
			p.Export, _ = d.boolean(a)
		}
		p.Identities = d.patterns(c.attrs["identities"], in, func(it item, in string) bool {
			if !d.identity(it.s, it.at, "identity", in) {
				return false
			}
			// As in KES, an identity has one policy; the server looks
			// policies up by identity, so a second one would be ignored.
			if other, dup := owner[it.s]; dup && other != name {
				d.add(it.at, fmt.Sprintf("identity %q%s is already in policy %q", it.s, in, other),
					"an identity belongs to one policy; merge the policies or remove it from one")
				return false
			}
			owner[it.s] = name
			return true
		})
		cfg.Policies = append(cfg.Policies, p)
	}
}

// patterns reads a string list, keeping the entries check accepts. An empty
// list comes back nil.
func (d *decoder) patterns(a *attr, in string, check func(item, string) bool) []string {
	if a == nil {
		return nil
	}
	items, _ := d.list(a)
	var out []string
	for _, it := range items {
		if check(it, in) {
			out = append(out, it.s)
		}
	}
	return out
}

// kesPattern: a KES API path, matched exactly or, with a trailing '*', as a
// prefix. A '*' elsewhere would suggest glob matching that does not happen.
func (d *decoder) kesPattern(it item, in string) bool {
	switch {
	case !strings.HasPrefix(it.s, "/"):
		d.add(it.at, fmt.Sprintf("bad KES path pattern %q%s", it.s, in), `patterns are API paths starting with "/", e.g. "/v1/key/generate/*"`)
	case strings.Contains(strings.TrimSuffix(it.s, "*"), "*"):
		d.add(it.at, fmt.Sprintf("bad KES path pattern %q%s", it.s, in), `'*' may only end a pattern, e.g. "/v1/key/generate/*"`)
	default:
		return true
	}
	return false
}

func (d *decoder) keyPattern(it item, in string) bool {
	switch {
	case it.s == "":
		d.add(it.at, "empty key pattern"+in, `write a key name, or a prefix ending in '*', e.g. "minio-*"`)
	case strings.Contains(strings.TrimSuffix(it.s, "*"), "*"):
		d.add(it.at, fmt.Sprintf("bad key pattern %q%s", it.s, in), `'*' may only end a pattern, e.g. "minio-*"`)
	default:
		return true
	}
	return false
}

func (d *decoder) kmipOp(it item, in string) bool {
	if contains(kmipOps, it.s) {
		return true
	}
	detail := `use KMIP 1.4 operation names such as "Create", "Get", "Encrypt", or "*" for all`
	if s := suggest(it.s, kmipOps); s != "" {
		detail = fmt.Sprintf("did you mean %q?", s)
	}
	d.add(it.at, fmt.Sprintf("unknown KMIP operation %q%s", it.s, in), detail)
	return false
}

// identity checks the form KES uses: lowercase hex SHA-256 of the client
// certificate's SubjectPublicKeyInfo. Comparisons elsewhere are exact, so
// uppercase would silently never match.
func (d *decoder) identity(s string, at hcl.Pos, what, in string) bool {
	if isIdentity(s) {
		return true
	}
	d.add(at, fmt.Sprintf("bad %s %q%s", what, s, in), identityDetail(s))
	return false
}

// identityDetail says what is wrong with a string that is not an identity.
func identityDetail(s string) string {
	if isIdentity(strings.ToLower(s)) {
		return "write it in lowercase"
	}
	return "an identity is 64 lowercase hex digits, the SHA-256 of the client certificate's public key, as `p11bridge identity` prints it"
}

func isIdentity(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
