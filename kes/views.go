package kes

import (
	"slices"
	"strings"
	"time"

	"github.com/p11bridge/p11bridge/keymap"
)

// The policy and identity routes are read-only views of the server's configuration: policies are
// configured in HCL, not created through the API.

func (h *Handler) policy(name string) (Policy, bool) {
	for _, p := range h.auth.Policies() {
		if p.Name == name {
			return p, true
		}
	}
	return Policy{}, false
}

// policyArg finds the policy a policy route names, answering the request when it cannot.
func (h *Handler) policyArg(c *call) (Policy, bool) {
	name, ok := c.nameArg("policy")
	if !ok {
		return Policy{}, false
	}
	p, ok := h.policy(name)
	if !ok {
		writeError(c.w, errPolicyNotFound)
	}
	return p, ok
}

func (h *Handler) describePolicy(c *call) {
	p, ok := h.policyArg(c)
	if !ok {
		return
	}
	c.reply(struct {
		Name      string    `json:"name"`
		CreatedAt time.Time `json:"created_at"`
		CreatedBy string    `json:"created_by"`
	}{p.Name, h.createdAt(p.CreatedAt), p.CreatedBy})
}

// createdAt falls back to the handler's start for policies the config gives no time.
func (h *Handler) createdAt(t time.Time) time.Time {
	if t.IsZero() {
		return h.started.UTC()
	}
	return t.UTC()
}

// ruleSet is KES's JSON shape of allow and deny lists: an object whose keys are the patterns.
func ruleSet(patterns []string) map[string]struct{} {
	out := make(map[string]struct{}, len(patterns))
	for _, p := range patterns {
		out[p] = struct{}{}
	}
	return out
}

func (h *Handler) readPolicy(c *call) {
	p, ok := h.policyArg(c)
	if !ok {
		return
	}
	c.reply(struct {
		Name      string              `json:"name"`
		Allow     map[string]struct{} `json:"allow"`
		Deny      map[string]struct{} `json:"deny"`
		CreatedAt time.Time           `json:"created_at"`
		CreatedBy string              `json:"created_by"`
	}{p.Name, ruleSet(p.Allow), ruleSet(p.Deny), h.createdAt(p.CreatedAt), p.CreatedBy})
}

// listNames filters, sorts and pages names for the key, policy and identity lists. Only the page
// (and the name after it, which continue_at names) is sorted: a list of 100,000 keys orders 1,025
// names per page, not all of them.
func listNames(all []string, p listPattern) (names []string, next string) {
	names = []string{}
	for _, n := range all {
		if p.match(n) {
			names = append(names, n)
		}
	}
	// A name given twice is listed once: when duplicates shrink the page, take more.
	for k := pageSize + 1; ; {
		pg := slices.Compact(slices.Clone(keymap.Page(names, 0, k, strings.Compare)))
		if len(pg) > pageSize || k >= len(names) {
			names = pg
			break
		}
		k += pageSize + 1 - len(pg)
	}
	if len(names) > pageSize {
		next = p.continueToken(names[pageSize])
		names = names[:pageSize]
	}
	if names == nil {
		names = []string{}
	}
	return names, next
}

func (h *Handler) listPolicies(c *call) {
	p, ok := parseListPattern(c.arg)
	if !ok {
		writeError(c.w, badPattern(c.arg))
		return
	}
	var all []string
	for _, pol := range h.auth.Policies() {
		all = append(all, pol.Name)
	}
	names, next := listNames(all, p)
	c.reply(struct {
		Names      []string `json:"names"`
		ContinueAt string   `json:"continue_at"`
	}{names, next})
}

func (h *Handler) describeIdentity(c *call) {
	// The lowercase hex SHA-256 KES identities are, or any name KES would accept.
	id, ok := c.nameArg("identity")
	if !ok {
		return
	}
	type identityJSON struct {
		Policy    string    `json:"policy,omitempty"`
		IsAdmin   bool      `json:"admin,omitempty"`
		CreatedAt time.Time `json:"created_at"`
		CreatedBy string    `json:"created_by,omitempty"`
	}
	if h.auth.IsAdmin(id) {
		c.reply(identityJSON{IsAdmin: true, CreatedAt: h.started.UTC()})
		return
	}
	name, ok := h.auth.PolicyOf(id)
	if !ok {
		writeError(c.w, errIdentityNotFound)
		return
	}
	c.reply(identityJSON{Policy: name, CreatedAt: h.started.UTC()})
}

func (h *Handler) listIdentities(c *call) {
	p, ok := parseListPattern(c.arg)
	if !ok {
		writeError(c.w, badPattern(c.arg))
		return
	}
	ids, next := listNames(h.auth.Identities(), p)
	c.reply(struct {
		Identities []string `json:"identities"`
		ContinueAt string   `json:"continue_at"`
	}{ids, next})
}

// selfDescribe answers any identified client about itself, policy included (KES lets every client
// with a certificate ask this). The fields are flat, as kms-go v0.3.1 reads them.
func (h *Handler) selfDescribe(c *call) {
	type selfJSON struct {
		Identity  string              `json:"identity"`
		IsAdmin   bool                `json:"admin,omitempty"`
		CreatedAt time.Time           `json:"created_at"`
		Policy    string              `json:"policy,omitempty"`
		Allow     map[string]struct{} `json:"allow,omitempty"`
		Deny      map[string]struct{} `json:"deny,omitempty"`
	}
	out := selfJSON{Identity: c.identity, CreatedAt: h.started.UTC()}
	if h.auth.IsAdmin(c.identity) {
		out.IsAdmin = true
		c.reply(out)
		return
	}
	name, ok := h.auth.PolicyOf(c.identity)
	if !ok {
		writeError(c.w, errIdentityNotFound)
		return
	}
	out.Policy = name
	if p, ok := h.policy(name); ok {
		out.Allow, out.Deny = ruleSet(p.Allow), ruleSet(p.Deny)
	}
	c.reply(out)
}
