package ttlv

import (
	"bytes"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"github.com/gemalto/kmip-go/kmip14"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	tt "github.com/gemalto/kmip-go/ttlv"
)

// The OASIS KMIP 1.0–1.4 test vectors ship in the ovh/kmip-go module. Each file is a sequence of
// RequestMessage/ResponseMessage pairs in the KMIP XML encoding.

var (
	nowVar    = regexp.MustCompile(`"\$NOW([-+]\d+)?"`)
	uidVar    = regexp.MustCompile(`"\$UNIQUE_IDENTIFIER_(\d+)"`)
	otherVar  = regexp.MustCompile(`"\$[A-Za-z0-9_]+"`)
	maskSpace = regexp.MustCompile(`(type="Integer" value=")([A-Za-z][A-Za-z0-9 |]*)"`)
)

// varMarker starts the value that stands for a placeholder the vector leaves open.
const varMarker = "VAR:"

type vectorMessage struct {
	name string // file and position, for messages
	raw  []byte // TTLV from the XML
}

func vectorDir(t testing.TB) string {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/ovh/kmip-go").Output()
	if err != nil {
		t.Fatalf("locate github.com/ovh/kmip-go: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "kmiptest", "testdata")
}

// substitute fills the placeholders of a vector file: times relative to now, identifiers, and
// opaque values (key material, …) with a fixed hex string that is valid text and bytes alike.
func substitute(b []byte, now time.Time) []byte {
	b = nowVar.ReplaceAllFunc(b, func(m []byte) []byte {
		off, _ := strconv.Atoi(strings.Trim(string(m[5:]), `"`))
		return []byte(`"` + now.Add(time.Duration(off)*time.Second).Format(time.RFC3339) + `"`)
	})
	b = uidVar.ReplaceAll(b, []byte(`"uid-$1"`))
	// Other values ($KEY_MATERIAL_0, $SIGNATURE_DATA, …) become a hex marker naming them: valid as
	// a ByteString and as a TextString, and recognisable when a replay learns their real values.
	b = otherVar.ReplaceAllFunc(b, func(m []byte) []byte {
		return []byte(`"` + hex.EncodeToString([]byte(varMarker+strings.Trim(string(m), `"$`))) + `"`)
	})
	// Some vectors write masks space-separated ("Decrypt Encrypt"); the XML profile uses '|'.
	return maskSpace.ReplaceAllFunc(b, func(m []byte) []byte {
		s := maskSpace.FindSubmatch(m)
		return append(append([]byte{}, s[1]...), []byte(strings.Join(strings.Fields(strings.ReplaceAll(string(s[2]), "|", " ")), "|")+`"`)...)
	})
}

func loadVectors(t testing.TB) (map[string][]vectorMessage, int) {
	dir := vectorDir(t)
	files, err := filepath.Glob(filepath.Join(dir, "v1.*", "*.xml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no vector files under %s (%v)", dir, err)
	}
	sort.Strings(files)
	now := time.Now().Truncate(time.Second)
	out := map[string][]vectorMessage{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, f)
		d := xml.NewDecoder(bytes.NewReader(substitute(b, now)))
		for i := 0; ; {
			tok, err := d.Token()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("%s: %v", rel, err)
			}
			se, ok := tok.(xml.StartElement)
			if !ok || (se.Name.Local != "RequestMessage" && se.Name.Local != "ResponseMessage") {
				continue
			}
			var v tt.TTLV
			if err := d.DecodeElement(&v, &se); err != nil {
				t.Fatalf("%s message %d: XML: %v", rel, i, err)
			}
			out[rel] = append(out[rel], vectorMessage{name: fmt.Sprintf("%s#%d(%s)", rel, i, se.Name.Local), raw: v})
			i++
		}
	}
	return out, len(files)
}

// TestOASISVectorsRoundTrip decodes every request and response of every vector file through the
// message types and checks that encoding them again gives the same bytes.
func TestOASISVectorsRoundTrip(t *testing.T) {
	vecs, nfiles := loadVectors(t)
	msgs := 0
	for file, ms := range vecs {
		for _, m := range ms {
			msgs++
			n, err := parseNode(m.raw)
			if err != nil {
				t.Errorf("%s: parse: %v", m.name, err)
				continue
			}
			var again []byte
			if strings.HasSuffix(m.name, "(RequestMessage)") {
				req, err := decodeRequest(n)
				if err != nil {
					t.Errorf("%s: decode: %v", m.name, err)
					continue
				}
				again = req.encode()
			} else {
				resp, err := decodeResponse(n)
				if err != nil {
					t.Errorf("%s: decode: %v", m.name, err)
					continue
				}
				again = resp.encode()
			}
			if !bytes.Equal(again, m.raw) {
				t.Errorf("%s: re-encoding differs\nwant %x\ngot  %x", m.name, []byte(m.raw), again)
			}
		}
		_ = file
	}
	t.Logf("%d files, %d messages", nfiles, msgs)
}

