// Package cli is pgwarden's command line: cobra commands, flags and their
// environment-variable defaults. It parses and validates input and hands over
// to the packages that do the work; it holds no logic of its own.
package cli
