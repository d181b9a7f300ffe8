package roles_test

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/client-go/rest"

	"github.com/pgwarden/pgwarden/pkg/roles"
)

func TestParseRole(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want roles.Role
		ok   bool
	}{
		{"primary", roles.RolePrimary, true},
		{"replica", roles.RoleReplica, true},
		{"master", "", false},
		{"", "", false},
		{"Primary", "", false},
		{" replica", "", false},
		{"standby", "", false},
	} {
		got, err := roles.ParseRole(tc.in)
		var invalid *roles.InvalidRoleError
		if got != tc.want || (err == nil) != tc.ok || (!tc.ok && (!errors.As(err, &invalid) || invalid.Value != tc.in)) {
			t.Errorf("ParseRole(%q) = %q, %v; want %q, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestParseFenced(t *testing.T) {
	for _, tc := range []struct {
		in           string
		found        bool
		want, wantOK bool
	}{
		{"", false, false, true},
		{"true", true, true, true},
		{"false", true, false, true},
		{"", true, false, false},
		{"True", true, false, false},
		{"yes", true, false, false},
		{"1", true, false, false},
		{" true", true, false, false},
	} {
		got, err := roles.ParseFenced(tc.in, tc.found)
		var invalid *roles.InvalidFencedError
		if got != tc.want || (err == nil) != tc.wantOK || (!tc.wantOK && (!errors.As(err, &invalid) || invalid.Value != tc.in)) {
			t.Errorf("ParseFenced(%q, %v) = %v, %v; want %v, ok %v", tc.in, tc.found, got, err, tc.want, tc.wantOK)
		}
	}
}

func TestFinalLSN(t *testing.T) {
	f := roles.FinalLSN{Pod: "demo-1", LSN: "0/3000028", Timeline: 1}
	s, err := f.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"pod":"demo-1","lsn":"0/3000028","timeline":1}`; s != want {
		t.Errorf("Encode = %s, want %s", s, want)
	}
	got, err := roles.DecodeFinalLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(&f, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	for _, bad := range []string{``, `{}`, `{"pod":"x","lsn":"3000028","timeline":1}`, `{"pod":"x","lsn":"0/3000028","timeline":0}`,
		`{"pod":"","lsn":"0/1","timeline":1}`, `{"pod":"x","lsn":"1/G","timeline":1}`, `{"pod":"x","lsn":"100000000/0","timeline":1}`} {
		if _, err := roles.DecodeFinalLSN(bad); err == nil {
			t.Errorf("DecodeFinalLSN(%s) succeeded", bad)
		}
	}
}

// Configuration checking only: no API call is made.
func TestNewPrimaryLease(t *testing.T) {
	client, err := roles.NewClient(&rest.Config{Host: "https://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	l, err := roles.NewPrimaryLease(roles.LeaseConfig{Client: client, Namespace: "ns", Cluster: "demo", Identity: "demo-1"})
	if err != nil {
		t.Fatal(err)
	}
	if l.Name() != "demo-primary" {
		t.Errorf("name %q", l.Name())
	}
	for _, cfg := range []roles.LeaseConfig{
		{Namespace: "ns", Cluster: "demo", Identity: "demo-1"},
		{Client: client, Cluster: "demo", Identity: "demo-1"},
		{Client: client, Namespace: "ns", Cluster: "demo", Identity: "demo-1", LeaseDuration: 10e9, RenewDeadline: 10e9},
		{Client: client, Namespace: "ns", Cluster: "demo", Identity: "demo-1", RetryPeriod: 10e9},
		{Client: client, Namespace: "ns", Cluster: "demo", Identity: "demo-1", RenewTimeout: 11e9},
	} {
		if _, err := roles.NewPrimaryLease(cfg); err == nil {
			t.Errorf("NewPrimaryLease(%+v) accepted", cfg)
		}
	}
}
