package probes

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// Messages as a PostgreSQL 15 server sends them.
var (
	authOK   = msg('R', u32(0))
	authSASL = msg('R', u32(10), []byte("SCRAM-SHA-256\x00\x00"))
	authMD5  = msg('R', u32(5), []byte{1, 2, 3, 4})
)

func msg(kind byte, parts ...[]byte) []byte {
	body := bytes.Join(parts, nil)
	out := []byte{kind, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(out[1:], uint32(4+len(body)))
	return append(out, body...)
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// errorResponse builds an ErrorResponse from alternating field codes and values.
func errorResponse(fields ...string) []byte {
	var body []byte
	for i := 0; i+1 < len(fields); i += 2 {
		body = append(body, fields[i][0])
		body = append(body, fields[i+1]...)
		body = append(body, 0)
	}
	return msg('E', append(body, 0))
}

func pgError(code, text string) []byte {
	return errorResponse("S", "FATAL", "V", "FATAL", "C", code, "M", text, "F", "postmaster.c", "L", "2345", "R", "ProcessStartupPacket")
}

func TestReadReply(t *testing.T) {
	lenField := func(b []byte, n int32) []byte {
		b = bytes.Clone(b)
		binary.BigEndian.PutUint32(b[1:5], uint32(n))
		return b
	}
	tests := []struct {
		name string
		in   []byte
		want reply
	}{
		{"AuthenticationOk (trust)", authOK, reply{verdict: Accepting, authOK: true}},
		{"AuthenticationSASL", authSASL, reply{verdict: Accepting}},
		{"AuthenticationMD5Password", authMD5, reply{verdict: Accepting}},
		{"starting up", pgError("57P03", "the database system is starting up"), reply{verdict: Rejecting}},
		{"not yet accepting", pgError("57P03", "the database system is not yet accepting connections"), reply{verdict: Rejecting}},
		{"shutting down", pgError("57P03", "the database system is shutting down"), reply{verdict: Rejecting}},
		{"too many clients", pgError("53300", "sorry, too many clients already"), reply{verdict: Accepting}},
		{"pg_hba reject", pgError("28000", "no pg_hba.conf entry"), reply{verdict: Accepting}},
		{"unknown database", pgError("3D000", `database "x" does not exist`), reply{verdict: Accepting}},
		{"SQLSTATE cut to 5 bytes like libpq", errorResponse("C", "57P03XYZ"), reply{verdict: Rejecting}},
		{"short SQLSTATE", errorResponse("C", "57P0"), reply{verdict: NoResponse}},
		{"empty SQLSTATE", errorResponse("C", ""), reply{verdict: NoResponse}},
		{"no SQLSTATE", errorResponse("S", "FATAL", "M", "boom"), reply{verdict: NoResponse}},
		{"last SQLSTATE wins", errorResponse("C", "57P03", "C", "28000"), reply{verdict: Accepting}},
		{"SQLSTATE before a malformed field counts", msg('E', []byte("C57P03\x00Mno terminator")), reply{verdict: Rejecting}},
		{"malformed before SQLSTATE", msg('E', []byte("Mno terminator C57P03")), reply{verdict: NoResponse}},
		{"pre-3.0 error (fork failure)", []byte("Ecould not fork new process for connection: Resource temporarily unavailable\n\x00"), reply{verdict: NoResponse}},
		{"error length too small", lenField(pgError("57P03", "x"), 7), reply{verdict: NoResponse}},
		{"error length too large", lenField(pgError("57P03", "x"), 30001), reply{verdict: NoResponse}},
		{"negative length", lenField(pgError("57P03", "x"), -1), reply{verdict: NoResponse}},
		{"auth length too large", lenField(authOK, 2001), reply{verdict: NoResponse}},
		{"auth length too small", lenField(authOK, 7), reply{verdict: NoResponse}},
		{"truncated auth", authOK[:7], reply{verdict: NoResponse}},
		{"truncated error", pgError("57P03", "x")[:20], reply{verdict: NoResponse}},
		{"NegotiateProtocolVersion", msg('v', u32(0), u32(0)), reply{verdict: NoResponse}},
		{"SSL answer out of place", []byte("N"), reply{verdict: NoResponse}},
		{"HTTP server", []byte("HTTP/1.1 400 Bad Request\r\n\r\n"), reply{verdict: NoResponse}},
		{"EOF", nil, reply{verdict: NoResponse}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := readReply(bytes.NewReader(tt.in))
			if diff := cmp.Diff(tt.want, got, cmp.AllowUnexported(reply{})); diff != "" {
				t.Errorf("readReply(%q) mismatch (-want +got):\n%s", tt.in, diff)
			}
			if m := modelVerdict(tt.in); m != got.verdict {
				t.Errorf("model says %v, readReply says %v", m, got.verdict)
			}
		})
	}
}

// modelVerdict is a second, slice-based reading of libpq's rules (PostgreSQL 15
// fe-connect.c CONNECTION_AWAITING_RESPONSE, fe-protocol3.c pqGetErrorNotice3,
// fe-connect.c internal_ping), used to cross-check the streaming parser.
func modelVerdict(b []byte) Verdict {
	if len(b) < 5 {
		return NoResponse
	}
	n := int(int32(binary.BigEndian.Uint32(b[1:5])))
	switch b[0] {
	case 'R':
		if n < 8 || n > 2000 || len(b) < 1+n {
			return NoResponse
		}
		return Accepting // auth_req_received
	case 'E':
		if n < 8 || n > 30000 || len(b) < 1+n {
			return NoResponse
		}
		lastSQLSTATE := ""
		fields := b[5 : 1+n]
		for len(fields) > 0 && fields[0] != 0 {
			value, rest, ok := bytes.Cut(fields[1:], []byte{0})
			if !ok {
				break
			}
			if fields[0] == 'C' {
				lastSQLSTATE = string(value[:min(len(value), 5)]) // strlcpy into char[6]
			}
			fields = rest
		}
		switch {
		case len(lastSQLSTATE) != 5:
			return NoResponse
		case lastSQLSTATE == "57P03":
			return Rejecting
		}
		return Accepting
	}
	return NoResponse
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

func FuzzReadReply(f *testing.F) {
	for _, seed := range [][]byte{
		authOK, authSASL, authMD5,
		pgError("57P03", "the database system is starting up"),
		pgError("28P01", "password authentication failed"),
		errorResponse("C", "57P03XYZ"),
		msg('E', []byte("C57P03\x00Mno terminator")),
		[]byte("Ecould not fork new process for connection\n\x00"),
		msg('v', u32(0), u32(0)),
		{'N'}, {},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cr := &countingReader{r: bytes.NewReader(data)}
		got := readReply(cr)
		if want := modelVerdict(data); got.verdict != want {
			t.Fatalf("readReply(%q) = %v, model says %v", data, got.verdict, want)
		}
		if got.authOK && (got.verdict != Accepting || data[0] != 'R') {
			t.Fatalf("authOK without an authentication request: %q", data)
		}
		// It never reads past the first message, nor more than an error's limit.
		if len(data) >= 5 {
			if n := int(int32(binary.BigEndian.Uint32(data[1:5]))); n >= 4 && cr.n > 1+n {
				t.Fatalf("read %d bytes of a %d-byte message", cr.n, 1+n)
			}
		}
		if cr.n > 1+maxErrorLen {
			t.Fatalf("read %d bytes", cr.n)
		}
		// Whatever follows the first message does not change the verdict.
		more := append(bytes.Clone(data), "trailing garbage\x00"...)
		if got.verdict != NoResponse {
			if v := readReply(bytes.NewReader(more)).verdict; v != got.verdict {
				t.Fatalf("trailing bytes changed the verdict from %v to %v", got.verdict, v)
			}
		}
	})
}

func TestVerdictStrings(t *testing.T) {
	got := map[string]int{}
	for _, v := range []Verdict{Accepting, Rejecting, NoResponse} {
		got[v.String()] = v.ExitCode()
	}
	want := map[string]int{"accepting connections": 0, "rejecting connections": 1, "no response": 2}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("strings and exit codes (-want +got):\n%s", diff)
	}
	if Verdict(0) != NoResponse {
		t.Error("the zero Verdict must be NoResponse")
	}
}

