package postgres

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// ownedParameters are set by the manager only; the user's parameters must not
// contain them. Each has its reason.
var ownedParameters = map[string]string{
	"listen_addresses":          "the manager sets where postgres listens",
	"port":                      "the manager sets the port (--port)",
	"unix_socket_directories":   "the manager connects through its own socket directory",
	"data_directory":            "PGDATA is the manager's",
	"config_file":               "the manager owns the configuration files",
	"hba_file":                  "the manager writes pg_hba.conf",
	"ident_file":                "the manager owns the configuration files",
	"external_pid_file":         "the manager supervises the postmaster",
	"logging_collector":         "the manager re-emits postgres' stderr as JSON",
	"log_destination":           "the manager re-emits postgres' stderr as JSON",
	"log_line_prefix":           "the manager parses each log line's prefix",
	"password_encryption":       "pg_hba.conf requires scram-sha-256",
	"primary_conninfo":          "the manager points replicas at the primary",
	"primary_slot_name":         "the manager points replicas at the primary",
	"promote_trigger_file":      "only the manager promotes",
	"synchronous_standby_names": "the manager sets it from replication.synchronous",
	"hot_standby":               "replicas must serve reads and report their state",
	"wal_log_hints":             "pg_rewind needs it to rejoin a former primary",
	"recovery_target":           "a recovery target would stop a replica's replay",
	"recovery_target_action":    "a recovery target would stop a replica's replay",
	"recovery_target_inclusive": "a recovery target would stop a replica's replay",
	"recovery_target_lsn":       "a recovery target would stop a replica's replay",
	"recovery_target_name":      "a recovery target would stop a replica's replay",
	"recovery_target_time":      "a recovery target would stop a replica's replay",
	"recovery_target_timeline":  "replicas must follow the latest timeline",
	"recovery_target_xid":       "a recovery target would stop a replica's replay",
}

// restrictedParameters may be set by the user, but not to any value.
// Each returns why the value is refused, or "".
var restrictedParameters = map[string]func(v string) string{
	"wal_level": func(v string) string {
		switch strings.ToLower(v) {
		case "replica", "logical":
			return ""
		}
		return "replication needs wal_level replica or logical"
	},
	"full_page_writes": func(v string) string {
		if b, ok := parseBool(v); ok && b {
			return ""
		}
		return "pg_rewind needs full_page_writes on"
	},
	"max_wal_senders":       positiveInt("replication needs WAL senders"),
	"max_replication_slots": positiveInt("replication needs replication slots"),
}

