package ttlv

import (
	"fmt"
	"time"

	"github.com/gemalto/kmip-go/kmip14"
	_ "github.com/gemalto/kmip-go/kmip20" // registers the 2.0 tag names the struct tags use
	tt "github.com/gemalto/kmip-go/ttlv"
)

// ProtocolVersion is a KMIP protocol version. Each response carries the version of its request.
type ProtocolVersion struct {
	Major int32 `kmip:"ProtocolVersionMajor,required"`
	Minor int32 `kmip:"ProtocolVersionMinor,required"`
}

func (v ProtocolVersion) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// atLeast says whether v is major.minor or newer.
func (v ProtocolVersion) atLeast(major, minor int32) bool {
	return v.Major > major || (v.Major == major && v.Minor >= minor)
}

// v2 says whether v uses the KMIP 2.x encodings (Attributes instead of TemplateAttribute, …).
func (v ProtocolVersion) v2() bool { return v.Major >= 2 }

// Supported versions, most preferred first (DiscoverVersions answers in this order).
var supportedVersions = []ProtocolVersion{{2, 0}, {1, 4}, {1, 3}, {1, 2}, {1, 1}, {1, 0}}

func (v ProtocolVersion) supported() bool {
	for _, s := range supportedVersions {
		if s == v {
			return true
		}
	}
	return false
}

// nearestSupported is the version to answer an unsupported request with: the newest supported
// version not above it (a client that sent 2.1 can read a 2.0 error), else the oldest.
func nearestSupported(v ProtocolVersion) ProtocolVersion {
	for _, s := range supportedVersions {
		if v.atLeast(s.Major, s.Minor) {
			return s
		}
	}
	return supportedVersions[len(supportedVersions)-1]
}

// RequestMessage is a KMIP request: a header and one or more batch items.
type RequestMessage struct {
	Header RequestHeader      `kmip:"RequestHeader,required"`
	Items  []RequestBatchItem `kmip:"BatchItem"`
}

// RequestHeader carries every field KMIP 1.0–2.0 defines, so that messages re-encode byte for byte.
type RequestHeader struct {
	ProtocolVersion              ProtocolVersion `kmip:"ProtocolVersion,required"`
	MaximumResponseSize          *int32          `kmip:"MaximumResponseSize"`
	ClientCorrelationValue       *string         `kmip:"ClientCorrelationValue"`
	ServerCorrelationValue       *string         `kmip:"ServerCorrelationValue"`
	AsynchronousIndicator        *bool           `kmip:"AsynchronousIndicator"`
	AttestationCapableIndicator  *bool           `kmip:"AttestationCapableIndicator"`
	AttestationType              []uint32        `kmip:"AttestationType"`
	Authentication               *node           `kmip:"Authentication"`
	BatchErrorContinuationOption *uint32         `kmip:"BatchErrorContinuationOption"`
	BatchOrderOption             *bool           `kmip:"BatchOrderOption"`
	TimeStamp                    *time.Time      `kmip:"TimeStamp"`
	BatchCount                   int32           `kmip:"BatchCount,required"`
}

// RequestBatchItem is one operation of a request. The payload stays a TTLV tree until the
// operation's handler decodes it, so a bad payload fails only its own item.
type RequestBatchItem struct {
	Operation         uint32 `kmip:"Operation,required"`
	Ephemeral         *bool  `kmip:"Ephemeral"`
	UniqueBatchItemID []byte `kmip:"UniqueBatchItemID"`
	RequestPayload    *node  `kmip:"RequestPayload"`
	MessageExtension  *node  `kmip:"MessageExtension"`
}

// ResponseMessage is a KMIP response.
type ResponseMessage struct {
	Header ResponseHeader      `kmip:"ResponseHeader,required"`
	Items  []ResponseBatchItem `kmip:"BatchItem"`
}