func TestStartupMessage(t *testing.T) {
	m := startupMessage
	if n := int(binary.BigEndian.Uint32(m)); n != len(m) {
		t.Fatalf("length field %d, message %d bytes", n, len(m))
	}
	if v := binary.BigEndian.Uint32(m[4:]); v != 3<<16 {
		t.Fatalf("protocol %#x, want 3.0", v)
	}
	want := "user\x00postgres\x00database\x00postgres\x00application_name\x00pgwarden-ping\x00\x00"
	if got := string(m[8:]); got != want {
		t.Fatalf("parameters %q, want %q", got, want)
	}
}

// fakeServer listens on network ("tcp" or "unix") and runs serve for every
// connection; it returns the address to Ping.
func fakeServer(t *testing.T, network string, serve func(net.Conn)) string {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), ".s.PGSQL.5432")
	}
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return l.Addr().String()
}

// readStartup reads a StartupMessage; it returns nil on error.
func readStartup(c net.Conn) []byte {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var n [4]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return nil
	}
	b := make([]byte, binary.BigEndian.Uint32(n[:])-4)
	if _, err := io.ReadFull(c, b); err != nil {
		return nil
	}
	return append(n[:], b...)
}

func TestPingFakeServers(t *testing.T) {
	silent := func(c net.Conn) { _, _ = io.Copy(io.Discard, c) } // until the client leaves
	answer := func(b []byte) func(net.Conn) {
		return func(c net.Conn) {
			if readStartup(c) != nil {
				_, _ = c.Write(b)
			}
		}
	}
	tests := []struct {
		name  string
		serve func(net.Conn)
		want  Verdict
	}{
		{"silent", silent, NoResponse},
		{"closes at once", func(net.Conn) {}, NoResponse},
		{"closes after startup", func(c net.Conn) { readStartup(c) }, NoResponse},
		{"starting up", answer(pgError("57P03", "the database system is starting up")), Rejecting},
		{"password required", answer(authSASL), Accepting},
		{"too many clients", answer(pgError("53300", "sorry, too many clients already")), Accepting},
		{"garbage", answer([]byte("SSH-2.0-OpenSSH_9.2\r\n")), NoResponse},
		{"half a message then silence", func(c net.Conn) {
			if readStartup(c) != nil {
				_, _ = c.Write(authSASL[:6])
				silent(c)
			}
		}, NoResponse},
	}
	for _, network := range []string{"tcp", "unix"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				addr := fakeServer(t, network, tt.serve)
				const bound = 300 * time.Millisecond
				ctx, cancel := context.WithTimeout(context.Background(), bound)
				defer cancel()
				start := time.Now()
				got := Ping(ctx, network, addr)
				took := time.Since(start)
				if got != tt.want {
					t.Errorf("Ping = %v, want %v", got, tt.want)
				}
				if took > bound+200*time.Millisecond {
					t.Errorf("Ping took %s, bound %s", took, bound)
				}
			})
		}
	}
}

