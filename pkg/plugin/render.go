package plugin

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/yaml"
)

// Output formats of -o.
const (
	OutputTable = "table"
	OutputJSON  = "json"
	OutputYAML  = "yaml"
)

func checkOutput(o string) error {
	switch o {
	case "", OutputTable, OutputJSON, OutputYAML:
		return nil
	}
	return fmt.Errorf("unknown output format %q: use table, json or yaml", o)
}

// writeStructured writes v as indented JSON or as YAML.
func writeStructured(w io.Writer, format string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if format == OutputYAML {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
	} else {
		b = append(b, '\n')
	}
	_, err = w.Write(b)
	return err
}

// RenderReport writes r in format (table, json or yaml); now is for the ages in the table.
func RenderReport(w io.Writer, r *Report, format string, now time.Time) error {
	if format == OutputJSON || format == OutputYAML {
		return writeStructured(w, format, r)
	}
	return renderTable(w, r, now)
}

func renderTable(w io.Writer, r *Report, now time.Time) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Cluster %s (namespace %s): %s", r.Cluster, r.Namespace, r.Phase)
	if r.PhaseReason != "" {
		fmt.Fprintf(&b, " (%s)", r.PhaseReason)
	}
	b.WriteString("\n")
	if r.CurrentPrimary != "" || r.TargetPrimary != "" {
		fmt.Fprintf(&b, "Primary: %s", orDash(r.CurrentPrimary))
		if r.TargetPrimary != "" && r.TargetPrimary != r.CurrentPrimary {
			fmt.Fprintf(&b, " (switching to %s)", r.TargetPrimary)
		}
		b.WriteString("\n")
	}
	if l := r.Lease; l != nil {
		fmt.Fprintf(&b, "Lease %s: holder %s", l.Name, orDash(l.Holder))
		if l.HolderIP != "" {
			fmt.Fprintf(&b, " (%s)", l.HolderIP)
		}
		if l.AgeSeconds != nil {
			fmt.Fprintf(&b, ", renewed %s ago", formatSeconds(*l.AgeSeconds))
			if l.LeaseDurationSeconds > 0 && *l.AgeSeconds > float64(l.LeaseDurationSeconds) {
				fmt.Fprintf(&b, " (EXPIRED, duration %ds)", l.LeaseDurationSeconds)
			}
		} else {
			b.WriteString(", never renewed")
		}
		b.WriteString("\n")
	}
	for _, wm := range r.Warnings {
		fmt.Fprintf(&b, "Warning: %s\n", wm)
	}
	b.WriteString("\n")
	if _, err := io.WriteString(w, b.String()); err != nil {
		return err
	}

	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "POD\tROLE\tDESIRED\tREADY\tSTATUS\tTL\tLSN\tREPLAY LSN\tLAG\tLAG (S)")
	for _, in := range r.Instances {
		status, tl, lsn, replay := "unknown", "?", "?", "?"
		if in.Reachable {
			status = orDash(in.Phase)
			if in.Phase == "" {
				status = orDash(in.StatusRole)
			}
			if in.FenceRequested && !in.Fenced {
				status += " (fence requested)"
			}
			tl = "-"
			if in.Timeline > 0 {
				tl = strconv.FormatUint(uint64(in.Timeline), 10)
			}
			lsn, replay = orDash(in.CurrentLSN), orDash(in.ReplayLSN)
			if in.CurrentLSN == "" {
				lsn = orDash(in.ReceivedLSN)
			}
		}
		lag, lagS := "-", "-"
		if in.LagBytes != nil {
			lag = FormatBytes(*in.LagBytes)
		}
		if in.LagSeconds != nil {
			lagS = formatSeconds(*in.LagSeconds)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%s\t%s\t%s\t%s\t%s\t%s\n", in.Pod, orDash(in.Role), orDash(in.DesiredRole),
			in.Ready, status, tl, lsn, replay, lag, lagS)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, in := range r.Instances {
		if !in.Reachable {
			fmt.Fprintf(w, "%s: /status unknown: %s\n", in.Pod, in.Error)
		}
	}

	if len(r.Events) > 0 {
		fmt.Fprintf(w, "\nEvents (last %d):\n", len(r.Events))
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "AGE\tTYPE\tREASON\tOBJECT\tMESSAGE")
		for _, e := range r.Events {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", formatAge(now.Sub(e.Time)), e.Type, e.Reason, e.Object, oneLine(e.Message))
		}
		return tw.Flush()
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", " ") }

// FormatBytes is n in B, KiB, MiB or GiB with one decimal above bytes.
func FormatBytes(n int64) string {
	const k = 1024
	switch {
	case n < k:
		return fmt.Sprintf("%d B", n)
	case n < k*k:
		return fmt.Sprintf("%.1f KiB", float64(n)/k)
	case n < k*k*k:
		return fmt.Sprintf("%.1f MiB", float64(n)/(k*k))
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(k*k*k))
}

func formatSeconds(s float64) string {
	if s < 0 {
		s = 0
	}
	if s < 60 {
		return strconv.FormatFloat(s, 'f', 1, 64) + "s"
	}
	return formatAge(time.Duration(s * float64(time.Second)))
}

// formatAge is a kubectl-like age: 5s, 3m20s, 2h5m, 3d.
func formatAge(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
