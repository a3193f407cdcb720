package signer

import (
	"encoding/json"
	"time"

	// The KMIP 1.4 names of tags and mask bits, which the JSON form spells out.
	_ "github.com/gemalto/kmip-go/kmip14"
	tt "github.com/gemalto/kmip-go/ttlv"

	"github.com/p11bridge/p11bridge/keymap"
)

// Rows written before the registry kept lifecycle facts itself hold them where the KMIP front end
// stored every attribute: "kmip.<Tag>", a JSON array of values in the KMIP JSON encoding. They are
// read here so that such rows keep their usage masks and dates; the next change of one writes the
// registry's own form (setFact) and drops the old one.
var legacyAttrs = map[string]string{
	AttrUsageMask:        "kmip.CryptographicUsageMask",
	AttrActivationDate:   "kmip.ActivationDate",
	AttrDeactivationDate: "kmip.DeactivationDate",
	AttrProtectStopDate:  "kmip.ProtectStopDate",
	AttrProcessStartDate: "kmip.ProcessStartDate",
}

// legacyFirst decodes the first instance of a legacy attribute.
func legacyFirst(rec keymap.Record, attr string) (tt.TTLV, bool) {
	raw, ok := rec.Attrs[legacyAttrs[attr]]
	if !ok {
		return nil, false
	}
	var parts []json.RawMessage
	if err := json.Unmarshal([]byte(raw), &parts); err != nil || len(parts) == 0 || string(parts[0]) == "null" {
		return nil, false
	}
	var v tt.TTLV
	if err := v.UnmarshalJSON(parts[0]); err != nil || v.Valid() != nil {
		return nil, false
	}
	return v, true
}

func legacyUsageMask(rec keymap.Record) (uint32, bool) {
	v, ok := legacyFirst(rec, AttrUsageMask)
	if !ok || v.Type() != tt.TypeInteger {
		return 0, false
	}
	return uint32(v.ValueInteger()), true
}

func legacyDate(rec keymap.Record, attr string) (time.Time, bool) {
	if _, known := legacyAttrs[attr]; !known {
		return time.Time{}, false
	}
	v, ok := legacyFirst(rec, attr)
	if !ok || v.Type() != tt.TypeDateTime {
		return time.Time{}, false
	}
	return v.ValueDateTime(), true
}
