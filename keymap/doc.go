// Package keymap is p11bridge's persistent map of managed objects: which
// token (signer) holds each key, under which 20-byte tag (CKA_ID), with
// which X.509 key identifier, name, lifecycle state, owner and attributes.
//
// # Model
//
// The file is an append-only log with one row per change of one record;
// the last row for an ID wins and a delete writes a tombstone row. Open
// reads the whole file into memory and keeps indexes by tag, key
// identifier and name; reads never touch the disk. Put and Delete return
// only after their row is written and fsynced, and only then make it
// visible to readers. Concurrent writers share fsyncs (group commit, see
// batch). Compact rewrites the file with the live rows only.
//
// Records returned by Get, ByTag, ByKeyID, ByName and Range are deep
// copies that the caller owns. The map's own copies are never modified
// once stored, so a lookup holds the read lock only to find one and copies
// it after. Put keeps its own copy too. Range walks a snapshot, so its
// callback may use the map, writes included.
//
// The file is locked (flock) while open, so a second process, or a second
// Open in this one, gets an error instead of interleaving writes. Close
// waits for queued writes; afterwards writes fail with ErrClosed and reads
// keep answering from memory.
//
// # Two stores
//
// Map is the CSV log described below, for one process. PG (pg.go) keeps the same rows in
// PostgreSQL for several instances of a cluster: each holds them in memory in a Map of its own and
// follows the database through a change feed; its writes are transactions (compare-and-set for
// Update), its named locks are advisory locks, and Fresh tells when it cannot confirm that its
// copy is current. Both offer Update, PutNew, Lock, Sync and Fresh (store.go), which the
// registry's Store interface names.
//
// # File format, version 1
//
// UTF-8 text, "\n" line ends, one row per physical line. Line 1 names the
// format and version, line 2 the columns:
//
//	#p11bridge-keymap v1
//	op,id,tag,signer,class,algorithm,size,keyid,name,state,owner,created,updated,attrs,crc32c
//	put,p11-0a1b,0a1b,hsm-a,secret-key,AES,256,,"minio, default",active,3f2e,2025-01-02T03:04:05.000000006Z,2025-01-02T03:04:05.000000006Z,"{""usage"":""12""}",4639cd8b
//	del,p11-0a1b,,,,,,,,,,,2025-01-03T00:00:00.000000000Z,,d9f78420
//
// A file with a version line of a higher version is refused (ErrVersion).
//
// Each row has 15 comma-separated fields:
//
//   - op: "put" (the record as of this row) or "del" (tombstone; only id
//     and updated are set, every other field is empty).
//   - id, signer, algorithm, name, owner: text fields, see below.
//   - tag, keyid: lowercase hex; keyid is empty when the record has none.
//   - class, state: the Class and State constants; state may be empty.
//   - size: decimal bits, 0 when not applicable.
//   - created, updated: RFC 3339 in UTC with nine fraction digits
//     (2006-01-02T15:04:05.000000000Z), or empty for the zero time. Other
//     RFC 3339 forms are accepted when reading.
//   - attrs: a JSON object of strings with sorted keys, {} when empty,
//     always quoted as a CSV field (so its quotes are doubled).
//   - crc32c: 8 lowercase hex digits, the CRC-32C (Castagnoli) of every
//     byte of the row before it, including the comma that precedes it.
//
// Fields follow RFC 4180 quoting: a field holding a comma or a double quote
// is enclosed in double quotes, and quotes inside are doubled. Unlike RFC
// 4180, a field never holds a line break, so that every row is one line,
// line numbers in errors are exact, and damage can never merge rows. Text
// fields therefore escape, before quoting: backslash as \\, LF as \n, CR
// as \r, tab as \t, other control bytes (below 0x20, and 0x7f) and bytes
// that are not valid UTF-8 as \xHH. Any byte string round-trips. The attrs
// JSON needs no such escaping: JSON already escapes control characters.
// Attribute names and values must be valid UTF-8 (JSON cannot carry
// anything else without altering it), so Put refuses others (ErrInvalid).
//
// Standard CSV readers read the file as one record per row; the header is
// two records of one and of 15 fields.
//
// # Damage and crashes
//
// A crash during a write can leave the last line torn: without its newline,
// or with a checksum that does not match. Such a row's fsync never
// returned, so no caller was told it was stored. Open drops it with a
// warning that logs its content, and the next write or compaction cuts it
// off the file. Any other bad line, or a last line whose checksum matches
// but whose content is invalid, makes Open fail with ErrCorrupt and a
// message naming the file and line: data that was acknowledged is never
// dropped silently. A file that is empty or holds only part of the header
// (a crash while creating it) is treated as empty.
//
// A tombstone for an unknown id is ignored when loading: it can be left by
// a Delete racing a failed write.
//
// # Compaction
//
// Compact writes the live rows, sorted by id, to a temporary file
// ".<name>.compact-*" in the same directory, fsyncs it, renames it over the
// keymap and fsyncs the directory. Rows committed while it runs are copied
// to the new file before the rename, so it never blocks readers and blocks
// writers only for that copy, an fsync and the rename. A crash leaves
// either the old or the new file in place, plus possibly a stale temporary
// file.
package keymap
