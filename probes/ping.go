package probes

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"time"
)

// Verdict is the answer of a ping, with the meaning pg_isready gives it.
// The zero value is NoResponse: knowing nothing must never look healthy.
type Verdict int

const (
	// NoResponse: nothing answered like a PostgreSQL server (connection refused,
	// timed out, closed early, or answered garbage). pg_isready exit code 2.
	NoResponse Verdict = iota
	// Rejecting: the postmaster answered but refuses connections for now
	// (starting up, recovering, not yet consistent, shutting down). Exit code 1.
	Rejecting
	// Accepting: the server is up (it asked us to authenticate, or refused us
	// for a reason that is ours, not its state). Exit code 0.
	Accepting
)

// String returns the words pg_isready prints.
func (v Verdict) String() string {
	switch v {
	case Accepting:
		return "accepting connections"
	case Rejecting:
		return "rejecting connections"
	case NoResponse:
		return "no response"
	}
	return "Verdict(" + strconv.Itoa(int(v)) + ")"
}

// ExitCode returns the exit status pg_isready uses for the same verdict.
func (v Verdict) ExitCode() int {
	switch v {
	case Accepting:
		return 0
	case Rejecting:
		return 1
	}
	return 2
}

// Answered reports whether the postmaster answered at all (the startup probe's
// condition and the liveness condition).
func (v Verdict) Answered() bool { return v == Accepting || v == Rejecting }

// DefaultPingTimeout bounds a Ping whose context has no deadline. It is
// pg_isready's default (-t 3): a ping must never wait forever.
const DefaultPingTimeout = 3 * time.Second

// drainTimeout bounds how long a Ping that got AuthenticationOk reads the rest
// of the backend's startup (up to ReadyForQuery) after sending Terminate. The
// verdict is already known; this only keeps the server's log clean (closing
// with unread data resets the connection and the backend logs it), so it must
// stay well under a probe timeout: a backend starts in a few milliseconds.
const drainTimeout = 250 * time.Millisecond

// SocketPath returns the Unix socket path of a server listening in dir on port,
// for Ping(ctx, "unix", SocketPath(dir, port)).
func SocketPath(dir string, port int) string {
	return filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(port))
}

// Ping tells whether a PostgreSQL server is accepting connections, with the
// semantics of libpq's PQping as used by pg_isready, without forking anything.
// network is "tcp" (address host:port) or "unix" (address is the socket file,
// see SocketPath). It never blocks past ctx's deadline (DefaultPingTimeout if ctx
// has none) and never returns an error: failing to learn anything is NoResponse.
//
// It sends a protocol 3.0 StartupMessage for user and database "postgres" and
// judges the first reply only, as PQping does:
//   - an authentication request: Accepting (the server is up; PQping counts any
//     authentication request as success and never needs a password);
//   - an ErrorResponse with SQLSTATE 57P03 (cannot_connect_now): Rejecting;
//   - an ErrorResponse with any other 5-character SQLSTATE (unknown role, too many
//     connections, pg_hba reject...): Accepting, the server is up;
//   - anything else, or nothing before the deadline: NoResponse.
//
// No SSL or GSS encryption is negotiated. That cannot change the verdict: the
// postmaster answers an SSLRequest before it looks at its own state, and decides
// whether it can accept connections only after reading the StartupMessage, the same
// way over a plain or an encrypted channel; encryption only changes the transport of
// the same reply. (pg_isready with the default sslmode=prefer gets 'N' from a server
// with ssl=off and then sends exactly what we send.)
//
// Ping talks to the one address the dialer connects to; libpq would also try the
// other addresses of a host name after a failure, so use a literal address.
func Ping(ctx context.Context, network, address string) Verdict {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultPingTimeout)
		defer cancel()
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, address)
	if err != nil {
		return NoResponse
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	if err := conn.SetDeadline(deadline); err != nil {
		return NoResponse
	}
	// Cancellation (not only the deadline) must unblock reads and writes too.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if _, err := conn.Write(startupMessage); err != nil {
		return NoResponse
	}
	rep := readReply(conn)
	if rep.authOK {
		// Trust authentication: the server has started a backend for us. Say
		// goodbye as libpq's PQfinish does, and let the backend finish sending its
		// startup messages and exit, so it does not log a broken connection.
		terminate(conn, deadline)
	}
	// After any other authentication request we just close: a client that leaves
	// instead of sending a password is not logged by the server (pg_isready does the
	// same). After an ErrorResponse the server has already closed.
	return rep.verdict
}

// startupMessage is a protocol 3.0 StartupMessage for user and database "postgres".
var startupMessage = buildStartupMessage(
	"user", "postgres",
	"database", "postgres",
	"application_name", "pgwarden-ping",
)

// buildStartupMessage builds a StartupMessage from name, value pairs.
func buildStartupMessage(params ...string) []byte {
	msg := make([]byte, 8, 128)
	binary.BigEndian.PutUint32(msg[4:], protocolVersion3)
	for _, p := range params {
		msg = append(msg, p...)
		msg = append(msg, 0)
	}
	msg = append(msg, 0)
	binary.BigEndian.PutUint32(msg[:4], uint32(len(msg)))
	return msg
}

