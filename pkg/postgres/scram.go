package postgres

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// SCRAM-SHA-256 verifiers as PostgreSQL stores them in pg_authid.rolpassword
// (RFC 5802 and RFC 7677):
//
//	SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>
//
// where SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations, 32),
// StoredKey = SHA-256(HMAC(SaltedPassword, "Client Key")) and
// ServerKey = HMAC(SaltedPassword, "Server Key"). Sending the verifier in
// CREATE/ALTER ROLE ... PASSWORD makes the server store it as it is, so the
// plaintext never leaves this process.
const (
	scramIterations = 4096 // PostgreSQL's default (scram_iterations in 16+)
	scramSaltLen    = 16   // PostgreSQL's SCRAM_DEFAULT_SALT_LEN
	scramPrefix     = "SCRAM-SHA-256$"
)

// ErrPasswordNotASCII: a password with non-ASCII characters (valid UTF-8) is
// refused for SCRAM verifiers made here. PostgreSQL's server and libpq
// normalize such a password with SASLprep (NFKC and the RFC 4013 tables of
// Unicode 3.2), which this package does not implement, and pgx approximates
// it differently: a verifier computed here might not accept what the walreceiver,
// pg_basebackup or pg_rewind send. ASCII passwords, and byte strings that are
// not valid UTF-8, are used as they are by every client, so they are exact.
var ErrPasswordNotASCII = errors.New("the password contains non-ASCII characters; use an ASCII password (SASLprep normalization of non-ASCII passwords is not implemented)")

// ScramVerifier returns the SCRAM-SHA-256 verifier of password with a random
// 16-byte salt and 4096 iterations, in PostgreSQL's rolpassword format.
// It never returns or wraps the password in an error.
func ScramVerifier(password string) (string, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("cannot make a salt: %w", err)
	}
	return scramVerifier(password, salt, scramIterations)
}

func scramVerifier(password string, salt []byte, iterations int) (string, error) {
	stored, server, err := scramKeys(password, salt, iterations)
	if err != nil {
		return "", err
	}
	enc := base64.StdEncoding
	return fmt.Sprintf("%s%d:%s$%s:%s", scramPrefix, iterations,
		enc.EncodeToString(salt), enc.EncodeToString(stored), enc.EncodeToString(server)), nil
}

func scramKeys(password string, salt []byte, iterations int) (storedKey, serverKey []byte, err error) {
	if password == "" {
		return nil, nil, errors.New("the password is empty")
	}
	if !scramPasswordExact(password) {
		return nil, nil, ErrPasswordNotASCII
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot derive the salted password: %w", err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	sk := sha256.Sum256(clientKey)
	return sk[:], hmacSHA256(salted, "Server Key"), nil
}

// scramPasswordExact reports whether SASLprep leaves password unchanged in
// PostgreSQL and libpq: pure ASCII (printable characters map to themselves;
// control characters are prohibited, which makes both fall back to the raw
// bytes), or not valid UTF-8 (both use the raw bytes).
func scramPasswordExact(password string) bool {
	if !utf8.ValidString(password) {
		return true
	}
	for i := 0; i < len(password); i++ {
		if password[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// scramVerifierMatches reports whether verifier (as in pg_authid) was made
// from password. Anything that is not a well-formed SCRAM-SHA-256 verifier
// (an MD5 hash, NULL, garbage) does not match.
func scramVerifierMatches(verifier, password string) bool {
	rest, ok := strings.CutPrefix(verifier, scramPrefix)
	if !ok {
		return false
	}
	iterSalt, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return false
	}
	iterText, saltText, ok := strings.Cut(iterSalt, ":")
	if !ok {
		return false
	}
	storedText, serverText, ok := strings.Cut(keys, ":")
	if !ok {
		return false
	}
	iterations, err := strconv.Atoi(iterText)
	if err != nil || iterations < 1 || iterations > 1<<24 {
		return false
	}
	enc := base64.StdEncoding
	salt, err1 := enc.DecodeString(saltText)
	stored, err2 := enc.DecodeString(storedText)
	server, err3 := enc.DecodeString(serverText)
	if err1 != nil || err2 != nil || err3 != nil || len(salt) == 0 {
		return false
	}
	gotStored, gotServer, err := scramKeys(password, salt, iterations)
	if err != nil {
		return false
	}
	return subtle.ConstantTimeCompare(stored, gotStored) == 1 && subtle.ConstantTimeCompare(server, gotServer) == 1
}
