package kes

import "strings"

// MaxNameLen is the longest key, policy or identity name KES accepts.
const MaxNameLen = 80

// validName reports whether s is a KES name: 1 to 80 of [0-9A-Za-z_-]. Names never hold '/', '.'
// or '*', so a name can neither escape its route nor read as a policy pattern.
func validName(s string) bool {
	if s == "" || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !nameByte(s[i]) {
			return false
		}
	}
	return true
}

func nameByte(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '-' || c == '_'
}

// listPattern is a parsed listing argument: names starting with prefix, from start on (inclusive).
type listPattern struct {
	prefix, start string
}

// parseListPattern reads the argument of the list routes: "" or "*" (everything), "prefix" or
// "prefix*", and our continuation token "prefix*start" that continue_at hands out. kms-go's list
// iterator sends continue_at back as the next call's argument, so the token has to be a valid
// pattern that keeps the prefix and says where the previous page stopped.
func parseListPattern(s string) (listPattern, bool) {
	if len(s) > 2*MaxNameLen+1 {
		return listPattern{}, false
	}
	prefix, start, star := strings.Cut(s, "*")
	for _, part := range []string{prefix, start} {
		if len(part) > MaxNameLen {
			return listPattern{}, false
		}
		for i := 0; i < len(part); i++ {
			if !nameByte(part[i]) {
				return listPattern{}, false
			}
		}
	}
	if star && start != "" && !strings.HasPrefix(start, prefix) {
		return listPattern{}, false
	}
	return listPattern{prefix: prefix, start: start}, true
}

func (p listPattern) match(name string) bool {
	return strings.HasPrefix(name, p.prefix) && name >= p.start
}

// continueToken is the argument that lists the names of p from next on.
func (p listPattern) continueToken(next string) string { return p.prefix + "*" + next }
