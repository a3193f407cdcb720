// Command p11bridge serves keys that never leave PKCS#11 tokens to KMIP clients and to MinIO
// through the KES API. It parses flags and calls package server; it wires nothing itself.
package main

import (
	"fmt"
	"io"
	"os"
)

// version is set at build time (-ldflags "-X main.version=…").
var version = "dev"

const usage = `p11bridge — keys in PKCS#11 tokens, served over KMIP and the KES API

Usage:
  p11bridge serve    --config FILE [--dev] [--max-in-flight N]
                                            run the server (SIGHUP reloads, SIGINT/SIGTERM stop);
                                            production checks apply unless --dev relaxes them;
                                            N bounds the key operations one identity has running (256)
  p11bridge reload   --config FILE [--wait] make the running server re-read its config (SIGHUP);
                                            --wait reports whether it was applied
  p11bridge status   --config FILE          per signer: keys by state, health, rollover (from the ops listener)
  p11bridge check    --config FILE [--dev]  validate the config, apply production checks, probe every
                                            token and say which KMIP and KES features it can back
  p11bridge dev      [--dir DIR] [--kmip ADDR] [--kes ADDR] [--ops ADDR]
                                            run on a SoftHSM2 token with generated certificates
  p11bridge keys list   --config FILE [--signer S]   list objects in the keymap
  p11bridge keys show   --config FILE ID             show one object
  p11bridge keys rebuild --config FILE --signer S [--dry-run]
                                            re-derive keymap rows from a token (server stopped)
  p11bridge keys rotate --config FILE NAME           add a new version of a KES key (server stopped)
  p11bridge keys share-kes --config FILE ID NAME     let KES use a KMIP-made AES key as NAME (server stopped; audited)
  p11bridge keymap export --config FILE --to NEW.csv    copy the keymap (CSV or PostgreSQL) into a new CSV file
  p11bridge keymap import --config FILE --from OLD.csv  copy a CSV keymap into the configured (empty) store
  p11bridge keymap migrate --config FILE             apply the PostgreSQL schema (servers also do at start)
                                            export and import read every row back and compare it
  p11bridge identity CERT.pem|API-KEY       print the identity (SHA-256 of the certificate's public key)
  p11bridge apikey                          make a KES API key (kes:v1:…) for MinIO; identity API-KEY names it
  p11bridge version                         version, Go toolchain, source revision, linked modules
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = cmdServe(args[1:], stderr)
	case "status":
		err = cmdStatus(args[1:], stdout)
	case "reload":
		err = cmdReload(args[1:], stdout)
	case "check":
		err = cmdCheck(args[1:], stdout)
	case "dev":
		err = cmdDev(args[1:], stdout, stderr)
	case "keys":
		err = cmdKeys(args[1:], stdout)
	case "keymap":
		err = cmdKeymap(args[1:], stdout)
	case "identity":
		err = cmdIdentity(args[1:], stdout)
	case "apikey":
		err = cmdAPIKey(args[1:], stdout)
	case "version", "--version":
		writeVersion(stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "p11bridge: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "p11bridge %s: %v\n", args[0], err)
		if _, ok := err.(usageError); ok {
			return 2
		}
		return 1
	}
	return 0
}

type usageError string

func (u usageError) Error() string { return string(u) }
