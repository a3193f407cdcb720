package conf

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/function"
)

// Parse parses and validates a config. filename is used in diagnostics, and
// its directory is where relative paths are resolved. Besides src, Parse
// reads only the environment (for env()) and pin_file files.
func Parse(src []byte, filename string) (*Config, error) {
	if len(src) > maxConfigSize {
		d := newDecoder(nil, filename)
		d.add(hcl.InitialPos, "the config file is larger than 1 MiB", "is it the right file?")
		return nil, d.err()
	}
	d := newDecoder(src, filename)
	if d.limit != nil {
		d.add(d.limit.at, d.limit.summary, "no config needs this; is it the right file?")
		return nil, d.err()
	}
	f, hd := hclsyntax.ParseConfig(src, filename, hcl.InitialPos)
	if hd.HasErrors() {
		// Stop at syntax errors: a partial body would add a cascade of
		// "missing" diagnostics that are not real.
		d.hclDiags(hd, false)
		return nil, d.err()
	}
	body, ok := f.Body.(*hclsyntax.Body)
	if !ok {
		d.add(hcl.InitialPos, "internal error: unexpected HCL body type", "")
		return nil, d.err()
	}
	cfg := d.decode(body)
	if len(d.diags) > 0 {
		return nil, d.err()
	}
	return cfg, nil
}

type diag struct {
	at     hcl.Pos
	hcl    bool // text written by HCL, not by us: may quote source text
	report Diagnostic
}

type decoder struct {
	file string
	dir  string // absolute directory of the config file, for relative paths
	ctx  *hcl.EvalContext

	diags []diag
	// prod are what production mode refuses in a valid file; they become Config.production.
	prod []diag

	// Attributes that checks made after their block point at.
	keymapAttr      *attr
	keyURIAttr      *attr
	proxyIdentities *attr
	proxyItems      []item
	proxyBlock      *hclsyntax.Block

	// pinSpans are byte ranges of source following a "pin" name, and
	// secrets the words found there plus every PIN value read. They are
	// what err scrubs from the report.
	pinSpans [][2]int
	secrets  []string

	// limit is set when the source goes beyond what HCL handles safely:
	// its parser recurses without bound (a stack overflow is fatal, not a
	// panic), and turning a number like 1e9999999 into a string takes
	// minutes.
	limit *limit
}

type limit struct {
	at      hcl.Pos
	summary string
}

func newDecoder(src []byte, filename string) *decoder {
	dir := filepath.Dir(filename)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	d := &decoder{
		file: filename,
		dir:  dir,
		ctx:  &hcl.EvalContext{Functions: map[string]function.Function{"env": envFunc}},
	}
	d.scan(src, filename)
	return d
}

func (d *decoder) pos(p hcl.Pos) string {
	name := d.file
	if name == "" {
		name = "<config>"
	}
	return fmt.Sprintf("%s:%d:%d", name, p.Line, p.Column)
}

func (d *decoder) add(at hcl.Pos, summary, detail string) {
	d.diags = append(d.diags, diag{at: at, report: Diagnostic{Pos: d.pos(at), Summary: summary, Detail: detail}})
}

// withheld replaces HCL's detail for anything near a PIN: HCL details may
// quote the source, and there the source is the PIN.
const withheld = `details withheld so the PIN cannot leak; write pin = "…" or pin = env("NAME")`

// err assembles the report of the errors.
func (d *decoder) err() *Error { return &Error{Diags: d.report(d.diags)} }

