package injector

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// writeCert writes a self-signed serving certificate for 127.0.0.1 and returns its pool.
func writeCert(t *testing.T, dir, cn string) *x509.CertPool {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	// Key first: the reloader watches the certificate file, as a Secret volume swaps both.
	if err := os.WriteFile(filepath.Join(dir, "tls.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tls.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return pool
}

func TestServeTLSAndReloadCertificate(t *testing.T) {
	dir := t.TempDir()
	pool := writeCert(t, dir, "first")
	certs, err := newCertFiles(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	in, err := New(testSidecar(), "")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- serve(ctx, ln, Handler(in, slog.New(slog.DiscardHandler)), certs, time.Second) }()

	get := func(pool *x509.CertPool) (string, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
		resp, err := c.Get("https://" + ln.Addr().String() + "/healthz")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.TLS.PeerCertificates[0].Subject.CommonName + " " + strings.TrimSpace(string(b)), nil
	}
	if got, err := get(pool); err != nil || got != "first ok" {
		t.Fatalf("first certificate: %q, %v", got, err)
	}

	// Rotate: a new pair on disk, with a different modification time.
	pool2 := writeCert(t, dir, "second")
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(filepath.Join(dir, "tls.crt"), later, later); err != nil {
		t.Fatal(err)
	}
	certs.mu.Lock()
	certs.checked = time.Time{} // the seam: the next handshake checks the files now
	certs.mu.Unlock()
	if got, err := get(pool2); err != nil || got != "second ok" {
		t.Fatalf("after rotation: %q, %v", got, err)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve after cancel: %v", err)
	}
}

func TestRunNeedsTLSAndSidecar(t *testing.T) {
	dir := t.TempDir()
	writeCert(t, dir, "x")
	sc, _ := json.Marshal(testSidecar())
	scPath := filepath.Join(dir, "sidecar.json")
	os.WriteFile(scPath, sc, 0o600)
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{SidecarFile: scPath}, "TLS certificate"},
		{Config{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key")}, "sidecar"},
		{Config{CertFile: filepath.Join(dir, "nope.crt"), KeyFile: filepath.Join(dir, "tls.key"), SidecarFile: scPath}, "nope.crt"},
		{Config{CertFile: filepath.Join(dir, "tls.crt"), KeyFile: filepath.Join(dir, "tls.key"), SidecarFile: filepath.Join(dir, "tls.key")}, "sidecar"},
	} {
		tc.cfg.Listen = "127.0.0.1:0"
		if err := Run(context.Background(), tc.cfg, log); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Run(%+v) = %v, want an error about %s", tc.cfg, err, tc.want)
		}
	}
}

func testSidecar() corev1.Container {
	return corev1.Container{Name: "ghlproxy", Image: "ghlproxy:test", Ports: []corev1.ContainerPort{
		{Name: ProxyPortName, ContainerPort: 8080}, {Name: OpsPortName, ContainerPort: 9090},
	}}
}
