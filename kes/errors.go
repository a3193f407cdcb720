package kes

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/p11bridge/p11bridge/signer"
)

// apiError is an answer the client sees: a status and a message, sent as {"message": …}.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return fmt.Sprintf("%d %s", e.status, e.msg) }

// The sentinels kms-go compares by status AND message; MinIO branches on them. Do not reword.
var (
	errKeyNotFound      = &apiError{http.StatusNotFound, "key does not exist"}
	errKeyExists        = &apiError{http.StatusBadRequest, "key already exists"}
	errNotAllowed       = &apiError{http.StatusForbidden, "not authorized: insufficient permissions"}
	errDecrypt          = &apiError{http.StatusBadRequest, "decryption failed: ciphertext is not authentic"}
	errPolicyNotFound   = &apiError{http.StatusNotFound, "policy does not exist"}
	errIdentityNotFound = &apiError{http.StatusNotFound, "identity does not exist"}
)

// Errors of our own making: wording is free, status codes follow KES.
var (
	errNotFound     = &apiError{http.StatusNotFound, "not found"}
	errBodyTooLarge = &apiError{http.StatusRequestEntityTooLarge, "request body too large"}
	errBadBody      = &apiError{http.StatusBadRequest, "invalid request body"}
)

func failf(status int, format string, args ...any) *apiError {
	return &apiError{status, fmt.Sprintf(format, args...)}
}

// fromSigner maps a registry error to what the client may see. what names the step ("encrypt",
// "generate key") for the message. Token failures become 503 (retryable; the client also takes the
// endpoint out of rotation for a while), anything unexpected 502. Registry messages carry object
// ids and signer names, never key material, so they are safe to pass on.
func fromSigner(err error, what string) *apiError {
	var ae *apiError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, signer.ErrNotAuthentic):
		return errDecrypt
	case errors.Is(err, signer.ErrNotFound):
		// Another identity's key answers as a missing one (the registry already says so).
		return errKeyNotFound
	case errors.Is(err, signer.ErrExists):
		return errKeyExists
	case errors.Is(err, signer.ErrDenied):
		return errNotAllowed
	case errors.Is(err, signer.ErrQuota):
		return failf(http.StatusForbidden, "%s: %v", what, err)
	case errors.Is(err, signer.ErrWrongState), errors.Is(err, signer.ErrUsage):
		// The caller may use the key, but not now or not so: its KMIP state, dates or usage mask
		// (set through KMIP) say no. 409, which kms-go neither retries nor takes for an outage.
		return failf(http.StatusConflict, "%s: %v", what, err)
	case errors.Is(err, signer.ErrUnavailable):
		return failf(http.StatusServiceUnavailable, "key store unavailable: %s: %v", what, err)
	case errors.Is(err, signer.ErrUnsupported):
		return failf(http.StatusNotImplemented, "%s: not supported by the key store: %v", what, err)
	case errors.Is(err, signer.ErrInvalid):
		return failf(http.StatusBadRequest, "%s: %v", what, err)
	}
	return failf(http.StatusBadGateway, "key store failure: %s: %v", what, err)
}