// report sorts diagnostics by position and scrubs them of anything that
// could be a PIN.
func (d *decoder) report(diags []diag) []Diagnostic {
	sort.SliceStable(diags, func(i, j int) bool { return diags[i].at.Byte < diags[j].at.Byte })
	seen := map[string]bool{}
	var words []string
	for _, s := range d.secrets {
		// Very short words would mangle every message; the spans still
		// withhold them where HCL might quote them.
		if len(s) >= 4 && !seen[s] {
			seen[s] = true
			words = append(words, s)
		}
	}
	// Longest first: at one position the Replacer takes the first match in
	// argument order, so a PIN containing another candidate goes whole.
	sort.Slice(words, func(i, j int) bool { return len(words[i]) > len(words[j]) })
	pairs := make([]string, 0, 2*len(words))
	for _, w := range words {
		pairs = append(pairs, w, redacted)
	}
	scrub := strings.NewReplacer(pairs...)
	var out []Diagnostic
	for _, dg := range diags {
		r := dg.report
		if dg.hcl && d.inPinSpan(dg.at.Byte) {
			r.Detail = withheld
		}
		// Pos is left alone: it is the file name the caller gave and a
		// line, never config content.
		if len(words) > 0 {
			r.Summary = scrub.Replace(r.Summary)
			r.Detail = scrub.Replace(r.Detail)
		}
		// Messages quote what they complain about; cap them so a stray
		// megabyte-long word does not become a megabyte-long line.
		r.Summary, r.Detail = clip(r.Summary, 300), clip(r.Detail, 500)
		out = append(out, r)
	}
	return out
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func (d *decoder) inPinSpan(b int) bool {
	// Spans are in file order and do not overlap.
	i := sort.Search(len(d.pinSpans), func(i int) bool { return d.pinSpans[i][1] >= b })
	return i < len(d.pinSpans) && d.pinSpans[i][0] <= b
}

// Limits checked before parsing. Real configs nest three or four levels,
// use no operators at all and only small numbers.
const (
	maxNesting   = 64
	maxOperators = 2000
	maxNumberLit = 32  // characters
	maxExponent  = 100 // in 1e100
)

// hugeNumber says whether a number literal is beyond maxNumberLit or
// maxExponent.
func hugeNumber(lit string) bool {
	if len(lit) > maxNumberLit {
		return true
	}
	i := strings.IndexAny(lit, "eE")
	if i < 0 {
		return false
	}
	exp := strings.TrimLeft(lit[i+1:], "+-")
	n := 0
	for _, r := range exp {
		n = n*10 + int(r-'0')
		if n > maxExponent {
			return true
		}
	}
	return false
}

// scan works from tokens alone, so it works on files that do not parse. It
// finds the source after every "pin" name up to the end of its expression,
// and the words in it; and it checks nesting before the parser sees it.
func (d *decoder) scan(src []byte, filename string) {
	toks, _ := hclsyntax.LexConfig(src, filename, hcl.InitialPos)
	depth, ops := 0, 0
	for i := range toks {
		t := toks[i]
		switch t.Type {
		case hclsyntax.TokenOBrace, hclsyntax.TokenOParen, hclsyntax.TokenOQuote,
			hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl, hclsyntax.TokenOHeredoc:
			depth++
		case hclsyntax.TokenOBrack:
			depth++
			ops++ // also a[x][y]…, which nests without depth
		case hclsyntax.TokenCBrace, hclsyntax.TokenCBrack, hclsyntax.TokenCParen, hclsyntax.TokenCQuote,
			hclsyntax.TokenTemplateSeqEnd, hclsyntax.TokenCHeredoc:
			depth--
		case hclsyntax.TokenStar, hclsyntax.TokenSlash, hclsyntax.TokenPlus, hclsyntax.TokenMinus,
			hclsyntax.TokenPercent, hclsyntax.TokenEqualOp, hclsyntax.TokenNotEqual, hclsyntax.TokenLessThan,
			hclsyntax.TokenLessThanEq, hclsyntax.TokenGreaterThan, hclsyntax.TokenGreaterThanEq,
			hclsyntax.TokenAnd, hclsyntax.TokenOr, hclsyntax.TokenBang, hclsyntax.TokenQuestion,
			hclsyntax.TokenDot, hclsyntax.TokenEllipsis, hclsyntax.TokenFatArrow:
			ops++
		case hclsyntax.TokenNumberLit:
			if d.limit == nil && hugeNumber(string(t.Bytes)) {
				d.limit = &limit{t.Range.Start, "number too large"}
			}
		}
		if d.limit == nil && (depth > maxNesting || ops > maxOperators) {
			d.limit = &limit{t.Range.Start, "the config is nested too deeply"}
		}
	}
	for i := 0; i < len(toks); i++ {
		if toks[i].Type != hclsyntax.TokenIdent || (string(toks[i].Bytes) != "pin" && string(toks[i].Bytes) != "postgres") {
			continue
		}
		start, end := toks[i].Range.Start.Byte, len(src)
		depth := 0
	span:
		for i++; i < len(toks); i++ {
			t := toks[i]
			switch t.Type {
			case hclsyntax.TokenOBrace, hclsyntax.TokenOBrack, hclsyntax.TokenOParen,
				hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl, hclsyntax.TokenOHeredoc:
				depth++
			case hclsyntax.TokenCBrace, hclsyntax.TokenCBrack, hclsyntax.TokenCParen,
				hclsyntax.TokenTemplateSeqEnd, hclsyntax.TokenCHeredoc:
				depth--
			case hclsyntax.TokenNewline, hclsyntax.TokenEOF:
				if depth <= 0 {
					end = t.Range.Start.Byte
					break span
				}
			}
			w := strings.TrimSpace(string(t.Bytes))
			// The NAME in env("NAME") is useful in messages and is not the PIN.
			if t.Type == hclsyntax.TokenQuotedLit && i >= 3 && toks[i-1].Type == hclsyntax.TokenOQuote &&
				toks[i-2].Type == hclsyntax.TokenOParen && string(toks[i-3].Bytes) == "env" && validEnvName(w) {
				continue
			}
			if w != "env" && strings.IndexFunc(w, func(r rune) bool { return unicode.IsLetter(r) || unicode.IsDigit(r) }) >= 0 {
				d.secrets = append(d.secrets, w)
			}
		}
		d.pinSpans = append(d.pinSpans, [2]int{start, end})
	}
}

// hclDiags turns HCL's diagnostics into ours. For a PIN expression only our
// own texts or HCL's fixed summaries are kept.
func (d *decoder) hclDiags(hd hcl.Diagnostics, secret bool) {
	for _, h := range hd {
		if h.Severity != hcl.DiagError {
			continue
		}
		at := hcl.InitialPos
		switch {
		case h.Subject != nil:
			at = h.Subject.Start
		case h.Context != nil:
			at = h.Context.Start
		}
		if x, ok := hcl.DiagnosticExtra[hclsyntax.FunctionCallDiagExtra](h); ok {
			var ee *envError
			if errors.As(x.FunctionCallError(), &ee) {
				d.add(at, ee.summary(), ee.detail())
				continue
			}
		}
		summary := lowerFirst(h.Summary)
		if secret {
			d.add(at, "invalid pin: "+summary, withheld)
			continue
		}
		d.diags = append(d.diags, diag{at: at, hcl: true, report: Diagnostic{Pos: d.pos(at), Summary: summary, Detail: h.Detail}})
	}
}

func lowerFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToLower(s[:1]) + s[1:]
}

