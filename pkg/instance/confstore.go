package instance

import (
	"log/slog"
	"maps"
	"sync"

	"github.com/pgwarden/pgwarden/pkg/postgres"
)

// confStore is the one writer of the configuration files in PGDATA. Two
// goroutines change them — the parameters watcher (the user's parameters and
// the operator's synchronous_standby_names) and, in Kubernetes mode, the role
// controller (primary_conninfo and friends) — and each must write the other's
// part unchanged.
type confStore struct {
	dataDir string
	user    *postgres.User
	log     *slog.Logger

	mu   sync.Mutex
	cfg  postgres.Config // Managed holds the role controller's settings only
	sync string          // synchronous_standby_names; "" for asynchronous
}

func newConfStore(dataDir string, cfg postgres.Config, sync string, user *postgres.User, log *slog.Logger) *confStore {
	return &confStore{dataDir: dataDir, user: user, log: log, cfg: cfg, sync: sync}
}

// render is what goes to disk: the role settings plus synchronous_standby_names.
func render(cfg postgres.Config, sync string) postgres.Config {
	if sync == "" {
		return cfg
	}
	cfg.Managed = maps.Clone(cfg.Managed)
	if cfg.Managed == nil {
		cfg.Managed = map[string]string{}
	}
	cfg.Managed["synchronous_standby_names"] = sync
	return cfg
}

// apply writes next with sync and keeps them when that worked.
func (c *confStore) apply(next postgres.Config, sync string) (bool, error) {
	changed, err := postgres.WriteConfig(c.dataDir, render(next, sync), c.user)
	if err != nil {
		return false, err
	}
	c.cfg, c.sync = next, sync
	return changed, nil
}

// write writes the current configuration; changed reports whether any file changed.
func (c *confStore) write() (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.apply(c.cfg, c.sync)
}

// setParameters replaces the user's parameters and writes the files; on error
// nothing is kept.
func (c *confStore) setParameters(params map[string]string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := c.cfg
	next.Parameters = params
	return c.apply(next, c.sync)
}

// setSynchronous replaces synchronous_standby_names ("" for asynchronous) and
// writes the files; on error nothing is kept.
func (c *confStore) setSynchronous(sync string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.apply(c.cfg, sync)
}

// setManaged replaces the manager's extra settings (nil: none, a primary) and
// writes the files, then warns about ALTER SYSTEM settings that would
// override them (a clone or a rewind copies the source's postgresql.auto.conf).
func (c *confStore) setManaged(managed map[string]string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	next := c.cfg
	next.Managed = maps.Clone(managed)
	changed, err := c.apply(next, c.sync)
	if err != nil {
		return false, err
	}
	warnAutoConf(c.log, c.dataDir, render(next, c.sync).Managed)
	return changed, nil
}
