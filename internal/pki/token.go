package pki

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"strings"
)

// Token is a join token: ID.SECRET.CAHASH. The coordinator stores ID with
// a hash of SECRET; CAHASH pins the CA a joining worker must find.
type Token struct {
	ID     string
	Secret string
	CAHash string
}

// NewToken makes a token for the CA.
func NewToken(ca *CA) Token {
	return Token{ID: randomHex(6), Secret: randomHex(16), CAHash: ca.Hash()}
}

func (t Token) String() string { return t.ID + "." + t.Secret + "." + t.CAHash }

// SecretHash is what the coordinator stores.
func (t Token) SecretHash() string { return HashSecret(t.Secret) }

// HashSecret is the hex SHA-256 of a token secret.
func HashSecret(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// SecretMatches compares a presented secret with a stored hash in
// constant time.
func SecretMatches(secret, hash string) bool {
	return subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(hash)) == 1
}

// ParseToken reads ID.SECRET.CAHASH, or ID.SECRET (CAHash empty: the CA
// is then pinned another way, such as a CA file mounted from a Secret).
func ParseToken(s string) (Token, error) {
	parts := strings.Split(strings.TrimSpace(s), ".")
	short := len(parts) == 2
	if short {
		parts = append(parts, "")
	}
	if len(parts) != 3 || !isHex(parts[0], 12) || !isHex(parts[1], 32) || (!short && !isHex(parts[2], 64)) {
		return Token{}, fmt.Errorf("a join token looks like ID.SECRET.CAHASH (12, 32 and 64 hex digits; CAHASH may be left out with a CA file); get one with `coordinator token create --role worker`")
	}
	return Token{ID: parts[0], Secret: parts[1], CAHash: parts[2]}, nil
}

func isHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail
	}
	return hex.EncodeToString(b)
}