// envError is what env() fails with; it becomes a diagnostic of its own
// rather than HCL's generic "Error in function call".
type envError struct {
	name    string
	invalid bool
}

func (e *envError) Error() string { return e.summary() }

func (e *envError) summary() string {
	if e.invalid {
		// Not echoed: a mistyped pin = env("1234") would print the PIN.
		return "env() needs an environment variable name"
	}
	return fmt.Sprintf("environment variable %q is not set", e.name)
}

func (e *envError) detail() string {
	if e.invalid {
		return `names are letters, digits and '_', not starting with a digit, e.g. env("P11BRIDGE_PIN")`
	}
	return "set it in the environment p11bridge starts in"
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

var envFunc = function.New(&function.Spec{
	Description: "Returns the value of an environment variable; an unset variable is an error.",
	Params:      []function.Parameter{{Name: "name", Type: cty.String}},
	Type:        function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		name := args[0].AsString()
		if !validEnvName(name) {
			return cty.NilVal, &envError{name: name, invalid: true}
		}
		v, ok := os.LookupEnv(name)
		if !ok {
			return cty.NilVal, &envError{name: name}
		}
		return cty.StringVal(v), nil
	},
})

// envCallName returns NAME when expr is exactly env("NAME").
func envCallName(expr hclsyntax.Expression) (string, bool) {
	call, ok := expr.(*hclsyntax.FunctionCallExpr)
	if !ok || call.Name != "env" || len(call.Args) != 1 || call.ExpandFinal {
		return "", false
	}
	v, hd := call.Args[0].Value(nil)
	if hd.HasErrors() || v.IsNull() || !v.IsKnown() || v.Type() != cty.String {
		return "", false
	}
	return v.AsString(), true
}

