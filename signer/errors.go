package signer

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/ansel1/merry/v2"
	"github.com/miekg/pkcs11"
)

// Sentinels the front ends map once: KMIP to a ResultReason, KES to a status and message.
// Every error the registry returns wraps exactly one of them (errors.Is), with context in its text.
var (
	ErrNotFound       = merry.Sentinel("object not found", merry.WithHTTPCode(http.StatusNotFound))
	ErrInvalid        = merry.Sentinel("invalid request", merry.WithHTTPCode(http.StatusBadRequest))
	ErrNotAuthentic   = merry.Sentinel("ciphertext is not authentic", merry.WithHTTPCode(http.StatusBadRequest))
	ErrBadSignature   = merry.Sentinel("signature does not verify", merry.WithHTTPCode(http.StatusBadRequest))
	ErrNotExtractable = merry.Sentinel("key material never leaves the token", merry.WithHTTPCode(http.StatusForbidden))
	// ErrDenied: the caller may know of the key but not do this with it (the key model, access.go).
	ErrDenied = merry.Sentinel("permission denied", merry.WithHTTPCode(http.StatusForbidden))
	// ErrWrongState: the key's lifecycle state or dates do not allow the operation now.
	ErrWrongState = merry.Sentinel("wrong key lifecycle state", merry.WithHTTPCode(http.StatusConflict))
	// ErrUsage: the key's Cryptographic Usage Mask does not allow the operation.
	ErrUsage = merry.Sentinel("incompatible cryptographic usage mask", merry.WithHTTPCode(http.StatusConflict))
	// ErrQuota: the caller's quota of objects or attribute bytes would be exceeded.
	ErrQuota = merry.Sentinel("quota exceeded", merry.WithHTTPCode(http.StatusTooManyRequests))
	// ErrExists: the name is taken by an object of the kind being made (a KES key).
	ErrExists      = merry.Sentinel("already exists", merry.WithHTTPCode(http.StatusBadRequest))
	ErrUnsupported = merry.Sentinel("not supported", merry.WithHTTPCode(http.StatusNotImplemented))
	ErrUnavailable = merry.Sentinel("signer unavailable", merry.WithHTTPCode(http.StatusServiceUnavailable))
	ErrConfig      = merry.Sentinel("signer configuration", merry.WithHTTPCode(http.StatusInternalServerError))
)

// errorf wraps a sentinel with a message; the sentinel stays reachable through errors.Is.
func errorf(kind error, format string, args ...any) error {
	return merry.Wrap(fmt.Errorf(format+": %w", append(args, kind)...), merry.WithHTTPCode(merry.HTTPCode(kind)))
}

// ckr extracts the PKCS#11 return value of err, or 0 when err is not one.
func ckr(err error) uint {
	var e pkcs11.Error
	if errors.As(err, &e) {
		return uint(e)
	}
	return 0
}

// sessionBroken says the session can no longer be used and must leave the pool.
func sessionBroken(err error) bool {
	switch ckr(err) {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_DEVICE_ERROR,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_DEVICE_MEMORY, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_GENERAL_ERROR,
		pkcs11.CKR_OPERATION_ACTIVE, pkcs11.CKR_FUNCTION_FAILED:
		return true
	}
	return false
}

// deviceFault says the token itself is failing (as opposed to the request being wrong).
func deviceFault(err error) bool {
	switch ckr(err) {
	case pkcs11.CKR_DEVICE_ERROR, pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_DEVICE_MEMORY,
		pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED,
		pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED:
		return true
	}
	return false
}

// classify turns a PKCS#11 failure of an operation into one of the sentinels, keeping the CKR name.
func classify(err error, what string) error {
	if err == nil {
		return nil
	}
	code := ckr(err)
	if code == 0 {
		return err
	}
	switch code {
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_FUNCTION_NOT_SUPPORTED,
		pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED, pkcs11.CKR_KEY_TYPE_INCONSISTENT:
		return errorf(ErrUnsupported, "%s: %v", what, err)
	case pkcs11.CKR_DATA_LEN_RANGE, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_INVALID,
		pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE, pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_TEMPLATE_INCONSISTENT,
		pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11.CKR_KEY_SIZE_RANGE, pkcs11.CKR_TEMPLATE_INCOMPLETE,
		pkcs11.CKR_DOMAIN_PARAMS_INVALID, pkcs11.CKR_WRAPPED_KEY_INVALID:
		return errorf(ErrInvalid, "%s: %v", what, err)
	case pkcs11.CKR_SIGNATURE_INVALID, pkcs11.CKR_SIGNATURE_LEN_RANGE:
		return errorf(ErrBadSignature, "%s: %v", what, err)
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID:
		return errorf(ErrNotFound, "%s: %v", what, err)
	}
	return errorf(ErrUnavailable, "%s: %v", what, err)
}