// requestTypes maps each implemented operation to its request payload type.
var requestTypes = map[kmip14.Operation]func() any{
	kmip14.OperationCreate:           func() any { return &createRequest{} },
	kmip14.OperationCreateKeyPair:    func() any { return &createKeyPairRequest{} },
	kmip14.OperationReKeyKeyPair:     func() any { return &createKeyPairRequest{} },
	kmip14.OperationRegister:         func() any { return &registerRequest{} },
	kmip14.OperationReKey:            func() any { return &reKeyRequest{} },
	kmip14.OperationLocate:           func() any { return &locateRequest{} },
	kmip14.OperationCheck:            func() any { return &checkRequest{} },
	kmip14.OperationGet:              func() any { return &getRequest{} },
	kmip14.OperationGetAttributes:    func() any { return &getAttributesRequest{} },
	kmip14.OperationGetAttributeList: func() any { return &uidRequest{} },
	kmip14.OperationAddAttribute:     func() any { return &attrRequest{} },
	kmip14.OperationModifyAttribute:  func() any { return &attrRequest{} },
	kmip14.OperationDeleteAttribute:  func() any { return &attrRequest{} },
	kmip14.OperationActivate:         func() any { return &uidRequest{} },
	kmip14.OperationRevoke:           func() any { return &revokeRequest{} },
	kmip14.OperationDestroy:          func() any { return &uidRequest{} },
	kmip14.OperationQuery:            func() any { return &queryRequest{} },
	kmip14.OperationDiscoverVersions: func() any { return &discoverVersionsRequest{} },
	kmip14.OperationEncrypt:          func() any { return &cryptoRequest{} },
	kmip14.OperationDecrypt:          func() any { return &cryptoRequest{} },
	kmip14.OperationSign:             func() any { return &cryptoRequest{} },
	kmip14.OperationSignatureVerify:  func() any { return &cryptoRequest{} },
	kmip14.OperationMAC:              func() any { return &cryptoRequest{} },
	kmip14.OperationMACVerify:        func() any { return &cryptoRequest{} },
	kmip14.OperationRNGRetrieve:      func() any { return &rngRequest{} },
}

// TestOASISVectorPayloads decodes the request payload of every implemented operation in the
// vectors into its typed request and re-encodes it byte for byte. It also reads every attribute
// list the vectors send and logs the attributes the server refuses, by reason.
func TestOASISVectorPayloads(t *testing.T) {
	vecs, _ := loadVectors(t)
	total, exact := 0, 0
	diffs := map[string]int{}
	refused := map[string]int{}
	for _, ms := range vecs {
		for _, m := range ms {
			if !strings.HasSuffix(m.name, "(RequestMessage)") {
				continue
			}
			n, _ := parseNode(m.raw)
			req, err := decodeRequest(n)
			if err != nil {
				t.Fatalf("%s: %v", m.name, err)
			}
			for _, it := range req.Items {
				mk, ok := requestTypes[kmip14.Operation(it.Operation)]
				if !ok {
					continue
				}
				total++
				v := mk()
				p := it.RequestPayload
				if p == nil {
					p = &node{Tag: kmip14.TagRequestPayload, Type: tt.TypeStructure}
				}
				for _, k := range p.Kids {
					switch k.Tag {
					case kmip14.TagTemplateAttribute, kmip14.TagCommonTemplateAttribute, kmip14.TagPrivateKeyTemplateAttribute, kmip14.TagPublicKeyTemplateAttribute:
						if _, err := parseTemplate(k); err != nil {
							refused[err.Error()]++
						}
					}
				}
				if err := decodeStruct(p, v); err != nil {
					diffs[fmt.Sprintf("%s: decode: %v", opName(it.Operation), err)]++
					continue
				}
				again := encodeStruct(kmip14.TagRequestPayload, v).bytes()
				if bytes.Equal(again, p.bytes()) {
					exact++
					continue
				}
				diffs[fmt.Sprintf("%s: %s", opName(it.Operation), firstDifference(p, encodeStruct(kmip14.TagRequestPayload, v)))]++
			}
		}
	}
	keys := make([]string, 0, len(diffs))
	for k := range diffs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("%4d× %s", diffs[k], k)
	}
	for k, n := range refused {
		t.Logf("template refused %d×: %s", n, k)
	}
	t.Logf("%d of %d request payloads of implemented operations re-encode byte for byte", exact, total)
	if exact != total {
		t.Errorf("only %d of %d payloads re-encode byte for byte", exact, total)
	}
}

// firstDifference names the first child where two structures differ.
func firstDifference(a, b *node) string {
	for i := 0; i < len(a.Kids) || i < len(b.Kids); i++ {
		switch {
		case i >= len(a.Kids):
			return "re-encoding adds " + tagName(b.Kids[i].Tag)
		case i >= len(b.Kids):
			return "not modelled: " + tagName(a.Kids[i].Tag)
		case !bytes.Equal(a.Kids[i].bytes(), b.Kids[i].bytes()):
			if a.Kids[i].Tag != b.Kids[i].Tag {
				return fmt.Sprintf("order: %s before %s", tagName(b.Kids[i].Tag), tagName(a.Kids[i].Tag))
			}
			return "differs in " + tagName(a.Kids[i].Tag)
		}
	}
	return "same children, different bytes"
}