// ResponseHeader: the server fills only ProtocolVersion, TimeStamp and BatchCount (PyKMIP 0.10
// cannot parse a ServerCorrelationValue); the other fields exist for decoding test vectors.
type ResponseHeader struct {
	ProtocolVersion        ProtocolVersion `kmip:"ProtocolVersion,required"`
	TimeStamp              time.Time       `kmip:"TimeStamp,required"`
	Nonce                  *node           `kmip:"Nonce"`
	ServerHashedPassword   []byte          `kmip:"ServerHashedPassword"`
	AttestationType        []uint32        `kmip:"AttestationType"`
	ClientCorrelationValue *string         `kmip:"ClientCorrelationValue"`
	ServerCorrelationValue *string         `kmip:"ServerCorrelationValue"`
	BatchCount             int32           `kmip:"BatchCount,required"`
}

// ResponseBatchItem is the result of one operation. Payload is a payload struct when the server
// builds it, a *node when decoded.
type ResponseBatchItem struct {
	Operation                    *uint32 `kmip:"Operation"`
	UniqueBatchItemID            []byte  `kmip:"UniqueBatchItemID"`
	ResultStatus                 uint32  `kmip:"ResultStatus,required"`
	ResultReason                 *uint32 `kmip:"ResultReason"`
	ResultMessage                *string `kmip:"ResultMessage"`
	AsynchronousCorrelationValue []byte  `kmip:"AsynchronousCorrelationValue"`
	Payload                      any     `kmip:"ResponsePayload"`
	MessageExtension             *node   `kmip:"MessageExtension"`
}

// decodeRequest decodes a parsed RequestMessage.
func decodeRequest(n *node) (*RequestMessage, error) {
	if n.Tag != kmip14.TagRequestMessage {
		return nil, &decodeError{msg: fmt.Sprintf("expected a RequestMessage, got %s", tagName(n.Tag))}
	}
	var m RequestMessage
	if err := decodeStruct(n, &m); err != nil {
		return nil, err
	}
	if len(m.Items) == 0 {
		return nil, &decodeError{missing: true, msg: "RequestMessage: no BatchItem"}
	}
	return &m, nil
}

// decodeResponse decodes a parsed ResponseMessage (tests and vector checks use it).
func decodeResponse(n *node) (*ResponseMessage, error) {
	if n.Tag != kmip14.TagResponseMessage {
		return nil, &decodeError{msg: fmt.Sprintf("expected a ResponseMessage, got %s", tagName(n.Tag))}
	}
	var m ResponseMessage
	if err := decodeStruct(n, &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// encode writes a message in TTLV.
func (m *RequestMessage) encode() []byte {
	return encodeStruct(kmip14.TagRequestMessage, m).bytes()
}

// responseBufSize holds the usual response (a signature, a wrapped key) in one allocation.
const responseBufSize = 1024

// encodeCheck, when set (the package's tests set it), sees every response and its bytes, to hold
// appendStruct to the tree encoder's output.
var encodeCheck func(m *ResponseMessage, out []byte)

func (m *ResponseMessage) encode() []byte {
	out := appendStruct(make([]byte, 0, responseBufSize), kmip14.TagResponseMessage, m)
	if encodeCheck != nil {
		encodeCheck(m, out)
	}
	return out
}

// peekVersion digs the protocol version out of a message that failed to decode, so that the error
// response can still speak the client's version; ok is false when it cannot be found.
func peekVersion(n *node) (ProtocolVersion, bool) {
	h := n.find(kmip14.TagRequestHeader)
	pv := h.find(kmip14.TagProtocolVersion)
	maj, min := pv.find(kmip14.TagProtocolVersionMajor), pv.find(kmip14.TagProtocolVersionMinor)
	if maj == nil || min == nil || maj.Type != tt.TypeInteger || min.Type != tt.TypeInteger {
		return ProtocolVersion{}, false
	}
	return ProtocolVersion{int32(maj.u32()), int32(min.u32())}, true
}
