package kes

import (
	"net/http"
	"strings"
	"time"
)

// authMode says what a route demands of the client.
type authMode int

const (
	authNone     authMode = iota // /version: anyone
	authIdentify                 // /v1/identity/self/describe: any identified client
	authPolicy                   // everything else: identified and allowed by policy
)

// route is one KES API route. Paths ending in '/' take an argument (a name or list pattern).
type route struct {
	method   string // as /v1/api shows it; PUT routes also accept POST (kms-go sends POST)
	path     string
	body     bool // whether it reads a request body (limited to Options.MaxBody)
	timeout  time.Duration
	auth     authMode
	op       string // short name for metrics and audit, e.g. "key/generate"
	auditMsg string // "kes " + op, the audit record's message
	keyOp    bool   // audited as a key operation
	serve    func(*Handler, *call)
}

func (ro *route) prefix() bool { return strings.HasSuffix(ro.path, "/") }

// routeTable lists the 22 routes of KES v0.24 with its methods and timeouts.
func routeTable() []*route {
	const t10, t15 = 10 * time.Second, 15 * time.Second
	get, put, del := http.MethodGet, http.MethodPut, http.MethodDelete
	return []*route{
		{method: get, path: "/version", timeout: t10, auth: authNone, op: "version", serve: (*Handler).version},
		{method: get, path: "/v1/status", timeout: t15, auth: authPolicy, op: "status", serve: (*Handler).status},
		{method: get, path: "/v1/ready", timeout: t15, auth: authPolicy, op: "ready", serve: (*Handler).ready},
		{method: get, path: "/v1/metrics", timeout: t15, auth: authPolicy, op: "metrics", serve: (*Handler).serveMetrics},
		{method: get, path: "/v1/api", timeout: t10, auth: authPolicy, op: "api", serve: (*Handler).listAPI},

		{method: put, path: "/v1/key/create/", timeout: t15, auth: authPolicy, op: "key/create", keyOp: true, serve: (*Handler).createKey},
		{method: put, path: "/v1/key/import/", body: true, timeout: t15, auth: authPolicy, op: "key/import", keyOp: true, serve: (*Handler).importKey},
		{method: get, path: "/v1/key/describe/", timeout: t15, auth: authPolicy, op: "key/describe", keyOp: true, serve: (*Handler).describeKey},
		{method: del, path: "/v1/key/delete/", timeout: t15, auth: authPolicy, op: "key/delete", keyOp: true, serve: (*Handler).deleteKey},
		{method: get, path: "/v1/key/list/", timeout: t15, auth: authPolicy, op: "key/list", keyOp: true, serve: (*Handler).listKeys},
		{method: put, path: "/v1/key/generate/", body: true, timeout: t15, auth: authPolicy, op: "key/generate", keyOp: true, serve: (*Handler).generateKey},
		{method: put, path: "/v1/key/encrypt/", body: true, timeout: t15, auth: authPolicy, op: "key/encrypt", keyOp: true, serve: (*Handler).encryptKey},
		{method: put, path: "/v1/key/decrypt/", body: true, timeout: t15, auth: authPolicy, op: "key/decrypt", keyOp: true, serve: (*Handler).decryptKey},
		{method: put, path: "/v1/key/hmac/", body: true, timeout: t15, auth: authPolicy, op: "key/hmac", keyOp: true, serve: (*Handler).hmacKey},

		{method: get, path: "/v1/policy/describe/", timeout: t15, auth: authPolicy, op: "policy/describe", serve: (*Handler).describePolicy},
		{method: get, path: "/v1/policy/read/", timeout: t15, auth: authPolicy, op: "policy/read", serve: (*Handler).readPolicy},
		{method: get, path: "/v1/policy/list/", timeout: t15, auth: authPolicy, op: "policy/list", serve: (*Handler).listPolicies},

		{method: get, path: "/v1/identity/describe/", timeout: t15, auth: authPolicy, op: "identity/describe", serve: (*Handler).describeIdentity},
		{method: get, path: "/v1/identity/list/", timeout: t15, auth: authPolicy, op: "identity/list", serve: (*Handler).listIdentities},
		{method: get, path: "/v1/identity/self/describe", timeout: t15, auth: authIdentify, op: "identity/self/describe", serve: (*Handler).selfDescribe},

		{method: get, path: "/v1/log/error", auth: authPolicy, op: "log/error", serve: (*Handler).errorLog},
		{method: get, path: "/v1/log/audit", auth: authPolicy, op: "log/audit", serve: (*Handler).auditLog},
	}
}

// router finds routes by path: exact paths by map, argument routes by their prefix.
type router struct {
	all    []*route
	exact  map[string]*route
	prefix map[string]*route // keyed by path without the trailing '/'
}

func newRouter(routes []*route) *router {
	rt := &router{all: routes, exact: map[string]*route{}, prefix: map[string]*route{}}
	for _, ro := range routes {
		ro.auditMsg = "kes " + ro.op
		if ro.prefix() {
			rt.prefix[strings.TrimSuffix(ro.path, "/")] = ro
		} else {
			rt.exact[ro.path] = ro
		}
	}
	return rt
}

// match returns the route of p and its argument. redirect is set when p names an argument route
// without its trailing slash: KES (a ServeMux) answers that with 301 to the slashed path, and
// MinIO relies on it for "/v1/key/list".
func (rt *router) match(p string) (ro *route, arg string, redirect bool) {
	if ro := rt.exact[p]; ro != nil {
		return ro, "", false
	}
	if ro := rt.prefix[p]; ro != nil {
		return ro, "", true
	}
	// The argument is everything after the route's path. The common case, an argument without
	// '/', is found by cutting at the last '/'.
	i := strings.LastIndexByte(p, '/')
	if i <= 0 {
		return nil, "", false
	}
	if ro := rt.prefix[p[:i]]; ro != nil {
		return ro, p[i+1:], false
	}
	// An argument holding '/' (e.g. an escaped "%2F") still belongs to its route; the name check
	// refuses it there with a clear 400 instead of a 404. Route paths are no prefix of each other,
	// so at most one matches and the map's order does not matter.
	for base, ro := range rt.prefix {
		if rest, ok := strings.CutPrefix(p, base+"/"); ok {
			return ro, rest, false
		}
	}
	return nil, "", false
}
