package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	"github.com/p11bridge/p11bridge/conf"
)

// auditWriter is where the audit logger writes: the audit file (when configured) and the
// /v1/log/audit stream. It remembers whether the last write to the file failed, because with
// audit { required = true } a key operation that cannot be recorded must not happen.
//
// Front ends learn of a failure two ways. The record of an operation is written before (KMIP) or
// as (KES) the client is answered; a write that fails returns its error through the slog handler
// only when required is set, so the front end can fail that operation. And before running a key
// operation they call check, which refuses while the last write failed. Refused operations are
// still audited, so each refusal retries the file: the first write that succeeds ends the refusals
// without an operator having to do anything but free the disk. Reopening the file (SIGHUP) also
// ends them.
type auditWriter struct {
	file     *fileLog // nil without an audit path
	stream   *broadcast
	log      *slog.Logger
	required atomic.Bool
	failed   atomic.Pointer[error] // the last write error, nil after a write that succeeded
}

// errAuditUnavailable is what clients are told; the operator's log has the cause.
var errAuditUnavailable = errors.New("the audit log cannot be written and audit.required is set: key operations are refused until it can")

func (w *auditWriter) Write(p []byte) (int, error) {
	w.stream.send(p)
	if w.file == nil {
		return len(p), nil
	}
	if _, err := w.file.Write(p); err != nil {
		err = fmt.Errorf("write audit log %s: %w", w.file.path, err)
		if w.failed.Swap(&err) == nil {
			w.log.Error("audit log cannot be written", "err", err, "required", w.required.Load())
		}
		if w.required.Load() {
			return 0, err
		}
		// Not required: the request goes on; the failure is in the operator's log.
		return len(p), nil
	}
	if w.failed.Load() != nil && w.failed.Swap(nil) != nil {
		w.log.Info("audit log writable again")
	}
	return len(p), nil
}

// check is called by both front ends before a key operation.
func (w *auditWriter) check() error {
	if w.required.Load() && w.failed.Load() != nil {
		return errAuditUnavailable
	}
	return nil
}

// reopen starts a new file at the configured path (logrotate renames the old one, then sends
// SIGHUP). The old file stays in use when the new one cannot be opened.
func (w *auditWriter) reopen() error {
	if w.file == nil {
		return nil
	}
	if err := w.file.Reopen(); err != nil {
		return err
	}
	w.failed.Store(nil)
	return nil
}

func (w *auditWriter) close() {
	if w.file != nil {
		w.file.Close()
	}
}

// AuditOperator records an act of the operator at the command line (`keys share-kes`) in the
// configured audit log, in the servers' record format with identity "operator" and protocol "cli".
// Without an audit log it records nothing.
func AuditOperator(cfg *conf.Config, operation, key, result string) error {
	if cfg.Audit.Path == "" {
		return nil
	}
	line, err := json.Marshal(map[string]string{
		"time": time.Now().UTC().Format(time.RFC3339Nano), "level": "INFO", "msg": "cli",
		"identity": "operator", "protocol": "cli", "operation": operation, "key": key, "result": result,
	})
	if err != nil {
		return err
	}
	f, err := os.OpenFile(cfg.Audit.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("audit log %s: %w", cfg.Audit.Path, err)
	}
	_, err = f.Write(append(line, '\n'))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("audit log %s: %w", cfg.Audit.Path, err)
	}
	return nil
}
