package postgres

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// CloneOptions are the inputs of Clone.
type CloneOptions struct {
	// DataDir is the data directory to create; it must be missing or empty.
	DataDir string
	// Host and Port are the server to copy (the primary; a standby works too).
	Host string
	Port int
	// User is the replication role; Passfile (absolute) holds its password
	// (see WritePassfile) and must be readable by RunAs.
	User     string
	Passfile string
	// RunAs runs pg_basebackup and owns the files; nil runs as the current
	// user, which must then not be root.
	RunAs *User
	// ApplicationName is how the copy shows in the source's
	// pg_stat_replication while it runs; optional.
	ApplicationName string
}

// Clone copies a running server into DataDir with pg_basebackup: WAL streamed
// alongside (-X stream), so the copy is consistent without an archive; a fast
// checkpoint on the source, so the copy starts at once; and no backup
// manifest left in PGDATA. The password comes from the passfile, never from an
// argument or the environment.
//
// Clone does not use -R: it would write primary_conninfo into
// postgresql.auto.conf, which overrides the manager's pgwarden.conf. The copy
// holds the source's configuration files (and postgresql.auto.conf), so before
// starting it the caller writes its own configuration (WriteConfig with
// StandbyConfig.Settings in Config.Managed), checks AutoConfOverrides, and
// writes standby.signal (WriteStandbySignal).
//
// Everything is checked before anything is created. Missing directories are
// created (the data directory 0700, parents 0755, owned by RunAs). If
// pg_basebackup fails (a *CommandError with its output) or ctx ends, what
// Clone created is removed: the outermost directory it made, or the content of
// a data directory that existed empty.
func Clone(ctx context.Context, bin Bin, opts CloneOptions) error {
	plan, err := planClone(bin, opts)
	if err != nil {
		return fmt.Errorf("cannot clone: %w", err)
	}
	if err := plan.run(ctx); err != nil {
		return fmt.Errorf("cannot clone %s:%d into %s: %w", opts.Host, opts.Port, plan.dataDir, err)
	}
	return nil
}

type clonePlan struct {
	opts    CloneOptions
	bin     Bin
	dataDir string
	missing []string // directories to create, outermost first (the last is dataDir)
}

func planClone(bin Bin, opts CloneOptions) (*clonePlan, error) {
	if opts.DataDir == "" {
		return nil, errors.New("no data directory given")
	}
	dataDir, err := filepath.Abs(opts.DataDir)
	if err != nil {
		return nil, err
	}
	p := &clonePlan{opts: opts, bin: bin, dataDir: filepath.Clean(dataDir)}
	if err := checkUpstream(opts.Host, opts.Port, opts.User, opts.Passfile); err != nil {
		return nil, err
	}
	if err := checkPassfile(opts.Passfile); err != nil {
		return nil, err
	}
	if opts.RunAs == nil && geteuid() == 0 {
		return nil, errors.New("pg_basebackup must not run as root: give the user to run it as")
	}
	if err := checkReplicationMajor(bin); err != nil {
		return nil, err
	}
	if err := checkExecutable(bin.Path("pg_basebackup")); err != nil {
		return nil, err
	}
	state, err := InspectDataDir(p.dataDir, bin.Major)
	if err != nil {
		return nil, err
	}
	if state != Empty {
		return nil, &AlreadyInitializedError{Dir: p.dataDir}
	}
	for d := p.dataDir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err == nil {
			if !fi.IsDir() {
				return nil, fmt.Errorf("%s is not a directory", d)
			}
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		p.missing = append([]string{d}, p.missing...)
	}
	return p, nil
}

// checkPassfile: the passfile must be an absolute path to a regular file.
// (libpq ignores one that others can read; WritePassfile writes it 0600.)
func checkPassfile(path string) error {
	if !filepath.IsAbs(path) {
		return fmt.Errorf("passfile %q is not an absolute path", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("cannot use passfile: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("passfile %s is not a regular file", path)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("passfile %s has mode %v: libpq ignores a passfile others can access (make it 0600)", path, fi.Mode().Perm())
	}
	return nil
}

func (p *clonePlan) run(ctx context.Context) (err error) {
	removeOnFailure, clearOnFailure := "", len(p.missing) == 0
	defer func() {
		switch {
		case err == nil:
		case removeOnFailure != "":
			os.RemoveAll(removeOnFailure)
		case clearOnFailure:
			clearDir(p.dataDir)
		}
	}()
	for i, d := range p.missing {
		mode := os.FileMode(0o755) // parents: others must traverse them
		if i == len(p.missing)-1 {
			mode = 0o700
		}
		if err := os.Mkdir(d, mode); err != nil {
			return err
		}
		if i == 0 {
			removeOnFailure = d
		}
		if err := os.Chmod(d, mode); err != nil { // the umask may have narrowed it
			return err
		}
		if err := p.opts.RunAs.Chown(d); err != nil {
			return err
		}
	}
	if len(p.missing) == 0 {
		// An empty directory that exists, often a mount point: postgres
		// refuses a data directory others can access.
		if err := os.Chmod(p.dataDir, 0o700); err != nil {
			return err
		}
		if err := p.opts.RunAs.Chown(p.dataDir); err != nil {
			return err
		}
	}
	_, err = runTool(ctx, p.bin, p.opts.RunAs, "pg_basebackup",
		"--pgdata="+p.dataDir,
		"--wal-method=stream",
		"--checkpoint=fast",
		"--no-manifest",
		"--no-password",
		"--dbname="+libpqConninfo(p.opts.Host, p.opts.Port, p.opts.User, p.opts.Passfile, "", p.opts.ApplicationName),
	)
	if err != nil {
		return err
	}
	state, err := InspectDataDir(p.dataDir, p.bin.Major)
	if err != nil {
		return fmt.Errorf("pg_basebackup succeeded but: %w", err)
	}
	if state != Existing {
		return fmt.Errorf("pg_basebackup succeeded but the data directory is %s", state)
	}
	return nil
}