// attr is an attribute evaluated once; ok is false when evaluation failed
// (already reported) so later checks stay quiet instead of cascading.
type attr struct {
	*hclsyntax.Attribute
	in  string // " in signer \"a\"", " in the tls block" or ""
	val cty.Value
	ok  bool
}

// what names the attribute with its place, for messages.
func (a *attr) what() string { return a.Name + a.in }

// at is where the value starts.
func (a *attr) at() hcl.Pos { return a.Expr.Range().Start }

type content struct {
	attrs  map[string]*attr
	blocks map[string][]*hclsyntax.Block
	// misused holds block names written as attributes, already reported,
	// so the block is not also reported missing.
	misused map[string]bool
}

// content checks a body against the attribute and block names allowed in it
// and evaluates the attributes. Attributes set to null count as absent.
func (d *decoder) content(b *hclsyntax.Body, in string, attrs, blocks []string, secret string) content {
	c := content{attrs: map[string]*attr{}, blocks: map[string][]*hclsyntax.Block{}, misused: map[string]bool{}}
	for name, a := range b.Attributes {
		if !contains(attrs, name) {
			if contains(blocks, name) {
				d.add(a.NameRange.Start, fmt.Sprintf("%q is a block, not an attribute%s", name, in),
					fmt.Sprintf("write %s { … }", name))
				c.misused[name] = true
				continue
			}
			d.add(a.NameRange.Start, fmt.Sprintf("unknown attribute %q%s", name, in), didYouMean(name, attrs, "attributes"))
			continue
		}
		ev := &attr{Attribute: a, in: in}
		ev.val, ev.ok = d.eval(ev, name == secret)
		if ev.ok && ev.val.IsNull() {
			continue
		}
		c.attrs[name] = ev
	}
	for _, blk := range b.Blocks {
		if !contains(blocks, blk.Type) {
			if contains(attrs, blk.Type) {
				d.add(blk.TypeRange.Start, fmt.Sprintf("%q is an attribute, not a block%s", blk.Type, in),
					fmt.Sprintf("write %s = …", blk.Type))
				continue
			}
			d.add(blk.TypeRange.Start, fmt.Sprintf("unknown block %q%s", blk.Type, in), didYouMean(blk.Type, blocks, "blocks"))
			continue
		}
		c.blocks[blk.Type] = append(c.blocks[blk.Type], blk)
	}
	return c
}

