package instance

import (
	"context"
	"log/slog"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

// notifyShutdown returns a context cancelled by the first SIGTERM or SIGINT,
// and a channel that receives SIGHUP (re-read the parameters file). Later
// SIGTERMs are logged and otherwise ignored: exiting on a second signal would
// kill the postmaster with the pod (PID 1's exit SIGKILLs the namespace).
func notifyShutdown(log *slog.Logger) (context.Context, <-chan struct{}, func()) {
	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGTERM, unix.SIGINT, unix.SIGHUP)
	hup := make(chan struct{}, 1)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				if s == unix.SIGHUP {
					select {
					case hup <- struct{}{}:
					default:
					}
					continue
				}
				if ctx.Err() == nil {
					log.Info("shutdown requested", "signal", s.String())
					cancel()
				} else {
					log.Info("already shutting down; signal ignored", "signal", s.String())
				}
			case <-done:
				return
			}
		}
	}()
	return ctx, hup, func() {
		signal.Stop(sigs)
		close(done)
		cancel()
	}
}