const protocolVersion3 = 3 << 16

// Limits libpq applies to the first reply before reading its body (PostgreSQL 15
// fe-connect.c, CONNECTION_AWAITING_RESPONSE). Lengths count the length word itself.
const (
	minReplyLen   = 8     // both kinds carry at least one int32 or one byte + terminator
	maxAuthLen    = 2000  // "authentication requests can't be very large"
	maxErrorLen   = 30000 // a larger "length" means a pre-3.0 error: no SQLSTATE
	sqlstateLen   = 5
	fieldSQLSTATE = 'C'
)

// sqlstateCannotConnectNow is ERRCODE_CANNOT_CONNECT_NOW: starting up, in
// recovery and not consistent yet, or shutting down.
const sqlstateCannotConnectNow = "57P03"

// reply is what the first message from the server tells.
type reply struct {
	verdict Verdict
	// authOK: the first message was AuthenticationOk, so a backend is starting for us.
	authOK bool
}

// readReply reads the first message the server sends after a StartupMessage and
// judges it as PQping does. It reads no more than that message, and at most
// maxErrorLen bytes, whatever the server sends.
func readReply(r io.Reader) reply {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return reply{verdict: NoResponse}
	}
	kind := hdr[0]
	length := int64(int32(binary.BigEndian.Uint32(hdr[1:])))
	switch kind {
	case 'R':
		if length < minReplyLen || length > maxAuthLen {
			return reply{verdict: NoResponse}
		}
		body := make([]byte, length-4)
		if _, err := io.ReadFull(r, body); err != nil {
			// libpq waits for the whole message; EOF or timeout first is no response.
			return reply{verdict: NoResponse}
		}
		return reply{verdict: Accepting, authOK: binary.BigEndian.Uint32(body) == 0}
	case 'E':
		if length < minReplyLen || length > maxErrorLen {
			// A pre-3.0 error (also what a postmaster that cannot fork sends):
			// it has no SQLSTATE, so PQping reports no response.
			return reply{verdict: NoResponse}
		}
		body := make([]byte, length-4)
		if _, err := io.ReadFull(r, body); err != nil {
			return reply{verdict: NoResponse}
		}
		return reply{verdict: verdictOfSQLSTATE(errorSQLSTATE(body))}
	default:
		// Anything else, including NegotiateProtocolVersion ('v', which libpq 15
		// reads and then fails on), is not an answer PQping counts.
		return reply{verdict: NoResponse}
	}
}

// errorSQLSTATE returns the SQLSTATE libpq would remember from an ErrorResponse
// body: the value of the last complete 'C' field, cut to 5 bytes (libpq copies it
// into a 6-byte buffer). A malformed field ends the parse; fields read before it
// still count, as they do in libpq, which records them while parsing.
func errorSQLSTATE(body []byte) string {
	var state string
	for len(body) > 0 {
		code := body[0]
		if code == 0 {
			break
		}
		body = body[1:]
		end := bytes.IndexByte(body, 0)
		if end < 0 {
			break
		}
		if code == fieldSQLSTATE {
			v := body[:end]
			if len(v) > sqlstateLen {
				v = v[:sqlstateLen]
			}
			state = string(v)
		}
		body = body[end+1:]
	}
	return state
}

func verdictOfSQLSTATE(state string) Verdict {
	switch {
	case len(state) != sqlstateLen:
		// No SQLSTATE: a client-side or pre-3.0 failure, nothing proves the server up.
		return NoResponse
	case state == sqlstateCannotConnectNow:
		return Rejecting
	default:
		// The server is up; it did not like our role, database, or the number of
		// connections, which says nothing against its state.
		return Accepting
	}
}

// terminateMessage is the protocol's Terminate ('X', length 4).
var terminateMessage = []byte{'X', 0, 0, 0, 4}

// maxDrain caps what a broken server can make terminate read. A backend sends a
// few hundred bytes (ParameterStatus, BackendKeyData, ReadyForQuery).
const maxDrain = 1 << 16

// terminate says goodbye to a backend that authenticated us: it sends Terminate,
// then reads what the backend sends until ReadyForQuery or an error (after which
// the backend sends nothing more), within drainTimeout and the ping's deadline.
// Closing with nothing left unread means a clean close rather than a reset, and
// the backend reads our Terminate and exits without logging anything.
// Errors do not matter here.
func terminate(conn net.Conn, deadline time.Time) {
	if _, err := conn.Write(terminateMessage); err != nil {
		return
	}
	if d := time.Now().Add(drainTimeout); d.Before(deadline) {
		deadline = d
	}
	_ = conn.SetReadDeadline(deadline)
	r := io.LimitReader(conn, maxDrain)
	var hdr [5]byte
	for {
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := int64(binary.BigEndian.Uint32(hdr[1:])) - 4
		if n < 0 {
			return
		}
		if _, err := io.CopyN(io.Discard, r, n); err != nil {
			return
		}
		if hdr[0] == 'Z' || hdr[0] == 'E' {
			return
		}
	}
}
