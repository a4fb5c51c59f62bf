package webhook

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
)

// GHLPublicKey is the Ed25519 key HighLevel publishes for X-GHL-Signature, in its Webhook
// Integration Guide (marketplace.gohighlevel.com/docs/webhook/WebhookIntegrationGuide,
// "GHL Signature (Ed25519) public key") and on its ProviderOutboundMessage page. It is the
// default of webhooks.public_key.
const GHLPublicKey = `-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAi2HR1srL4o18O8BRa7gVJY7G7bupbN3H9AwJrHCDiOg=
-----END PUBLIC KEY-----`

// GHLLegacyPublicKey is the RSA key HighLevel publishes for the legacy X-WH-Signature
// (GoHighLevel/highlevel-api-docs, docs/oauth/WebhookAuthentication.md), which it is
// retiring. It is the default of webhooks.legacy_public_key.
const GHLLegacyPublicKey = `-----BEGIN PUBLIC KEY-----
MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEAokvo/r9tVgcfZ5DysOSC
Frm602qYV0MaAiNnX9O8KxMbiyRKWeL9JpCpVpt4XHIcBOK4u3cLSqJGOLaPuXw6
dO0t6Q/ZVdAV5Phz+ZtzPL16iCGeK9po6D6JHBpbi989mmzMryUnQJezlYJ3DVfB
csedpinheNnyYeFXolrJvcsjDtfAeRx5ByHQmTnSdFUzuAnC9/GepgLT9SM4nCpv
uxmZMxrJt5Rw+VUaQ9B8JSvbMPpez4peKaJPZHBbU3OdeCVx5klVXXZQGNHOs8gF
3kvoV5rTnXV0IknLBXlcKKAQLZcY/Q9rG6Ifi9c+5vqlvHPCUJFT5XUGG5RKgOKU
J062fRtN+rLYZUV+BjafxQauvC8wSWeYja63VSUruvmNj8xkx2zE/Juc+yjLjTXp
IocmaiFeAO6fUtNjDeFVkhf5LNb59vECyrHD2SQIrhgXpO4Q3dVNA5rw576PwTzN
h/AMfHKIjE4xQA1SZuYJmNnmVZLIZBlQAF9Ntd03rfadZ+yDiOXCCs9FkHibELhC
HULgCsnuDJHcrGNd5/Ddm5hxGQ0ASitgHeMZ0kcIOwKDOzOU53lDza6/Y09T7sYJ
PQe7z0cvj7aE4B+Ax1ZoZGPzpJlZtGXCsu9aTEGEnKzmsFqwcSsnw3JB31IGKAyk
T1hhTiaCeIY/OwwwNUY2yvcCAwEAAQ==
-----END PUBLIC KEY-----`

// ParsePublicKey reads an Ed25519 public key in the forms the official SDKs' verifiers
// accept: PEM (SubjectPublicKeyInfo), base64 of the DER SubjectPublicKeyInfo, or the raw
// 32-byte key in base64 or hex.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	s = unescape(s)
	if b, err := hex.DecodeString(s); err == nil && len(b) == ed25519.PublicKeySize {
		return ed25519.PublicKey(b), nil // 64 hex digits (which would also read as base64)
	}
	der, err := spki(s)
	if err != nil {
		return nil, err
	}
	if der == nil {
		raw := decodeRaw(s)
		if len(raw) != ed25519.PublicKeySize {
			return nil, errors.New("not an Ed25519 public key: want PEM, base64 DER, or 32 bytes in base64 or hex")
		}
		return ed25519.PublicKey(raw), nil
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("not a public key: %w", err)
	}
	ek, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("a %T key, not Ed25519", k)
	}
	return ek, nil
}

// ParseLegacyPublicKey reads an RSA public key: PEM (SubjectPublicKeyInfo or PKCS#1), or
// base64 of the DER.
func ParseLegacyPublicKey(s string) (*rsa.PublicKey, error) {
	s = unescape(s)
	der, err := spki(s)
	if err != nil {
		return nil, err
	}
	if der == nil {
		return nil, errors.New("not an RSA public key: want PEM or base64 DER")
	}
	if k, err := x509.ParsePKIXPublicKey(der); err == nil {
		rk, ok := k.(*rsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("a %T key, not RSA", k)
		}
		return rk, nil
	}
	rk, err := x509.ParsePKCS1PublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("not an RSA public key: %w", err)
	}
	return rk, nil
}

// unescape trims s and turns the two characters \n into a newline: a PEM pasted into a
// .env file or a one-line environment variable keeps its lines that way.
func unescape(s string) string {
	return strings.TrimSpace(strings.ReplaceAll(s, `\n`, "\n"))
}

// spki returns the DER of a PEM block or of base64 that decodes to more than a raw key's
// 32 bytes; nil, nil when s is neither (it may be a raw key).
func spki(s string) ([]byte, error) {
	if strings.HasPrefix(s, "-----BEGIN") {
		b, _ := pem.Decode([]byte(s))
		if b == nil {
			return nil, errors.New("malformed PEM")
		}
		return b.Bytes, nil
	}
	if der, err := base64.StdEncoding.DecodeString(s); err == nil && len(der) > ed25519.PublicKeySize {
		return der, nil
	}
	return nil, nil
}

func decodeRaw(s string) []byte {
	if b, err := hex.DecodeString(s); err == nil {
		return b
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b
		}
	}
	return nil
}
