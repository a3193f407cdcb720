package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"reflect"
	"time"

	"github.com/p11bridge/p11bridge/conf"
	"github.com/p11bridge/p11bridge/keymap"
	"github.com/p11bridge/p11bridge/server"
	"github.com/p11bridge/p11bridge/signer"
)

// cmdKeymap moves rows between the CSV map and PostgreSQL, and applies the PostgreSQL schema.
func cmdKeymap(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError("keymap needs export, import or migrate")
	}
	fs := flags("keymap " + args[0])
	path := fs.String("config", "", "config file")
	to := fs.String("to", "", "export: the new CSV keymap to write")
	from := fs.String("from", "", "import: the CSV keymap to read")
	cfg, err := loadConfig(fs, args[1:], path)
	if err != nil {
		return err
	}
	switch args[0] {
	case "export":
		if *to == "" {
			return usageError("keymap export --config FILE --to NEW.csv")
		}
		return keymapExport(cfg, *to, stdout)
	case "import":
		if *from == "" {
			return usageError("keymap import --config FILE --from KEYMAP.csv")
		}
		return keymapImport(cfg, *from, stdout)
	case "migrate":
		if cfg.Keymap.Postgres.Reveal() == "" {
			return fmt.Errorf("the config keeps its keymap in a CSV file (%s); migrate applies to PostgreSQL", cfg.Keymap.Path)
		}
		km, err := server.OpenStore(cfg, server.StoreWrite, nil, version)
		if err != nil {
			return err
		}
		defer km.Close()
		fmt.Fprintf(stdout, "keymap %s: schema at version %d, %d rows\n", km.Location(), keymap.SchemaVersion, km.Len())
		return nil
	}
	return usageError("keymap needs export, import or migrate")
}

// keymapExport copies the configured store's live rows into a new CSV keymap and reads them back.
func keymapExport(cfg *conf.Config, to string, stdout io.Writer) error {
	if _, err := os.Stat(to); !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s exists; export writes a new file only", to)
	}
	src, err := server.OpenStore(cfg, server.StoreRead, nil, version)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := keymap.Open(to, nil)
	if err != nil {
		return err
	}
	n, err := copyRows(src, dst.Put)
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("export to %s: %w (the file is incomplete: remove it)", to, err)
	}
	check, err := keymap.OpenReadOnly(to, nil)
	if err != nil {
		return err
	}
	if err := verifyRows(src, check); err != nil {
		return fmt.Errorf("export to %s: %w", to, err)
	}
	fmt.Fprintf(stdout, "exported %d rows from %s %s to %s; every row read back identical\n", n, src.Kind(), src.Location(), to)
	return nil
}

// keymapImport copies a CSV keymap's live rows into the configured store, which must hold none,
// then reads the store again and compares row by row.
func keymapImport(cfg *conf.Config, from string, stdout io.Writer) error {
	src, err := keymap.OpenReadOnly(from, nil)
	if err != nil {
		return err
	}
	dst, err := server.OpenStore(cfg, server.StoreWrite, nil, version)
	if err != nil {
		return err
	}
	if n := dst.Len(); n > 0 {
		dst.Close()
		return fmt.Errorf("the configured keymap (%s %s) already holds %d rows; import fills an empty store only", dst.Kind(), dst.Location(), n)
	}
	n, err := copyRows(src, dst.PutNew)
	dst.Close()
	if err != nil {
		return fmt.Errorf("import into %s %s: %w (after %d rows)", dst.Kind(), dst.Location(), err, n)
	}
	check, err := server.OpenStore(cfg, server.StoreRead, nil, version)
	if err != nil {
		return err
	}
	defer check.Close()
	if err := verifyRows(src, check); err != nil {
		return fmt.Errorf("import into %s %s: %w", dst.Kind(), dst.Location(), err)
	}
	fmt.Fprintf(stdout, "imported %d rows from %s into %s %s; every row read back identical\n", n, from, check.Kind(), check.Location())
	return nil
}

type ranger interface {
	Range(func(keymap.Record) bool)
	Get(string) (keymap.Record, bool)
	Len() int
}

func copyRows(src ranger, put func(keymap.Record) error) (int, error) {
	n := 0
	var err error
	src.Range(func(r keymap.Record) bool {
		if err = put(r); err != nil {
			err = fmt.Errorf("row %q: %w", r.ID, err)
			return false
		}
		n++
		return true
	})
	return n, err
}

// verifyRows compares every row of want with got, field by field, and their counts.
func verifyRows(want, got ranger) error {
	var err error
	want.Range(func(r keymap.Record) bool {
		g, ok := got.Get(r.ID)
		switch {
		case !ok:
			err = fmt.Errorf("row %q is missing from the copy", r.ID)
		case !reflect.DeepEqual(g, r):
			err = fmt.Errorf("row %q differs in the copy:\n  source %+v\n  copy   %+v", r.ID, r, g)
		}
		return err == nil
	})
	if err == nil && got.Len() != want.Len() {
		err = fmt.Errorf("the copy holds %d rows, the source %d", got.Len(), want.Len())
	}
	return err
}

// checkStore says which keymap store the config names and whether it can be used.
func checkStore(cfg *conf.Config, stdout io.Writer) error {
	if cfg.Keymap.Postgres.Reveal() == "" {
		if _, err := os.Stat(cfg.Keymap.Path); errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(stdout, "keymap: csv %s (created at the first start)\n", cfg.Keymap.Path)
			return nil
		}
		km, err := keymap.OpenReadOnly(cfg.Keymap.Path, nil)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "keymap: csv %s, %d rows\n", cfg.Keymap.Path, km.Len())
		return nil
	}
	km, err := server.OpenStore(cfg, server.StoreRead, nil, version)
	if errors.Is(err, keymap.ErrNotFound) {
		fmt.Fprintf(stdout, "keymap: postgres, no p11bridge schema yet: the first server creates it (or p11bridge keymap migrate)\n")
		return nil
	}
	if err != nil {
		return err
	}
	defer km.Close()
	fmt.Fprintf(stdout, "keymap: postgres %s, schema version %d, %d rows", km.Location(), keymap.SchemaVersion, km.Len())
	if pg, ok := km.(*keymap.PG); ok {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st := pg.Status(ctx)
		cancel()
		fmt.Fprintf(stdout, ", %d instances seen in the last minute", len(st.Instances))
		for _, in := range st.Instances {
			fmt.Fprintf(stdout, "\n  instance %s on %s (pid %d, %s), seen %s ago, %d changes behind", in.Instance, in.Host, in.PID, in.Version,
				time.Since(in.Seen).Round(time.Millisecond), in.Behind)
		}
	}
	fmt.Fprintln(stdout)
	return nil
}

var _ ranger = signer.Store(nil)
