package postgres

// Env is the complete environment for postgres and the other PostgreSQL
// programs the manager starts: nothing of the manager's own environment (which
// may hold secrets) is passed on.
func Env(b Bin, u *User) []string { return minimalEnv(b, u) }
