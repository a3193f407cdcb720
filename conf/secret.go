package conf

import (
	"fmt"
	"io"
	"log/slog"
)

// Secret holds a PIN. Every way of printing or encoding it yields
// "[redacted]", so a Config can be logged or dumped without leaking PINs;
// Reveal is the one way to get the value. (encoding/json writes map keys of
// string kind as they are, so never key a map by Secret.)
type Secret string

const redacted = "[redacted]"

// Reveal returns the secret value. Call it only where the value is used.
func (s Secret) Reveal() string { return string(s) }

func (Secret) String() string   { return redacted }
func (Secret) GoString() string { return redacted }

// Format covers every fmt verb, including %x and %q which would otherwise
// bypass String and print the bytes.
func (Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, redacted) }

func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue keeps slog handlers from reflecting on the underlying string.
func (Secret) LogValue() slog.Value { return slog.StringValue(redacted) }
