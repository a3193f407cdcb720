package ttlv

import (
	"sort"

	"github.com/gemalto/kmip-go/kmip14"
	"github.com/gemalto/kmip-go/kmip20"
)

func init() {
	register(kmip14.OperationDiscoverVersions, v11, discoverVersions)
	register(kmip14.OperationQuery, v10, query)
}

type discoverVersionsRequest struct {
	Versions []ProtocolVersion `kmip:"ProtocolVersion"`
}

type discoverVersionsResponse struct {
	Versions []ProtocolVersion `kmip:"ProtocolVersion"`
}

// discoverVersions lists the supported versions, most preferred first; when the client sends its
// own list, only those of it the server supports.
func discoverVersions(o *op, p *node) (any, error) {
	var req discoverVersionsRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	out := discoverVersionsResponse{}
	for _, s := range supportedVersions {
		if len(req.Versions) == 0 {
			out.Versions = append(out.Versions, s)
			continue
		}
		for _, c := range req.Versions {
			if c == s {
				out.Versions = append(out.Versions, s)
				break
			}
		}
	}
	return out, nil
}

type queryRequest struct {
	Functions []uint32 `kmip:"QueryFunction"`
}

type serverInformation struct {
	Name    string `kmip:"ServerName"`
	Version string `kmip:"ServerVersion"`
}

type queryResponse struct {
	Operations  []uint32           `kmip:"Operation"`
	ObjectTypes []uint32           `kmip:"ObjectType"`
	Vendor      string             `kmip:"VendorIdentification,omitempty"`
	ServerInfo  *serverInformation `kmip:"ServerInformation"`
}

// operationCeiling is the highest operation value each version defines (Krill, whose enums stop
// at KMIP 1.2, refuses a Query response listing anything newer).
func operationCeiling(v ProtocolVersion) kmip14.Operation {
	switch {
	case v.v2():
		return 0xffff
	case v.atLeast(1, 4):
		return kmip14.OperationExport
	case v.atLeast(1, 2):
		return kmip14.OperationJoinSplitKey
	case v.atLeast(1, 1):
		return kmip14.OperationDiscoverVersions
	}
	return kmip14.OperationPut
}

// servedObjects are the object types the server stores.
var servedObjects = []kmip14.ObjectType{
	kmip14.ObjectTypeCertificate, kmip14.ObjectTypeSymmetricKey, kmip14.ObjectTypePublicKey,
	kmip14.ObjectTypePrivateKey, kmip14.ObjectTypeSecretData, kmip14.ObjectTypeOpaqueObject,
}

func query(o *op, p *node) (any, error) {
	var req queryRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	out := queryResponse{}
	for _, f := range req.Functions {
		switch kmip20.QueryFunction(f) {
		case kmip20.QueryFunctionQueryOperations:
			out.Operations = nil
			ceiling := operationCeiling(o.v)
			for op, d := range handlers {
				if op <= ceiling && o.v.atLeast(d.since.Major, d.since.Minor) {
					out.Operations = append(out.Operations, uint32(op))
				}
			}
			sort.Slice(out.Operations, func(i, j int) bool { return out.Operations[i] < out.Operations[j] })
		case kmip20.QueryFunctionQueryObjects:
			out.ObjectTypes = nil
			for _, t := range servedObjects {
				out.ObjectTypes = append(out.ObjectTypes, uint32(t))
			}
		case kmip20.QueryFunctionQueryServerInformation:
			out.Vendor = o.s.opts.ServerName
			if o.v.v2() {
				// KMIP 1.x leaves ServerInformation's contents to the vendor and clients parse it
				// differently; 2.0 defines ServerName and ServerVersion.
				out.ServerInfo = &serverInformation{Name: o.s.opts.ServerName, Version: "KMIP 1.0-1.4, 2.0"}
			}
		}
	}
	return out, nil
}
