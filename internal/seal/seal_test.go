package seal

import (
	"bytes"
	"errors"
	"testing"
)

func TestSealOpen(t *testing.T) {
	var k1, k2 [32]byte
	k1[0], k2[0] = 1, 2
	pt := []byte(`{"contact":{"email":"ada@example.com"}}`)
	s, err := Seal(&k1, []byte("key-a"), pt)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(s, []byte("ada@example.com")) {
		t.Fatal("sealed value contains the plaintext")
	}
	got, err := Open(&k1, []byte("key-a"), s)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	for name, try := range map[string]func() ([]byte, error){
		"other key":      func() ([]byte, error) { return Open(&k2, []byte("key-a"), s) },
		"moved":          func() ([]byte, error) { return Open(&k1, []byte("key-b"), s) },
		"truncated":      func() ([]byte, error) { return Open(&k1, []byte("key-a"), s[:10]) },
		"tampered":       func() ([]byte, error) { b := bytes.Clone(s); b[len(b)-1] ^= 1; return Open(&k1, []byte("key-a"), b) },
		"another layout": func() ([]byte, error) { b := bytes.Clone(s); b[0] = 9; return Open(&k1, []byte("key-a"), b) },
	} {
		if _, err := try(); !errors.Is(err, ErrOpen) {
			t.Errorf("%s: err = %v, want ErrOpen", name, err)
		}
	}
	s2, _ := Seal(&k1, []byte("key-a"), pt)
	if bytes.Equal(s, s2) {
		t.Fatal("two seals of one plaintext are equal: the nonce is not random")
	}
}
