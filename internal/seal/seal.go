// Package seal encrypts what the sidecar keeps in a shared store with a key derived from the
// caller's own token (identity.Credential.EncKey), so that a reader of Redis sees no GHL
// data and another credential cannot read it. The additional data binds a sealed value to
// the one place it was stored under, so a value copied elsewhere does not open.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
)

// version leads every sealed value: a different layout reads as ErrOpen, not as garbage.
const version = 1

// ErrOpen means the value does not open with this key and additional data: another
// credential's key, a value moved to another key, tampering, or another layout.
var ErrOpen = errors.New("seal: value does not open with this key")

// Seal returns version | nonce | AES-256-GCM(key, nonce, plaintext, ad).
func Seal(key *[32]byte, ad, plaintext []byte) ([]byte, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 1+aead.NonceSize(), 1+aead.NonceSize()+len(plaintext)+aead.Overhead())
	out[0] = version
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, err
	}
	return aead.Seal(out, out[1:], plaintext, ad), nil
}

// Open reverses Seal. Every failure is ErrOpen.
func Open(key *[32]byte, ad, sealed []byte) ([]byte, error) {
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	ns := aead.NonceSize()
	if len(sealed) < 1+ns+aead.Overhead() || sealed[0] != version {
		return nil, ErrOpen
	}
	pt, err := aead.Open(nil, sealed[1:1+ns], sealed[1+ns:], ad)
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

func newAEAD(k *[32]byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(k[:])
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
