package instance

import (
	"log/slog"
	"maps"
	"sync"

	"github.com/pgwarden/pgwarden/pkg/postgres"
)

// confStore is the one writer of the configuration files in PGDATA. Two
// goroutines change them — the parameters watcher (the user's parameters) and,
// in Kubernetes mode, the role controller (primary_conninfo and friends) — and
// each must write the other's part unchanged.
type confStore struct {
	dataDir string
	user    *postgres.User
	log     *slog.Logger

	mu  sync.Mutex
	cfg postgres.Config
}

func newConfStore(dataDir string, cfg postgres.Config, user *postgres.User, log *slog.Logger) *confStore {
	return &confStore{dataDir: dataDir, user: user, log: log, cfg: cfg}
}

// write writes the current configuration; changed reports whether any file changed.
func (c *confStore) write() (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return postgres.WriteConfig(c.dataDir, c.cfg, c.user)
}

// setParameters replaces the user's parameters and writes the files; on error
// nothing is kept.
func (c *confStore) setParameters(params map[string]string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := c.cfg
	next.Parameters = params
	changed, err := postgres.WriteConfig(c.dataDir, next, c.user)
	if err != nil {
		return false, err
	}
	c.cfg = next
	return changed, nil
}

// setManaged replaces the manager's extra settings (nil: none, a primary) and
// writes the files, then warns about ALTER SYSTEM settings that would
// override them (a clone or a rewind copies the source's postgresql.auto.conf).
func (c *confStore) setManaged(managed map[string]string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := c.cfg
	next.Managed = maps.Clone(managed)
	changed, err := postgres.WriteConfig(c.dataDir, next, c.user)
	if err != nil {
		return false, err
	}
	c.cfg = next
	warnAutoConf(c.log, c.dataDir, next.Managed)
	return changed, nil
}