// TestPingTerminatesPolitely: after AuthenticationOk the ping sends Terminate
// and waits for the server to close; after a password request it just leaves.
func TestPingTerminatesPolitely(t *testing.T) {
	type seen struct {
		startup []byte
		after   []byte
	}
	for _, tt := range []struct {
		name      string
		auth      []byte
		wantAfter []byte
	}{
		{"trust", authOK, terminateMessage},
		{"password", authSASL, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := make(chan seen, 1)
			addr := fakeServer(t, "unix", func(c net.Conn) {
				var s seen
				s.startup = readStartup(c)
				_, _ = c.Write(tt.auth)
				if bytes.Equal(tt.auth, authOK) {
					// What a backend sends before it reads the Terminate.
					_, _ = c.Write(msg('Z', []byte("I")))
				}
				s.after, _ = io.ReadAll(c) // until the client half-closes or closes
				got <- s
			})
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			if v := Ping(ctx, "unix", addr); v != Accepting {
				t.Fatalf("Ping = %v, want Accepting", v)
			}
			select {
			case s := <-got:
				if !bytes.Equal(s.startup, startupMessage) {
					t.Errorf("server got startup %q, want %q", s.startup, startupMessage)
				}
				if !bytes.Equal(s.after, tt.wantAfter) {
					t.Errorf("after authentication server got %q, want %q", s.after, tt.wantAfter)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("fake server never saw the client leave")
			}
		})
	}
}

func TestPingNothingListening(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if v := Ping(ctx, "unix", filepath.Join(t.TempDir(), ".s.PGSQL.5432")); v != NoResponse {
		t.Errorf("missing socket: %v", v)
	}
	if v := Ping(ctx, "tcp", "127.0.0.1:"+strconv.Itoa(freePort(t))); v != NoResponse {
		t.Errorf("closed port: %v", v)
	}
}

// TestPingCancel: cancellation, not only a deadline, ends a ping; and a ping
// without a deadline is still bounded.
func TestPingCancel(t *testing.T) {
	addr := fakeServer(t, "tcp", func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	ctx, cancel := context.WithCancel(context.Background())
	timer := time.AfterFunc(100*time.Millisecond, cancel)
	defer timer.Stop()
	start := time.Now()
	if v := Ping(ctx, "tcp", addr); v != NoResponse {
		t.Errorf("Ping = %v", v)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("cancelled Ping took %s", took)
	}
}

func TestSocketPath(t *testing.T) {
	if got, want := SocketPath("/run/postgresql", 5432), "/run/postgresql/.s.PGSQL.5432"; got != want {
		t.Errorf("SocketPath = %q, want %q", got, want)
	}
}

func TestLSN(t *testing.T) {
	for _, s := range []string{"0/0", "0/16B3740", "16/B374D848", "FFFFFFFF/FFFFFFFF"} {
		l, err := ParseLSN(s)
		if err != nil {
			t.Fatalf("ParseLSN(%q): %v", s, err)
		}
		if l.String() != s {
			t.Errorf("ParseLSN(%q).String() = %q", s, l.String())
		}
	}
	if l, _ := ParseLSN("16/B374D848"); l != 0x16B374D848 {
		t.Errorf("ParseLSN = %#x", uint64(l))
	}
	for _, bad := range []string{"", "16", "16/", "/1", "x/1", "100000000/0"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("ParseLSN(%q) succeeded", bad)
		}
	}
}

func TestRedact(t *testing.T) {
	base := errors.New("connect to user=postgres password=" + testPassword + " failed")
	got := redact(base, testPassword).Error()
	if bytes.Contains([]byte(got), []byte(testPassword)) {
		t.Fatalf("secret kept: %q", got)
	}
	if want := "connect to user=postgres password=[REDACTED] failed"; got != want {
		t.Errorf("redact = %q, want %q", got, want)
	}
	if err := redact(os.ErrNotExist, testPassword); err != os.ErrNotExist {
		t.Errorf("an error without the secret must be kept as is, got %v", err)
	}
}