func (d *decoder) eval(a *attr, secret bool) (cty.Value, bool) {
	// A bare word is HCL's variable syntax; there are no variables, so it is
	// almost always a string missing its quotes. Say so instead of HCL's
	// "Variables not allowed".
	if t, ok := a.Expr.(*hclsyntax.ScopeTraversalExpr); ok && len(t.Traversal) == 1 {
		if secret {
			d.add(a.at(), "the pin"+a.in+" is not quoted", `write pin = "…" or pin = env("NAME")`)
		} else {
			w := t.Traversal.RootName()
			d.add(a.at(), fmt.Sprintf("bare word %q in %s is not a value", w, a.what()),
				fmt.Sprintf("quote strings: %s = %q", a.Name, w))
		}
		return cty.NilVal, false
	}
	// Loops are refused: a config has no use for them, and nested loops
	// over long lists would make a small file take hours to evaluate.
	loop := hclsyntax.VisitAll(a.Expr, func(n hclsyntax.Node) hcl.Diagnostics {
		switch n.(type) {
		case *hclsyntax.ForExpr, *hclsyntax.SplatExpr, *hclsyntax.TemplateJoinExpr:
			return hcl.Diagnostics{{Severity: hcl.DiagError, Subject: n.Range().Ptr()}}
		}
		return nil
	})
	if len(loop) > 0 {
		d.add(loop[0].Subject.Start, "for expressions and splats are not supported"+a.in, "write the values out")
		return cty.NilVal, false
	}
	v, hd := a.Expr.Value(d.ctx)
	if hd.HasErrors() {
		d.hclDiags(hd, secret)
		return cty.NilVal, false
	}
	if !v.IsWhollyKnown() {
		d.add(a.at(), a.what()+" has no known value", "use a literal or env(\"NAME\")")
		return cty.NilVal, false
	}
	return v, true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// didYouMean suggests the closest allowed name, or lists them all.
func didYouMean(given string, allowed []string, kind string) string {
	if s := suggest(given, allowed); s != "" {
		return fmt.Sprintf("did you mean %q?", s)
	}
	if len(allowed) == 0 {
		return "remove it; no " + kind + " are allowed here"
	}
	return "remove it; the " + kind + " allowed here are " + strings.Join(allowed, ", ")
}

// suggest returns the candidate closest to given, if close enough to be a
// plausible typo.
func suggest(given string, candidates []string) string {
	if len(given) > 64 { // no name is that long; spare the quadratic work
		return ""
	}
	best, bestDist := "", math.MaxInt
	lg := strings.ToLower(given)
	for _, c := range candidates {
		lc := strings.ToLower(c)
		if lc == lg {
			return c
		}
		dist := editDistance(lg, lc)
		if dist < bestDist {
			best, bestDist = c, dist
		}
	}
	limit := max(1, len([]rune(given))/3)
	if bestDist <= limit {
		return best
	}
	// A prefix or extension is a common slip ("warning" for "warn").
	for _, c := range candidates {
		lc := strings.ToLower(c)
		if len(lc) >= 3 && len(lg) >= 3 && (strings.HasPrefix(lg, lc) || strings.HasPrefix(lc, lg)) {
			return c
		}
	}
	return ""
}

// editDistance is the optimal string alignment distance: insertions,
// deletions, substitutions and swaps of neighbours each cost 1, since a
// swap ("kmpi") is the commonest typo.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	// Three rows: the one before the previous is needed for swaps.
	pp, prev, cur := make([]int, len(rb)+1), make([]int, len(rb)+1), make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], pp[j-2]+1)
			}
		}
		pp, prev, cur = prev, cur, pp
	}
	return prev[len(rb)]
}

// Typed getters. Each reports its own error and returns ok=false; none
// echoes the value it rejects, so they are safe for PINs too.

func (d *decoder) str(a *attr) (string, bool) {
	if !a.ok {
		return "", false
	}
	if a.val.Type() != cty.String {
		// Numbers are refused too, not converted: a serial or PIN written
		// as a number would lose its leading zeros.
		hint := fmt.Sprintf("quote it: %s = \"…\"", a.Name)
		if a.Name == "pin" && a.val.Type() == cty.Number {
			hint += " (a number would lose leading zeros)"
		}
		d.add(a.at(), fmt.Sprintf("%s must be a string, not %s", a.what(), aType(a.val.Type())), hint)
		return "", false
	}
	return a.val.AsString(), true
}

