// Package version holds the build's version, set with -ldflags at build time.
package version

// Version is the pgwarden version; `make build` sets it from git describe.
var Version = "dev"
