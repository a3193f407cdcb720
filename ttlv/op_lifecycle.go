package ttlv

import (
	"time"

	"github.com/gemalto/kmip-go/kmip14"

	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/signer"
)

func init() {
	register(kmip14.OperationActivate, v10, activate)
	register(kmip14.OperationRevoke, v10, revoke)
	register(kmip14.OperationDestroy, v10, destroy)
}

type uidRequest struct {
	UID *uidRef `kmip:"UniqueIdentifier"`
}

type uidResponse struct {
	UID string `kmip:"UniqueIdentifier"`
}

// activate moves a Pre-Active object to Active.
func activate(o *op, p *node) (any, error) {
	var req uidRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	rec, err := o.target(req.UID, signer.UseManage)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	date, err := prepareStored(def(kmip14.TagActivationDate), "", []*node{newDateTime(kmip14.TagActivationDate, now)})
	if err != nil {
		return nil, err
	}
	_, err = o.update(rec.ID, func(r *keymap.Record) error {
		if st := signer.EffectiveState(*r, now); st != keymap.PreActive {
			return wrongState(*r, st, "only Pre-Active objects can be activated")
		}
		r.State = keymap.Active
		date.apply(r)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return uidResponse{UID: rec.ID}, nil
}

type revokeRequest struct {
	UID                      *uidRef          `kmip:"UniqueIdentifier"`
	Reason                   revocationReason `kmip:"RevocationReason,required"`
	CompromiseOccurrenceDate *time.Time       `kmip:"CompromiseOccurrenceDate"`
}

// revoke deactivates an object, or marks it compromised when the reason says so.
func revoke(o *op, p *node) (any, error) {
	var req revokeRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	rec, err := o.target(req.UID, signer.UseManage)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	code := kmip14.RevocationReasonCode(req.Reason.Code)
	compromised := code == kmip14.RevocationReasonCodeKeyCompromise || code == kmip14.RevocationReasonCodeCACompromise
	reason := encodeStruct(kmip14.TagRevocationReason, req.Reason)
	if size, _ := measure(reason); size > maxValueBytes {
		return nil, kerr(rLimit, "a Revocation Reason of %d bytes exceeds the limit of %d bytes", size, maxValueBytes)
	}
	// The new values are encoded here, before the registry's lock: the update only assigns them.
	stored := []*node{newDateTime(kmip14.TagDeactivationDate, now), reason}
	if compromised {
		occurred := now
		if req.CompromiseOccurrenceDate != nil {
			occurred = *req.CompromiseOccurrenceDate
		}
		stored = []*node{newDateTime(kmip14.TagCompromiseDate, now), newDateTime(kmip14.TagCompromiseOccurrenceDate, occurred), reason}
	}
	changes := make([]storedChange, len(stored))
	for i, n := range stored {
		if changes[i], err = prepareStored(def(n.Tag), "", []*node{n}); err != nil {
			return nil, err
		}
	}
	_, err = o.update(rec.ID, func(r *keymap.Record) error {
		st := signer.EffectiveState(*r, now)
		switch {
		case st == keymap.Destroyed && !compromised, st == keymap.DestroyedCompromised:
			return wrongState(*r, st, "a destroyed object can only be marked compromised, once")
		case st == keymap.Destroyed:
			// KMIP's state machine: a destroyed key found compromised is Destroyed Compromised.
			r.State = keymap.DestroyedCompromised
			for _, c := range changes {
				c.apply(r)
			}
			return nil
		}
		if compromised {
			if st == keymap.Compromised {
				return wrongState(*r, st, "the object is already compromised")
			}
			r.State = keymap.Compromised
		} else {
			if st != keymap.Active && st != keymap.PreActive {
				return wrongState(*r, st, "only Pre-Active and Active objects can be revoked for this reason")
			}
			r.State = keymap.Deactivated
		}
		for _, c := range changes {
			c.apply(r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return uidResponse{UID: rec.ID}, nil
}

// destroy removes an object's material from its token; its metadata stays, as a Destroyed object
// (KMIP keeps destroyed objects' attributes). Active objects must be revoked first.
func destroy(o *op, p *node) (any, error) {
	var req uidRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	rec, err := o.target(req.UID, signer.UseManage)
	if err != nil {
		return nil, err
	}
	switch st := signer.EffectiveState(rec, time.Now()); st {
	case keymap.Active:
		return nil, wrongState(rec, st, "revoke it before destroying it")
	case keymap.Destroyed, keymap.DestroyedCompromised:
		// Its material is gone already; the metadata stays, and a second Destroy changes nothing.
		return nil, wrongState(rec, st, "it is already destroyed")
	}
	o.irreversible = true
	if err := o.s.reg.Destroy(o.ctx, o.caller, rec.ID); err != nil {
		return nil, err
	}
	return uidResponse{UID: rec.ID}, nil
}

func init() {
	register(kmip14.OperationCheck, v10, check)
}

type checkRequest struct {
	UID             *uidRef        `kmip:"UniqueIdentifier"`
	UsageLimitCount *int64         `kmip:"UsageLimitsCount"`
	UsageMask       *uint32        `kmip:"CryptographicUsageMask,int"`
	LeaseTime       *time.Duration `kmip:"LeaseTime"`
}

type checkResponse struct {
	UID       string  `kmip:"UniqueIdentifier"`
	UsageMask *uint32 `kmip:"CryptographicUsageMask,int"`
}

// check says whether an object may be used as the client intends: it exists, the caller may see
// it, and its usage mask (when it has one) allows the given bits. The server grants no leases and
// counts no usage, so those checks always pass.
func check(o *op, p *node) (any, error) {
	var req checkRequest
	if err := decodeStruct(p, &req); err != nil {
		return nil, err
	}
	rec, err := o.target(req.UID, signer.UseSee)
	if err != nil {
		return nil, err
	}
	if req.UsageMask != nil {
		if mask, ok := signer.UsageMask(rec); ok && mask&*req.UsageMask != *req.UsageMask {
			// A failed Check names what failed in its payload.
			return nil, &failure{payload: checkResponse{UID: rec.ID, UsageMask: req.UsageMask},
				error: kerr(rUsageMask, "object %s: its Cryptographic Usage Mask (%s) does not include %s", rec.ID,
					tagMaskName(kmip14.TagCryptographicUsageMask, mask), tagMaskName(kmip14.TagCryptographicUsageMask, *req.UsageMask))}
		}
	}
	return uidResponse{UID: rec.ID}, nil
}