func (d *decoder) boolean(a *attr) (bool, bool) {
	if !a.ok {
		return false, false
	}
	if a.val.Type() != cty.Bool {
		d.add(a.at(), fmt.Sprintf("%s must be true or false, not %s", a.what(), aType(a.val.Type())),
			fmt.Sprintf("write %s = true or %s = false, without quotes", a.Name, a.Name))
		return false, false
	}
	return a.val.True(), true
}

// integer returns a whole number in [lo, hi].
func (d *decoder) integer(a *attr, lo, hi int64) (int64, bool) {
	if !a.ok {
		return 0, false
	}
	if a.val.Type() != cty.Number {
		d.add(a.at(), fmt.Sprintf("%s must be a number, not %s", a.what(), aType(a.val.Type())),
			fmt.Sprintf("write a whole number between %d and %d, without quotes", lo, hi))
		return 0, false
	}
	bf := a.val.AsBigFloat()
	n, acc := bf.Int64()
	if !bf.IsInt() || acc != big.Exact || n < lo || n > hi {
		want := fmt.Sprintf("between %d and %d", lo, hi)
		if hi == math.MaxInt {
			want = fmt.Sprintf("of at least %d", lo)
		}
		d.add(a.at(), fmt.Sprintf("%s must be a whole number %s", a.what(), want), "got "+numText(bf))
		return 0, false
	}
	return n, true
}

// aType names a value's type in HCL's terms, with an article.
func aType(t cty.Type) string {
	switch {
	case t == cty.String:
		return "a string"
	case t == cty.Number:
		return "a number"
	case t == cty.Bool:
		return "true or false"
	case t.IsTupleType() || t.IsListType() || t.IsSetType():
		return "a list"
	case t.IsObjectType() || t.IsMapType():
		return "an object"
	}
	return "a " + t.FriendlyName()
}

// numText formats a number for a message. big.Float.Text is avoided: for
// a large exponent it takes minutes.
func numText(bf *big.Float) string {
	if n, acc := bf.Int64(); acc == big.Exact {
		return strconv.FormatInt(n, 10)
	}
	f, _ := bf.Float64()
	return strconv.FormatFloat(f, 'g', -1, 64)
}

type item struct {
	s  string
	at hcl.Pos
}

// list returns a list of strings, each with its own position when the
// list is written out literally.
func (d *decoder) list(a *attr) ([]item, bool) {
	if !a.ok {
		return nil, false
	}
	t := a.val.Type()
	if !(t.IsTupleType() || t.IsListType() || t.IsSetType()) {
		d.add(a.at(), fmt.Sprintf("%s must be a list of strings, not %s", a.what(), aType(t)),
			fmt.Sprintf("write %s = [\"…\", \"…\"]", a.Name))
		return nil, false
	}
	var elems []hclsyntax.Expression
	if tc, ok := a.Expr.(*hclsyntax.TupleConsExpr); ok && len(tc.Exprs) == a.val.LengthInt() {
		elems = tc.Exprs
	}
	var out []item
	ok := true
	i := 0
	for it := a.val.ElementIterator(); it.Next(); i++ {
		_, v := it.Element()
		at := a.at()
		if elems != nil {
			at = elems[i].Range().Start
		}
		if v.IsNull() || v.Type() != cty.String {
			d.add(at, fmt.Sprintf("%s must be a list of strings", a.what()), "quote each element")
			ok = false
			continue
		}
		out = append(out, item{v.AsString(), at})
	}
	return out, ok
}