// OwnedParameters returns, sorted, the parameters only the manager sets.
func OwnedParameters() []string {
	names := make([]string, 0, len(ownedParameters))
	for n := range ownedParameters {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func positiveInt(why string) func(string) string {
	return func(v string) string {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return ""
		}
		return "must be a positive integer: " + why
	}
}

// parseBool follows PostgreSQL's parse_bool: case-insensitive, and any
// unambiguous prefix of true, false, yes, no, on (2+ letters), off (2+ letters).
func parseBool(v string) (value, ok bool) {
	v = strings.ToLower(strings.TrimSpace(v))
	if v == "" {
		return false, false
	}
	prefixOf := func(word string, min int) bool { return len(v) >= min && strings.HasPrefix(word, v) }
	switch {
	case v == "1", prefixOf("true", 1), prefixOf("yes", 1), prefixOf("on", 2):
		return true, true
	case v == "0", prefixOf("false", 1), prefixOf("no", 1), prefixOf("off", 2) && v != "o":
		return false, true
	}
	return false, false
}

// ParameterError lists what is wrong with the user's parameters.
type ParameterError struct {
	Source   string   // a file name, or "" for parameters given in memory
	Problems []string // sorted, one per line or parameter
}

func (e *ParameterError) Error() string {
	where := "the user's parameters"
	if e.Source != "" {
		where = e.Source
	}
	return fmt.Sprintf("invalid PostgreSQL parameters in %s: %s", where, strings.Join(e.Problems, "; "))
}

// ValidateParameters checks names and refuses the parameters the manager owns
// (see OwnedParameters) and restricted values (wal_level below replica,
// full_page_writes off, max_wal_senders or max_replication_slots not positive).
// The error is a *ParameterError listing every problem.
func ValidateParameters(params map[string]string) error {
	var problems []string
	for name, value := range params {
		if p := checkParameter(name, value); p != "" {
			problems = append(problems, p)
		}
	}
	if len(problems) > 0 {
		sort.Strings(problems)
		return &ParameterError{Problems: problems}
	}
	return nil
}

func checkParameter(name, value string) string {
	if !validName(name) {
		return fmt.Sprintf("%q is not a valid parameter name", name)
	}
	if name != strings.ToLower(name) {
		return fmt.Sprintf("%q must be written in lower case", name)
	}
	if why, ok := ownedParameters[name]; ok {
		return fmt.Sprintf("%s is set by pgwarden (%s)", name, why)
	}
	if strings.HasPrefix(name, "recovery_target") {
		return fmt.Sprintf("%s is refused (recovery targets would stop a replica's replay)", name)
	}
	if strings.IndexByte(value, 0) >= 0 {
		return fmt.Sprintf("%s: value contains a NUL byte", name)
	}
	if check, ok := restrictedParameters[name]; ok {
		if why := check(value); why != "" {
			return fmt.Sprintf("%s = %s is refused: %s", name, quoteValue(value), why)
		}
	}
	return ""
}

// validName accepts what postgresql.conf's lexer accepts as a name: an
// identifier, or two identifiers joined by a dot (a custom parameter such as
// auto_explain.log_min_duration). Identifiers are ASCII here.
func validName(name string) bool {
	parts := strings.Split(name, ".")
	if len(parts) > 2 {
		return false
	}
	for _, p := range parts {
		if p == "" || !isLetter(p[0]) {
			return false
		}
		for i := 1; i < len(p); i++ {
			if !isLetter(p[i]) && !isDigit(p[i]) && p[i] != '$' {
				return false
			}
		}
	}
	return true
}

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' }
func isDigit(c byte) bool  { return c >= '0' && c <= '9' }

// quoteValue renders v as a postgresql.conf string literal: in single quotes,
// with ' doubled and backslash, newline, carriage return, tab, backspace and
// form feed escaped with a backslash (as GUC_scanstr reads them back).
func quoteValue(v string) string {
	var b strings.Builder
	b.WriteByte('\'')
	for i := 0; i < len(v); i++ {
		switch c := v[i]; c {
		case '\'':
			b.WriteString("''")
		case '\\':
			b.WriteString(`\\`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
	return b.String()
}

// ReadParametersFile reads the user's parameters from a file in postgresql.conf syntax.
func ReadParametersFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read PostgreSQL parameters: %w", err)
	}
	defer f.Close()
	params, err := ParseParameters(f)
	if pe, ok := err.(*ParameterError); ok {
		pe.Source = path
	}
	return params, err
}

// ParseParameters reads the user's parameters in postgresql.conf syntax:
// `name = value` or `name value`, values bare or in single quotes, # comments.
// Names are case-insensitive and returned in lower case; a later line wins, as
// in postgres. Include directives are refused, and so is everything
// ValidateParameters refuses. Any problem gives a *ParameterError listing all
// of them, and no parameters.
func ParseParameters(r io.Reader) (map[string]string, error) {
	params := make(map[string]string)
	lineOf := make(map[string]int)
	var problems []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		name, value, ok, err := parseLine(sc.Text())
		if err != nil {
			problems = append(problems, fmt.Sprintf("line %d: %v", n, err))
			continue
		}
		if !ok {
			continue
		}
		name = strings.ToLower(name)
		switch name {
		case "include", "include_if_exists", "include_dir":
			problems = append(problems, fmt.Sprintf("line %d: %s directives are not supported: put every parameter in this file", n, name))
			continue
		}
		params[name] = value
		lineOf[name] = n
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read PostgreSQL parameters: %w", err)
	}
	for name, value := range params {
		if p := checkParameter(name, value); p != "" {
			problems = append(problems, fmt.Sprintf("line %d: %s", lineOf[name], p))
		}
	}
	if len(problems) > 0 {
		sort.SliceStable(problems, func(i, j int) bool { return lineNumber(problems[i]) < lineNumber(problems[j]) })
		return nil, &ParameterError{Problems: problems}
	}
	return params, nil
}

func lineNumber(problem string) int {
	var n int
	fmt.Sscanf(problem, "line %d:", &n)
	return n
}

// parseLine parses one line of postgresql.conf. ok is false for a blank or
// comment line.
func parseLine(line string) (name, value string, ok bool, err error) {
	s := strings.TrimLeft(line, " \t\r\f\v")
	if s == "" || s[0] == '#' {
		return "", "", false, nil
	}
	i := 0
	for i < len(s) && (isLetter(s[i]) || isDigit(s[i]) || s[i] == '$' || s[i] == '.') {
		i++
	}
	name = s[:i]
	if name == "" || !validName(name) {
		return "", "", false, fmt.Errorf("expected a parameter name")
	}
	s = s[i:]
	if s != "" && strings.IndexByte(" \t\r\f\v=#", s[0]) < 0 {
		return "", "", false, fmt.Errorf("%s%s: expected = or a blank after the name", name, truncate(s, 10))
	}
	s = strings.TrimLeft(s, " \t\r\f\v")
	if strings.HasPrefix(s, "=") {
		s = strings.TrimLeft(s[1:], " \t\r\f\v")
	}
	if s == "" || s[0] == '#' {
		return "", "", false, fmt.Errorf("%s: missing value", name)
	}
	var rest string
	if s[0] == '\'' {
		value, rest, err = unquote(s)
		if err != nil {
			return "", "", false, fmt.Errorf("%s: %v", name, err)
		}
	} else {
		j := 0
		for j < len(s) && isBareValueChar(s[j]) {
			j++
		}
		if j == 0 {
			return "", "", false, fmt.Errorf("%s: unexpected %q: put the value in single quotes", name, s[:1])
		}
		value, rest = s[:j], s[j:]
	}
	rest = strings.TrimLeft(rest, " \t\r\f\v")
	if rest != "" && rest[0] != '#' {
		return "", "", false, fmt.Errorf("%s: unexpected %q after the value: put the value in single quotes", name, truncate(rest, 20))
	}
	return name, value, true, nil
}

// isBareValueChar: the characters of an unquoted value (an identifier, a
// number with a unit, or an unquoted string such as /path/x or 0.5).
func isBareValueChar(c byte) bool {
	return isLetter(c) || isDigit(c) || strings.IndexByte("-+._:/", c) >= 0 || c >= 0x80
}

// unquote reads a single-quoted literal at the start of s, as GUC_scanstr does:
// ” is a quote; \b \f \n \r \t and up to three octal digits are escapes; a
// backslash before any other character stands for that character.
func unquote(s string) (value, rest string, err error) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\'':
			if i+1 < len(s) && s[i+1] == '\'' {
				b.WriteByte('\'')
				i++
				continue
			}
			return b.String(), s[i+1:], nil
		case c == '\\' && i+1 < len(s):
			i++
			switch e := s[i]; e {
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case '0', '1', '2', '3', '4', '5', '6', '7':
				v := int(e - '0')
				for k := 0; k < 2 && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '7'; k++ {
					i++
					v = v*8 + int(s[i]-'0')
				}
				if v == 0 || v > 0xff {
					return "", "", fmt.Errorf("bad octal escape in quoted value")
				}
				b.WriteByte(byte(v))
			default:
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", "", fmt.Errorf("unterminated quoted value")
}
