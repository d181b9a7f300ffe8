package postgres

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"regexp"
	"strings"
	"testing"
)

// TestScramRFC7677 checks the keys against the example exchange of RFC 7677
// (user "user", password "pencil"): the server signature is
// HMAC(ServerKey, AuthMessage), and the client proof is
// ClientKey XOR HMAC(StoredKey, AuthMessage) with StoredKey = H(ClientKey).
func TestScramRFC7677(t *testing.T) {
	const (
		clientFirstBare = "n=user,r=rOprNGfwEbeRWgbNEkqO"
		serverFirst     = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
		clientFinalBare = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
		proof           = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
		serverSignature = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
	)
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	stored, server, err := scramKeys("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	authMessage := clientFirstBare + "," + serverFirst + "," + clientFinalBare
	if got := base64.StdEncoding.EncodeToString(hmacSHA256(server, authMessage)); got != serverSignature {
		t.Errorf("server signature = %s, want %s", got, serverSignature)
	}
	p, _ := base64.StdEncoding.DecodeString(proof)
	clientKey := hmacSHA256(stored, authMessage)
	for i := range clientKey {
		clientKey[i] ^= p[i]
	}
	if h := sha256.Sum256(clientKey); !bytes.Equal(h[:], stored) {
		t.Errorf("StoredKey does not match the RFC's client proof")
	}
}

func TestScramVerifier(t *testing.T) {
	const password = "s3cret: 'quoted' \\ pass"
	v1, err := ScramVerifier(password)
	if err != nil {
		t.Fatal(err)
	}
	v2, err := ScramVerifier(password)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^SCRAM-SHA-256\$4096:[A-Za-z0-9+/]{22}==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$`)
	for _, v := range []string{v1, v2} {
		if !re.MatchString(v) {
			t.Errorf("verifier %q has not PostgreSQL's format", v)
		}
		if strings.Contains(v, password) {
			t.Errorf("verifier holds the password")
		}
		if !scramVerifierMatches(v, password) {
			t.Errorf("verifier does not match its password")
		}
		if scramVerifierMatches(v, password+"x") {
			t.Errorf("verifier matches a wrong password")
		}
	}
	if v1 == v2 {
		t.Errorf("two verifiers of one password are equal: the salt is not random")
	}
	for _, bad := range []string{"", "md5abc", "SCRAM-SHA-256$x:AAAA$AAAA:AAAA", "SCRAM-SHA-256$4096:!!$AAAA:AAAA", "SCRAM-SHA-256$4096:AAAA"} {
		if scramVerifierMatches(bad, password) {
			t.Errorf("scramVerifierMatches(%q) = true", bad)
		}
	}

	if _, err := ScramVerifier("pässword"); !errors.Is(err, ErrPasswordNotASCII) {
		t.Errorf("non-ASCII password: err = %v, want ErrPasswordNotASCII", err)
	}
	if _, err := ScramVerifier("raw \xff bytes"); err != nil {
		t.Errorf("invalid UTF-8 (used raw by PostgreSQL): %v", err)
	}
	if _, err := ScramVerifier(""); err == nil {
		t.Errorf("empty password accepted")
	}
}