// size accepts a byte count as a number or a string such as "64KiB".
func (d *decoder) size(a *attr, lo, hi int64) (int, bool) {
	if !a.ok {
		return 0, false
	}
	var n int64
	switch a.val.Type() {
	case cty.Number:
		bf := a.val.AsBigFloat()
		v, acc := bf.Int64()
		switch {
		case !bf.IsInt() || bf.Sign() < 0:
			d.add(a.at(), fmt.Sprintf("%s must be a whole number of bytes", a.what()), "got "+numText(bf))
			return 0, false
		case acc != big.Exact:
			d.add(a.at(), fmt.Sprintf("%s must be between %s and %s", a.what(), formatSize(lo), formatSize(hi)), "got "+numText(bf))
			return 0, false
		}
		n = v
	case cty.String:
		v, err := parseSize(a.val.AsString())
		if err != nil {
			d.add(a.at(), fmt.Sprintf("bad size %q for %s", a.val.AsString(), a.what()), err.Error())
			return 0, false
		}
		n = v
	default:
		d.add(a.at(), fmt.Sprintf("%s must be a size, not %s", a.what(), aType(a.val.Type())),
			`write a number of bytes or a string such as "64KiB" or "1MiB"`)
		return 0, false
	}
	if n < lo || n > hi {
		d.add(a.at(), fmt.Sprintf("%s must be between %s and %s", a.what(), formatSize(lo), formatSize(hi)),
			fmt.Sprintf("got %s", formatSize(n)))
		return 0, false
	}
	return int(n), true
}

var sizeUnits = map[string]int64{"": 1, "b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}

// parseSize reads "123", "64KiB", "1 MiB". Decimal units (KB, MB) are
// refused rather than guessed: half the world reads them as powers of 1024.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	if i < 0 {
		i = len(s)
	}
	num, unit := s[:i], strings.ToLower(strings.TrimSpace(s[i:]))
	if num == "" {
		return 0, errors.New(`write a whole number with an optional unit B, KiB, MiB or GiB, e.g. "64KiB"`)
	}
	mult, ok := sizeUnits[unit]
	if !ok {
		if m := map[string]string{"k": "KiB", "kb": "KiB", "m": "MiB", "mb": "MiB", "g": "GiB", "gb": "GiB"}[unit]; m != "" {
			return 0, fmt.Errorf("units are powers of 1024: write %s%s", num, m)
		}
		return 0, errors.New(`the unit must be B, KiB, MiB or GiB, e.g. "64KiB"`)
	}
	var n int64
	for _, r := range num {
		if n > (math.MaxInt64-9)/10 {
			return 0, errors.New("too large")
		}
		n = n*10 + int64(r-'0')
	}
	if n > math.MaxInt64/mult {
		return 0, errors.New("too large")
	}
	return n * mult, nil
}

func formatSize(n int64) string {
	for _, u := range []struct {
		s string
		m int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if n >= u.m && n%u.m == 0 {
			return fmt.Sprintf("%d%s", n/u.m, u.s)
		}
	}
	return fmt.Sprintf("%dB", n)
}

// duration accepts Go duration strings ("5s", "2m30s"). Bare numbers are
// refused: seconds or milliseconds would be a guess.
func (d *decoder) duration(a *attr, lo, hi time.Duration) (time.Duration, bool) {
	if a.ok && a.val.Type() == cty.Number {
		d.add(a.at(), a.what()+" must be a duration string, not a number", fmt.Sprintf(`write it with a unit, e.g. %s = "5s"`, a.Name))
		return 0, false
	}
	s, ok := d.str(a)
	if !ok {
		return 0, false
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		d.add(a.at(), fmt.Sprintf("bad duration %q for %s", s, a.what()), `write a number with a unit: ms, s, m or h, e.g. "5s" or "2m"`)
		return 0, false
	}
	if v < lo || v > hi {
		d.add(a.at(), fmt.Sprintf("%s must be between %s and %s", a.what(), lo, hi), fmt.Sprintf("got %s", v))
		return 0, false
	}
	return v, true
}

// path resolves p against the config file's directory.
func (d *decoder) path(p string) string {
	if p == "" {
		return ""
	}
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(d.dir, p)
}
