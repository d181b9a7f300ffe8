package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// probeInterval is the write rate the issue fixes for both systems: one
// INSERT every 50 ms.
const probeInterval = 50 * time.Millisecond

// probeAttemptTimeout bounds one write (connect + INSERT). Longer than any
// healthy write on loopback by two orders of magnitude, short enough that a
// hung connection costs at most this much of the outage measurement's
// resolution.
const probeAttemptTimeout = 2 * time.Second

const probeTable = `CREATE TABLE IF NOT EXISTS bench_probe (
	id  bigint PRIMARY KEY,
	run text NOT NULL,
	at  timestamptz NOT NULL DEFAULT clock_timestamp())`

// write is one attempt of the probe.
type write struct {
	id        int64
	start     time.Time // before connecting
	end       time.Time // acknowledgement or error received
	server    string    // ServerAddr of the member that acknowledged; "" on error
	err       error
	committed bool // read back after the run
}

// probe writes through a fresh connection every probeInterval until stopped.
// It never runs two writes at once: a tick that falls during a slow write is
// dropped, so an outage shows as errors or a gap, never as a queue.
type probe struct {
	dsn    string
	run    string
	idBase int64

	mu     sync.Mutex
	writes []write

	cancel context.CancelFunc
	done   chan struct{}
}

func startProbe(dsn, run string, idBase int64) *probe {
	ctx, cancel := context.WithCancel(context.Background())
	p := &probe{dsn: dsn, run: run, idBase: idBase, cancel: cancel, done: make(chan struct{})}
	go p.loop(ctx)
	return p
}

func (p *probe) loop(ctx context.Context) {
	defer close(p.done)
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for seq := int64(1); ; seq++ {
		w := p.writeOnce(ctx, p.idBase+seq)
		if ctx.Err() != nil {
			return // an attempt cut short by stop is not a measurement
		}
		p.mu.Lock()
		p.writes = append(p.writes, w)
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *probe) writeOnce(parent context.Context, id int64) write {
	w := write{id: id, start: time.Now()}
	ctx, cancel := context.WithTimeout(parent, probeAttemptTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.dsn)
	if err != nil {
		w.end, w.err = time.Now(), fmt.Errorf("connect: %w", err)
		return w
	}
	defer conn.Close(context.Background())
	err = conn.QueryRow(ctx,
		`INSERT INTO bench_probe (id, run) VALUES ($1, $2)
		 RETURNING host(inet_server_addr()) || ':' || inet_server_port()`, id, p.run).Scan(&w.server)
	w.end = time.Now()
	if err != nil {
		w.err, w.server = fmt.Errorf("insert: %w", err), ""
	}
	return w
}

// stop ends the probe and returns every write it made, in order.
func (p *probe) stop() []write {
	p.cancel()
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]write(nil), p.writes...)
}

// snapshot returns the writes made so far.
func (p *probe) snapshot() []write {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]write(nil), p.writes...)
}

// firstAckAfter is the first write acknowledged at or after t by a member
// other than not, or false.
func firstAckAfter(ws []write, t time.Time, not string) (write, bool) {
	for _, w := range ws {
		if w.err == nil && !w.end.Before(t) && w.server != not {
			return w, true
		}
	}
	return write{}, false
}

// longestOutage is the longest time between two consecutive acknowledged
// writes (or from..first ack, last ack..to) within [from, to].
func longestOutage(ws []write, from, to time.Time) time.Duration {
	last, worst := from, time.Duration(0)
	for _, w := range ws {
		if w.err != nil || w.end.Before(from) || w.end.After(to) {
			continue
		}
		if d := w.end.Sub(last); d > worst {
			worst = d
		}
		last = w.end
	}
	if d := to.Sub(last); d > worst {
		worst = d
	}
	return worst
}

// readBack marks which writes are in the table and returns how many
// acknowledged writes are missing. It reads from the primary through dsn.
func readBack(ctx context.Context, dsn, run string, ws []write) (lost int, err error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, fmt.Errorf("cannot connect to read back: %w", err)
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT id FROM bench_probe WHERE run = $1`, run)
	if err != nil {
		return 0, fmt.Errorf("cannot read back: %w", err)
	}
	have := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return 0, fmt.Errorf("cannot read back: %w", err)
		}
		have[id] = true
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("cannot read back: %w", err)
	}
	for i := range ws {
		ws[i].committed = have[ws[i].id]
		if ws[i].err == nil && !ws[i].committed {
			lost++
		}
	}
	return lost, nil
}

func createProbeTable(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("cannot create the probe table: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, probeTable); err != nil {
		return fmt.Errorf("cannot create the probe table: %w", err)
	}
	return nil
}
