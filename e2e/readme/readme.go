package readme

import (
	"bufio"
	"fmt"
	"strings"
)

// The quick start's executable commands are the ```sh blocks between these two lines.
const (
	QuickStartBegin = "<!-- quickstart:begin -->"
	QuickStartEnd   = "<!-- quickstart:end -->"
)

// Section returns the text between the lines begin and end (exclusive), each of which must occur
// exactly once, begin first.
func Section(md, begin, end string) (string, error) {
	if n := strings.Count(md, begin); n != 1 {
		return "", fmt.Errorf("%q occurs %d times, want once", begin, n)
	}
	if n := strings.Count(md, end); n != 1 {
		return "", fmt.Errorf("%q occurs %d times, want once", end, n)
	}
	i := strings.Index(md, begin) + len(begin)
	j := strings.Index(md, end)
	if j < i {
		return "", fmt.Errorf("%q comes before %q", end, begin)
	}
	return md[i:j], nil
}

// Block is a fenced code block: its info string (sh, text, yaml, ...) and its lines.
type Block struct {
	Info string
	Line int // 1-based line of the opening fence in the text it came from
	Text string
}

// Blocks returns the fenced (```) code blocks of md, in order. An unclosed block is an error.
func Blocks(md string) ([]Block, error) {
	var out []Block
	var cur *Block
	var body []string
	sc := bufio.NewScanner(strings.NewReader(md))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		fence := strings.HasPrefix(strings.TrimSpace(line), "```")
		switch {
		case cur == nil && fence:
			cur = &Block{Info: strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "```")), Line: n}
			body = nil
		case cur != nil && fence:
			cur.Text = strings.Join(body, "\n") + "\n"
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			body = append(body, line)
		}
	}
	if cur != nil {
		return nil, fmt.Errorf("the code block opened on line %d is not closed", cur.Line)
	}
	return out, sc.Err()
}

// QuickStart returns the ```sh blocks of the quick start section, in order; lines are numbered
// as in md.
func QuickStart(md string) ([]Block, error) {
	sec, err := Section(md, QuickStartBegin, QuickStartEnd)
	if err != nil {
		return nil, err
	}
	offset := strings.Count(md[:strings.Index(md, QuickStartBegin)], "\n")
	blocks, err := Blocks(sec)
	if err != nil {
		return nil, err
	}
	var out []Block
	for _, b := range blocks {
		if b.Info == "sh" {
			b.Line += offset
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no ```sh block between %q and %q", QuickStartBegin, QuickStartEnd)
	}
	return out, nil
}

// Rows returns the rows of every Markdown table in md whose first cell is a code span, keyed by
// that code span (e.g. "spec.instances"), each as its trimmed cells. Code spans in later cells
// keep their backticks. A key that heads two rows is an error.
func Rows(md string) (map[string][]string, error) {
	rows := map[string][]string{}
	for _, line := range strings.Split(md, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") || !strings.HasSuffix(line, "|") {
			continue
		}
		cells := splitRow(line[1 : len(line)-1])
		first := cells[0]
		if len(first) < 3 || first[0] != '`' || first[len(first)-1] != '`' || strings.Count(first, "`") != 2 {
			continue
		}
		key := first[1 : len(first)-1]
		if _, dup := rows[key]; dup {
			return nil, fmt.Errorf("two table rows for %q", key)
		}
		rows[key] = cells
	}
	return rows, nil
}

// splitRow splits a table row's inside on '|' outside code spans (escaped \| stays in the cell).
func splitRow(s string) []string {
	var cells []string
	var b strings.Builder
	code := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && s[i+1] == '|':
			b.WriteByte('|')
			i++
		case c == '`':
			code = !code
			b.WriteByte(c)
		case c == '|' && !code:
			cells = append(cells, strings.TrimSpace(b.String()))
			b.Reset()
		default:
			b.WriteByte(c)
		}
	}
	return append(cells, strings.TrimSpace(b.String()))
}

// ShellQuote quotes s for bash literally: nothing in it is expanded (the quick start's runner
// prints each block's first line, which may hold a $(...) that reads a Secret).
func ShellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
