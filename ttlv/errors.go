package ttlv

import (
	"errors"
	"fmt"

	"github.com/ansel1/merry/v2"
	"github.com/gemalto/kmip-go/kmip14"
	"github.com/gemalto/kmip-go/kmip20"

	"github.com/p11bridge/p11bridge/signer"
)

// reasonKey carries the KMIP ResultReason on a merry error, set where the cause is known.
type reasonKey struct{}

// kerr is a KMIP failure with its ResultReason and a message saying what was wrong.
func kerr(reason uint32, format string, args ...any) error {
	return merry.New(fmt.Sprintf(format, args...), merry.WithValue(reasonKey{}, reason), merry.NoCaptureStack())
}

// withReason gives err a ResultReason (and a prefix saying what was being done).
func withReason(err error, reason uint32, format string, args ...any) error {
	return merry.Prependf(err, format, append(args, merry.WithValue(reasonKey{}, reason), merry.NoCaptureStack())...)
}

// Shorthands for the reasons the handlers use most.
var (
	rNotFound     = uint32(kmip14.ResultReasonItemNotFound)
	rInvalidMsg   = uint32(kmip14.ResultReasonInvalidMessage)
	rInvalidField = uint32(kmip14.ResultReasonInvalidField)
	rMissing      = uint32(kmip14.ResultReasonMissingData)
	rNotSupported = uint32(kmip14.ResultReasonOperationNotSupported)
	rFeature      = uint32(kmip14.ResultReasonFeatureNotSupported)
	rCrypto       = uint32(kmip14.ResultReasonCryptographicFailure)
	rDenied       = uint32(kmip14.ResultReasonPermissionDenied)
	rIllegal      = uint32(kmip14.ResultReasonIllegalOperation)
	rIndex        = uint32(kmip14.ResultReasonIndexOutOfBounds)
	rFormat       = uint32(kmip14.ResultReasonKeyFormatTypeNotSupported)
	rTooLarge     = uint32(kmip14.ResultReasonResponseTooLarge)
	rGeneral      = uint32(kmip14.ResultReasonGeneralFailure)
	rNotExtract   = uint32(kmip14.ResultReasonNotExtractable)
	rWrongState   = uint32(kmip20.ResultReasonWrongKeyLifecycleState)
	rReadOnly     = uint32(kmip20.ResultReasonAttributeReadOnly)
	rAttrNotFound = uint32(kmip20.ResultReasonAttributeNotFound)
	rSingleValued = uint32(kmip20.ResultReasonAttributeSingleValued)
	rBadParams    = uint32(kmip20.ResultReasonBadCryptographicParameters)
	rBadValue     = uint32(kmip20.ResultReasonInvalidAttributeValue)
	rLimit        = uint32(kmip20.ResultReasonServerLimitExceeded)
)

// resultOf maps an error to the ResultReason and message of a failed batch item. Signer sentinels
// are mapped here, once; reasons a version does not define are replaced by the nearest one it has.
func resultOf(err error, v ProtocolVersion) (uint32, string) {
	reason := rGeneral
	if r, ok := merry.Lookup(err, reasonKey{}); ok {
		reason = r.(uint32)
	} else {
		var de *decodeError
		switch {
		case errors.As(err, &de) && de.missing:
			reason = rMissing
		case errors.As(err, &de):
			reason = rInvalidField
		case errors.Is(err, signer.ErrNotFound):
			reason = rNotFound
		case errors.Is(err, signer.ErrInvalid):
			reason = rInvalidField
		case errors.Is(err, signer.ErrNotAuthentic), errors.Is(err, signer.ErrBadSignature):
			reason = rCrypto
		case errors.Is(err, signer.ErrNotExtractable):
			reason = rNotExtract
		case errors.Is(err, signer.ErrDenied):
			reason = rDenied
		case errors.Is(err, signer.ErrWrongState):
			reason = rWrongState
		case errors.Is(err, signer.ErrUsage):
			reason = rUsageMask
		case errors.Is(err, signer.ErrQuota):
			reason = rLimit
		case errors.Is(err, signer.ErrExists):
			reason = uint32(kmip14.ResultReasonObjectAlreadyExists)
		case errors.Is(err, signer.ErrUnsupported):
			reason = rFeature
		case errors.Is(err, signer.ErrUnavailable):
			reason = rGeneral
		}
	}
	return reasonFor(reason, v), err.Error()
}

// reasonFor replaces a ResultReason that version v does not define. PyKMIP and Krill refuse
// enumeration values they do not know, so a 1.2 client must never see a 2.0 reason.
func reasonFor(r uint32, v ProtocolVersion) uint32 {
	since := func(major, minor int32) bool { return v.atLeast(major, minor) }
	switch {
	case r <= 0x12 || r == rGeneral:
		return r
	case r == 0x13 && since(1, 1), (r == 0x14 || r == 0x15) && since(1, 2), r <= 0x18 && since(1, 4):
		return r
	case r > 0x18 && since(2, 0):
		return r
	}
	switch r {
	case rNotExtract, uint32(kmip14.ResultReasonSensitive), rWrongState, rReadOnly, rUsageMask:
		return rDenied
	case rAttrNotFound, rSingleValued, rBadParams, rBadValue, rLimit:
		return rInvalidField
	case rMissingIV:
		return rInvalidMsg
	case uint32(kmip20.ResultReasonMultiValuedAttribute):
		return rInvalidField
	case uint32(kmip14.ResultReasonObjectAlreadyExists):
		return rIllegal
	case uint32(kmip20.ResultReasonUnsupportedProtocolVersion):
		return rInvalidMsg
	}
	return rGeneral
}

// rUsageMask is KMIP 2.0's Incompatible Cryptographic Usage Mask.
var rUsageMask = uint32(kmip20.ResultReasonIncompatibleCryptographicUsageMask)
